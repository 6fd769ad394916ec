"""Hermes/Qwen: calls as <tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks (Qwen 2.5/3, Hermes,
SmolLM3 and their fine-tunes); also the default for templates with no family markers (SmolLM2's).

Rewrite for templates that drop tools: the signatures in the system message inside <tools></tools>,
earlier calls as those blocks, results as <tool_response></tool_response> in a user turn. A forced
call keeps the server's bare JSON grammar (what vLLM does; the default model's behaviour)."""

from __future__ import annotations

import json

from app.chat_formats.call_stream import Block, CallStream
from app.chat_formats.conversation import written_out
from app.chat_formats.format import ChatFormat
from app.chat_formats.json_calls import json_calls

OPEN, CLOSE = "<tool_call>", "</tool_call>"

_INSTRUCTIONS = (
    "You can call functions to help answer the user. Their signatures are listed between <tools> and "
    "</tools>:\n<tools>\n{signatures}\n</tools>\n\nTo call one, reply with a JSON object holding the "
    "function's name and its arguments between <tool_call> and </tool_call>, like this:\n"
    '<tool_call>\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n</tool_call>'
)


class Hermes(ChatFormat):
    name = "hermes"
    forced_in_markup = False  # the server's bare JSON call grammar (vLLM's way; the default model's behaviour)

    def matches(self, template: str) -> bool:
        return OPEN in template

    def rewrite(self, messages, tools):
        def instructions() -> str:
            return _INSTRUCTIONS.format(signatures="\n".join(json.dumps(t, ensure_ascii=False) for t in tools or []))
        return written_out(messages, tools, instructions, call_block,
                           lambda content: f"<tool_response>\n{content}\n</tool_response>")

    def parser(self, tool_names):
        # A bare JSON call answer (Llama style) is read too, as it always was here.
        return CallStream([Block(OPEN, json_calls, (CLOSE,))], tool_names, bare_json=True)


def call_block(name: str, arguments: object) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


FORMAT = Hermes()
