"""RequestTracer: a finished RequestRecord becomes a server span with queue/prefill/decode children,
exported here to the SDK's in-memory exporter."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.api.record import RequestRecord
from app.api.tracing import RequestTracer, trace_headers_of, traces_url
from app.engine.types import RequestTimings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[RequestTracer]:
    tracer = RequestTracer(exporter=exporter)
    yield tracer
    tracer.shutdown()


def finished_record(timings: bool = True, **fields) -> RequestRecord:
    """A chat completion that waited 10 ms, prefilled 20 ms and decoded 50 ms, ended 5 ms later."""
    t0 = time.monotonic() - 1.0
    record = RequestRecord("req-1", False, "POST", "/v1/chat/completions", "chat_completions", arrival=t0)
    record.status, record.model, record.finish_reason = 200, "fake-model", "stop"
    record.num_prompt_tokens, record.num_cached_tokens, record.num_completion_tokens = 12, 4, 7
    record.first_token_at, record.ended_at = t0 + 0.032, t0 + 0.087
    if timings:
        record.timings = RequestTimings(arrival=t0 + 0.001, scheduled=t0 + 0.011, first_token=t0 + 0.031,
                                        finished=t0 + 0.081)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def by_name(exporter: InMemorySpanExporter) -> dict:
    spans = exporter.get_finished_spans()
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def test_a_request_is_a_server_span_with_its_engine_phases_as_children(tracer, exporter):
    record = finished_record()
    tracer.record(record)
    spans = by_name(exporter)
    assert set(spans) == {"POST /v1/chat/completions", "queue", "prefill", "decode"}
    request = spans["POST /v1/chat/completions"]
    assert request.kind is SpanKind.SERVER and request.parent is None
    for name in ("queue", "prefill", "decode"):
        child = spans[name]
        assert child.parent.span_id == request.context.span_id
        assert child.context.trace_id == request.context.trace_id
        assert request.start_time <= child.start_time <= child.end_time <= request.end_time
    assert spans["queue"].end_time == spans["prefill"].start_time
    assert spans["prefill"].end_time == spans["decode"].start_time
    # Monotonic seconds become wall-clock nanoseconds with one offset: the durations are kept.
    assert abs((request.end_time - request.start_time) - 87_000_000) < 1_000
    assert abs((spans["decode"].end_time - spans["decode"].start_time) - 50_000_000) < 1_000
    assert abs(request.start_time - (time.time_ns() - 1_000_000_000)) < 500_000_000
    assert [event.name for event in request.events] == ["first_token"]
    assert request.start_time < request.events[0].timestamp < spans["decode"].start_time + 2_000_000
    assert request.status.status_code is StatusCode.UNSET
    assert request.resource.attributes["service.name"] == "tokenwire"


def test_the_request_span_carries_counts_and_finish_reason(tracer, exporter):
    tracer.record(finished_record(tenant="team-a"))
    attributes = dict(by_name(exporter)["POST /v1/chat/completions"].attributes)
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "fake-model",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.response.finish_reasons": ("stop",),
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "url.path": "/v1/chat/completions",
        "tokenwire.request_id": "req-1",
        "tokenwire.cached_tokens": 4,
        "tokenwire.outcome": "stop",
        "tokenwire.tenant": "team-a",
    }


def test_a_client_traceparent_makes_the_request_span_its_child(tracer, exporter):
    headers = trace_headers_of({"headers": [(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"a=1"),
                                            (b"tracestate", b"b=2"), (b"x-other", b"1")]})
    assert headers == {"traceparent": TRACEPARENT, "tracestate": "a=1,b=2"}
    tracer.record(finished_record(trace_headers=headers))
    spans = by_name(exporter)
    request = spans["POST /v1/chat/completions"]
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None and request.parent.is_remote
    assert format(request.parent.span_id, "016x") == PARENT_SPAN_ID
    assert dict(request.context.trace_state) == {"a": "1", "b": "2"}
    assert {format(span.context.trace_id, "032x") for span in spans.values()} == {TRACE_ID}


def test_an_unsampled_parent_is_not_exported(tracer, exporter):
    tracer.record(finished_record(trace_headers={"traceparent": TRACEPARENT[:-2] + "00"}))
    assert exporter.get_finished_spans() == ()


def test_a_malformed_traceparent_starts_a_new_trace(tracer, exporter):
    tracer.record(finished_record(trace_headers={"traceparent": "00-nonsense-01"}))
    request = by_name(exporter)["POST /v1/chat/completions"]
    assert request.parent is None and format(request.context.trace_id, "032x") != TRACE_ID


def test_without_engine_timings_only_the_request_span(tracer, exporter):
    record = finished_record(timings=False, finish_reason=None, cancelled=True, first_token_at=None)
    tracer.record(record)
    spans = by_name(exporter)
    assert list(spans) == ["POST /v1/chat/completions"]
    attributes = spans["POST /v1/chat/completions"].attributes
    assert attributes["tokenwire.outcome"] == "cancelled"
    assert "gen_ai.response.finish_reasons" not in attributes


def test_a_phase_the_request_never_reached_has_no_span(tracer, exporter):
    record = finished_record(finish_reason="timeout")
    record.timings = RequestTimings(arrival=record.arrival, scheduled=None, first_token=None,
                                    finished=record.arrival + 0.5)
    tracer.record(record)
    assert set(by_name(exporter)) == {"POST /v1/chat/completions"}


@pytest.mark.parametrize(("fields", "error"), [
    ({"finish_reason": None, "stream_error": True, "status": 200}, True),
    ({"finish_reason": None, "status": 500}, True),
    ({"finish_reason": None, "status": 429, "error_code": "overloaded"}, False),
])
def test_errors_set_the_span_status(tracer, exporter, fields, error):
    tracer.record(finished_record(timings=False, **fields))
    request = by_name(exporter)["POST /v1/chat/completions"]
    assert (request.status.status_code is StatusCode.ERROR) == error


def test_requests_other_than_generation_are_not_traced(tracer, exporter):
    record = RequestRecord("req-2", True, "GET", "/v1/models")
    record.status, record.ended_at = 200, time.monotonic()
    tracer.record(record)
    assert exporter.get_finished_spans() == ()


def test_operation_names_follow_the_endpoint(tracer, exporter):
    for path, endpoint in (("/v1/completions", "completions"), ("/v1/responses", "responses")):
        tracer.record(finished_record(path=path, endpoint=endpoint))
    operations = {span.name: span.attributes["gen_ai.operation.name"] for span in exporter.get_finished_spans()
                  if span.name.startswith("POST")}
    assert operations == {"POST /v1/completions": "text_completion", "POST /v1/responses": "chat"}


def test_the_service_name_is_the_environments_when_set(monkeypatch, exporter):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "llm-edge")
    tracer = RequestTracer(exporter=exporter)
    try:
        tracer.record(finished_record())
    finally:
        tracer.shutdown()
    assert {span.resource.attributes["service.name"] for span in exporter.get_finished_spans()} == {"llm-edge"}


@pytest.mark.parametrize(("endpoint", "url"), [
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
    ("http://collector:4318/", "http://collector:4318/v1/traces"),
    ("https://otel.example.com/prefix", "https://otel.example.com/prefix/v1/traces"),
    ("http://127.0.0.1:4318/v1/traces", "http://127.0.0.1:4318/v1/traces"),
])
def test_the_base_endpoint_gets_the_traces_path(endpoint, url):
    assert traces_url(endpoint) == url


def test_a_tracer_needs_somewhere_to_send():
    with pytest.raises(ValueError):
        RequestTracer()
