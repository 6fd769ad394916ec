"""Gemma 2 / Gemma 3 layers and sliding windows on the native kernels (app/engine/native/csrc/forward.c):
the loader's auto choice runs them there, and they compute transformers' function (fp32: to 1e-4; bf16:
within a few bf16 steps, no further from the fp32 function than transformers' own bf16 model), alone,
chunked and left-padded; rows batched together answer exactly as alone; a windowed Mistral and a
windowed Gemma decode transformers' greedy tokens; a Gemma checkpoint on the Q4_1 grid packs to 4 bits
with the dense model's logits (and a second start maps that pack); every kernel build and thread count
computes the same bits (the tanh of the caps and of GELU included); and `layer_offsets` moves where a
layer's KV sits in its buffers without changing a logit.

The Gemma models are test_fused_gemma.py's (3 layers, window 6, random norms, Gemma 2's caps low enough
to bite, Gemma 3's local RoPE apart from its scaled global RoPE).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

from app.engine.models.loader import load
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
    same_on_every_kernel_build,
    tiny_load_config,
)
from tests.engine.test_families import _grid
from tests.engine.test_fused_gemma import CASES, PROMPTS, SIZES, WINDOW, _check_close, _reference, _randomize_norms
from tests.engine.test_fused_gemma import gemma_dir  # noqa: F401 - the fixture, one per Gemma version
from tests.engine.test_parity import _hf_greedy
from tests.engine.test_refused_models import _folder

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def _native(folder: Path, dtype: str = TEST_DTYPE, **options):
    loaded = load(tiny_load_config(folder, dtype=dtype, **options))
    assert loaded.native is not None and loaded.fused is None, loaded.runtime.forward
    assert loaded.runtime.forward.startswith("native"), loaded.runtime.forward
    return loaded


def test_the_auto_choice_is_the_native_kernels_with_gemmas_layers(gemma_dir):
    loaded = _native(gemma_dir, "float32")
    config = _reference(gemma_dir).config
    native = loaded.native
    assert [layer.window for layer in native.layers] == [WINDOW if t == "sliding_attention" else 0
                                                         for t in config.layer_types]
    assert all(layer.pre_mlp_norm is not None and layer.post_mlp_norm is not None for layer in native.layers)
    assert native.scales.activation == "gelu_tanh"
    assert native.scales.attention_scale == config.query_pre_attn_scalar ** -0.5
    assert native.scales.final_cap == config.final_logit_softcapping
    assert native.scales.attention_cap == getattr(config, "attn_logit_softcapping", None)
    if config.model_type == "gemma3":  # local layers read their own RoPE table
        local = [layer.rope for layer in native.layers if layer.window]
        assert local and all(table is not None and not torch.equal(table.cos, native.rope.cos) for table in local)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_equal_transformers_alone_chunked_and_left_padded(gemma_dir, dtype):
    runner = make_core(_native(gemma_dir, dtype)).runner
    check_alone_chunked_and_left_padded(runner, PROMPTS, lambda logits, ids: _check_close(logits, gemma_dir, dtype, ids))


def test_greedy_tokens_equal_transformers_and_batched_rows_answer_as_alone(gemma_dir):
    loaded = _native(gemma_dir, "float32")
    reference = _reference(gemma_dir)
    alone = [run_alone(loaded, ids, GREEDY)[0] for ids in PROMPTS]
    for ids, ours in zip(PROMPTS[:2], alone):
        assert ours == _hf_greedy(reference, ids, GREEDY.max_tokens)
    assert len(set(alone[0])) > 1, "a degenerate model would prove nothing"
    events: list[list] = [[] for _ in PROMPTS]
    sequences = [make_sequence(loaded, f"r{i}", ids, GREEDY, events[i]) for i, ids in enumerate(PROMPTS)]
    run_to_end(make_core(loaded), {0: sequences[:3], 7: sequences[3:]})
    assert [output_of(e)[0] for e in events] == alone


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_kernel_build_and_thread_count_computes_the_same_logits(gemma_dir, dtype):
    def results_for_build(isa: str):
        runner = make_core(_native(gemma_dir, dtype, native_isa=isa)).runner
        return lambda: [runner.prefill(runner.new_cache(), ids, 0, every_position=True) for ids in PROMPTS]
    same_on_every_kernel_build(results_for_build)


def test_layer_offsets_move_the_kv_columns_not_the_logits(gemma_dir):
    """A pass whose layers' buffers are shifted (column 0 holding logical column `offset`) computes the same
    logits bit for bit and writes each layer's KV `offset` columns earlier; a sliding layer then needs only
    the columns of its window (a decode step reading a buffer that lost the older ones)."""
    native = _native(gemma_dir, "float32").native
    dims, ids = native.dims, PROMPTS[0]
    n, first = len(ids), 5  # the row's position 0 at logical column 5

    def buffers(columns: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, dims.num_kv_heads, columns, dims.head_dim),
                 torch.zeros(1, dims.num_kv_heads, columns, dims.head_dim)) for _ in range(dims.num_layers)]

    plain = buffers(first + n + 1)
    expected = native.run(ids, range(n), [0] * n, [first], plain, range(n))
    offsets = [first, 3, 1][: dims.num_layers]  # any offset up to the first column read
    shifted = buffers(first + n + 1)
    logits = native.run(ids, range(n), [0] * n, [first], shifted, range(n), layer_offsets=offsets)
    assert torch.equal(logits, expected)
    for (keys, values), (k, v), offset in zip(plain, shifted, offsets):
        assert torch.equal(k[:, :, first - offset: first - offset + n], keys[:, :, first: first + n])
        assert torch.equal(v[:, :, first - offset: first - offset + n], values[:, :, first: first + n])
    with pytest.raises(AssertionError):  # past a column the full layers still read
        native.run(ids, range(n), [0] * n, [first], buffers(first + n), range(n), layer_offsets=[first + 1] * 3)

    # Decoding position n: sliding layers keep only their window's last columns, moved to column 0.
    expected = native.run([7], [n], [0], [first], plain, [0])
    offsets = [first + n - (layer.window - 1) if layer.window else 0 for layer in native.layers]
    assert any(offsets) and all(o > first for o in offsets if o)
    trimmed = buffers(first + n + 1)
    for (keys, values), (k, v), offset in zip(plain, trimmed, offsets):
        k[:, :, : first + n - offset] = keys[:, :, offset: first + n]  # the rest stays zeros
        v[:, :, : first + n - offset] = values[:, :, offset: first + n]
    assert torch.equal(native.run([7], [n], [0], [first], trimmed, [0], layer_offsets=offsets), expected)


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory, tiny_model_dir) -> Path:
    sizes = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.5)
    return _folder(tmp_path_factory.mktemp("mistral"), tiny_model_dir, MistralForCausalLM,
                   MistralConfig(**sizes, sliding_window=WINDOW))


def test_a_windowed_mistral_runs_on_the_kernels_as_transformers_does(mistral_dir):
    loaded = _native(mistral_dir, "float32")
    assert [layer.window for layer in loaded.native.layers] == [WINDOW, WINDOW]
    reference = AutoModelForCausalLM.from_pretrained(mistral_dir, dtype=torch.float32).eval()
    full = AutoModelForCausalLM.from_pretrained(mistral_dir, dtype=torch.float32, sliding_window=None).eval()
    runner = make_core(loaded).runner
    ids = PROMPTS[0]  # 21 tokens, past the window three times over
    torch.testing.assert_close(runner.prefill(runner.new_cache(), ids, 0, every_position=True),
                               reference_logits(reference, ids), atol=1e-4, rtol=1e-4)
    ours = run_alone(loaded, ids, GREEDY)[0]
    assert ours == _hf_greedy(reference, ids, GREEDY.max_tokens)
    assert ours != _hf_greedy(full, ids, GREEDY.max_tokens), "the window should change the answer"
    alone = [run_alone(loaded, prompt, GREEDY)[0] for prompt in PROMPTS]
    events: list[list] = [[] for _ in PROMPTS]
    sequences = [make_sequence(loaded, f"r{i}", p, GREEDY, events[i]) for i, p in enumerate(PROMPTS)]
    run_to_end(make_core(loaded), {0: sequences[:3], 5: sequences[3:]})
    assert [output_of(e)[0] for e in events] == alone


@pytest.mark.parametrize("name", list(CASES))
def test_a_gemma_checkpoint_on_the_q4_grid_packs_to_4_bits_with_the_dense_logits(tmp_path, tiny_model_dir, name):
    model_class, make_config = CASES[name]
    folder = _folder(tmp_path / name, tiny_model_dir, model_class, make_config())
    _randomize_norms(folder, model_class)
    model = model_class.from_pretrained(folder, dtype=torch.float32)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter.dim() == 2 and parameter.shape[1] % 32 == 0 and "embed" not in parameter_name:
                parameter.copy_(_grid(parameter, generator) * 0.125)  # still on the grid: small, as Gemma wants
    model.save_pretrained(folder)
    packed = load(tiny_load_config(folder, dtype="float32", quantization="auto"))
    dense = load(tiny_load_config(folder, dtype="float32", quantization="none"))
    assert packed.native is not None and dense.native is not None, packed.runtime.forward
    layers = SIZES["num_hidden_layers"]
    assert packed.native.weight_formats["q4"] >= 4 * layers, packed.native.weight_formats  # every layer matrix
    assert set(dense.native.weight_formats) == {"f32"}
    again = load(tiny_load_config(folder, dtype="float32", quantization="auto"))
    assert again.native.keep_alive is not None, "the second start maps the first one's pack"
    assert [layer.window for layer in again.native.layers] == [layer.window for layer in packed.native.layers]
    assert again.native.scales == packed.native.scales
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    runners = [make_core(loaded).runner for loaded in (packed, dense, again)]
    for ids in PROMPTS:
        logits = [runner.prefill(runner.new_cache(), ids, 0, every_position=True) for runner in runners]
        assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
        torch.testing.assert_close(logits[0], reference_logits(reference, ids), atol=1e-4, rtol=1e-4)
