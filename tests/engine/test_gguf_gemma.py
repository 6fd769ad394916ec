"""Gemma 2 and Gemma 3 GGUF files read directly (gguf_checkpoint._gemma_config, FusedGemma): a tiny
random model of each written as llama.cpp's converter writes it (norms stored as 1 + weight,
post_attention_norm / ffn_norm / post_ffw_norm, Gemma 2's caps and window, Gemma 3's global RoPE base
and linear scaling beside the local base, no layer pattern: llama.cpp's 2 and 6) computes the
transformers model's logits at every position (fp32), its greedy tokens through the loader, and, in
Q8_0 / Q4_0, the logits of the transformers model holding the dequantized weights. Its tokenizer is
AutoTokenizer(gguf_file=...)'s GemmaTokenizer, built without AutoTokenizer's config pass.
transformers' own GGUF loading reads fewer fields (its class defaults for the caps, the query scale,
the pattern, the local base, no RoPE scaling): where the file holds those defaults, it computes the
same logits as the direct read."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, \
    Gemma3TextConfig

gguf = pytest.importorskip("gguf")

from app.engine.models.fused_gemma import FusedGemma  # noqa: E402
from app.engine.models.gguf_checkpoint import fused_from_gguf, open_gguf  # noqa: E402
from app.engine.models.llama_checkpoint import fused_from_checkpoint, open_checkpoint  # noqa: E402
from app.engine.models.loader import _gguf_tokenizer, load, load_tokenizer  # noqa: E402
from tests.engine.gguf_files import (  # noqa: E402
    F32_TYPES, GEMMA_PIECES, GEMMA_SPECIALS, GEMMA_USER_DEFINED, gemma_tokenizer, write_gemma_gguf)
from tests.engine.helpers import make_core, tiny_load_config  # noqa: E402

T = gguf.GGMLQuantizationType
VOCAB = len(GEMMA_SPECIALS) + 256 + len(GEMMA_PIECES) + len(GEMMA_USER_DEFINED)
WINDOW = 6
# query_pre_attn_scalar = head_dim: what llama.cpp scales queries by for every size but 27B.
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=128, query_pre_attn_scalar=16, sliding_window=WINDOW,
             initializer_range=0.02, rms_norm_eps=2.0 ** -17)
FAMILIES = {
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(**SIZES, num_hidden_layers=3, attn_logit_softcapping=3.0,
                                                     final_logit_softcapping=5.0)),
    # 7 layers: llama.cpp's pattern of 6 (five sliding, one full), then one more sliding
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        **SIZES, num_hidden_layers=7, rope_theta=1e6, rope_local_base_freq=100.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0}, final_logit_softcapping=8.0)),
}
Q8_TYPES = dict.fromkeys(F32_TYPES, T.Q8_0)
Q4_TYPES = {**dict.fromkeys(F32_TYPES, T.Q4_0), "embed": T.Q8_0}
PROMPTS = [list(range(3, 24)), [200, 7, 7, 31, 9, 150, 64, 2, 48, 121, 33, 99, 140, 12, 5], [77, 5]]


def _random_norms(model):
    """transformers starts Gemma's norms at 0 (a scale of exactly 1), which would hide a wrong 1 + weight."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def gemma_gguf(request, tmp_path_factory):
    torch.manual_seed(0)
    model = _random_norms(FAMILIES[request.param]())
    folder = tmp_path_factory.mktemp(f"gguf-{request.param}")
    model.save_pretrained(folder / "safetensors")
    return request.param, write_gemma_gguf(folder / f"{request.param}.gguf", model, F32_TYPES, gemma_tokenizer), model


def _every_logit(template, fused, ids: list[int]) -> torch.Tensor:
    loaded = replace(template, model=None, native=None, fused=fused, dtype=torch.float32)
    runner = make_core(loaded).runner
    return runner.prefill(runner.new_cache(), ids, 0, every_position=True)


@torch.inference_mode()
def _reference(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()


def test_a_float_gguf_computes_the_models_logits(gemma_gguf, tiny_loaded):
    arch, path, model = gemma_gguf
    checkpoint = open_gguf(path)
    assert not isinstance(checkpoint, str), checkpoint
    config = checkpoint.config
    assert config["layer_types"] == model.config.layer_types and config["sliding_window"] == WINDOW
    assert config["query_pre_attn_scalar"] == 16 and config["tie_word_embeddings"] and config["vocab_size"] == VOCAB
    assert config["final_logit_softcapping"] == model.config.final_logit_softcapping
    assert config["attn_logit_softcapping"] == (3.0 if arch == "gemma2" else None)
    fused = fused_from_gguf(checkpoint, torch.float32, torch.device("cpu"))
    assert isinstance(fused, FusedGemma)
    # The same tensors as the safetensors folder read directly: 1 + weight restored bit for bit.
    theirs = fused_from_checkpoint(open_checkpoint(str(path.parent / "safetensors")), torch.float32, torch.device("cpu"))
    for a, b in zip(fused.linears(), theirs.linears(), strict=True):
        assert torch.equal(a.weight, b.weight)
    for a, b in zip(fused.layers, theirs.layers, strict=True):
        for norm in ("input_norm", "post_norm", "pre_mlp_norm", "post_mlp_norm", "q_norm", "k_norm"):
            x, y = getattr(a, norm), getattr(b, norm)
            assert (x is None and y is None) or torch.equal(x, y), norm
        assert (a.window, a.layer_type) == (b.window, b.layer_type)
    assert torch.equal(fused.final_norm, theirs.final_norm)
    for ids in PROMPTS:
        torch.testing.assert_close(_every_logit(tiny_loaded, fused, ids), _reference(model, ids), atol=1e-4, rtol=1e-4)


def _dequantized_model(model, checkpoint):
    """The transformers model holding the GGUF's dequantized weights (norms as the file stores them, minus 1)."""
    from app.engine.models.gguf_checkpoint import dequantized

    copied = copy.deepcopy(model)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
             "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(model.config.num_hidden_layers):
        names |= {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{ours}.weight" for hf, ours in parts.items()}
    state = copied.state_dict()
    with torch.no_grad():
        for hf, ours in names.items():
            if hf in state:
                values = torch.from_numpy(np.ascontiguousarray(dequantized(checkpoint, ours)))
                state[hf].copy_(values - 1 if hf.endswith("norm.weight") else values)
    return copied.eval()


@pytest.mark.parametrize("types", [Q8_TYPES, Q4_TYPES], ids=["q8_0", "q4_0"])
def test_quantized_blocks_compute_the_dequantized_models_logits(gemma_gguf, tiny_loaded, types, tmp_path):
    arch, _, model = gemma_gguf
    checkpoint = open_gguf(write_gemma_gguf(tmp_path / f"{arch}-q.gguf", model, types, gemma_tokenizer))
    assert not isinstance(checkpoint, str), checkpoint
    assert {checkpoint.tensors[f"blk.0.{name}.weight"].type for name in ("attn_q", "ffn_down")} == {types["q"]}
    fused = fused_from_gguf(checkpoint, torch.float32, torch.device("cpu"))
    reference = _dequantized_model(model, checkpoint)
    for ids in PROMPTS:
        torch.testing.assert_close(_every_logit(tiny_loaded, fused, ids), _reference(reference, ids),
                                   atol=1e-4, rtol=1e-4)
    assert (_reference(reference, PROMPTS[0]) - _reference(model, PROMPTS[0])).abs().max() > 1e-3, \
        "the blocks should be lossy (else this compares nothing new)"


def test_the_loader_reads_it_without_transformers_models(gemma_gguf, monkeypatch):
    """load() of a Gemma GGUF: on the native kernels (by way of FusedGemma), the tokenizer built
    directly as AutoTokenizer's GemmaTokenizer, EOS from the file and the end of a turn, transformers'
    greedy tokens."""
    import transformers

    _, path, model = gemma_gguf

    def no_auto(*args, **kwargs):
        raise AssertionError("transformers' from_pretrained was asked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_auto)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_auto)
    loaded = load(tiny_load_config(path, dtype="float32"))  # native kernels on, as a server starts
    # Dequantized into FusedGemma, then onto the kernels, which compute Gemma's layers.
    assert loaded.model is None and loaded.native is not None, loaded.runtime.forward
    assert loaded.runtime.forward.startswith("native"), loaded.runtime.forward
    assert type(loaded.tokenizer).__name__ == "GemmaTokenizer"
    # <eos> from the file, and <end_of_turn>, which ends the chat template's turns (as llama.cpp stops).
    turn_end = loaded.tokenizer.get_vocab().get("<end_of_turn>")
    assert turn_end is not None and loaded.eos_token_ids == (1, turn_end)
    assert loaded.max_position_embeddings == 128
    ids = loaded.tokenizer.encode("Hello world")
    assert ids[0] == 2  # <bos>
    runner = make_core(loaded).runner
    torch.testing.assert_close(runner.prefill(runner.new_cache(), ids, 0, every_position=True), _reference(model, ids),
                               atol=1e-4, rtol=1e-4)
    from tests.engine.helpers import run_alone
    from tests.engine.test_parity import _hf_greedy
    from app.engine.types import SamplingParams

    answers = []
    for prompt in PROMPTS + [ids]:
        ours = run_alone(loaded, prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
        assert ours == _hf_greedy(model, prompt, 12)
        answers.append(ours)
    assert any(len(set(answer)) > 1 for answer in answers), "a degenerate model would prove nothing"


TEXTS = ["Hello world", " Hello world", "  Hello  world ", "Hello\nworld\n\n", "the world is a world",
         "東京は日本 👋 café", "<start_of_turn>user\nHello<end_of_turn>\n", "<bos>Hello<eos>", "<table>x", "<unk>",
         "▁Hello", "", " ", "\t", "   x"]


def test_the_tokenizer_is_autotokenizer_s(gemma_gguf):
    _, path, _ = gemma_gguf
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    direct = _gguf_tokenizer(str(path))
    assert direct is not None and type(direct) is type(reference) and type(direct).__name__ == "GemmaTokenizer"
    for text in TEXTS:
        ids = reference(text)["input_ids"]
        assert direct(text)["input_ids"] == ids, text
        assert direct(text, add_special_tokens=False)["input_ids"] == reference(text, add_special_tokens=False)["input_ids"]
        for skip in (False, True):
            assert direct.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)
        assert direct.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(ids)
    assert "▁▁" in direct.convert_ids_to_tokens(direct("a  b")["input_ids"])  # the stored "  " respelled
    assert (direct.bos_token, direct.eos_token, direct.pad_token, direct.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")
    assert direct.added_tokens_decoder == reference.added_tokens_decoder and len(direct) == len(reference)
    assert load_tokenizer(str(path))("Hello world")["input_ids"] == reference("Hello world")["input_ids"]


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_transformers_own_gguf_loading_agrees_where_it_reads_the_same_model(arch, tmp_path, tiny_loaded):
    """With the values transformers' GGUF loader assumes (head_dim 256 = its query_pre_attn_scalar, Gemma 2's
    caps 50 / 30, Gemma 3's pattern 6, local base 10,000, no scaling, no cap), its model computes the
    direct read's logits."""
    sizes = {**SIZES, "head_dim": 256, "query_pre_attn_scalar": 256, "num_attention_heads": 2, "num_key_value_heads": 1}
    torch.manual_seed(0)
    model = _random_norms(Gemma2ForCausalLM(Gemma2Config(**sizes, num_hidden_layers=3)) if arch == "gemma2" else
                          Gemma3ForCausalLM(Gemma3TextConfig(**sizes, num_hidden_layers=7, rope_theta=1e6)))
    path = write_gemma_gguf(tmp_path / f"{arch}.gguf", model, F32_TYPES, gemma_tokenizer)
    through = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    assert through.config.layer_types == model.config.layer_types
    direct = fused_from_gguf(open_gguf(path), torch.float32, torch.device("cpu"))
    for ids in PROMPTS[:2]:
        expected = _reference(through, ids)
        torch.testing.assert_close(expected, _reference(model, ids), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_every_logit(tiny_loaded, direct, ids), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fields, named", [
    ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0}, "rope.scaling.type='yarn'"),
    ({"expert_count": 4}, "expert_count=4"),
    ({"attention.sliding_window_pattern": "odd"}, "attention.sliding_window_pattern='odd'"),
], ids=["yarn", "experts", "pattern"])
def test_what_it_cannot_read_is_refused_naming_the_field(gemma_gguf, tmp_path, fields, named):
    arch, _, model = gemma_gguf
    refusal = open_gguf(write_gemma_gguf(tmp_path / "odd.gguf", model, F32_TYPES, gemma_tokenizer,
                                         {f"{arch}.{key}": value for key, value in fields.items()}))
    assert isinstance(refusal, str) and f"{arch}.{named.split('=')[0]}" in refusal and named.split("=")[1] in refusal
    assert "\n" not in refusal


def test_gemma3_attention_caps_and_gemma2_output_tensors_are_refused(gemma_gguf, tmp_path):
    """Gemma 3's attention is never capped (the converter asserts there is no cap to write); Gemma 2's
    output is always the embedding in llama.cpp, so a file with an output.weight of its own is not read."""
    arch, _, model = gemma_gguf
    if arch == "gemma3":
        refusal = open_gguf(write_gemma_gguf(tmp_path / "cap.gguf", model, F32_TYPES, gemma_tokenizer,
                                             {"gemma3.attn_logit_softcapping": 50.0}))
        assert isinstance(refusal, str) and "gemma3.attn_logit_softcapping=50.0" in refusal
    else:
        output = {"output.weight": np.zeros((VOCAB, SIZES["hidden_size"]), dtype=np.float32)}
        refusal = open_gguf(write_gemma_gguf(tmp_path / "untied.gguf", model, F32_TYPES, gemma_tokenizer, extra=output))
        assert isinstance(refusal, str) and "output.weight" in refusal
