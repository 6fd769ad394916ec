"""tokenwire: a streaming OpenAI-compatible text-generation server."""
