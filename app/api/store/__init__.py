"""The store: `open_store(url, limits)` picks the backend by the URL's scheme."""

from __future__ import annotations

from app.api.store.base import EventSlice, Store, StoreLimits, end_if_cancelled, wait_events

__all__ = ["EventSlice", "Store", "StoreLimits", "end_if_cancelled", "open_store", "wait_events"]


def open_store(url: str, limits: StoreLimits = StoreLimits()) -> Store:
    """`sqlite:///relative/path`, `sqlite:////absolute/path`, `sqlite:///:memory:`, or `redis://...` / `rediss://...`."""
    if url.startswith("sqlite:///"):
        from app.api.store.sqlite_store import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), limits)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from app.api.store.redis_store import RedisStore

        return RedisStore(url, limits)
    raise ValueError(f"TOKENWIRE_STORE_URL {url!r}: use sqlite:///PATH or redis://HOST:PORT/DB")
