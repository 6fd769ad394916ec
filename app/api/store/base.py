"""What the store keeps and how it is asked: records (a stored Response with its input items) and event
logs (a stream's encoded server-sent events, in order, numbered from 0), each owned by the API key that
made it and visible to it alone, bounded by age and size.

Backends: SQLite in a file (the default; embedded, survives a restart) and Redis (replicas share it).
Values are opaque text (JSON, SSE frames): the store knows no API's fields.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Event = tuple[int, str]  # (position in its stream, the encoded SSE frame)
Append = tuple[str, str, Sequence[Event], bool]  # (stream, owner, events, ended): one stream's share of a write
POLL_S = 0.05  # how often a reader of a stream another process writes looks for more


def end_if_cancelled(cause: Exception | None = None) -> None:
    """Raise CancelledError when the running task was cancelled: a store client may turn a cancel into
    its own error or swallow it (redis-py does both, depending on where the cancel finds the call), and
    a loop that outlives store errors must still end when it is cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause


@dataclass(frozen=True)
class StoreLimits:
    max_age_s: float = 30 * 86400  # a record is dropped this long after its last write
    stream_retention_s: float = 600.0  # an event log is dropped this long after its last event
    max_bytes: int = 1 << 30  # records and event logs together; the least recently written go first


@dataclass(frozen=True)
class EventSlice:
    events: list[Event]  # the events after the position asked for, in order
    ended: bool  # the stream's last event is among those stored


class Store(Protocol):
    limits: StoreLimits

    async def put_record(self, key: str, owner: str, value: str) -> None:
        """Create or replace the record `key`."""

    async def get_record(self, key: str, owner: str) -> str | None:
        """The record, or None when it does not exist, expired, or belongs to another owner."""

    async def delete_record(self, key: str, owner: str) -> bool:
        """Remove the record (and the event log of the same key); False when there was none to see."""

    async def append_events(self, stream: str, owner: str, events: Sequence[Event], ended: bool = False) -> None:
        """Add events at the end of the stream's log (positions follow on); `ended`: no more will come."""

    async def append_many(self, appends: Sequence[Append]) -> list[Exception | None]:
        """Several streams' appends in one write (a transaction, a pipeline): a process's writer sends
        whatever all its streams made meanwhile. Each append stands alone: the answer holds, for each,
        None or why it was refused (ValueError: not the next position; PermissionError: another key's
        stream), and the others are written. Raises when the store could not be written at all."""

    async def read_events(self, stream: str, owner: str, after: int) -> EventSlice | None:
        """The events after position `after` (-1 for all); None for an unknown stream or another owner's."""

    async def request_cancel(self, key: str) -> None:
        """Ask whichever process runs `key` to stop it (it polls `cancel_requested`)."""

    async def cancel_requested(self, key: str) -> bool: ...

    async def cancels_among(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` someone asked to cancel (one query for every stream a process runs)."""

    async def prune(self) -> None:
        """Drop what is older than the limits allow, then the least recently written beyond the size bound."""

    async def close(self) -> None: ...


async def wait_events(store: Store, stream: str, owner: str, after: int, timeout_s: float) -> EventSlice | None:
    """Like read_events, but wait (up to timeout_s) until there is an event after `after` or the stream ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await store.read_events(stream, owner, after)
        if found is None or found.events or found.ended or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(POLL_S)
