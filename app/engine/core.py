"""EngineCore: one synchronous step of continuous batching, run only on the model thread.

A step decodes every running row by one token in one batched forward, then spends the rest of the
token budget on prompt chunks; a sequence whose prompt completes samples its first token and joins
the batch. Finished and aborted sequences leave the batch at once, freeing their KV rows.

With a prefix cache, an admitted sequence starts from the longest cached prefix of its prompt and
prefills only the rest; every completed prompt is stored, and so is a finished conversation
(prompt + output) when decoding runs on full-precision weights (its KV then equals a prefill's).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from transformers import DynamicCache

from app.engine import sampler
from app.engine.kv_store import KVStore, check_plain_cache, layer_bytes, select_rows
from app.engine.loader import LoadedModel
from app.engine.prefix_cache import PrefixCache, PrefixCacheConfig, PrefixCacheStats
from app.engine.runner import ModelRunner
from app.engine.sampler import PenaltyState, SamplingTensors
from app.engine.scheduler import PrefillChunk, Scheduler, SchedulerConfig, group_by_length
from app.engine.sequence import Sequence, SequenceStatus

# Finished normally: its KV row is whole and may be stored (aborted ones never are).
_STORABLE = (SequenceStatus.FINISHED_STOPPED, SequenceStatus.FINISHED_LENGTH, SequenceStatus.FINISHED_TIMEOUT)


def kv_bytes_per_token(loaded: LoadedModel) -> int:
    """KV-cache bytes one token costs across all layers (keys and values)."""
    cfg = loaded.model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * heads * head_dim * loaded.dtype.itemsize


def build_core(loaded: LoadedModel, scheduler: SchedulerConfig,
               prefix_cache: PrefixCacheConfig | None = None) -> EngineCore:
    """The core for a loaded model, its KV cost per token filled in; the one place a core is made.
    prefix_cache None: every prompt is prefilled in full."""
    runner = ModelRunner(loaded.model, loaded.device, loaded.fused)
    check_plain_cache(runner.new_cache())  # refuse sliding/linear-attention models up front
    config = replace(scheduler, kv_bytes_per_token=kv_bytes_per_token(loaded))
    cache = None if prefix_cache is None else PrefixCache(prefix_cache)
    return EngineCore(runner, config, int(loaded.model.config.get_text_config().vocab_size), cache)


def _uses_penalties(sequence: Sequence) -> bool:
    p = sequence.params
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


class EngineCore:
    def __init__(self, runner: ModelRunner, scheduler: SchedulerConfig, vocab_size: int,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.runner = runner
        self.prefix_cache = prefix_cache
        self.scheduler = Scheduler(scheduler, on_admit=self._admit, reclaimable=prefix_cache)
        self.vocab_size = vocab_size
        self.store = KVStore(runner.device)
        self._prefill_caches: dict[Sequence, DynamicCache] = {}
        # Fixed at load: finished conversations are stored only when decode runs at full precision.
        self._stores_conversations = prefix_cache is not None and runner.decodes_exactly

    @property
    def has_work(self) -> bool:
        return self.scheduler.num_unfinished > 0

    @property
    def kv_cache_bytes(self) -> int:
        prefilling = sum(layer_bytes(layer) for cache in self._prefill_caches.values() for layer in cache.layers)
        return self.store.num_bytes + prefilling

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats() if self.prefix_cache is None else self.prefix_cache.stats

    def add(self, sequence: Sequence) -> None:
        self.scheduler.add(sequence)

    def abort(self, request_id: str) -> bool:
        """Drop a sequence wherever it is and free its KV memory; False if it is not here."""
        sequence = self.scheduler.find(request_id)
        if sequence is None:
            return False
        sequence.abort()
        self._release([sequence])
        return True

    def step(self) -> None:
        self.expire(time.monotonic())
        plan = self.scheduler.schedule()
        if plan.decode:
            self._decode()
        whole = [c.sequence for c in plan.prefill if c.start == 0 and c.is_last]
        for chunk in plan.prefill:
            if chunk.sequence not in whole:
                self._prefill_chunk(chunk)
        for group in group_by_length(whole):
            self._prefill_whole(group)

    def expire(self, now: float) -> None:
        """End sequences past their deadline (finish_reason timeout) and free them like finished ones."""
        expired = self.scheduler.expired(now)
        for sequence in expired:
            sequence.sink(sequence.expire())
        self._release(expired)

    def _decode(self) -> None:
        rows = self.store.rows
        logits = self.runner.decode(self.store, [s.output_ids[-1] for s in rows])
        self._sample_and_emit(rows, logits)
        self._release([s for s in rows if s.status.is_finished])

    def _admit(self, sequence: Sequence) -> None:
        """As the scheduler admits a sequence: its penalty state, and its cached prefix if any."""
        self._init_penalties(sequence)
        if self.prefix_cache is None:
            return
        entry, reused = self.prefix_cache.lookup(sequence.prompt_ids)
        if entry is None:
            return
        remaining = sequence.num_prompt_tokens - reused
        self._prefill_caches[sequence] = self.runner.cache_starting_with(entry.layers, reused, remaining)
        sequence.num_prefilled = sequence.num_cached_tokens = reused

    def _prefill_whole(self, group: list[Sequence]) -> None:
        """Short prompts that fit this step: one padded forward for the whole group."""
        for sequence in group:
            sequence.num_prefilled = sequence.num_prompt_tokens
        cache, mask, logits = self.runner.prefill_batch([s.prompt_ids for s in group])
        self._start_rows(group, cache, mask, logits)

    def _prefill_chunk(self, chunk: PrefillChunk) -> None:
        """Part of a long prompt into the sequence's own cache; it joins the batch after its last chunk."""
        sequence = chunk.sequence
        cache = self._prefill_caches.get(sequence)
        if cache is None:
            cache = self._prefill_caches[sequence] = self.runner.new_cache()
        logits = self.runner.prefill(cache, sequence.prompt_ids[chunk.start:chunk.end], chunk.start)
        sequence.num_prefilled = chunk.end
        if chunk.is_last:
            del self._prefill_caches[sequence]
            mask = torch.ones((1, sequence.num_prompt_tokens), dtype=torch.long, device=self.runner.device)
            self._start_rows([sequence], cache, mask, logits.unsqueeze(0))

    def _start_rows(self, group: list[Sequence], cache: DynamicCache, mask: torch.Tensor,
                    logits: torch.Tensor) -> None:
        """Store the prompts' KV, sample each first token; those not finished join the decode batch."""
        self._store_prompts(group, cache, mask.shape[1])
        self._sample_and_emit(group, logits)
        keep = [row for row, s in enumerate(group) if not s.status.is_finished]
        self._release([s for s in group if s.status.is_finished])
        if not keep:
            return
        if len(keep) < len(group):
            mask = mask.index_select(0, select_rows(cache, keep))
        self.store.join([group[row] for row in keep], cache, mask)
        for row in keep:
            self.scheduler.start_running(group[row])

    def _store_prompts(self, group: list[Sequence], cache: DynamicCache, columns: int) -> None:
        """Copy each whole prompt's KV (the right-aligned columns of its row) into the prefix cache."""
        if self.prefix_cache is None:
            return
        for row, sequence in enumerate(group):
            start = columns - sequence.num_prompt_tokens
            layers = [(layer.keys[row:row + 1, :, start:], layer.values[row:row + 1, :, start:])
                      for layer in cache.layers]
            self.prefix_cache.insert(sequence.prompt_ids, layers, self.scheduler.free_bytes())

    def _store_conversation(self, sequence: Sequence) -> None:
        """A finished row's prompt + output (all but the last token, which was never fed) for the next turn."""
        if not self._stores_conversations or sequence.status not in _STORABLE:
            return
        assert self.prefix_cache is not None
        token_ids = sequence.prompt_ids + sequence.output_ids[:-1]
        layers = self.store.row_kv(sequence)
        assert layers[0][0].shape[-2] == len(token_ids), "a row's KV covers its prompt and fed outputs"
        self.prefix_cache.insert(token_ids, layers, self.scheduler.free_bytes())

    def _sample_and_emit(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        tensors = SamplingTensors.from_params([s.params for s in rows], logits.shape[-1], logits.device)
        seen, counts = self._stack_penalties(rows, tensors, logits.shape[-1])
        logits = sampler.apply_penalties(logits, tensors, seen_mask=seen, output_counts=counts)
        token_ids = sampler.sample(logits, tensors, [s.generator for s in rows]).tolist()
        for sequence, token_id in zip(rows, token_ids):
            sequence.sink(sequence.append_token(token_id))

    def _stack_penalties(self, rows: list[Sequence], tensors: SamplingTensors,
                         vocab: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not (tensors.needs_repetition or tensors.needs_presence_frequency):
            return None, None
        empty = PenaltyState((), vocab, self.runner.device)
        return PenaltyState.stack([s.penalties or empty for s in rows])

    def _init_penalties(self, sequence: Sequence) -> None:
        if _uses_penalties(sequence):
            sequence.penalties = PenaltyState(sequence.prompt_ids, self.vocab_size, self.runner.device)

    def _release(self, finished: list[Sequence]) -> None:
        """Remove finished sequences from the scheduler, their batch rows and prefill caches."""
        if not finished:
            return
        leaving = [s for s in finished if s in self.store]
        for sequence in leaving:
            self._store_conversation(sequence)
        self.store.remove(leaving)
        for sequence in finished:
            self._prefill_caches.pop(sequence, None)
            self.scheduler.remove(sequence)
