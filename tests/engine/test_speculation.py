"""Prompt-lookup speculation: drafts come from the latest earlier occurrence of the last n-gram; on the
native kernels a lone stream's tokens are identical with and without them, whatever the request asks
(greedy or seeded, stops, logprobs, penalties, min_tokens), and repeated text gets drafts accepted."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.engine.scheduling.speculation import MAX_DRAFT, PROBE_EVERY, Drafter, draft_length
from app.engine.types import SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of, run_to_end


def propose(tokens: list[int], max_draft: int = 3) -> list[int]:
    drafter = Drafter()
    drafter.extend(tokens, [])
    return drafter.propose(max_draft)


def test_drafts_follow_the_latest_earlier_occurrence_of_the_last_ngram():
    assert propose([1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]) == [7, 8, 5]  # the later "1 2 3" wins
    assert propose([4, 5, 6, 7, 4, 5, 6], max_draft=2) == [7, 4]
    assert propose([4, 5, 6, 7, 9, 5, 6]) == []  # a repeated bigram alone drafts nothing
    assert propose([1, 2, 3, 4]) == [] and propose([]) == []
    assert propose([1, 2, 1, 2, 1]) == [2, 1]  # runs into the tail itself: still only earlier tokens


def test_an_index_kept_up_as_tokens_arrive_proposes_what_a_fresh_one_does():
    prompt = [7, 1, 2, 3, 4, 1, 2, 5, 6, 2, 3]
    output = [4, 9, 1, 2, 3, 8, 1, 2, 3, 4, 4, 2, 3, 9, 1, 2]
    every_step, some_steps = Drafter(), Drafter()
    for produced in range(len(output) + 1):
        expected = propose(prompt + output[:produced])
        every_step.extend(prompt, output[:produced])
        assert every_step.propose() == expected, produced
        if produced % 3 == 0:  # steps without a draft (backing off) index nothing; a later one catches up
            some_steps.extend(prompt, output[:produced])
            assert some_steps.propose() == expected, produced


def test_drafts_are_as_long_as_they_pay_for():
    lengths = [draft_length(p / 10) for p in range(11)]
    assert lengths[0] == 0 and lengths[-1] == MAX_DRAFT and lengths == sorted(lengths)
    assert draft_length(0.95, most=2) == 2


def test_a_sequence_drafts_more_as_drafts_are_kept_and_only_probes_once_they_keep_missing():
    drafter = Drafter()
    assert drafter.wanted(10) == 1  # even odds at first: one draft pays, more do not
    for _ in range(5):
        drafter.record(3, 3)
    assert drafter.wanted(10) == MAX_DRAFT and drafter.wanted(2) == 2 and drafter.wanted(0) == 0
    misses = 0
    while drafter.wanted(10):
        drafter.record(1, 0)
        misses += 1
        assert misses < 20, "drafting should stop once drafts keep missing"
    assert [drafter.wanted(10) for _ in range(PROBE_EVERY)] == [0] * (PROBE_EVERY - 1) + [1]  # then a probe
    assert drafter.accepted == 15 and drafter.drafted == 15 + misses


PROMPT = "def add(a, b):\n    return a + b\n\n" * 3
PARAMS = [
    SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
    SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=40, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=3),
    SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, repetition_penalty=1.2),
    SamplingParams(temperature=0, max_tokens=40, min_tokens=10),
    SamplingParams(temperature=0, max_tokens=7, ignore_eos=True),
]
IDS = ["greedy", "seeded", "logprobs", "penalty", "min-tokens", "short"]


def _run(loaded, prompt: list[int], params: SamplingParams, speculation: bool):
    core = make_core(loaded)
    core.speculation = speculation
    events: list = []
    run_to_end(core, {0: [make_sequence(loaded, "s", prompt, params, events)]})
    assert core.kv_cache_bytes == 0
    return output_of(events), [e.logprobs for e in events], core


def _drafting(monkeypatch, answer: list[int], prompt_length: int, corrupt) -> None:
    """Drafts from a known answer (the tiny random model never repeats itself, so lookup would find
    none): the next three tokens it gave, each passed through `corrupt(position, token)`."""
    def propose_from_answer(drafter, max_draft=3):
        done = len(drafter.tokens) - prompt_length
        return [corrupt(done + i, t) for i, t in enumerate(answer[done:done + max_draft])]

    monkeypatch.setattr(Drafter, "propose", propose_from_answer)


@pytest.mark.parametrize("corrupt", [lambda i, t: t, lambda i, t: t + 1, lambda i, t: t if i % 3 else t + 1],
                         ids=["all-accepted", "all-rejected", "mixed"])
@pytest.mark.parametrize("params", PARAMS, ids=IDS)
def test_tokens_are_the_same_with_and_without_drafts(tiny_exact, params, corrupt, monkeypatch):
    if not make_core(tiny_exact).runner.can_verify_drafts:
        pytest.skip("speculation needs a forward that verifies exactly (the native kernels)")
    prompt = tiny_exact.tokenizer.encode(PROMPT)
    plain, plain_logprobs, _ = _run(tiny_exact, prompt, params, speculation=False)
    _drafting(monkeypatch, plain[0], len(prompt), corrupt)
    drafted, draft_logprobs, core = _run(tiny_exact, prompt, params, speculation=True)
    assert drafted == plain and draft_logprobs == plain_logprobs
    assert core.drafted_tokens > 0
    assert (core.accepted_drafts > 0) == (corrupt(1, 5) == 5 or corrupt(0, 5) == 5)


def test_torch_forwards_never_draft(tiny_fused):
    assert not make_core(tiny_fused).speculation


def test_stop_strings_inside_accepted_drafts_end_the_output_at_the_same_token(tiny_loaded, monkeypatch):
    prompt = tiny_loaded.tokenizer.encode(PROMPT)
    base = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    (answer, text, _), _, _ = _run(tiny_loaded, prompt, base, speculation=False)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    plain = _run(tiny_loaded, prompt, replace(base, stop=(stop,)), False)[0]
    _drafting(monkeypatch, answer, len(prompt), lambda i, t: t)
    assert _run(tiny_loaded, prompt, replace(base, stop=(stop,)), True)[0] == plain and plain[2] == "stop"
