"""StreamHub: every resumable stream of this process, and the way to one that lives elsewhere.

A stream is found by its key (a chat stream's opaque id, a response's id) and its owner (the API key's
tenant; "" when the API is open): first among this process's relays (running, or ended a moment ago),
then in the store, where another replica, or this process before a restart, wrote it. A stream another
process still generates is followed by polling the store; a cancel for it is left in the store, which
the process running it checks every CANCEL_POLL_S.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from app.api.store import Store, end_if_cancelled, wait_events
from app.api.store_writer import StoreWriter
from app.api.stream_relay import Ending, StreamRelay

log = logging.getLogger(__name__)

LINGER_S = 5.0  # an ended relay stays in memory this long after its events are stored
CANCEL_POLL_S = 0.5
STALL_S = 300.0  # a stream followed through the store that gains nothing for this long is given up
NO_EVENTS_YET = -1


class StreamHub:
    def __init__(self, store: Store, unattended_s: float | None) -> None:
        self.store = store
        self.writer = StoreWriter(store)
        self.unattended_s = unattended_s  # for streams that stop when nobody reads them
        self._relays: dict[str, StreamRelay] = {}
        self._watcher: asyncio.Task | None = None

    def open(self, key: str, owner: str, frames: AsyncIterator[str], ending: Ending,
             attended: bool = True, persist: bool = True) -> StreamRelay:
        """Run a generation's frames through a new relay. `attended`: cancel it when nobody reads it
        for the hub's bound (False: run to the end, as a background response does). `persist`: write its
        events to the store (False: nothing kept, as for `store: false`; it is followed here only)."""
        relay = StreamRelay(key, owner, self.writer if persist else None, self.unattended_s if attended else None,
                            ending)
        self._relays[key] = relay
        relay.start(frames)
        relay.done.add_done_callback(lambda _: asyncio.get_running_loop().call_later(LINGER_S, self._drop, relay))
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_cancels())
        return relay

    def _drop(self, relay: StreamRelay) -> None:
        if self._relays.get(relay.key) is relay:
            del self._relays[relay.key]

    def local(self, key: str, owner: str) -> StreamRelay | None:
        relay = self._relays.get(key)
        return relay if relay is not None and relay.owner == owner else None

    async def follow(self, key: str, owner: str, after: int = NO_EVENTS_YET) -> AsyncIterator[str] | None:
        """The stream's frames after position `after`, through its last; None when it is not known."""
        if (relay := self.local(key, owner)) is not None:
            return relay.follow(after)
        first = await self.store.read_events(key, owner, after)
        return None if first is None else self._from_store(key, owner, first.events, first.ended, after)

    async def _from_store(self, key: str, owner: str, events, ended: bool, after: int) -> AsyncIterator[str]:
        while True:
            for after, frame in events:
                yield frame
            if ended:
                return
            found = await wait_events(self.store, key, owner, after, STALL_S)
            if found is None or not (found.events or found.ended):
                log.warning("stream %s: nothing new in the store for %gs; its follower is let go", key, STALL_S)
                return
            events, ended = found.events, found.ended

    async def cancel(self, key: str, owner: str) -> bool:
        """Cancel the stream's generation wherever it runs; False when the stream is not known."""
        if (relay := self.local(key, owner)) is not None:
            relay.cancel()
            return True
        found = await self.store.read_events(key, owner, 1 << 62)
        if found is None:
            return False
        if not found.ended:
            await self.store.request_cancel(key)
        return True

    async def _watch_cancels(self) -> None:
        """Cancels left in the store by other processes, for the relays running here."""
        while running := [relay for relay in self._relays.values() if not relay.ended]:
            try:
                for key in await self.store.cancels_among([relay.key for relay in running]):
                    if (relay := self._relays.get(key)) is not None:
                        relay.cancel()
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not end the watch
                end_if_cancelled(exc)
                log.warning("reading cancel requests from the store failed: %r", exc)
            end_if_cancelled()
            await asyncio.sleep(CANCEL_POLL_S)

    @property
    def running(self) -> int:
        return sum(not relay.ended for relay in self._relays.values())

    async def stop(self, reason: str = "shutdown") -> None:
        """Cancel what still runs and wait until every relay's events are in the store."""
        relays = list(self._relays.values())
        for relay in relays:
            relay.cancel(reason)
        if relays:
            await asyncio.wait([relay.done for relay in relays], timeout=10)
        await self.writer.flush()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher], timeout=10)
