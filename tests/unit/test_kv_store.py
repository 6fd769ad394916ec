"""KVStore bookkeeping on made-up KV tensors: row owners, padding, joining, leaving, trimming. No model."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from app.engine.kv.kv_store import KVStore
from app.engine.kv.slab_cache import GROW_COLUMNS


def _cache(length: int, value: float, layers: int = 2) -> DynamicCache:
    kv = [(torch.full((1, 2, length, 4), value), torch.full((1, 2, length, 4), -value))
          for _ in range(layers)]
    return DynamicCache(ddp_cache_data=kv)


def _ones(length: int) -> torch.Tensor:
    return torch.ones((1, length), dtype=torch.long)


def _store(*rows: tuple[str, int, float]) -> KVStore:
    store = KVStore(torch.device("cpu"))
    for owner, length, value in rows:
        store.join([owner], _cache(length, value), _ones(length))
    return store


def test_rows_are_left_padded_to_the_widest_and_know_their_owner():
    store = _store(("a", 3, 1.0), ("b", 5, 2.0))
    keys = store.cache.layers[0].keys
    assert keys.shape == (2, 2, 5, 4)
    assert store.rows == ["a", "b"] and "a" in store and "c" not in store
    assert store.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert keys[0, :, :2].abs().sum() == 0 and (keys[0, :, 2:] == 1.0).all()
    assert store.positions.tolist() == [3, 5]


def test_decode_inputs_extend_mask_and_positions():
    store = _store(("a", 2, 1.0))
    mask, positions = store.decode_inputs()
    assert mask is None and positions.tolist() == [[2]]  # one unpadded row needs no mask
    store.join(["b"], _cache(4, 2.0), _ones(4))
    mask, positions = store.decode_inputs()
    assert positions.tolist() == [[3], [4]]
    assert mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]  # 3 real + the new token


def test_leaving_rows_trims_shared_padding_and_the_last_leaver_frees_everything():
    store = _store(("a", 2, 1.0), ("b", 6, 2.0), ("c", 3, 3.0))
    store.remove(["b", "not-here"])
    assert store.rows == ["a", "c"]
    assert store.num_columns == 3 and store.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert (store.cache.layers[1].keys[1] == 3.0).all() and (store.cache.layers[1].values[1] == -3.0).all()
    store.remove(["a", "c"])
    assert store.num_rows == 0 and store.num_bytes == 0 and store.rows == []


def test_a_padded_group_joins_as_several_rows_and_common_padding_is_trimmed():
    store = _store(("a", 4, 1.0))
    group = DynamicCache(ddp_cache_data=[(torch.ones(2, 2, 6, 4), torch.ones(2, 2, 6, 4))] * 2)
    # Both rows of the group are shorter than its width: the shared column must go.
    store.join(["b", "c"], group, torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]))
    assert store.positions.tolist() == [4, 4, 5] and store.rows == ["a", "b", "c"]
    assert store.num_columns == 5 and store.cache.layers[0].keys.shape == (3, 2, 5, 4)
    assert store.mask.tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]


def test_joins_and_leaves_keep_spare_columns_so_decode_writes_in_place():
    store = _store(("a", 3, 1.0), ("b", 5, 2.0))
    store.remove(["b"])  # leaves a row of 3 behind 2 shared padding columns, trimmed by a view
    layer = store.cache.layers[0]
    assert layer.capacity >= 3 + GROW_COLUMNS - 2
    buffer = layer.buffers[0]
    store.decode_inputs()
    layer.update(torch.full((1, 2, 1, 4), 9.0), torch.full((1, 2, 1, 4), -9.0))
    assert layer.buffers[0] is buffer  # written into the spare column, no copy
    assert layer.keys.shape == (1, 2, 4, 4) and (layer.keys[0, :, -1] == 9.0).all()


def test_row_kv_gives_one_rows_real_columns():
    store = _store(("a", 2, 1.0), ("b", 5, 2.0))
    keys, values = store.row_kv("a")[1]
    assert keys.shape == (1, 2, 2, 4) and (keys == 1.0).all() and (values == -1.0).all()
    assert store.row_kv("b")[0][0].shape == (1, 2, 5, 4)


def test_a_leaver_is_replaced_by_the_last_row_and_a_joiner_reuses_the_freed_row():
    store = _store(("a", 4, 1.0), ("b", 4, 2.0), ("c", 4, 3.0), ("d", 4, 4.0))
    buffer = store.cache.layers[0].buffers[0]
    store.remove(["b"])
    assert store.rows == ["a", "d", "c"] and store.positions.tolist() == [4, 4, 4]
    keys = store.cache.layers[1].keys
    assert [keys[row, 0, 0, 0].item() for row in range(3)] == [1.0, 4.0, 3.0]
    assert store.cache.layers[0].buffers[0].data_ptr() == buffer.data_ptr()  # no new buffer
    store.join(["e"], _cache(2, 5.0), _ones(2))  # fits the freed row, padded to the 4 columns
    assert store.cache.layers[0].buffers[0].data_ptr() == buffer.data_ptr()
    assert store.rows == ["a", "d", "c", "e"] and store.positions.tolist() == [4, 4, 4, 2]
    keys = store.cache.layers[1].keys
    assert keys[3, :, :2].abs().sum() == 0 and (keys[3, :, 2:] == 5.0).all()  # b's KV is gone
    assert (store.cache.layers[1].values[:3] == torch.tensor([-1.0, -4.0, -3.0])[:, None, None, None]).all()


def test_buffers_shrink_once_most_rows_left():
    store = _store(*[(name, 3, float(i + 1)) for i, name in enumerate("abcdef")])
    full = store.num_bytes
    store.remove(["a"])
    assert store.num_bytes == full  # the freed row waits for a joiner
    store.remove(["b", "c", "d"])
    assert store.rows == ["f", "e"] and store.num_bytes < full / 2
    assert [store.cache.layers[0].keys[row, 0, 0, 0].item() for row in range(2)] == [6.0, 5.0]


def test_rows_kept_for_joiners_are_counted_and_given_back_on_demand():
    store = _store(*[(name, 3, float(i + 1)) for i, name in enumerate("abcd")])
    assert store.parked_bytes == 0
    full = store.num_bytes
    store.remove(["a"])
    assert store.parked_bytes == full // 4 and store.num_bytes == full
    assert store.release_parked() == full // 4
    assert store.parked_bytes == 0 and store.num_bytes == full * 3 // 4
    assert store.rows == ["d", "b", "c"]
    assert [store.cache.layers[1].values[row, 0, 0, 0].item() for row in range(3)] == [-4.0, -2.0, -3.0]
