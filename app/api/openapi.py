"""The OpenAPI document says what the server really answers.

FastAPI documents a 422 with its own error schema for every route with a body; this server answers a
bad body with 400 in OpenAI's error shape (Anthropic's on /v1/messages), a streamed request with
server-sent events, and refuses with 401/404/408/413/429/431/503 on the generation routes. Schema fuzzing
checks answers against this document.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from typing import Literal

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, used by every refusal."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error shape, used by every refusal on /v1/messages and /v1/messages/count_tokens."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class ProbeStatus(BaseModel):
    status: str


# One server-sent event of a stream, as SSE parsers (and schema fuzzers) see it.
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string", "description": "a JSON chunk; the last event is [DONE]"}}}


def _error(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


UNAUTHORIZED = {401: _error("API keys are configured and the request has no valid `Authorization: Bearer` key")}

GENERATION_RESPONSES: dict[int | str, dict] = {
    200: {"description": "the completion as JSON; with `stream: true`, a server-sent event stream of chunks "
                         "that ends with `data: [DONE]`",
          "content": {"text/event-stream": {"schema": SSE_EVENT}}},
    400: _error("a bad body or parameter, or a prompt + max_tokens that cannot fit the context or KV budget"),
    **UNAUTHORIZED,
    404: _error("`model` is none of the models GET /v1/models lists"),
    408: _error("the body did not arrive within TOKENWIRE_REQUEST_READ_TIMEOUT_S"),
    413: _error("the body is larger than TOKENWIRE_MAX_BODY_BYTES"),
    429: _error("running and waiting requests are at their caps, or the model is not loaded and the models "
                "in its way are busy; retry after `Retry-After` seconds"),
    431: _error("the request line and headers are larger than TOKENWIRE_MAX_HEADER_BYTES"),
    503: _error("the server is draining after SIGTERM, its model thread stopped, or the model failed to load"),
}


def _in_anthropic_shape(responses: dict[int | str, dict]) -> dict[int | str, dict]:
    return {status: {**entry, "model": AnthropicErrorResponse} if "model" in entry else entry
            for status, entry in responses.items()}


MESSAGES_RESPONSES = _in_anthropic_shape({
    **GENERATION_RESPONSES,
    200: {"description": "the Message as JSON; with `stream: true`, a server-sent event stream of named events "
                         "from `message_start` to `message_stop`",
          "content": {"text/event-stream": {"schema": SSE_EVENT}}},
})

TOKENIZER_RESPONSES: dict[int | str, dict] = {
    400: _error("a bad body: not exactly one of prompt/messages, a token id outside the vocabulary"),
    **UNAUTHORIZED,
    404: _error("`model` is none of the models GET /v1/models lists"),
    413: _error("the body is larger than TOKENWIRE_MAX_BODY_BYTES"),
    503: _error("the model failed to load"),
}

COUNT_TOKENS_RESPONSES = _in_anthropic_shape(TOKENIZER_RESPONSES)

MODEL_RESPONSES: dict[int | str, dict] = {
    **UNAUTHORIZED,
    404: _error("no model of that name (GET /v1/models lists them)"),
}

MODEL_UNLOAD_RESPONSES: dict[int | str, dict] = {
    400: _error("a bad body: not `{\"model\": name}`"),
    **MODEL_RESPONSES,
}

MODEL_LOAD_RESPONSES: dict[int | str, dict] = {
    **MODEL_UNLOAD_RESPONSES,
    429: _error("the models in its way are busy; retry after `Retry-After` seconds"),
    503: _error("the model failed to load (the message says why)"),
}

METRICS_RESPONSES: dict[int | str, dict] = {
    200: {"description": "Prometheus text exposition format",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    **UNAUTHORIZED,
}

PROBE_RESPONSES: dict[int | str, dict] = {
    503: {"model": ProbeStatus, "description": "not live / not ready (the body says why)"},
}


def install_openapi(app: FastAPI) -> None:
    """Serve the generated document without FastAPI's 422 responses and validation-error schemas."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

STORED_RESPONSE_RESPONSES: dict[int | str, dict] = {
    200: {"description": "the stored Response (or the deletion object, or the input items list); "
                         "GET with `stream=true`: its events after `starting_after`, as server-sent events",
          "content": {"text/event-stream": {"schema": SSE_EVENT}}},
    400: _error("a bad parameter; a cancel of a response made without `background`; a stream of a response "
                "whose events were not kept"),
    **UNAUTHORIZED,
    404: _error("no stored response of that id for this API key (never stored, deleted, expired, or another key's)"),
}
