"""HeldMemory: rows kept for joiners give way first, then cached prefixes (made-up KV, no model)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from app.engine.kv.held_memory import HeldMemory
from app.engine.kv.kv_store import KVStore
from app.engine.kv.prefix_cache import PrefixCache, PrefixCacheConfig


def _store_with_a_free_row() -> KVStore:
    store = KVStore(torch.device("cpu"))
    for owner in "abcd":
        kv = [(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))] * 2
        store.join([owner], DynamicCache(ddp_cache_data=kv), torch.ones((1, 3), dtype=torch.long))
    store.remove(["a"])
    return store


def test_kept_rows_go_first_then_cached_prefixes():
    store = _store_with_a_free_row()
    cache = PrefixCache(PrefixCacheConfig(max_bytes=1 << 20, min_tokens=1))
    cache.insert(list(range(10)), [(torch.ones(1, 2, 10, 4), torch.ones(1, 2, 10, 4))] * 2, 1 << 20)
    held = HeldMemory(store, cache)
    parked, cached = store.parked_bytes, cache.num_bytes
    assert parked > 0 and cached > 0 and held.num_bytes == parked + cached
    assert held.release(parked) == parked and cache.num_bytes == cached  # the kept row sufficed
    store.remove(["b"])
    parked = store.parked_bytes
    assert held.release(parked + 1) > parked and store.parked_bytes == 0 and cache.num_bytes < cached


def test_without_a_prefix_cache_only_kept_rows_are_held():
    store = _store_with_a_free_row()
    held = HeldMemory(store, None)
    assert held.num_bytes == store.parked_bytes > 0
    assert held.release(10 ** 9) > 0 and held.num_bytes == 0
