"""Text in and out: tokenizing, chat templates and prompts, detokenizing, stop strings, grammars."""
