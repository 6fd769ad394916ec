"""What the HTTP layer needs of an engine: the one declared surface the routes, probes and metrics use.

app.engine.engine.Engine implements it; so does the test suite's FakeEngine, and a test checks that
both match it member for member, signatures included, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

from app.engine.models.hardware import RuntimeInfo
from app.engine.kv.prefix_cache import PrefixCacheStats
from app.engine.types import EngineState, ModelInfo, SamplingParams, Share, TokenEvent


class ServingEngine(Protocol):
    info: ModelInfo | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> EngineState: ...

    @property
    def is_alive(self) -> bool: ...

    @property
    def num_active_requests(self) -> int: ...

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def kv_cache_bytes(self) -> int: ...

    @property
    def chores_left(self) -> int: ...

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats: ...

    @property
    def runtime(self) -> RuntimeInfo | None: ...

    async def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    async def encode_chat(self, messages: Sequence[Mapping], add_special_tokens: bool = False,
                          tools: Sequence[Mapping] | None = None) -> list[int]: ...

    async def opens_reasoning(self, ids: Sequence[int]) -> bool: ...

    def check_ids(self, ids: Sequence[int], param: str = "prompt") -> list[int]: ...

    async def decode(self, ids: Sequence[int]) -> str: ...

    async def token_bytes_ready(self) -> None: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    async def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
                     request_id: str | None = None, share: Share = Share()) -> AsyncIterator[TokenEvent]: ...

    def fail_all(self, error: Exception) -> None: ...
