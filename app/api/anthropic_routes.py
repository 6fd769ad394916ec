"""Anthropic's Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`, run as chat requests."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.anthropic_framing import message_of, stream_message_events
from app.api.anthropic_schemas import CountTokensRequest, MessagesRequest
from app.api.openapi import COUNT_TOKENS_RESPONSES, MESSAGES_RESPONSES
from app.api.routes import accept, run_chat, use_model
from app.api.stream_routes import sse_response
from app.api.sse import collect

router = APIRouter()


@router.post("/v1/messages", responses=MESSAGES_RESPONSES)
async def messages(body: MessagesRequest, request: Request):
    engine, share = await accept(body, request)
    framer, events = await run_chat(body.to_chat(), request, engine, share, "msg_", body.messages)
    if body.stream:
        return sse_response(request, stream_message_events(events, framer))
    return message_of(framer, await collect(events, request.is_disconnected))


@router.post("/v1/messages/count_tokens", responses=COUNT_TOKENS_RESPONSES)
async def count_tokens(body: CountTokensRequest, request: Request):
    request.state.engine_params = body.engine_params()
    engine, chat = await use_model(request, body.model), body.to_chat()
    return {"input_tokens": len(await engine.encode_chat(chat.template_messages(), tools=chat.template_tools()))}
