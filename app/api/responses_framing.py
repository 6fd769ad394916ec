"""The Responses API's objects and stream events, made from what the chat framer makes.

/v1/responses runs as a chat completion (`ResponsesRequest.to_chat()`); here the chat framer's deltas
become output items in the order they come: `reasoning` (one `reasoning_text` part) for a reasoning
model's thinking, a `message` (one `output_text` part) for answer text, a `function_call` for each tool
call. A stream is the event sequence the `openai` SDK's `responses.create(stream=True)` and
`responses.stream()` expect: `response.created` (status `queued` for a background response),
`response.in_progress`, then per item `response.output_item.added`, its deltas
(`response.reasoning_text.delta`..., `response.reasoning_text.done`; `response.content_part.added`,
`response.output_text.delta`..., `response.output_text.done`, `response.content_part.done`; or
`response.function_call_arguments.delta`..., `response.function_call_arguments.done`) and
`response.output_item.done`, then `response.completed` (or `response.incomplete` when max_output_tokens
or the deadline cut it short), every event numbered in order (`sequence_number`, 0 first). A whole
response is the same items, made from the same events. A failure after the stream began sends an
`error` event and `response.failed`; a cancel closes the open item and ends with `response.cancelled`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from app.api.errors import describe
from app.api.framing import ChatFramer
from app.api.responses_items import function_call_item, new_item_id, reasoning_item
from app.api.sse import json_data
from app.engine.types import FinishReason, TokenEvent

log = logging.getLogger(__name__)

# finish_reason -> (status, incomplete_details.reason); "timeout" is our extension, as on completions.
_ENDINGS = {FinishReason.STOP: ("completed", None), FinishReason.LENGTH: ("incomplete", "max_output_tokens"),
            FinishReason.TIMEOUT: ("incomplete", "timeout")}


TERMINAL = ("completed", "incomplete", "failed", "cancelled")  # a response in one of these changes no more


def responses_usage(event: TokenEvent | None, reasoning_tokens: int = 0) -> dict | None:
    if event is None:
        return None
    return {"input_tokens": event.num_prompt_tokens,
            "input_tokens_details": {"cached_tokens": event.num_cached_tokens},
            "output_tokens": event.num_completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": event.num_prompt_tokens + event.num_completion_tokens}


def _item_status(response_status: str) -> str:
    # Output items are in_progress, completed or incomplete; a failed response's message is incomplete.
    return response_status if response_status in ("in_progress", "completed") else "incomplete"


Event = tuple[str, dict]  # (type, fields)


class OutputItems:
    """A response's output items, opened and closed as the chat framer's deltas arrive."""

    def __init__(self) -> None:
        self.done: list[dict] = []
        self._open: dict | None = None  # the item being streamed: message (with its text) or function_call

    def on_delta(self, delta: dict) -> list[Event]:
        """The events one chat delta makes: thinking, answer text, then call pieces (a piece with an id
        opens a call)."""
        events: list[Event] = []
        if thinking := delta.get("reasoning_content"):
            if self._open is None or self._open["type"] != "reasoning":
                events += self.close("completed") + self._open_reasoning()
            assert self._open is not None
            self._open["text"] += thinking
            events.append(("response.reasoning_text.delta", {**self._at(), "content_index": 0, "delta": thinking}))
        if text := delta.get("content"):
            if self._open is None or self._open["type"] != "message":
                events += self.close("completed") + self._open_message()
            assert self._open is not None
            self._open["text"] += text
            events.append(("response.output_text.delta", {**self._at(), "content_index": 0, "delta": text,
                                                          "logprobs": []}))
        for piece in delta.get("tool_calls", []):
            if "id" in piece:
                events += self.close("completed") + self._open_call(piece["id"], piece["function"]["name"])
            if arguments := piece["function"]["arguments"]:
                assert self._open is not None
                self._open["arguments"] += arguments
                events.append(("response.function_call_arguments.delta", {**self._at(), "delta": arguments}))
        return events

    def finish(self, status: str) -> list[Event]:
        """Close the last item; an answer with no output at all still has its (empty) message."""
        opening = self._open_message() if self._open is None and not self.done else []
        return opening + self.close(status)

    def close(self, status: str) -> list[Event]:
        if self._open is None:
            return []
        item, self._open = self._open, None
        if item["type"] == "message":
            whole = message_item(item["id"], item.pop("text"), status)
            events = [("response.output_text.done", {**self._at(item), "content_index": 0,
                                                     "text": whole["content"][0]["text"], "logprobs": []}),
                      ("response.content_part.done", {**self._at(item), "content_index": 0,
                                                      "part": whole["content"][0]})]
        elif item["type"] == "reasoning":
            whole = reasoning_item(item["id"], item["text"], status)
            events = [("response.reasoning_text.done", {**self._at(item), "content_index": 0, "text": item["text"]})]
        else:
            whole = {**item, "status": status}
            events = [("response.function_call_arguments.done", {**self._at(item), "arguments": item["arguments"]})]
        self.done.append(whole)
        return events + [("response.output_item.done", {"output_index": len(self.done) - 1, "item": whole})]

    def _open_reasoning(self) -> list[Event]:
        self._open = {"type": "reasoning", "id": new_item_id("rs_"), "text": ""}
        item = reasoning_item(self._open["id"], "", "in_progress")
        return [("response.output_item.added", {"output_index": len(self.done), "item": item})]

    def _open_message(self) -> list[Event]:
        self._open = {"type": "message", "id": new_item_id("msg_"), "text": ""}
        item = message_item(self._open["id"], "", "in_progress")
        return [("response.output_item.added", {"output_index": len(self.done), "item": item}),
                ("response.content_part.added", {**self._at(), "content_index": 0, "part": output_text("")})]

    def _open_call(self, call_id: str, name: str) -> list[Event]:
        self._open = function_call_item(call_id, name, "", "in_progress")
        return [("response.output_item.added", {"output_index": len(self.done), "item": dict(self._open)})]

    def _at(self, item: dict | None = None) -> dict:
        return {"item_id": (item or self._open or {})["id"], "output_index": len(self.done)}


def message_item(id_: str, text: str, status: str) -> dict:
    return {"type": "message", "id": id_, "status": status, "role": "assistant",
            "content": [] if status == "in_progress" and not text else [output_text(text)]}


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


# A cancel's reason (app/api/stream_relay.py) -> how the response ends: cancelled by a client, or failed.
_CUT_MESSAGES = {"shutdown": "the server shut down before this response finished",
                 "error": "the generation failed"}


@dataclass
class ResponsesFramer:
    """One response: the chat framer it is made from, its items, and the request fields OpenAI echoes back
    (`store`, `background` and `previous_response_id` among them)."""

    chat: ChatFramer
    request: dict  # instructions, max_output_tokens, temperature, top_p, metadata, user, text, tools...
    created_at: int = field(default_factory=lambda: int(time.time()))
    items: OutputItems = field(default_factory=OutputItems)
    last: TokenEvent | None = None  # the latest engine event (its counts are the usage so far)
    reasoning_tokens: int = 0
    _sequence: int = 0

    @property
    def id(self) -> str:
        return self.chat.id

    def response(self, status: str, last: TokenEvent | None = None, error: dict | None = None) -> dict:
        """The Response object, with the items closed so far."""
        reason = _ENDINGS[last.finish_reason][1] if last is not None and last.finish_reason else None
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "error": error, "incomplete_details": {"reason": reason} if reason else None,
                "model": self.chat.model, "output": list(self.items.done), "previous_response_id": None,
                "reasoning": None, "store": False, "background": False, "truncation": "disabled",
                "usage": responses_usage(last, self.reasoning_tokens), **self.request}

    def on_event(self, event: TokenEvent) -> list[Event]:
        """The stream events one engine event makes; the last one's end with the finished Response."""
        self.last = event
        deltas = [chunk["choices"][0]["delta"] for chunk in self.chat.on_event(event)]
        if any("reasoning_content" in d for d in deltas) and not any("content" in d or "tool_calls" in d
                                                                      for d in deltas):
            self.reasoning_tokens += len(event.token_ids)
        events = [e for delta in deltas for e in self.items.on_delta(delta)]
        if event.finish_reason is None:
            return events
        status = _ENDINGS[event.finish_reason][0]
        events += self.items.finish(_item_status(status))
        return events + [(f"response.{status}", {"response": self.response(status, event)})]

    def final_of(self, events: list[TokenEvent]) -> dict:
        """The finished Response from every event of the request (the stream's items, unsent)."""
        made = [e for event in events for e in self.on_event(event)]
        return made[-1][1]["response"]

    def failed(self, error: dict) -> dict:
        self.items.finish("incomplete")
        return self.response("failed", self.last, error=error)

    def cut(self, reason: str) -> list[Event]:
        """The last events of a response stopped before its end: asked to (`cancelled`; `unattended`, no
        client read its stream), or the server shut down (`failed`)."""
        if reason not in _CUT_MESSAGES:
            return self.items.close("incomplete") + [("response.cancelled",
                                                      {"response": self.response("cancelled", self.last)})]
        error = {"code": "server_error", "message": _CUT_MESSAGES[reason]}
        return [("error", {**error, "param": None}), ("response.failed", {"response": self.failed(error)})]

    def event(self, type_: str, **fields) -> dict:
        """One event's body: its type and its number in the stream."""
        body = {"type": type_, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return body


def event_frame(body: dict) -> str:
    """One Responses event as a server-sent event: the type as the event name and inside the JSON."""
    return f"event: {body['type']}\ndata: {json_data(body)}\n\n"


async def stream_response_events(events: AsyncIterator[TokenEvent], framer: ResponsesFramer,
                                 queued: bool = False) -> AsyncIterator[dict]:
    """Yield the Responses API's stream events for one request. `queued` (a background response): it is
    created `queued`, and `in_progress` once its first tokens come."""
    yield framer.event("response.created", response=framer.response("queued" if queued else "in_progress"))
    if not queued:
        yield framer.event("response.in_progress", response=framer.response("in_progress"))
    async with aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                if queued:
                    queued = False
                    yield framer.event("response.in_progress", response=framer.response("in_progress"))
                for type_, fields in framer.on_event(event):
                    yield framer.event(type_, **fields)
        except Exception as exc:  # the status line is gone: report in-band
            _, body = describe(exc)
            error = body["error"]
            log.warning("response stream %s failed after it began: %r", framer.id, exc)
            yield framer.event("error", code=error["code"] or error["type"], message=error["message"],
                               param=error["param"])
            failed = framer.failed({"code": error["code"] or error["type"], "message": error["message"]})
            yield framer.event("response.failed", response=failed)
