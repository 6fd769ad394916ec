"""Pure sampling functions over a batch of logits [B, V], one row per request.

Invariant: stages run in vLLM's order (logit bias and penalties -> temperature -> top-k / top-p /
min-p -> sample), no function mutates its inputs, and the only randomness a row ever sees comes from
that row's own `torch.Generator`, so a seeded request picks the same tokens alone or in any batch.
Temperature 0 rows are the argmax of the biased and penalised logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.engine.errors import InvalidRequest
from app.engine.types import SamplingParams

# Cumulative sums carry float error; without a little slack a top_p that sits exactly on a
# boundary (0.5 + 0.3 vs 0.8) could keep one token too many.
_TOP_P_EPS = 1e-6


@dataclass(frozen=True)
class SamplingTensors:
    """Per-row sampling parameters as tensors, plus flags to skip stages no row uses."""

    temperature: torch.Tensor  # [B] float; 0 means greedy
    top_k: torch.Tensor  # [B] long; <= 0 means disabled
    top_p: torch.Tensor  # [B] float in (0, 1]
    min_p: torch.Tensor  # [B] float in [0, 1]
    presence: torch.Tensor  # [B] float
    frequency: torch.Tensor  # [B] float
    repetition: torch.Tensor  # [B] float; 1 means disabled
    logit_bias: torch.Tensor | None  # [B, V] float, or None when no row has a bias
    greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    needs_top_k: bool
    needs_top_p: bool
    needs_min_p: bool
    needs_presence_frequency: bool
    needs_repetition: bool

    @classmethod
    def from_params(
        cls, params: Sequence[SamplingParams], vocab_size: int, device: torch.device | str = "cpu"
    ) -> SamplingTensors:
        """Stack the rows' parameters; `vocab_size` is the logits' last dimension."""

        def col(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        temps = [p.temperature for p in params]
        top_k = [p.top_k if 0 < p.top_k < vocab_size else 0 for p in params]
        presence = [p.presence_penalty for p in params]
        frequency = [p.frequency_penalty for p in params]
        repetition = [p.repetition_penalty for p in params]
        return cls(
            temperature=col(temps, torch.float32),
            top_k=col(top_k, torch.long),
            top_p=col([p.top_p for p in params], torch.float32),
            min_p=col([p.min_p for p in params], torch.float32),
            presence=col(presence, torch.float32),
            frequency=col(frequency, torch.float32),
            repetition=col(repetition, torch.float32),
            logit_bias=_dense_logit_bias(params, vocab_size, device),
            greedy=col([t == 0.0 for t in temps], torch.bool),
            all_greedy=all(t == 0.0 for t in temps),
            needs_top_k=any(k > 0 for k in top_k),
            needs_top_p=any(p.top_p < 1.0 for p in params),
            needs_min_p=any(p.min_p > 0.0 for p in params),
            needs_presence_frequency=any(x != 0.0 for x in presence + frequency),
            needs_repetition=any(r != 1.0 for r in repetition),
        )


def _dense_logit_bias(
    params: Sequence[SamplingParams], vocab_size: int, device: torch.device | str
) -> torch.Tensor | None:
    if not any(p.logit_bias for p in params):
        return None
    bias = torch.zeros(len(params), vocab_size, dtype=torch.float32)
    for row, p in enumerate(params):
        for token_id, value in p.logit_bias:
            if not 0 <= token_id < vocab_size:
                message = f"logit_bias token id {token_id} is out of range"
                raise InvalidRequest(message, "logit_bias")
            bias[row, token_id] = value
    return bias.to(device)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A per-request generator on `device`; a random seed when `seed` is None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


# ---- penalty stage ---------------------------------------------------------------------------


def apply_logit_bias(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Add OpenAI `logit_bias` ([B, V], zeros where unset)."""
    return logits + bias


def apply_repetition_penalty(
    logits: torch.Tensor, seen_mask: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """HF/CTRL: for tokens seen in prompt+output, divide positive logits, multiply negative ones."""
    p = penalty.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen_mask, penalised, logits)


def apply_presence_frequency(
    logits: torch.Tensor,
    output_counts: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
) -> torch.Tensor:
    """OpenAI: logit - count * frequency - (count > 0) * presence; counts over generated tokens."""
    counts = output_counts.to(logits.dtype)
    present = (counts > 0).to(logits.dtype)
    return logits - counts * frequency.unsqueeze(1) - present * presence.unsqueeze(1)


def apply_penalties(
    logits: torch.Tensor,
    tensors: SamplingTensors,
    seen_mask: torch.Tensor | None = None,
    output_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The first stage: logit bias, then repetition, presence and frequency penalties.

    `seen_mask` ([B, V] bool, prompt+output) and `output_counts` ([B, V]) are only read when some
    row uses the penalty that needs them.
    """
    logits = logits.float()
    if tensors.logit_bias is not None:
        logits = apply_logit_bias(logits, tensors.logit_bias)
    if tensors.needs_repetition:
        if seen_mask is None:
            raise ValueError("repetition_penalty needs seen_mask")
        logits = apply_repetition_penalty(logits, seen_mask, tensors.repetition)
    if tensors.needs_presence_frequency:
        if output_counts is None:
            raise ValueError("presence/frequency penalties need output_counts")
        logits = apply_presence_frequency(
            logits, output_counts, tensors.presence, tensors.frequency
        )
    return logits


# ---- temperature and truncation --------------------------------------------------------------


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature; greedy rows (0) are left as they are."""
    safe = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    return logits / safe.unsqueeze(1)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep each row's k largest logits (ties with the k-th are kept); k <= 0 keeps everything."""
    vocab_size = logits.shape[-1]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab_size)).clamp(max=vocab_size)
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(1, (k - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of top tokens whose probabilities sum to >= top_p (at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= (top_p.unsqueeze(1) - _TOP_P_EPS)
    drop_sorted[:, 0] = False
    drop_sorted &= (top_p < 1.0).unsqueeze(1)  # rows at 1.0 keep all, whatever the float error
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's largest probability."""
    probs = logits.softmax(dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_truncation(logits: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    """Top-k, then top-p on what is left, then min-p; stages no row uses are skipped."""
    if tensors.needs_top_k:
        logits = apply_top_k(logits, tensors.top_k)
    if tensors.needs_top_p:
        logits = apply_top_p(logits, tensors.top_p)
    if tensors.needs_min_p:
        logits = apply_min_p(logits, tensors.min_p)
    return logits


# ---- sampling --------------------------------------------------------------------------------


def distribution(logits: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    """The logits a row is drawn from: temperature (greedy rows keep 1), then truncation (-inf outside)."""
    return apply_truncation(apply_temperature(logits.float(), tensors.temperature), tensors)


def sample(
    logits: torch.Tensor,
    tensors: SamplingTensors,
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """Pick one token per row from already biased/penalised logits: LongTensor [B].

    Greedy rows take the argmax; the others go through temperature and truncation and are drawn
    with their own generator (None: an unseeded draw from torch's global generator).
    """
    logits = logits.float()
    if tensors.all_greedy:
        return logits.argmax(dim=-1)
    return draw(distribution(logits, tensors), tensors, generators)


def draw(
    distribution_logits: torch.Tensor,
    tensors: SamplingTensors,
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """One token per row from `distribution()`'s output; greedy rows take its argmax (truncation never
    removes the top token, so that is the argmax of the penalised logits too)."""
    greedy_ids = distribution_logits.argmax(dim=-1)
    if tensors.all_greedy:
        return greedy_ids
    probs = distribution_logits.softmax(dim=-1)
    sampled_ids = _exponential_race(probs, tensors.greedy, generators)
    return torch.where(tensors.greedy, greedy_ids, sampled_ids)


def top_logprobs(logprobs: torch.Tensor, chosen: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen [B], top values [B, k], top ids [B, k]) from log-probabilities [B, V], best first."""
    chosen_logprobs = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1)
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1) if k > 0 else (
        logprobs[:, :0], chosen.new_zeros((logprobs.shape[0], 0)))
    return chosen_logprobs, values, ids


def _exponential_race(
    probs: torch.Tensor, skip: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """argmax(p / E) with E ~ Exp(1) is a draw from p; each row's noise comes from its generator."""
    if len(generators) != probs.shape[0]:
        raise ValueError(f"{len(generators)} generators for {probs.shape[0]} rows")
    noise = torch.ones_like(probs)
    for row, (generator, is_greedy) in enumerate(zip(generators, skip.tolist())):
        if not is_greedy:  # greedy rows leave their generator untouched
            noise[row].exponential_(generator=generator)
    # An exact 0 would turn a masked token's 0/0 into NaN, which argmax would pick.
    noise.clamp_(min=torch.finfo(noise.dtype).tiny)
    return (probs / noise).argmax(dim=-1)


# ---- per-request penalty bookkeeping ---------------------------------------------------------


class PenaltyState:
    """One request's token statistics for the penalty stage: prompt mask and output counts, [V]."""

    def __init__(
        self, prompt_ids: Sequence[int], vocab_size: int, device: torch.device | str = "cpu"
    ) -> None:
        self.prompt_mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if prompt_ids:
            self.prompt_mask[torch.tensor(list(prompt_ids), device=device)] = True
        self.output_counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)

    def append(self, token_id: int) -> None:
        """Record one generated token."""
        self.output_counts[token_id] += 1

    @property
    def seen_mask(self) -> torch.Tensor:
        """Tokens seen in the prompt or the output (what repetition_penalty looks at)."""
        return self.prompt_mask | (self.output_counts > 0)

    @staticmethod
    def stack(states: Sequence[PenaltyState]) -> tuple[torch.Tensor, torch.Tensor]:
        """(seen_mask [B, V], output_counts [B, V]) for a batch, in row order."""
        seen = torch.stack([s.seen_mask for s in states])
        counts = torch.stack([s.output_counts for s in states])
        return seen, counts
