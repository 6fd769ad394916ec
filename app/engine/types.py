"""Plain engine types shared by every layer: what a request asks for and what comes back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(str, enum.Enum):
    """Why a sequence ended; values are OpenAI's `finish_reason` strings."""

    STOP = "stop"  # EOS token or a stop string
    LENGTH = "length"  # max_tokens or the context window ran out
    TIMEOUT = "timeout"  # the request's deadline passed (an extension of OpenAI's values)


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
    ignore_eos: bool = False
    timeout_s: float | None = None  # seconds from arrival (queueing counts) until it ends with TIMEOUT

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenEvent:
    """One step of a request's output as it leaves the engine.

    `text` is the new, stop-free text since the last event (may be empty while text is held back);
    `finish_reason` is set on the last event only.
    """

    text: str
    token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_completion_tokens: int
    finish_reason: FinishReason | None = None
    timings: RequestTimings | None = None  # on the last event only
    num_cached_tokens: int = 0  # prompt tokens whose KV was reused from the prefix cache


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
