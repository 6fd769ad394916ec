"""RequestStream: one request's TokenEvents as an async iterator that always cleans up.

With n > 1 the events of all continuations arrive interleaved (each carries its `index`); the
stream ends after the last continuation's final event.

Closing it before the final event aborts the request, whether or not iteration ever began (an
async generator that was never started ignores `aclose()`), and a stream dropped without being
closed aborts itself when collected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.engine.types import TokenEvent


class RequestStream:
    def __init__(self, request_id: str, events: asyncio.Queue, on_abort: Callable[[str], None],
                 on_done: Callable[[str], None], num_choices: int = 1) -> None:
        self.request_id = request_id
        self._unfinished = num_choices  # the stream ends after each continuation's final event
        self._events = events
        self._on_abort = on_abort
        self._on_done = on_done
        self._finished = False
        self._closed = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._finished or self._closed:
            raise StopAsyncIteration
        event = await self._events.get()
        if isinstance(event, BaseException):
            self._close(abort=False)
            raise event
        if event.finish_reason is not None:
            self._unfinished -= 1
            if self._unfinished == 0:
                self._finished = True
                self._close(abort=False)
        return event

    async def aclose(self) -> None:
        """Stop listening; aborts the request unless its final event was already taken."""
        self._close(abort=not self._finished)

    def _close(self, abort: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if abort:
            self._on_abort(self.request_id)
        self._on_done(self.request_id)

    def __del__(self) -> None:
        # Safety net: a stream nobody closed (its response never started) must not run on.
        if not self._closed:
            self._close(abort=not self._finished)
