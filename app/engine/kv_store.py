"""KVStore: the decode batch's KV rows, and which sequence owns each row.

Rows are left-padded to a common width, with each row's length (its real columns end there) and
position (TGI's CausalLMBatch is the model). The store is the one place that knows row i belongs to sequence s:
rows join with their own prefilled cache, leave by sequence, and hand out a row's KV for the prefix
cache. Every layer is a SlabLayer with spare columns, and the moves keep that spare room: a join
copies each layer once into a buffer with room to grow, a leave index-selects whole buffers, and
trimming shared padding is a view. It never runs the model.

The interface (join, remove, decode_inputs / advance, row_kv, num_bytes) is the seam a paged store
could later sit behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence as Seq
from typing import TYPE_CHECKING

import torch

from app.engine.slab_cache import LayerCache, SlabLayer, slab_class_of, spare_buffer

if TYPE_CHECKING:
    from transformers import DynamicCache

# Full-attention layers (transformers' plain one, and ours): what left padding is sound for.
_PLAIN_LAYERS = frozenset({"DynamicLayer", "SlabLayer", "HFSlabLayer"})


def check_plain_cache(cache: DynamicCache | LayerCache) -> None:
    """Left padding is only sound for full-attention layers; sliding or linear layers keep other state."""
    for layer in cache.layers:
        if type(layer).__name__ not in _PLAIN_LAYERS:
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
    """KV tensors [rows, heads, columns, head_dim] per layer, each row's length, row owners.

    A row of length n holds its KV in the last n columns (left padding); the attention mask the
    torch forwards need is derived from the lengths when asked for, never kept (growing a stored
    mask by a column copied it whole at every step).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: DynamicCache | LayerCache | None = None
        self.lengths: list[int] = []  # real tokens per row, in row order
        self.num_columns = 0
        self._owners: list = []  # the sequence at each row, in row order

    @property
    def rows(self) -> list:
        """The sequences of the batch, in row order (a copy)."""
        return list(self._owners)

    @property
    def num_rows(self) -> int:
        return len(self._owners)

    @property
    def positions(self) -> torch.Tensor:
        """Each row's next position (its length), [rows]."""
        return torch.tensor(self.lengths, dtype=torch.long, device=self.device)

    @property
    def mask(self) -> torch.Tensor:
        """[rows, columns]: 1 where a row has a real token."""
        return self._mask(self.num_columns)

    @property
    def num_bytes(self) -> int:
        if self.cache is None:
            return 0
        # Every layer's buffers are made, moved and grown together: one layer's bytes times their count.
        return layer_bytes(self.cache.layers[0]) * len(self.cache.layers)

    def __contains__(self, owner) -> bool:
        return owner in self._owners

    def join(self, owners: Seq, cache: DynamicCache | LayerCache, mask: torch.Tensor) -> None:
        """Append prefilled rows, owned by `owners` in order: their left-padded cache and mask [rows, columns]."""
        check_plain_cache(cache)
        assert len(owners) == mask.shape[0], "one owner per joining row"
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
            layers.append(slab_class_of(theirs).holding(keys, values, columns))
        if self.cache is None:
            self.cache = cache
        self.cache.layers = layers
        self.lengths.extend(int(n) for n in mask.sum(dim=1).tolist())
        self.num_columns = columns
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
            self.cache.layers[position] = type(layer).holding(keys.index_select(0, index),
                                                              values.index_select(0, index), filled)
        self.lengths = [self.lengths[row] for row in keep]
        self._owners = [self._owners[row] for row in keep]
        self._trim()

    def clear(self) -> None:
        self.cache = None
        self.lengths, self.num_columns, self._owners = [], 0, []

    def decode_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Attention mask (None when no row is padded) and position ids for one decode step (torch
        forwards, which then write the new column themselves); the rows are one longer afterwards."""
        positions = self.positions.unsqueeze(1)
        self.advance()
        unpadded = min(self.lengths) == self.num_columns
        return (None if unpadded else self._mask(self.num_columns)), positions

    def advance(self, count: int = 1) -> None:
        """Every row is `count` tokens longer: a decode step wrote that many columns."""
        self.lengths = [n + count for n in self.lengths]
        self.num_columns += count

    def row_kv(self, owner) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of one row's real KV per layer, (keys, values) each [1, heads, tokens, dim]; copy to keep."""
        assert self.cache is not None
        row = self._owners.index(owner)
        tokens, columns = self.lengths[row], self.num_columns
        return [(layer.keys[row:row + 1, :, columns - tokens:columns],
                 layer.values[row:row + 1, :, columns - tokens:columns]) for layer in self.cache.layers]

    def _mask(self, columns: int) -> torch.Tensor:
        column = torch.arange(columns, device=self.device)
        return (column[None, :] >= (columns - self.positions)[:, None]).long()

    def _trim(self) -> None:
        """Drop padding columns every row has: a view into the same buffers, no copy."""
        padding = self.num_columns - max(self.lengths)
        if padding <= 0:
            return
        assert self.cache is not None
        for index, layer in enumerate(self.cache.layers):
            keys, values = layer.buffers
            filled = layer.get_seq_length()
            self.cache.layers[index] = type(layer).holding(keys[:, :, padding:], values[:, :, padding:], filled - padding)
        self.num_columns -= padding
