"""Engine lifecycle on the tiny model: warm-up and readiness, timings, failing requests in flight,
and a model thread that dies (every request gets an error, nothing hangs, probes say 503).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.engine.engine import Engine, EngineConfig
from app.engine.errors import EngineDead
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.types import EngineState, SamplingParams
from app.main import create_app
from tests.engine.helpers import tiny_load_config

LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)


class ThreadKiller(BaseException):
    """Not an Exception: the model thread's per-step handler must not swallow it."""


def make_engine(model_dir, **scheduler) -> Engine:
    config = EngineConfig(tiny_load_config(model_dir), "tiny",
                          scheduler=SchedulerConfig(**scheduler))
    return Engine(config)


@pytest.fixture
async def engine(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_running=2, max_waiting=8)
    assert engine.state is EngineState.LOADING
    await engine.start()
    yield engine
    await engine.stop()


def kill_model_thread(engine: Engine) -> None:
    def step() -> None:
        raise ThreadKiller("simulated death of the model thread")

    engine._core.step = step  # type: ignore[method-assign, union-attr]


async def settle(engine: Engine, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while engine.num_active_requests or engine.num_running or engine.num_waiting:
        assert asyncio.get_running_loop().time() < deadline, "the engine did not settle"
        await asyncio.sleep(0.01)


async def test_start_warms_up_then_the_engine_is_ready(engine):
    assert engine.state is EngineState.READY and engine.is_alive
    assert engine.num_active_requests == 0  # the warm-up request is gone
    await engine.stop()
    assert engine.state is EngineState.STOPPED


async def test_the_final_event_carries_the_request_timings(engine):
    ids = await engine.encode_text("Hello world")
    events = [e async for e in engine.generate(ids, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))]
    assert all(e.timings is None for e in events[:-1])
    t = events[-1].timings
    assert t is not None and t.arrival <= t.scheduled <= t.first_token <= t.finished
    assert 0 <= t.queue_time_s < 5


async def test_queue_time_counts_the_wait_for_a_running_slot(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_running=1, max_waiting=2)
    await engine.start()
    try:
        ids = await engine.encode_text("Hello")
        first = engine.generate(ids, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
        second = engine.generate(ids, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
        first_events, second_events = await asyncio.gather(_drain(first), _drain(second))
        t1, t2 = first_events[-1].timings, second_events[-1].timings
        assert t2.scheduled >= t1.finished - 0.05  # admitted only when the first left its slot
        assert t2.queue_time_s >= t1.finished - t1.arrival - 0.05
    finally:
        await engine.stop()


async def _drain(stream) -> list:
    return [event async for event in stream]


async def test_reused_request_ids_are_kept_apart(engine):
    ids = await engine.encode_text("Hello")
    a, b = engine.generate(ids, LONG, "same"), engine.generate(ids, LONG, "same")
    assert a.request_id == "same" and b.request_id.startswith("same-")
    await a.__anext__()
    await a.aclose()  # aborting one must not abort the other
    events = [e async for e in _limited(b, 5)]
    assert len(events) == 5
    await b.aclose()
    await settle(engine)


async def _limited(stream, n: int):
    for _ in range(n):
        yield await stream.__anext__()


async def test_fail_all_ends_every_request_in_flight_with_the_error(engine):
    ids = await engine.encode_text("Hello")
    streams = [engine.generate(ids, LONG) for _ in range(4)]  # 2 running, 2 waiting
    await streams[0].__anext__()
    engine.fail_all(RuntimeError("drain deadline"))
    for stream in streams:
        with pytest.raises(RuntimeError, match="drain deadline"):
            async for _ in stream:
                pass
    await settle(engine)
    assert engine.state is EngineState.READY and engine.kv_cache_bytes == 0


async def test_a_dead_model_thread_fails_waiting_and_running_requests(engine):
    ids = await engine.encode_text("Hello")
    streams = [engine.generate(ids, LONG) for _ in range(5)]  # 2 running, 3 waiting
    await streams[0].__anext__()
    kill_model_thread(engine)
    for stream in streams:
        with pytest.raises(EngineDead):
            await asyncio.wait_for(_drain(stream), timeout=10)
    assert engine.state is EngineState.DEAD and not engine.is_alive
    assert (engine.num_running, engine.num_waiting, engine.num_active_requests) == (0, 0, 0)
    with pytest.raises(EngineDead):
        engine.generate(ids, LONG)
    await asyncio.wait_for(engine.stop(), timeout=5)  # nothing hangs


async def test_after_the_thread_died_health_and_ready_say_503(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    app = create_app(Settings(_env_file=None, served_model_name="tiny"), engine=engine)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=10) as client:
            assert (await client.get("/ready")).status_code == 200
            kill_model_thread(engine)
            request = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 50})
            failed = await asyncio.wait_for(request, timeout=10)
            health, ready = await client.get("/health"), await client.get("/ready")
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "engine_unavailable"
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert (ready.status_code, ready.json()) == (503, {"status": "dead"})
