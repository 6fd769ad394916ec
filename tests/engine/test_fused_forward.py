"""The two fast forwards compute transformers' function: logits of every path (decode with and without
padding, padded group prefill, chunked prefill) through the native kernels and through torch's
FusedLlama match the model's own uncached forward; other models keep transformers' forward."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.engine.models.fused_llama import FusedLlama, unsupported_reason
from app.engine.models.loader import load
from tests.engine.helpers import logit_tolerance, make_core, reference_logits, tiny_load_config

PROMPTS = ["The capital of France", "Hello world! How are you today?", "東京は日本の", "def main():\n"]


@pytest.fixture(params=["native", "torch"])
def either_forward(request, tiny_loaded, tiny_fused):
    return tiny_loaded if request.param == "native" else tiny_fused


@pytest.fixture
def matches(either_forward, tiny_reference, tiny_reference_fp32):
    """A check of a forward's last logits against transformers' uncached forward over the same ids.
    torch's FusedLlama runs the dtype's own arithmetic: within a few of its last places of transformers
    in that dtype. The native kernels compute in fp32 over weights and KV stored in the dtype: in fp32
    to fp32 rounding; in bf16 about as close to the fp32 function as transformers' bf16 forward is (mean
    distance within 1.5x of its: rounding the weights to bf16 costs most of it, either way)."""
    dtype = either_forward.dtype

    def check(actual: torch.Tensor, ids: list[int]) -> None:
        if either_forward.native is None or dtype == torch.float32:
            torch.testing.assert_close(actual, reference_logits(tiny_reference, ids)[-1], **logit_tolerance(dtype))
            return
        exact = reference_logits(tiny_reference_fp32, ids)[-1]
        ours = (actual.float() - exact).abs().mean().item()
        theirs = (reference_logits(tiny_reference, ids)[-1] - exact).abs().mean().item()
        assert ours <= 1.5 * theirs, f"mean distance from fp32: ours {ours:.4f}, transformers' {dtype} {theirs:.4f}"

    return check


def test_the_tiny_model_runs_on_the_native_kernels_or_fused(tiny_loaded, tiny_fused):
    assert tiny_loaded.native is not None and tiny_loaded.runtime.forward.startswith("native (")
    assert tiny_loaded.fused is None and tiny_loaded.model is None  # the torch weights are dropped
    assert make_core(tiny_loaded).runner.native is tiny_loaded.native
    assert tiny_fused.native is None and tiny_fused.runtime.forward == "fused (native kernels turned off)"
    assert make_core(tiny_fused).runner.fused is tiny_fused.fused


def test_fused_weights_are_views_of_the_models_own(tiny_model_dir):
    loaded = load(tiny_load_config(tiny_model_dir, read_checkpoints=False, native_kernels=False))
    layer, fused = loaded.model.model.layers[0], loaded.fused.layers[0]
    q = layer.self_attn.q_proj.weight
    assert q.data_ptr() == fused.qkv.weight.data_ptr()  # nothing stored twice
    assert layer.mlp.up_proj.weight.data_ptr() > fused.gate_up.weight.data_ptr()


def test_decode_and_prefill_logits_match_the_uncached_forward(either_forward, matches):
    tiny_loaded = either_forward
    core = make_core(tiny_loaded)
    runner = core.runner
    prompts = [tiny_loaded.tokenizer.encode(p) for p in PROMPTS]
    cache, mask, logits = runner.prefill_batch([p[:-2] for p in prompts])  # left-padded group
    for row, prompt in enumerate(prompts):
        matches(logits[row], prompt[:-2])
    core.store.join(PROMPTS, cache, mask)
    for back in (2, 1):  # two padded decode steps, each row fed its own next prompt token
        step = runner.decode(core.store, [p[-back] for p in prompts])
        for row, prompt in enumerate(prompts):
            matches(step[row], prompt[: len(prompt) - back + 1])


def test_chunked_prefill_matches_the_uncached_forward(either_forward, matches):
    tiny_loaded = either_forward
    runner = make_core(tiny_loaded).runner
    ids = tiny_loaded.tokenizer.encode(" ".join(PROMPTS) * 2)
    cache = runner.new_cache()
    for start in range(0, len(ids) - 7, 7):
        matches(runner.prefill(cache, ids[start:start + 7], start), ids[: start + 7])


@pytest.mark.parametrize("change, reason", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"pretraining_tp": 2}, "pretraining_tp"),
])
def test_models_it_does_not_know_keep_transformers_forward(change, reason):
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, **change)
    assert reason in (unsupported_reason(LlamaForCausalLM(config)) or "")


def test_an_unknown_architecture_is_named(tiny_fused, tiny_reference):
    class NotLlama(LlamaForCausalLM):
        pass

    model = NotLlama(tiny_reference.config)
    assert "NotLlama" in unsupported_reason(model)
    assert unsupported_reason(tiny_reference) is None
    assert isinstance(tiny_fused.fused, FusedLlama)
