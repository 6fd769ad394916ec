"""Mistral: calls after [TOOL_CALLS], either a JSON list [{"name": ..., "arguments": {...}}] (Nemo, 7B v0.3)
or `name[ARGS]{...}` repeated per call (Mistral Small 3.2, Devstral, Magistral; arguments stream).

The markers are control tokens, so output keeps special tokens. The template's own rendering of an
earlier call decides which form is written (and forced): `[ARGS]` in it means the newer one."""

from __future__ import annotations

import json

from app.chat_formats.call_stream import Block, CallStream
from app.chat_formats.conversation import written_out
from app.chat_formats.format import THINK, ChatFormat, json_rule, literal
from app.chat_formats.json_calls import json_calls

CALLS, ARGS = "[TOOL_CALLS]", "[ARGS]"
# The newer form names the call first (an id may come between, as the template renders earlier calls).
_HEADER = r"\s*(?P<name>[A-Za-z0-9_.\-]+)(?:\[CALL_ID\][A-Za-z0-9_\-]*)?\[ARGS\]"
_MAGISTRAL_THINK = ("[THINK]", "[/THINK]")


class Mistral(ChatFormat):
    name = "mistral"
    special_markup = True
    markup = (CALLS, ARGS)

    def __init__(self, named_args: bool = True) -> None:
        self.named_args = named_args  # the `name[ARGS]{...}` form

    def matches(self, template: str) -> bool:
        return CALLS in template or "[INST]" in template

    def for_template(self, template: str) -> Mistral:
        return Mistral(named_args=ARGS in template)

    def reasoning_markers(self, vocab):
        if all(marker in vocab for marker in _MAGISTRAL_THINK):
            return _MAGISTRAL_THINK
        return super().reasoning_markers(vocab)

    def rewrite(self, messages, tools):
        def instructions() -> str:
            example = f'{CALLS}name{ARGS}{{...}}' if self.named_args else f'{CALLS}[{{"name": ..., "arguments": {{...}}}}]'
            return (f"[AVAILABLE_TOOLS]{json.dumps(list(tools or []), ensure_ascii=False)}[/AVAILABLE_TOOLS]\n"
                    f"To call a function, reply {example}")
        return written_out(messages, tools, instructions, self.call_text,
                           lambda content: f"[TOOL_RESULTS]{content}[/TOOL_RESULTS]")

    def call_text(self, name: str, arguments: object) -> str:
        if self.named_args:
            return f"{CALLS}{name}{ARGS}{json.dumps(arguments, ensure_ascii=False)}"
        return f"{CALLS}{json.dumps([{'name': name, 'arguments': arguments}], ensure_ascii=False)}"

    def parser(self, tool_names):
        # Both forms are read, whichever the model writes; the next [TOOL_CALLS] ends a call.
        return CallStream([Block(CALLS, json_calls, (CALLS,), keep_close=True, header=_HEADER)], tool_names)

    def forced_grammar(self, functions, parallel, token=literal):
        rules = [json_rule(f"args{i}", schema) for i, (_, schema) in enumerate(functions)]
        if self.named_args:
            call = " | ".join(f"{token(CALLS)} {literal(name)} {token(ARGS)} args{i}"
                              for i, (name, _) in enumerate(functions))
            return "\n".join([f"start: call{'+' if parallel else ''}", f"call: {call}", *rules])
        item = " | ".join(f'{literal(_item_prefix(name))} args{i} "}}"' for i, (name, _) in enumerate(functions))
        items = 'item ("," item)*' if parallel else "item"
        return "\n".join([f'start: {token(CALLS)} "[" {items} "]"', f"item: {item}", *rules])


def _item_prefix(name: str) -> str:
    return f'{{"name": {json.dumps(name)}, "arguments": '


FORMAT = Mistral()
