"""Sliding layers that forget (KVStore keeps a sliding layer's last columns only) answer exactly as
keeping every column under the window mask does, on the fused forward and the native kernels: batched with late joiners,
chunked prompts, prefix-cache hits after forgetting; and the sliding layers' columns stay bounded.

Tiny windowed Mistral (every layer sliding) and Gemma 3 (sliding and full layers), fp32, window 8, on the
fused forward and on the native kernels; the
store's steps are shrunk here so a few dozen tokens forget many times over, and one long run uses the
real ones."""

from __future__ import annotations

import pytest

from app.engine.kv import kv_store
from app.engine.kv.kv_store import kept_columns
from app.engine.kv.prefix_cache import PrefixCacheConfig
from app.engine.models.loader import load
from app.engine.runner import ModelRunner
from app.engine.types import SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of, run_alone, run_to_end, tiny_load_config
from tests.engine.test_refused_models import _folder
from tests.engine.test_sliding_window import FAMILIES, TEXT, WINDOW

LONG = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)


@pytest.fixture(scope="module", params=[(family, forward) for forward in ("fused", "native")
                                        for family in ("mistral", "gemma3")], ids="-".join)
def loaded(request, tmp_path_factory, tiny_model_dir):
    """One windowed family on one forward: the fused torch forward, or the native kernels (whose lone rows
    also verify prompt-lookup drafts, so a draft pass's columns are taken back per layer)."""
    name, forward = request.param
    model_class, make_config, _ = FAMILIES[name]
    config = make_config()
    config.max_position_embeddings = 512  # room for the long runs below (the kernels' RoPE table ends there)
    folder = _folder(tmp_path_factory.mktemp(name), tiny_model_dir, model_class, config)
    loaded = load(tiny_load_config(folder, dtype="float32", native_kernels=forward == "native"))
    model = loaded.native or loaded.fused
    assert (loaded.native is not None) == (forward == "native"), loaded.runtime.forward
    assert any(model.windows)
    return loaded


@pytest.fixture
def small_steps(monkeypatch):
    monkeypatch.setattr(kv_store, "REUSE_MARGIN", 3)
    monkeypatch.setattr(kv_store, "FORGET_STEP", 5)


def _keeping_every_column(monkeypatch) -> None:
    monkeypatch.setattr(ModelRunner, "sliding_windows", property(lambda self: None))


def _batched(loaded, prompts, params=LONG) -> list[list[int]]:
    events: list[list] = [[] for _ in prompts]
    sequences = [make_sequence(loaded, f"r{i}", p, params, events[i]) for i, p in enumerate(prompts)]
    run_to_end(make_core(loaded), {0: sequences[:2], 7: sequences[2:3], 30: sequences[3:]})
    return [output_of(e)[0] for e in events]


def _prompts(loaded) -> list[list[int]]:
    ids = loaded.tokenizer.encode(TEXT)
    return [ids, ids[:5], ids[3:20], loaded.tokenizer.encode("def main():\n    print('hello')\n    return 42\n")]


def test_forgetting_answers_as_keeping_every_column_batched_and_alone(loaded, small_steps, monkeypatch):
    prompts = _prompts(loaded)
    forgetting = _batched(loaded, prompts)
    alone = [run_alone(loaded, p, LONG)[0] for p in prompts]
    _keeping_every_column(monkeypatch)
    assert make_core(loaded).store.windows is None
    assert forgetting == alone == _batched(loaded, prompts)


def test_sliding_layers_hold_a_bounded_number_of_columns(loaded, small_steps):
    core = make_core(loaded)
    events: list = []
    core.add(make_sequence(loaded, "a", _prompts(loaded)[0], LONG, events))
    widths = []
    while core.has_work:
        core.step()
        if core.store.cache is not None:
            widths.append([layer.get_seq_length() for layer in core.store.cache.layers])
            columns = core.store.num_columns
    windows = (loaded.native or loaded.fused).windows
    last = widths[-1]
    assert columns > 50
    for held, window in zip(last, windows):
        assert held == columns if window is None else held <= kept_columns(window) + kv_store.FORGET_STEP
    assert core.store.windows == windows


def test_a_prefix_hit_after_forgetting_matches_a_fresh_prefill(loaded, small_steps):
    ids = _prompts(loaded)[0]
    core = make_core(loaded, PrefixCacheConfig(min_tokens=4))
    first, second = [], []
    run_to_end(core, {0: [make_sequence(loaded, "a", ids, LONG, first)]})
    turn = ids + output_of(first)[0][:-1] + ids[:4]  # the next turn resends the whole conversation
    run_to_end(core, {0: [make_sequence(loaded, "b", turn, LONG, second)]})
    stats = core.prefix_cache_stats
    assert stats.hits == 1 and stats.reused_tokens == len(ids) + LONG.max_tokens - 1
    assert output_of(second)[0] == run_alone(loaded, turn, LONG)[0]
    # A prompt sharing less than the conversation's sliding layers still hold reuses the prompt's entry.
    third = []
    short = turn[:len(ids) + 10] + [7, 8]
    run_to_end(core, {0: [make_sequence(loaded, "c", short, LONG, third)]})
    assert core.prefix_cache_stats.reused_tokens - stats.reused_tokens == len(ids)
    assert output_of(third)[0] == run_alone(loaded, short, LONG)[0]


def test_a_chunked_long_prompt_matches_a_whole_one(loaded, small_steps):
    prompt = sum(_prompts(loaded), [])
    assert len(prompt) > kept_columns(WINDOW) + kv_store.FORGET_STEP
    assert run_alone(loaded, prompt, LONG, max_batched_tokens=7)[0] == run_alone(loaded, prompt, LONG)[0]


def test_the_real_steps_forget_on_a_long_generation_and_answer_the_same(loaded, monkeypatch):
    long = SamplingParams(temperature=0, max_tokens=kept_columns(WINDOW) + kv_store.FORGET_STEP + 20, ignore_eos=True)
    prompts = _prompts(loaded)[:2]
    forgetting = _batched(loaded, prompts, long)
    _keeping_every_column(monkeypatch)
    assert forgetting == _batched(loaded, prompts, long)
