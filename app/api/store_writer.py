"""StoreWriter: one writer for every stream of a process. Whatever frames all relays made while the
previous write ran go to the store in one call (one SQLite transaction, one Redis pipeline), so a busy
server pays one store round trip per batch of many streams' events, not one per event or per stream
(and waits COALESCE_S before each, so even one fast stream writes several events at a time: the store's
copy trails the stream by about that much; the stream itself never waits). A stream's first frames are
written at once, so another replica can find it (resume, cancel) as soon as its client has a frame.

A store that cannot be written (locked, unreachable) gets the same frames again RETRY_S later, up to
MAX_RETRIES times: no frame is skipped, so a stored stream never has a gap. A stream the store refuses
(not the next position, another key's) is written no more; it is still served from memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from app.api.store import Store, end_if_cancelled
from app.api.store.base import Event

log = logging.getLogger(__name__)

COALESCE_S = 0.02  # a write waits this long for more frames: a lone fast stream writes ~5 per batch, not 1
RETRY_S = 1.0
MAX_RETRIES = 60  # about a minute of a store down before a stream's stored copy is given up


class Written(Protocol):
    """What the writer needs of a relay."""

    key: str
    owner: str
    ended: bool

    def unwritten(self) -> tuple[Sequence[Event], bool]:
        """The frames not yet handed to the store (now handed), and whether the stream has ended."""

    def unwrite(self, position: int) -> None:
        """The store did not take the frames from `position` on: hand them again next time."""

    def stored(self) -> None:
        """Every frame of the ended stream is in the store (or never will be)."""


class StoreWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._dirty: dict[str, Written] = {}  # to write next
        self._waiting: dict[str, Written] = {}  # to write again after RETRY_S
        self._failures: dict[str, int] = {}  # consecutive failed writes, by stream
        self._refused: set[str] = set()  # written no more
        self._known: set[str] = set()  # streams the store has heard of
        self._task: asyncio.Task | None = None
        self._retry: asyncio.TimerHandle | None = None

    def mark(self, relay: Written) -> None:
        """The relay has frames to write (or has ended)."""
        if relay.key in self._refused:
            if relay.ended:
                self._done(relay)
            return
        if relay.key in self._waiting:
            return  # its frames go with the retry
        self._dirty[relay.key] = relay
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._dirty:
            if self._dirty.keys() <= self._known:  # a new stream is written at once: other replicas can find it
                await asyncio.sleep(COALESCE_S)
            relays, self._dirty = list(self._dirty.values()), {}
            appends = [(relay.key, relay.owner, *relay.unwritten()) for relay in relays]
            try:
                outcomes: Sequence[Exception | None] = await self.store.append_many(appends)
            except Exception as exc:  # noqa: BLE001 - the store is down or locked: the same frames again later
                end_if_cancelled(exc)
                self._failed(relays, appends, exc)
                continue
            for relay, (_, _, _, ended), refused in zip(relays, appends, outcomes):
                self._failures.pop(relay.key, None)
                self._known.add(relay.key)
                if refused is not None:
                    log.warning("stream %s: the store refused its events; kept in memory only: %r", relay.key, refused)
                    self._refused.add(relay.key)
                if ended or (refused is not None and relay.ended):
                    self._done(relay)

    def _failed(self, relays: list[Written], appends, exc: Exception) -> None:
        for relay, (_, _, events, _) in zip(relays, appends):
            failures = self._failures[relay.key] = self._failures.get(relay.key, 0) + 1
            if failures > MAX_RETRIES:
                log.warning("stream %s: the store could not be written %d times; kept in memory only: %r",
                            relay.key, MAX_RETRIES, exc)
                self._refused.add(relay.key)
                if relay.ended:
                    self._done(relay)
                continue
            if events:
                relay.unwrite(events[0][0])
            self._waiting[relay.key] = relay
        if self._waiting and self._retry is None:
            log.warning("writing %d streams' events to the store failed; again in %gs: %r",
                        len(self._waiting), RETRY_S, exc)
            self._retry = asyncio.get_running_loop().call_later(RETRY_S, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        waiting, self._waiting = self._waiting, {}
        for relay in waiting.values():
            self.mark(relay)

    def _done(self, relay: Written) -> None:
        self._failures.pop(relay.key, None)
        self._known.discard(relay.key)
        self._refused.discard(relay.key)
        relay.stored()

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait (at most timeout_s) until everything marked so far is written."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task], timeout=timeout_s)
