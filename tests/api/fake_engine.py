"""A scripted stand-in for app.engine.engine.Engine: app.api.engine_port.ServingEngine, and no model.

Text is "tokenized" one character per token (id = code point), so prompts and decoded ids are
easy to predict. Each `generate()` call replays `script` (TokenEvents, or exceptions to raise at
that point of the stream), unless `generate_error` is set, which is raised synchronously, the way
the real engine rejects a request before any response starts. Every call is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from app.engine.errors import EngineDead, InvalidRequest
from app.engine.models.hardware import RuntimeInfo
from app.engine.kv.prefix_cache import PrefixCacheStats
from app.engine.types import EngineState, FinishReason, ModelInfo, SamplingParams, Share, TokenEvent

MODEL_NAME = "fake-model"
VOCAB_SIZE = 50_000


def scripted_events(texts: Sequence[str], finish_reason: FinishReason | None = FinishReason.STOP,
                    num_prompt_tokens: int = 3) -> list[TokenEvent]:
    """One TokenEvent per text (one token each); the last one carries `finish_reason`."""
    events = []
    for i, text in enumerate(texts):
        last = i == len(texts) - 1
        events.append(TokenEvent(text=text, token_ids=(100 + i,), num_prompt_tokens=num_prompt_tokens,
                                 num_completion_tokens=i + 1, finish_reason=finish_reason if last else None))
    return events


FAKE_RUNTIME = RuntimeInfo("cpu", "float32", "asked for", 2, ("avx2",), "", "0.0")
DEFAULT_SCRIPT = scripted_events(["Hello", ",", " world", "!"])


@dataclass
class GenerateCall:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str | None
    share: Share = Share()  # the tenant the API passed in
    started: bool = False  # the iterator was iterated at least once
    finished: bool = False  # ran to its last scripted item (or raised its scripted error)
    closed_early: bool = False  # closed (aclose / cancellation) before it finished


@dataclass
class FakeEngine:
    info: ModelInfo | None = None
    script: list[TokenEvent | BaseException] = field(default_factory=lambda: list(DEFAULT_SCRIPT))
    generate_error: BaseException | None = None
    event_delay_s: float = 0.0
    alive: bool = True
    warm: bool = True  # False: started but not warmed up (GET /ready says loading)
    running: int = 0
    waiting: int = 0
    kv_bytes: int = 0
    chores: int = 0  # what chores_left answers
    prefix_stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    info_on_start: ModelInfo | None = field(default_factory=lambda: ModelInfo(
        MODEL_NAME, max_model_len=2048, vocab_size=VOCAB_SIZE, eos_token_ids=(2,), created=1_700_000_000))
    started: bool = False
    stopped: bool = False
    calls: list[GenerateCall] = field(default_factory=list)
    failure: BaseException | None = None  # set by fail_all(): every open stream raises it next
    encoded_texts: list[str] = field(default_factory=list)
    encoded_chats: list[list[dict]] = field(default_factory=list)
    encoded_tools: list[list[dict] | None] = field(default_factory=list)
    prompt_opens_reasoning: bool = False  # what opens_reasoning() answers
    special_token_flags: list[bool] = field(default_factory=list)
    checked_ids: list[list[int]] = field(default_factory=list)
    _open_iterators: int = 0

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True
        self.info = self.info_on_start

    async def stop(self) -> None:
        self.stopped = True

    @property
    def name(self) -> str:
        return self.info_on_start.name if self.info_on_start is not None else MODEL_NAME

    @property
    def is_alive(self) -> bool:
        return self.alive and self.started and not self.stopped

    @property
    def state(self) -> EngineState:
        if not self.alive:
            return EngineState.DEAD
        if self.stopped:
            return EngineState.STOPPED
        return EngineState.READY if self.started and self.warm else EngineState.LOADING

    @property
    def num_running(self) -> int:
        return self.running

    @property
    def num_waiting(self) -> int:
        return self.waiting

    @property
    def num_active_requests(self) -> int:
        return self._open_iterators

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_bytes

    @property
    def chores_left(self) -> int:
        return self.chores

    @property
    def runtime(self) -> RuntimeInfo | None:
        return FAKE_RUNTIME if self.started else None

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.prefix_stats

    # ---- prompts ------------------------------------------------------------------------------

    async def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encoded_texts.append(text)
        self.special_token_flags.append(add_special_tokens)
        if not text:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return [ord(c) for c in text]

    async def encode_chat(self, messages: Sequence[Mapping], add_special_tokens: bool = False,
                          tools: Sequence[Mapping] | None = None) -> list[int]:
        self.encoded_chats.append([dict(m) for m in messages])
        self.encoded_tools.append(None if tools is None else [dict(t) for t in tools])
        self.special_token_flags.append(add_special_tokens)
        rendered = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        return [ord(c) for c in rendered]

    async def opens_reasoning(self, ids: Sequence[int]) -> bool:
        return self.prompt_opens_reasoning

    async def token_bytes_ready(self) -> None:
        return None

    def token_bytes(self, token_id: int) -> bytes:
        return chr(token_id).encode()

    def check_ids(self, ids: Sequence[int], param: str = "prompt") -> list[int]:
        self.checked_ids.append(list(ids))
        bad = [i for i in ids if not 0 <= i < VOCAB_SIZE]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary [0, {VOCAB_SIZE})",
                                 param=param)
        return list(ids)

    async def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    # ---- generation ---------------------------------------------------------------------------

    async def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
                     request_id: str | None = None, share: Share = Share()) -> AsyncIterator[TokenEvent]:
        return self.generate(prompt_ids, params, request_id, share)

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams,
                 request_id: str | None = None, share: Share = Share()) -> AsyncIterator[TokenEvent]:
        """Raise at once if scripted to; otherwise return an iterator over the script."""
        if not self.is_alive:
            raise EngineDead("the model thread is not running")
        call = GenerateCall(list(prompt_ids), params, request_id, share)
        self.calls.append(call)
        if self.generate_error is not None:
            raise self.generate_error
        self._open_iterators += 1
        return self._events(call, list(self.script))

    async def _events(self, call: GenerateCall, script: list) -> AsyncIterator[TokenEvent]:
        try:
            call.started = True
            for item in script:
                if self.event_delay_s:
                    await asyncio.sleep(self.event_delay_s)
                if self.failure is not None:
                    item = self.failure
                if isinstance(item, BaseException):
                    call.finished = True
                    raise item
                if item is script[-1]:
                    call.finished = True
                yield item
            call.finished = True
        finally:
            if not call.finished:
                call.closed_early = True
            self._open_iterators -= 1

    def fail_all(self, error: Exception) -> None:
        self.failure = error

    @property
    def last_call(self) -> GenerateCall:
        assert self.calls, "generate() was never called"
        return self.calls[-1]
