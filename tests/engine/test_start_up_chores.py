"""Start-up chores (the token byte table; kernel warming on torch forwards) run after the engine is
ready, a slice at a time, and change no number a request gets: an answer given before they are over
equals the same request's answer after them, and after a restart."""

from __future__ import annotations

import pytest

from app.engine.engine import Engine, EngineConfig
from app.engine.types import SamplingParams
from tests.engine.helpers import tiny_load_config, wait_for_chores

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=5, max_tokens=12, ignore_eos=True)


async def _answer(engine: Engine, text: str, params: SamplingParams) -> list[int]:
    ids = await engine.encode_text(text)
    return [t for e in [e async for e in engine.generate(ids, params)] for t in e.token_ids]


async def _answers_before_and_after_chores(config) -> tuple[list, list, Engine]:
    engine = Engine(EngineConfig(config, "tiny"))
    await engine.start()
    before = [await _answer(engine, "Hello", GREEDY), await _answer(engine, "The capital", SEEDED)]
    assert engine.token_bytes(before[0][0])  # the byte table (a chore) is waited for, not missing
    await wait_for_chores(engine)
    after = [await _answer(engine, "Hello", GREEDY), await _answer(engine, "The capital", SEEDED)]
    assert engine.chores_left == 0 and engine.is_alive
    return before, after, engine


@pytest.mark.parametrize("native, dtype", [(True, "float32"), (True, "bfloat16"), (False, "float32")],
                         ids=["native-float32", "native-bfloat16", "torch-float32"])
async def test_answers_during_start_up_equal_answers_after_it_and_after_a_restart(tiny_model_dir, native, dtype):
    config = tiny_load_config(tiny_model_dir, dtype=dtype, native_kernels=native)
    before, after, engine = await _answers_before_and_after_chores(config)
    await engine.stop()
    assert before == after and all(len(tokens) == 12 for tokens in before)
    restarted, _, engine = await _answers_before_and_after_chores(config)
    await engine.stop()
    assert restarted == before


async def test_the_native_kernels_have_no_warming_chore(tiny_model_dir):
    engine = Engine(EngineConfig(tiny_load_config(tiny_model_dir), "tiny"))
    await engine.start()
    try:
        chores = engine._chores(engine._loaded)
        assert [c.name for c in chores] == ["token byte table"]
    finally:
        await engine.stop()
