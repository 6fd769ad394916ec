"""The low-bit copies and kernel warming happen after start-up, a slice at a time: no step uses a copy
before all are made and measured; copies built in row blocks equal copies built whole; the engine
answers before its chores are over and reports the copies once they serve."""

from __future__ import annotations

import torch

from app.engine import packed_linear
from app.engine.engine import Engine, EngineConfig
from app.engine.loader import load
from app.engine.packed_linear import Int4Weights, Int8Weights, PackedLinear
from app.engine.quantization import apply_quantization, quantization_slices
from app.engine.types import SamplingParams
from tests.engine.helpers import tiny_load_config, wait_for_chores


def test_no_copy_serves_until_the_last_slice(tiny_model_dir):
    loaded = load(tiny_load_config(tiny_model_dir, dtype="float32"), copies=False)
    linears = loaded.fused.linears()
    slices = quantization_slices(loaded.fused, "int8", 4, torch.float32, loaded.device)
    taken = 0
    try:
        while True:
            next(slices)
            taken += 1
            assert not any(lin.serves_copy for lin in linears)
    except StopIteration as done:
        summary = done.value
    assert taken >= len(linears) and "int8 for" in summary
    assert all(lin.serves_copy and lin.copy_max_rows == 4 for lin in linears if lin.copy is not None)


def test_copies_built_in_row_blocks_equal_copies_built_whole(monkeypatch):
    torch.manual_seed(0)
    weight = torch.randn(160, 64)
    whole_int8, whole_int4 = PackedLinear(weight), PackedLinear(weight)
    assert whole_int8.make_copy("int8") and whole_int4.make_copy("int4")
    monkeypatch.setattr(packed_linear, "ROW_BLOCK", 64)  # blocks of 64, 64 and 32 rows
    blocks_int8, blocks_int4 = PackedLinear(weight), PackedLinear(weight)
    assert blocks_int8.make_copy("int8") and blocks_int4.make_copy("int4")
    assert torch.equal(blocks_int8.copy.quantized, whole_int8.copy.quantized)
    assert torch.equal(blocks_int8.copy.scales, whole_int8.copy.scales)
    assert torch.equal(blocks_int4.copy.packed, whole_int4.copy.packed)
    assert torch.equal(blocks_int4.copy.scales_and_offsets, whole_int4.copy.scales_and_offsets)
    assert abs(blocks_int4.copy.relative_error - whole_int4.copy.relative_error) < 1e-6
    x = torch.randn(3, 64)
    assert torch.equal(blocks_int4.forward_copy(x), whole_int4.forward_copy(x))
    slices = Int8Weights.build(weight)
    assert sum(1 for _ in slices) == 3  # one slice per block


def test_int4_gives_up_at_the_first_inexact_block(monkeypatch):
    monkeypatch.setattr(packed_linear, "ROW_BLOCK", 16)
    slices = Int4Weights.build(torch.randn(64, 64), abandon_above=0.01)
    taken = 0
    try:
        while True:
            next(slices)
            taken += 1
    except StopIteration as done:
        assert done.value is None and taken == 0


async def test_the_engine_answers_before_its_chores_and_reports_the_copies_after(tiny_model_dir):
    config = tiny_load_config(tiny_model_dir, dtype="float32", quantization="int8", copy_max_rows=4)
    assert load(config, copies=False).runtime.quantization.startswith("pending")
    engine = Engine(EngineConfig(config, "tiny"))
    await engine.start()
    try:
        ids = await engine.encode_text("Hello")
        params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=2)
        events = [e async for e in engine.generate(ids, params)]
        assert sum(len(e.token_ids) for e in events) == 4
        assert engine.token_bytes(ids[0])  # the byte table (a chore) is waited for, not missing
        await wait_for_chores(engine)
        expected = apply_quantization(load(config, copies=False).fused, "int8", 4, torch.float32, torch.device("cpu"))
        assert engine.runtime.quantization == expected
        assert engine.chores_left == 0 and engine.is_alive
    finally:
        await engine.stop()


async def test_copies_that_fail_midway_leave_none_behind(tiny_model_dir, monkeypatch, caplog):
    from app.engine import engine as engine_module

    real = engine_module.quantization_slices

    def failing(*args):
        slices = real(*args)
        for _ in range(3):
            yield next(slices)
        raise RuntimeError("out of memory for the copies")

    monkeypatch.setattr(engine_module, "quantization_slices", failing)
    config = tiny_load_config(tiny_model_dir, dtype="float32", quantization="int8", copy_max_rows=4)
    engine = Engine(EngineConfig(config, "tiny"))
    await engine.start()
    try:
        await wait_for_chores(engine)
        assert "failed" in engine.runtime.quantization and "low-bit weight copies failed" in caplog.text
        assert all(lin.copy is None and not lin.serves_copy for lin in engine._loaded.fused.linears())
        ids = await engine.encode_text("Hello")
        events = [e async for e in engine.generate(ids, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))]
        assert sum(len(e.token_ids) for e in events) == 3 and engine.is_alive
    finally:
        await engine.stop()
