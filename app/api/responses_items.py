"""The Responses API's items as OpenAI stores and lists them, and a conversation of them as chat messages.

Every item has an id with its type's prefix: `msg_` (a message, input or output), `fc_` (a function call),
`fco_` (a call's output), `rs_` (reasoning). A conversation (a stored chain's earlier inputs and outputs,
then this request's input) becomes the chat messages the model's template reads: a function_call joins
the assistant message before it (parallel calls share one), a function_call_output is a tool message
named after its call, and reasoning rides on the assistant turn after it as `reasoning_content` (the
template decides whether an earlier turn's thinking is shown).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import Field

ItemId = Annotated[str, Field(min_length=1, max_length=256)]


def new_item_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def message_input_item(role: str, text: str, id_: str | None = None) -> dict:
    """A message of `input`: the user's (system, developer) as input_text, an assistant's as output_text."""
    if role == "assistant":
        return {"type": "message", "id": id_ or new_item_id("msg_"), "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    return {"type": "message", "id": id_ or new_item_id("msg_"), "status": "completed", "role": role,
            "content": [{"type": "input_text", "text": text}]}


def function_call_item(call_id: str, name: str, arguments: str, status: str, id_: str | None = None) -> dict:
    # fc_ and call_ share the parser's hex, so streamed and whole answers agree.
    return {"type": "function_call", "id": id_ or "fc_" + call_id.removeprefix("call_"), "call_id": call_id,
            "name": name, "arguments": arguments, "status": status}


def function_call_output_item(call_id: str, output: str, id_: str | None = None) -> dict:
    return {"type": "function_call_output", "id": id_ or new_item_id("fco_"), "call_id": call_id, "output": output,
            "status": "completed"}


def reasoning_item(id_: str, text: str, status: str) -> dict:
    return {"type": "reasoning", "id": id_, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if text or status != "in_progress" else []}


def item_text(item: dict) -> str:
    return "".join(part.get("text", "") for part in item.get("content") or [])


def chat_messages(instructions: str | None, items: list[dict]) -> list[dict]:
    """`instructions` (as a system message), then the conversation's items as chat messages."""
    messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    names: dict[str, str] = {}
    thinking = ""  # reasoning waiting for the assistant turn it belongs to
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            thinking += item_text(item)
        elif kind == "message":
            messages.append({"role": item["role"], "content": item_text(item)})
        elif kind == "function_call":
            names[item["call_id"]] = item["name"]
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": None})
            messages[-1].setdefault("tool_calls", []).append(
                {"id": item["call_id"], "type": "function",
                 "function": {"name": item["name"], "arguments": item["arguments"]}})
        else:  # function_call_output
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"],
                             "name": names.get(item["call_id"])})
        if thinking and messages and messages[-1]["role"] == "assistant" and kind != "reasoning":
            messages[-1]["reasoning_content"] = thinking
            thinking = ""
    return messages
