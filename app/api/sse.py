"""TokenEvents -> server-sent events: one chunk per text delta, a final chunk with finish_reason,
an optional usage chunk, then `[DONE]`. A failure after the stream began becomes one error event,
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


async def stream_events(events: AsyncIterator[TokenEvent], framer: Framer,
                        echo_text: str | None = None) -> AsyncIterator[dict]:
    """Yield sse-starlette event dicts for one streamed response."""
    async with aclosing(events):  # type: ignore[type-var]
        try:
            for body in framer.first_chunks(echo_text):
                yield {"data": json_data(body)}
            async for event in events:
                reason = event.finish_reason.value if event.finish_reason else None
                if event.text or reason:
                    yield {"data": json_data(framer.chunk(event.text, reason))}
                if reason and framer.include_usage:
                    yield {"data": json_data(framer.usage_chunk(event))}
        except Exception as exc:  # the status line is gone: report in-band
            _, body = describe(exc)
            log.warning("stream %s failed after it began: %r", framer.id, exc)
            yield {"data": json_data(body)}
    yield {"data": DONE}


async def collect(events: AsyncIterator[TokenEvent],
                  is_disconnected: Callable[[], Awaitable[bool]] | None = None,
                  poll_s: float = 0.25) -> tuple[str, TokenEvent]:
    """Run a request to the end: (all text, last event). Aborts it if the client goes away."""
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


async def _gather(events: AsyncIterator[TokenEvent]) -> tuple[str, TokenEvent]:
    parts: list[str] = []
    last: TokenEvent | None = None
    async with aclosing(events):  # type: ignore[type-var]
        async for last in events:
            parts.append(last.text)
    assert last is not None, "the engine always ends a request with a final event"
    return "".join(parts), last
