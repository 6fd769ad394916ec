"""RequestTracer: one OpenTelemetry trace per generation request, built from its RequestRecord once it ends.

Only `app.main` makes one, and only when OTEL_EXPORTER_OTLP_ENDPOINT is set: the SDK and the OTLP exporter
are imported inside the constructor, so a server without the setting never loads them. The spans are
made after the response ends (nothing on the request's own path but reading two headers): a server span
from arrival to the end of the response, a child of the client's W3C `traceparent` when it sent one, and
`queue` / `prefill` / `decode` children from the engine's timings. The provider is this app's own (the
global one is left alone), exported over OTLP/HTTP in batches by a background thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from app.api.record import RequestRecord

if TYPE_CHECKING:  # imported for real only in the constructor
    from opentelemetry.sdk.trace.export import SpanExporter

TRACE_HEADERS = (b"traceparent", b"tracestate")
_TRACES_PATH = "/v1/traces"
_OPERATION = {"chat_completions": "chat", "responses": "chat", "completions": "text_completion"}


def traces_url(endpoint: str) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT is the collector's base URL: traces go to its /v1/traces (kept if given)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH


def trace_headers_of(scope: dict) -> dict[str, str] | None:
    """The client's `traceparent` / `tracestate` (repeated headers joined with commas, as HTTP allows)."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name in TRACE_HEADERS:
            key = name.decode()
            text = value.decode("latin-1")
            found[key] = f"{found[key]},{text}" if key in found else text
    return found or None


class RequestTracer:
    """Turns finished RequestRecords into spans. `exporter` (tests) replaces OTLP, exported synchronously."""

    def __init__(self, endpoint: str = "", exporter: SpanExporter | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if exporter is None and not endpoint:
            raise ValueError("RequestTracer needs an OTLP endpoint or an exporter")
        resource = Resource.create()  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, read by the SDK
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "tokenwire"}))
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.endpoint = traces_url(endpoint)
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint)))
        else:
            self.endpoint = endpoint
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("tokenwire")
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()

    def record(self, record: RequestRecord) -> None:
        """One server span for a generation request (others are not traced), with its engine phases."""
        if record.endpoint is None:
            return
        trace = self._trace
        offset_ns = time.time_ns() - int(time.monotonic() * 1e9)

        def wall_ns(monotonic_s: float) -> int:
            return int(monotonic_s * 1e9) + offset_ns

        ended_at = record.ended_at if record.ended_at is not None else time.monotonic()
        parent = self._propagator.extract(record.trace_headers or {})
        span = self._tracer.start_span(f"{record.method} {record.path}", context=parent,
                                       kind=trace.SpanKind.SERVER, start_time=wall_ns(record.arrival),
                                       attributes=span_attributes(record))
        if record.first_token_at is not None:
            span.add_event("first_token", timestamp=wall_ns(record.first_token_at))
        if record.outcome == "error" or (record.status or 0) >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR, record.error_code or record.outcome))
        timings = record.timings
        if timings is not None:
            inside = trace.set_span_in_context(span)
            phases = (("queue", timings.arrival, timings.scheduled),
                      ("prefill", timings.scheduled, timings.first_token),
                      ("decode", timings.first_token, timings.finished))
            for name, start, end in phases:
                if start is not None and end is not None:
                    child = self._tracer.start_span(name, context=inside, start_time=wall_ns(start))
                    child.end(end_time=wall_ns(end))
        span.end(end_time=wall_ns(ended_at))

    def shutdown(self) -> None:
        """Export what is still queued, then stop the export thread."""
        self.provider.shutdown()


def span_attributes(record: RequestRecord) -> dict[str, Any]:
    """OpenTelemetry's GenAI and HTTP names where one fits, `tokenwire.*` for the rest; unknowns left out."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": _OPERATION.get(record.endpoint or "", record.endpoint),
        "gen_ai.request.model": record.model,
        "gen_ai.usage.input_tokens": record.num_prompt_tokens,
        "gen_ai.usage.output_tokens": record.num_completion_tokens,
        "gen_ai.response.finish_reasons": [record.finish_reason] if record.finish_reason else None,
        "http.request.method": record.method,
        "http.response.status_code": record.status,  # None: the client left before a response began
        "url.path": record.path,
        "tokenwire.request_id": record.request_id,
        "tokenwire.cached_tokens": record.num_cached_tokens,
        "tokenwire.outcome": record.outcome,
        "tokenwire.tenant": record.tenant,
    }
    return {key: value for key, value in attributes.items() if value is not None}
