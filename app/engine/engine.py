"""The async boundary: the event loop talks to one model thread through a command queue.

`generate()` validates and registers a request synchronously (so errors surface before a
response starts), then returns a RequestStream over its TokenEvents. Closing the stream early
(client gone, task cancelled) aborts the request; the model thread frees it before its next step.
torch runs on the model thread only, never on the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from collections.abc import Mapping, Sequence as Seq
from dataclasses import dataclass, field, replace

from app.engine.scheduling.chores import Chore
from app.engine.core import EngineCore, build_core
from app.engine.text.detokenizer import IncrementalDetokenizer
from app.engine.errors import ContextLengthExceeded, EngineDead, InvalidRequest, Overloaded
from app.engine.scheduling.fair_queue import may_exceed
from app.engine.text.grammar import CompiledGrammar, GrammarCompiler
from app.engine.models.hardware import RuntimeInfo
from app.engine.models.loader import LoadConfig, LoadedModel, load
from app.engine.scheduling.model_thread import ModelThread
from app.engine.kv.prefix_cache import PrefixCacheConfig, PrefixCacheStats
from app.engine.text.prompts import PromptEncoder
from app.engine.sampler import make_generator
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.scheduling.sequence import Sequence
from app.engine.stream import RequestStream
from app.engine.text.token_bytes import token_byte_slices
from app.engine.text.tokenizer import FastTokenizer
from app.engine.types import EngineState, ModelInfo, SamplingParams, Share, TokenEvent

log = logging.getLogger(__name__)

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI allows
_MASK64 = (1 << 64) - 1


def choice_seed(seed: int | None, index: int) -> int | None:
    """Continuation `index`'s seed: the request's own for the first, a splitmix64 mix of both for the
    rest, so the same seed gives the same n texts and no two continuations share noise."""
    if seed is None or index == 0:
        return seed
    z = (seed + index * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@dataclass(frozen=True)
class EngineConfig:
    load: LoadConfig
    served_model_name: str
    max_model_len: int = 0  # 0: the model's own max_position_embeddings
    request_timeout_s: float = 0.0  # server-wide generation deadline; 0: none. Requests may only shorten it.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    prefix_cache: PrefixCacheConfig | None = field(default_factory=PrefixCacheConfig)  # None: off
    speculation: bool = True  # prompt-lookup drafts for a lone stream (speculation.py)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._model_thread: ModelThread | None = None
        self._active: dict[str, tuple[int, Share]] = {}  # request id -> its rows (n) and owner, until its stream closes
        self._warm = False  # a warm-up generation ran: the engine is ready for traffic
        # One thread for prompt encoding: a fast tokenizer must not be used by two threads at once.
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenwire-tokenize")
        self._core: EngineCore | None = None
        self._loaded: LoadedModel | None = None
        self.encoder: PromptEncoder | None = None
        self.info: ModelInfo | None = None
        self._grammars: GrammarCompiler | None = None
        self._token_bytes: Future[list[bytes]] | None = None  # built by a model-thread chore after warm-up

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model and build what serves it off the event loop (other models may be streaming
        through it), then start the model thread."""
        started = time.perf_counter()
        loaded = await asyncio.to_thread(self._load)
        self._model_thread.start()
        log.info("model loaded in %.1fs", time.perf_counter() - started)
        await self._warm_up()
        self._model_thread.add_chores(self._chores(loaded))  # after the warm-up, which they would slow
        log.info("model ready in %.1fs (warm-up generation done)", time.perf_counter() - started)

    async def _warm_up(self) -> None:
        """A 2-token greedy generation through the real path: first-call costs are paid before traffic."""
        ids = await self.encode_text("Hello") or [0]
        async for _ in self.generate(ids, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)):
            pass
        self._warm = True

    def _load(self) -> LoadedModel:
        """On a worker thread: the model, then everything built from it (the tokenizer's copy alone
        takes ~0.1 s of the GIL for the default model); the model thread is made, not started."""
        loaded = load(self.config.load)
        self._attach(loaded)
        return loaded

    def _attach(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        # The model thread detokenizes with its own copy; the original serves prompt encoding.
        self._detokenizer_tokenizer = (loaded.tokenizer.copy() if isinstance(loaded.tokenizer, FastTokenizer)
                                       else copy.deepcopy(loaded.tokenizer))
        self._core = build_core(loaded, self.config.scheduler, self.config.prefix_cache, self.config.speculation)
        vocab = self._core.vocab_size
        max_len = min(self.config.max_model_len or loaded.max_position_embeddings, loaded.max_position_embeddings)
        self.encoder = PromptEncoder(loaded.tokenizer, vocab)
        self._grammars = GrammarCompiler(loaded.tokenizer, vocab, loaded.eos_token_ids)
        self.info = ModelInfo(self.config.served_model_name, max_len, vocab, loaded.eos_token_ids,
                              self.encoder.has_chat_template, int(time.time()), self.encoder.reasoning_markers,
                              self.encoder.format, self.encoder.markup_token_ids)
        self._token_bytes = Future()
        self._model_thread = ModelThread(self._core)

    def _chores(self, loaded: LoadedModel) -> list[Chore]:
        """After start-up, on the model thread: the token byte table (logprobs wait for it; built
        with the model thread's own tokenizer), then every batch size's kernels (torch forwards only:
        the native kernels build nothing per shape). Neither changes a single number a request gets."""
        table = self._token_bytes
        chores = [Chore("token byte table", token_byte_slices(self._detokenizer_tokenizer, self._core.vocab_size),
                        table.set_result, table.set_exception)]
        if loaded.native is None:
            max_rows = self.config.scheduler.max_running + self.config.scheduler.headroom_rows
            chores.append(Chore("warming per-shape kernels", self._core.runner.warm_row_slices(max_rows)))
        return chores

    async def stop(self) -> None:
        if self._model_thread is not None and self._model_thread.is_running:
            self._model_thread.stop()
            await asyncio.to_thread(self._model_thread.join, 10)
        if self._core is not None and not (self._model_thread and self._model_thread.is_running):
            self._core.close()
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def name(self) -> str:
        """The name clients send as `model`."""
        return self.config.served_model_name

    @property
    def state(self) -> EngineState:
        if self._model_thread is None or not self._model_thread.started:
            return EngineState.LOADING
        if self._model_thread.dead is not None:
            return EngineState.DEAD
        if not self._model_thread.is_running:
            return EngineState.STOPPED
        return EngineState.READY if self._warm else EngineState.LOADING

    @property
    def chores_left(self) -> int:
        """Start-up chores (app/engine/scheduling/chores.py) the model thread has still to finish."""
        return 0 if self._model_thread is None else self._model_thread.chores_left

    @property
    def is_alive(self) -> bool:
        thread = self._model_thread
        return thread is not None and thread.is_running and thread.dead is None

    @property
    def num_active_requests(self) -> int:
        return len(self._active)

    @property
    def num_running(self) -> int:
        return self._published_load()[0]

    @property
    def num_waiting(self) -> int:
        return self._published_load()[1]

    @property
    def kv_cache_bytes(self) -> int:
        return self._published_load()[2]

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        """The prefix cache's bytes and counters as of the last step (all zero when it is off)."""
        return PrefixCacheStats() if self._model_thread is None else self._model_thread.prefix_cache_stats

    @property
    def runtime(self) -> RuntimeInfo | None:
        """Device, dtype, threads, CPU features, forward and weight formats chosen at load; None until
        the model is loaded."""
        return None if self._loaded is None else self._loaded.runtime

    def _published_load(self) -> tuple[int, int, int]:
        return (0, 0, 0) if self._model_thread is None else self._model_thread.load

    # ---- prompts ----------------------------------------------------------------------------

    async def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return await self._tokenize(self._encoder().encode_text, text, add_special_tokens)

    async def encode_chat(self, messages: Seq[Mapping], add_special_tokens: bool = False,
                          tools: Seq[Mapping] | None = None) -> list[int]:
        return await self._tokenize(self._encoder().encode_chat, messages, add_special_tokens, tools)

    async def opens_reasoning(self, ids: Seq[int]) -> bool:
        """Whether a chat prompt ends inside the model's reasoning block (see ModelInfo.reasoning_markers)."""
        return await self._tokenize(self._encoder().opens_reasoning, ids)

    async def token_bytes_ready(self) -> None:
        """Until token_bytes answers without waiting: the model thread's first chore builds the table
        just after start-up (a request with logprobs that comes sooner waits here, not on the loop)."""
        table = self._token_bytes
        if table is None:
            raise EngineDead("the model is not loaded")
        while not table.done():
            if not self.is_alive:
                raise EngineDead("the model thread stopped")
            await asyncio.sleep(0.01)

    def token_bytes(self, token_id: int) -> bytes:
        """A token's raw bytes (b"" for ids past the tokenizer's vocabulary); after token_bytes_ready."""
        table = self._token_bytes
        if table is None:
            raise EngineDead("the model is not loaded")
        while not table.done():  # a caller that did not await token_bytes_ready: wait here
            if not self.is_alive:
                raise EngineDead("the model thread stopped")
            futures_wait([table], timeout=0.05)
        return table.result()[token_id]

    async def _tokenize(self, function, *arguments):
        return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, function, *arguments)

    def check_ids(self, ids: Seq[int], param: str = "prompt") -> list[int]:
        return self._encoder().check_ids(ids, param)

    async def decode(self, ids: Seq[int]) -> str:
        return await self._tokenize(self._encoder().decode, ids)

    def _encoder(self) -> PromptEncoder:
        if self.encoder is None:
            raise EngineDead("the model is not loaded")
        return self.encoder

    # ---- generation -------------------------------------------------------------------------

    def resolve_params(self, num_prompt_tokens: int, params: SamplingParams) -> SamplingParams:
        """Check the request fits the context window; fill max_tokens with the rest of it."""
        assert self.info is not None
        limit = self.info.max_model_len
        room = limit - num_prompt_tokens
        if params.max_tokens is None and room < 1:
            raise ContextLengthExceeded(
                f"the prompt has {num_prompt_tokens} tokens; this model's context is {limit} tokens, "
                "which leaves no room for a completion", param="prompt")
        max_tokens = room if params.max_tokens is None else params.max_tokens
        if max_tokens > room:
            raise ContextLengthExceeded(
                f"this model's maximum context length is {limit} tokens; the prompt has "
                f"{num_prompt_tokens} tokens and the completion may take {max_tokens} more "
                f"({num_prompt_tokens + max_tokens} in total)", param="max_tokens")
        if params.min_tokens > max_tokens:
            raise InvalidRequest(f"min_tokens ({params.min_tokens}) exceeds max_tokens ({max_tokens})",
                                 param="min_tokens")
        for token_id, _ in params.logit_bias:
            if not 0 <= token_id < self.info.vocab_size:
                raise InvalidRequest(f"logit_bias names token id {token_id}, outside the vocabulary",
                                     param="logit_bias")
        self._check_choices(params)
        return replace(params, max_tokens=max_tokens, timeout_s=self._timeout(params.timeout_s))

    def _check_choices(self, params: SamplingParams) -> None:
        assert self._core is not None
        max_rows = self._core.scheduler.config.max_running
        if not 1 <= params.n <= max_rows:
            raise InvalidRequest(f"n must be between 1 and {max_rows} (the decode batch) here", param="n")
        for name, k in (("logprobs", params.logprobs), ("prompt_logprobs", params.prompt_logprobs)):
            if k is not None and not 0 <= k <= MAX_LOGPROBS:
                raise InvalidRequest(f"{name} must be between 0 and {MAX_LOGPROBS}", param=name)

    def _timeout(self, requested: float | None) -> float | None:
        """The shorter of the request's own deadline and the server's (either may be absent)."""
        limits = [t for t in (requested, self.config.request_timeout_s) if t]
        return min(limits) if limits else None

    async def submit(self, prompt_ids: Seq[int], params: SamplingParams,
                     request_id: str | None = None, share: Share = Share()) -> RequestStream:
        """generate(), with the request's grammar compiled off the event loop first."""
        grammar = None
        if params.constraint is not None:
            grammar = await asyncio.to_thread(self._grammar_compiler().compile, params.constraint)
        return self.generate(prompt_ids, params, request_id, grammar, share)

    def generate(self, prompt_ids: Seq[int], params: SamplingParams, request_id: str | None = None,
                 grammar: CompiledGrammar | None = None, share: Share = Share()) -> RequestStream:
        """Register a request and return its events; raises at once if it cannot be served.
        A constraint is compiled here unless `grammar` is its compiled form."""
        if not self.is_alive:
            raise EngineDead("the model thread is not running")
        params = self.resolve_params(len(prompt_ids), params)
        if params.constraint is not None and grammar is None:
            grammar = self._grammar_compiler().compile(params.constraint)
        assert self._core is not None and self._loaded is not None
        if not self._has_room(params.n, share):
            raise Overloaded("too many requests in flight; retry shortly")
        if request_id is None or request_id in self._active:  # ids key aborts: keep them unique
            request_id = f"{request_id}-{uuid.uuid4().hex[:8]}" if request_id else uuid.uuid4().hex
        events: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()
        sequence = self._new_sequence(request_id, list(prompt_ids), params, events, 0, grammar)
        sequence.forks = [self._new_sequence(request_id, list(prompt_ids), params, events, index, grammar)
                          for index in range(1, params.n)]
        for member in (sequence, *sequence.forks):
            member.share = share
        if not self._core.scheduler.fits_alone(sequence):
            raise ContextLengthExceeded(
                f"{params.n} x (prompt + max_tokens) ({params.n * (sequence.num_tokens + sequence.max_tokens)} "
                "tokens) exceeds the KV-cache memory budget", param="max_tokens")
        self._active[request_id] = (params.n, share)
        assert self._model_thread is not None
        self._model_thread.add(sequence)
        return RequestStream(request_id, events, self._abort, self._forget, params.n)

    def _has_room(self, rows: int, share: Share) -> bool:
        """Rows in flight, as the scheduler counts them (n choices take n places), within capacity or
        a little past it for a tenant below its share."""
        assert self._core is not None
        limits = self._core.scheduler.config
        held = sum(n for n, owner in self._active.values() if owner.tenant == share.tenant)
        weights = {owner.tenant: owner.weight for _, owner in self._active.values()}
        total = sum(n for n, _ in self._active.values())
        return may_exceed(share, held, rows, weights, limits.max_running + limits.max_waiting, total,
                          limits.headroom_rows)

    def _forget(self, request_id: str) -> None:
        self._active.pop(request_id, None)

    def _new_sequence(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                      events: asyncio.Queue, index: int, grammar: CompiledGrammar | None) -> Sequence:
        assert self._loaded is not None and self._model_thread is not None
        loop = asyncio.get_running_loop()
        seed = choice_seed(params.seed, index)
        generator = None if params.is_greedy else make_generator(seed, self._loaded.device)
        return Sequence(
            request_id=request_id,
            prompt_ids=prompt_ids,
            params=params,
            eos_token_ids=frozenset(self._loaded.eos_token_ids),
            detokenizer=IncrementalDetokenizer(self._detokenizer_tokenizer, prompt_ids, params.skip_special_tokens),
            generator=generator,
            sink=self._model_thread.outbox.sink(loop, events),
            index=index,
            matcher=None if grammar is None else grammar.matcher(),
        )

    def _grammar_compiler(self) -> GrammarCompiler:
        if self._grammars is None:
            raise EngineDead("the model is not loaded")
        return self._grammars

    def _abort(self, request_id: str) -> None:
        if self._model_thread is not None:
            self._model_thread.abort(request_id)  # thread-safe; applied before the next step

    def fail_all(self, error: Exception) -> None:
        """End every request in flight with `error` (a drain deadline passed); applied between steps."""
        if self._model_thread is not None:
            self._model_thread.fail_all(error)
