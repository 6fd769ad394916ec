"""Sliding-window and hybrid attention on transformers' forward and, for the families it computes (Gemma 2
and 3: FusedGemma; Mistral and Qwen2: FusedLlama), on the fused forward (the native kernels' auto choice
for them is checked here, their numbers in test_native_gemma.py), with continuous batching and the
prefix cache, exact in fp32: the engine's greedy tokens equal transformers' own generate(), batched rows equal
solo ones, a chunked prompt equals a whole one, and a prefix-cache hit equals a fresh prefill.

Tiny random models of each family (2 layers, hidden 64, window 8) with the tiny Llama's tokenizer; the
prompt (23 tokens) and the 24 generated tokens run well past the window, and a test checks that the
window changes the answer (else these comparisons would prove nothing about it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Cohere2Config, Cohere2ForCausalLM, Gemma2Config, Gemma2ForCausalLM
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GptOssConfig, GptOssForCausalLM, MistralConfig
from transformers import MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from app.engine.kv.kv_store import check_plain_cache
from app.engine.models.loader import load
from app.engine.kv.prefix_cache import PrefixCacheConfig
from app.engine.kv.slab_cache import SlabLayer
from app.engine.types import SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of, run_alone, run_to_end, tiny_load_config
from tests.engine.test_parity import _hf_greedy
from tests.engine.test_refused_models import SIZES, _folder

WINDOW = 8
HYBRID = ["sliding_attention", "full_attention"]
# Gemma's softcapped logits saturate on one token with the other families' large initial weights.
GEMMA = {**SIZES, "initializer_range": 0.02, "head_dim": 16}
FAMILIES = {
    "mistral": (MistralForCausalLM, lambda: MistralConfig(**SIZES, sliding_window=WINDOW), {"sliding_window": None}),
    "qwen2": (Qwen2ForCausalLM, lambda: Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=WINDOW,
                                                    max_window_layers=1), None),
    "gemma2": (Gemma2ForCausalLM, lambda: Gemma2Config(**GEMMA, sliding_window=WINDOW, layer_types=HYBRID), None),
    "gemma3": (Gemma3ForCausalLM, lambda: Gemma3TextConfig(**GEMMA, sliding_window=WINDOW, layer_types=HYBRID), None),
    "gpt_oss": (GptOssForCausalLM, lambda: GptOssConfig(**SIZES, head_dim=16, sliding_window=WINDOW, layer_types=HYBRID,
                                                        num_local_experts=4, num_experts_per_tok=2), None),
    "cohere2": (Cohere2ForCausalLM, lambda: Cohere2Config(**SIZES, sliding_window=WINDOW, layer_types=HYBRID), None),
}
# The families whose windows the fused forward computes too: each runs on both forwards here.
FUSED = ("mistral", "qwen2", "gemma2", "gemma3")
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
TEXT = "The capital of France is Paris. The capital of Japan is Tokyo. Hello world! How are you today?"


ON_EACH_FORWARD = [(name, "transformers") for name in FAMILIES] + [(name, "fused") for name in FUSED]


@pytest.fixture(scope="module", params=ON_EACH_FORWARD, ids=lambda param: "-".join(param))
def family(request, tmp_path_factory, tiny_model_dir):
    """(name, folder, loaded model) of one family, windowed, on one forward."""
    name, forward = request.param
    model_class, make_config, _ = FAMILIES[name]
    folder = _folder(tmp_path_factory.mktemp(name), tiny_model_dir, model_class, make_config())
    loaded = load(tiny_load_config(folder, dtype="float32", native_kernels=False, fused_forward=forward == "fused"))
    assert loaded.runtime.forward.startswith(forward), loaded.runtime.forward
    return name, folder, loaded


def _ids(loaded, text: str = TEXT) -> list[int]:
    return loaded.tokenizer.encode(text)


def test_every_layer_keeps_every_column(family):
    _, _, loaded = family
    assert loaded.native is None and (loaded.fused is None) == loaded.runtime.forward.startswith("transformers")
    cache = make_core(loaded).runner.new_cache()
    check_plain_cache(cache)
    assert all(isinstance(layer, SlabLayer) for layer in cache.layers)


def test_greedy_tokens_match_transformers_generate_and_the_window_bites(family):
    name, folder, loaded = family
    ids = _ids(loaded)
    assert len(ids) > 2 * WINDOW
    ours, _, reason = run_alone(loaded, ids, GREEDY)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert reason == "length" and len(set(ours)) > 1
    assert ours == _hf_greedy(reference, ids, GREEDY.max_tokens)
    overrides = FAMILIES[name][2] or {"layer_types": ["full_attention"] * len(reference.config.layer_types)}
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **overrides).eval()
    assert _hf_greedy(full, ids, GREEDY.max_tokens) != ours, "the window should change the answer"


def test_batched_rows_of_other_lengths_joining_late_match_running_alone(family):
    _, _, loaded = family
    ids = _ids(loaded)
    prompts = [ids, ids[:5], ids[3:20], ids[:WINDOW], _ids(loaded, "def main():\n    print('hello')\n    return 42\n")]
    alone = [run_alone(loaded, prompt, GREEDY)[0] for prompt in prompts]
    events: list[list] = [[] for _ in prompts]
    sequences = [make_sequence(loaded, f"r{i}", prompt, GREEDY, events[i]) for i, prompt in enumerate(prompts)]
    # Three prompts prefilled together (left-padded), then joiners while the others decode.
    run_to_end(make_core(loaded), {0: sequences[:3], 4: sequences[3:4], 11: sequences[4:]})
    assert [output_of(e)[0] for e in events] == alone


def test_a_chunked_prompt_matches_a_whole_one(family):
    _, _, loaded = family
    ids = _ids(loaded)
    assert run_alone(loaded, ids, GREEDY, max_batched_tokens=5)[0] == run_alone(loaded, ids, GREEDY)[0]


def test_a_prefix_cache_hit_matches_a_fresh_prefill(family):
    _, _, loaded = family
    ids = _ids(loaded)
    fresh = run_alone(loaded, ids, GREEDY)[0]
    core = make_core(loaded, PrefixCacheConfig(min_tokens=4))
    first, second, third = [], [], []
    run_to_end(core, {0: [make_sequence(loaded, "a", ids[:2 * WINDOW + 3], GREEDY, first)]})
    run_to_end(core, {0: [make_sequence(loaded, "b", ids, GREEDY, second)]})
    assert core.prefix_cache_stats.hits == 1 and core.prefix_cache_stats.reused_tokens == 2 * WINDOW + 3
    assert output_of(second)[0] == fresh
    # The next turn: the whole conversation (past the window many times over) comes from the cache.
    turn = ids + output_of(second)[0][:-1] + ids[:4]
    run_to_end(core, {0: [make_sequence(loaded, "c", turn, GREEDY, third)]})
    assert core.prefix_cache_stats.reused_tokens > 2 * WINDOW + 3 + len(ids)
    assert output_of(third)[0] == run_alone(loaded, turn, GREEDY)[0]


def test_the_auto_choice_for_a_window_is_the_native_kernels(family):
    """The native kernels compute windows and Gemma's layers: a server's default start runs the families
    the fused forward computes on them (test_native_gemma.py checks their numbers), the window in place."""
    name, folder, loaded = family
    if loaded.fused is None:
        pytest.skip("on transformers' forward")
    auto = load(tiny_load_config(folder, dtype="float32"))
    assert auto.native is not None and auto.runtime.forward.startswith("native"), auto.runtime.forward
    assert [layer.window for layer in auto.native.layers] == [layer.window or 0 for layer in loaded.fused.layers]
    assert any(layer.window == WINDOW for layer in auto.native.layers)


def test_a_windowed_folder_of_a_fast_family_is_read_straight_from_safetensors(family):
    """Mistral's window (every layer) and Qwen2's and Gemma's (layer_types written out) are read with the
    checkpoint, no transformers model built; the tests above then hold for what was read."""
    _, _, loaded = family
    if loaded.fused is None:
        pytest.skip("on transformers' forward")
    assert loaded.model is None, loaded.runtime.forward
    assert any(layer.window == WINDOW for layer in loaded.fused.layers)
