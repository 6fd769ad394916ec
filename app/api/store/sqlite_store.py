"""The store in one SQLite file (WAL): embedded, no set-up, survives a restart. Processes on one host
may share the file. Every call runs on the store's own thread, so the event loop never waits on disk."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from app.api.store.base import Append, Event, EventSlice, StoreLimits

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, owner TEXT NOT NULL, value TEXT NOT NULL,
                                    written REAL NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, owner TEXT NOT NULL, next INTEGER NOT NULL,
                                    ended INTEGER NOT NULL, written REAL NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (stream TEXT NOT NULL, position INTEGER NOT NULL, frame TEXT NOT NULL,
                                   PRIMARY KEY (stream, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cancels (key TEXT PRIMARY KEY, written REAL NOT NULL);
CREATE INDEX IF NOT EXISTS records_written ON records (written);
CREATE INDEX IF NOT EXISTS streams_written ON streams (written);
"""
CANCEL_TTL_S = 3600.0
# An ended stream is kept for the retention after its last event; one still being written (a queued
# background response makes no event for a while) for the records' age bound.
_EXPIRED = "((ended = 1 AND written <= ?) OR written <= ?)"


class SqliteStore:
    def __init__(self, path: str, limits: StoreLimits = StoreLimits()) -> None:
        self.limits = limits
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenwire-store")
        self._db = self._thread.submit(self._connect).result()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash, one fsync per checkpoint
        db.executescript(SCHEMA)
        return db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, self._db)

    # ---- records ----------------------------------------------------------------------------------

    async def put_record(self, key: str, owner: str, value: str) -> None:
        def put(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                       "value = excluded.value, written = excluded.written, bytes = excluded.bytes "
                       "WHERE records.owner = excluded.owner", (key, owner, value, time.time(), len(value)))
        await self._run(put)

    async def get_record(self, key: str, owner: str) -> str | None:
        def get(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM records WHERE key = ? AND owner = ? AND written > ?",
                             (key, owner, time.time() - self.limits.max_age_s)).fetchone()
            return row and row[0]
        return await self._run(get)

    async def delete_record(self, key: str, owner: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                gone = db.execute("DELETE FROM records WHERE key = ? AND owner = ?", (key, owner)).rowcount
                if gone:
                    _drop_streams(db, [key])
            return bool(gone)
        return await self._run(delete)

    # ---- event logs -------------------------------------------------------------------------------

    async def append_events(self, stream: str, owner: str, events: Sequence[Event], ended: bool = False) -> None:
        refused = (await self.append_many([(stream, owner, events, ended)]))[0]
        if refused is not None:
            raise refused

    async def append_many(self, appends: Sequence[Append]) -> list[Exception | None]:
        def append(db: sqlite3.Connection) -> list[Exception | None]:
            outcomes: list[Exception | None] = []
            with _transaction(db):
                for stream, owner, events, ended in appends:
                    db.execute("SAVEPOINT one")  # a refused append is undone alone
                    try:
                        _append(db, stream, owner, events, ended)
                        outcomes.append(None)
                    except (ValueError, PermissionError) as refused:
                        db.execute("ROLLBACK TO one")
                        outcomes.append(refused)
                    db.execute("RELEASE one")
            return outcomes
        return await self._run(append)

    async def read_events(self, stream: str, owner: str, after: int) -> EventSlice | None:
        def read(db: sqlite3.Connection) -> EventSlice | None:
            row = db.execute(f"SELECT ended FROM streams WHERE stream = ? AND owner = ? AND NOT ({_EXPIRED})",
                             (stream, owner, *self._expiry())).fetchone()
            if row is None:
                return None
            events = db.execute("SELECT position, frame FROM events WHERE stream = ? AND position > ? "
                                "ORDER BY position", (stream, after)).fetchall()
            return EventSlice(events, bool(row[0]))
        return await self._run(read)

    def _expiry(self) -> tuple[float, float]:
        now = time.time()
        return now - self.limits.stream_retention_s, now - self.limits.max_age_s

    # ---- cancellation -----------------------------------------------------------------------------

    async def request_cancel(self, key: str) -> None:
        await self._run(lambda db: db.execute("INSERT OR REPLACE INTO cancels VALUES (?, ?)", (key, time.time())))

    async def cancel_requested(self, key: str) -> bool:
        return await self._run(
            lambda db: db.execute("SELECT 1 FROM cancels WHERE key = ?", (key,)).fetchone() is not None)

    async def cancels_among(self, keys: Sequence[str]) -> set[str]:
        def among(db: sqlite3.Connection) -> set[str]:
            marks = ",".join("?" * len(keys))
            return {row[0] for row in db.execute(f"SELECT key FROM cancels WHERE key IN ({marks})", list(keys))}
        return await self._run(among) if keys else set()

    # ---- bounds -----------------------------------------------------------------------------------

    async def prune(self) -> None:
        await self._run(self._prune)

    def _prune(self, db: sqlite3.Connection) -> None:
        now, limits = time.time(), self.limits
        with _transaction(db):
            db.execute("DELETE FROM records WHERE written <= ?", (now - limits.max_age_s,))
            old = [row[0] for row in db.execute(f"SELECT stream FROM streams WHERE {_EXPIRED}", self._expiry())]
            _drop_streams(db, old)
            db.execute("DELETE FROM cancels WHERE written <= ?", (now - CANCEL_TTL_S,))
            total = db.execute("SELECT (SELECT coalesce(sum(bytes), 0) FROM records) + "
                               "(SELECT coalesce(sum(bytes), 0) FROM streams)").fetchone()[0]
            if total <= limits.max_bytes:
                return
            # A stream still being written is never evicted for room (its generation would lose its log).
            oldest = db.execute("SELECT 'r', key, written, bytes FROM records UNION ALL "
                                "SELECT 's', stream, written, bytes FROM streams WHERE ended = 1 ORDER BY written")
            records, streams = [], []
            for kind, key, _, size in oldest:
                (records if kind == "r" else streams).append(key)
                total -= size
                if total <= limits.max_bytes * 0.9:  # some headroom, so a full store does not prune on every write
                    break
            db.executemany("DELETE FROM records WHERE key = ?", [(key,) for key in records])
            _drop_streams(db, streams)

    async def size_bytes(self) -> int:
        return await self._run(lambda db: db.execute(
            "SELECT (SELECT coalesce(sum(bytes), 0) FROM records) + (SELECT coalesce(sum(bytes), 0) FROM streams)"
        ).fetchone()[0])

    async def close(self) -> None:
        await self._run(lambda db: db.close())
        self._thread.shutdown(wait=True)


def _append(db: sqlite3.Connection, stream: str, owner: str, events: Sequence[Event], ended: bool) -> None:
    row = db.execute("SELECT owner, next FROM streams WHERE stream = ?", (stream,)).fetchone()
    if row is not None and row[0] != owner:
        raise PermissionError(f"stream {stream} belongs to another key")
    expected = 0 if row is None else row[1]
    if events and events[0][0] != expected:
        raise ValueError(f"stream {stream}: event {events[0][0]} appended where {expected} is next")
    db.executemany("INSERT INTO events VALUES (?, ?, ?)", [(stream, position, frame) for position, frame in events])
    db.execute("INSERT INTO streams VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream) DO UPDATE SET "
               "next = excluded.next, ended = excluded.ended, written = excluded.written, "
               "bytes = streams.bytes + excluded.bytes",
               (stream, owner, expected + len(events), int(ended), time.time(), sum(len(f) for _, f in events)))


def _drop_streams(db: sqlite3.Connection, streams: list[str]) -> None:
    db.executemany("DELETE FROM events WHERE stream = ?", [(s,) for s in streams])
    db.executemany("DELETE FROM streams WHERE stream = ?", [(s,) for s in streams])


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the connection runs in autocommit otherwise."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *_) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
