"""Plain engine types shared by every layer: what a request asks for and what comes back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from app.chat_formats.format import ChatFormat
from app.chat_formats.registry import DEFAULT as DEFAULT_FORMAT


class FinishReason(str, enum.Enum):
    """Why a sequence ended; values are OpenAI's `finish_reason` strings."""

    STOP = "stop"  # EOS token or a stop string
    LENGTH = "length"  # max_tokens or the context window ran out
    TIMEOUT = "timeout"  # the request's deadline passed (an extension of OpenAI's values)


@dataclass(frozen=True)
class Constraint:
    """A grammar the output must follow. kind: "json" (any JSON object), "json_schema" (source is the
    schema as JSON text), "regex" or "lark" (source in that syntax)."""

    kind: str
    source: str = ""


@dataclass(frozen=True)
class TokenLogprob:
    """One position's log-probability: the token that is there and the `top` most likely ones there,
    (token id, logprob) best first; -inf for tokens the distribution excluded."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop, already validated and in engine terms.

    top_k <= 0 disables top-k; max_tokens None means "the rest of the context window";
    timeout_s None means no deadline (the engine applies its own default when the request arrives).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # EOS is an ordinary token: generation runs on to max_tokens (or a stop)
    min_tokens: int = 0  # before this many tokens: EOS and stop_token_ids cannot be drawn, stop strings not checked
    timeout_s: float | None = None  # seconds from arrival (queueing counts) until it ends with TIMEOUT
    n: int = 1  # independent continuations of one prompt, prefilled once; choice i > 0 seeds from (seed, i)
    logprobs: int | None = None  # None: off; k >= 0: each sampled token's logprob and the k most likely
    prompt_logprobs: int | None = None  # None: off; k >= 0: the same for every prompt token (raw model)
    constraint: Constraint | None = None  # output must match this grammar (compiled by the engine)
    skip_special_tokens: bool = True  # False: special tokens stay in the text (markup made of them is read)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def is_plain_greedy(self) -> bool:
        """Greedy with nothing to apply first (bias, penalties) or report (logprobs): the argmax alone."""
        return (self.temperature == 0.0 and not self.logit_bias and self.presence_penalty == 0.0
                and self.frequency_penalty == 0.0 and self.repetition_penalty == 1.0 and self.logprobs is None)


class Priority(enum.IntEnum):
    """A request's class for admission: every waiting interactive request goes before any batch one."""

    INTERACTIVE = 0
    BATCH = 1


@dataclass(frozen=True)
class Share:
    """Whose request this is, for sharing the engine between tenants (API keys): admission goes by
    priority, then to the tenant that used the fewest tokens per unit of weight lately."""

    tenant: str = ""
    weight: float = 1.0
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True)
class TokenEvent:
    """One step of a request's output as it leaves the engine.

    `text` is the new, stop-free text since the last event (may be empty while text is held back);
    `finish_reason` is set on the last event only; with n > 1, each continuation (`index`) has one.
    """

    text: str
    token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_completion_tokens: int
    finish_reason: FinishReason | None = None
    timings: RequestTimings | None = None  # on the last event only
    num_cached_tokens: int = 0  # prompt tokens whose KV was reused from the prefix cache
    index: int = 0  # which of the request's n continuations this event belongs to
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token_ids entry, when the request asked
    # On a continuation's first event, when asked: one per prompt token (None for the first).
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    # On a final event with finish_reason stop: the stop string that ended the text (None: an end token).
    stop_string: str | None = None


@dataclass(frozen=True)
class RequestTimings:
    """When a request moved through the engine, in time.monotonic() seconds (None: never got there)."""

    arrival: float
    scheduled: float | None = None  # admitted to its first prefill step
    first_token: float | None = None
    finished: float | None = None

    @property
    def queue_time_s(self) -> float | None:
        return None if self.scheduled is None else self.scheduled - self.arrival


class EngineState(str, enum.Enum):
    """What the engine can do now; only READY takes traffic (GET /ready)."""

    LOADING = "loading"  # the model is loading or warming up
    READY = "ready"
    STOPPED = "stopped"  # shut down on purpose
    DEAD = "dead"  # the model thread died


@dataclass(frozen=True)
class ModelInfo:
    """What the API needs to know about the loaded model."""

    name: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    has_chat_template: bool = True
    created: int = 0
    reasoning_markers: tuple[str, str] | None = None  # (start, end) where the model's reasoning is
    chat_format: ChatFormat = DEFAULT_FORMAT  # its family's tool-call markup (app/chat_formats)
    markup_token_ids: tuple[tuple[str, int], ...] = ()  # the format's markup that is one token: (text, id)
