"""KVStore: the decode batch's KV rows, and which sequence owns each row.

Rows are left-padded to a common width, with each row's length (its real columns end there) and
position (TGI's CausalLMBatch is the model). The store is the one place that knows row i belongs to sequence s:
rows join with their own prefilled cache, leave by sequence, and hand out a row's KV for the prefix
cache. Every layer is a SlabLayer with spare columns, and the moves keep that spare room. A
sliding-window layer (where the forward says which: `windows`) keeps only its last columns: left
padding right-aligns every row, so the next query of every row sees keys in the last `window - 1`
columns only, and older ones are dropped once REUSE_MARGIN + FORGET_STEP columns past that
have piled up (a view: the buffer's next growth copies just what is kept; a copy at once where most of
it goes, a long prompt having just joined). Its memory and attention stay
bounded by the window, not the context (bench/window_kv.py measures this against keeping every
column under the window mask). Each layer holds the LAST `get_seq_length()` of the store's
`num_columns` logical columns: the invariant every move below keeps. Under load
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

# Columns a sliding layer keeps beyond its window: a prefix-cache hit up to this many tokens short of a
# stored conversation's end (a chat template re-rendering the last turn's ending) still finds every key.
REUSE_MARGIN = 128
# Forgetting waits until this many columns more than it keeps have piled up: one view per FORGET_STEP steps.
FORGET_STEP = 128


def kept_columns(window: int) -> int:
    """Columns a sliding layer of this window keeps after forgetting."""
    return window - 1 + REUSE_MARGIN


def check_plain_cache(cache: DynamicCache | LayerCache) -> None:
    """Left padding is only sound for layers that keep every column; transformers' window rings,
    linear-attention or recurrent layers keep other state."""
    for layer in cache.layers:
        if type(layer).__name__ not in _PLAIN_LAYERS:
            raise NotImplementedError(
                f"batched decoding supports KV caches that keep every position only, not {type(layer).__name__}"
            )


def held_columns(layer) -> int:
    """Filled columns of a cache layer (0 before its first write)."""
    return layer.get_seq_length() if layer.is_initialized else 0


def layer_bytes(layer) -> int:
    """Memory a cache layer holds, spare columns included."""
    if isinstance(layer, SlabLayer):
        return layer.allocated_bytes
    return 0 if layer.keys is None else layer.keys.nbytes + layer.values.nbytes


def cache_bytes(cache: DynamicCache | LayerCache) -> int:
    """Memory a whole cache holds, spare columns included."""
    return sum(layer_bytes(layer) for layer in cache.layers)


def row_views(cache: DynamicCache | LayerCache, row: int, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Views of one row's last `tokens` columns per layer (fewer where a sliding layer forgot older
    ones), (keys, values) each [1, heads, columns, dim]; copy to keep."""
    views = []
    for layer in cache.layers:
        start = max(held_columns(layer) - tokens, 0)
        views.append((layer.keys[row:row + 1, :, start:], layer.values[row:row + 1, :, start:]))
    return views


def start_with_prefix(cache: DynamicCache | LayerCache, layers: list[tuple[torch.Tensor, torch.Tensor]], tokens: int,
                      room: int, total: int) -> None:
    """Make an empty one-row `cache` hold a copy of positions up to `tokens` of `layers`, a row of `total`
    positions ((keys, values) per layer, each the LAST columns of that row: a sliding layer may hold
    fewer), with room for `room` more columns before it grows."""
    kind = slab_class_of(cache.layers[0])
    held = []
    for keys, values in layers:
        columns = tokens - (total - keys.shape[-2])  # the layer's columns before position `tokens`
        assert columns >= 0, "a prefix hit starts where every layer holds its keys (PrefixCache.lookup)"
        key_buffer = spare_buffer(keys, 1, columns + room)
        value_buffer = spare_buffer(values, 1, columns + room)
        key_buffer[:, :, :columns] = keys[:, :, :columns]
        value_buffer[:, :, :columns] = values[:, :, :columns]
        held.append(kind.holding(key_buffer, value_buffer, columns))
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
    """Copy kv [rows, heads, width, dim] into buffer's rows from start_row, right-aligned at `columns`
    (only its last `columns` where it is wider: a sliding layer keeping fewer)."""
    width = min(kv.shape[-2], columns)
    buffer[start_row:start_row + kv.shape[0], :, columns - width:columns] = kv[:, :, kv.shape[-2] - width:]


def _compacted(buffer: torch.Tensor, drop: int, keep: int) -> torch.Tensor:
    """A fresh buffer holding columns drop:drop + keep of `buffer` first, with spare columns after them
    and as many rows behind the view as `buffer` had (so later joiners still fit in place)."""
    fresh = spare_buffer(buffer, row_capacity(buffer), keep)
    fresh[:buffer.shape[0], :, :keep] = buffer[:, :, drop:drop + keep]
    return fresh[:buffer.shape[0]]


class KVStore:
    """KV tensors [rows, heads, columns, head_dim] per layer, each row's length, row owners.

    A row of length n holds its KV in the last n columns (left padding); the attention mask the
    torch forwards need is derived from the lengths when asked for, never kept (growing a stored
    mask by a column copied it whole at every step).
    """

    def __init__(self, device: torch.device, windows: Seq[int | None] | None = None) -> None:
        self.device = device
        # Each layer's sliding window (None: full attention) where the forward computes keys by position
        # (ours), so a sliding layer may forget what no query can see; None: every layer keeps every column.
        self.windows = list(windows) if windows and any(windows) else None
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
        if self.windows is None:  # every layer's buffers are made, moved and grown together: one size
            return layer_bytes(self.cache.layers[0]) * len(self.cache.layers)
        return sum(layer_bytes(layer) for layer in self.cache.layers)

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
        self._forget()

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
            width = ours.get_seq_length()  # the newcomers keep as many columns: a sliding layer, its last
            keys, values = (with_rows(buffer, mine + theirs.keys.shape[0]) for buffer in ours.buffers)
            for buffer, kv in ((keys, theirs.keys), (values, theirs.values)):
                buffer[mine:, :, :max(width - kv.shape[-2], 0)] = 0  # stale KV of a leaver; padding is zero
                _place(buffer, mine, kv, width)
            self.cache.layers[index] = type(ours).holding(keys, values, width)

    def _join_by_copy(self, cache: DynamicCache | LayerCache, columns: int) -> None:
        """New buffers with room for every row: ours copied, theirs placed after them."""
        mine = self.num_rows
        layers = []
        for index, theirs in enumerate(cache.layers):
            # Right-aligned, each side holds the last columns: the wider one's count holds both.
            ours = self.cache.layers[index] if mine else None
            width = max(held_columns(theirs), held_columns(ours) if ours is not None else 0)
            keys = spare_buffer(theirs.keys, mine + theirs.keys.shape[0], width)
            values = spare_buffer(theirs.values, mine + theirs.values.shape[0], width)
            if ours is not None:
                _place(keys, 0, ours.keys, width)
                _place(values, 0, ours.values, width)
            _place(keys, mine, theirs.keys, width)
            _place(values, mine, theirs.values, width)
            layers.append(slab_class_of(theirs).holding(keys, values, width))
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

    def keep_written(self, count: int, written: int) -> None:
        """After a pass wrote `written` columns of which only the first `count` stand (drafts): the rest
        become spare again, and every row is `count` tokens longer."""
        assert self.cache is not None
        for layer in self.cache.layers:
            layer.set_filled(layer.get_seq_length() - written + count)
        self.advance(count)

    def advance(self, count: int = 1) -> None:
        """Every row is `count` tokens longer: a decode step wrote that many columns."""
        self.lengths = [n + count for n in self.lengths]
        self.num_columns += count
        self._forget()

    def row_kv(self, owner) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of one row's KV per layer, (keys, values) each [1, heads, tokens, dim] (a sliding layer's
        last columns only, where it forgot older ones); copy to keep."""
        assert self.cache is not None
        row = self._owners.index(owner)
        return row_views(self.cache, row, self.lengths[row])

    def first_reusable(self, layers: list[tuple[torch.Tensor, torch.Tensor]], total: int) -> int:
        """The shortest prefix of a `total`-token row whose continuation finds every key it needs in
        `layers` (row_kv's views): 0 unless a sliding layer forgot, then its window past what it forgot."""
        if self.windows is None:
            return 0
        needs = [total - keys.shape[-2] + window - 1 for (keys, _), window in zip(layers, self.windows)
                 if window is not None and keys.shape[-2] < total]
        return max(needs, default=0)

    def _forget(self) -> None:
        """Sliding layers drop columns no row's next query can see, once FORGET_STEP of them have piled
        up past what they keep: a view (the next growth copies only what is kept), or a copy into a
        buffer of their size where they dropped more than they keep (a long prompt just joined), so its
        memory is given back at once."""
        if self.windows is None or self.cache is None:
            return
        for index, (layer, window) in enumerate(zip(self.cache.layers, self.windows)):
            held = held_columns(layer)
            if window is None or held < kept_columns(window) + FORGET_STEP:
                continue
            kept = kept_columns(window)
            buffers = [_compacted(buffer, held - kept, kept) if held - kept > kept else buffer[:, :, held - kept:]
                       for buffer in layer.buffers]
            self.cache.layers[index] = type(layer).holding(*buffers, kept)

    def _mask(self, columns: int) -> torch.Tensor:
        column = torch.arange(columns, device=self.device)
        return (column[None, :] >= (columns - self.positions)[:, None]).long()

    def _trim(self) -> None:
        """Drop padding columns every row has: a view into the same buffers, no copy."""
        padding = self.num_columns - max(self.lengths)
        if padding <= 0:
            return
        assert self.cache is not None
        columns = self.num_columns - padding
        for index, layer in enumerate(self.cache.layers):
            keys, values = layer.buffers
            filled = layer.get_seq_length()
            drop = max(filled - columns, 0)  # a sliding layer may already hold fewer than the padding spans
            self.cache.layers[index] = type(layer).holding(keys[:, :, drop:], values[:, :, drop:], filled - drop)
        self.num_columns = columns
