"""TokenEvents -> server-sent events: the chunks the framer makes of each event (text deltas, tool-call
pieces, a final chunk per choice with its finish_reason), an optional usage chunk, then `[DONE]`. A failure after the stream began becomes one error event,
then `[DONE]`. Leaving early closes the engine iterator, which aborts the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from app.api.errors import ClientGone, describe
from app.api.framing import Framer
from app.engine.types import TokenEvent

log = logging.getLogger(__name__)

DONE = "[DONE]"


def json_data(body: dict) -> str:
    """An event's compact JSON payload (non-ASCII kept as is)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def data_frame(data: str) -> str:
    """One `data:` event as sse-starlette would write it (with sep "\n"): our payloads are compact
    JSON or [DONE], never holding a line break, so one line."""
    return f"data: {data}\n\n"


async def stream_events(events: AsyncIterator[TokenEvent], framer: Framer) -> AsyncIterator[str]:
    """Yield the frames of one streamed response (app/api/stream_routes.py numbers and relays them)."""
    async with aclosing(events):  # type: ignore[type-var]
        try:
            for body in framer.opening_chunks():
                yield data_frame(json_data(body))
            async for event in events:
                for body in framer.on_event(event):
                    yield data_frame(json_data(body))
        except Exception as exc:  # the status line is gone: report in-band
            _, body = describe(exc)
            log.warning("stream %s failed after it began: %r", framer.id, exc)
            yield data_frame(json_data(body))
    yield data_frame(DONE)


async def collect(events: AsyncIterator[TokenEvent],
                  is_disconnected: Callable[[], Awaitable[bool]] | None = None,
                  poll_s: float = 0.25) -> list[TokenEvent]:
    """Run a request to the end: every event, in order. Aborts it if the client goes away."""
    task = asyncio.ensure_future(_gather(events))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if is_disconnected is not None and await is_disconnected():
                raise ClientGone("the client disconnected before the completion was ready")
    finally:
        if not task.done():
            task.cancel()  # closes the engine stream, which aborts the request
            await asyncio.gather(task, return_exceptions=True)


async def _gather(events: AsyncIterator[TokenEvent]) -> list[TokenEvent]:
    async with aclosing(events):  # type: ignore[type-var]
        gathered = [event async for event in events]
    assert gathered and gathered[-1].finish_reason is not None, "the engine always ends a request with a final event"
    return gathered
