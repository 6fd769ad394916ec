"""HeldMemory: KV memory held outside the scheduler's reservations, which it may take back for an admission.

Two things hold such memory: rows the KVStore keeps for later joiners after rows left (shrunk first,
as they only save a copy), and the prefix cache's entries (least recently used first).
"""

from __future__ import annotations

from app.engine.kv.kv_store import KVStore
from app.engine.kv.prefix_cache import PrefixCache


class HeldMemory:
    def __init__(self, store: KVStore, prefix_cache: PrefixCache | None) -> None:
        self.store = store
        self.prefix_cache = prefix_cache

    @property
    def num_bytes(self) -> int:
        return self.store.parked_bytes + (self.prefix_cache.num_bytes if self.prefix_cache is not None else 0)

    def release(self, nbytes: int, sparing: list[int] | None = None) -> int:
        """Free at least `nbytes` if that much is held; `sparing`: the prompt being admitted (its cached
        prefix goes last)."""
        freed = self.store.release_parked()
        if freed < nbytes and self.prefix_cache is not None:
            freed += self.prefix_cache.release(nbytes - freed, sparing)
        return freed
