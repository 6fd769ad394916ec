"""StreamRelay: one generation's server-sent events, made once and read by any number of connections.

The relay runs the generation to its end whoever is connected: the first connection and every resume
read the same numbered events (`id: n`, 0 first), from memory while the generation runs here and a
while after, and from the store (written behind by the process's StoreWriter) on any replica or after
a restart. With
no reader for `unattended_s` (None: no bound, as for background responses) the generation is cancelled,
as a dropped connection cancelled it before, and the stream ends with the frames `ending` makes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from app.api.store.base import Event
from app.api.store_writer import StoreWriter

log = logging.getLogger(__name__)

Ending = Callable[[str], list[str]]  # a cancel's reason -> the last frames (without their `id:` lines)
FIRST_READER_GRACE_S = 1.0  # however short the unattended bound, the first connection gets this long to start reading


def numbered(position: int, frame: str) -> str:
    """An SSE frame with its position as the event id (Last-Event-ID names it on a resume)."""
    return f"id: {position}\n{frame}"


class StreamRelay:
    def __init__(self, key: str, owner: str, writer: StoreWriter | None, unattended_s: float | None,
                 ending: Ending) -> None:
        self.key, self.owner = key, owner
        self.frames: list[str] = []  # numbered, position = index
        self.ended = False
        self.cancelled: str | None = None  # why, once cancelled
        self._writer, self._unattended_s, self._ending = writer, unattended_s, ending
        self._readers = 0
        self._changed = asyncio.Event()
        self._unattended: asyncio.TimerHandle | None = None
        self._pump: asyncio.Task | None = None
        self._written = 0  # frames handed to the store
        loop = asyncio.get_running_loop()
        self.generated = loop.create_future()  # resolved when the last frame is made
        self.done = loop.create_future()  # resolved when the last frame is also in the store

    def start(self, frames: AsyncIterator[str]) -> None:
        self._pump = asyncio.create_task(self._run(frames), name=f"relay {self.key}")
        self._pump.add_done_callback(self._pump_done)
        if self._unattended_s is not None:  # a client that left before its response began is unattended too
            self._arm(max(self._unattended_s, FIRST_READER_GRACE_S))

    def _pump_done(self, _: asyncio.Task) -> None:
        """A pump cancelled before it first ran never reached its `finally`: end the stream here."""
        if not self.ended:
            self._cut_short(self.cancelled or "cancelled")

    async def _run(self, frames: AsyncIterator[str]) -> None:
        try:
            async with aclosing(frames):  # type: ignore[type-var]
                async for frame in frames:
                    self._add(frame)
        except asyncio.CancelledError:
            self._cut_short(self.cancelled or "cancelled")
        except Exception:  # the frame source reports its own failures in-band; this is a bug
            log.exception("stream %s failed", self.key)
            self._cut_short("error")
        finally:
            if not self.ended:
                self._end()

    def _cut_short(self, reason: str) -> None:
        """The `ending` frames for `reason`, then the end."""
        for frame in self._ending(reason):
            self._add(frame)
        self._end()

    def _add(self, frame: str) -> None:
        self.frames.append(numbered(len(self.frames), frame))
        self._wake()

    def _end(self) -> None:
        self.ended = True
        self.generated.set_result(None)
        self._disarm()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        self._flush()

    # ---- readers ----------------------------------------------------------------------------------

    async def follow(self, after: int = -1) -> AsyncIterator[str]:
        """The frames after position `after`, as they come, through the last."""
        self._readers += 1
        self._disarm()
        try:
            position = after + 1
            while True:
                changed = self._changed
                while position < len(self.frames):
                    yield self.frames[position]
                    position += 1
                if self.ended:
                    return
                await changed.wait()
        finally:
            self._readers -= 1
            if self._readers == 0 and not self.ended and self._unattended_s is not None:
                self._arm()

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the generation; the stream ends with the `ending` frames for `reason`."""
        if self._pump is not None and not self.ended and self.cancelled is None:
            self.cancelled = reason
            self._pump.cancel()

    def _arm(self, delay_s: float | None = None) -> None:
        self._disarm()
        delay_s = self._unattended_s if delay_s is None else delay_s
        self._unattended = asyncio.get_running_loop().call_later(delay_s, self.cancel, "unattended")

    def _disarm(self) -> None:
        if self._unattended is not None:
            self._unattended.cancel()
            self._unattended = None

    # ---- the store, written behind ----------------------------------------------------------------

    def _flush(self) -> None:
        if self._writer is None:
            if self.ended and not self.done.done():
                self.done.set_result(None)
        else:
            self._writer.mark(self)

    def unwritten(self) -> tuple[list[Event], bool]:
        start, self._written = self._written, len(self.frames)
        return list(enumerate(self.frames[start:], start)), self.ended

    def unwrite(self, position: int) -> None:
        self._written = min(self._written, position)

    def stored(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
