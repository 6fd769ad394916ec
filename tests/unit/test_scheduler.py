"""Scheduler bookkeeping with made-up sequences: budgets, admission, order. No model."""

from __future__ import annotations

import pytest

from app.engine.errors import Overloaded
from app.engine.scheduling.scheduler import Scheduler, SchedulerConfig, group_by_length
from app.engine.scheduling.sequence import Sequence, SequenceStatus
from app.engine.types import SamplingParams


class _NoText:
    def step(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


def _seq(name: str, prompt_len: int, max_tokens: int = 10) -> Sequence:
    return Sequence(name, list(range(prompt_len)), SamplingParams(max_tokens=max_tokens),
                    frozenset(), _NoText(), None, lambda event: None)


def test_prompt_chunks_share_the_budget_left_by_decode_rows():
    sched = Scheduler(SchedulerConfig(max_batched_tokens=100, max_prefill_tokens_while_decoding=1000))
    running = [_seq(f"r{i}", 5) for i in range(3)]
    for s in running:
        sched.add(s)
    plan = sched.schedule()
    assert [(c.sequence.request_id, c.start, c.end) for c in plan.prefill] == [
        ("r0", 0, 5), ("r1", 0, 5), ("r2", 0, 5)]
    for chunk in plan.prefill:
        chunk.sequence.num_prefilled = chunk.end
        sched.start_running(chunk.sequence)
    long = _seq("long", 300)
    sched.add(long)
    plan = sched.schedule()
    assert plan.decode == running
    assert [(c.start, c.end) for c in plan.prefill] == [(0, 97)]
    long.num_prefilled = 97
    plan = sched.schedule()
    assert [(c.start, c.end, c.is_last) for c in plan.prefill] == [(97, 194, False)]


def test_a_full_decode_batch_still_advances_prefill_by_a_token():
    sched = Scheduler(SchedulerConfig(max_batched_tokens=16, max_running=64))
    for i in range(16):
        s = _seq(f"r{i}", 1)
        sched.add(s)
        plan = sched.schedule()
        s.num_prefilled = 1
        sched.start_running(s)
    sched.add(_seq("late", 8))
    plan = sched.schedule()
    assert len(plan.decode) == 16 and [(c.start, c.end) for c in plan.prefill] == [(0, 1)]


def test_admission_respects_max_running_and_kv_budget():
    sched = Scheduler(SchedulerConfig(max_running=2, kv_budget_bytes=1000, kv_bytes_per_token=10))
    a, b, c = _seq("a", 20, 20), _seq("b", 20, 20), _seq("c", 5, 5)
    for s in (a, b, c):
        sched.add(s)
    sched.schedule()
    # a alone reserves 40 tokens * 10 B = 400; a + b reserve 2 * 40 * 10 = 800; c would make 1200.
    assert sched.admitted == [a, b] and list(sched.waiting) == [c]
    assert a.status is SequenceStatus.PREFILLING
    assert not sched.fits_alone(_seq("huge", 90, 20))


def test_waiting_queue_is_bounded_and_abort_finds_everywhere():
    sched = Scheduler(SchedulerConfig(max_running=1, max_waiting=1))
    sched.add(_seq("a", 3))
    sched.add(_seq("b", 3))  # a burst may queue up to running + waiting before any step admits
    with pytest.raises(Overloaded):
        sched.add(_seq("c", 3))
    [b] = sched.find("b")
    sched.remove(b)
    assert sched.find("b") == [] and sched.num_unfinished == 1


def test_whole_prompts_group_by_length_with_bounded_padding():
    lengths = [20, 3, 21, 200, 19, 4, 190]
    groups = group_by_length([_seq(f"s{n}", n) for n in lengths])
    assert [[s.num_prompt_tokens for s in g] for g in groups] == [[3, 4], [19, 20, 21], [190, 200]]


def test_prompt_tokens_are_capped_while_rows_decode_but_not_when_idle():
    sched = Scheduler(SchedulerConfig(max_batched_tokens=512, max_prefill_tokens_while_decoding=64))
    first = _seq("first", 300)
    sched.add(first)
    assert [(c.start, c.end) for c in sched.schedule().prefill] == [(0, 300)]  # nothing decodes yet
    first.num_prefilled = 300
    sched.start_running(first)
    sched.add(_seq("second", 300))
    plan = sched.schedule()
    assert plan.decode == [first] and [(c.start, c.end) for c in plan.prefill] == [(0, 64)]


def test_short_prompts_go_whole_while_long_ones_are_chunked_next_to_decoding_rows():
    sched = Scheduler(SchedulerConfig(max_batched_tokens=512, max_prefill_tokens_while_decoding=64))
    running = _seq("running", 4)
    sched.add(running)
    sched.schedule()
    running.num_prefilled = 4
    sched.start_running(running)
    for name, length in (("long-a", 300), ("short-a", 60), ("long-b", 300), ("short-b", 50)):
        sched.add(_seq(name, length))
    plan = sched.schedule()
    assert [(c.sequence.request_id, c.end) for c in plan.prefill] == [
        ("long-a", 64), ("short-a", 60), ("short-b", 50)]  # long-b waits: the long budget is spent
