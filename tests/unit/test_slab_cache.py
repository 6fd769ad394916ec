"""SlabLayer must behave exactly like transformers' DynamicLayer while copying less. No model."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from app.engine.kv.slab_cache import GROW_COLUMNS, SlabLayer


def test_updates_across_growth_equal_plain_concatenation():
    slab, plain = SlabLayer(), DynamicLayer()
    torch.manual_seed(0)
    for step in range(GROW_COLUMNS + 40):
        width = 17 if step == 0 else 1  # a prompt, then one column per decode step
        k, v = torch.randn(2, 3, width, 4), torch.randn(2, 3, width, 4)
        got, want = slab.update(k, v), plain.update(k, v)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    assert slab.get_seq_length() == plain.get_seq_length() == 17 + GROW_COLUMNS + 39
    assert slab.allocated_bytes >= slab.keys.nbytes + slab.values.nbytes


def test_one_decode_step_writes_into_spare_room_without_reallocating():
    slab = SlabLayer()
    slab.update(torch.ones(1, 2, 5, 4), torch.ones(1, 2, 5, 4))
    buffer = slab._keys
    slab.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert slab._keys is buffer and slab.keys.shape == (1, 2, 6, 4)


def test_assigning_tensors_replaces_the_buffer():
    slab = SlabLayer()
    slab.update(torch.ones(1, 2, 5, 4), torch.ones(1, 2, 5, 4))
    slab.keys, slab.values = torch.zeros(3, 2, 7, 4), torch.zeros(3, 2, 7, 4)
    assert slab.get_seq_length() == 7 and slab.keys.shape == (3, 2, 7, 4)
    k, _ = slab.update(torch.ones(3, 2, 1, 4), torch.ones(3, 2, 1, 4))
    assert k.shape == (3, 2, 8, 4) and k[:, :, -1].eq(1).all() and k[:, :, :7].eq(0).all()
