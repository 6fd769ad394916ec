"""n > 1: the prompt is prefilled once and its KV row forked; each continuation is exactly the run
a single request with the derived seed would make (tiny random Llama, every exact path, exact tokens)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.engine.engine import choice_seed
from app.engine.scheduling.scheduler import Scheduler, SchedulerConfig
from app.engine.types import SamplingParams
from tests.engine.helpers import make_core, make_request, make_sequence, output_of, run_alone, run_to_end

SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=11, max_tokens=10, ignore_eos=True, n=3)


@pytest.fixture
def tiny_loaded(tiny_exact):
    return tiny_exact


def _by_choice(events):
    choices: dict[int, list] = {}
    for event in events:
        choices.setdefault(event.index, []).append(event)
    return {index: output_of(found) for index, found in sorted(choices.items())}


def test_the_seeds_are_derived_deterministically_and_differ():
    assert choice_seed(11, 0) == 11 and choice_seed(None, 2) is None
    seeds = [choice_seed(11, i) for i in range(1, 8)]
    assert len(set(seeds)) == len(seeds) and seeds == [choice_seed(11, i) for i in range(1, 8)]
    assert all(0 <= s < 2**64 for s in seeds)


def test_each_choice_equals_a_solo_run_with_its_seed_and_the_prompt_runs_once(tiny_loaded, monkeypatch):
    prompt = tiny_loaded.tokenizer.encode("The capital of France is Paris. The capital of")
    core = make_core(tiny_loaded)
    prefills: list[int] = []
    original = core.runner.prefill_batch
    monkeypatch.setattr(core.runner, "prefill_batch", lambda prompts: (prefills.append(len(prompts)), original(prompts))[1])
    events: list = []
    run_to_end(core, {0: [make_request(tiny_loaded, "r", prompt, SEEDED, events)]})
    assert prefills == [1]  # one prompt row, forked into three
    choices = _by_choice(events)
    assert sorted(choices) == [0, 1, 2]
    for index, got in choices.items():
        solo = replace(SEEDED, n=1, seed=choice_seed(SEEDED.seed, index))
        assert got == run_alone(tiny_loaded, prompt, solo)
    assert len({tuple(ids) for ids, _, _ in choices.values()}) > 1  # the noise differs per choice
    # The same request again gives the same three texts.
    again: list = []
    run_to_end(make_core(tiny_loaded), {0: [make_request(tiny_loaded, "r", prompt, SEEDED, again)]})
    assert _by_choice(again) == choices


def test_forks_of_a_chunked_prompt_join_a_running_batch(tiny_loaded):
    long_prompt = tiny_loaded.tokenizer.encode("Hello world! How are you today? I am fine, thank you. " * 2)
    other = tiny_loaded.tokenizer.encode("def main")
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    core = make_core(tiny_loaded, max_batched_tokens=8, max_prefill_tokens_while_decoding=4)
    events: list = []
    busy: list = []
    run_to_end(core, {0: [make_sequence(tiny_loaded, "busy", other, greedy, busy)],
                      2: [make_request(tiny_loaded, "r", long_prompt, replace(SEEDED, n=2), events)]})
    for index, got in _by_choice(events).items():
        assert got == run_alone(tiny_loaded, long_prompt, replace(SEEDED, n=1, seed=choice_seed(SEEDED.seed, index)))
    assert output_of(busy) == run_alone(tiny_loaded, other, greedy)


def test_aborting_a_request_ends_every_choice_and_frees_the_rows(tiny_loaded):
    prompt = tiny_loaded.tokenizer.encode("Hello world")
    core = make_core(tiny_loaded)
    events: list = []
    core.add(make_request(tiny_loaded, "r", prompt, replace(SEEDED, max_tokens=50), events))
    for _ in range(3):
        core.step()
    assert core.store.num_rows == 3
    assert core.abort("r")
    assert core.store.num_rows == 0 and not core.has_work


def test_admission_counts_every_row_of_a_request():
    from tests.unit.test_scheduler import _seq  # a plain sequence of a given prompt length

    scheduler = Scheduler(SchedulerConfig(max_running=4, kv_budget_bytes=1 << 40, kv_bytes_per_token=1))
    first, three = _seq("a", 3), _seq("b", 3)
    three.forks = [_seq("b", 3), _seq("b", 3)]
    scheduler.add(first)
    scheduler.add(three)
    plan = scheduler.schedule()
    assert [c.sequence for c in plan.prefill] == [first, three] and scheduler.reserved_bytes([three]) == 3 * (3 + 10)
    five = _seq("c", 3)
    five.forks = [_seq("c", 3)]  # 1 + 3 + 2 rows > max_running 4: it waits
    scheduler.add(five)
    assert not scheduler.can_admit(five)
