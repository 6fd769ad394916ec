"""OpenTelemetry traces through the real app over the fake engine: the in-memory exporter, a real
OTLP/HTTP receiver in a thread, and nothing of the SDK loaded when OTEL_EXPORTER_OTLP_ENDPOINT is empty."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.api.tracing import RequestTracer
from app.config import Settings
from app.engine.types import RequestTimings
from app.main import create_app
from tests.api.fake_engine import DEFAULT_SCRIPT, FakeEngine
from tests.api.helpers import chat_body, completion_body, sse_json

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


@asynccontextmanager
async def serve(engine: FakeEngine, tracer: RequestTracer | None = None,
                **settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(_env_file=None, **settings), engine=engine, tracer=tracer)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
            yield client


@pytest.mark.parametrize("stream", [False, True])
async def test_a_chat_completion_is_one_span_in_the_clients_trace(stream):
    exporter = InMemorySpanExporter()
    async with serve(FakeEngine(), RequestTracer(exporter=exporter)) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(stream=stream),
                                     headers={"traceparent": TRACEPARENT, "X-Request-Id": "trace-me"})
        assert response.status_code == 200
        if stream:
            sse_json(response.text)
    (span,) = exporter.get_finished_spans()  # the fake engine reports no timings: no phase spans
    assert span.name == "POST /v1/chat/completions"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    attributes = span.attributes
    assert attributes["gen_ai.usage.input_tokens"] == 3
    assert attributes["gen_ai.usage.output_tokens"] == len(DEFAULT_SCRIPT)
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.request.model"] == "fake-model"
    assert attributes["http.response.status_code"] == 200
    assert attributes["tokenwire.request_id"] == "trace-me"


async def test_engine_timings_become_phase_spans_and_other_routes_no_spans():
    now = time.monotonic()
    timings = RequestTimings(arrival=now, scheduled=now + 0.001, first_token=now + 0.002, finished=now + 0.003)
    engine = FakeEngine(script=[*DEFAULT_SCRIPT[:-1], dataclasses.replace(DEFAULT_SCRIPT[-1], timings=timings)])
    exporter = InMemorySpanExporter()
    async with serve(engine, RequestTracer(exporter=exporter)) as client:
        assert (await client.get("/v1/models")).status_code == 200
        assert (await client.get("/health")).status_code == 200
        assert (await client.post("/v1/completions", json=completion_body())).status_code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/completions", "queue", "prefill", "decode"}
    request = spans.pop("POST /v1/completions")
    assert request.parent is None  # no traceparent: a trace of its own
    assert all(child.parent.span_id == request.context.span_id for child in spans.values())


async def test_a_rejected_request_is_traced_with_its_outcome():
    exporter = InMemorySpanExporter()
    async with serve(FakeEngine(), RequestTracer(exporter=exporter)) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=-1))
        assert response.status_code == 400
    (span,) = exporter.get_finished_spans()
    assert span.attributes["tokenwire.outcome"] == "rejected_validation"
    assert span.attributes["http.response.status_code"] == 400


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps each POST /v1/traces body, parsed."""

    requests: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
        else:
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
            self.server.requests.append(message)  # type: ignore[attr-defined]
            self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


async def test_spans_reach_an_otlp_http_receiver_by_shutdown(otlp_receiver, monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    endpoint = f"http://127.0.0.1:{otlp_receiver.server_address[1]}"
    async with serve(FakeEngine(), otel_exporter_otlp_endpoint=endpoint) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(),
                                     headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
    # The lifespan's shutdown flushed the batch: it has arrived, nothing left to wait for.
    spans = [(resource_spans, span) for message in otlp_receiver.requests
             for resource_spans in message.resource_spans
             for scope_spans in resource_spans.scope_spans for span in scope_spans.spans]
    assert len(spans) == 1, otlp_receiver.requests
    resource_spans, span = spans[0]
    assert span.name == "POST /v1/chat/completions"
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_SPAN_ID
    attributes = {kv.key: kv.value for kv in span.attributes}
    assert attributes["gen_ai.usage.output_tokens"].int_value == len(DEFAULT_SCRIPT)
    assert list(attributes["gen_ai.response.finish_reasons"].array_value.values)[0].string_value == "stop"
    service = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}["service.name"]
    assert service == "tokenwire"


def test_the_endpoint_is_read_from_the_otel_variable(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert Settings(_env_file=None).otel_exporter_otlp_endpoint == "http://collector:4318"
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("TOKENWIRE_OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")
    assert Settings(_env_file=None).otel_exporter_otlp_endpoint == "http://other:4318"


_LOADED = """
import json, sys
from app.config import Settings
from app.main import create_app
from tests.api.fake_engine import FakeEngine
app = create_app(Settings(_env_file=None), engine=FakeEngine())
print(json.dumps({"tracer": app.state.tracer is not None, "loaded": sorted(
    m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto",
                                            "google.protobuf")))}))
"""


@pytest.mark.parametrize("endpoint", ["", "http://127.0.0.1:9"])
def test_the_sdk_is_loaded_only_when_the_endpoint_is_set(endpoint):
    """FastAPI itself imports the OpenTelemetry API; the SDK, the exporter and protobuf come only with tracing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TOKENWIRE_"))}
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    result = subprocess.run([sys.executable, "-c", _LOADED], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["tracer"] == bool(endpoint)
    if endpoint:
        assert "opentelemetry.sdk.trace" in found["loaded"]
        assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" in found["loaded"]
    else:
        assert found["loaded"] == []
