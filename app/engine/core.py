"""EngineCore: one synchronous step of continuous batching, run only on the model thread.

A step decodes every running row by one token in one batched forward, then spends the rest of the
token budget on prompt chunks; a sequence whose prompt completes samples its first token and joins
the batch. Finished and aborted sequences leave the batch at once, freeing their KV rows.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from transformers import DynamicCache

from app.engine import sampler
from app.engine.kv_batch import KVBatch, check_plain_cache, layer_bytes, select_rows
from app.engine.loader import LoadedModel
from app.engine.runner import ModelRunner
from app.engine.sampler import PenaltyState, SamplingTensors
from app.engine.scheduler import PrefillChunk, Scheduler, SchedulerConfig, group_by_length
from app.engine.sequence import Sequence


def kv_bytes_per_token(loaded: LoadedModel) -> int:
    """KV-cache bytes one token costs across all layers (keys and values)."""
    cfg = loaded.model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * heads * head_dim * loaded.dtype.itemsize


def build_core(loaded: LoadedModel, scheduler: SchedulerConfig) -> EngineCore:
    """The core for a loaded model, its KV cost per token filled in; the one place a core is made."""
    runner = ModelRunner(loaded.model, loaded.device, loaded.fused)
    check_plain_cache(runner.new_cache())  # refuse sliding/linear-attention models up front
    config = replace(scheduler, kv_bytes_per_token=kv_bytes_per_token(loaded))
    return EngineCore(runner, Scheduler(config), int(loaded.model.config.get_text_config().vocab_size))


def _uses_penalties(sequence: Sequence) -> bool:
    p = sequence.params
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


class EngineCore:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, vocab_size: int) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.vocab_size = vocab_size
        self.batch = KVBatch(runner.device)
        self._prefill_caches: dict[Sequence, DynamicCache] = {}

    @property
    def has_work(self) -> bool:
        return self.scheduler.num_unfinished > 0

    @property
    def kv_cache_bytes(self) -> int:
        prefilling = sum(layer_bytes(layer) for cache in self._prefill_caches.values() for layer in cache.layers)
        return self.batch.num_bytes + prefilling

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
            self._decode(plan.decode)
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

    def _decode(self, rows: list[Sequence]) -> None:
        logits = self.runner.decode(self.batch, [s.output_ids[-1] for s in rows])
        self._sample_and_emit(rows, logits)
        self._release([s for s in rows if s.status.is_finished])

    def _prefill_whole(self, group: list[Sequence]) -> None:
        """Short prompts that fit this step: one padded forward for the whole group."""
        for sequence in group:
            self._init_penalties(sequence)
            sequence.num_prefilled = sequence.num_prompt_tokens
        cache, mask, logits = self.runner.prefill_batch([s.prompt_ids for s in group])
        self._start_rows(group, cache, mask, logits)

    def _prefill_chunk(self, chunk: PrefillChunk) -> None:
        """Part of a long prompt into the sequence's own cache; it joins the batch after its last chunk."""
        sequence = chunk.sequence
        cache = self._prefill_caches.get(sequence)
        if cache is None:
            cache = self._prefill_caches[sequence] = self.runner.new_cache()
            self._init_penalties(sequence)
        logits = self.runner.prefill(cache, sequence.prompt_ids[chunk.start:chunk.end], chunk.start)
        sequence.num_prefilled = chunk.end
        if chunk.is_last:
            del self._prefill_caches[sequence]
            mask = torch.ones((1, sequence.num_prompt_tokens), dtype=torch.long, device=self.runner.device)
            self._start_rows([sequence], cache, mask, logits.unsqueeze(0))

    def _start_rows(self, group: list[Sequence], cache: DynamicCache, mask: torch.Tensor,
                    logits: torch.Tensor) -> None:
        """Sample each prefilled sequence's first token; those not finished join the decode batch."""
        self._sample_and_emit(group, logits)
        keep = [row for row, s in enumerate(group) if not s.status.is_finished]
        self._release([s for s in group if s.status.is_finished])
        if not keep:
            return
        if len(keep) < len(group):
            mask = mask.index_select(0, select_rows(cache, keep))
        self.batch.join(cache, mask)
        for row in keep:
            self.scheduler.start_running(group[row])

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
        gone = set(finished)
        running = self.scheduler.running
        if any(s in gone for s in running):
            self.batch.keep([row for row, s in enumerate(running) if s not in gone])
        for sequence in finished:
            self._prefill_caches.pop(sequence, None)
            self.scheduler.remove(sequence)
