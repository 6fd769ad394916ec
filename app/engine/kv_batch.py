"""The decode batch's KV cache: left-padded rows, one attention-mask row and one position per row.

Pure tensor bookkeeping (TGI's CausalLMBatch is the model): rows join by left-padding and
concatenating layer by layer, leave by index-selecting, and padding columns that every row has are
trimmed. It never runs the model.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.engine.slab_cache import SlabLayer


def check_plain_cache(cache: DynamicCache) -> None:
    """Left padding is only sound for full-attention layers; sliding or linear layers keep other state."""
    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, SlabLayer):
            raise NotImplementedError(
                f"batched decoding supports full-attention KV caches only, not {type(layer).__name__}"
            )


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def layer_bytes(layer) -> int:
    """Memory a cache layer holds, spare columns included."""
    if isinstance(layer, SlabLayer):
        return layer.allocated_bytes
    return 0 if layer.keys is None else layer.keys.nbytes + layer.values.nbytes


def select_rows(cache: DynamicCache, rows: list[int]) -> torch.Tensor:
    """Keep only `rows` of every layer, in that order; returns the index tensor used."""
    index = torch.tensor(rows, dtype=torch.long, device=cache.layers[0].keys.device)
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)
    return index


class KVBatch:
    """KV tensors [rows, heads, columns, head_dim] per layer, with a mask [rows, columns]."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.positions = torch.zeros((0,), dtype=torch.long, device=device)

    @property
    def num_rows(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_columns(self) -> int:
        return int(self.mask.shape[1])

    @property
    def num_bytes(self) -> int:
        if self.cache is None:
            return 0
        return sum(layer_bytes(layer) for layer in self.cache.layers)

    def join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append prefilled rows: their own left-padded cache and mask [rows, columns] go last."""
        check_plain_cache(cache)
        lengths = mask.sum(dim=1)
        if self.cache is None or self.num_rows == 0:
            self.cache, self.mask, self.positions = cache, mask, lengths
            self._trim()
            return
        columns = max(self.num_columns, int(mask.shape[1]))
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, columns, 2), _left_pad(theirs.keys, columns, 2)])
            mine.values = torch.cat([_left_pad(mine.values, columns, 2), _left_pad(theirs.values, columns, 2)])
        self.mask = torch.cat([_left_pad(self.mask, columns, 1), _left_pad(mask, columns, 1)])
        self.positions = torch.cat([self.positions, lengths])
        self._trim()

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop padding columns that every remaining row has."""
        if not rows:
            self.clear()
            return
        if rows == list(range(self.num_rows)):
            return
        assert self.cache is not None
        index = select_rows(self.cache, rows)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self._trim()

    def clear(self) -> None:
        self.cache = None
        self.mask = self.mask.new_zeros((0, 0))
        self.positions = self.positions.new_zeros((0,))

    def decode_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Attention mask (None when no row is padded) and position ids for one decode step."""
        ones = self.mask.new_ones((self.num_rows, 1))
        self.mask = torch.cat([self.mask, ones], dim=1)
        positions = self.positions.unsqueeze(1)
        self.positions = self.positions + 1
        unpadded = int(self.positions.min()) == self.num_columns
        return (None if unpadded else self.mask), positions

    def _trim(self) -> None:
        padding = self.num_columns - int(self.positions.max())
        if padding <= 0:
            return
        assert self.cache is not None
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, padding:].contiguous()
            layer.values = layer.values[:, :, padding:].contiguous()
        self.mask = self.mask[:, padding:]
