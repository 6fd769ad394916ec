"""Sharing the engine between tenants: the fair queue's order, capacity shares, and the scheduler's
admission with them. Made-up sequences, no model."""

from __future__ import annotations

import pytest

from app.engine.errors import Overloaded
from app.engine.scheduling.fair_queue import FairQueue, TenantUsage, may_exceed, share_of
from app.engine.scheduling.scheduler import Scheduler, SchedulerConfig
from app.engine.scheduling.sequence import Sequence, SequenceStatus
from app.engine.types import Priority, SamplingParams, Share

BATCH_JOB = Share("batch-job", 1.0)
CHAT = Share("chat", 1.0)


class _NoText:
    def step(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


def _seq(name: str, share: Share, prompt_len: int = 4, max_tokens: int = 10) -> Sequence:
    sequence = Sequence(name, list(range(prompt_len)), SamplingParams(max_tokens=max_tokens),
                        frozenset(), _NoText(), None, lambda event: None)
    sequence.share = share
    return sequence


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _drain(queue: FairQueue) -> list[str]:
    order = []
    while (head := queue.peek()) is not None:
        queue.pop(head)
        order.append(head.request_id)
    return order


def test_without_fair_share_the_queue_is_first_in_first_out_across_tenants():
    queue = FairQueue(fair=False)
    queue.usage.charge({"batch-job": 10_000})
    for name, share in [("a1", BATCH_JOB), ("c1", CHAT), ("a2", BATCH_JOB), ("c2", Share("chat", 5.0, Priority.INTERACTIVE))]:
        queue.append(_seq(name, share))
    assert _drain(queue) == ["a1", "c1", "a2", "c2"]


def test_the_tenant_that_used_fewer_tokens_goes_first_and_each_tenant_keeps_its_order():
    queue = FairQueue()
    queue.usage.charge({"batch-job": 5000, "chat": 10})
    for name, share in [("a1", BATCH_JOB), ("a2", BATCH_JOB), ("c1", CHAT), ("c2", CHAT)]:
        queue.append(_seq(name, share))
    first = queue.peek()
    assert first is not None and first.request_id == "c1"
    queue.pop(first)
    queue.usage.charge({"chat": 6000})  # chat has now used more than the batch job
    assert _drain(queue) == ["a1", "a2", "c2"]


def test_usage_is_compared_per_unit_of_weight():
    queue = FairQueue()
    queue.usage.charge({"heavy": 300, "light": 200})
    queue.append(_seq("light-1", Share("light", 1.0)))
    queue.append(_seq("heavy-1", Share("heavy", 2.0)))  # 300 / 2 = 150 < 200 / 1
    assert _drain(queue) == ["heavy-1", "light-1"]


def test_interactive_requests_go_before_batch_ones_whatever_the_usage():
    queue = FairQueue()
    queue.usage.charge({"chat": 1_000_000})
    queue.append(_seq("nightly", Share("nightly", 10.0, Priority.BATCH)))
    queue.append(_seq("person", Share("chat", 1.0, Priority.INTERACTIVE)))
    assert _drain(queue) == ["person", "nightly"]


def test_usage_fades_with_its_half_life():
    clock = FakeClock()
    usage = TenantUsage(half_life_s=10.0, clock=clock)
    usage.charge({"a": 800})
    clock.now += 10
    assert usage.of("a") == pytest.approx(400)
    usage.charge({"a": 100})
    clock.now += 20
    assert usage.of("a") == pytest.approx(125)
    assert usage.of("never-seen") == 0


def test_remove_length_and_membership():
    queue = FairQueue()
    a, c = _seq("a", BATCH_JOB), _seq("c", CHAT)
    queue.append(a)
    queue.append(c)
    assert len(queue) == 2 and a in queue and c in queue
    queue.remove(a)
    queue.remove(a)  # absent: nothing happens
    assert len(queue) == 1 and a not in queue and list(queue) == [c]
    assert queue.weights() == {"chat": 1.0}


def test_shares_of_capacity_follow_the_weights():
    assert share_of("a", {"a": 1.0, "b": 3.0}, 64) == 16
    assert share_of("a", {"a": 1.0}, 64) == 64
    # Within capacity: always. Past it: only below the tenant's share, and only by the headroom.
    assert may_exceed(CHAT, held=0, wanted=1, weights={"batch-job": 1.0}, capacity=64, total=63, headroom=8)
    assert may_exceed(CHAT, held=0, wanted=1, weights={"batch-job": 1.0}, capacity=64, total=64, headroom=8)
    assert not may_exceed(CHAT, held=0, wanted=1, weights={"batch-job": 1.0}, capacity=64, total=72, headroom=8)
    assert not may_exceed(BATCH_JOB, held=64, wanted=1, weights={"chat": 1.0}, capacity=64, total=64, headroom=8)
    assert not may_exceed(CHAT, held=32, wanted=1, weights={"batch-job": 1.0}, capacity=64, total=64, headroom=8)
    assert not may_exceed(CHAT, held=0, wanted=1, weights={"batch-job": 1.0}, capacity=64, total=64, headroom=0)


def _fill(sched: Scheduler, share: Share, count: int, prefix: str) -> list[Sequence]:
    sequences = [_seq(f"{prefix}{i}", share) for i in range(count)]
    for sequence in sequences:
        sched.add(sequence)
    return sequences


def _run_plan(sched: Scheduler) -> list[Sequence]:
    """Plan a step and make every prefilled sequence a decode row, as EngineCore would."""
    plan = sched.schedule()
    for chunk in plan.prefill:
        chunk.sequence.num_prefilled = chunk.end
        if chunk.is_last:
            sched.start_running(chunk.sequence)
    return [chunk.sequence for chunk in plan.prefill]


def test_a_newcomer_is_admitted_past_a_full_batch_without_cutting_anyone_off():
    sched = Scheduler(SchedulerConfig(max_running=8, max_waiting=32, max_batched_tokens=1000))
    heavy = _fill(sched, BATCH_JOB, 20, "a")
    _run_plan(sched)
    assert [s.request_id for s in sched.running] == [f"a{i}" for i in range(8)]
    newcomer = _seq("chat-1", CHAT)
    sched.add(newcomer)
    admitted = _run_plan(sched)
    assert admitted == [newcomer]  # past max_running by one row (headroom 1 for 8 rows)
    assert len(sched.running) == 9 and all(s.status is SequenceStatus.RUNNING for s in heavy[:8])
    # A leaver's row goes to nobody while the batch is past its size: the heavy tenant holds more than its share.
    sched.remove(heavy[0])
    assert _run_plan(sched) == [] and len(sched.running) == 8
    sched.remove(heavy[1])
    assert [s.request_id for s in _run_plan(sched)] == ["a8"]


def test_without_fair_share_the_newcomer_waits_for_the_queue_ahead_of_it():
    sched = Scheduler(SchedulerConfig(max_running=8, max_waiting=32, max_batched_tokens=1000, fair_share=False))
    _fill(sched, BATCH_JOB, 20, "a")
    _run_plan(sched)
    newcomer = _seq("chat-1", CHAT)
    sched.add(newcomer)
    assert _run_plan(sched) == []
    sched.remove(sched.running[0])
    assert [s.request_id for s in _run_plan(sched)] == ["a8"]


def test_the_full_queue_still_takes_another_tenant_within_the_headroom():
    sched = Scheduler(SchedulerConfig(max_running=16, max_waiting=8, max_batched_tokens=1000))
    assert sched.config.headroom_rows == 2
    _fill(sched, BATCH_JOB, 24, "a")  # fills running + waiting
    _run_plan(sched)
    with pytest.raises(Overloaded):
        sched.add(_seq("a-extra", BATCH_JOB))
    chats = _fill(sched, CHAT, 2, "c")
    with pytest.raises(Overloaded):  # the headroom is used up
        sched.add(_seq("c-extra", CHAT))
    assert _run_plan(sched) == chats and len(sched.running) == 18


def test_interactive_requests_are_admitted_before_batch_ones():
    sched = Scheduler(SchedulerConfig(max_running=1, max_waiting=8, max_batched_tokens=1000))
    nightly = _fill(sched, Share("nightly", 1.0, Priority.BATCH), 3, "n")
    _run_plan(sched)
    chat = _fill(sched, Share("chat", 1.0, Priority.INTERACTIVE), 1, "c")
    sched.remove(nightly[0])
    assert _run_plan(sched) == chat


def test_a_newcomers_prompt_is_planned_before_the_decode_forward_of_others_rows():
    sched = Scheduler(SchedulerConfig(max_running=8, max_waiting=32, max_batched_tokens=1000))
    _fill(sched, BATCH_JOB, 12, "a")
    _run_plan(sched)
    newcomer = _seq("chat-1", CHAT)
    sched.add(newcomer)
    plan = sched.schedule()
    assert plan.ahead == [newcomer] and len(plan.decode) == 8
    # The heavy tenant's own joiners wait for the decode forward, as before tenants existed.
    sched = Scheduler(SchedulerConfig(max_running=8, max_waiting=32, max_batched_tokens=1000))
    _fill(sched, BATCH_JOB, 4, "a")
    _run_plan(sched)
    _fill(sched, BATCH_JOB, 1, "late")
    assert sched.schedule().ahead == []
    off = Scheduler(SchedulerConfig(max_running=8, max_waiting=32, max_batched_tokens=1000, fair_share=False))
    _fill(off, BATCH_JOB, 4, "a")
    _run_plan(off)
    _fill(off, CHAT, 1, "c")
    assert off.schedule().ahead == []


def test_a_tenant_at_its_share_of_a_full_batch_does_not_hold_up_one_below_it():
    # The heavy tenant used fewer tokens per weight lately, so its head ranks first, but it holds the
    # whole batch: the light tenant's head is admitted past it rather than waiting for usage to decay.
    sched = Scheduler(SchedulerConfig(max_running=8, max_waiting=32, max_batched_tokens=1000))
    heavy, light = Share("heavy", 4.0), Share("light", 1.0)
    _fill(sched, heavy, 10, "h")
    _run_plan(sched)
    sched.waiting.usage.charge({"light": 1_000_000})
    newcomer = _seq("l1", light)
    sched.add(newcomer)
    assert sched.waiting.peek() is not newcomer  # ranks behind the heavy tenant's head
    assert _run_plan(sched) == [newcomer]


def test_the_queue_order_uses_the_usage_clock():
    clock = FakeClock()
    queue = FairQueue(usage=TenantUsage(half_life_s=10.0, clock=clock))
    queue.usage.charge({"a": 1000, "b": 10})
    clock.now += 1  # no real time passes: the decay is the fake clock's
    queue.append(_seq("a1", Share("a")))
    queue.append(_seq("b1", Share("b")))
    assert _drain(queue) == ["b1", "a1"]


def test_the_engine_shares_places_in_flight_the_same_way():
    # Engine._has_room is the event loop's check before a request goes to the model thread.
    from types import SimpleNamespace

    from app.engine.engine import Engine

    engine = Engine.__new__(Engine)
    engine._core = SimpleNamespace(scheduler=SimpleNamespace(config=SchedulerConfig(max_running=8, max_waiting=8)))
    engine._active = {f"h{i}": (1, BATCH_JOB) for i in range(16)}
    assert not engine._has_room(1, BATCH_JOB)
    assert engine._has_room(1, CHAT)
    engine._active["c0"] = (1, CHAT)
    assert not engine._has_room(1, CHAT)  # the headroom (8 // 8 = 1 place) is used


def test_only_a_request_of_a_tenant_holding_no_row_may_end_a_step_early():
    from types import SimpleNamespace

    from app.engine.scheduling.model_thread import ModelThread

    added = []
    core = SimpleNamespace(add=added.append, prefix_cache_stats=None)
    thread = ModelThread(core)  # not started: commands are applied by hand below
    thread.tenants_decoding = frozenset({"batch-job"})
    thread.add(_seq("a", BATCH_JOB))
    assert not core.arrivals_pending()  # the batch job's own requests: steps run as without fair share
    thread.add(_seq("c", CHAT))
    assert core.arrivals_pending()
    assert thread._handle_commands(block=False) and not core.arrivals_pending()
    assert [s.request_id for s in added] == ["a", "c"]


def test_a_newcomers_next_turn_after_a_cached_prefix_also_goes_before_the_decode_forward():
    def cache_hit(sequence: Sequence) -> None:  # as EngineCore._admit does on a prefix-cache hit
        if sequence.share is CHAT:
            sequence.num_prefilled = sequence.num_cached_tokens = 30

    sched = Scheduler(SchedulerConfig(max_running=8, max_waiting=32, max_batched_tokens=1000), on_admit=cache_hit)
    _fill(sched, BATCH_JOB, 12, "a")
    _run_plan(sched)
    next_turn = _seq("chat-turn-2", CHAT, prompt_len=40)
    sched.add(next_turn)
    plan = sched.schedule()
    assert [(c.sequence, c.start, c.end) for c in plan.prefill if c.sequence is next_turn] == [(next_turn, 30, 40)]
    assert plan.ahead == [next_turn]
