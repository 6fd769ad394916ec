"""Continuous batching must not change any request's output (tiny random Llama).

Each test runs on every exact path (tests/conftest.py: EXACT_PATHS): the native kernels in fp32 and
bf16, whose every number is computed the same way whatever else is in the batch, and torch's fused
forward in fp32 (there bf16 logits come in steps of 1/16 and often tie, so a one-ulp difference
between oneDNN kernels for different row counts flips tokens: not exact).
"""

from __future__ import annotations

import pytest
import torch

from app.engine.kv.kv_store import KVStore
from app.engine.types import SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of, run_alone, run_to_end

PROMPTS = [
    "The capital of France",
    "Hello world! How are you today? I am fine, thank you. The capital of Japan is",
    "東京",
    "def main():\n    print('hello')\n",
    "Emoji: 👋🏽 and café",
]


@pytest.fixture
def tiny_loaded(tiny_exact):
    return tiny_exact


def _ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer.encode(text)


def _run_batched(loaded, requests: list[tuple[list[int], SamplingParams]], join_steps: list[int],
                 **scheduler):
    core = make_core(loaded, **scheduler)
    events = [[] for _ in requests]
    joins: dict[int, list] = {}
    for index, ((ids, params), step) in enumerate(zip(requests, join_steps)):
        joins.setdefault(step, []).append(make_sequence(loaded, f"r{index}", ids, params, events[index]))
    run_to_end(core, joins)
    assert core.scheduler.num_unfinished == 0 and core.kv_cache_bytes == 0
    return [output_of(e) for e in events]


def test_greedy_rows_joining_and_leaving_match_running_alone(tiny_loaded):
    requests = [(_ids(tiny_loaded, p), SamplingParams(temperature=0, max_tokens=8 + 5 * i, ignore_eos=True))
                for i, p in enumerate(PROMPTS)]
    alone = [run_alone(tiny_loaded, ids, params) for ids, params in requests]
    batched = _run_batched(tiny_loaded, requests, join_steps=[0, 0, 3, 7, 12])
    assert batched == alone


def test_joiners_written_into_rows_that_leavers_freed_match_running_alone(tiny_loaded, monkeypatch):
    # Leavers' slots are refilled from the end and the next narrow joiner is written into the freed
    # row (KVStore.remove / _join_in_place): stale KV must never reach anyone's answer.
    in_place = []
    join_in_place = KVStore._join_in_place
    monkeypatch.setattr(KVStore, "_join_in_place", lambda self, *a: (in_place.append(1), join_in_place(self, *a)))
    lengths = [30, 3, 5, 12, 9, 6]
    requests = [(_ids(tiny_loaded, PROMPTS[i % len(PROMPTS)]), SamplingParams(temperature=0, max_tokens=n,
                                                                              ignore_eos=True))
                for i, n in enumerate(lengths)]
    alone = [run_alone(tiny_loaded, ids, params) for ids, params in requests]
    assert _run_batched(tiny_loaded, requests, join_steps=[0, 0, 0, 2, 9, 14]) == alone
    assert in_place, "no joiner reused a freed row: the test no longer covers that path"


def test_seeded_sampling_is_identical_alone_and_batched(tiny_loaded):
    sampled = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=20, ignore_eos=True)
    ids = _ids(tiny_loaded, PROMPTS[0])
    alone = run_alone(tiny_loaded, ids, sampled)
    noise = [(_ids(tiny_loaded, p), SamplingParams(temperature=1.3, max_tokens=15, ignore_eos=True))
             for p in PROMPTS[1:4]]
    batched = _run_batched(tiny_loaded, noise[:2] + [(ids, sampled)] + noise[2:], [0, 0, 2, 5])
    assert batched[2] == alone
    different_seed = run_alone(tiny_loaded, ids, SamplingParams(**{**sampled.__dict__, "seed": 99}))
    assert different_seed[0] != alone[0]


def test_cancelling_a_row_leaves_the_others_unchanged_and_frees_memory_at_the_end(tiny_loaded):
    requests = [(_ids(tiny_loaded, p), SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
                for p in PROMPTS[:3]]
    alone = [run_alone(tiny_loaded, ids, params) for ids, params in requests]
    core = make_core(tiny_loaded)
    events = [[] for _ in requests]
    for index, (ids, params) in enumerate(requests):
        core.add(make_sequence(tiny_loaded, f"r{index}", ids, params, events[index]))
    for _ in range(5):
        core.step()
    bytes_with_three = core.kv_cache_bytes
    assert core.abort("r1") and not core.abort("r1")
    assert core.kv_cache_bytes <= bytes_with_three  # its row waits for a joiner (KVStore.remove)
    run_to_end(core)
    assert output_of(events[0]) == alone[0] and output_of(events[2]) == alone[2]
    assert events[1][-1].finish_reason is None and len(events[1]) < 20
    assert core.scheduler.num_unfinished == 0 and core.kv_cache_bytes == 0


def test_stops_max_tokens_and_eos_per_row_match_the_single_path(tiny_loaded):
    base = run_alone(tiny_loaded, _ids(tiny_loaded, PROMPTS[1]),
                     SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    text = base[1]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    eos_like = base[0][6]  # a token id the model emits: treat it as a stop token
    requests = [
        (_ids(tiny_loaded, PROMPTS[1]), SamplingParams(temperature=0, max_tokens=30, stop=(stop,),
                                                        ignore_eos=True)),
        (_ids(tiny_loaded, PROMPTS[1]), SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                        stop_token_ids=(eos_like,))),
        (_ids(tiny_loaded, PROMPTS[0]), SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)),
        (_ids(tiny_loaded, PROMPTS[3]), SamplingParams(temperature=0, max_tokens=25, ignore_eos=True)),
    ]
    alone = [run_alone(tiny_loaded, ids, params) for ids, params in requests]
    batched = _run_batched(tiny_loaded, requests, [0, 1, 1, 0])
    assert batched == alone
    assert alone[0][2] == "stop" and stop not in alone[0][1] and text.startswith(alone[0][1])
    assert alone[1][2] == "stop" and alone[1][0][-1] == eos_like
    assert alone[2][2] == "length" and len(alone[2][0]) == 3


def test_penalties_and_bias_rows_batch_like_alone(tiny_loaded):
    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=1.3),
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, presence_penalty=1.5,
                       frequency_penalty=0.5),
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logit_bias=((100, 100.0),)),
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
    ]
    requests = [(_ids(tiny_loaded, PROMPTS[i]), p) for i, p in enumerate(params)]
    alone = [run_alone(tiny_loaded, ids, p) for ids, p in requests]
    assert _run_batched(tiny_loaded, requests, [0, 0, 1, 2]) == alone
    assert alone[2][0] == [100] * 12  # +100 bias forces the token


def test_kv_memory_is_reported_and_bounded(tiny_loaded):
    core = make_core(tiny_loaded, max_running=2)
    events = [[] for _ in range(3)]
    for index in range(3):
        core.add(make_sequence(tiny_loaded, f"r{index}", _ids(tiny_loaded, PROMPTS[index]),
                               SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), events[index]))
    core.step()
    assert len(core.scheduler.admitted) == 2 and len(core.scheduler.waiting) == 1
    assert core.kv_cache_bytes > 0
    run_to_end(core)
    assert all(e[-1].finish_reason is not None for e in events)
    assert core.kv_cache_bytes == 0
    assert torch.is_tensor(core.store.mask)


def test_prompts_prefilled_together_with_padding_match_running_alone(tiny_loaded):
    texts = ["Hello world! How are you", "Hello world! How are you?", "Hello world! How are you today"]
    requests = [(_ids(tiny_loaded, t), SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
                for t in texts]
    lengths = sorted(len(ids) for ids, _ in requests)
    assert lengths[0] < lengths[-1] and 3 * lengths[-1] <= 1.25 * sum(lengths)  # one padded group
    alone = [run_alone(tiny_loaded, ids, params) for ids, params in requests]
    assert _run_batched(tiny_loaded, requests, [0, 0, 0]) == alone


def test_a_second_tenant_admitted_past_a_full_batch_changes_no_answer(tiny_loaded):
    # Fair share admits a newcomer past max_running (headroom) and ahead of the heavy tenant's queue:
    # a different batch composition and order, and still everyone's answer is the solo one.
    from app.engine.types import Share

    heavy, light = Share("heavy"), Share("light")
    requests = [(_ids(tiny_loaded, PROMPTS[i % len(PROMPTS)]), SamplingParams(temperature=0, max_tokens=6 + i,
                                                                              ignore_eos=True))
                for i in range(10)]
    alone = [run_alone(tiny_loaded, ids, params) for ids, params in requests]
    core = make_core(tiny_loaded, max_running=8, max_waiting=16)
    events = [[] for _ in requests]
    sequences = [make_sequence(tiny_loaded, f"r{i}", ids, params, events[i]) for i, (ids, params) in enumerate(requests)]
    for i, sequence in enumerate(sequences):
        sequence.share = light if i == 9 else heavy
    widest = 0
    for sequence in sequences[:9]:
        core.add(sequence)
    for step in range(1000):
        if step == 2:
            core.add(sequences[9])
        if not core.has_work:
            break
        core.step()
        widest = max(widest, len(core.scheduler.running))
    assert widest == 9, "the light tenant was not admitted past the full batch"
    assert [output_of(e) for e in events] == alone


def test_steps_cut_short_for_arrivals_delay_prompts_by_one_step_and_change_no_answer(tiny_loaded):
    # With arrivals always pending, every other step ends after its decode forward: the prompts planned
    # after it run a step later, never two in a row, and every answer is still the solo one.
    requests = [(_ids(tiny_loaded, p), SamplingParams(temperature=0, max_tokens=5 + 3 * i, ignore_eos=True))
                for i, p in enumerate(PROMPTS)]
    alone = [run_alone(tiny_loaded, ids, params) for ids, params in requests]
    joins = list(zip(requests, [0, 1, 2, 4, 6]))
    for fair_share in (True, False):
        core = make_core(tiny_loaded, fair_share=fair_share)
        core.arrivals_pending = lambda: True
        cuts, step_once = [], core.step
        core.step = lambda: (step_once(), cuts.append(core._cut_short))
        events = [[] for _ in requests]
        run_to_end(core, {step: [make_sequence(tiny_loaded, f"r{i}", ids, params, events[i])]
                          for i, ((ids, params), step) in enumerate(joins)})
        assert [output_of(e) for e in events] == alone
        if fair_share:
            assert any(cuts) and not any(a and b for a, b in zip(cuts, cuts[1:])), cuts
        else:  # first in, first out: no step is cut short
            assert not any(cuts)


def test_a_second_tenants_next_turn_from_the_prefix_cache_goes_ahead_and_changes_no_answer(tiny_loaded):
    # The light tenant's second turn reuses its first prompt's KV and prefills only the rest, before the
    # heavy tenant's decode forward: the answer equals a fresh solo run's.
    from app.engine.kv.prefix_cache import PrefixCacheConfig
    from app.engine.types import Share

    first_turn = _ids(tiny_loaded, PROMPTS[1])
    second_turn = first_turn + _ids(tiny_loaded, " And the capital of Italy is")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    heavy_params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    alone = [run_alone(tiny_loaded, ids, params) for ids in (first_turn, second_turn)]
    core = make_core(tiny_loaded, PrefixCacheConfig(min_tokens=4), max_running=4, max_waiting=8)
    heavy = [make_sequence(tiny_loaded, f"h{i}", _ids(tiny_loaded, PROMPTS[i % 5]), heavy_params, [])
             for i in (0, 2, 3, 4, 5)]  # not the light tenant's prompt: its first turn is no cache hit
    for sequence in heavy:
        sequence.share = Share("heavy")
        core.add(sequence)
    events = [[], []]
    light = [make_sequence(tiny_loaded, f"l{i}", ids, params, events[i])
             for i, ids in enumerate((first_turn, second_turn))]
    ahead_hits = []
    schedule = core.scheduler.schedule

    def spying_schedule():
        plan = schedule()
        ahead_hits.extend(s.num_cached_tokens for s in plan.ahead)
        return plan

    core.scheduler.schedule = spying_schedule
    for step in range(1000):
        if step == 2:
            light[0].share = Share("light")
            core.add(light[0])
        if events[0] and events[0][-1].finish_reason and light[1].share.tenant != "light":
            light[1].share = Share("light")
            core.add(light[1])
        if not core.has_work:
            break
        core.step()
    assert [output_of(e) for e in events] == alone
    assert len(ahead_hits) == 2 and ahead_hits[0] == 0 and ahead_hits[1] > 0, ahead_hits
