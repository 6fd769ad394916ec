"""HTTP routes: validate -> engine -> JSON or an SSE stream. Each handler stays about ten lines."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.framers import chat_framer, completion_framer
from app.api.framing import ChatFramer
from app.api.openapi import GENERATION_RESPONSES, TOKENIZER_RESPONSES
from app.api.record import TrackedStream
from app.api.request_context import completion_id, record_of, track
from app.api.schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from app.api.sse import collect, stream_events
from app.api.stream_routes import resumable_response
from app.api.engine_port import ServingEngine
from app.engine.errors import EngineDead
from app.engine.model_pool import ModelPool
from app.engine.types import Share

router = APIRouter()


async def get_models(request: Request) -> ModelPool:
    # async: FastAPI would run a plain function in a worker thread, a hop for every request.
    return request.app.state.models


async def use_model(request: Request, name: str, keep_alive_s: float | None = None) -> ServingEngine:
    """The named model's engine (loaded first if it is not), held until this request's response ends
    (app/api/model_leases.py)."""
    lease = await request.app.state.models.acquire(name, keep_alive_s)
    request.state.model_leases.append(lease)
    if lease.engine.info is None:
        raise EngineDead("the model is not loaded yet")
    return lease.engine


async def accept(body, request: Request) -> tuple[ServingEngine, Share]:
    """The engine of the model the body names, and the request's share of it: an unknown model is a
    404 before the tenant's limits count the request, and a model is loaded only for a request they let in.
    Engine errors will name this body's fields."""
    request.state.engine_params = body.engine_params()
    request.app.state.models.check(body.model)
    record_of(request).model = body.model
    share = admit(request)
    return await use_model(request, body.model, body.keep_alive), share


def admit(request: Request) -> Share:
    """Count a generation request against its tenant's limits; its share of the engine."""
    tenant = getattr(request.state, "tenant", None)
    record_of(request).response_headers.update(request.app.state.rate_limits.admit(tenant))
    return Share() if tenant is None else tenant.share


@router.post("/v1/completions", responses=GENERATION_RESPONSES)
async def completions(body: CompletionRequest, request: Request):
    (engine, share), model = await accept(body, request), body.model
    text = body.prompt_text()
    prompt_ids = await engine.encode_text(text) if text is not None else engine.check_ids(body.prompt_ids())
    echo = (text if text is not None else await engine.decode(prompt_ids)) if body.echo else None
    framer = await completion_framer(body, completion_id(request, "cmpl-"), model, engine, echo, prompt_ids)
    events = track(request, await engine.submit(prompt_ids, body.to_sampling_params(), framer.id, share), model,
                   body.prompt, body.n)
    if body.stream:
        return resumable_response(request, stream_events(events, framer))
    return framer.response(await collect(events, request.is_disconnected))


async def run_chat(body: ChatCompletionRequest, request: Request, engine: ServingEngine, share: Share,
                   id_prefix: str, prompt: object, split_reasoning: bool = True,
                   id_: str | None = None) -> tuple[ChatFramer, TrackedStream]:
    """Encode, frame and submit a chat request (/v1/chat/completions, and /v1/messages and /v1/responses
    translated to one). `id_`: the answer's id (else the request's, with `id_prefix`)."""
    prompt_ids = await engine.encode_chat(body.template_messages(), tools=body.template_tools())
    framer = await chat_framer(body, id_ or completion_id(request, id_prefix), body.model, engine,
                               await engine.opens_reasoning(prompt_ids), split_reasoning)
    params = body.to_sampling_params(engine.info)
    events = track(request, await engine.submit(prompt_ids, params, framer.id, share), body.model, prompt, body.n)
    return framer, events


@router.post("/v1/chat/completions", responses=GENERATION_RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    engine, share = await accept(body, request)
    framer, events = await run_chat(body, request, engine, share, "chatcmpl-", body.messages)
    if body.stream:
        return resumable_response(request, stream_events(events, framer))
    return framer.response(await collect(events, request.is_disconnected))


@router.post("/tokenize", responses=TOKENIZER_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request):
    request.state.engine_params = body.engine_params()
    engine = await use_model(request, body.model)
    if body.prompt is not None:
        tokens = await engine.encode_text(body.prompt, body.add_special_tokens is not False)
    else:
        tokens = await engine.encode_chat(body.template_messages(), bool(body.add_special_tokens))
    return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.info.max_model_len}


@router.post("/detokenize", responses=TOKENIZER_RESPONSES)
async def detokenize(body: DetokenizeRequest, request: Request):
    engine = await use_model(request, body.model)
    tokens = engine.check_ids(body.tokens, param="tokens") if body.tokens else []
    return {"prompt": await engine.decode(tokens)}
