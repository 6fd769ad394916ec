"""KVBatch bookkeeping on made-up KV tensors: padding, joining, leaving, trimming. No model."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from app.engine.kv_batch import KVBatch


def _cache(length: int, value: float, layers: int = 2) -> DynamicCache:
    kv = [(torch.full((1, 2, length, 4), value), torch.full((1, 2, length, 4), -value))
          for _ in range(layers)]
    return DynamicCache(ddp_cache_data=kv)


def _ones(length: int) -> torch.Tensor:
    return torch.ones((1, length), dtype=torch.long)


def test_rows_are_left_padded_to_the_widest():
    batch = KVBatch(torch.device("cpu"))
    batch.join(_cache(3, 1.0), _ones(3))
    batch.join(_cache(5, 2.0), _ones(5))
    keys = batch.cache.layers[0].keys
    assert keys.shape == (2, 2, 5, 4)
    assert batch.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert keys[0, :, :2].abs().sum() == 0 and (keys[0, :, 2:] == 1.0).all()
    assert batch.positions.tolist() == [3, 5]


def test_decode_inputs_extend_mask_and_positions():
    batch = KVBatch(torch.device("cpu"))
    batch.join(_cache(2, 1.0), _ones(2))
    mask, positions = batch.decode_inputs()
    assert mask is None and positions.tolist() == [[2]]  # one unpadded row needs no mask
    batch.join(_cache(4, 2.0), _ones(4))
    mask, positions = batch.decode_inputs()
    assert positions.tolist() == [[3], [4]]
    assert mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]  # 3 real + the new token


def test_leaving_rows_frees_memory_and_trims_shared_padding():
    batch = KVBatch(torch.device("cpu"))
    batch.join(_cache(2, 1.0), _ones(2))
    batch.join(_cache(6, 2.0), _ones(6))
    batch.join(_cache(3, 3.0), _ones(3))
    full = batch.num_bytes
    batch.keep([0, 2])
    assert batch.num_columns == 3 and batch.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert (batch.cache.layers[1].keys[1] == 3.0).all()
    assert batch.num_bytes < full
    batch.keep([])
    assert batch.num_rows == 0 and batch.num_bytes == 0


def test_a_padded_group_joins_as_several_rows_and_common_padding_is_trimmed():
    batch = KVBatch(torch.device("cpu"))
    batch.join(_cache(4, 1.0), _ones(4))
    group = DynamicCache(ddp_cache_data=[(torch.ones(2, 2, 6, 4), torch.ones(2, 2, 6, 4))] * 2)
    # Both rows of the group are shorter than its width: the shared column must go.
    batch.join(group, torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]))
    assert batch.positions.tolist() == [4, 4, 5]
    assert batch.num_columns == 5 and batch.cache.layers[0].keys.shape == (3, 2, 5, 4)
    assert batch.mask.tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
