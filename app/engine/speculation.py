"""Prompt-lookup speculation: draft tokens copied from earlier in the sequence, verified in one forward.

When an answer repeats its input (editing code, quoting or summarising a given text), the tokens after
the latest n-gram's earlier occurrence are a good guess for what comes next (transformers'
PromptLookupCandidateGenerator, vLLM's n-gram proposer). The core feeds the last token and the
drafts to one forward pass and keeps the drafts up to the first one the model's own choice departs
from, plus that choice: several tokens for one pass of the weights. The native kernels compute each
position exactly as a one-token step would, so the tokens are identical with and without it, greedy
or seeded (each token is drawn from the same logits with the same generator draw).

A miss costs the extra positions of a pass that stays a few rows wide (a 4-row step costs about 1.5
times a 1-row one on a CPU), so drafts stay short, and a sequence whose drafts keep missing stops
drafting for a while.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_DRAFT = 3  # drafts per step: a pass of up to 4 rows keeps the weights read once (csrc/matmul.h)
NGRAM_SIZES = (3, 2)  # longest first; a single repeated token predicts too little to pay
LOOKBACK = 4096  # tokens searched back for the n-gram (the search is linear)
BACKOFF_STEPS = 16  # after a run of misses, steps without drafting before trying again
MISSES_BEFORE_BACKOFF = 3


def propose(tokens: Sequence[int], max_draft: int = MAX_DRAFT) -> list[int]:
    """The tokens that followed the latest earlier occurrence of the sequence's last n-gram."""
    window = tokens[-LOOKBACK:]
    for size in NGRAM_SIZES:
        if len(window) <= size:
            continue
        tail = list(window[-size:])
        for start in range(len(window) - size - 1, -1, -1):  # the most recent earlier match wins
            if window[start] == tail[0] and list(window[start:start + size]) == tail:
                draft = list(window[start + size:start + size + max_draft])
                if draft:
                    return draft
    return []


@dataclass
class DraftHistory:
    """One sequence's recent luck with drafts: it stops drafting for a while after repeated misses."""

    misses: int = 0
    paused: int = 0
    drafted: int = field(default=0)
    accepted: int = field(default=0)

    def wants_draft(self) -> bool:
        if self.paused:
            self.paused -= 1
            return False
        return True

    def record(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.misses = 0 if accepted else self.misses + 1
        if self.misses >= MISSES_BEFORE_BACKOFF:
            self.misses, self.paused = 0, BACKOFF_STEPS
