"""RequestRecord: one HTTP request as the request log and the metrics see it, filled in as it goes.

The request-context middleware opens it (id, arrival) and closes it (status); `TrackedStream` stamps
each TokenEvent as it reaches the response, so time to first token and inter-token gaps are what a
client sees, not what the model thread did. `outcome` names how the request ended, in one table.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from app.engine.types import RequestTimings, TokenEvent

# Rejections (an error status before any generation): by error code first, then by status.
_REJECTED_BY_CODE = {"context_length_exceeded": "context_length", "draining": "draining",
                     "overloaded": "overloaded", "invalid_api_key": "auth", "rate_limit_exceeded": "rate_limited"}
_REJECTED_BY_STATUS = {401: "auth", 403: "auth", 429: "overloaded"}
CLIENT_CLOSED = 499  # nginx's status for "the client went away before the response started"


@dataclass
class RequestRecord:
    request_id: str
    id_generated: bool  # the server made the id up (no usable X-Request-Id came in)
    method: str
    path: str
    endpoint: str | None = None  # a generation route's label ("completions", ...), else None
    arrival: float = field(default_factory=time.monotonic)
    status: int | None = None
    error_code: str | None = None
    model: str | None = None
    tenant: str | None = None  # the API key's name (never the key); None when the API is open
    prompt: object = None  # kept only when prompts may be logged
    num_prompt_tokens: int | None = None
    num_cached_tokens: int | None = None  # of the prompt, reused from the prefix cache
    num_completion_tokens: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    queue_time_s: float | None = None
    timings: RequestTimings | None = None  # the engine's, from the final event
    stream_error: bool = False  # generation failed after it began
    cancelled: bool = False  # the client left before the final event
    ended_at: float | None = None
    trace_headers: dict[str, str] | None = None  # the client's traceparent/tracestate, kept when tracing is on
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the response (x-ratelimit-*)
    num_choices: int = 1  # n: the request is finished when each choice has its final event
    _choice_tokens: dict[int, int] = field(default_factory=dict)
    _finished_choices: int = 0

    def on_event(self, event: TokenEvent, now: float) -> None:
        if event.token_ids:  # a final timeout event carries no token
            if self.last_token_at is not None:
                self.token_gaps.append(now - self.last_token_at)
            self.first_token_at = self.first_token_at or now
            self.last_token_at = now
        self.num_prompt_tokens = event.num_prompt_tokens
        self.num_cached_tokens = event.num_cached_tokens
        self._choice_tokens[event.index] = event.num_completion_tokens
        self.num_completion_tokens = sum(self._choice_tokens.values())
        if event.finish_reason is not None:
            self._finished_choices += 1
        if event.finish_reason is not None and self._finished_choices >= self.num_choices:
            self.finish_reason = event.finish_reason.value
            self.timings = event.timings
            self.queue_time_s = event.timings.queue_time_s if event.timings else None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival

    @property
    def e2e_s(self) -> float:
        return (self.ended_at or time.monotonic()) - self.arrival

    @property
    def outcome(self) -> str:
        """stop / length / timeout, cancelled, error, or rejected_<reason>."""
        if self.finish_reason:
            return self.finish_reason
        if self.stream_error and not 400 <= (self.status or 0) < 500:
            return "error"  # failed after it began (a queue-full refusal from the model thread is a 429)
        if self.status is not None and self.status >= 400 and self.status != CLIENT_CLOSED:
            return self._rejection(self.status)
        if self.cancelled or self.status is None or self.status == CLIENT_CLOSED:
            return "cancelled"
        return "error"  # a success status without a final event: should not happen

    def _rejection(self, status: int) -> str:
        reason = _REJECTED_BY_CODE.get(self.error_code or "") or _REJECTED_BY_STATUS.get(status)
        if reason is None and status >= 500:
            return "error"
        return f"rejected_{reason or 'validation'}"


class TrackedStream:
    """Wraps a request's TokenEvents: stamps each one on the record; closing it closes the engine's stream."""

    def __init__(self, events: AsyncIterator[TokenEvent], record: RequestRecord) -> None:
        self._events = events
        self._record = record

    def __aiter__(self) -> TrackedStream:
        return self

    async def __anext__(self) -> TokenEvent:
        try:
            event = await self._events.__anext__()
        except StopAsyncIteration:
            raise
        except Exception:
            self._record.stream_error = True
            raise
        self._record.on_event(event, time.monotonic())
        return event

    async def aclose(self) -> None:
        record = self._record
        if record.finish_reason is None and not record.stream_error:
            record.cancelled = True
        await self._events.aclose()  # type: ignore[attr-defined]
