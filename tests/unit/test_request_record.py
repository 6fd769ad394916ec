"""RequestRecord: how a request ended (one table) and what its events say about timing."""

from __future__ import annotations

import pytest

from app.api.record import RequestRecord, TrackedStream
from app.engine.types import FinishReason, RequestTimings, TokenEvent


def record(**fields) -> RequestRecord:
    return RequestRecord("id", True, "POST", "/v1/completions", "completions", arrival=100.0, **fields)


@pytest.mark.parametrize(("fields", "outcome"), [
    ({"status": 200, "finish_reason": "stop"}, "stop"),
    ({"status": 200, "finish_reason": "timeout"}, "timeout"),
    ({"status": 200, "stream_error": True}, "error"),
    ({"status": 200, "cancelled": True}, "cancelled"),
    ({"status": None}, "cancelled"),
    ({"status": 400}, "rejected_validation"),
    ({"status": 404, "error_code": "model_not_found"}, "rejected_validation"),
    ({"status": 413, "error_code": "request_too_large"}, "rejected_validation"),
    ({"status": 400, "error_code": "context_length_exceeded"}, "rejected_context_length"),
    ({"status": 429, "error_code": "overloaded", "stream_error": True}, "rejected_overloaded"),
    ({"status": 401, "error_code": "invalid_api_key"}, "rejected_auth"),
    ({"status": 503, "error_code": "draining"}, "rejected_draining"),
    ({"status": 503, "error_code": "draining", "stream_error": True}, "error"),  # cut off at the deadline
    ({"status": 400, "error_code": None, "stream_error": True}, "rejected_validation"),
    ({"status": 503, "error_code": "engine_unavailable"}, "error"),
    ({"status": 500}, "error"),
])
def test_outcome(fields, outcome):
    assert record(**fields).outcome == outcome


def event(n: int, reason: FinishReason | None = None, timings: RequestTimings | None = None) -> TokenEvent:
    return TokenEvent("x", (n,), 5, n, reason, timings)


def test_events_give_ttft_gaps_counts_and_queue_time():
    r = record()
    r.on_event(event(1), 100.5)
    r.on_event(event(2), 100.75)
    r.on_event(event(3, FinishReason.LENGTH, RequestTimings(50.0, 50.25, 50.5, 51.0)), 101.0)
    assert r.ttft_s == 0.5 and r.token_gaps == [0.25, 0.25]
    assert (r.num_prompt_tokens, r.num_completion_tokens, r.finish_reason) == (5, 3, "length")
    assert r.queue_time_s == 0.25


def test_a_final_timeout_event_without_a_token_adds_no_gap():
    r = record()
    r.on_event(event(1), 100.5)
    r.on_event(TokenEvent("", (), 5, 1, FinishReason.TIMEOUT), 109.0)
    assert r.token_gaps == [] and r.finish_reason == "timeout"


class Events:
    def __init__(self, items):
        self.items = list(items)
        self.closed = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self):
        self.closed = True


async def test_closing_a_tracked_stream_early_marks_it_cancelled_and_closes_the_engine_stream():
    events, r = Events([event(1), event(2, FinishReason.STOP)]), record()
    stream = TrackedStream(events, r)
    await stream.__anext__()
    await stream.aclose()
    assert r.cancelled and events.closed and r.outcome == "cancelled"


async def test_a_tracked_stream_that_finished_or_failed_is_not_cancelled():
    done, failed = record(status=200), record(status=200)
    stream = TrackedStream(Events([event(1, FinishReason.STOP)]), done)
    assert [e async for e in stream] and (await stream.aclose()) is None
    stream = TrackedStream(Events([event(1), RuntimeError("boom")]), failed)
    with pytest.raises(RuntimeError):
        async for _ in stream:
            pass
    await stream.aclose()
    assert (done.outcome, failed.outcome) == ("stop", "error")
