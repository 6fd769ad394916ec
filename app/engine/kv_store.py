"""KVStore: the decode batch's KV rows, and which sequence owns each row.

Rows are left-padded to a common width, with one attention-mask row and one position per row (TGI's
CausalLMBatch is the model). The store is the one place that knows row i belongs to sequence s:
rows join with their own prefilled cache, leave by sequence, and hand out a row's KV for the prefix
cache. Every layer is a SlabLayer with spare columns, and the moves keep that spare room: a join
copies each layer once into a buffer with room to grow, a leave index-selects whole buffers, and
trimming shared padding is a view. It never runs the model.

The interface (join, remove, decode_inputs, row_kv, num_bytes) is the seam a paged store could later
sit behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence as Seq

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.engine.slab_cache import SlabLayer, spare_buffer


def check_plain_cache(cache: DynamicCache) -> None:
    """Left padding is only sound for full-attention layers; sliding or linear layers keep other state."""
    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, SlabLayer):
            raise NotImplementedError(
                f"batched decoding supports full-attention KV caches only, not {type(layer).__name__}"
            )


def layer_bytes(layer) -> int:
    """Memory a cache layer holds, spare columns included."""
    if isinstance(layer, SlabLayer):
        return layer.allocated_bytes
    return 0 if layer.keys is None else layer.keys.nbytes + layer.values.nbytes


def select_rows(cache: DynamicCache, rows: list[int]) -> torch.Tensor:
    """Keep only `rows` of every layer of a prefilled cache, in that order; returns the index used."""
    index = torch.tensor(rows, dtype=torch.long, device=cache.layers[0].keys.device)
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
    return index


def _place(buffer: torch.Tensor, start_row: int, kv: torch.Tensor, columns: int) -> None:
    """Copy kv [rows, heads, width, dim] into buffer's rows from start_row, right-aligned at `columns`."""
    width = kv.shape[-2]
    buffer[start_row:start_row + kv.shape[0], :, columns - width:columns] = kv


class KVStore:
    """KV tensors [rows, heads, columns, head_dim] per layer, a mask [rows, columns], row owners."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.positions = torch.zeros((0,), dtype=torch.long, device=device)
        self._owners: list = []  # the sequence at each row, in row order

    @property
    def rows(self) -> list:
        """The sequences of the batch, in row order (a copy)."""
        return list(self._owners)

    @property
    def num_rows(self) -> int:
        return len(self._owners)

    @property
    def num_columns(self) -> int:
        return int(self.mask.shape[1])

    @property
    def num_bytes(self) -> int:
        if self.cache is None:
            return 0
        return sum(layer_bytes(layer) for layer in self.cache.layers)

    def __contains__(self, owner) -> bool:
        return owner in self._owners

    def join(self, owners: Seq, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append prefilled rows, owned by `owners` in order: their left-padded cache and mask [rows, columns]."""
        check_plain_cache(cache)
        assert len(owners) == mask.shape[0], "one owner per joining row"
        lengths = mask.sum(dim=1)
        columns = max(self.num_columns, int(mask.shape[1]))
        mine = self.num_rows
        layers = []
        for index, theirs in enumerate(cache.layers):
            keys = spare_buffer(theirs.keys, mine + len(owners), columns)
            values = spare_buffer(theirs.values, mine + len(owners), columns)
            if mine:
                ours = self.cache.layers[index]
                _place(keys, 0, ours.keys, columns)
                _place(values, 0, ours.values, columns)
            _place(keys, mine, theirs.keys, columns)
            _place(values, mine, theirs.values, columns)
            layers.append(SlabLayer.holding(keys, values, columns))
        if self.cache is None:
            self.cache = cache
        self.cache.layers = layers
        self.mask = torch.cat([self._padded_mask(self.mask, columns), self._padded_mask(mask, columns)])
        self.positions = torch.cat([self.positions, lengths])
        self._owners.extend(owners)
        self._trim()

    def remove(self, owners: Iterable) -> None:
        """Drop the rows of `owners` (those not here are ignored); the others keep their order."""
        gone = set(owners)
        keep = [row for row, owner in enumerate(self._owners) if owner not in gone]
        if len(keep) == self.num_rows:
            return
        if not keep:
            self.clear()
            return
        assert self.cache is not None
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for position, layer in enumerate(self.cache.layers):
            keys, values = layer.buffers  # whole buffers: the spare columns survive the move
            filled = layer.get_seq_length()
            self.cache.layers[position] = SlabLayer.holding(keys.index_select(0, index),
                                                            values.index_select(0, index), filled)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self._owners = [self._owners[row] for row in keep]
        self._trim()

    def clear(self) -> None:
        self.cache = None
        self.mask = self.mask.new_zeros((0, 0))
        self.positions = self.positions.new_zeros((0,))
        self._owners = []

    def decode_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Attention mask (None when no row is padded) and position ids for one decode step."""
        ones = self.mask.new_ones((self.num_rows, 1))
        self.mask = torch.cat([self.mask, ones], dim=1)
        positions = self.positions.unsqueeze(1)
        self.positions = self.positions + 1
        unpadded = int(self.positions.min()) == self.num_columns
        return (None if unpadded else self.mask), positions

    def row_kv(self, owner) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of one row's real KV per layer, (keys, values) each [1, heads, tokens, dim]; copy to keep."""
        assert self.cache is not None
        row = self._owners.index(owner)
        tokens, columns = int(self.positions[row]), self.num_columns
        return [(layer.keys[row:row + 1, :, columns - tokens:columns],
                 layer.values[row:row + 1, :, columns - tokens:columns]) for layer in self.cache.layers]

    @staticmethod
    def _padded_mask(mask: torch.Tensor, columns: int) -> torch.Tensor:
        missing = columns - mask.shape[1]
        return mask if missing == 0 else torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)

    def _trim(self) -> None:
        """Drop padding columns every row has: a view into the same buffers, no copy."""
        padding = self.num_columns - int(self.positions.max())
        if padding <= 0:
            return
        assert self.cache is not None
        for index, layer in enumerate(self.cache.layers):
            keys, values = layer.buffers
            filled = layer.get_seq_length()
            self.cache.layers[index] = SlabLayer.holding(keys[:, :, padding:], values[:, :, padding:], filled - padding)
        self.mask = self.mask[:, padding:]
