"""Prefix caching must never change output (tiny random Llama, exact tokens).

Each test runs requests on a core with a prefix cache and compares every token with the same request
run alone on a core without one, on every exact path (see test_batching).
"""

from __future__ import annotations

import pytest

from app.engine.core import kv_bytes_per_token
from app.engine.kv.prefix_cache import PrefixCacheConfig
from app.engine.scheduling.sequence import SequenceStatus
from app.engine.types import SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of, run_alone, run_to_end

CACHE = PrefixCacheConfig(max_bytes=1 << 30, min_tokens=8)
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=7, max_tokens=12, ignore_eos=True)
TEXT = ("A chat front-end resends the whole conversation on every turn, and agents resend one long system "
        "prompt with the same tool list on every call, so most of each prompt was computed a moment ago. ")


@pytest.fixture
def tiny_loaded(tiny_exact):
    return tiny_exact


@pytest.fixture
def prompt(tiny_loaded) -> list[int]:
    ids = tiny_loaded.tokenizer.encode(TEXT * 3)
    assert len(ids) >= 60
    return ids[:60]


def _run(core, loaded, prompt_ids, params, request_id="r"):
    events: list = []
    run_to_end(core, {0: [make_sequence(loaded, request_id, prompt_ids, params, events)]})
    return events


def _other(token_id: int) -> int:
    return 5 if token_id != 5 else 6


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_the_next_turn_reuses_the_conversation_and_its_tokens_do_not_change(tiny_loaded, prompt, params):
    core = make_core(tiny_loaded, CACHE)
    first = _run(core, tiny_loaded, prompt, params)
    assert first[-1].num_cached_tokens == 0
    answer = output_of(first)[0]
    follow_up = prompt + answer + prompt[:9]
    second = _run(core, tiny_loaded, follow_up, params)
    # Stored at the end of turn one: its prompt and every output token fed back (all but the last).
    assert second[-1].num_cached_tokens == len(prompt) + len(answer) - 1
    assert output_of(second) == run_alone(tiny_loaded, follow_up, params)
    stats = core.prefix_cache_stats
    assert stats.hits == 1 and stats.misses == 1 and stats.reused_tokens == len(prompt) + len(answer) - 1


def test_a_hit_on_a_shorter_prefix_ending_inside_a_prompt_chunk(tiny_loaded, prompt):
    small_steps = {"max_batched_tokens": 16, "max_prefill_tokens_while_decoding": 16}
    core = make_core(tiny_loaded, CACHE, **small_steps)
    _run(core, tiny_loaded, prompt, GREEDY)
    # Shares 37 of the 60 stored tokens; the rest is prefilled in chunks of 16 from column 37.
    diverging = prompt[:37] + [_other(prompt[37])] + prompt[38:] + prompt[:20]
    events = _run(core, tiny_loaded, diverging, SEEDED)
    assert events[-1].num_cached_tokens == 37
    assert output_of(events) == run_alone(tiny_loaded, diverging, SEEDED, **small_steps)


def test_two_concurrent_requests_hit_the_same_prefix(tiny_loaded, prompt):
    core = make_core(tiny_loaded, CACHE)
    _run(core, tiny_loaded, prompt, SamplingParams(temperature=0, max_tokens=1))
    prompts = [prompt + prompt[:5], prompt + prompt[10:17]]
    events: list[list] = [[], []]
    run_to_end(core, {0: [make_sequence(tiny_loaded, f"r{i}", p, SEEDED, events[i]) for i, p in enumerate(prompts)]})
    for ids, got in zip(prompts, events):
        assert got[-1].num_cached_tokens == len(prompt)  # the whole stored prompt
        assert output_of(got) == run_alone(tiny_loaded, ids, SEEDED)


def test_a_hit_joins_a_batch_whose_rows_have_other_lengths(tiny_loaded, prompt):
    core = make_core(tiny_loaded, CACHE)
    _run(core, tiny_loaded, prompt, SamplingParams(temperature=0, max_tokens=1))
    short = tiny_loaded.tokenizer.encode("Hello world!")
    long_params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    hit = prompt + prompt[:7]
    theirs, mine = [], []
    run_to_end(core, {0: [make_sequence(tiny_loaded, "short", short, long_params, theirs)],
                      3: [make_sequence(tiny_loaded, "hit", hit, GREEDY, mine)]})
    assert mine[-1].num_cached_tokens == len(prompt)
    assert output_of(mine) == run_alone(tiny_loaded, hit, GREEDY)
    assert output_of(theirs) == run_alone(tiny_loaded, short, long_params)


def test_an_aborted_prefill_leaves_nothing_behind(tiny_loaded, prompt):
    core = make_core(tiny_loaded, CACHE, max_batched_tokens=16)
    sequence = make_sequence(tiny_loaded, "gone", prompt, GREEDY, [])
    core.add(sequence)
    core.step()
    core.step()
    assert sequence.status is SequenceStatus.PREFILLING and 0 < sequence.num_prefilled < len(prompt)
    assert core.abort("gone")
    assert core.prefix_cache_stats.entries == 0 and core.kv_cache_bytes == 0
    events = _run(core, tiny_loaded, prompt, GREEDY)
    assert events[-1].num_cached_tokens == 0
    assert output_of(events) == run_alone(tiny_loaded, prompt, GREEDY)


def test_a_failed_prefill_leaves_nothing_behind(tiny_loaded, prompt, monkeypatch):
    core = make_core(tiny_loaded, CACHE, max_batched_tokens=16)
    core.add(make_sequence(tiny_loaded, "fails", prompt, GREEDY, []))
    core.step()

    def broken(*args, **kwargs):
        raise RuntimeError("the forward pass failed")

    monkeypatch.setattr(core.runner, "prefill", broken)
    with pytest.raises(RuntimeError):
        core.step()
    core.abort("fails")  # what the model thread does with a failed step's requests
    assert core.prefix_cache_stats.entries == 0 and core.kv_cache_bytes == 0


def test_cached_prefixes_give_way_before_a_request_waits_for_memory(tiny_loaded, prompt):
    per_token = kv_bytes_per_token(tiny_loaded)
    budget = 300 * per_token
    core = make_core(tiny_loaded, PrefixCacheConfig(max_bytes=budget, min_tokens=8), kv_budget_bytes=budget)
    once = SamplingParams(temperature=0, max_tokens=1)
    _run(core, tiny_loaded, prompt, once, "a")
    _run(core, tiny_loaded, prompt[::-1], once, "b")
    assert core.prefix_cache_stats.entries == 2 and core.prefix_cache_stats.bytes == 120 * per_token
    # 100 prompt + 140 new tokens reserve 240 of 300: the older entry (60 tokens) must go, at once.
    big = make_sequence(tiny_loaded, "big", (prompt[1:] * 2)[:100], SamplingParams(temperature=0, max_tokens=140), [])
    core.add(big)
    core.step()
    assert big.status is not SequenceStatus.WAITING
    stats = core.prefix_cache_stats
    assert stats.evictions == 1 and stats.entries == 1 and stats.bytes == 60 * per_token
    run_to_end(core)
    assert core.prefix_cache_stats.bytes <= budget


def test_the_cache_never_holds_more_than_its_share(tiny_loaded, prompt):
    per_token = kv_bytes_per_token(tiny_loaded)
    core = make_core(tiny_loaded, PrefixCacheConfig(max_bytes=100 * per_token, min_tokens=8))
    for index in range(4):
        _run(core, tiny_loaded, prompt[index:] + prompt[:index], SamplingParams(temperature=0, max_tokens=1))
    stats = core.prefix_cache_stats
    assert stats.entries == 1 and stats.bytes == 60 * per_token and stats.evictions == 3
