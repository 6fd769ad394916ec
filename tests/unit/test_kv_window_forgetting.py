"""KVStore's sliding layers keep only their last columns: every move (join, leave, trim, forget) keeps
each row's KV right-aligned, the sliding layers' width bounded, and the full layers whole. No model: the
KV here encodes (row, position), so a misplaced column shows."""

from __future__ import annotations

import pytest
import torch

from app.engine.kv import kv_store
from app.engine.kv.kv_store import KVStore, kept_columns
from app.engine.kv.prefix_cache import PrefixCache, PrefixCacheConfig
from app.engine.kv.slab_cache import GROW_COLUMNS, LayerCache, SlabLayer

WINDOW = 4
WINDOWS = [WINDOW, None]  # a sliding layer and a full one


@pytest.fixture(autouse=True)
def small_steps(monkeypatch):
    monkeypatch.setattr(kv_store, "REUSE_MARGIN", 2)
    monkeypatch.setattr(kv_store, "FORGET_STEP", 3)


def _column(tag: float, positions: torch.Tensor) -> torch.Tensor:
    """KV [rows, 1 head, columns, 2]: position + 1 (0 = padding) and the row's tag."""
    rows, columns = positions.shape
    tags = torch.as_tensor(tag, dtype=torch.float32).reshape(-1, 1).expand(rows, columns)
    return torch.stack((positions.float() + 1, tags), dim=-1).unsqueeze(1)


def _prompt(length: int, tag: float) -> LayerCache:
    cache = LayerCache([SlabLayer() for _ in WINDOWS])
    kv = _column(tag, torch.arange(length).unsqueeze(0))
    for layer in cache.layers:
        layer.update(kv, -kv)
    return cache


def _step(store: KVStore) -> None:
    """A decode step as a torch forward makes it: inputs, then each layer writes its new column."""
    _, positions = store.decode_inputs()
    tags = torch.tensor([float(owner) for owner in store.rows])
    for layer in store.cache.layers:
        kv = _column(tags, positions)
        layer.update(kv, -kv)


def _check(store: KVStore) -> None:
    """Each row's last columns on each layer hold its last positions; the full layer holds them all."""
    for layer, window in zip(store.cache.layers, WINDOWS):
        held = layer.get_seq_length()
        if window is None:
            assert held == store.num_columns
        else:
            assert kept_columns(window) <= held or held == store.num_columns
            assert held <= kept_columns(window) + kv_store.FORGET_STEP  # forgotten before a step writes one
        for row, (owner, length) in enumerate(zip(store.rows, store.lengths)):
            count = min(held, length)
            keys = layer.keys[row, 0, held - count:]
            assert keys[:, 0].tolist() == [float(p + 1) for p in range(length - count, length)]
            assert (keys[:, 1] == float(owner)).all() and torch.equal(layer.values[row, 0, held - count:], -keys)


def test_rows_stay_right_aligned_through_joins_leaves_and_forgetting():
    store = KVStore(torch.device("cpu"), WINDOWS)
    store.join([1], _prompt(3, 1), torch.ones((1, 3), dtype=torch.long))
    for _ in range(12):
        _step(store)
        _check(store)
    assert store.cache.layers[0].get_seq_length() < store.num_columns  # the sliding layer forgot
    store.join([2], _prompt(20, 2), torch.ones((1, 20), dtype=torch.long))  # wider than what it keeps
    _check(store)
    # It dropped more than it keeps: copied into a buffer of its size, the long prompt's memory given back.
    sliding, full = store.cache.layers
    assert sliding.capacity == kept_columns(WINDOW) + GROW_COLUMNS < full.capacity
    assert sliding.allocated_bytes < full.allocated_bytes
    store.join([3], _prompt(2, 3), torch.ones((1, 2), dtype=torch.long))  # into the rows' spare room or not
    for _ in range(7):
        _step(store)
        _check(store)
    store.remove([2])  # the widest row leaves: shared padding is trimmed
    _check(store)
    for _ in range(9):
        _step(store)
        _check(store)
    assert store.num_bytes < sum(layer.allocated_bytes for layer in store.cache.layers[1:]) * 2


def test_a_forgotten_row_is_reusable_from_its_window_past_what_it_forgot():
    store = KVStore(torch.device("cpu"), WINDOWS)
    store.join([1], _prompt(3, 1), torch.ones((1, 3), dtype=torch.long))
    for _ in range(20):
        _step(store)
    layers = store.row_kv(1)
    total = store.lengths[0]
    kept = layers[0][0].shape[-2]
    assert layers[1][0].shape[-2] == total and kept < total
    first = store.first_reusable(layers, total)
    assert first == total - kept + WINDOW - 1
    assert KVStore(torch.device("cpu")).first_reusable(layers, total) == 0  # keeping every column


def test_the_prefix_cache_serves_no_hit_shorter_than_an_entry_can():
    cache = PrefixCache(PrefixCacheConfig(min_tokens=2))
    layers = [(torch.zeros((1, 1, 10, 2)), torch.zeros((1, 1, 10, 2)))]
    ids = list(range(20))
    assert cache.insert(ids, layers, 1 << 20, first_reusable=15)
    assert cache.lookup(ids[:12] + [99, 98]) == (None, 0)  # 12 shared: its sliding keys are gone
    entry, reused = cache.lookup(ids[:17] + [99])
    assert entry is not None and reused == 17
    # A shorter entry reusable from the start is kept beside it (the longer one cannot serve its hits).
    assert cache.insert(ids[:12], layers, 1 << 20)
    assert cache.lookup(ids[:12] + [99, 98])[1] == 12
