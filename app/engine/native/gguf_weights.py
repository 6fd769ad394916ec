"""A GGUF file's weights packed for the native kernels straight from its quantized blocks.

The kernels' Q4 group (weights.py) is GGUF's Q4_1 block turned sideways: per output and 32 inputs an
fp16 scale, an fp16 minimum and 4-bit levels, weight = level * scale + minimum. A Q4_1 block carries
exactly those; a Q4_0 block's weight is (level - 8) * scale, the same with minimum -8 x scale (exact in
fp16: a power-of-two multiple, unless it overflows, then the block is not taken). A Q8_0 block is the
kernels' Q8 group (fp16 scale, int8 levels; a level of -128, which the 8-bit dot products do not take,
is not taken either). So these pack with integer moves only, and each weight is bit for bit the value
gguf.quants (and transformers' GGUF loader) dequantizes it to. A fused matrix whose parts are not all
such blocks of one grid, and the norms, are dequantized and packed as any checkpoint's weights.
"""

from __future__ import annotations

import numpy as np
import torch

from app.engine.models.fused_llama import LlamaDims
from app.engine.models.gguf_checkpoint import GgufCheckpoint, dequantized, head_norm_names, layer_names, row_blocks
from app.engine.native.library import Q4, Q8, NativeLibrary
from app.engine.native.model import NativeLayer, NativeLlama, RopeTable, pack_linear
from app.engine.native.weights import GROUP, TILE, PackedMatrix
from app.engine.models.packed_linear import PackedLinear

Q4_0, Q4_1, Q8_0 = 2, 3, 8  # gguf.GGMLQuantizationType
_GRID = {Q4_0: Q4, Q4_1: Q4, Q8_0: Q8}
_HALF = np.float16


def q4_parts(blocks: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(scales, minimums) fp16 [rows, groups] and levels uint8 [rows, groups, 32] of Q4_0/Q4_1 rows
    (uint8 [rows, groups x block bytes]); None where a Q4_0 minimum would overflow fp16."""
    rows = blocks.shape[0]
    blocks = blocks.reshape(rows, -1, 18 if kind == Q4_0 else 20)
    scales = np.ascontiguousarray(blocks[..., :2]).view(_HALF)[..., 0]
    if kind == Q4_0:
        with np.errstate(over="ignore", invalid="ignore"):
            minimums = scales * _HALF(-8)  # exact: scaling by a power of two
        if not np.isfinite(minimums[np.isfinite(scales)]).all():
            return None
        packed = blocks[..., 2:]
    else:
        minimums = np.ascontiguousarray(blocks[..., 2:4]).view(_HALF)[..., 0]
        packed = blocks[..., 4:]
    # Input j of a block is byte j's low nibble, input j + 16 byte j's high one (gguf.quants).
    levels = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)
    return scales, minimums, levels


def q8_parts(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(scales fp16 [rows, groups], levels int8 [rows, groups, 32]) of Q8_0 rows; None with a -128."""
    blocks = blocks.reshape(blocks.shape[0], -1, 34)
    levels = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
    if (levels == -128).any():
        return None
    return np.ascontiguousarray(blocks[..., :2]).view(_HALF)[..., 0], levels


def _tiles(values: np.ndarray) -> np.ndarray:
    """[rows, groups, ...] padded with zero rows to whole tiles, as [tiles, TILE lanes, groups, ...]."""
    rows = values.shape[0]
    padded = -(-rows // TILE) * TILE
    if padded != rows:
        values = np.concatenate([values, np.zeros((padded - rows, *values.shape[1:]), values.dtype)])
    return values.reshape(padded // TILE, TILE, *values.shape[1:])


def pack_q4(scales: np.ndarray, minimums: np.ndarray, levels: np.ndarray, k: int,
            bias: torch.Tensor | None = None) -> PackedMatrix:
    """The kernels' Q4 tiles (weights.py's layout) of these scales, minimums and levels."""
    n = scales.shape[0]
    lanes = lambda a: np.ascontiguousarray(np.swapaxes(_tiles(a), 1, 2))  # noqa: E731 - [tiles, groups, lanes]
    sums = levels.sum(axis=-1, dtype=np.int16)
    # Byte (block p, lane, e) holds input 8p+e in its low nibble and 8p+4+e in its high one.
    grouped = _tiles(levels).reshape(-1, TILE, levels.shape[1], GROUP // 8, 2, 4)
    nibbles = (grouped[..., 0, :] | (grouped[..., 1, :] << 4)).transpose(0, 2, 3, 1, 4)
    tiles = nibbles.shape[0]
    data = np.concatenate([lanes(scales).view(np.uint8).reshape(tiles, -1, 2 * TILE),
                           lanes(minimums).view(np.uint8).reshape(tiles, -1, 2 * TILE),
                           lanes(sums).view(np.uint8).reshape(tiles, -1, 2 * TILE),
                           nibbles.reshape(tiles, -1, GROUP * TILE // 2)], axis=-1)
    return PackedMatrix(Q4, n, k, torch.from_numpy(data.reshape(-1)), _bias(bias))


def pack_q8(scales: np.ndarray, levels: np.ndarray, k: int, bias: torch.Tensor | None = None) -> PackedMatrix:
    """The kernels' Q8 tiles of these scales and levels (quad j of a group: inputs 4j..4j+3 of each lane)."""
    n = scales.shape[0]
    tiled = _tiles(levels)
    tiles = tiled.shape[0]
    quads = tiled.reshape(tiles, TILE, levels.shape[1], GROUP // 4, 4).transpose(0, 2, 3, 1, 4)
    data = np.concatenate([np.ascontiguousarray(np.swapaxes(_tiles(scales), 1, 2)).view(np.uint8).reshape(tiles, -1, 2 * TILE),
                           np.ascontiguousarray(quads).view(np.uint8).reshape(tiles, -1, GROUP * TILE)], axis=-1)
    return PackedMatrix(Q8, n, k, torch.from_numpy(data.reshape(-1)), _bias(bias))


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().float().contiguous()


def grid_matrix(checkpoint: GgufCheckpoint, names: list[str], bias: torch.Tensor | None) -> PackedMatrix | None:
    """The fused matrix of these tensors packed from their blocks, or None where they are not all
    blocks of one grid the kernels hold exactly."""
    kinds = {checkpoint.tensors[f"{name}.weight"].type for name in names}
    grids = {_GRID.get(kind) for kind in kinds}
    if len(grids) != 1 or None in grids:
        return None
    k = checkpoint.tensors[f"{names[0]}.weight"].shape[1]
    parts = []
    for name in names:
        blocks = row_blocks(checkpoint, f"{name}.weight")
        kind = checkpoint.tensors[f"{name}.weight"].type
        part = q4_parts(blocks, kind) if kind in (Q4_0, Q4_1) else q8_parts(blocks)
        if part is None:
            return None
        parts.append(part)
    joined = [np.concatenate(arrays) for arrays in zip(*parts)]
    return pack_q4(*joined, k, bias) if grids == {Q4} else pack_q8(*joined, k, bias)


def native_from_gguf(checkpoint: GgufCheckpoint, library: NativeLibrary, dtype: torch.dtype, positions: int,
                     quantization: str = "auto") -> NativeLlama:
    """NativeLlama with the file's weights: Q4_0/Q4_1/Q8_0 blocks as they are (quantization auto), the
    rest dequantized and packed as `native_from_fused` packs a model's weights."""
    dims = LlamaDims.of(checkpoint.get)

    def as_held(name: str) -> torch.Tensor:  # float32 through `dtype`, as transformers would hold it
        return torch.from_numpy(np.ascontiguousarray(dequantized(checkpoint, name))).to(dtype)

    def matrix(names: list[str]) -> PackedMatrix:
        biases = [f"{name}.bias" for name in names]
        bias = None
        if any(b in checkpoint.tensors for b in biases):
            bias = torch.cat([as_held(b) if b in checkpoint.tensors else torch.zeros(
                checkpoint.tensors[f"{n}.weight"].shape[0], dtype=dtype) for n, b in zip(names, biases)])
        packed = grid_matrix(checkpoint, names, bias) if quantization == "auto" else None
        if packed is not None:
            return packed
        # float32 (grids found exactly in it where they exist), else dense in `dtype`, as for a checkpoint
        weight = torch.cat([torch.from_numpy(np.ascontiguousarray(dequantized(checkpoint, f"{name}.weight")))
                            for name in names])
        if dtype != torch.float32 and quantization != "auto":
            weight = weight.to(dtype)
        return pack_linear(library, PackedLinear(weight, bias), dtype, quantization)

    def norm(name: str) -> torch.Tensor:
        return as_held(name).float().contiguous()

    layers = []
    for i in range(dims.num_layers):
        names, head_norms = layer_names(checkpoint.layout, i), head_norm_names(checkpoint.layout, i)
        layers.append(NativeLayer(norm(f"blk.{i}.attn_norm.weight"), norm(f"blk.{i}.ffn_norm.weight"),
                                  *[matrix(names[part]) for part in ("qkv", "o", "gate_up", "down")],
                                  *([norm(name) for name in head_norms] if head_norms else [])))
    embed = matrix(["token_embd"])
    lm_head = embed if checkpoint.get("tie_word_embeddings") else matrix(["output"])
    from app.engine.models.fused_llama import DefaultRotary

    rope = RopeTable.of(DefaultRotary(float(checkpoint.get("rope_theta")), dims.head_dim, torch.device("cpu")),
                        dims.head_dim, positions)
    native = NativeLlama(library, dims, dtype, embed, layers, norm("output_norm.weight"), lm_head, rope)
    native.keep_alive = checkpoint.keep_alive
    return native
