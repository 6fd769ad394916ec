"""Gemma 2 and Gemma 3 (text) on the fused torch forward (app/engine/models/fused_gemma.py) compute transformers'
function: logits at every position and for left-padded rows equal transformers' uncached forward (fp32:
to 1e-4; bf16: within a few bf16 steps, no further from the fp32 function than transformers' own bf16
model), greedy tokens equal transformers' generate, rows batched together answer as alone, and a
prefix-cache hit answers as a fresh prefill, with windows shorter than the prompt and layers mixing
sliding and full attention. The loader's auto choice for them is the native kernels (which compute
FusedGemma's function: test_native_gemma.py), the fused forward with the kernels off, never transformers'
forward; the tests below that load with the kernels on (greedy tokens, batching, the prefix cache) check
them there too. A folder is read straight from its safetensors, to the same logits, whether its
config.json writes out its layer types and RoPE per layer type (as transformers 5 saves one) or is in the
shape the Hub ships (transformers 4.4x: rope_theta, rope_local_base_freq, rope_scaling,
sliding_window_pattern, class defaults left out).

Tiny random models (3 layers, hidden 64, window 6) with random norm weights (transformers starts
Gemma's at zeros, a scale of exactly 1, which would hide a wrong (1 + weight)), a query_pre_attn_scalar
unlike head_dim, Gemma 2's soft-caps low enough to bite, Gemma 3's local RoPE base apart from its
linearly scaled global RoPE, and its layer pattern from sliding_window_pattern.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

from app.engine.models.fused_gemma import FusedGemma
from app.engine.models.llama_checkpoint import open_checkpoint
from app.engine.models.loader import load
from app.engine.kv.prefix_cache import PrefixCacheConfig
from app.engine.types import SamplingParams
from tests.engine.helpers import (
    TEST_DTYPE,
    check_alone_chunked_and_left_padded,
    make_core,
    make_sequence,
    output_of,
    reference_logits,
    run_alone,
    run_to_end,
    tiny_load_config,
)
from tests.engine.test_parity import _hf_greedy
from tests.engine.test_refused_models import _folder

WINDOW = 6
SLIDING, FULL = "sliding_attention", "full_attention"
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=128, initializer_range=0.02, query_pre_attn_scalar=24,
             sliding_window=WINDOW)
CASES = {
    "gemma2": (Gemma2ForCausalLM, lambda: Gemma2Config(**SIZES, layer_types=[SLIDING, FULL, SLIDING],
                                                       attn_logit_softcapping=3.0, final_logit_softcapping=5.0)),
    "gemma3": (Gemma3ForCausalLM, lambda: Gemma3TextConfig(
        **SIZES, sliding_window_pattern=2, rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
        final_logit_softcapping=8.0)),
}
GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
PROMPTS = [list(range(3, 24)), [200, 7, 7, 31, 9, 150, 64, 2, 48, 121, 33, 99, 140, 12, 5], [77, 5], [42] * 9]


def _randomize_norms(folder: Path, model_class) -> None:
    model = model_class.from_pretrained(folder, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)


@pytest.fixture(scope="module", params=list(CASES))
def gemma_dir(request, tmp_path_factory, tiny_model_dir) -> Path:
    model_class, make_config = CASES[request.param]
    folder = _folder(tmp_path_factory.mktemp(request.param), tiny_model_dir, model_class, make_config())
    _randomize_norms(folder, model_class)
    return folder


_references: dict[tuple[Path, str], torch.nn.Module] = {}


def _reference(folder: Path, dtype: str = "float32"):
    if (folder, dtype) not in _references:
        _references[(folder, dtype)] = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    return _references[(folder, dtype)]


def test_the_auto_choice_is_the_native_kernels_else_the_fused_forward(gemma_dir):
    auto = load(tiny_load_config(gemma_dir))  # native kernels on, as a server starts
    assert auto.native is not None and auto.runtime.forward.startswith("native"), auto.runtime.forward
    loaded = load(tiny_load_config(gemma_dir, native_kernels=False))
    assert loaded.native is None and isinstance(loaded.fused, FusedGemma), loaded.runtime.forward
    assert loaded.runtime.forward.startswith("fused"), loaded.runtime.forward
    layer_types = _reference(gemma_dir).config.layer_types
    assert SLIDING in layer_types and FULL in layer_types
    assert [layer.window for layer in loaded.fused.layers] == [WINDOW if t == SLIDING else None for t in layer_types]


def _check_close(mine: torch.Tensor, folder: Path, dtype: str, ids: list[int]) -> None:
    expected = reference_logits(_reference(folder), ids)
    mine = mine if mine.dim() == 2 else mine[None]
    expected = expected[-mine.shape[0]:]
    if dtype == "float32":
        torch.testing.assert_close(mine, expected, atol=1e-4, rtol=1e-4)
        return
    theirs = reference_logits(_reference(folder, dtype), ids)[-mine.shape[0]:]
    assert (mine - expected).abs().max() <= 2 * (theirs - expected).abs().max() + 0.05
    torch.testing.assert_close(mine, theirs, atol=0.25, rtol=0.03)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_equal_transformers_alone_chunked_and_left_padded(gemma_dir, dtype):
    loaded = load(tiny_load_config(gemma_dir, dtype=dtype, native_kernels=False))
    assert isinstance(loaded.fused, FusedGemma)
    runner = make_core(loaded).runner
    check_alone_chunked_and_left_padded(runner, PROMPTS, lambda logits, ids: _check_close(logits, gemma_dir, dtype, ids))


def test_greedy_tokens_equal_transformers_generate_and_the_window_bites(gemma_dir):
    loaded = load(tiny_load_config(gemma_dir, dtype="float32"))
    reference = _reference(gemma_dir)
    answers = []
    for ids in PROMPTS[:2]:
        ours, _, _ = run_alone(loaded, ids, GREEDY)
        assert ours == _hf_greedy(reference, ids, GREEDY.max_tokens)
        answers.append(ours)
    assert len(set(answers[0])) > 1, "a degenerate model would prove nothing"
    full = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32,
                                                layer_types=[FULL] * len(reference.config.layer_types)).eval()
    assert any(_hf_greedy(full, ids, GREEDY.max_tokens) != ours for ids, ours in zip(PROMPTS, answers)), \
        "the window should change an answer"


def test_rows_batched_together_answer_as_alone(gemma_dir):
    loaded = load(tiny_load_config(gemma_dir, dtype=TEST_DTYPE))
    alone = [run_alone(loaded, ids, GREEDY)[0] for ids in PROMPTS]
    events: list[list] = [[] for _ in PROMPTS]
    sequences = [make_sequence(loaded, f"r{i}", ids, GREEDY, events[i]) for i, ids in enumerate(PROMPTS)]
    # Three prompts prefilled together (left-padded), one joining while they decode.
    run_to_end(make_core(loaded), {0: sequences[:3], 7: sequences[3:]})
    assert [output_of(e)[0] for e in events] == alone


def test_a_prefix_cache_hit_answers_as_a_fresh_prefill(gemma_dir):
    loaded = load(tiny_load_config(gemma_dir, dtype=TEST_DTYPE))
    ids = PROMPTS[0]
    core = make_core(loaded, PrefixCacheConfig(min_tokens=4))
    first, second = [], []
    run_to_end(core, {0: [make_sequence(loaded, "a", ids[:2 * WINDOW + 1], GREEDY, first)]})
    run_to_end(core, {0: [make_sequence(loaded, "b", ids, GREEDY, second)]})
    assert core.prefix_cache_stats.hits == 1
    assert output_of(second)[0] == run_alone(loaded, ids, GREEDY)[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_read_directly_it_computes_what_it_computes_through_transformers(gemma_dir, dtype):
    direct = load(tiny_load_config(gemma_dir, dtype=dtype, native_kernels=False))
    through = load(tiny_load_config(gemma_dir, dtype=dtype, read_checkpoints=False, native_kernels=False))
    assert direct.model is None and through.model is not None, "read without transformers' modeling code"
    assert isinstance(direct.fused, FusedGemma) and direct.runtime.forward == through.runtime.forward
    direct_runner, through_runner = make_core(direct).runner, make_core(through).runner
    for ids in PROMPTS:
        assert torch.equal(direct_runner.prefill(direct_runner.new_cache(), ids, 0, every_position=True),
                           through_runner.prefill(through_runner.new_cache(), ids, 0, every_position=True))


# config.json rewritten in the shape the Hub ships it (transformers 4.4x): no layer_types, rope_theta /
# rope_local_base_freq / rope_scaling instead of rope_parameters, class defaults (tie_word_embeddings)
# left out, hidden_act beside hidden_activation, cache_implementation, Gemma 3's attention cap null.
_LEGACY = {
    "gemma2": [{"rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh", "cache_implementation": "hybrid",
                "transformers_version": "4.42.4"}],
    "gemma3": [
        # gemma-3-4b's text part: linear scaling on the global layers, the pattern written as a number
        {"rope_theta": 1000000.0, "rope_local_base_freq": 100.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0},
         "sliding_window_pattern": 2, "attn_logit_softcapping": None, "cache_implementation": "hybrid",
         "transformers_version": "4.50.0.dev0"},
        # gemma-3-1b's shape: no scaling, no caps, a pattern of 3 ([sliding, sliding, full])
        {"rope_theta": 5000.0, "rope_local_base_freq": 10000, "rope_scaling": None, "sliding_window_pattern": 3,
         "final_logit_softcapping": None, "attn_logit_softcapping": None, "cache_implementation": "hybrid"},
        # the pattern left to the class default (6: every layer of three slides), legacy "type" spelling
        {"rope_theta": 20000.0, "rope_scaling": {"type": "linear", "factor": 4.0}},
    ],
}


def _legacy_folders(folder: Path, tmp_path: Path) -> list[Path]:
    stored = json.loads((folder / "config.json").read_text())
    family = stored["model_type"].removesuffix("_text")
    folders = []
    for index, fields in enumerate(_LEGACY[family]):
        legacy = tmp_path / f"legacy-{index}"
        legacy.mkdir()
        for file in folder.iterdir():
            if file.is_file():
                (legacy / file.name).write_bytes(file.read_bytes())
        config = {key: value for key, value in stored.items()
                  if key not in ("layer_types", "rope_parameters", "tie_word_embeddings", "dtype")}
        (legacy / "config.json").write_text(json.dumps(config | fields))
        folders.append(legacy)
    return folders


def test_a_hub_config_from_transformers_4_is_read_directly_to_transformers_logits(gemma_dir, tmp_path):
    """Hub configs from before transformers 5 leave the layer pattern and per-type RoPE to the config
    class: read directly all the same (families/gemma_config.py), to the logits transformers computes
    from the same folder, layer windows and RoPE tables included."""
    for folder in _legacy_folders(gemma_dir, tmp_path):
        checkpoint = open_checkpoint(str(folder))
        assert not isinstance(checkpoint, str), checkpoint
        loaded = load(tiny_load_config(folder, dtype="float32", native_kernels=False))
        assert loaded.model is None and isinstance(loaded.fused, FusedGemma), loaded.runtime.forward
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        layer_types = reference.config.layer_types
        assert [layer.layer_type for layer in loaded.fused.layers] == layer_types
        assert [layer.window for layer in loaded.fused.layers] == [WINDOW if t == SLIDING else None for t in layer_types]
        assert loaded.fused.final_cap == reference.config.final_logit_softcapping
        runner = make_core(loaded).runner
        for ids in PROMPTS:
            torch.testing.assert_close(runner.prefill(runner.new_cache(), ids, 0, every_position=True),
                                       reference_logits(reference, ids), atol=1e-4, rtol=1e-4)
        ids = PROMPTS[0]
        assert run_alone(loaded, ids, GREEDY)[0] == _hf_greedy(reference, ids, GREEDY.max_tokens)


def test_what_a_hub_config_asks_beyond_the_direct_read_is_refused_naming_the_field(gemma_dir, tmp_path):
    folder = _legacy_folders(gemma_dir, tmp_path)[0]
    config = json.loads((folder / "config.json").read_text())
    for fields, named in (({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_type='yarn'"),
                          ({"hidden_activation": "gelu"}, "hidden_activation 'gelu'")):
        (folder / "config.json").write_text(json.dumps(config | fields))
        refusal = open_checkpoint(str(folder))
        assert isinstance(refusal, str) and named in refusal and "\n" not in refusal, refusal
