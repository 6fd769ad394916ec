"""One request's state inside the engine: its tokens, lifecycle, and text post-processing.

A Sequence turns each sampled token id into a TokenEvent (detokenize -> stop check -> finish?).
It owns no model state: its KV row lives in EngineCore's KVStore, which maps rows to sequences (a
prompt still being chunked has its own cache in EngineCore until it joins).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from app.engine.text.detokenizer import IncrementalDetokenizer
from app.engine.text.grammar import GrammarMatcher
from app.engine.sampler import PenaltyState
from app.engine.text.stopping import StopMatcher, check_token_stop
from app.engine.types import FinishReason, RequestTimings, SamplingParams, Share, TokenEvent, TokenLogprob


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, nothing computed
    PREFILLING = "prefilling"  # prompt partly in its own KV cache (chunked prefill)
    RUNNING = "running"  # a row of the decode batch
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_TIMEOUT = "finished_timeout"  # its deadline passed between steps
    FINISHED_ABORTED = "finished_aborted"

    @property
    def is_finished(self) -> bool:
        return self in _FINISH_REASONS or self is SequenceStatus.FINISHED_ABORTED


# The one table from lifecycle state to OpenAI finish_reason.
_FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: FinishReason.STOP,
    SequenceStatus.FINISHED_LENGTH: FinishReason.LENGTH,
    SequenceStatus.FINISHED_TIMEOUT: FinishReason.TIMEOUT,
}

EventSink = Callable[[TokenEvent | BaseException], None]


@dataclass(eq=False)
class Sequence:
    """A request as the engine sees it. `params.max_tokens` is already resolved to an int."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    sink: EventSink
    stop_matcher: StopMatcher = field(init=False)
    output_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_prefilled: int = 0
    num_cached_tokens: int = 0  # leading prompt tokens whose KV came from the prefix cache
    # Token statistics for repetition/presence/frequency penalties; built only when params ask.
    penalties: PenaltyState | None = None
    # time.monotonic() after which the engine ends it with TIMEOUT; default: params.timeout_s after arrival.
    deadline: float | None = None
    # time.monotonic() stamps reported on the final event (queue time and latency metrics).
    arrival: float = field(default_factory=time.monotonic)
    scheduled_at: float | None = None  # set by the scheduler on admission
    first_token_at: float | None = None
    index: int = 0  # which of the request's n continuations this is
    # Continuations 1..n-1 of this prompt: they wait with it, and fork from its KV once it is prefilled.
    forks: list[Sequence] = field(default_factory=list)
    matcher: GrammarMatcher | None = None  # the output's grammar state, when the request has a constraint
    # Filled by prefill when params.prompt_logprobs is set; sent on the first event, then dropped.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    share: Share = field(default_factory=Share)  # whose request: how admission ranks it against others

    def __post_init__(self) -> None:
        self.stop_matcher = StopMatcher(self.params.stop)
        self._logprob: TokenLogprob | None = None
        if self.deadline is None and self.params.timeout_s:
            self.deadline = self.arrival + self.params.timeout_s

    @property
    def num_rows(self) -> int:
        """Decode rows this sequence will take: itself and the forks still waiting on its prefill."""
        return 1 + len(self.forks)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_tokens(self) -> int:
        assert self.params.max_tokens is not None, "max_tokens is resolved at admission"
        return self.params.max_tokens

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self.status)

    def append_token(self, token_id: int, logprob: TokenLogprob | None = None) -> TokenEvent:
        """Record one sampled token and return the event it produces (final if the sequence ended)."""
        if not self.output_ids:
            self.first_token_at = time.monotonic()
        self.output_ids.append(token_id)
        self._count(token_id)
        self._logprob = logprob
        if self.matcher is not None:
            self.matcher.accept(token_id)
        if self.num_output_tokens <= self._min_tokens:  # too early to stop: text goes straight out
            return self._unstoppable(token_id)
        if self._is_stop_token(token_id):
            self._logprob = None  # an end token is not part of the text, so not of its logprobs either
            text = self.stop_matcher.push(self.detokenizer.flush())[0] + self.stop_matcher.flush()
            return self._finish(SequenceStatus.FINISHED_STOPPED, text, token_id)
        text, stopped = self.stop_matcher.push(self.detokenizer.step(token_id))
        if stopped:
            return self._finish(SequenceStatus.FINISHED_STOPPED, text, token_id)
        if self.num_output_tokens >= self.max_tokens:
            tail, stopped = self.stop_matcher.push(self.detokenizer.flush())
            text += tail if stopped else tail + self.stop_matcher.flush()
            status = SequenceStatus.FINISHED_STOPPED if stopped else SequenceStatus.FINISHED_LENGTH
            return self._finish(status, text, token_id)
        return self._event(text, token_id)

    @property
    def _min_tokens(self) -> int:
        # A grammar decides where constrained output ends (it may allow nothing but EOS): it wins.
        return 0 if self.matcher is not None else self.params.min_tokens

    @property
    def _ignores_eos(self) -> bool:
        # Likewise for ignore_eos: a finished grammar allows only EOS, which must then end the output.
        return self.params.ignore_eos and self.matcher is None

    @property
    def must_not_end(self) -> bool:
        """The next token is within min_tokens: EOS and stop ids must not be drawn (the core masks them)."""
        return self.num_output_tokens < self._min_tokens

    @property
    def end_token_ids(self) -> frozenset[int]:
        """The tokens that would end this sequence if drawn."""
        eos = frozenset() if self._ignores_eos else self.eos_token_ids
        return eos | frozenset(self.params.stop_token_ids)

    def _unstoppable(self, token_id: int) -> TokenEvent:
        """A token within min_tokens: no stop applies, only max_tokens (never below min_tokens)."""
        text = self.detokenizer.step(token_id)
        if self.num_output_tokens >= self.max_tokens:
            text += self.detokenizer.flush()
            return self._finish(SequenceStatus.FINISHED_LENGTH, text, token_id)
        return self._event(text, token_id)

    def abort(self) -> None:
        self.status = SequenceStatus.FINISHED_ABORTED

    def is_expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def expire(self) -> TokenEvent:
        """End at the deadline: the final event flushes held-back text and carries no new token."""
        text, stopped = self.stop_matcher.push(self.detokenizer.flush())
        if not stopped:
            text += self.stop_matcher.flush()
        self.status = SequenceStatus.FINISHED_TIMEOUT
        return TokenEvent(text=text, token_ids=(), num_prompt_tokens=self.num_prompt_tokens,
                          num_completion_tokens=self.num_output_tokens, finish_reason=self.finish_reason,
                          timings=self.timings(), num_cached_tokens=self.num_cached_tokens, index=self.index,
                          prompt_logprobs=self._take_prompt_logprobs())

    def _is_stop_token(self, token_id: int) -> bool:
        p = self.params
        return check_token_stop(token_id, self.eos_token_ids, p.stop_token_ids, self._ignores_eos)

    def _finish(self, status: SequenceStatus, text: str, token_id: int) -> TokenEvent:
        self.status = status
        return self._event(text, token_id)

    def _event(self, text: str, token_id: int) -> TokenEvent:
        return TokenEvent(
            text=text,
            token_ids=(token_id,),
            num_prompt_tokens=self.num_prompt_tokens,
            num_completion_tokens=self.num_output_tokens,
            finish_reason=self.finish_reason,
            timings=self.timings() if self.status.is_finished else None,
            num_cached_tokens=self.num_cached_tokens,
            index=self.index,
            logprobs=() if self._logprob is None else (self._logprob,),
            prompt_logprobs=self._take_prompt_logprobs(),
            stop_string=self.stop_matcher.matched if self.status is SequenceStatus.FINISHED_STOPPED else None,
        )

    def _take_prompt_logprobs(self) -> tuple[TokenLogprob | None, ...] | None:
        taken, self.prompt_logprobs = self.prompt_logprobs, None
        return None if taken is None else tuple(taken)

    def timings(self) -> RequestTimings:
        """The stamps so far; called when the sequence finishes, which is then the `finished` time."""
        return RequestTimings(self.arrival, self.scheduled_at, self.first_token_at, time.monotonic())

    def _count(self, token_id: int) -> None:
        if self.penalties is not None:
            self.penalties.append(token_id)
