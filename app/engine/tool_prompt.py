"""Tools for chat templates that do not render them (SmolLM2's, for one).

Such a template would drop the offered tools and the assistant's earlier calls without a word, so
the conversation is rewritten in the widespread Hermes/Qwen convention before rendering: the tools'
signatures in the system message, inside <tools></tools>, with the instruction to answer a call as
<tool_call>{"name": ..., "arguments": {...}}</tool_call>; earlier calls as those blocks in the
assistant's text; tool results as <tool_response></tool_response> in a user turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

PROBE_TOOL = "tokenwire_probe_tool"
_PROBE = [{"type": "function", "function": {"name": PROBE_TOOL, "description": "probe",
                                            "parameters": {"type": "object", "properties": {}}}}]

_INSTRUCTIONS = (
    "You can call functions to help answer the user. Their signatures are listed between <tools> and "
    "</tools>:\n<tools>\n{signatures}\n</tools>\n\nTo call one, reply with a JSON object holding the "
    "function's name and its arguments between <tool_call> and </tool_call>, like this:\n"
    '<tool_call>\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n</tool_call>'
)


def probe_tools() -> list[dict]:
    """A one-tool list: a template that renders tools shows PROBE_TOOL's name somewhere."""
    return _PROBE


def _call_block(call: Mapping) -> str:
    function = call.get("function", {})
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def _rewrite(message: Mapping) -> dict:
    if message.get("role") == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message.get('content', '')}\n</tool_response>"}
    if message.get("tool_calls"):
        text = message.get("content") or ""
        blocks = "\n".join(_call_block(call) for call in message["tool_calls"])
        return {"role": "assistant", "content": f"{text}\n{blocks}" if text else blocks}
    return {key: value for key, value in message.items() if key in ("role", "content")}


def tools_in_text(messages: Sequence[Mapping], tools: Sequence[Mapping] | None) -> list[dict]:
    """The conversation with tools, calls and results written out as text, for a plain template."""
    rewritten = [_rewrite(m) for m in messages]
    if not tools:
        return rewritten
    signatures = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    instructions = _INSTRUCTIONS.format(signatures=signatures)
    if rewritten and rewritten[0]["role"] == "system":
        rewritten[0] = {"role": "system", "content": f"{rewritten[0]['content']}\n\n{instructions}"}
    else:
        rewritten.insert(0, {"role": "system", "content": instructions})
    return rewritten
