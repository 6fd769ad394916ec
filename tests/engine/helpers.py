"""Drive EngineCore synchronously with made-up requests, step by step."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from app.engine.core import EngineCore, build_core
from app.engine.text.detokenizer import IncrementalDetokenizer
from app.engine.engine import choice_seed
from app.engine.text.grammar import CompiledGrammar
from app.engine.models.loader import LoadConfig
from app.engine.kv.prefix_cache import PrefixCacheConfig
from app.engine.sampler import make_generator
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.scheduling.sequence import Sequence
from app.engine.types import SamplingParams, TokenEvent

# Engine tests run on the CPU; TOKENWIRE_TEST_DEVICE=cuda runs the same tests on a GPU.
TEST_DEVICE = os.environ.get("TOKENWIRE_TEST_DEVICE", "cpu")
# fp32 unless TOKENWIRE_DTYPE says otherwise (`TOKENWIRE_DTYPE=bfloat16 make test` runs them in bf16 too).
TEST_DTYPE = os.environ.get("TOKENWIRE_DTYPE", "float32")
# The kernels' build the engine tests run (TOKENWIRE_NATIVE_ISA=avx2 tries an AVX2-only machine's here).
TEST_NATIVE_ISA = os.environ.get("TOKENWIRE_NATIVE_ISA", "auto")


def logit_tolerance(dtype: torch.dtype) -> dict[str, float]:
    """How close two paths' logits must be: fp32 nearly exact; bf16/fp16 within a few units of their
    last place (the tiny model's logits reach about 10, where a bf16 step is 0.0625)."""
    if dtype == torch.float32:
        return {"atol": 1e-4, "rtol": 1e-4}
    return {"atol": 0.25, "rtol": 0.03}


def tiny_load_config(model_dir: Path | str, dtype: str = TEST_DTYPE, **options) -> LoadConfig:
    """The tiny model on the test device, in TEST_DTYPE (fp32 by default), fused forward, no int8 copies
    (exact comparisons); `options` override LoadConfig fields."""
    return LoadConfig(str(model_dir), device=TEST_DEVICE, dtype=dtype,
                      **{"quantization": "none", "native_isa": TEST_NATIVE_ISA, **options})


@torch.inference_mode()
def reference_logits(model, token_ids: list[int]) -> torch.Tensor:
    """Logits at every position of transformers' own uncached forward pass."""
    input_ids = torch.tensor([token_ids], dtype=torch.long, device=model.device)
    return model(input_ids=input_ids).logits[0].float()


def make_core(loaded, prefix_cache: PrefixCacheConfig | None = None, **scheduler) -> EngineCore:
    """A core with these scheduler settings; no prefix cache unless one is configured."""
    return build_core(loaded, SchedulerConfig(**scheduler), prefix_cache)


def make_sequence(loaded, request_id: str, prompt_ids: list[int], params: SamplingParams,
                  events: list, index: int = 0, grammar: CompiledGrammar | None = None) -> Sequence:
    """One sequence as Engine.generate makes it (continuation `index` seeds from choice_seed)."""
    if params.max_tokens is None:
        params = replace(params, max_tokens=loaded.max_position_embeddings - len(prompt_ids))
    generator = None if params.is_greedy else make_generator(choice_seed(params.seed, index), loaded.device)
    return Sequence(request_id, list(prompt_ids), params, frozenset(loaded.eos_token_ids),
                    IncrementalDetokenizer(loaded.tokenizer, prompt_ids), generator, events.append, index=index,
                    matcher=None if grammar is None else grammar.matcher())


def make_request(loaded, request_id: str, prompt_ids: list[int], params: SamplingParams, events: list,
                 grammar: CompiledGrammar | None = None) -> Sequence:
    """A request's first sequence with its params.n - 1 forks attached, as Engine.generate does."""
    first = make_sequence(loaded, request_id, prompt_ids, params, events, 0, grammar)
    first.forks = [make_sequence(loaded, request_id, prompt_ids, params, events, index, grammar)
                   for index in range(1, params.n)]
    return first


def run_to_end(core: EngineCore, joins: dict[int, list[Sequence]] | None = None,
               max_steps: int = 10_000) -> None:
    """Step until idle; `joins` maps a step number to sequences added just before that step."""
    joins = dict(joins or {})
    for step in range(max_steps):
        for sequence in joins.pop(step, []):
            core.add(sequence)
        if not core.has_work and not joins:
            return
        if core.has_work:
            core.step()
    raise AssertionError("the engine did not finish")


def output_of(events: list[TokenEvent]) -> tuple[list[int], str, str | None]:
    ids = [i for e in events for i in e.token_ids]
    reason = events[-1].finish_reason.value if events and events[-1].finish_reason else None
    return ids, "".join(e.text for e in events), reason


def run_alone(loaded, prompt_ids: list[int], params: SamplingParams, **scheduler):
    events: list[TokenEvent] = []
    core = make_core(loaded, **scheduler)
    run_to_end(core, {0: [make_sequence(loaded, "alone", prompt_ids, params, events)]})
    return output_of(events)


async def wait_for_chores(engine, timeout_s: float = 60.0) -> None:
    """Until the engine's start-up chores (copies, kernel warming) are over."""
    deadline = time.monotonic() + timeout_s
    while engine.chores_left:
        assert time.monotonic() < deadline, "start-up chores did not finish"
        await asyncio.sleep(0.01)


def check_alone_chunked_and_left_padded(runner, prompts: list[list[int]], check) -> None:
    """`check(logits, ids)` on every position's logits of each prompt run alone, in two chunks (the
    second looking back over the first's cached keys) and left-padded among the others."""
    for ids in prompts:
        check(runner.prefill(runner.new_cache(), ids, 0, every_position=True), ids)
        cache, cut = runner.new_cache(), len(ids) // 2
        if cut:
            runner.prefill(cache, ids[:cut], 0)
        check(runner.prefill(cache, ids[cut:], cut, every_position=True), ids)
    _, _, batched = runner.prefill_batch(prompts)  # left-padded: positions are not columns
    for row, ids in enumerate(prompts):
        check(batched[row], ids)


def same_on_every_kernel_build(results_for_build) -> None:
    """`results_for_build(isa)` (a list of tensors) on each native build this CPU runs (AVX-512, AVX2,
    plain C) at 1 and 2 threads: all bit for bit the same."""
    from app.engine.models.hardware import detect_cpu_features
    from app.engine.native.library import ISA_NEEDS

    flags = detect_cpu_features().flags
    builds = [isa for isa in ("avx512", "avx2") if ISA_NEEDS[isa] <= flags] + ["generic"]
    results = []
    threads = torch.get_num_threads()
    try:
        for isa in builds:
            compute = results_for_build(isa)
            for count in (1, 2):
                torch.set_num_threads(count)
                results.append(compute())
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))
