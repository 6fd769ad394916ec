"""Each family in the registry (app/engine/models/families/) read straight from its safetensors computes what
transformers' own model does: on torch's fused forward and on the native kernels, in fp32 and bf16;
the kernels batch it exactly as they run it alone; a checkpoint on the Q4_1 grid packs to 4 bits with
the dense logits; what the fast path cannot compute keeps transformers' forward.

(Llama, Qwen2 and Mistral are checked the same way in test_llama_checkpoint.py; here Qwen3, with its
per-head q/k norms and a head_dim of its own, and Phi-3, whose q/k/v and gate/up are stored fused.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Phi3Config, Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from app.engine.models import families
from app.engine.models.llama_checkpoint import fused_from_checkpoint, open_checkpoint
from app.engine.models.loader import load
from app.engine.types import SamplingParams
from tests.engine.helpers import (
    TEST_DTYPE,
    logit_tolerance,
    make_core,
    make_sequence,
    output_of,
    reference_logits,
    run_alone,
    run_to_end,
    same_on_every_kernel_build,
    tiny_load_config,
)

PROMPT_IDS = [[3, 17, 42, 5, 88, 11, 60], [200, 7, 7, 31], [9, 150, 64, 2, 48, 121, 33, 99, 140, 12, 5], [77]]
SIZES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, initializer_range=0.5)
# name -> (transformers classes, config options): a head_dim of Qwen3's own (32, not 64 / 4), a tied head
# and no biases; Qwen3 with attention_bias (q/k/v/o biases) and its own head; Phi-3 with GQA.
CASES = {
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=32, tie_word_embeddings=True)),
    "qwen3-biases": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16, attention_bias=True, tie_word_embeddings=False)),
    "phi3": (Phi3Config, Phi3ForCausalLM, dict(tie_word_embeddings=False)),
}


def _grid(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Weights of this shape lying exactly on GGUF's Q4_1 grid (groups of 32 inputs; levels 0..15 times
    an fp16 scale plus an fp16 minimum), as a checkpoint converted from a Q4_1 GGUF holds them."""
    n, k = weight.shape
    levels = torch.randint(0, 16, (n, k // 32, 32), generator=generator).float()
    levels[..., 0], levels[..., 1] = 0, 15
    scale = (torch.rand(n, k // 32, 1, generator=generator) * 0.05 + 0.05).half().float()
    minimum = (-7.5 * scale + torch.randn(n, k // 32, 1, generator=generator) * 0.02).half().float()
    return (levels * scale + minimum).view(n, k)


def build_family_model(folder: Path, tokenizer_dir: Path, name: str, on_grid: bool = False, **options) -> Path:
    """A tiny random model of that family (2 layers, hidden 64) with the conftest tokenizer, saved as a hub
    folder. Norm weights are random too (transformers starts them at ones, which would hide them)."""
    config_class, model_class, case_options = CASES[name]
    tokenizer_config = json.loads((tokenizer_dir / "config.json").read_text())
    config = config_class(**SIZES, **{**case_options, **options}, vocab_size=tokenizer_config["vocab_size"],
                          eos_token_id=tokenizer_config["eos_token_id"], bos_token_id=tokenizer_config["bos_token_id"],
                          pad_token_id=tokenizer_config.get("pad_token_id"))  # Phi3Config's default is past this vocabulary
    torch.manual_seed(0)
    model = model_class(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module_name, parameter in model.named_parameters():
            if module_name.endswith("norm.weight"):
                parameter.copy_(1 + 0.3 * torch.randn(parameter.shape, generator=generator))
            elif on_grid and parameter.dim() == 2 and parameter.shape[1] % 32 == 0:
                parameter.copy_(_grid(parameter, generator))
    model.save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / file).exists():
            (folder / file).write_bytes((tokenizer_dir / file).read_bytes())
    return folder


@pytest.fixture(scope="module", params=list(CASES))
def family_dir(request, tmp_path_factory, tiny_model_dir) -> Path:
    return build_family_model(tmp_path_factory.mktemp(request.param), tiny_model_dir, request.param)


_references: dict[tuple[Path, str], torch.nn.Module] = {}


def _reference(folder: Path, dtype: str):
    """transformers' own model for the folder (loaded once per dtype)."""
    if (folder, dtype) not in _references:
        _references[(folder, dtype)] = load(tiny_load_config(folder, dtype=dtype, read_checkpoints=False,
                                                             fused_forward=False)).model
    return _references[(folder, dtype)]


def _last_logits(loaded, ids: list[int]) -> torch.Tensor:
    runner = make_core(loaded).runner
    return runner.prefill(runner.new_cache(), ids, 0)


def test_every_family_is_registered_under_transformers_own_names():
    registered = {family.model_type: family.architecture for family in families.families()}
    assert set(registered) >= {"llama", "qwen2", "mistral", "qwen3", "phi3"}
    for model_type, architecture in registered.items():
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == architecture
        assert families.by_architecture(architecture) is families.by_model_type(model_type)
    assert families.by_model_type("gemma") is None and families.by_architecture("GemmaForCausalLM") is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("forward", ["torch", "native"])
def test_read_directly_it_computes_transformers_logits(family_dir, dtype, forward):
    direct = load(tiny_load_config(family_dir, dtype=dtype, native_kernels=forward == "native"))
    through = load(tiny_load_config(family_dir, dtype=dtype, native_kernels=forward == "native",
                                    read_checkpoints=False))
    assert direct.model is None, "read from the checkpoint, without transformers' model"
    assert direct.runtime.forward.startswith("native" if forward == "native" else "fused"), direct.runtime.forward
    assert through.runtime.forward.startswith("native" if forward == "native" else "fused"), through.runtime.forward
    assert direct.dims == through.dims
    for ids in PROMPT_IDS:
        expected = reference_logits(_reference(family_dir, "float32"), ids)[-1]
        mine = _last_logits(direct, ids)
        if dtype == "float32":
            torch.testing.assert_close(mine, expected, atol=1e-4, rtol=1e-4)
        else:
            # bf16 weights move these logits (up to ~16) by a few bf16 steps: no further from the fp32
            # function than transformers' own bf16 model is (measured: 0.06-0.42 here, theirs 0.13-0.35).
            theirs = reference_logits(_reference(family_dir, dtype), ids)[-1]
            assert (mine - expected).abs().max() <= 2 * (theirs - expected).abs().max() + 0.05
            torch.testing.assert_close(mine, theirs, atol=0.5, rtol=0.05)
        if forward == "native" and dtype == "bfloat16":
            # An fp32 checkpoint bound for the kernels is read in fp32 (loader._read_dtype): its norm weights
            # stay fp32, where transformers' bf16 model rounds them to bf16 first.
            torch.testing.assert_close(mine, _last_logits(through, ids), **logit_tolerance(torch.bfloat16))
        else:
            assert torch.equal(mine, _last_logits(through, ids)), "the same weights either way"


@pytest.mark.parametrize("forward", ["torch", "native"])
def test_greedy_tokens_are_transformers_greedy_tokens(family_dir, forward):
    loaded = load(tiny_load_config(family_dir, dtype="float32", native_kernels=forward == "native"))
    reference = _reference(family_dir, "float32")
    for prompt in PROMPT_IDS[:3]:
        ids, _, _ = run_alone(loaded, prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
        expected = list(prompt)
        for _ in range(12):
            expected.append(int(reference_logits(reference, expected)[-1].argmax()))
        assert ids == expected[len(prompt):]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_on_the_kernels_rows_batched_together_answer_as_alone(family_dir, dtype):
    loaded = load(tiny_load_config(family_dir, dtype=dtype))
    assert loaded.native is not None, loaded.runtime.forward
    requests = [(ids, SamplingParams(temperature=0, max_tokens=6 + 3 * i, ignore_eos=True))
                for i, ids in enumerate(PROMPT_IDS)]
    alone = [run_alone(loaded, ids, params) for ids, params in requests]
    core = make_core(loaded)
    events = [[] for _ in requests]
    joins: dict[int, list] = {}
    for index, ((ids, params), step) in enumerate(zip(requests, [0, 0, 2, 5])):
        joins.setdefault(step, []).append(make_sequence(loaded, f"r{index}", ids, params, events[index]))
    run_to_end(core, joins)
    assert [output_of(e) for e in events] == alone


@pytest.mark.parametrize("name", list(CASES))
def test_a_checkpoint_on_the_q4_grid_packs_to_4_bits_with_the_dense_logits(tmp_path, tiny_model_dir, name):
    folder = build_family_model(tmp_path / name, tiny_model_dir, name, on_grid=True)
    packed = load(tiny_load_config(folder, dtype="float32", quantization="auto"))
    dense = load(tiny_load_config(folder, dtype="float32", quantization="none"))
    layers = SIZES["num_hidden_layers"]
    assert packed.native.weight_formats["q4"] >= 4 * layers, packed.native.weight_formats  # every layer matrix
    assert set(dense.native.weight_formats) == {"f32"}
    again = load(tiny_load_config(folder, dtype="float32", quantization="auto"))
    assert again.native.keep_alive is not None, "the second start maps the first one's pack"
    reference = _reference(folder, "float32")
    for ids in PROMPT_IDS:
        logits = _last_logits(packed, ids)
        assert torch.equal(logits, _last_logits(dense, ids))
        assert torch.equal(logits, _last_logits(again, ids))
        torch.testing.assert_close(logits, reference_logits(reference, ids)[-1], atol=1e-4, rtol=1e-4)


LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}


@pytest.mark.parametrize("name, options, field", [
    ("phi3", dict(partial_rotary_factor=0.5), "partial_rotary_factor=0.5"),
    ("phi3", dict(rope_scaling=LONGROPE, original_max_position_embeddings=64), "'longrope'"),
], ids=["partial-rotary", "longrope"])
def test_what_the_fast_path_cannot_compute_runs_on_transformers_forward(tmp_path, tiny_model_dir, name, options, field):
    folder = build_family_model(tmp_path / name, tiny_model_dir, name, **options)
    refusal = open_checkpoint(str(folder))
    assert isinstance(refusal, str) and field in refusal
    loaded = load(tiny_load_config(folder, dtype="float32"))
    assert loaded.model is not None and loaded.runtime.forward.startswith("transformers (") \
        and field in loaded.runtime.forward, loaded.runtime.forward
    ids = PROMPT_IDS[0]
    torch.testing.assert_close(_last_logits(loaded, ids), reference_logits(loaded.model, ids)[-1], atol=1e-4, rtol=1e-4)


def test_qwen3_needs_its_head_dim_written_out(tmp_path, tiny_model_dir):
    folder = build_family_model(tmp_path / "qwen3", tiny_model_dir, "qwen3")
    config = json.loads((folder / "config.json").read_text())
    del config["head_dim"]  # Qwen3Config's default is 128, not hidden / heads
    (folder / "config.json").write_text(json.dumps(config))
    assert "head_dim" in open_checkpoint(str(folder))


def test_a_window_no_shorter_than_the_context_is_read_as_full_attention(tmp_path, tiny_model_dir):
    """Phi-3-mini-4k's config has sliding_window 2047: served with at most that context, every layer
    is full attention, and the checkpoint is read directly (as from_pretrained gets the override)."""
    folder = build_family_model(tmp_path / "phi3", tiny_model_dir, "phi3", sliding_window=100)
    windowed = open_checkpoint(str(folder))  # the window shorter than the 128 positions: read as it slides
    assert [layer.window for layer in fused_from_checkpoint(windowed, torch.float32, torch.device("cpu")).layers] == [100] * 2
    loaded = load(tiny_load_config(folder, dtype=TEST_DTYPE, max_model_len=100))
    assert loaded.model is None and loaded.native is not None, loaded.runtime.forward
    assert not any(loaded.native.windows)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_kernel_build_and_thread_count_computes_the_same_logits(family_dir, dtype):
    """The per-head norms are the kernels' fixed arithmetic too: AVX-512, AVX2 and plain C builds agree bit for bit."""
    def results_for_build(isa: str):
        loaded = load(tiny_load_config(family_dir, dtype=dtype, native_isa=isa))
        assert loaded.native is not None and loaded.native.library.isa == isa
        return lambda: [_last_logits(loaded, ids) for ids in PROMPT_IDS]
    same_on_every_kernel_build(results_for_build)
