"""The Responses API's objects and stream events, built from the same TokenEvents as completions.

One response holds one output message with one `output_text` part. A stream is the event sequence the
`openai` SDK's `responses.create(stream=True)` and `responses.stream()` expect: `response.created`,
`response.in_progress`, `response.output_item.added`, `response.content_part.added`,
`response.output_text.delta`..., `response.output_text.done`, `response.content_part.done`,
`response.output_item.done`, then `response.completed` (or `response.incomplete` when max_output_tokens
or the deadline cut it short). A failure after the stream began sends an `error` event and
`response.failed`. Stateless: nothing is stored, so `store` is always false in what we return.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from app.api.errors import describe
from app.api.sse import json_data
from app.engine.types import FinishReason, TokenEvent

log = logging.getLogger(__name__)

# finish_reason -> (status, incomplete_details.reason); "timeout" is our extension, as on completions.
_ENDINGS = {FinishReason.STOP: ("completed", None), FinishReason.LENGTH: ("incomplete", "max_output_tokens"),
            FinishReason.TIMEOUT: ("incomplete", "timeout")}


def responses_usage(event: TokenEvent | None) -> dict | None:
    if event is None:
        return None
    return {"input_tokens": event.num_prompt_tokens,
            "input_tokens_details": {"cached_tokens": event.num_cached_tokens},
            "output_tokens": event.num_completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": event.num_prompt_tokens + event.num_completion_tokens}


def _item_status(response_status: str) -> str:
    # Output items are in_progress, completed or incomplete; a failed response's message is incomplete.
    return response_status if response_status in ("in_progress", "completed") else "incomplete"


@dataclass
class ResponsesFramer:
    """One response's stable ids and the request fields OpenAI echoes back."""

    id: str
    model: str
    request: dict  # instructions, max_output_tokens, temperature, top_p, metadata, user
    created_at: int = field(default_factory=lambda: int(time.time()))
    message_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    _sequence: int = 0

    def response(self, status: str, text: str | None, last: TokenEvent | None = None,
                 error: dict | None = None) -> dict:
        """The Response object; `text` None means no output item yet."""
        reason = _ENDINGS[last.finish_reason][1] if last is not None and last.finish_reason else None
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "error": error, "incomplete_details": {"reason": reason} if reason else None,
                "model": self.model, "output": [] if text is None else [self.message(text, _item_status(status))],
                "parallel_tool_calls": False, "tool_choice": "none", "tools": [], "previous_response_id": None,
                "reasoning": None, "store": False, "truncation": "disabled",
                "usage": responses_usage(last), **self.request}

    def final_of(self, events: list[TokenEvent]) -> dict:
        """The finished Response from every event of the request."""
        return self.final("".join(event.text for event in events), events[-1])

    def final(self, text: str, last: TokenEvent) -> dict:
        assert last.finish_reason is not None, "the engine's last event carries the finish reason"
        return self.response(_ENDINGS[last.finish_reason][0], text, last)

    def message(self, text: str, status: str) -> dict:
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant",
                "content": [] if status == "in_progress" and not text else [self.part(text)]}

    @staticmethod
    def part(text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def event(self, type_: str, **fields) -> dict:
        """One sse-starlette event: the type as the SSE event name and inside the JSON, numbered."""
        body = {"type": type_, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return {"event": type_, "data": json_data(body)}


async def stream_response_events(events: AsyncIterator[TokenEvent], framer: ResponsesFramer) -> AsyncIterator[dict]:
    """Yield the Responses API's stream events for one request."""
    at = {"item_id": framer.message_id, "output_index": 0, "content_index": 0}
    parts: list[str] = []
    yield framer.event("response.created", response=framer.response("in_progress", None))
    yield framer.event("response.in_progress", response=framer.response("in_progress", None))
    async with aclosing(events):  # type: ignore[type-var]
        try:
            yield framer.event("response.output_item.added", output_index=0, item=framer.message("", "in_progress"))
            yield framer.event("response.content_part.added", **at, part=framer.part(""))
            async for event in events:
                if event.text:
                    parts.append(event.text)
                    yield framer.event("response.output_text.delta", **at, delta=event.text, logprobs=[])
                if event.finish_reason is not None:
                    text = "".join(parts)
                    final = framer.final(text, event)
                    yield framer.event("response.output_text.done", **at, text=text, logprobs=[])
                    yield framer.event("response.content_part.done", **at, part=framer.part(text))
                    yield framer.event("response.output_item.done", output_index=0, item=final["output"][0])
                    yield framer.event(f"response.{final['status']}", response=final)
        except Exception as exc:  # the status line is gone: report in-band
            _, body = describe(exc)
            error = body["error"]
            log.warning("response stream %s failed after it began: %r", framer.id, exc)
            yield framer.event("error", code=error["code"] or error["type"], message=error["message"],
                               param=error["param"])
            failed = framer.response("failed", "".join(parts), error={"code": error["code"] or error["type"],
                                                                     "message": error["message"]})
            yield framer.event("response.failed", response=failed)
