"""Sampler stages against hand-computed numbers on tiny vocabularies."""

from __future__ import annotations

import math

import pytest
import torch

from app.engine.errors import InvalidRequest
from app.engine.sampler import (
    PenaltyState,
    SamplingTensors,
    apply_logit_bias,
    apply_min_p,
    apply_penalties,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    make_generator,
    sample,
)
from app.engine.types import SamplingParams

NEG_INF = float("-inf")


def rows(*values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def log_probs(*probs: float) -> list[float]:
    return [math.log(p) for p in probs]


def kept(logits: torch.Tensor) -> list[list[int]]:
    """Indices of the tokens that survived truncation, per row."""
    return [torch.nonzero(torch.isfinite(r)).flatten().tolist() for r in logits]


def tensors_for(*params: SamplingParams, vocab_size: int = 4) -> SamplingTensors:
    return SamplingTensors.from_params(list(params), vocab_size, "cpu")


# ---- SamplingTensors -------------------------------------------------------------------------


def test_from_params_defaults_need_no_stage():
    t = tensors_for(SamplingParams(), SamplingParams(temperature=0.0))
    assert t.logit_bias is None
    assert not (t.needs_top_k or t.needs_top_p or t.needs_min_p)
    assert not (t.needs_presence_frequency or t.needs_repetition)
    assert t.greedy.tolist() == [False, True] and not t.all_greedy


def test_from_params_top_k_at_or_above_vocab_is_disabled():
    t = tensors_for(SamplingParams(top_k=4), SamplingParams(top_k=2), vocab_size=4)
    assert t.top_k.tolist() == [0, 2] and t.needs_top_k


def test_from_params_builds_dense_logit_bias():
    t = tensors_for(SamplingParams(logit_bias=((1, -100.0), (3, 5.0))), SamplingParams())
    assert t.logit_bias.tolist() == [[0, -100, 0, 5], [0, 0, 0, 0]]


def test_from_params_rejects_out_of_range_bias_token():
    with pytest.raises(InvalidRequest):
        tensors_for(SamplingParams(logit_bias=((4, 1.0),)), vocab_size=4)


# ---- individual stages -----------------------------------------------------------------------


def test_temperature_scales_logits_and_leaves_greedy_rows_alone():
    logits = rows([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])
    out = apply_temperature(logits, torch.tensor([2.0, 0.5, 0.0]))
    assert out.tolist() == [[0.5, 1, 1.5, 2], [2, 4, 6, 8], [1, 2, 3, 4]]
    expected = [math.exp(x / 2) for x in (1, 2, 3, 4)]
    expected = [e / sum(expected) for e in expected]
    assert out[0].softmax(-1).tolist() == pytest.approx(expected, abs=1e-6)


def test_top_k_keeps_k_largest_per_row():
    logits = rows([1, 4, 3, 2], [1, 4, 3, 2], [1, 4, 3, 2])
    out = apply_top_k(logits, torch.tensor([2, 1, 0]))
    assert kept(out) == [[1, 2], [1], [0, 1, 2, 3]]
    assert out[0, 1] == 4 and out[0, 2] == 3  # survivors unchanged


def test_top_k_keeps_ties_with_the_kth_logit():
    assert kept(apply_top_k(rows([1, 3, 3, 2]), torch.tensor([1]))) == [[1, 2]]


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [
        (1.0, [0, 1, 2, 3]),
        (0.96, [0, 1, 2, 3]),
        (0.95, [0, 1, 2]),  # 0.5 + 0.3 + 0.15 reaches 0.95 exactly: the boundary token is in
        (0.81, [0, 1, 2]),
        (0.8, [0, 1]),
        (0.5, [0]),
        (0.1, [0]),  # the top token always survives
        (1e-9, [0]),  # even below the float slack
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(top_p, expected):
    # Token order deliberately not sorted by probability: [0.3, 0.05, 0.5, 0.15]
    logits = rows(log_probs(0.3, 0.05, 0.5, 0.15))
    order = [2, 0, 3, 1]  # ranks -> token ids
    out = apply_top_p(logits, torch.tensor([top_p]))
    assert kept(out) == [sorted(order[i] for i in expected)]


def test_top_p_per_row_values_in_one_batch():
    logits = rows(log_probs(0.5, 0.3, 0.15, 0.05), log_probs(0.5, 0.3, 0.15, 0.05))
    assert kept(apply_top_p(logits, torch.tensor([0.8, 0.9]))) == [[0, 1], [0, 1, 2]]


@pytest.mark.parametrize(
    ("min_p", "expected"), [(0.0, [0, 1, 2, 3]), (0.2, [0, 1, 2]), (0.5, [0, 1]), (1.0, [0])]
)
def test_min_p_drops_tokens_below_fraction_of_max(min_p, expected):
    # Relative to the max 0.5: 0.3 -> 0.6, 0.12 -> 0.24, 0.08 -> 0.16; the max itself always stays.
    logits = rows(log_probs(0.5, 0.3, 0.12, 0.08))
    assert kept(apply_min_p(logits, torch.tensor([min_p]))) == [expected]


def test_presence_and_frequency_formula():
    logits = rows([1, 1, 1, 1], [1, 1, 1, 1])
    counts = torch.tensor([[0, 1, 3, 0], [0, 1, 3, 0]])
    presence, frequency = torch.tensor([0.5, -1.0]), torch.tensor([0.25, 0.0])
    out = apply_presence_frequency(logits, counts, presence, frequency)
    assert out.tolist() == [[1, 0.25, -0.25, 1], [1, 2, 2, 1]]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = rows([2, -2, 2, -2], [2, -2, 2, -2])
    seen = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0, 1.0]))
    assert out.tolist() == [[1, -4, 2, -2], [2, -2, 2, -2]]


def test_logit_bias_is_added():
    out = apply_logit_bias(rows([1, 2, 3, 4]), rows([0, -100, 0, 0.5]))
    assert out.tolist() == [[1, -98, 3, 4.5]]


def test_stages_do_not_mutate_inputs():
    logits = rows([1.0, 2.0, 3.0, 4.0])
    before = logits.clone()
    apply_top_k(logits, torch.tensor([1]))
    apply_top_p(logits, torch.tensor([0.5]))
    apply_min_p(logits, torch.tensor([0.9]))
    apply_temperature(logits, torch.tensor([2.0]))
    assert torch.equal(logits, before)


def test_apply_penalties_order_bias_then_repetition_then_presence():
    params = SamplingParams(logit_bias=((0, 2.0),), repetition_penalty=2.0, presence_penalty=1.0)
    t = tensors_for(params)
    seen = torch.tensor([[True, True, False, False]])
    counts = torch.tensor([[1, 0, 0, 0]])
    out = apply_penalties(rows([-1, 3, 1, 1]), t, seen, counts)
    # token 0: (-1 + 2) / 2 - 1 = -0.5 ; token 1: 3 / 2 = 1.5
    assert out.tolist() == [[-0.5, 1.5, 1, 1]]


def test_apply_penalties_requires_the_state_it_uses():
    with pytest.raises(ValueError):
        apply_penalties(rows([1, 2, 3, 4]), tensors_for(SamplingParams(repetition_penalty=1.2)))


# ---- sample ----------------------------------------------------------------------------------


def test_greedy_rows_take_argmax_of_penalised_logits_and_ignore_truncation():
    params = [
        SamplingParams(temperature=0.0, top_k=1, top_p=0.01, min_p=0.9),
        SamplingParams(temperature=0.0, logit_bias=((0, 10.0),)),
    ]
    t = tensors_for(*params)
    logits = apply_penalties(rows([1, 5, 3, 2], [1, 5, 3, 2]), t)
    gens = [make_generator(0), make_generator(0)]
    state = gens[0].get_state()
    assert sample(logits, t, gens).tolist() == [1, 0]
    assert torch.equal(gens[0].get_state(), state)  # greedy rows draw nothing


def test_mixed_batch_greedy_row_is_argmax():
    t = tensors_for(SamplingParams(temperature=1.0), SamplingParams(temperature=0.0))
    logits = rows([0, 0, 0, 0], [1, 5, 3, 2])
    for seed in range(20):
        assert sample(logits, t, [make_generator(seed), None])[1].item() == 1


def test_logit_bias_minus_100_bans_and_plus_100_forces():
    params = [SamplingParams(logit_bias=((2, -100.0),)), SamplingParams(logit_bias=((3, 100.0),))]
    t = tensors_for(*params)
    logits = apply_penalties(rows([0, 0, 5, 0], [0, 0, 5, 0]), t)
    for seed in range(200):
        ids = sample(logits, t, [make_generator(seed), make_generator(seed + 1000)]).tolist()
        assert ids[0] != 2 and ids[1] == 3


def test_same_seed_same_tokens():
    t = tensors_for(SamplingParams(temperature=1.0))
    logits = torch.zeros(1, 50)
    g1, g2 = make_generator(123), make_generator(123)
    first = [sample(logits, t, [g1]).item() for _ in range(30)]
    assert first == [sample(logits, t, [g2]).item() for _ in range(30)]
    assert len(set(first)) > 1


def test_seeded_row_is_the_same_alone_or_batched():
    vocab = 32
    base = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=7)
    others = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.3, top_k=5, min_p=0.05)]
    alone_t = SamplingTensors.from_params([seeded], vocab)
    batch_t = SamplingTensors.from_params([others[0], seeded, others[1]], vocab)
    g_alone, g_batch = make_generator(7), make_generator(7)
    other_gen = make_generator(99)
    for step in range(40):
        logits = base.roll(step, dims=1)
        alone = sample(logits[1:2], alone_t, [g_alone]).item()
        batched = sample(logits, batch_t, [None, g_batch, other_gen])[1].item()
        assert alone == batched


def _empirical(probs: list[float], params: SamplingParams, n: int = 20000) -> list[float]:
    t = SamplingTensors.from_params([params] * n, len(probs))
    logits = rows(*[log_probs(*probs)] * n)
    generator = make_generator(2024)
    ids = sample(logits, t, [generator] * n)
    return (torch.bincount(ids, minlength=len(probs)).float() / n).tolist()


def test_sampling_frequencies_match_softmax():
    probs = [0.1, 0.2, 0.3, 0.4]
    assert _empirical(probs, SamplingParams()) == pytest.approx(probs, abs=0.015)


def test_sampling_frequencies_with_temperature_and_top_k():
    probs = [0.1, 0.2, 0.3, 0.4]
    # T=0.5 squares the probabilities; top_k=3 drops 0.1; renormalise 0.04, 0.09, 0.16 over 0.29.
    expected = [0.0, 0.04 / 0.29, 0.09 / 0.29, 0.16 / 0.29]
    got = _empirical(probs, SamplingParams(temperature=0.5, top_k=3))
    assert got == pytest.approx(expected, abs=0.015)
    assert got[0] == 0.0


def test_sampling_frequencies_with_top_p():
    got = _empirical([0.05, 0.15, 0.3, 0.5], SamplingParams(top_p=0.8))
    assert got == pytest.approx([0.0, 0.0, 0.375, 0.625], abs=0.015)


def test_unseeded_rows_sample_valid_tokens():
    t = tensors_for(SamplingParams(top_k=2))
    ids = {sample(rows([0, 1, 2, 3]), t, [None]).item() for _ in range(50)}
    assert ids <= {2, 3}


def test_generator_count_must_match_rows():
    with pytest.raises(ValueError):
        two_rows = tensors_for(SamplingParams(), SamplingParams())
        sample(rows([0, 1, 2, 3], [0, 1, 2, 3]), two_rows, [None])


def test_make_generator_unseeded_generators_differ():
    a, b = make_generator(None), make_generator(None)
    assert a.initial_seed() != b.initial_seed()
    assert make_generator(5).initial_seed() == 5


# ---- PenaltyState ----------------------------------------------------------------------------


def test_penalty_state_tracks_prompt_and_output():
    state = PenaltyState([1, 1, 3], vocab_size=5)
    state.append(2)
    state.append(2)
    assert state.output_counts.tolist() == [0, 0, 2, 0, 0]
    assert state.seen_mask.tolist() == [False, True, True, True, False]
    other = PenaltyState([], vocab_size=5)
    other.append(4)
    seen, counts = PenaltyState.stack([state, other])
    assert seen.shape == counts.shape == (2, 5)
    assert seen[1].tolist() == [False, False, False, False, True]


def test_penalty_state_feeds_apply_penalties():
    params = SamplingParams(frequency_penalty=1.0, repetition_penalty=2.0)
    state = PenaltyState([0], vocab_size=4)
    state.append(1)
    seen, counts = PenaltyState.stack([state])
    out = apply_penalties(rows([4, 4, 4, 4]), tensors_for(params), seen, counts)
    assert out.tolist() == [[2, 1, 4, 4]]
