"""FusedLlama computes transformers' function: logits of every path (decode with and without padding,
padded group prefill, chunked prefill) match the model's own uncached forward; the int8 copies stay
close and serve only the steps they were measured for; other models keep transformers' forward."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.engine.fused_llama import FusedLlama, unsupported_reason
from app.engine.loader import load
from app.engine.packed_linear import Int4Weights, PackedLinear
from app.engine.quantization import apply_quantization, measure_copy_max_rows
from tests.engine.helpers import logit_tolerance, make_core, reference_logits, tiny_load_config

PROMPTS = ["The capital of France", "Hello world! How are you today?", "東京は日本の", "def main():\n"]


def test_the_tiny_model_runs_fused(tiny_loaded):
    assert tiny_loaded.fused is not None and tiny_loaded.runtime.forward == "fused"
    assert make_core(tiny_loaded).runner.fused is tiny_loaded.fused


def test_fused_weights_are_views_of_the_models_own(tiny_model_dir):
    loaded = load(tiny_load_config(tiny_model_dir, read_checkpoints=False))  # through transformers' model
    layer, fused = loaded.model.model.layers[0], loaded.fused.layers[0]
    q = layer.self_attn.q_proj.weight
    assert q.data_ptr() == fused.qkv.weight.data_ptr()  # nothing stored twice
    assert layer.mlp.up_proj.weight.data_ptr() > fused.gate_up.weight.data_ptr()


def test_decode_and_prefill_logits_match_the_uncached_forward(tiny_loaded, tiny_reference):
    core = make_core(tiny_loaded)
    runner, tol = core.runner, logit_tolerance(tiny_loaded.dtype)
    prompts = [tiny_loaded.tokenizer.encode(p) for p in PROMPTS]
    cache, mask, logits = runner.prefill_batch([p[:-2] for p in prompts])  # left-padded group
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[row], reference_logits(tiny_reference, prompt[:-2])[-1], **tol)
    core.store.join(PROMPTS, cache, mask)
    for back in (2, 1):  # two padded decode steps, each row fed its own next prompt token
        step = runner.decode(core.store, [p[-back] for p in prompts])
        for row, prompt in enumerate(prompts):
            torch.testing.assert_close(step[row], reference_logits(tiny_reference, prompt[: len(prompt) - back + 1])[-1], **tol)


def test_chunked_prefill_matches_the_uncached_forward(tiny_loaded, tiny_reference):
    runner = make_core(tiny_loaded).runner
    ids = tiny_loaded.tokenizer.encode(" ".join(PROMPTS) * 2)
    cache = runner.new_cache()
    for start in range(0, len(ids) - 7, 7):
        last = runner.prefill(cache, ids[start:start + 7], start)
        torch.testing.assert_close(last, reference_logits(tiny_reference, ids[: start + 7])[-1],
                                   **logit_tolerance(tiny_loaded.dtype))


def _snap_to_4_bit_grid(loaded) -> None:
    """Round every matrix to int4 levels, as a model converted from a Q4_1 checkpoint has them."""
    with torch.no_grad():
        for lin in loaded.fused.linears():
            if Int4Weights.fits(lin.weight):
                lin.weight.copy_(Int4Weights.round_trip(lin.weight))


# int8 on the tiny model's random weights (std 0.5) is quantization-sized; int4 is measured on weights
# that lie on a 4-bit grid (the case auto picks it for), where it must be nearly exact.
@pytest.mark.parametrize("kind, tolerance", [("int8", 0.1), ("int4", 0.03)])
def test_low_bit_copies_stay_close_and_serve_only_small_steps(tiny_model_dir, kind, tolerance):
    loaded = load(tiny_load_config(tiny_model_dir, dtype="float32"))
    if kind == "int4":
        _snap_to_4_bit_grid(loaded)
    runner = make_core(loaded).runner
    ids = loaded.tokenizer.encode(PROMPTS[1])
    exact = runner.prefill(runner.new_cache(), ids, 0)
    description = apply_quantization(loaded.fused, kind, 4, torch.float32, loaded.device)
    assert f"{kind} for" in description and "up to 4 rows" in description, description
    lin = loaded.fused.layers[0].qkv
    assert lin.copy is not None and lin.copy.kind == kind and lin.copy_max_rows == 4
    small, big = torch.randn(3, lin.in_features), torch.randn(5, lin.in_features)
    assert torch.equal(lin(small), lin.forward_copy(small))
    assert not torch.equal(lin.forward_copy(small), lin.forward_native(small))
    assert torch.equal(lin(big), lin.forward_native(big))  # 5 rows > 4: the original weight
    # A one-row step through the copies: close to the exact logits.
    cache = runner.new_cache()
    runner.prefill(cache, ids[:-1], 0)
    quantized = runner.prefill(cache, ids[-1:], len(ids) - 1)
    relative = (quantized - exact).norm() / exact.norm()
    assert relative < tolerance, relative


def test_int8_is_per_row_symmetric():
    weight = torch.tensor([[1.0, -2.0, 0.5, 0.0] * 8, [100.0, 50.0, -25.0, 0.0] * 8])
    lin = PackedLinear(weight, torch.tensor([1.0, -1.0]))
    assert lin.make_copy("int8")
    assert lin.copy.quantized.dtype == torch.int8 and lin.copy.quantized.abs().max() == 127
    torch.testing.assert_close(lin.copy.scales.float(), torch.tensor([2 / 127, 100 / 127]), rtol=1e-2, atol=0)
    x = torch.eye(32)[:4]
    torch.testing.assert_close(lin.forward_copy(x), lin.forward_native(x), rtol=0.02, atol=0.02)


def test_int4_is_exact_for_weights_already_on_a_4_bit_grid():
    """Like the default model's Q4_1 layers: each group of 32 is offset + step * (0..15)."""
    torch.manual_seed(0)
    levels = torch.randint(0, 16, (32, 64)).float()
    levels[:, ::32], levels[:, 1::32] = 0, 15  # every group uses its lowest and highest level
    step = torch.rand(32, 2).repeat_interleave(32, dim=1) * 0.01 + 0.001
    offset = torch.randn(32, 2).repeat_interleave(32, dim=1) * 0.05
    on_grid = PackedLinear(offset + step * levels)
    on_grid.make_copy("int4")
    off_grid = PackedLinear(torch.randn(32, 64))
    off_grid.make_copy("int4")
    assert on_grid.copy.relative_error < 0.01 < off_grid.copy.relative_error


def test_auto_takes_int4_only_where_it_is_exact(tiny_model_dir):
    loaded = load(tiny_load_config(tiny_model_dir, dtype="float32"))
    grid = loaded.fused.layers[0].down
    levels = torch.randint(0, 16, grid.weight.shape).float()
    levels[:, ::32], levels[:, 1::32] = 0, 15
    with torch.no_grad():
        grid.weight.copy_(0.01 * levels - 0.08)  # this one matrix now lies on a 4-bit grid
    description = apply_quantization(loaded.fused, "auto", 4, torch.float32, loaded.device)
    assert grid.copy.kind == "int4" and loaded.fused.layers[0].qkv.copy.kind == "int8"
    assert "int4 for 1 matrices" in description, description


def test_a_matrix_the_kernels_cannot_take_keeps_no_copy():
    lin = PackedLinear(torch.randn(4, 24))
    assert not lin.make_copy("int8") and not lin.make_copy("int4")
    lin.copy_max_rows = 8
    assert torch.equal(lin(torch.ones(1, 24)), lin.forward_native(torch.ones(1, 24)))


def test_measurement_returns_a_candidate_or_zero(tiny_loaded):
    copies = [PackedLinear(lin.weight) for lin in tiny_loaded.fused.linears()[:5]]
    for lin in copies:
        lin.make_copy("int8")
    rows = measure_copy_max_rows(copies, tiny_loaded.dtype, tiny_loaded.device, candidates=(1, 2))
    assert rows in (0, 1, 2)


@pytest.mark.parametrize("change, reason", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"pretraining_tp": 2}, "pretraining_tp"),
])
def test_models_it_does_not_know_keep_transformers_forward(change, reason):
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, **change)
    assert reason in (unsupported_reason(LlamaForCausalLM(config)) or "")


def test_an_unknown_architecture_is_named(tiny_loaded, tiny_reference):
    class NotLlama(LlamaForCausalLM):
        pass

    model = NotLlama(tiny_reference.config)
    assert "NotLlama" in unsupported_reason(model)
    assert unsupported_reason(tiny_reference) is None
    assert isinstance(tiny_loaded.fused, FusedLlama)
