"""The async facade over the model thread: events, cancellation, cleanup, errors (tiny model)."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from dataclasses import replace

import pytest

from app.engine.engine import Engine, EngineConfig
from app.engine.errors import ContextLengthExceeded, EngineDead, InvalidRequest, Overloaded
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.types import SamplingParams
from tests.engine.helpers import tiny_load_config

LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)


@pytest.fixture
async def engine(tiny_model_dir):
    config = EngineConfig(tiny_load_config(tiny_model_dir), "tiny",
                          scheduler=SchedulerConfig(max_running=4, max_waiting=2))
    engine = Engine(config)
    await engine.start()
    yield engine
    await engine.stop()


async def _idle(engine: Engine, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while engine.num_active_requests or engine.num_running or engine.num_waiting or engine.kv_cache_bytes:
        assert asyncio.get_running_loop().time() < deadline, "the engine did not go idle"
        await asyncio.sleep(0.01)


async def test_events_end_with_a_final_event_and_usage_counts(engine):
    ids = await engine.encode_chat([{"role": "user", "content": "Hello"}])
    events = [e async for e in engine.generate(ids, SamplingParams(temperature=0, max_tokens=7))]
    assert events[-1].finish_reason is not None and all(e.finish_reason is None for e in events[:-1])
    assert events[-1].num_prompt_tokens == len(ids) and events[-1].num_completion_tokens == len(events)
    await _idle(engine)


async def test_closing_mid_stream_aborts_and_frees_the_kv_cache(engine):
    ids = await engine.encode_text("The capital of France")
    stream = engine.generate(ids, LONG)
    got = [await stream.__anext__() for _ in range(3)]
    assert engine.num_active_requests == 1 and engine.kv_cache_bytes > 0
    await stream.aclose()
    await _idle(engine)
    assert len(got) == 3


async def test_a_stream_never_started_is_aborted_when_closed_or_dropped(engine):
    ids = await engine.encode_text("The capital of France")
    await engine.generate(ids, LONG).aclose()
    engine.generate(ids, LONG)  # dropped at once: the finalizer aborts it
    gc.collect()
    await _idle(engine)


async def test_a_cancelled_consumer_task_aborts_its_request(engine):
    ids = await engine.encode_text("Hello world")
    first_token = asyncio.Event()

    async def slow_consumer():
        async with contextlib.aclosing(engine.generate(ids, LONG)) as stream:
            async for _ in stream:
                first_token.set()
                await asyncio.sleep(30)  # a client that stops reading

    task = asyncio.create_task(slow_consumer())
    await asyncio.wait_for(first_token.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _idle(engine)


async def test_admission_errors_are_raised_before_streaming(engine):
    ids = await engine.encode_text("Hello")
    with pytest.raises(ContextLengthExceeded, match="256"):
        engine.generate(ids, SamplingParams(max_tokens=300))
    streams = [engine.generate(ids, LONG) for _ in range(6)]  # 4 running + 2 waiting
    with pytest.raises(Overloaded):
        engine.generate(ids, LONG)
    for stream in streams:
        await stream.aclose()
    await _idle(engine)


async def test_choices_count_as_rows_wherever_capacity_is_checked(engine):
    """n = 4 takes four of the six places: a burst is refused at once (429), never after it began."""
    ids = await engine.encode_text("Hello")
    four = engine.generate(ids, replace(LONG, n=4, temperature=1.0, seed=1))
    streams = [four, engine.generate(ids, LONG), engine.generate(ids, LONG)]
    with pytest.raises(Overloaded):
        engine.generate(ids, LONG)
    first = [await four.__anext__() for _ in range(8)]  # the four rows run: each choice shows up
    assert {event.index for event in first} == {0, 1, 2, 3}
    with pytest.raises(InvalidRequest):
        engine.generate(ids, replace(LONG, n=5))  # more rows than the decode batch holds
    for stream in streams:
        await stream.aclose()
    await _idle(engine)


async def test_n_choices_end_after_every_final_event(engine):
    ids = await engine.encode_text("Hello")
    events = [e async for e in engine.generate(ids, SamplingParams(temperature=1.0, seed=3, max_tokens=5, n=3))]
    finals = [e for e in events if e.finish_reason is not None]
    assert sorted(e.index for e in finals) == [0, 1, 2] and all(e.num_completion_tokens <= 5 for e in finals)
    await _idle(engine)


async def test_a_stopped_engine_refuses_work(engine):
    ids = await engine.encode_text("Hello")
    await engine.stop()
    with pytest.raises(EngineDead):
        engine.generate(ids, LONG)
