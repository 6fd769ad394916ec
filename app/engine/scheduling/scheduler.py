"""Continuous-batching bookkeeping: who waits, who prefills, who decodes. No torch calls here.

Each step spends a token budget: one token per running row, the rest on prompt chunks of the
oldest admitted sequences; while rows decode, long prompts advance by small chunks only, because a
big prefill forward delays the next token of every running stream. Admission reserves KV memory for
a row's worst case (prompt + max_tokens, padded to the longest row), so a running batch never
outgrows the budget. Cached prefixes count against the same budget; they are reclaimed before a
request would wait for memory.

Waiting sequences are admitted in FairQueue's order (priority, then the tenant that used the fewest
tokens per weight lately); a tenant below its weighted share of the rows may be admitted past a full
batch by a few rows (`headroom_rows`), so it never waits for someone else's streams to end. Running
rows are never cut off for fairness.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable, Protocol

from app.engine.errors import Overloaded
from app.engine.scheduling.fair_queue import FairQueue, may_exceed, share_of, weights_of
from app.engine.scheduling.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_running: int = 64
    max_waiting: int = 256
    max_batched_tokens: int = 512  # per step: decode rows + prompt tokens of prefill chunks
    # Prompt tokens per step while rows decode: a prefill forward stalls every running stream.
    max_prefill_tokens_while_decoding: int = 48
    kv_budget_bytes: int = 8 << 30
    kv_bytes_per_token: int = 0  # all layers, keys and values; 0 disables the memory check
    fair_share: bool = True  # False: first in, first out, whoever sent it

    @property
    def headroom_rows(self) -> int:
        """Rows a tenant below its share may take past max_running (and places past max_waiting)."""
        return max(self.max_running // 8, 1) if self.fair_share else 0


@dataclass(frozen=True)
class PrefillChunk:
    sequence: Sequence
    start: int
    end: int

    @property
    def is_last(self) -> bool:
        return self.end == self.sequence.num_prompt_tokens


@dataclass
class StepPlan:
    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    # Prompts of tenants below their share of a batch others hold that complete in this step (whole, or
    # the rest after a cached prefix): prefilled before the decode forward, so a newcomer's first token
    # waits for one short forward, not for everyone's next token.
    ahead: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.decode


def group_by_length(sequences: list[Sequence], max_padding: float = 0.25) -> list[list[Sequence]]:
    """Split whole-prompt prefills into groups run as one padded forward each.

    Sorted by prompt length; a group grows while its padding stays within `max_padding` of its real
    tokens, so one long prompt does not make many short ones compute padding.
    """
    groups: list[list[Sequence]] = []
    real = 0
    for sequence in sorted(sequences, key=lambda s: s.num_prompt_tokens):
        length = sequence.num_prompt_tokens
        if groups and (len(groups[-1]) + 1) * length <= (1 + max_padding) * (real + length):
            groups[-1].append(sequence)
            real += length
        else:
            groups.append([sequence])
            real = length
    return groups


def num_rows(sequences: list[Sequence]) -> int:
    """Decode rows these sequences hold or will hold (a sequence with n - 1 forks waiting counts n)."""
    return sum(s.num_rows for s in sequences)


def tenant_rows(sequences: list[Sequence], tenant: str) -> int:
    """Rows that `tenant`'s sequences among these hold or will hold."""
    return num_rows([s for s in sequences if s.share.tenant == tenant])


class ReclaimableMemory(Protocol):
    """Memory inside the KV budget that can be given back on demand (app/engine/kv/held_memory.py: rows
    kept for joiners, the prefix cache)."""

    @property
    def num_bytes(self) -> int: ...

    def release(self, nbytes: int, sparing: list[int] | None = None) -> int: ...


class Scheduler:
    def __init__(self, config: SchedulerConfig, on_admit: Callable[[Sequence], None] | None = None,
                 reclaimable: ReclaimableMemory | None = None) -> None:
        self.config = config
        self.waiting = FairQueue(config.fair_share)
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []  # decoding; the KVStore knows their rows
        # Called as a sequence is admitted, before its first chunk is planned: it may skip a cached prefix.
        self._on_admit = on_admit
        self._reclaimable = reclaimable

    def close(self) -> None:
        """Forget the admission callback (it refers back to the core that owns this scheduler)."""
        self._on_admit = None

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)

    @property
    def admitted(self) -> list[Sequence]:
        return self.prefilling + self.running

    def add(self, sequence: Sequence) -> None:
        # Requests arrive faster than steps admit them: count every unfinished row, as generate() does.
        capacity = self.config.max_running + self.config.max_waiting
        unfinished = [*self.waiting, *self.prefilling, *self.running]
        held = tenant_rows(unfinished, sequence.share.tenant)
        if not may_exceed(sequence.share, held, sequence.num_rows, weights_of(unfinished), capacity,
                          num_rows(unfinished), self.config.headroom_rows):
            raise Overloaded(f"the engine is full ({capacity} rows running or waiting)")
        self.waiting.append(sequence)

    def reserved_bytes(self, rows: list[Sequence]) -> int:
        """Worst-case KV bytes of a padded batch holding `rows` (and the forks that will join with them)."""
        if not rows:
            return 0
        longest = max(s.num_prompt_tokens + s.max_tokens for s in rows)
        return num_rows(rows) * longest * self.config.kv_bytes_per_token

    def fits_alone(self, sequence: Sequence) -> bool:
        return self.reserved_bytes([sequence]) <= self.config.kv_budget_bytes

    def fits_rows(self, sequence: Sequence) -> bool:
        return sequence.num_rows <= self.config.max_running

    def can_admit(self, sequence: Sequence) -> bool:
        return self._fits_rows_now(sequence) and self._fits_memory(sequence)

    def _fits_memory(self, sequence: Sequence) -> bool:
        """Its worst case fits the KV budget beside the admitted ones (cached prefixes give way first)."""
        needed = self.reserved_bytes(self.admitted + [sequence])
        budget = self.config.kv_budget_bytes
        if needed > budget:
            return False
        held = self._reclaimable.num_bytes if self._reclaimable is not None else 0
        if needed + held > budget:  # cached prefixes give way before anyone waits for memory
            assert self._reclaimable is not None
            self._reclaimable.release(needed + held - budget, sparing=sequence.prompt_ids)
        return True

    def _fits_rows_now(self, sequence: Sequence) -> bool:
        """Within max_running, or a little past it for a tenant below its share of the rows."""
        admitted = self.admitted
        held = tenant_rows(admitted, sequence.share.tenant)
        weights = {**weights_of(admitted), **self.waiting.weights()}
        return may_exceed(sequence.share, held, sequence.num_rows, weights, self.config.max_running,
                          num_rows(admitted), self.config.headroom_rows)

    def free_bytes(self) -> int:
        """Budget not reserved by admitted sequences (what cached prefixes may use)."""
        return max(self.config.kv_budget_bytes - self.reserved_bytes(self.admitted), 0)

    def schedule(self) -> StepPlan:
        plan = StepPlan(decode=list(self.running))
        budget = self.config.max_batched_tokens - len(plan.decode)
        # While rows decode, long prompts advance by small chunks: a big prefill forward would
        # freeze every running stream. Short prompts still go whole, so bursts start quickly.
        long_budget = self.config.max_prefill_tokens_while_decoding if plan.decode else budget
        for sequence in self._prefill_candidates():
            # At least one prompt chunk per step, so a full decode batch cannot starve prefill.
            if budget <= 0 and plan.prefill:
                break
            remaining = sequence.num_prompt_tokens - sequence.num_prefilled
            is_long = remaining > self.config.max_prefill_tokens_while_decoding
            if is_long and long_budget <= 0:
                continue
            size = min(max(min(budget, long_budget) if is_long else budget, 1), remaining)
            plan.prefill.append(PrefillChunk(sequence, sequence.num_prefilled, sequence.num_prefilled + size))
            budget -= size
            long_budget -= size if is_long else 0
        self._charge(plan)
        plan.ahead = [c.sequence for c in plan.prefill if c.is_last and self._jumps_decode(c.sequence)]
        return plan

    def _jumps_decode(self, sequence: Sequence) -> bool:
        """A newcomer's prompt goes before the decode forward when other tenants hold the batch and its
        tenant holds less than its share of the rows."""
        if not self.config.fair_share or not self.running:
            return False
        tenant = sequence.share.tenant
        if all(s.share.tenant == tenant for s in self.running):
            return False
        held = tenant_rows(self.admitted, tenant) - sequence.num_rows
        return held < share_of(tenant, weights_of(self.admitted), self.config.max_running)

    def _charge(self, plan: StepPlan) -> None:
        """Each tenant's decode rows in this step, for the queue's order (prompts are charged on admission)."""
        self.waiting.usage.charge(Counter(s.share.tenant for s in plan.decode))

    def _prefill_candidates(self) -> Iterator[Sequence]:
        """Sequences already prefilling, then waiting ones admitted one at a time as they are taken."""
        yield from list(self.prefilling)
        passed: set[str] = set()  # tenants at their share of a full batch: the next tenant may still fit
        while (sequence := self.waiting.peek(passed)) is not None:
            if not self._fits_rows_now(sequence):
                if not self.config.fair_share:
                    break  # first in, first out: nobody passes the head
                passed.add(sequence.share.tenant)
                continue
            if not self._fits_memory(sequence):
                break  # KV memory: the head waits, nobody passes it (a big request would starve)
            self.waiting.pop(sequence)
            sequence.status = SequenceStatus.PREFILLING
            sequence.scheduled_at = time.monotonic()
            self.prefilling.append(sequence)
            if self._on_admit is not None:
                self._on_admit(sequence)
            # The prompt's cost, once (a cached prefix is free); a step cut short must not charge it twice.
            self.waiting.usage.charge({sequence.share.tenant: sequence.num_prompt_tokens - sequence.num_prefilled})
            yield sequence

    def start_running(self, sequence: Sequence) -> None:
        """A fully prefilled sequence (or a fork of one) becomes the last row of the decode batch."""
        if sequence in self.prefilling:
            self.prefilling.remove(sequence)
        sequence.status = SequenceStatus.RUNNING
        self.running.append(sequence)

    def remove(self, sequence: Sequence) -> None:
        """Forget a finished or aborted sequence wherever it is."""
        for queue in (self.running, self.prefilling):
            if sequence in queue:
                queue.remove(sequence)
                return
        self.waiting.remove(sequence)

    def expired(self, now: float) -> list[Sequence]:
        """Unfinished sequences whose deadline has passed, wherever they are."""
        return [s for s in (*self.waiting, *self.prefilling, *self.running) if s.is_expired(now)]

    def find(self, request_id: str) -> list[Sequence]:
        """Every unfinished sequence of a request (n > 1 has several once its forks run)."""
        return [s for s in (*self.waiting, *self.prefilling, *self.running) if s.request_id == request_id]
