"""PrefixCache on made-up KV tensors: longest prefix, LRU order, byte bounds, release. No model."""

from __future__ import annotations

import torch

from app.engine.kv.prefix_cache import PrefixCache, PrefixCacheConfig



def _kv(tokens: int, value: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((1, 2, tokens, 4), value), torch.full((1, 2, tokens, 4), -value)) for _ in range(2)]


def _bytes(tokens: int) -> int:
    return sum(k.nbytes + v.nbytes for k, v in _kv(tokens))


def _cache(max_tokens: int = 1000, min_tokens: int = 4, max_entries: int = 256) -> PrefixCache:
    return PrefixCache(PrefixCacheConfig(max_bytes=_bytes(max_tokens), min_tokens=min_tokens, max_entries=max_entries))


def test_the_longest_shared_prefix_wins_and_the_last_prompt_token_is_always_run():
    cache = _cache()
    cache.insert(list(range(10)), _kv(10, 1.0), 1 << 30)
    cache.insert([0, 1, 2, 3, 4, 5, 99, 98], _kv(8, 2.0), 1 << 30)
    entry, reused = cache.lookup([0, 1, 2, 3, 4, 5, 99, 7, 7])
    assert reused == 7 and float(entry.layers[0][0][0, 0, 0, 0]) == 2.0
    _, reused = cache.lookup(list(range(10)))
    assert reused == 9  # the whole entry matches, but the last token must be prefilled for its logits
    assert cache.stats.hits == 2 and cache.stats.reused_tokens == 16


def test_short_prefixes_are_misses():
    cache = _cache(min_tokens=6)
    cache.insert(list(range(10)), _kv(10), 1 << 30)
    assert cache.lookup([0, 1, 2, 3, 4, 50, 60]) == (None, 0)
    assert cache.lookup([7, 8, 9]) == (None, 0)
    assert cache.stats.misses == 2 and cache.stats.hits == 0


def test_stored_entries_are_copies():
    cache = _cache()
    kv = _kv(6)
    cache.insert(list(range(6)), kv, 1 << 30)
    kv[0][0].fill_(5.0)
    entry, _ = cache.lookup(list(range(7)))
    assert float(entry.layers[0][0].max()) == 1.0


def test_an_extension_replaces_its_prefix_and_a_covered_prompt_is_not_stored_twice():
    cache = _cache()
    cache.insert(list(range(6)), _kv(6), 1 << 30)
    assert cache.insert(list(range(10)), _kv(10), 1 << 30)
    assert cache.stats.entries == 1 and cache.stats.bytes == _bytes(10) and cache.stats.evictions == 0
    assert not cache.insert(list(range(8)), _kv(8), 1 << 30)
    assert cache.stats.entries == 1


def test_inserting_evicts_the_least_recently_used_to_stay_within_both_limits():
    cache = _cache(max_tokens=25)
    cache.insert([1] * 10, _kv(10), 1 << 30)
    cache.insert([2] * 10, _kv(10), 1 << 30)
    cache.lookup([1] * 11)  # [1]s are now the most recently used
    cache.insert([3] * 10, _kv(10), 1 << 30)
    assert cache.lookup([2] * 11) == (None, 0) and cache.lookup([1] * 11)[1] == 10
    assert cache.stats.evictions == 1 and cache.stats.bytes == _bytes(20)
    # The scheduler's room is smaller than the share: that bound wins.
    cache.insert([4] * 10, _kv(10), _bytes(12))
    assert cache.stats.entries == 1 and cache.stats.bytes == _bytes(10)
    assert not cache.insert([5] * 30, _kv(30), 1 << 30)  # larger than the whole share


def test_release_frees_at_least_what_was_asked_oldest_first():
    cache = _cache(max_entries=2)
    for value in (1, 2, 3):
        cache.insert([value] * 5, _kv(5), 1 << 30)
    assert cache.stats.entries == 2 and cache.stats.evictions == 1  # the entry cap
    assert cache.release(1) == _bytes(5)
    assert cache.lookup([3] * 6)[1] == 5 and cache.lookup([2] * 6) == (None, 0)
    cache.clear()
    assert cache.stats.bytes == 0 and cache.stats.entries == 0


def test_an_extension_too_big_to_keep_leaves_its_prefix_in_place():
    cache = _cache(max_tokens=12)
    cache.insert(list(range(10)), _kv(10), 1 << 30)
    assert not cache.insert(list(range(20)), _kv(20), 1 << 30)
    assert cache.lookup(list(range(15)))[1] == 10


def test_making_room_spares_the_prefix_the_admitted_prompt_will_reuse():
    cache = _cache()
    cache.insert([1] * 10, _kv(10), 1 << 30)  # the oldest, and the one the next prompt shares
    cache.insert([2] * 10, _kv(10), 1 << 30)
    cache.release(_bytes(10), sparing=[1] * 12)
    assert cache.lookup([1] * 12)[1] == 10 and cache.lookup([2] * 12) == (None, 0)
