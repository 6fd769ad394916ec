"""StoreWriter: one writer for every stream of a process. Whatever frames all relays made while the
previous write ran go to the store in one call (one SQLite transaction, one Redis pipeline), so a busy
server pays one store round trip per batch of many streams' events, not one per event or per stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from app.api.store import Store
from app.api.store.base import Event

log = logging.getLogger(__name__)


class Written(Protocol):
    """What the writer needs of a relay."""

    key: str
    owner: str

    def unwritten(self) -> tuple[Sequence[Event], bool]:
        """The frames not yet handed to the store (now handed), and whether the stream has ended."""

    def stored(self) -> None:
        """Every frame of the ended stream is in the store."""


class StoreWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._dirty: dict[str, Written] = {}
        self._task: asyncio.Task | None = None

    def mark(self, relay: Written) -> None:
        """The relay has frames to write (or has ended)."""
        self._dirty[relay.key] = relay
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._dirty:
            relays, self._dirty = list(self._dirty.values()), {}
            appends = [(relay.key, relay.owner, *relay.unwritten()) for relay in relays]
            await self._write(appends)
            for relay, (_, _, _, ended) in zip(relays, appends):
                if ended:
                    relay.stored()

    async def _write(self, appends) -> None:
        try:
            await self.store.append_many(appends)
        except Exception:  # noqa: BLE001 - one stream's refusal must not lose the others' events
            for append in appends:
                await _one(self.store.append_many, append)

    async def flush(self) -> None:
        """Wait until everything marked so far is written."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


async def _one(append_many: Callable, append) -> None:
    try:
        await append_many([append])
    except Exception as exc:  # noqa: BLE001 - the stream still serves from memory
        log.warning("stream %s: writing events to the store failed: %r", append[0], exc)
