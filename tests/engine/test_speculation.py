"""Prompt-lookup speculation: drafts come from the latest earlier occurrence of the last n-gram; on the
native kernels a lone stream's tokens are identical with and without them, whatever the request asks
(greedy or seeded, stops, logprobs, penalties, min_tokens), and repeated text gets drafts accepted."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.engine import core as core_module
from app.engine.speculation import BACKOFF_STEPS, MISSES_BEFORE_BACKOFF, DraftHistory, propose
from app.engine.types import SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of, run_to_end


def test_drafts_follow_the_latest_earlier_occurrence_of_the_last_ngram():
    assert propose([1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]) == [7, 8, 5]  # the later "1 2 3" wins
    assert propose([4, 5, 6, 7, 4, 5], max_draft=2) == [6, 7]  # a bigram when no trigram repeats
    assert propose([1, 2, 3, 4]) == [] and propose([]) == []
    assert propose([1, 2, 1, 2]) == [1, 2]  # runs into the tail itself: still only earlier tokens


def test_a_sequence_that_keeps_missing_stops_drafting_for_a_while():
    history = DraftHistory()
    for _ in range(MISSES_BEFORE_BACKOFF):
        assert history.wants_draft()
        history.record(3, 0)
    assert [history.wants_draft() for _ in range(BACKOFF_STEPS)] == [False] * BACKOFF_STEPS
    assert history.wants_draft()
    history.record(3, 2)
    assert history.misses == 0 and history.accepted == 2


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
    def propose_from_answer(tokens, max_draft=3):
        done = len(tokens) - prompt_length
        return [corrupt(done + i, t) for i, t in enumerate(answer[done:done + max_draft])]

    monkeypatch.setattr(core_module, "propose", propose_from_answer)


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
