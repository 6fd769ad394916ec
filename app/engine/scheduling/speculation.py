"""Prompt-lookup speculation: draft tokens copied from earlier in the sequence, verified in one forward.

When an answer repeats its input (editing code, quoting or summarising a given text), the tokens after
the latest n-gram's earlier occurrence are a good guess for what comes next (transformers'
PromptLookupCandidateGenerator, vLLM's n-gram proposer). The core feeds the last token and the
drafts to one forward pass and keeps the drafts up to the first one the model's own choice departs
from, plus that choice: several tokens for one pass of the weights. The native kernels compute each
position exactly as a one-token step would, so the tokens are identical with and without it, greedy
or seeded (each token is drawn from the same logits with the same generator draw).

A draft costs its position in the pass (on 2 cores, each one adds about a quarter of a one-token
pass), so a sequence drafts only as many tokens as pay for themselves at its recent acceptance rate,
and none once they keep missing, but for a one-token probe now and then: work that does not copy
runs at the speed of plain decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_DRAFT = 3  # drafts per step: a pass of up to 4 rows keeps the weights read once (csrc/matmul.h)
NGRAM_SIZES = (3,)  # longest first; shorter matches drafted mostly misses (bench.speculation)
DRAFT_COST = 0.25  # one drafted position, in one-token passes (measured: 2 cores, bf16, SmolLM2-135M)
PROBE_EVERY = 32  # steps without drafting before a one-token draft tests the water again
MEMORY = 0.8  # how much of its earlier record a sequence keeps at each pass (recent luck counts most)


def draft_length(acceptance: float, most: int = MAX_DRAFT) -> int:
    """The draft length that maximises tokens per unit of work when each draft is kept (given those
    before it were) with probability `acceptance`: (1 + p + ... + p^d) / (1 + DRAFT_COST d)."""
    def value(length: int) -> float:
        return sum(acceptance ** i for i in range(length + 1)) / (1 + DRAFT_COST * length)

    return max(range(most + 1), key=lambda length: (round(value(length), 9), -length))


class Drafter:
    """One sequence's prompt lookup: where each n-gram last occurred, indexed as tokens arrive (a step
    costs its new tokens, not a scan of the whole sequence), and its recent luck with drafts."""

    def __init__(self) -> None:
        self.tokens: list[int] = []  # prompt, then output, as far as seen
        self._latest: dict[int, dict[tuple[int, ...], int]] = {size: {} for size in NGRAM_SIZES}
        self._indexed = dict.fromkeys(NGRAM_SIZES, 0)  # n-grams starting before this are in _latest
        self.kept = self.missed = 0.0  # drafts kept, and passes that hit a wrong one (decayed counts)
        self.idle = 0  # steps since the last draft
        self.drafted = self.accepted = 0  # totals

    @property
    def acceptance(self) -> float:
        """Chance that a draft is kept given the ones before it were (Laplace's rule: 1/2 at first)."""
        return (self.kept + 1) / (self.kept + self.missed + 2)

    def extend(self, prompt: Sequence[int], output: Sequence[int]) -> None:
        """Take in the tokens of prompt + output not seen yet (both only ever grow)."""
        seen = len(self.tokens)
        if seen < len(prompt):
            self.tokens.extend(prompt[seen:])
            seen = len(prompt)
        self.tokens.extend(output[seen - len(prompt):])

    def wanted(self, room: int) -> int:
        """How many tokens to draft this step (at most `room`): as many as pay, or a probe."""
        length = draft_length(self.acceptance, min(MAX_DRAFT, room))
        self.idle = 0 if length else self.idle + 1
        if self.idle > PROBE_EVERY and room > 0:
            self.idle, length = 0, 1
        return length

    def propose(self, max_draft: int = MAX_DRAFT) -> list[int]:
        """The tokens that followed the latest earlier occurrence of the last n-gram (longest first)."""
        tokens, end = self.tokens, len(self.tokens)
        for size in NGRAM_SIZES:
            latest = self._latest[size]
            for start in range(self._indexed[size], end - size):  # every n-gram before the tail's own
                latest[tuple(tokens[start:start + size])] = start
            self._indexed[size] = max(self._indexed[size], end - size)
            start = latest.get(tuple(tokens[end - size:])) if end > size else None
            if start is not None:
                return tokens[start + size:start + size + max_draft]
        return []

    def record(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.kept = self.kept * MEMORY + accepted
        self.missed = self.missed * MEMORY + (accepted < drafted)
