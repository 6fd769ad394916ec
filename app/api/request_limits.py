"""RequestLimits: a pure ASGI middleware for the size of a request's head and body, and the time to
receive the body.

The body is checked as the bytes arrive (the declared Content-Length first, then the real count), so
nothing beyond the cap is ever buffered and a slow sender never reaches the engine. A refused request
gets the error shape of its API with `Connection: close`; the app then sees a client disconnect.
"""

from __future__ import annotations

import asyncio
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import BodyTooLarge, HeadTooLarge, RequestTimeout, error_response

DISCONNECT: Message = {"type": "http.disconnect"}


def declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def head_size(scope: Scope) -> int:
    """Bytes of the request line and headers as sent (`NAME: value\r\n` each)."""
    query = scope.get("query_string", b"")
    target = len(scope.get("raw_path") or scope["path"].encode()) + (len(query) + 1 if query else 0)
    line = len(scope.get("method", "")) + 1 + target + len(" HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ())) + 2


def refusal(exc: Exception, scope: Scope) -> JSONResponse:
    # Closing the connection stops a client that is still sending; keep-alive would wait for it.
    return error_response(exc, scope, headers={"Connection": "close"})


class RequestLimits:
    def __init__(self, app: ASGIApp, max_header_bytes: int, max_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # uvicorn's h11 bounds what it buffers, but a head that arrives in one read passes it whole.
        if head_size(scope) > self.max_header_bytes:
            await self.head_too_large(scope)(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self.too_large(scope)(scope, receive, send)
            return
        guarded = GuardedBody(self, scope, receive, send)
        await self.app(scope, guarded.receive, guarded.send)

    def head_too_large(self, scope: Scope) -> JSONResponse:
        return refusal(HeadTooLarge(f"the request line and headers are larger than this server's limit of "
                                    f"{self.max_header_bytes} bytes"), scope)

    def too_large(self, scope: Scope) -> JSONResponse:
        return refusal(BodyTooLarge(f"the request body is larger than this server's limit of {self.max_bytes} bytes"),
                       scope)

    def too_slow(self, scope: Scope) -> JSONResponse:
        return refusal(RequestTimeout(f"the request body did not arrive within {self.read_timeout_s:g} seconds"),
                       scope)


class GuardedBody:
    """One request's receive/send under the limits; they apply until the body is complete."""

    def __init__(self, limits: RequestLimits, scope: Scope, receive: Receive, send: Send) -> None:
        self.limits = limits
        self.scope = scope
        self._receive = receive
        self._send = send
        self.deadline = time.monotonic() + limits.read_timeout_s
        self.num_bytes = 0
        self.body_complete = False
        self.response_started = False
        self.refused = False

    async def receive(self) -> Message:
        if self.refused:
            return DISCONNECT
        if self.body_complete:  # later receives only wait for a disconnect (SSE)
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), max(self.deadline - time.monotonic(), 0))
        except asyncio.TimeoutError:
            return await self._refuse(self.limits.too_slow(self.scope))
        if message["type"] == "http.request":
            self.num_bytes += len(message.get("body", b""))
            if self.num_bytes > self.limits.max_bytes:
                return await self._refuse(self.limits.too_large(self.scope))
            self.body_complete = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.refused:  # the app's answer to the disconnect it was shown
            return
        self.response_started = self.response_started or message["type"] == "http.response.start"
        await self._send(message)

    async def _refuse(self, response: JSONResponse) -> Message:
        self.refused = True
        if not self.response_started:
            await response(self.scope, self._receive, self._send)
        return DISCONNECT
