"""What every chat format says: its markup, how tools go into a prompt, how calls come out, where reasoning is."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence

from app.chat_formats.call_stream import CallStream

THINK = ("<think>", "</think>")  # DeepSeek-R1, Qwen3, SmolLM3 and others define them as tokens

# A forced call's functions: (name, the schema its arguments follow).
Functions = Sequence[tuple[str, Mapping]]
# How a grammar writes one piece of markup: a token reference when it is one token, else a literal.
TokenWriter = Callable[[str], str]


def literal(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text)


class ChatFormat:
    name = ""
    special_markup = False  # the markup is special tokens: output must keep them to be read
    markup: tuple[str, ...] = ()  # markup a grammar should write as the token it is, where it is one
    forced_in_markup = True  # a forced call is written in this markup (forced_grammar); else bare JSON

    def matches(self, template: str) -> bool:
        """Whether a chat template is this family's (its markers appear in it)."""
        raise NotImplementedError

    def reasoning_markers(self, vocab: Collection[str]) -> tuple[str, str] | None:
        """Where reasoning starts and ends in output; by default `<think>` when the tokenizer has it."""
        return THINK if all(marker in vocab for marker in THINK) else None

    def rewrite(self, messages: Sequence[Mapping], tools: Sequence[Mapping] | None) -> list[dict]:
        """For a template that does not render tools: tools, earlier calls and results written as text."""
        raise NotImplementedError

    def parser(self, tool_names: Collection[str]) -> CallStream:
        raise NotImplementedError

    def forced_grammar(self, functions: Functions, parallel: bool, token: TokenWriter = literal) -> str:
        """Lark grammar of a forced call (one of `functions`) in this family's markup (forced_in_markup)."""
        raise NotImplementedError


def json_rule(name: str, schema: Mapping) -> str:
    """A Lark rule for compact JSON following `schema` (llguidance's %json; free whitespace lets a small
    model emit newlines until max_tokens, as app/engine/text/grammar.py notes)."""
    return f"{name}: %json {json.dumps({**schema, 'x-guidance': {'whitespace_flexible': False}})}"
