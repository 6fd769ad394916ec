"""Chat formats: how one model family writes tools, calls and reasoning into text, and reads them back.

Neutral on purpose (plain data in, plain data out: a call is a name and its arguments as JSON text): the
engine uses it to render prompts, the API to turn output into its own wire shapes. One module per family;
`registry.py` picks one from the model's chat template.
"""
