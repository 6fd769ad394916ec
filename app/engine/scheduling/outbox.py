"""Outbox: the events a forward produced, handed to each event loop in one wake-up.

`loop.call_soon_threadsafe` writes to the loop's self-pipe every time: with 16 rows decoding that was
16 syscalls on the model thread per step. Sinks post here instead and the model thread flushes after
each forward (EngineCore.on_emitted) and each loop turn, so each loop gets a single callback carrying
every event, in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from app.engine.scheduling.sequence import EventSink

log = logging.getLogger(__name__)


def _deliver(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for events, event in batch:
        events.put_nowait(event)


class Outbox:
    def __init__(self) -> None:
        # deque: append and popleft are atomic, so a sink may post from any thread while another flushes.
        self._pending: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Queue, object]] = collections.deque()

    def sink(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> EventSink:
        """A sequence's sink: its events reach `events` on `loop` at the next flush."""
        return lambda event: self._pending.append((loop, events, event))

    def flush(self) -> None:
        """Hand everything posted so far to its loop (one callback per loop)."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        while True:
            try:
                loop, events, event = self._pending.popleft()
            except IndexError:
                break
            batches.setdefault(loop, []).append((events, event))
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # that loop is closed: nobody is left to read these events
                log.debug("dropped %d events for a closed event loop", len(batch))
