"""Llama 3.x (custom tools): the answer is one JSON object {"name": ..., "parameters": {...}}, as the
3.1-3.3 templates ask and render earlier calls; `<|python_tag|>` may lead it (3.1's tool calls)."""

from __future__ import annotations

import json

from app.chat_formats.call_stream import Block, CallStream
from app.chat_formats.conversation import written_out
from app.chat_formats.format import ChatFormat, json_rule, literal
from app.chat_formats.json_calls import json_calls

_INSTRUCTIONS = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    "that best answers the given prompt.\n\nRespond in the format {{\"name\": function name, \"parameters\": "
    "dictionary of argument name and its value}}. Do not use variables.\n\n{signatures}"
)


class Llama3Json(ChatFormat):
    name = "llama3_json"
    markup = ("<|python_tag|>",)

    def matches(self, template: str) -> bool:
        return "<|start_header_id|>" in template

    def rewrite(self, messages, tools):
        def instructions() -> str:
            return _INSTRUCTIONS.format(signatures="\n\n".join(json.dumps(t, indent=4) for t in tools or []))
        return written_out(messages, tools, instructions, call_text, lambda content: content)

    def parser(self, tool_names):
        return CallStream([Block("<|python_tag|>", json_calls)], tool_names, bare_json=True)

    def forced_grammar(self, functions, parallel, token=literal):
        # One call: Llama 3.x answers a call with a single object.
        calls = " | ".join(f'{literal(call_prefix(name))} args{i} "}}"' for i, (name, _) in enumerate(functions))
        return "\n".join([f"start: {calls}", *(json_rule(f"args{i}", s) for i, (_, s) in enumerate(functions))])


def call_prefix(name: str) -> str:
    return f'{{"name": {json.dumps(name)}, "parameters": '


def call_text(name: str, arguments: object) -> str:
    return json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)


FORMAT = Llama3Json()
