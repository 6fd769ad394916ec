"""The default path on a GPU: device and dtype "auto" pick CUDA and bf16/fp16, and the async engine
serves batched greedy and seeded requests there. Skipped without CUDA; the rest of tests/engine runs on
a GPU too with TOKENWIRE_TEST_DEVICE=cuda."""

from __future__ import annotations

import asyncio

import pytest
import torch

from app.engine.engine import Engine, EngineConfig
from app.engine.models.loader import LoadConfig
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.types import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture
async def engine(tiny_model_dir):
    engine = Engine(EngineConfig(LoadConfig(str(tiny_model_dir)), "tiny", scheduler=SchedulerConfig(max_running=8)))
    await engine.start()
    yield engine
    await engine.stop()


async def _run(engine: Engine, ids: list[int], params: SamplingParams) -> list[int]:
    return [t for event in [e async for e in engine.generate(ids, params)] for t in event.token_ids]


async def test_auto_picks_cuda_and_a_half_precision_dtype(engine):
    loaded = engine._loaded
    assert loaded.device.type == "cuda"
    assert loaded.dtype in (torch.bfloat16, torch.float16)
    assert loaded.fused.embed_weight.device.type == "cuda"
    assert all(lin.weight.device.type == "cuda" for lin in loaded.fused.linears())


async def test_batched_requests_on_cuda_finish_and_free_their_cache(engine):
    ids = await engine.encode_text("The capital of France")
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    seeded = SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=16, ignore_eos=True)
    outputs = await asyncio.gather(*[_run(engine, ids, greedy if i % 2 else seeded) for i in range(6)])
    assert all(len(out) == 16 for out in outputs)
    # Alone, a seeded request repeats itself exactly (batched, bf16 rounding may differ with the batch).
    assert await _run(engine, ids, seeded) == await _run(engine, ids, seeded)
    for _ in range(500):
        if not (engine.num_active_requests or engine.kv_cache_bytes):
            break
        await asyncio.sleep(0.01)
    assert (engine.num_active_requests, engine.kv_cache_bytes) == (0, 0)
