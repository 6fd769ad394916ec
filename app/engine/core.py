"""EngineCore: one synchronous step of continuous batching, run only on the model thread.

A step decodes every running row by one token in one batched forward, then spends the rest of the
token budget on prompt chunks; a sequence whose prompt completes samples its first token and joins
the batch. Finished and aborted sequences leave the batch at once, freeing their KV rows.

With a prefix cache, an admitted sequence starts from the longest cached prefix of its prompt and
prefills only the rest; every completed prompt is stored, and so is a finished conversation
(prompt + output) for its next turn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from app.engine import sampler
from app.engine.text.grammar import apply_grammars
from app.engine.kv.held_memory import HeldMemory
from app.engine.kv.kv_store import KVStore, cache_bytes, check_plain_cache, row_views, select_rows
from app.engine.kv.slab_cache import LayerCache
from app.engine.models.loader import LoadedModel
from app.engine.kv.prefix_cache import PrefixCache, PrefixCacheConfig, PrefixCacheStats
from app.engine.runner import ModelRunner
from app.engine.sampler import PenaltyState, SamplingTensors
from app.engine.scheduling.scheduler import PrefillChunk, Scheduler, SchedulerConfig, StepPlan, group_by_length
from app.engine.scheduling.sequence import Sequence, SequenceStatus
from app.engine.scheduling.speculation import Drafter
from app.engine.types import TokenLogprob

# Finished normally: its KV row is whole and may be stored (aborted ones never are).
_STORABLE = (SequenceStatus.FINISHED_STOPPED, SequenceStatus.FINISHED_LENGTH, SequenceStatus.FINISHED_TIMEOUT)


def kv_bytes_per_token(loaded: LoadedModel) -> int:
    """KV-cache bytes one token costs across all layers (keys and values)."""
    dims = loaded.dims
    return 2 * dims.num_layers * dims.num_kv_heads * dims.head_dim * loaded.dtype.itemsize


def build_core(loaded: LoadedModel, scheduler: SchedulerConfig,
               prefix_cache: PrefixCacheConfig | None = None, speculation: bool = True) -> EngineCore:
    """The core for a loaded model, its KV cost per token filled in; the one place a core is made.
    prefix_cache None: every prompt is prefilled in full. speculation: prompt-lookup drafts for a
    lone stream, where the forward makes them exact (the native kernels)."""
    runner = ModelRunner(loaded.model, loaded.device, loaded.fused, loaded.native)
    check_plain_cache(runner.new_cache())  # refuse linear/recurrent/chunked-attention caches up front
    config = replace(scheduler, kv_bytes_per_token=kv_bytes_per_token(loaded))
    cache = None if prefix_cache is None else PrefixCache(prefix_cache)
    return EngineCore(runner, config, loaded.dims.vocab_size, cache, speculation and runner.can_verify_drafts)


def _token_logprobs(logprobs: torch.Tensor, chosen: torch.Tensor, k: int) -> list[TokenLogprob]:
    """One TokenLogprob per row of log-probabilities [rows, V]: the chosen token's and the k best."""
    chosen_values, top_values, top_ids = sampler.top_logprobs(logprobs, chosen, k)
    # Alternatives the distribution excluded (truncation, a grammar) could not have been drawn: left out.
    return [TokenLogprob(token_id, value, tuple((i, v) for i, v in zip(ids, values) if v != -math.inf))
            for token_id, value, ids, values in zip(chosen.tolist(), chosen_values.tolist(),
                                                    top_ids.tolist(), top_values.tolist())]


def _trim_top(entry: TokenLogprob, k: int) -> TokenLogprob:
    return entry if len(entry.top) <= k else replace(entry, top=entry.top[:k])


def _ban_early_ends(rows: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
    """-inf for the end tokens of rows still short of min_tokens (first of the sampling stages)."""
    early = [(row, sorted(s.end_token_ids)) for row, s in enumerate(rows) if s.must_not_end]
    if not early:
        return logits
    logits = logits.clone()
    for row, ids in early:
        ids = [i for i in ids if i < logits.shape[-1]]
        logits[row, ids] = -math.inf
    return logits


def _uses_penalties(sequence: Sequence) -> bool:
    p = sequence.params
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


class EngineCore:
    def __init__(self, runner: ModelRunner, scheduler: SchedulerConfig, vocab_size: int,
                 prefix_cache: PrefixCache | None = None, speculation: bool = False) -> None:
        self.runner = runner
        self.prefix_cache = prefix_cache
        self.store = KVStore(runner.device, runner.sliding_windows)
        self.scheduler = Scheduler(scheduler, on_admit=self._admit,
                                   reclaimable=HeldMemory(self.store, prefix_cache))
        self.vocab_size = vocab_size
        self._prefill_caches: dict[Sequence, LayerCache] = {}
        self.speculation = speculation
        self._drafters: dict[Sequence, Drafter] = {}  # per sequence, while it runs
        self.drafted_tokens = self.accepted_drafts = 0  # totals, for tests and benchmarks
        # Called once a forward's tokens are in the sinks (the model thread flushes its outbox), so a
        # step's decode tokens do not wait for the prompts prefilled after them.
        self.on_emitted: Callable[[], None] = lambda: None
        # Whether requests of a tenant holding no decode row wait in the model thread's inbox; see _cuts_short.
        self.arrivals_pending: Callable[[], bool] = lambda: False
        self._cut_short = False

    @property
    def has_work(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def close(self) -> None:
        """Once the model thread has ended: drop the callbacks that tie this core, its scheduler and the
        thread into reference cycles, so a model's memory is freed as soon as its engine is dropped
        (an unloaded model), not at some later run of the cycle collector."""
        self.on_emitted, self.arrivals_pending = (lambda: None), (lambda: False)
        self.scheduler.close()

    @property
    def kv_cache_bytes(self) -> int:
        prefilling = sum(cache_bytes(cache) for cache in self._prefill_caches.values())
        return self.store.num_bytes + prefilling

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats() if self.prefix_cache is None else self.prefix_cache.stats

    def add(self, sequence: Sequence) -> None:
        self.scheduler.add(sequence)

    @torch.inference_mode()
    def abort(self, request_id: str) -> bool:
        """Drop a request's sequences wherever they are and free their KV memory; False if none is here."""
        sequences = self.scheduler.find(request_id)
        for sequence in sequences:
            sequence.abort()
        self._release(sequences)
        return bool(sequences)

    @torch.inference_mode()  # KV buffers are inference tensors, written in place by later steps
    def step(self) -> None:
        self.expire(time.monotonic())
        plan = self.scheduler.schedule()
        # Prompt logprobs need every position's logits: those prompts take the one-sequence path.
        whole = [c.sequence for c in plan.prefill if c.start == 0 and c.is_last
                 and c.sequence.params.prompt_logprobs is None]
        ahead = plan.ahead  # they join the batch before the decode forward and decode in this step too
        self._prefill(whole, [c for c in plan.prefill if c.sequence in ahead])
        if plan.decode:
            self._decode()
            self.on_emitted()
            if self._cuts_short(plan, ahead):
                return
        self._prefill(whole, [c for c in plan.prefill if c.sequence not in ahead])

    def _prefill(self, whole: list[Sequence], chunks: list[PrefillChunk]) -> None:
        """These chunks: partial prompts one by one, then whole prompts grouped by length."""
        for chunk in chunks:
            if chunk.sequence not in whole:
                self._prefill_chunk(chunk)
                self.on_emitted()
        for group in group_by_length([c.sequence for c in chunks if c.sequence in whole]):
            self._prefill_whole(group)
            self.on_emitted()

    def _cuts_short(self, plan: StepPlan, ahead: list[Sequence]) -> bool:
        """With fair share, requests of a tenant holding no row that arrived during the decode forward are
        admitted sooner if the prompts planned after it wait one step; never two steps in a row, so
        those cannot starve."""
        deferrable = any(c.sequence not in ahead for c in plan.prefill)
        self._cut_short = (not self._cut_short and deferrable and self.scheduler.config.fair_share
                           and self.arrivals_pending())
        return self._cut_short

    def expire(self, now: float) -> None:
        """End sequences past their deadline (finish_reason timeout) and free them like finished ones."""
        expired = self.scheduler.expired(now)
        for sequence in expired:
            for waiting in (sequence, *sequence.forks):
                waiting.sink(waiting.expire())
        self._release(expired)

    def _decode(self) -> None:
        rows = self.store.rows
        drafts = self._draft(rows[0]) if len(rows) == 1 else []
        if drafts:
            self._decode_with_drafts(rows[0], drafts)
            return
        logits = self.runner.decode(self.store, [s.output_ids[-1] for s in rows])
        self._sample_and_emit(rows, logits)
        self._release([s for s in rows if s.status.is_finished])

    def _draft(self, sequence: Sequence) -> list[int]:
        """Prompt-lookup drafts for a lone row, where they apply (no grammar: it would need a mask per
        draft position), as many as the sequence's recent luck with drafts pays for."""
        if not self.speculation or sequence.matcher is not None:
            return []
        drafter = self._drafters.setdefault(sequence, Drafter())
        wanted = drafter.wanted(sequence.max_tokens - sequence.num_output_tokens - 1)  # the last needs none
        if not wanted:
            return []
        drafter.extend(sequence.prompt_ids, sequence.output_ids)
        return drafter.propose(wanted)

    def _decode_with_drafts(self, sequence: Sequence, drafts: list[int]) -> None:
        """One pass over the last token and the drafts; each position's token is drawn as a one-token
        step would draw it, and the row keeps the positions up to the first departure."""
        fed = [sequence.output_ids[-1], *drafts]
        logits = self.runner.verify(self.store, fed)
        emitted = 0
        for position in range(len(fed)):
            self._sample_and_emit([sequence], logits[position:position + 1])
            emitted += 1
            if (sequence.status.is_finished or position == len(drafts)
                    or sequence.output_ids[-1] != drafts[position]):
                break
        self.runner.keep(self.store, emitted, len(fed))
        self._drafters[sequence].record(len(drafts), emitted - 1)
        self.drafted_tokens += len(drafts)
        self.accepted_drafts += emitted - 1
        self._release([sequence] if sequence.status.is_finished else [])

    def _admit(self, sequence: Sequence) -> None:
        """As the scheduler admits a sequence: its penalty state, and its cached prefix if any."""
        self._init_penalties(sequence)
        if self.prefix_cache is None or sequence.params.prompt_logprobs is not None:
            return
        entry, reused = self.prefix_cache.lookup(sequence.prompt_ids)
        if entry is None:
            return
        remaining = sequence.num_prompt_tokens - reused
        self._prefill_caches[sequence] = self.runner.cache_starting_with(entry.layers, reused, remaining,
                                                                         entry.num_tokens)
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
        wants_logprobs = sequence.params.prompt_logprobs is not None
        logits = self.runner.prefill(cache, sequence.prompt_ids[chunk.start:chunk.end], chunk.start,
                                     every_position=wants_logprobs)
        if wants_logprobs:
            self._note_prompt_logprobs(sequence, chunk.start, logits)
            logits = logits[-1]
        sequence.num_prefilled = chunk.end
        if chunk.is_last:
            del self._prefill_caches[sequence]
            mask = torch.ones((1, sequence.num_prompt_tokens), dtype=torch.long, device=self.runner.device)
            self._start_rows([sequence], cache, mask, logits.unsqueeze(0))

    def _note_prompt_logprobs(self, sequence: Sequence, start: int, logits: torch.Tensor) -> None:
        """Raw log-probabilities of the prompt tokens this chunk's logits [tokens, V] predict."""
        if sequence.prompt_logprobs is None:
            sequence.prompt_logprobs = [None]  # nothing predicts the first token
        targets = sequence.prompt_ids[start + 1:start + 1 + logits.shape[0]]
        if targets:
            logprobs = torch.log_softmax(logits[:len(targets)].float(), dim=-1)
            chosen = torch.tensor(targets, dtype=torch.long, device=logprobs.device)
            sequence.prompt_logprobs.extend(
                _token_logprobs(logprobs, chosen, sequence.params.prompt_logprobs or 0))

    def _start_rows(self, group: list[Sequence], cache: LayerCache, mask: torch.Tensor,
                    logits: torch.Tensor) -> None:
        """Store the prompts' KV, fork rows for n > 1, sample each first token; those not finished
        join the decode batch."""
        self._store_prompts(group, cache)
        if any(s.forks for s in group):
            group, mask, logits = self._fork(group, cache, mask, logits)
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

    def _fork(self, group: list[Sequence], cache: LayerCache, mask: torch.Tensor,
              logits: torch.Tensor) -> tuple[list[Sequence], torch.Tensor, torch.Tensor]:
        """Copy each prefilled row once per waiting fork: the prompt is computed once for all n."""
        rows = [row for row, s in enumerate(group) for _ in range(s.num_rows)]
        expanded = [member for s in group for member in (s, *s.forks)]
        for s in group:
            for fork in s.forks:
                fork.num_prefilled, fork.num_cached_tokens = s.num_prefilled, s.num_cached_tokens
                fork.scheduled_at = s.scheduled_at
                self._init_penalties(fork)
            s.forks = []
        index = select_rows(cache, rows)
        return expanded, mask.index_select(0, index), logits.index_select(0, index)

    def _store_prompts(self, group: list[Sequence], cache: LayerCache) -> None:
        """Copy each whole prompt's KV (the right-aligned columns of its row) into the prefix cache."""
        if self.prefix_cache is None:
            return
        for row, sequence in enumerate(group):
            layers = row_views(cache, row, sequence.num_prompt_tokens)
            self._insert_prefix(sequence.prompt_ids, layers)

    def _store_conversation(self, sequence: Sequence) -> None:
        """A finished row's prompt + output (all but the last token, which was never fed) for the next turn."""
        if self.prefix_cache is None or sequence.status not in _STORABLE:
            return
        token_ids = sequence.prompt_ids + sequence.output_ids[:-1]
        layers = self.store.row_kv(sequence)
        windows = self.store.windows or [None] * len(layers)  # a sliding layer may hold only its last columns
        assert all(keys.shape[-2] == len(token_ids) or (window and keys.shape[-2] < len(token_ids))
                   for (keys, _), window in zip(layers, windows)), "a row's KV covers its prompt and fed outputs"
        self._insert_prefix(token_ids, layers)

    def _insert_prefix(self, token_ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        first = self.store.first_reusable(layers, len(token_ids))
        self.prefix_cache.insert(token_ids, layers, self._room_for_prefixes(), first_reusable=first)

    def _room_for_prefixes(self) -> int:
        """KV budget neither reserved by admitted sequences nor held by rows kept for joiners."""
        return max(self.scheduler.free_bytes() - self.store.parked_bytes, 0)

    def _sample_and_emit(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        logits = _ban_early_ends(rows, logits)
        if all(s.params.is_plain_greedy and s.matcher is None for s in rows):
            # The common case, without building the stages' tensors: the same argmax sampler.sample takes.
            for sequence, token_id in zip(rows, logits.argmax(dim=-1).tolist()):
                sequence.sink(sequence.append_token(token_id, None))
            return
        tensors = SamplingTensors.from_params([s.params for s in rows], logits.shape[-1], logits.device)
        seen, counts = self._stack_penalties(rows, tensors, logits.shape[-1])
        logits = sampler.apply_penalties(logits, tensors, seen_mask=seen, output_counts=counts)
        if any(s.matcher is not None for s in rows):
            logits = apply_grammars([s.matcher for s in rows], logits)
        generators = [s.generator for s in rows]
        wanted = [s.params.logprobs for s in rows]
        if all(k is None for k in wanted):
            chosen = sampler.sample(logits, tensors, generators)
            logprobs: list[TokenLogprob | None] = [None] * len(rows)
        else:  # the distribution the tokens are drawn from is what their logprobs describe
            drawn_from = sampler.distribution(logits, tensors)
            chosen = sampler.draw(drawn_from, tensors, generators)
            every = _token_logprobs(torch.log_softmax(drawn_from, dim=-1), chosen, max(k or 0 for k in wanted))
            logprobs = [None if k is None else _trim_top(entry, k) for entry, k in zip(every, wanted)]
        for sequence, token_id, logprob in zip(rows, chosen.tolist(), logprobs):
            sequence.sink(sequence.append_token(token_id, logprob))

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
            self._drafters.pop(sequence, None)
            self.scheduler.remove(sequence)
