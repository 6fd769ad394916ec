"""Every error leaves as OpenAI's `{"error": {message, type, param, code}}`, mapped by type in one table;
on the Anthropic Messages routes the same error leaves in Anthropic's `{"type": "error", "error": {type,
message}}`, its type from the HTTP status."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from app.api.rate_limits import RateLimited
from app.engine.errors import (ContextLengthExceeded, EngineDead, EngineError, InvalidRequest, ModelLoadFailed,
                               Overloaded, UnknownModel)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"


class Draining(Exception):
    """The server is shutting down (SIGTERM): it takes no new requests, or ran out of time for this one."""

    def __init__(self, message: str = "the server is shutting down; retry on another instance") -> None:
        super().__init__(message)


class ClientGone(Exception):
    """The client of a non-streamed request disconnected before its answer was ready."""


class Unauthorized(Exception):
    def __init__(self) -> None:
        super().__init__("missing or invalid API key; send `Authorization: Bearer <key>` or `x-api-key: <key>`")


class RequestTimeout(Exception):
    """The request head or body did not arrive in time."""


class BodyTooLarge(Exception):
    pass


class HeadTooLarge(Exception):
    pass


class NotFound(Exception):
    """A stored response or a stream that does not exist, is forgotten, or belongs to another API key."""


class PreviousResponseNotFound(Exception):
    """`previous_response_id` names no response this API key stored (OpenAI answers 400, not 404)."""

    param = "previous_response_id"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Previous response with id {response_id!r} not found.")


class ResponseStateConflict(Exception):
    """A stored response cannot do what was asked in its state: cancel one that is not a background
    response, stream one whose events were not kept, chain after one still generating."""


class StreamCancelled(Exception):
    """Reported in-band: the generation was cancelled (asked to, or no client read it for too long)."""


# type -> (HTTP status, OpenAI error type, code); the first matching entry wins (subclasses first).
ERROR_TABLE: list[tuple[type[BaseException], int, str, str | None]] = [
    (ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded"),
    (InvalidRequest, 400, "invalid_request_error", None),
    (Unauthorized, 401, "invalid_request_error", "invalid_api_key"),
    (UnknownModel, 404, "invalid_request_error", "model_not_found"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (PreviousResponseNotFound, 400, "invalid_request_error", "previous_response_not_found"),
    (ResponseStateConflict, 400, "invalid_request_error", None),
    (RequestTimeout, 408, "invalid_request_error", "request_timeout"),
    (BodyTooLarge, 413, "invalid_request_error", "request_too_large"),
    (HeadTooLarge, 431, "invalid_request_error", "request_header_fields_too_large"),
    (ClientGone, 499, "client_closed_request", "client_disconnected"),  # nginx's code; nobody reads it
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),  # the tenant's own limit
    (Overloaded, 429, "rate_limit_error", "overloaded"),
    (StreamCancelled, 409, "invalid_request_error", "cancelled"),
    (Draining, 503, "service_unavailable", "draining"),
    (EngineDead, 503, "service_unavailable", "engine_unavailable"),
    (ModelLoadFailed, 503, "service_unavailable", "model_load_failed"),
    (EngineError, 500, "server_error", None),
]


# HTTP status -> Anthropic's error type (any other 4xx: invalid_request_error; 5xx: api_error).
ANTHROPIC_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                   413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                   529: "overloaded_error"}
ANTHROPIC_PATH = "/v1/messages"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def anthropic_body(status: int, body: dict) -> dict:
    """An OpenAI error body in Anthropic's shape; its message names the field, having no `param`."""
    error = body["error"]
    message, param = error["message"], error["param"]
    if param and not message.startswith(param):
        message = f"{param}: {message}"
    type_ = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": type_, "message": message}}


def shaped_for(path: str, status: int, body: dict) -> dict:
    """The error body in the shape of the API `path` belongs to."""
    if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/"):
        return anthropic_body(status, body)
    return body


def error_response(exc: BaseException, scope: Scope, headers: dict | None = None) -> JSONResponse:
    """The JSON response for `exc` by the table, for middleware that answers before any route runs."""
    status, body = describe(exc)
    return JSONResponse(shaped_for(scope["path"], status, body), status_code=status, headers=headers)


def describe(exc: BaseException, fields: dict[str, str] | None = None) -> tuple[int, dict]:
    """HTTP status and OpenAI error body for any exception (unknown ones become a 500). `fields` maps
    an engine parameter to the request field it came from, so `param` names what the client sent."""
    for error_type, status, type_, code in ERROR_TABLE:
        if isinstance(exc, error_type):
            param = getattr(exc, "param", None)
            return status, error_body(str(exc), type_, (fields or {}).get(param, param), code)
    return 500, error_body("internal server error", "server_error")


# pydantic names union branches in error locations ("str", "list[constrained-str]", ...); not fields.
_BRANCH_TAG = re.compile(r"^(str|int|float|bool|none|list|dict)$|[\[\-]")


def _validation_param(error: dict) -> str | None:
    parts = [p for p in error.get("loc", ()) if p != "body"]
    kept = [str(p) for p in parts if isinstance(p, int) or not _BRANCH_TAG.search(str(p))]
    return ".".join(kept) or None


def _most_relevant(errors: list[dict]) -> dict:
    """For a union, a broken constraint (too long, out of range) says more than a type mismatch."""
    for error in errors:
        if not str(error.get("type", "")).endswith("_type"):
            return error
    return errors[0] if errors else {}


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = _most_relevant(list(exc.errors()))
    if first.get("type") == "json_invalid":
        param = None
        message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}"
    else:
        param = _validation_param(first)
        # pydantic prefixes our validators' messages with "Value error, "; the param already says where.
        message = f"{param or 'body'}: {str(first.get('msg', 'invalid value')).removeprefix('Value error, ')}"
    return _respond(request, 400, error_body(message, "invalid_request_error", param))


def _http_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _respond(request, exc.status_code, error_body(str(exc.detail), type_), getattr(exc, "headers", None))


def _typed_response(request: Request, exc: Exception) -> JSONResponse:
    status, body = describe(exc, getattr(request.state, "engine_params", None))
    if status >= 500:
        log.error("request failed: %r", exc, exc_info=exc if status == 500 else None)
    headers = dict(exc.headers) if isinstance(exc, RateLimited) else {}
    if isinstance(exc, (Overloaded, RateLimited)):
        headers["Retry-After"] = str(exc.retry_after_s)
    return _respond(request, status, body, headers or None)


def _respond(request: Request, status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    """Note the error code for the request log; a 500 is sent outside the request-id middleware, so add the id."""
    request.state.error_code = body["error"]["code"]
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
    return JSONResponse(shaped_for(request.scope["path"], status, body), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_response)
    app.add_exception_handler(StarletteHTTPException, _http_response)
    for error_type in {entry[0] for entry in ERROR_TABLE}:
        app.add_exception_handler(error_type, _typed_response)
    # Anything else is a bug: still answer in the API's error shape (Starlette also logs it).
    app.add_exception_handler(Exception, _typed_response)
