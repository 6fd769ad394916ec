"""KVStore: the decode batch's KV rows, and which sequence owns each row.

Rows are left-padded to a common width, with each row's length (its real columns end there) and
position (TGI's CausalLMBatch is the model). The store is the one place that knows row i belongs to sequence s:
rows join with their own prefilled cache, leave by sequence, and hand out a row's KV for the prefix
cache. Every layer is a SlabLayer with spare columns, and the moves keep that spare room; a sliding-window
layer is one too, holding every position (the model's sliding-window mask keeps each query to the last
`window` columns, which left padding makes the row's last positions; see ARCHITECTURE.md). A ring of
`window` columns would bound such a layer's memory and attention; it is not built. Under load
rows come and go one at a time, so a move must not cost the whole batch: a leaver's slot is filled by
a row from the end (one row copied per layer) and the buffers keep the freed rows; a joiner that fits
in them is written there, otherwise each layer is copied once into a buffer with room for all rows.
Trimming shared padding is a view. It never runs the model.

The interface (join, remove, decode_inputs / advance / keep_written, row_kv, num_bytes) is the seam a paged store
could later sit behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence as Seq
from typing import TYPE_CHECKING

import torch

from app.engine.kv.slab_cache import LayerCache, SlabLayer, slab_class_of, spare_buffer

if TYPE_CHECKING:
    from transformers import DynamicCache

# Layers keeping every position's KV (transformers' plain one, and ours): what left padding is sound for.
# Sliding-window layers are SlabLayers too (slab_cache.slab_cache): transformers' mask does the sliding.
_PLAIN_LAYERS = frozenset({"DynamicLayer", "SlabLayer", "HFSlabLayer"})


def check_plain_cache(cache: DynamicCache | LayerCache) -> None:
    """Left padding is only sound for layers that keep every column; transformers' window rings,
    linear-attention or recurrent layers keep other state."""
    for layer in cache.layers:
        if type(layer).__name__ not in _PLAIN_LAYERS:
            raise NotImplementedError(
                f"batched decoding supports KV caches that keep every position only, not {type(layer).__name__}"
            )


def layer_bytes(layer) -> int:
    """Memory a cache layer holds, spare columns included."""
    if isinstance(layer, SlabLayer):
        return layer.allocated_bytes
    return 0 if layer.keys is None else layer.keys.nbytes + layer.values.nbytes


def cache_bytes(cache: DynamicCache | LayerCache) -> int:
    """Memory a whole cache holds, spare columns included."""
    return sum(layer_bytes(layer) for layer in cache.layers)


def row_views(cache: DynamicCache | LayerCache, row: int, start: int,
              end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Views of columns start:end of one row per layer, (keys, values) each [1, heads, end - start, dim];
    copy to keep."""
    return [(layer.keys[row:row + 1, :, start:end], layer.values[row:row + 1, :, start:end]) for layer in cache.layers]


def start_with_prefix(cache: DynamicCache | LayerCache, layers: list[tuple[torch.Tensor, torch.Tensor]], tokens: int,
                      room: int) -> None:
    """Make an empty one-row `cache` hold a copy of the first `tokens` columns of `layers` ((keys, values)
    per layer), with room for `room` more columns before it grows."""
    kind = slab_class_of(cache.layers[0])
    held = []
    for keys, values in layers:
        key_buffer = spare_buffer(keys, 1, tokens + room)
        value_buffer = spare_buffer(values, 1, tokens + room)
        key_buffer[:, :, :tokens] = keys[:, :, :tokens]
        value_buffer[:, :, :tokens] = values[:, :, :tokens]
        held.append(kind.holding(key_buffer, value_buffer, tokens))
    cache.layers = held


def select_rows(cache: DynamicCache, rows: list[int]) -> torch.Tensor:
    """Keep only `rows` of every layer of a prefilled cache, in that order; returns the index used."""
    index = torch.tensor(rows, dtype=torch.long, device=cache.layers[0].keys.device)
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
    return index


def row_capacity(buffer: torch.Tensor) -> int:
    """Rows a [rows, ...] view could span in its storage: the rows it shows plus those left behind it
    by row moves (a view of the first rows of a bigger buffer)."""
    element = buffer.element_size()
    last_row_extent = sum((size - 1) * stride for size, stride in zip(buffer.shape[1:], buffer.stride()[1:])) + 1
    available = buffer.untyped_storage().nbytes() // element - buffer.storage_offset()
    return (available - last_row_extent) // buffer.stride(0) + 1


def with_rows(buffer: torch.Tensor, rows: int) -> torch.Tensor:
    """The same storage seen with `rows` rows (within row_capacity): rows past the view come back."""
    assert rows <= row_capacity(buffer)
    return buffer.as_strided((rows, *buffer.shape[1:]), buffer.stride(), buffer.storage_offset())


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

    @property
    def parked_bytes(self) -> int:
        """Bytes of the rows the buffers keep, past the rows in use, for later joiners."""
        if self.cache is None:
            return 0
        capacity = row_capacity(self.cache.layers[0].buffers[0])
        return self.num_bytes * (capacity - self.num_rows) // capacity

    def release_parked(self) -> int:
        """Shrink the buffers to the rows in use (memory is wanted elsewhere); returns the bytes freed."""
        freed = self.parked_bytes
        if freed:
            self._select_rows(list(range(self.num_rows)))
        return freed

    def __contains__(self, owner) -> bool:
        return owner in self._owners

    def join(self, owners: Seq, cache: DynamicCache | LayerCache, mask: torch.Tensor) -> None:
        """Append prefilled rows, owned by `owners` in order: their left-padded cache and mask [rows, columns]."""
        check_plain_cache(cache)
        assert len(owners) == mask.shape[0], "one owner per joining row"
        columns = max(self.num_columns, int(mask.shape[1]))
        if self._has_room(len(owners), columns):
            self._join_in_place(cache, columns)
        else:
            self._join_by_copy(cache, columns)
        self.lengths.extend(int(n) for n in mask.sum(dim=1).tolist())
        self.num_columns = columns
        self._owners.extend(owners)
        self._trim()

    def _has_room(self, rows: int, columns: int) -> bool:
        """Whether `rows` more rows fit in the rows our buffers left behind, with no column added."""
        if self.cache is None or columns != self.num_columns:
            return False
        keys, _ = self.cache.layers[0].buffers
        return keys is not None and row_capacity(keys) >= self.num_rows + rows

    def _join_in_place(self, cache: DynamicCache | LayerCache, columns: int) -> None:
        """Write the newcomers into the rows earlier leavers freed: no existing row moves."""
        mine = self.num_rows
        for index, theirs in enumerate(cache.layers):
            ours = self.cache.layers[index]
            keys, values = (with_rows(buffer, mine + theirs.keys.shape[0]) for buffer in ours.buffers)
            for buffer, kv in ((keys, theirs.keys), (values, theirs.values)):
                buffer[mine:, :, :columns - kv.shape[-2]] = 0  # stale KV of a leaver; padding is zero
                _place(buffer, mine, kv, columns)
            self.cache.layers[index] = type(ours).holding(keys, values, ours.get_seq_length())

    def _join_by_copy(self, cache: DynamicCache | LayerCache, columns: int) -> None:
        """New buffers with room for every row: ours copied, theirs placed after them."""
        mine = self.num_rows
        layers = []
        for index, theirs in enumerate(cache.layers):
            keys = spare_buffer(theirs.keys, mine + theirs.keys.shape[0], columns)
            values = spare_buffer(theirs.values, mine + theirs.values.shape[0], columns)
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

    def remove(self, owners: Iterable) -> None:
        """Drop the rows of `owners` (those not here are ignored). Rows after the last kept slot move
        into the holes (the order changes; the owners and lengths move with them), so a leaver costs
        one row copy per layer, not the whole batch; the buffers keep the freed rows for later
        joiners until fewer than half of them are in use, then shrink to fit."""
        gone = set(owners)
        keep = [row for row, owner in enumerate(self._owners) if owner not in gone]
        if len(keep) == self.num_rows:
            return
        if not keep:
            self.clear()
            return
        assert self.cache is not None
        if 2 * len(keep) < row_capacity(self.cache.layers[0].buffers[0]):
            self._select_rows(keep)
            return
        holes = [row for row in range(len(keep)) if self._owners[row] in gone]
        movers = [row for row in range(len(keep), self.num_rows) if self._owners[row] not in gone]
        order = list(range(len(keep)))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        into, out_of = (torch.tensor(rows, dtype=torch.long, device=self.device) for rows in (holes, movers))

        def fill_holes(buffer: torch.Tensor) -> torch.Tensor:
            if holes:
                buffer.index_copy_(0, into, buffer.index_select(0, out_of))
            return buffer[:len(keep)]
        self._move_rows(order, fill_holes)

    def _select_rows(self, rows: list[int]) -> None:
        """New buffers holding just `rows`, in that order (the freed ones are given back)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self._move_rows(rows, lambda buffer: buffer.index_select(0, index))

    def _move_rows(self, order: list[int], move: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Rebuild every layer from `move` of its whole buffers (spare columns survive); afterwards row
        i holds what row order[i] held."""
        assert self.cache is not None
        for position, layer in enumerate(self.cache.layers):
            keys, values = layer.buffers
            self.cache.layers[position] = type(layer).holding(move(keys), move(values), layer.get_seq_length())
        self.lengths = [self.lengths[row] for row in order]
        self._owners = [self._owners[row] for row in order]
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

    def keep_written(self, count: int) -> None:
        """After a pass wrote more columns than stand (drafts): the first `count` stand, the rest become
        spare again, and every row is `count` tokens longer."""
        assert self.cache is not None
        columns = self.num_columns + count
        for layer in self.cache.layers:
            layer.set_filled(columns)
        self.advance(count)

    def advance(self, count: int = 1) -> None:
        """Every row is `count` tokens longer: a decode step wrote that many columns."""
        self.lengths = [n + count for n in self.lengths]
        self.num_columns += count

    def row_kv(self, owner) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of one row's real KV per layer, (keys, values) each [1, heads, tokens, dim]; copy to keep."""
        assert self.cache is not None
        row = self._owners.index(owner)
        return row_views(self.cache, row, self.num_columns - self.lengths[row], self.num_columns)

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
