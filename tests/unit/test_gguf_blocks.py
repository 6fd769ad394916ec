"""The pieces of reading a GGUF file directly, against the gguf package and transformers' own code:
llama.cpp's Q/K row permutation undone as transformers undoes it, and Q4_0/Q4_1/Q8_0 blocks taken
apart into the scales, minimums and levels the native kernels hold, giving gguf.quants' values."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

from app.engine.models.gguf_checkpoint import unpermute_rows  # noqa: E402
from app.engine.native.gguf_weights import Q4_0, Q4_1, Q8_0, q4_parts, q8_parts  # noqa: E402


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (what the file holds)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


@pytest.mark.parametrize("heads, head_dim", [(4, 16), (3, 64), (1, 8)])
def test_unpermuting_undoes_llama_cpp_and_matches_transformers(heads, head_dim):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(heads)
    weights = rng.standard_normal((heads * head_dim, 32)).astype(np.float32)
    stored = llama_cpp_permute(weights, heads)
    assert not np.array_equal(stored, weights)
    assert np.array_equal(unpermute_rows(stored, heads), weights)
    theirs = LlamaTensorProcessor()._reverse_permute_weights(stored, heads, heads)
    assert np.array_equal(unpermute_rows(stored, heads), theirs)
    # Rows of quantized blocks move the same way: un-permuting the bytes = un-permuting the values.
    blocks = quantize(stored, gguf.GGMLQuantizationType.Q4_1)
    assert np.array_equal(dequantize(unpermute_rows(blocks, heads), gguf.GGMLQuantizationType.Q4_1),
                          unpermute_rows(dequantize(blocks, gguf.GGMLQuantizationType.Q4_1), heads))


def _random_blocks(kind: int, rows: int, groups: int, rng) -> np.ndarray:
    """Random blocks with finite fp16 scales (and minimums), random nibbles or int8 levels."""
    size = {Q4_0: 18, Q4_1: 20, Q8_0: 34}[kind]
    blocks = rng.integers(0, 256, (rows, groups, size), dtype=np.uint8)
    halves = 1 if kind != Q4_1 else 2
    floats = (rng.standard_normal((rows, groups, halves)) * 0.05).astype(np.float16)
    blocks[..., : 2 * halves] = floats.view(np.uint8).reshape(rows, groups, 2 * halves)
    if kind == Q8_0:  # -128 is refused (the kernels' 8-bit products do not take it): keep it out here
        levels = blocks[..., 2:].view(np.int8)
        levels[levels == -128] = -127
    return blocks.reshape(rows, groups * size)


@pytest.mark.parametrize("kind", [Q4_0, Q4_1], ids=["Q4_0", "Q4_1"])
def test_q4_blocks_give_gguf_quants_values(kind):
    rng = np.random.default_rng(kind)
    blocks = _random_blocks(kind, 7, 5, rng)
    scales, minimums, levels = q4_parts(blocks, kind)
    assert levels.dtype == np.uint8 and levels.max() <= 15 and levels.shape == (7, 5, 32)
    mine = levels.astype(np.float32) * scales[..., None].astype(np.float32) + minimums[..., None].astype(np.float32)
    assert np.array_equal(mine.reshape(7, -1), dequantize(blocks, gguf.GGMLQuantizationType(kind)))


def test_a_q4_0_block_whose_minimum_overflows_fp16_is_not_taken():
    blocks = _random_blocks(Q4_0, 2, 2, np.random.default_rng(1))
    blocks[0, :2] = np.array([10000.0], dtype=np.float16).view(np.uint8)
    assert q4_parts(blocks, Q4_0) is None


def test_q8_blocks_give_gguf_quants_values():
    blocks = _random_blocks(Q8_0, 5, 3, np.random.default_rng(8))
    scales, levels = q8_parts(blocks)
    mine = levels.astype(np.float32) * scales[..., None].astype(np.float32)
    assert np.array_equal(mine.reshape(5, -1), dequantize(blocks, gguf.GGMLQuantizationType.Q8_0))
    blocks[1, 5] = 0x80  # a level of -128
    assert q8_parts(blocks) is None
