"""PackedLinear: one weight matrix and its bias, y = x W^T + b.

FusedLlama holds its fused q/k/v and gate/up matrices this way (a transformers model's modules keep
views of them); the native kernels pack the same matrices into their own layout
(app/engine/native/weights.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PackedLinear:
    """y = x W^T + b, with W [out, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.weight.shape[0]), int(self.weight.shape[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)
