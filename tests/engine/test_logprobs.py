"""Logprobs are those of the distribution each token was drawn from (tiny random Llama, fp32).

With temperature 1 (or greedy) and no truncation that distribution is the model's own, so every
reported value must equal a log-softmax of one uncached forward pass over the whole text.
"""

from __future__ import annotations

import math

import pytest
import torch

from app.engine.types import SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of, reference_logits, run_to_end

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture
def tiny_loaded(tiny_loaded_fp32):
    return tiny_loaded_fp32


@pytest.fixture
def reference(tiny_reference_fp32):
    return tiny_reference_fp32


def _run(loaded, prompt, params, **scheduler):
    events: list = []
    run_to_end(make_core(loaded, **scheduler), {0: [make_sequence(loaded, "r", prompt, params, events)]})
    return events


def _reference(model, token_ids):
    return torch.log_softmax(reference_logits(model, token_ids), dim=-1)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=5),
    SamplingParams(temperature=1.0, seed=3, max_tokens=10, ignore_eos=True, logprobs=3),
], ids=["greedy", "sampled"])
def test_each_tokens_logprob_and_top_k_equal_a_full_forward(tiny_loaded, reference, params):
    prompt = tiny_loaded.tokenizer.encode("The capital of France is")
    events = _run(tiny_loaded, prompt, params)
    ids = output_of(events)[0]
    entries = [lp for event in events for lp in event.logprobs]
    assert [lp.token_id for lp in entries] == ids
    expected = _reference(reference, prompt + ids)
    for step, lp in enumerate(entries):
        row = expected[len(prompt) - 1 + step]
        assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
        top_values, top_ids = row.topk(params.logprobs)
        assert [value for _, value in lp.top] == pytest.approx(top_values.tolist(), abs=1e-4)
        assert {token for token, _ in lp.top} == set(top_ids.tolist())
    if params.is_greedy:
        assert all(lp.token_id == lp.top[0][0] for lp in entries)


def test_logprobs_follow_temperature_and_truncation(tiny_loaded, reference):
    """They describe what was sampled from: logits / T, then top-k; excluded tokens are -inf."""
    prompt = tiny_loaded.tokenizer.encode("Hello world")
    params = SamplingParams(temperature=0.5, top_k=4, seed=1, max_tokens=6, ignore_eos=True, logprobs=6)
    events = _run(tiny_loaded, prompt, params)
    ids = output_of(events)[0]
    logits = reference_logits(reference, prompt + ids)
    for step, lp in enumerate(lp for event in events for lp in event.logprobs):
        scaled = logits[len(prompt) - 1 + step] / 0.5
        kept = scaled.topk(4)
        expected = torch.log_softmax(kept.values, dim=-1)
        assert lp.token_id in kept.indices.tolist()
        values = [value for _, value in lp.top]
        assert len(values) == 4  # the other two asked for were excluded by top_k: not listed
        assert values == pytest.approx(expected.tolist(), abs=1e-4)
        assert math.fsum(math.exp(v) for v in values[:4]) == pytest.approx(1.0, abs=1e-5)


def test_rows_that_did_not_ask_get_none_and_batching_changes_nothing(tiny_loaded):
    prompts = [tiny_loaded.tokenizer.encode(text) for text in ("Hello world", "The capital of Japan is", "def main")]
    asking = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
    plain = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    alone = _run(tiny_loaded, prompts[1], asking)
    core = make_core(tiny_loaded)
    events: list[list] = [[], [], []]
    sequences = [make_sequence(tiny_loaded, f"r{i}", p, asking if i == 1 else plain, events[i])
                 for i, p in enumerate(prompts)]
    run_to_end(core, {0: sequences[:2], 2: sequences[2:]})
    assert all(not e.logprobs for e in events[0] + events[2])
    batched = [lp for e in events[1] for lp in e.logprobs]
    solo = [lp for e in alone for lp in e.logprobs]
    assert [lp.token_id for lp in batched] == [lp.token_id for lp in solo]
    assert [lp.logprob for lp in batched] == pytest.approx([lp.logprob for lp in solo], abs=1e-4)


@pytest.mark.parametrize("max_batched_tokens", [512, 5], ids=["one-chunk", "chunked"])
def test_prompt_logprobs_equal_a_full_forward(tiny_loaded, reference, max_batched_tokens):
    prompt = tiny_loaded.tokenizer.encode("The capital of France is Paris. The capital of Japan is Tokyo.")
    assert len(prompt) > 2 * max_batched_tokens or max_batched_tokens > len(prompt)
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=2)
    events = _run(tiny_loaded, prompt, params, max_batched_tokens=max_batched_tokens)
    prompt_logprobs = events[0].prompt_logprobs
    assert prompt_logprobs is not None and all(e.prompt_logprobs is None for e in events[1:])
    assert len(prompt_logprobs) == len(prompt) and prompt_logprobs[0] is None
    expected = _reference(reference, prompt)
    for position, lp in enumerate(prompt_logprobs[1:], start=1):
        assert lp.token_id == prompt[position]
        assert lp.logprob == pytest.approx(float(expected[position - 1, prompt[position]]), abs=1e-4)
        assert len(lp.top) == 2
    # The completion is the one a request without prompt logprobs gets.
    plain = _run(tiny_loaded, prompt, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    assert output_of(events) == output_of(plain)


def test_an_end_token_carries_no_logprob_as_it_is_not_in_the_text(tiny_loaded):
    from app.engine.types import TokenLogprob

    events: list = []
    sequence = make_sequence(tiny_loaded, "r", [5, 6], SamplingParams(max_tokens=5, logprobs=1), events)
    word = sequence.append_token(7, TokenLogprob(7, -0.1))
    end = sequence.append_token(tiny_loaded.eos_token_ids[0], TokenLogprob(tiny_loaded.eos_token_ids[0], -0.2))
    assert word.logprobs == (TokenLogprob(7, -0.1),)
    assert end.finish_reason is not None and end.logprobs == () and end.num_completion_tokens == 2
