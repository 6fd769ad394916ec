"""The model thread's tokenizer copy is used on the model thread only (a fast tokenizer serves one
thread): building a request's detokenizer on the event loop must not call it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.engine.engine import Engine, EngineConfig
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.types import SamplingParams
from tests.engine.helpers import tiny_load_config

MODEL_THREAD = "tokenwire-model"


class OneThreadTokenizer:
    """Passes every use on to the tokenizer, noting the threads that are not the model thread."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.model_thread_uses = 0
        self.strangers: list[str] = []

    def _note(self, name: str) -> None:
        thread = threading.current_thread().name
        if thread == MODEL_THREAD:
            self.model_thread_uses += 1
        else:
            self.strangers.append(f"{name} on {thread}")

    def __getattr__(self, name: str):
        self._note(name)
        return getattr(self._tokenizer, name)

    def __len__(self) -> int:
        self._note("__len__")
        return len(self._tokenizer)


@pytest.fixture
async def guarded(tiny_model_dir, monkeypatch):
    """A started engine whose model-thread tokenizer is a OneThreadTokenizer from the moment it exists."""
    attach = Engine._attach

    def attach_guarded(self, loaded) -> None:
        attach(self, loaded)
        self._detokenizer_tokenizer = OneThreadTokenizer(self._detokenizer_tokenizer)

    monkeypatch.setattr(Engine, "_attach", attach_guarded)
    engine = Engine(EngineConfig(tiny_load_config(tiny_model_dir), "tiny", scheduler=SchedulerConfig(max_running=8)))
    await engine.start()
    await engine.token_bytes_ready()
    yield engine, engine._detokenizer_tokenizer
    await engine.stop()


async def test_detokenizing_never_touches_the_model_threads_tokenizer_elsewhere(guarded):
    engine, tokenizer = guarded
    ids = await engine.encode_text("The capital of France is")
    requests = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.8, seed=3, n=3, max_tokens=10, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=10, logprobs=2, ignore_eos=True),
        SamplingParams(temperature=0.9, seed=5, max_tokens=16, stop=(" ", "e"), ignore_eos=True),
    ]

    async def run(params: SamplingParams) -> str:
        return "".join([event.text async for event in engine.generate(ids, params)])

    texts = await asyncio.gather(*(run(params) for params in requests))
    assert any(texts)
    assert tokenizer.strangers == []
    assert tokenizer.model_thread_uses > 0  # the guard really stood in the detokenizers' way
