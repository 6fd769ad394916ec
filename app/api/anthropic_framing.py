"""Anthropic's Message object and its stream of named events, made from what the chat framer makes.

`/v1/messages` runs as a chat completion (app/api/anthropic_schemas.py translates the request); here its
chat.completion becomes a Message (content blocks: thinking, text, tool_use) and its chunks become
`message_start`, `content_block_start` / `content_block_delta` / `content_block_stop` per block (indexes
from 0), `message_delta` (stop_reason, stop_sequence, usage) and `message_stop`. A failure after the
stream began is one `error` event in Anthropic's shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from app.api.errors import anthropic_body, describe
from app.api.framing import ChatFramer
from app.api.sse import json_data
from app.engine.types import TokenEvent

log = logging.getLogger(__name__)

# Chat finish reasons -> Anthropic stop reasons; "stop" is end_turn or stop_sequence, "timeout" our extension.
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "timeout": "timeout"}


def tool_use_id(call_id: str) -> str:
    """Anthropic's prefix on the chat parser's call id; streamed and whole answers agree."""
    return "toolu_" + call_id.removeprefix("call_")


def message_usage(final: TokenEvent) -> dict:
    """Anthropic counts cached prompt tokens apart from the input tokens; nothing is written to a cache."""
    return {"input_tokens": final.num_prompt_tokens - final.num_cached_tokens,
            "output_tokens": final.num_completion_tokens, "cache_read_input_tokens": final.num_cached_tokens,
            "cache_creation_input_tokens": 0}


def stop_reason(finish_reason: str | None, called: bool, final: TokenEvent) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence): a call that ended the output (forced ones too) is tool_use."""
    if called and finish_reason in ("stop", "tool_calls"):
        return "tool_use", None
    if finish_reason == "stop":
        return ("end_turn", None) if final.stop_string is None else ("stop_sequence", final.stop_string)
    return _STOP_REASONS.get(finish_reason or "", finish_reason), None


def _tool_input(arguments: str) -> dict:
    # A forced call cut short by max_tokens has no whole object yet: its input is empty.
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def message_shell(id_: str, model: str) -> dict:
    return {"id": id_, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None}


def message_of(framer: ChatFramer, events: list[TokenEvent]) -> dict:
    """The whole Message from every event of the request."""
    choice = framer.response(events)["choices"][0]
    message, final = choice["message"], framer.finals[0]
    content: list[dict] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message["content"]:
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls", [])
    content += [{"type": "tool_use", "id": tool_use_id(call["id"]), "name": call["function"]["name"],
                 "input": _tool_input(call["function"]["arguments"])} for call in calls]
    reason, sequence = stop_reason(choice["finish_reason"], bool(calls), final)
    return {**message_shell(framer.id, framer.model), "content": content, "stop_reason": reason,
            "stop_sequence": sequence, "usage": message_usage(final)}


class ContentBlocks:
    """The open content block of a streamed message: a delta of another kind closes it and opens the next."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None
        self.called = False

    def on_delta(self, delta: dict) -> list[tuple[str, dict]]:
        """The block events one chat chunk's delta makes (reasoning, then answer text, then call pieces)."""
        events: list[tuple[str, dict]] = []
        if thinking := delta.get("reasoning_content"):
            events += self._into("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            events.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        if text := delta.get("content"):
            events += self._into("text", {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": text}))
        for piece in delta.get("tool_calls", []):
            if "id" in piece:  # a new call
                self.called = True
                events += self.close() + self._open("tool_use", {
                    "type": "tool_use", "id": tool_use_id(piece["id"]), "name": piece["function"]["name"],
                    "input": {}})
            if arguments := piece["function"]["arguments"]:
                events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return events

    def close(self) -> list[tuple[str, dict]]:
        """Events that end the open block, if any (a thinking block gets its signature first)."""
        if self.kind is None:
            return []
        events = [self._delta({"type": "signature_delta", "signature": ""})] if self.kind == "thinking" else []
        self.kind = None
        return events + [("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _into(self, kind: str, block: dict) -> list[tuple[str, dict]]:
        return [] if self.kind == kind else self.close() + self._open(kind, block)

    def _open(self, kind: str, block: dict) -> list[tuple[str, dict]]:
        self.index, self.kind = self.index + 1, kind
        return [("content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block})]

    def _delta(self, delta: dict) -> tuple[str, dict]:
        return "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}


def _sse(name: str, body: dict) -> dict:
    """One sse-starlette event: the type as the SSE event name, as Anthropic sends it."""
    return {"event": name, "data": json_data(body)}


async def stream_message_events(events: AsyncIterator[TokenEvent], framer: ChatFramer) -> AsyncIterator[dict]:
    """Yield the Messages API's stream events for one request. `message_start` waits for the first
    engine event, which says how many prompt tokens came from the cache."""
    blocks, started = ContentBlocks(), False
    async with aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                if not started:
                    started = True
                    shell = {**message_shell(framer.id, framer.model),
                             "usage": {**message_usage(event), "output_tokens": 0}}
                    yield _sse("message_start", {"type": "message_start", "message": shell})
                for chunk in framer.on_event(event):
                    choice = chunk["choices"][0]
                    for name, body in blocks.on_delta(choice["delta"]):
                        yield _sse(name, body)
                    if choice["finish_reason"] is not None:
                        for name, body in blocks.close():
                            yield _sse(name, body)
                        yield _sse("message_delta", _message_delta(choice["finish_reason"], blocks.called, event))
                        yield _sse("message_stop", {"type": "message_stop"})
        except Exception as exc:  # the status line is gone: report in-band
            status, body = describe(exc)
            log.warning("message stream %s failed after it began: %r", framer.id, exc)
            yield _sse("error", anthropic_body(status, body))


def _message_delta(finish_reason: str, called: bool, final: TokenEvent) -> dict:
    reason, sequence = stop_reason(finish_reason, called, final)
    return {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": message_usage(final)}
