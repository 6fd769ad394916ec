"""RequestContext: the outermost middleware but CanonicalPath (which only rewrites the path). Every
request gets an id (a client's `X-Request-Id` when it is safe to log and echo, else a new one), echoed
on every response, and a RequestRecord; when the response ends, generation requests are counted in the
metrics (and traced, when a tracer is set) and every request gets one log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import REQUEST_ID_HEADER
from app.api.metrics import Metrics
from app.api.rate_limits import RateLimits
from app.api.record import CLIENT_CLOSED, RequestRecord, TrackedStream
from app.api.tracing import RequestTracer, trace_headers_of
from app.engine.types import TokenEvent

log = logging.getLogger("tokenwire.request")

# Bounded and plain, so an id is safe in headers, logs and JSON; anything else is replaced.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
GENERATION_ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat_completions",
                        "/v1/responses": "responses", "/v1/messages": "messages"}


def after_generation(state: dict, then: Callable[[], None]) -> None:
    """Run `then` when the request's generation ends: at once, or, for a stream that outlives its
    connection (app/api/stream_relay.py, `state["generation"]`), when that stream ends."""
    generation: asyncio.Future | None = state.get("generation")
    if generation is None or generation.done():
        then()
    else:
        generation.add_done_callback(lambda _: then())


def request_id_of(scope: Scope) -> tuple[str, bool]:
    """(id, generated): the client's X-Request-Id if it is safe, else a new uuid4 hex."""
    for name, value in scope.get("headers", ()):
        if name == _HEADER_KEY:
            candidate = value.decode("latin-1")
            if _SAFE_ID.fullmatch(candidate):
                return candidate, False
    return uuid.uuid4().hex, True


def record_of(request: Request) -> RequestRecord:
    record = getattr(request.state, "record", None)
    if record is None:  # the app was mounted without RequestContext
        record = request.state.record = RequestRecord(uuid.uuid4().hex, True, request.method, request.url.path)
    return record


def completion_id(request: Request, prefix: str) -> str:
    """The response `id`: the client's request id as given, or ours with OpenAI's prefix."""
    record = record_of(request)
    return prefix + record.request_id if record.id_generated else record.request_id


def track(request: Request, events: AsyncIterator[TokenEvent], model: str, prompt: object,
          choices: int = 1) -> TrackedStream:
    """Stamp this request's events on its record (metrics and the request log)."""
    record = record_of(request)
    record.model, record.num_choices = model, choices
    if getattr(request.app.state, "log_prompts", False):
        record.prompt = prompt
    return TrackedStream(events, record)


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, tracer: RequestTracer | None = None,
                 rate_limits: RateLimits | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracer
        self.rate_limits = rate_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, generated = request_id_of(scope)
        record = RequestRecord(request_id, generated, scope["method"], scope["path"],
                               GENERATION_ENDPOINTS.get(scope["path"]))
        if self.tracer is not None and record.endpoint is not None:
            record.trace_headers = trace_headers_of(scope)
        # Each request its own state (as uvicorn gives it; some test transports share one dict).
        state = scope["state"] = {**scope.get("state", {}), "record": record, "request_id": request_id}
        header = (_HEADER_KEY, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name.lower() == _HEADER_KEY for name, _ in headers):
                    headers.append(header)
                headers += [(name.encode(), value.encode()) for name, value in record.response_headers.items()]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            record.status = record.status or 500  # ServerErrorMiddleware answers it, outside this one
            raise
        finally:
            record.error_code = state.get("error_code")
            after_generation(state, lambda: self._finish(record))

    def _finish(self, record: RequestRecord) -> None:
        record.ended_at = time.monotonic()
        if record.endpoint is not None and self.rate_limits is not None:
            # A token quota learns what the answer cost as it ends (plain arithmetic: it cannot fail).
            self.rate_limits.charge(record.tenant, (record.num_prompt_tokens or 0) + record.num_completion_tokens)
        try:
            if record.endpoint is not None:
                self.metrics.observe(record)
            # Probes and scrapes arrive every few seconds: their lines are for debugging only.
            level = logging.INFO if record.endpoint is not None else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "request", extra={"fields": log_fields(record)})
            if self.tracer is not None:
                self.tracer.record(record)  # generation requests only; queued for a background export
        except Exception:  # noqa: BLE001 - telemetry must never fail a request
            log.exception("recording request %s failed", record.request_id)


def log_fields(record: RequestRecord) -> dict:
    """The request log line: ids, counts and timings; the prompt only when a setting asks for it."""
    e2e = record.e2e_s
    fields = {
        "request_id": record.request_id, "method": record.method, "path": record.path,
        "status": record.status or CLIENT_CLOSED, "outcome": record.outcome if record.endpoint else None,
        "model": record.model, "key": record.tenant,
        "prompt_tokens": record.num_prompt_tokens, "cached_tokens": record.num_cached_tokens,
        "completion_tokens": record.num_completion_tokens if record.endpoint else None,
        "ttft_s": _round(record.ttft_s), "queue_s": _round(record.queue_time_s), "e2e_s": _round(e2e),
        "tokens_per_s": _round(record.num_completion_tokens / e2e) if record.num_completion_tokens else None,
    }
    if record.prompt is not None:
        fields["prompt"] = jsonable_encoder(record.prompt)
    return {key: value for key, value in fields.items() if value is not None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
