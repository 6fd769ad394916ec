"""The model runner: the only module that calls `model.forward`.

`prefill_batch` runs whole prompts together, left-padded, into a new cache; `prefill` runs one chunk
of one prompt into that sequence's own cache (which may start with a cached prefix's KV); `decode`
advances every row of the KVStore by one token. All return float32 logits for the last position
only (a chunk may ask for every position's, for prompt logprobs). For Llama-family models the pass runs through FusedLlama (same function, fewer ops); otherwise
through `model.forward`. Only decode steps may use the low-bit weight copies.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from app.engine.chores import Slices, run_to_end
from app.engine.fused_llama import FusedLlama
from app.engine.kv_store import KVStore
from app.engine.packed_linear import PackedLinear
from app.engine.slab_cache import SlabLayer, slab_cache, slab_cache_of, spare_buffer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Warming 1..64 rows took 0.4 s for the default model on 2 CPUs, 1..128 about 1 s, 1..256 about 3.5 s;
# 128 rows' kernels (5 per row count here) also leave most of oneDNN's 1024-entry cache to prompt shapes.
MAX_WARM_ROWS = 128


def _cache_kwarg(model: PreTrainedModel) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; accept both generations.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class ModelRunner:
    def __init__(self, model: PreTrainedModel | None, device: torch.device, fused: FusedLlama | None = None) -> None:
        assert model is not None or fused is not None, "a model to run"
        self.model = model  # None when the checkpoint was read straight into `fused`
        self.device = device
        self.fused = fused  # when set, every forward pass runs through it instead of model.forward
        self._cache_kwarg = None if model is None else _cache_kwarg(model)

    def new_cache(self) -> DynamicCache:
        if self.fused is not None:
            return slab_cache_of(self.fused.dims.num_layers)
        return slab_cache(self.model.config)

    @property
    def decodes_exactly(self) -> bool:
        """True when decode steps use the full-precision weights, so their KV equals a prefill's."""
        return self.fused is None or self.fused.decodes_exactly

    def cache_starting_with(self, layers: list[tuple[torch.Tensor, torch.Tensor]], tokens: int,
                            room: int) -> DynamicCache:
        """A new one-row cache holding a copy of the first `tokens` columns of `layers`, with room
        for `room` more columns before it grows."""
        cache = self.new_cache()
        held = []
        for keys, values in layers:
            key_buffer = spare_buffer(keys, 1, tokens + room)
            value_buffer = spare_buffer(values, 1, tokens + room)
            key_buffer[:, :, :tokens] = keys[:, :, :tokens]
            value_buffer[:, :, :tokens] = values[:, :, :tokens]
            held.append(SlabLayer.holding(key_buffer, value_buffer, tokens))
        cache.layers = held
        return cache

    @torch.inference_mode()
    def prefill(self, cache: DynamicCache, token_ids: list[int], start: int,
                every_position: bool = False) -> torch.Tensor:
        """Run `token_ids` (positions start..) into `cache`; return the last position's logits [V],
        or every position's [tokens, V] (for prompt logprobs)."""
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(token_ids), device=self.device).unsqueeze(0)
        logits = self._forward(input_ids, None, positions, cache, last_only=not every_position)
        return logits[0]

    @torch.inference_mode()
    def prefill_batch(self, prompts: list[list[int]]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """Run whole prompts together, left-padded: (their cache, mask [n, width], last logits [n, V])."""
        width = max(len(p) for p in prompts)
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
        input_ids = torch.tensor(last_tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        mask, positions = store.decode_inputs()
        return self._forward(input_ids, mask, positions, store.cache, decoding=True)

    def warm_row_slices(self, max_rows: int) -> Slices:
        """Run each distinct weight matrix once per batch size 1..max_rows, one batch size per slice.

        On CPU oneDNN builds and caches a kernel per (rows, weight) shape, ~0.35 MiB each: made early,
        the server's memory no longer creeps up as traffic hits new batch sizes (and nobody waits for it).
        Up to MAX_WARM_ROWS only: the work grows with the square of the rows.
        """
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
                 cache: DynamicCache, decoding: bool = False, last_only: bool = True) -> torch.Tensor:
        if self.fused is not None:
            return self.fused.forward(input_ids, mask, positions, cache, last_only=last_only, use_copies=decoding)
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
            **{self._cache_kwarg: cache},
        )
        return (output.logits[:, -1, :] if last_only else output.logits).float()
