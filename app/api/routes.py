"""HTTP routes: validate -> engine -> JSON or an SSE stream. Each handler stays about ten lines."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from app.api.errors import ModelNotFound
from app.api.framing import ChatFramer, Framer
from app.api.schemas import ChatCompletionRequest, CompletionRequest
from app.api.sse import collect, stream_events
from app.engine.engine import Engine
from app.engine.errors import EngineDead

router = APIRouter()

KEEPALIVE_S = 15
# Proxies must pass tokens through as they come.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def served_model(body_model: str, engine: Engine) -> str:
    if engine.info is None:
        raise EngineDead("the model is not loaded yet")
    if body_model != engine.info.name:
        raise ModelNotFound(body_model)
    return engine.info.name


def sse_response(events, framer: Framer, echo_text: str | None = None) -> EventSourceResponse:
    return EventSourceResponse(stream_events(events, framer, echo_text), sep="\n",
                               ping=KEEPALIVE_S, headers=STREAM_HEADERS)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, engine: Engine = Depends(get_engine)):
    model = served_model(body.model, engine)
    text = body.prompt_text()
    prompt_ids = await engine.encode_text(text) if text is not None else engine.check_ids(body.prompt_ids())
    framer = Framer(f"cmpl-{uuid.uuid4().hex}", model, include_usage=body.include_usage)
    events = engine.generate(prompt_ids, body.to_sampling_params(), framer.id)
    echo = (text if text is not None else await engine.decode(prompt_ids)) if body.echo else None
    if body.stream:
        return sse_response(events, framer, echo)
    completion, last = await collect(events)
    return framer.response((echo or "") + completion, last)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, engine: Engine = Depends(get_engine)):
    model = served_model(body.model, engine)
    prompt_ids = await engine.encode_chat(body.template_messages())
    framer = ChatFramer(f"chatcmpl-{uuid.uuid4().hex}", model, include_usage=body.include_usage)
    events = engine.generate(prompt_ids, body.to_sampling_params(), framer.id)
    if body.stream:
        return sse_response(events, framer)
    completion, last = await collect(events)
    return framer.response(completion, last)


@router.get("/v1/models")
async def list_models(engine: Engine = Depends(get_engine)):
    info = engine.info
    models = [] if info is None else [{
        "id": info.name, "object": "model", "created": info.created, "owned_by": "tokenwire",
        "max_model_len": info.max_model_len}]
    return {"object": "list", "data": models}


@router.get("/health")
async def health(engine: Engine = Depends(get_engine)):
    """Liveness plus the engine's load; 503 once the model thread is not running."""
    body = {"status": "ok" if engine.is_alive else "unavailable", "running": engine.num_running,
            "waiting": engine.num_waiting, "active_requests": engine.num_active_requests,
            "kv_cache_bytes": engine.kv_cache_bytes}
    return JSONResponse(body, status_code=200 if engine.is_alive else 503)
