"""The model runner: the only module that calls `model.forward` (or its stand-ins).

`prefill_batch` runs whole prompts together, left-padded, into a new cache; `prefill` runs one chunk
of one prompt into that sequence's own cache (which may start with a cached prefix's KV); `decode`
advances every row of the KVStore by one token. All return float32 logits for the last position
only (a chunk may ask for every position's, for prompt logprobs).

Three forwards, one per model: NativeLlama (the native kernels, on CPU: every token's numbers depend
on its own sequence alone, whatever the batch), FusedLlama (the same function in torch ops: GPUs,
or a CPU without the kernels), or transformers' `model.forward` (every other model).
"""

from __future__ import annotations

import inspect
import itertools
from typing import TYPE_CHECKING

import torch

from app.engine.scheduling.chores import Slices, run_to_end
from app.engine.models.fused_llama import FusedLlama
from app.engine.kv.kv_store import KVStore, start_with_prefix
from app.engine.models.packed_linear import PackedLinear
from app.engine.kv.slab_cache import LayerCache, slab_cache, slab_cache_of

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel

    from app.engine.native.model import NativeLlama

# Warming 1..64 rows took 0.4 s for the default model on 2 CPUs, 1..128 about 1 s, 1..256 about 3.5 s;
# 128 rows' kernels (5 per row count here) also leave most of oneDNN's 1024-entry cache to prompt shapes.
MAX_WARM_ROWS = 128


def _offsets_kwarg(offsets: list[int]) -> dict[str, list[int]]:
    """NativeLlama.run's layer_offsets, where a layer forgot columns."""
    return {"layer_offsets": offsets} if any(offsets) else {}


def _cache_kwarg(model: PreTrainedModel) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; accept both generations.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class ModelRunner:
    def __init__(self, model: PreTrainedModel | None, device: torch.device, fused: FusedLlama | None = None,
                 native: NativeLlama | None = None) -> None:
        assert model is not None or fused is not None or native is not None, "a model to run"
        self.model = model  # None when the checkpoint was read straight into `fused` or `native`
        self.device = device
        self.fused = fused  # when set, every forward pass runs through it instead of model.forward
        self.native = native  # when set, every forward pass runs through the native kernels
        self._cache_kwarg = None if model is None else _cache_kwarg(model)

    def new_cache(self) -> DynamicCache | LayerCache:
        if self.native is not None or self.fused is not None:
            return slab_cache_of((self.native or self.fused).dims.num_layers)
        return slab_cache(self.model.config)

    @property
    def sliding_windows(self) -> list[int | None] | None:
        """Each layer's sliding window where this forward finds keys by position, so a KVStore may let
        sliding layers forget what no query sees (ours); None: every layer must keep every column
        (transformers' masks count columns)."""
        forward = self.native or self.fused
        return None if forward is None else getattr(forward, "windows", None)

    def cache_starting_with(self, layers: list[tuple[torch.Tensor, torch.Tensor]], tokens: int,
                            room: int, total: int) -> DynamicCache:
        """A new one-row cache holding a copy of positions up to `tokens` of `layers` (the last columns of
        a `total`-token row), with room for `room` more columns before it grows."""
        cache = self.new_cache()
        start_with_prefix(cache, layers, tokens, room, total)
        return cache

    @torch.inference_mode()
    def prefill(self, cache: DynamicCache, token_ids: list[int], start: int,
                every_position: bool = False) -> torch.Tensor:
        """Run `token_ids` (positions start..) into `cache`; return the last position's logits [V],
        or every position's [tokens, V] (for prompt logprobs)."""
        if self.native is not None:
            count = len(token_ids)
            wanted = range(count) if every_position else [count - 1]
            logits = self._native_pass(cache, [0], token_ids, range(start, start + count), [0] * count,
                                       start, count, wanted)
            return logits if every_position else logits[0]
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(token_ids), device=self.device).unsqueeze(0)
        logits = self._forward(input_ids, None, positions, cache, last_only=not every_position)
        return logits[0]

    @torch.inference_mode()
    def prefill_batch(self, prompts: list[list[int]]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """Run whole prompts together, left-padded: (their cache, mask [n, width], last logits [n, V])."""
        width = max(len(p) for p in prompts)
        if self.native is not None:
            return self._native_prefill_batch(prompts, width)
        input_ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = self.new_cache()
        unpadded = all(len(p) == width for p in prompts)
        logits = self._forward(input_ids, None if unpadded else mask, positions, cache)
        return cache, mask, logits

    @torch.inference_mode()
    def decode(self, store: KVStore, last_tokens: list[int]) -> torch.Tensor:
        """Feed each row its last sampled token; return next-token logits [rows, V]."""
        if self.native is not None:
            rows, columns, lengths = store.num_rows, store.num_columns, store.lengths
            logits = self._native_pass(store.cache, [columns - n for n in lengths], last_tokens, lengths,
                                       range(rows), columns, 1, range(rows))
            store.advance()
            return logits
        input_ids = torch.tensor(last_tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        mask, positions = store.decode_inputs()
        return self._forward(input_ids, mask, positions, store.cache)

    @property
    def can_verify_drafts(self) -> bool:
        """True where a pass over several positions of a row computes each exactly as a one-token step
        would (the native kernels): speculation then never changes a token."""
        return self.native is not None

    @torch.inference_mode()
    def verify(self, store: KVStore, tokens: list[int]) -> torch.Tensor:
        """The store's one row fed `tokens` (its last token, then drafts) in one pass: logits [n, V].
        Their KV is written; `keep` then says how many positions stand."""
        assert self.native is not None and store.num_rows == 1
        length, columns, count = store.lengths[0], store.num_columns, len(tokens)
        return self._native_pass(store.cache, [columns - length], tokens, range(length, length + count),
                                 [0] * count, columns, count, range(count))

    def keep(self, store: KVStore, count: int, written: int) -> None:
        """After `verify` of `written` tokens: the row is `count` positions longer (the drafts after
        those are dropped)."""
        store.keep_written(count, written)

    def _native_prefill_batch(self, prompts: list[list[int]], width: int
                              ) -> tuple[LayerCache, torch.Tensor, torch.Tensor]:
        """prefill_batch through the native kernels: only the real tokens run (padding costs nothing)."""
        lengths = [len(p) for p in prompts]
        cache = self.new_cache()
        ends = list(itertools.accumulate(lengths))
        logits = self._native_pass(cache, [width - n for n in lengths], [t for p in prompts for t in p],
                                   [i for n in lengths for i in range(n)],
                                   [row for row, n in enumerate(lengths) for _ in range(n)], 0, width,
                                   [end - 1 for end in ends])
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, n in enumerate(lengths):
            mask[row, width - n:] = 1
        return cache, mask, logits

    def _native_pass(self, cache: LayerCache, first_columns, tokens, positions, rows, columns: int, added: int,
                     wanted) -> torch.Tensor:
        """One NativeLlama pass writing into `cache`'s layers: `columns` logical columns before it, `added`
        more after (row r's position p at logical column first_columns[r] + p; each layer holds the last
        of them, a sliding one maybe fewer)."""
        dims = self.native.dims
        like = torch.empty((len(first_columns), dims.num_kv_heads, 0, dims.head_dim), dtype=self.native.kv_dtype)
        offsets = cache.layer_offsets(columns)
        after = [columns + added - offset for offset in offsets]
        buffers = cache.writable_buffers(after, like)
        logits = self.native.run(tokens, positions, rows, first_columns, buffers, wanted, **_offsets_kwarg(offsets))
        cache.hold_written(buffers, after)
        return logits

    def warm_row_slices(self, max_rows: int) -> Slices:
        """Run each distinct weight matrix once per batch size 1..max_rows, one batch size per slice.

        On CPU oneDNN builds and caches a kernel per (rows, weight) shape, ~0.35 MiB each: made early,
        the server's memory no longer creeps up as traffic hits new batch sizes (and nobody waits for it).
        Up to MAX_WARM_ROWS only: the work grows with the square of the rows. Nothing to do for the
        native kernels, which build nothing per shape.
        """
        if self.native is not None:
            return None
        with torch.inference_mode():
            matmuls = self._distinct_matmuls()
        for rows in range(1, min(max_rows, MAX_WARM_ROWS) + 1):
            yield
            with torch.inference_mode():
                for module, width, dtype in matmuls:
                    module(torch.zeros((rows, 1, width), dtype=dtype, device=self.device))
        return None

    def warm_row_counts(self, max_rows: int) -> None:
        """warm_row_slices, all at once."""
        run_to_end(self.warm_row_slices(max_rows))

    def _distinct_fused_matmuls(self) -> list[tuple[PackedLinear, int, torch.dtype]]:
        assert self.fused is not None
        dtype = self.fused.dtype
        distinct = {lin.shape: lin for lin in self.fused.linears()}
        return [(lin, lin.in_features, dtype) for lin in distinct.values()]

    def _distinct_matmuls(self) -> list[tuple[object, int, torch.dtype]]:
        """(module, input width, input dtype) for each distinct weighted leaf layer a forward pass uses."""
        if self.fused is not None:
            return self._distinct_fused_matmuls()
        found: dict[tuple, tuple[torch.nn.Module, int, torch.dtype]] = {}

        def record(module: torch.nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                weight = module.weight
                key = (type(module), tuple(weight.shape), weight.dtype, getattr(module, "bias", None) is not None)
                found.setdefault(key, (module, args[0].shape[-1], args[0].dtype))

        layers = [m for m in self.model.modules()
                  if not any(m.children()) and isinstance(getattr(m, "weight", None), torch.Tensor)
                  and m.weight.dim() == 2]
        hooks = [m.register_forward_pre_hook(record) for m in layers]
        try:
            self.prefill_batch([[0]])
        finally:
            for hook in hooks:
                hook.remove()
        return list(found.values())

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor,
                 cache: DynamicCache, last_only: bool = True) -> torch.Tensor:
        if self.fused is not None:
            return self.fused.forward(input_ids, mask, positions, cache, last_only=last_only)
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
            **{self._cache_kwarg: cache},
        )
        return (output.logits[:, -1, :] if last_only else output.logits).float()
