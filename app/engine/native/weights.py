"""Weight matrices in the native kernels' layout, and the exact low-bit forms some checkpoints allow.

A matrix [n outputs, k inputs] is stored as tiles of 16 outputs (zero rows pad the last), each tile
as groups of 32 inputs (zeros pad the last), each group as:

    F32   [32 inputs][16 lanes] float32
    BF16  [32][16] bfloat16
    Q4    [16] fp16 scales, [16] fp16 minimums, [16] int16 level sums, then 4 blocks of [16 lanes][4]
          bytes: byte (lane, e) of block p holds input 8p+e's 4-bit level in its low nibble and input
          8p+4+e's in its high one; weight = level * scale + minimum
    Q8    [16] fp16 scales, then 8 quads of [16 lanes][4] int8 levels (quad j: inputs 4j..4j+3);
          weight = level * scale

(Four inputs of a lane side by side are what 8-bit dot-product instructions take: csrc/qmatmul.h.)

Q4 and Q8 are GGUF's Q4_1 and Q8_0 grids. A checkpoint converted from such a GGUF (the default
model is) holds fp32 weights that lie exactly on them: level * scale is exact in fp32 for an fp16
scale, so the packer (csrc/pack.h: tw_pack_grid) finds the levels and scales that reproduce every
weight bit for bit, and the kernels compute with the checkpoint's own values while reading 5 or 8.5
bits per weight instead of 32. TOKENWIRE_QUANTIZATION=int4/int8 makes the same forms lossily.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.native.library import BF16, F32, Q4, Q8, Matrix, NativeLibrary

TILE, GROUP = 16, 32
FORMAT_NAMES = {F32: "f32", BF16: "bf16", Q4: "q4", Q8: "q8"}
_GROUP_BYTES = {Q4: TILE * 6 + GROUP * TILE // 2, Q8: TILE * 2 + GROUP * TILE}


@dataclass
class PackedMatrix:
    """One matrix in kernel layout; `data` and `bias` must outlive every call that uses `struct()`."""

    format: int
    n: int
    k: int
    data: torch.Tensor  # uint8, the tiles
    bias: torch.Tensor | None = None  # float32 [n]

    def struct(self) -> Matrix:
        bias = None if self.bias is None else self.bias.data_ptr()
        return Matrix(self.format, self.n, self.k, 0, self.data.data_ptr(), bias)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.bias is None else self.bias.nbytes)


def _ceil(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().float().contiguous()


def pack_dense(weight: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None) -> PackedMatrix:
    """F32 or BF16 tiles of `weight` converted to `dtype` (float32 or bfloat16)."""
    fmt = {torch.float32: F32, torch.bfloat16: BF16}[dtype]
    n, k = weight.shape
    padded = weight.new_zeros((_ceil(n, TILE), _ceil(k, GROUP)), dtype=dtype)
    padded[:n, :k] = weight.detach()
    tiles = padded.view(padded.shape[0] // TILE, TILE, padded.shape[1] // GROUP, GROUP).permute(0, 2, 3, 1)
    return PackedMatrix(fmt, n, k, tiles.contiguous().view(torch.uint8).reshape(-1), _bias(bias))


def pack_grid(library: NativeLibrary, weight: torch.Tensor, fmt: int, exact: bool,
              bias: torch.Tensor | None = None) -> PackedMatrix | None:
    """Q4 or Q8 tiles of an fp32 `weight`: exactly its values (None if they are off that grid), or the
    nearest grid when not `exact`. None too where the kernels cannot take the shape (k % 32)."""
    n, k = weight.shape
    if k % GROUP or weight.dtype != torch.float32:
        return None
    out = torch.empty(_ceil(n, TILE) // TILE * (k // GROUP) * _GROUP_BYTES[fmt], dtype=torch.uint8)
    if not library.pack_grid(weight.detach().contiguous(), fmt, exact, out):
        return None
    return PackedMatrix(fmt, n, k, out, _bias(bias))


def pack_exact(library: NativeLibrary, weight: torch.Tensor, dtype: torch.dtype,
               bias: torch.Tensor | None = None) -> PackedMatrix:
    """The smallest form that holds `weight` exactly: Q4, Q8 (fp32 weights on those grids), else dense."""
    for fmt in (Q4, Q8):
        packed = pack_grid(library, weight, fmt, exact=True, bias=bias)
        if packed is not None:
            return packed
    return pack_dense(weight, dtype, bias)
