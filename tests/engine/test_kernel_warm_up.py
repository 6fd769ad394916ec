"""Start-up warming of per-shape kernels: every distinct weight matrix, once per decode batch size."""

from __future__ import annotations

from collections import Counter

import torch

from app.engine import runner as runner_module
from app.engine.engine import Engine, EngineConfig
from app.engine.runner import ModelRunner
from app.engine.types import SamplingParams
from tests.engine.helpers import run_alone, tiny_load_config, wait_for_chores


def test_each_distinct_weight_runs_once_per_row_count(tiny_loaded, tiny_reference):
    runner = ModelRunner(tiny_reference, tiny_loaded.device)
    calls: Counter[tuple[tuple[int, ...], int]] = Counter()

    def record(module: torch.nn.Module, args: tuple) -> None:
        calls[(tuple(module.weight.shape), args[0].shape[0])] += 1

    linears = [m for m in tiny_reference.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_pre_hook(record) for m in linears]
    try:
        runner.warm_row_counts(3)
    finally:
        for hook in hooks:
            hook.remove()
    shapes = {tuple(m.weight.shape) for m in linears}
    assert len(shapes) == 5  # q/o, k/v, gate/up, down, lm_head in the tiny Llama
    # Finding the layers costs one forward of a single row; then one call per shape and row count.
    warmed = calls - Counter({(shape, 1): sum(1 for m in linears if tuple(m.weight.shape) == shape)
                              for shape in shapes})
    assert warmed == Counter({(shape, rows): 1 for shape in shapes for rows in (1, 2, 3)})


def test_warming_leaves_generation_unchanged(tiny_loaded, tiny_reference):
    ids = tiny_loaded.tokenizer.encode("The capital of France")
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    before = run_alone(tiny_loaded, ids, params)
    ModelRunner(tiny_reference, tiny_loaded.device).warm_row_counts(4)
    assert run_alone(tiny_loaded, ids, params) == before


def test_warming_stops_at_its_row_cap(tiny_loaded, tiny_reference, monkeypatch):
    monkeypatch.setattr(runner_module, "MAX_WARM_ROWS", 2)
    rows_seen: set[int] = set()
    lm_head = tiny_reference.lm_head
    hook = lm_head.register_forward_pre_hook(lambda module, args: rows_seen.add(args[0].shape[0]))
    try:
        ModelRunner(tiny_reference, tiny_loaded.device).warm_row_counts(64)
    finally:
        hook.remove()
    assert rows_seen == {1, 2}


async def test_a_model_that_cannot_be_warmed_still_serves(tiny_model_dir, monkeypatch, caplog):
    def refuse(self, max_rows):
        raise RuntimeError("this model's layers cannot be called alone")
        yield  # a generator, as warm_row_slices is

    monkeypatch.setattr(ModelRunner, "warm_row_slices", refuse)
    engine = Engine(EngineConfig(tiny_load_config(tiny_model_dir, native_kernels=False), "tiny"))  # torch warms
    await engine.start()
    try:
        ids = await engine.encode_text("Hello")
        events = [e async for e in engine.generate(ids, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))]
        assert events[-1].num_completion_tokens == 3 and events[-1].finish_reason is not None
        await wait_for_chores(engine)
        assert engine.is_alive and "warming per-shape kernels failed" in caplog.text
        events = [e async for e in engine.generate(ids, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))]
        assert events[-1].num_completion_tokens == 3
    finally:
        await engine.stop()
