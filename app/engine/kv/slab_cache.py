"""A KV-cache layer with spare columns, so a decode step writes one column instead of copying all.

transformers' DynamicLayer concatenates on every update, copying the whole cache once per token;
with long contexts that copy costs as much as reading the weights. SlabLayer keeps keys and values
in a buffer with room to grow and exposes views of the filled part; KVStore moves whole buffers
(spare columns included) between layers. It has the DynamicLayer methods our own forwards use and
needs no transformers (importing it costs half a second of start-up); for transformers' models
`slab_cache` builds their DynamicCache with `hf_slab_layer()`, the same class mixed into theirs.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import DynamicCache

# Columns added when a buffer is full: one copy every GROW_COLUMNS decode steps.
GROW_COLUMNS = 128


def _grow(buffer: torch.Tensor | None, filled: int, new: torch.Tensor) -> torch.Tensor:
    """A buffer holding `buffer[:, :, :filled]` with room for `new` plus spare columns."""
    needed = filled + new.shape[-2]
    if buffer is not None and needed <= buffer.shape[-2]:
        return buffer
    shape = (*new.shape[:2], needed + GROW_COLUMNS, new.shape[-1])
    grown = new.new_empty(shape)
    if buffer is not None and filled:
        grown[:, :, :filled] = buffer[:, :, :filled]
    return grown


class SlabLayer:
    def __init__(self, **kwargs) -> None:
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._num_keys = self._num_values = 0
        self.is_initialized = False
        self.device: torch.device | None = None
        super().__init__(**kwargs)  # transformers' DynamicLayer, in hf_slab_layer()'s class

    @property
    def keys(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self._keys is None else self._keys[:, :, : self._num_keys]

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._keys, self._num_keys = tensor, (0 if tensor is None or tensor.dim() < 4 else tensor.shape[-2])

    @property
    def values(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self._values is None else self._values[:, :, : self._num_values]

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._values, self._num_values = tensor, (0 if tensor is None or tensor.dim() < 4 else tensor.shape[-2])

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the buffers behind this layer, spare and trimmed columns included."""
        return sum(t.untyped_storage().nbytes() for t in (self._keys, self._values) if t is not None and t.dim() == 4)

    @property
    def capacity(self) -> int:
        """Columns the buffers hold, filled or spare."""
        return 0 if self._keys is None or self._keys.dim() < 4 else int(self._keys.shape[-2])

    @property
    def buffers(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Keys and values buffers, spare columns included (for KVStore's whole-buffer row moves)."""
        return self._keys, self._values

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, filled: int) -> SlabLayer:
        """A layer over existing buffers whose first `filled` columns hold KV; the rest is spare."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer._keys, layer._values = keys, values
        layer._num_keys = layer._num_values = filled
        return layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = self.values = None
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self._num_keys if self.is_initialized else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._keys = self._append(self._keys, self._num_keys, key_states)
        self._values = self._append(self._values, self._num_values, value_states)
        self._num_keys += key_states.shape[-2]
        self._num_values += value_states.shape[-2]
        return self.keys, self.values

    def fill_to(self, keys: torch.Tensor, values: torch.Tensor, columns: int) -> None:
        """Hold `keys` and `values` (this layer's buffers or new ones) with `columns` filled columns."""
        if keys is not self._keys or values is not self._values:
            self.lazy_initialization(keys, values)
            self._keys, self._values = keys, values
        self._num_keys = self._num_values = columns

    def set_filled(self, columns: int) -> None:
        """Keep `columns` filled columns of the same buffers (fewer: the rest become spare)."""
        self._num_keys = self._num_values = columns

    def room_for(self, columns: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value buffers shaped like `like` [rows, heads, *, dim] with room for `columns`
        columns (filled ones kept, spare ones zero): for writers that fill columns themselves (the
        native kernels), who then call `fill_to` with the new count."""
        if self._keys is None or self._keys.dim() < 4:
            return spare_buffer(like, like.shape[0], columns), spare_buffer(like, like.shape[0], columns)
        if columns <= self._keys.shape[-2]:
            return self._keys, self._values
        filled = self._num_keys
        keys, values = spare_buffer(self._keys, self._keys.shape[0], columns), spare_buffer(self._values, self._values.shape[0], columns)
        keys[:, :, :filled] = self._keys[:, :, :filled]
        values[:, :, :filled] = self._values[:, :, :filled]
        return keys, values

    @staticmethod
    def _append(buffer: torch.Tensor | None, filled: int, new: torch.Tensor) -> torch.Tensor:
        buffer = _grow(buffer, filled, new)
        buffer[:, :, filled : filled + new.shape[-2]] = new
        return buffer


def spare_buffer(like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """A zeroed [rows, heads, columns + GROW_COLUMNS, head_dim] buffer in `like`'s dtype and device.

    Zeroed, not empty: padding columns are masked out, but a masked NaN would still poison softmax.
    """
    return like.new_zeros((rows, like.shape[1], columns + GROW_COLUMNS, like.shape[-1]))


class LayerCache:
    """A KV cache as our forwards see it: a list of layers (transformers' DynamicCache, minus all else)."""

    def __init__(self, layers: list) -> None:
        self.layers = layers

    def layer_offsets(self, columns: int) -> list[int]:
        """The logical column at each layer's buffer column 0 when the cache stands for `columns` columns:
        each layer holds the last ones, a sliding layer maybe fewer (KVStore forgets)."""
        return [columns - (layer.get_seq_length() if layer.is_initialized else 0) for layer in self.layers]

    def writable_buffers(self, columns: list[int], like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's key and value buffers with room for its `columns[i]` columns (SlabLayer.room_for),
        for a writer that fills columns itself (the native kernels) and then calls `hold_written`."""
        return [layer.room_for(count, like) for layer, count in zip(self.layers, columns)]

    def hold_written(self, buffers: list[tuple[torch.Tensor, torch.Tensor]], columns: list[int]) -> None:
        """Each layer holds its (keys, values) from `buffers` with its `columns[i]` filled columns."""
        for layer, (keys, values), count in zip(self.layers, buffers, columns):
            layer.fill_to(keys, values, count)


@functools.cache
def hf_slab_layer() -> type[SlabLayer]:
    """SlabLayer mixed into transformers' DynamicLayer, for the caches of transformers' own models."""
    from transformers.cache_utils import DynamicLayer
    return type("HFSlabLayer", (SlabLayer, DynamicLayer), {})


def slab_class_of(layer) -> type[SlabLayer]:
    """The SlabLayer class to hold buffers in place of `layer` (a cache's layers are all one kind)."""
    return type(layer) if isinstance(layer, SlabLayer) else hf_slab_layer()


def slab_cache(config) -> DynamicCache:
    """A DynamicCache for `config` whose attention layers, full or sliding, are SlabLayers (others are
    kept, and check_plain_cache refuses them).

    A sliding-window layer keeps every column too (the "mask" way): transformers' sliding-window mask
    (masking_utils.create_sliding_window_causal_mask, built from each layer's column counts) keeps each
    query to the last `sliding_window` columns, which under left padding are the row's last positions.
    So left padding, row moves and the prefix cache (every position's KV) work as for full attention,
    and the model computes exactly what its own DynamicSlidingWindowLayer would: the window ring drops
    only columns no query can see.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    cache = DynamicCache(config=config)
    attention = (DynamicLayer, DynamicSlidingWindowLayer)
    cache.layers = [hf_slab_layer()() if type(layer) in attention else layer for layer in cache.layers]
    return cache


def slab_cache_of(num_layers: int) -> LayerCache:
    """A cache of `num_layers` SlabLayers (FusedLlama's and NativeLlama's: how many columns a sliding one
    keeps is KVStore's business)."""
    return LayerCache([SlabLayer() for _ in range(num_layers)])
