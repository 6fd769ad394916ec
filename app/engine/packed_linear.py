"""PackedLinear: one weight matrix, and optionally a cheaper low-bit copy for steps with few rows.

On CPU a decode step with one to a few rows is bound by reading the weights, and oneDNN's bf16
kernels carry a fixed cost per call; torch's weight-only kernels (activations stay 16-bit) read a
quarter (int8) or an eighth (int4) of fp32's bytes and win there, while the native kernels win once
many rows share each weight read. So the copy serves decode steps of at most `copy_max_rows` rows
and the original weight serves the rest, prefill always: a prompt's KV is then exactly what the
full-precision model makes, so the prefix cache can hand it to another request unchanged.
"""

from __future__ import annotations

from collections.abc import Generator

import torch
import torch.nn.functional as F

from app.engine.chores import Slices, run_to_end

# The weight-only kernels take 16-bit activations; bf16 keeps fp32's range (fp16 could overflow).
ACTIVATION_DTYPE = torch.bfloat16


# Rows quantized per slice when a copy is built in slices: about 15 ms for the default model's
# widest matrix (49,152 x 576, the LM head). Quantization is per row (and per group), so blocks join;
# int4's packing lays rows out in tiles (64 with torch 2.13), so a block must be a multiple of one.
ROW_BLOCK = 4096


class Int8Weights:
    """Symmetric int8, one scale per output row (`torch._weight_int8pack_mm`)."""

    kind = "int8"
    # The kernel reads the inner dimension in blocks: narrower or ragged widths give wrong sums or
    # crash (seen with torch 2.13 at widths 3 and 8).
    WIDTH_MULTIPLE = 32

    @classmethod
    def fits(cls, weight: torch.Tensor) -> bool:
        return weight.device.type == "cpu" and weight.shape[1] % cls.WIDTH_MULTIPLE == 0

    def __init__(self, quantized: torch.Tensor, scales: torch.Tensor) -> None:
        self.quantized, self.scales = quantized, scales

    @classmethod
    def build(cls, weight: torch.Tensor) -> Generator[None, None, Int8Weights]:
        """The copy of `weight`, ROW_BLOCK rows per slice."""
        quantized, scales = [], []
        for start in range(0, weight.shape[0], ROW_BLOCK):
            block = weight[start:start + ROW_BLOCK].detach().float()
            block_scales = (block.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            quantized.append(torch.round(block / block_scales[:, None]).clamp(-127, 127).to(torch.int8))
            scales.append(block_scales)
            yield
        return cls(torch.cat(quantized).contiguous(), torch.cat(scales).to(ACTIVATION_DTYPE))

    @property
    def nbytes(self) -> int:
        return self.quantized.nbytes + self.scales.nbytes

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, in] in ACTIVATION_DTYPE -> [rows, out]."""
        return torch._weight_int8pack_mm(x, self.quantized, self.scales)


class Int4Weights:
    """Asymmetric int4 in groups of 32 along the input (the layout of GGUF's Q4_1), one bf16 scale
    and offset per group (`torch._weight_int4pack_mm_for_cpu`). Exact for weights that came from a
    4-bit checkpoint such as the default model's Q4_1 GGUF, up to the bf16 rounding of scales."""

    kind = "int4"
    GROUP = 32

    @classmethod
    def fits(cls, weight: torch.Tensor) -> bool:
        out_features, in_features = weight.shape
        return weight.device.type == "cpu" and in_features % cls.GROUP == 0 and out_features % 16 == 0

    def __init__(self, packed: torch.Tensor, scales_and_offsets: torch.Tensor, relative_error: float) -> None:
        self.packed = packed
        # The kernel computes (level - 8) * scale + offset per group, from [groups, rows, 2].
        self.scales_and_offsets = scales_and_offsets
        self.relative_error = relative_error  # |restored - original| / |original|, over the whole matrix

    @classmethod
    def build(cls, weight: torch.Tensor, abandon_above: float | None = None) -> Generator[None, None, Int4Weights | None]:
        """The copy of `weight`, ROW_BLOCK rows per slice (a multiple of 16, as the packing wants);
        None as soon as one block's relative error reaches `abandon_above`."""
        packed, scales_and_offsets, error_sq, norm_sq = [], [], 0.0, 0.0
        for start in range(0, weight.shape[0], ROW_BLOCK):
            block = weight[start:start + ROW_BLOCK]
            levels, scale, offset = cls._quantize(block)
            original = block.detach().float()
            block_error_sq = float((cls._dequantize(levels, scale, offset) - original).norm()) ** 2
            block_norm_sq = float(original.norm()) ** 2
            if abandon_above is not None and block_error_sq ** 0.5 >= abandon_above * max(block_norm_sq ** 0.5, 1e-12):
                return None
            packed.append(torch._convert_weight_to_int4pack_for_cpu(levels, 1))
            scales_and_offsets.append(torch.stack([scale.t(), offset.t()], dim=-1))
            error_sq, norm_sq = error_sq + block_error_sq, norm_sq + block_norm_sq
            yield
        relative_error = (error_sq ** 0.5) / max(norm_sq ** 0.5, 1e-12)
        return cls(torch.cat(packed), torch.cat(scales_and_offsets, dim=1).contiguous(), relative_error)

    @classmethod
    def round_trip(cls, weight: torch.Tensor) -> torch.Tensor:
        """The weight as the int4 copy represents it."""
        return cls._dequantize(*cls._quantize(weight)).to(weight.dtype)

    @classmethod
    def _quantize(cls, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(levels int32 [rows, width], scale and offset [rows, groups] in ACTIVATION_DTYPE)."""
        weight = weight.detach().float()
        rows, width = weight.shape
        groups = weight.view(rows, width // cls.GROUP, cls.GROUP)
        low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-12)
        levels = torch.clamp(torch.round((groups - low) / scale), 0, 15).to(torch.int32).view(rows, width)
        offset = low + 8 * scale
        return levels, scale.view(rows, -1).to(ACTIVATION_DTYPE), offset.view(rows, -1).to(ACTIVATION_DTYPE)

    @classmethod
    def _dequantize(cls, levels: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        rows, width = levels.shape
        grouped = levels.view(rows, -1, cls.GROUP).float() - 8
        return (grouped * scale.float().unsqueeze(-1) + offset.float().unsqueeze(-1)).view(rows, width)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_and_offsets.nbytes

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(x, self.packed, self.GROUP, self.scales_and_offsets)


LOW_BIT = {"int8": Int8Weights, "int4": Int4Weights}


class PackedLinear:
    """y = x W^T + b, with W [out, in]; `copy` is a low-bit copy that serves small steps."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.copy: Int8Weights | Int4Weights | None = None
        self.copy_max_rows = 0

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.weight.shape[0]), int(self.weight.shape[1])

    def make_copy(self, kind: str) -> bool:
        """Build the `kind` copy if the kernel can take this matrix (else keep none); True if built."""
        return bool(run_to_end(self.copy_slices(kind)))

    def copy_slices(self, kind: str, **options) -> Slices:
        """make_copy in slices (the copy class's `build`, with `options`); the result is whether a
        copy was built."""
        cls = LOW_BIT[kind]
        self.copy = None
        if not cls.fits(self.weight):
            return False
        self.copy = yield from cls.build(self.weight, **options)
        return self.copy is not None

    @property
    def serves_copy(self) -> bool:
        """True when some decode steps run through the low-bit copy."""
        return self.copy is not None and self.copy_max_rows > 0

    def __call__(self, x: torch.Tensor, use_copy: bool = True) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if use_copy and self.copy is not None and rows <= self.copy_max_rows:
            return self.forward_copy(x)
        return F.linear(x, self.weight, self.bias)

    def forward_copy(self, x: torch.Tensor) -> torch.Tensor:
        assert self.copy is not None, "make_copy() first"
        y = self.copy.matmul(x.reshape(-1, x.shape[-1]).to(ACTIVATION_DTYPE)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], y.shape[-1])

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)
