"""uvicorn's h11 protocol with a deadline for each request's head (request line and headers).

uvicorn bounds a head's size (`h11_max_incomplete_event_size`) but not its time: a client that opens a
connection and trickles header bytes, or sends nothing at all, holds the socket for ever (slowloris).
Here each head gets `head_timeout_s` from the connection's start, or from the end of the previous
response on a keep-alive connection; past it a partly sent head gets a 408 and the connection closes.
Once the head is in, the body has its own deadline (app.api.request_limits).
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.api.errors import RequestTimeout, describe


def timeout_response(seconds: float) -> bytes:
    status, error = describe(RequestTimeout(f"the request head did not arrive within {seconds:g}s"))
    assert status == 408
    body = json.dumps(error).encode()
    head = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return head + body


class HeadDeadlineH11Protocol(H11Protocol):
    head_timeout_s: float = 10.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in (or the connection failed)
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next head on a keep-alive connection; a pipelined one may already have been read.
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial_head, _ = self.conn.trailing_data
        if partial_head:  # a client that said nothing gets no answer, like an idle keep-alive one
            self.transport.write(timeout_response(self.head_timeout_s))
        self.transport.close()


def h11_with_head_deadline(seconds: float) -> type[HeadDeadlineH11Protocol]:
    """The protocol class to give uvicorn's `http` option."""
    return type("H11WithHeadDeadline", (HeadDeadlineH11Protocol,), {"head_timeout_s": seconds})
