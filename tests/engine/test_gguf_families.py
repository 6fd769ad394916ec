"""Qwen3 and Phi-3 GGUF files read directly (gguf_checkpoint.py with gguf_layout.py): a tiny random
model of each family written as llama.cpp writes it (Phi-3's fused attn_qkv and [gate; up] ffn_up,
Qwen3's q/k norms, no Q/K permutation) loads to the safetensors folder's weights and logits, and what
transformers computes from either; Q4/Q8 blocks go to the kernels as they are."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import Phi3Config, Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM

pytest.importorskip("gguf")

from app.engine.models.gguf_checkpoint import fused_from_gguf, open_gguf  # noqa: E402
from app.engine.models.llama_checkpoint import fused_from_checkpoint, open_checkpoint  # noqa: E402
from app.engine.native.gguf_weights import native_from_gguf  # noqa: E402
from app.engine.native.library import native_library  # noqa: E402
from tests.engine.gguf_files import F32_TYPES, GRID_TYPES, write_gguf  # noqa: E402
from tests.engine.helpers import TEST_DTYPE, logit_tolerance, make_core  # noqa: E402

SIZES = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.5, rope_theta=50000.0,
             rms_norm_eps=2.0 ** -17, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    # Qwen3: head_dim 128 (transformers' GGUF loader builds its class default, whatever the file says)
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**SIZES, head_dim=128)),
    "phi3": lambda: Phi3ForCausalLM(Phi3Config(**SIZES)),
}
IDS = [3, 17, 42, 5, 88, 11, 60, 7]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny_family(request, tmp_path_factory):
    torch.manual_seed(0)
    model = FAMILIES[request.param]().eval()
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(folder)
    return request.param, folder, model


def _logits(template, ids: list[int], **forward) -> torch.Tensor:
    loaded = replace(template, **{"model": None, "fused": None, "native": None, **forward})
    runner = make_core(loaded).runner
    return runner.prefill(runner.new_cache(), ids, 0).reshape(-1)


def _greedy(template, ids: list[int], steps: int = 5, **forward) -> list[int]:
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(_logits(template, ids, **forward).argmax()))
    return ids[-steps:]


def test_a_float_gguf_reads_to_the_safetensors_weights_and_transformers_logits(tmp_path, tiny_family, tiny_loaded):
    arch, folder, model = tiny_family
    checkpoint = open_gguf(write_gguf(tmp_path / f"{arch}.gguf", model, F32_TYPES))
    assert not isinstance(checkpoint, str), checkpoint
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    assert checkpoint.config["model_type"] == arch and checkpoint.config["head_dim"] == head_dim
    cpu, fp32 = torch.device("cpu"), torch.float32
    mine = fused_from_gguf(checkpoint, fp32, cpu)
    theirs = fused_from_checkpoint(open_checkpoint(str(folder)), fp32, cpu)
    assert mine.dims == theirs.dims
    for a, b in zip(mine.linears(), theirs.linears(), strict=True):
        assert torch.equal(a.weight, b.weight)
    for a, b in zip(mine.layers, theirs.layers, strict=True):
        for norm in ("input_norm", "post_norm", "q_norm", "k_norm"):
            x, y = getattr(a, norm), getattr(b, norm)
            assert (x is None and y is None) or torch.equal(x, y), norm
    assert torch.equal(mine.embed_weight, theirs.embed_weight) and torch.equal(mine.final_norm, theirs.final_norm)
    logits = _logits(tiny_loaded, IDS, fused=mine, dtype=fp32)
    assert torch.equal(logits, _logits(tiny_loaded, IDS, fused=theirs, dtype=fp32))
    with torch.no_grad():
        expected = model(torch.tensor([IDS])).logits[0, -1]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        reference = model.generate(torch.tensor([IDS]), max_new_tokens=5, do_sample=False)[0, len(IDS):].tolist()
    assert _greedy(tiny_loaded, IDS, fused=mine, dtype=fp32) == reference


def test_q4_and_q8_blocks_of_each_family_go_to_the_kernels_as_they_are(tmp_path, tiny_family, tiny_loaded):
    if tiny_loaded.native is None:
        pytest.skip("the native kernels are not in use here")
    arch, _, model = tiny_family
    checkpoint = open_gguf(write_gguf(tmp_path / f"{arch}-grid.gguf", model, GRID_TYPES))
    assert not isinstance(checkpoint, str), checkpoint
    library = native_library(tiny_loaded.native.library.isa)
    native = native_from_gguf(checkpoint, library, torch.float32, 128, "auto")
    assert native.weight_formats == {"q4": 6, "q8": 4}  # q/k/v, o, gate/up per layer; down x2, embedding, head
    expected = _logits(tiny_loaded, IDS, fused=fused_from_gguf(checkpoint, torch.float32, torch.device("cpu")),
                       dtype=torch.float32)
    torch.testing.assert_close(_logits(tiny_loaded, IDS, native=native, dtype=torch.float32), expected,
                               atol=1e-4, rtol=1e-4)
    if TEST_DTYPE != "float32":
        low = native_from_gguf(checkpoint, library, torch.bfloat16, 128, "auto")
        torch.testing.assert_close(_logits(tiny_loaded, IDS, native=low, dtype=torch.bfloat16), expected,
                                   **logit_tolerance(torch.bfloat16))


@pytest.mark.parametrize("fields, reason", [
    ({"attention.key_length": 32}, "attention.key_length"),
    ({"attention.sliding_window": 64}, "attention.sliding_window"),
    ({"rope.scaling.type": "longrope"}, "rope.scaling.type"),
    ({"rope.scaling.attn_factor": 2}, "rope.scaling.attn_factor"),
], ids=["key-length", "sliding-window", "longrope", "attn-factor"])
def test_what_it_cannot_read_of_each_family_is_refused_naming_the_field(tmp_path, tiny_family, fields, reason):
    arch, _, model = tiny_family
    refusal = open_gguf(write_gguf(tmp_path / "odd.gguf", model, F32_TYPES,
                                   {f"{arch}.{key}": value for key, value in fields.items()}))
    assert isinstance(refusal, str) and f"{arch}.{reason}" in refusal and "\n" not in refusal


def test_a_window_reaching_the_context_is_read(tmp_path, tiny_family):
    """llama.cpp's Phi-3 conversion writes the context length as the window when there is none."""
    arch, _, model = tiny_family
    fields = {f"{arch}.attention.sliding_window": 128, f"{arch}.rope.scaling.original_context_length": 128}
    assert not isinstance(open_gguf(write_gguf(tmp_path / "w.gguf", model, F32_TYPES, fields)), str)


def test_transformers_own_gguf_loading_computes_what_the_direct_read_does(tmp_path, tiny_loaded):
    """from_pretrained(gguf_file=...) builds each family from the file alone (Phi-3 with its class's
    32,000 pad id, so a vocabulary that holds it): the directly read weights compute its logits."""
    from transformers import AutoModelForCausalLM

    for arch, build in FAMILIES.items():
        torch.manual_seed(0)
        model = build() if arch != "phi3" else Phi3ForCausalLM(Phi3Config(**{**SIZES, "vocab_size": 32064}))
        path = write_gguf(tmp_path / f"{arch}.gguf", model.eval(), F32_TYPES)
        through = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
        assert type(through) is type(model)
        with torch.no_grad():
            expected = through.eval()(torch.tensor([IDS])).logits[0, -1]
        direct = fused_from_gguf(open_gguf(path), torch.float32, torch.device("cpu"))
        torch.testing.assert_close(_logits(tiny_loaded, IDS, fused=direct, dtype=torch.float32), expected,
                                   atol=1e-4, rtol=1e-4)


def test_the_loader_reads_each_family_s_gguf_without_transformers_models(tmp_path):
    """load() of a Qwen3 / Phi-3 GGUF (with a sentencepiece vocabulary) takes the direct path, on the
    kernels where they run, and computes the safetensors model's logits and greedy tokens (fp32)."""
    from app.engine.models.loader import load
    from tests.engine.gguf_files import SPM_PIECES, SPM_SPECIALS, spm_tokenizer
    from tests.engine.helpers import tiny_load_config

    vocab = 3 + 256 + len(SPM_PIECES) + len(SPM_SPECIALS)
    for arch, build in FAMILIES.items():
        torch.manual_seed(0)
        config = {**SIZES, "vocab_size": vocab}
        model = (Qwen3ForCausalLM(Qwen3Config(**config, head_dim=128)) if arch == "qwen3"
                 else Phi3ForCausalLM(Phi3Config(**config))).eval()
        path = write_gguf(tmp_path / f"{arch}.gguf", model, F32_TYPES, tokenizer=spm_tokenizer)
        loaded = load(tiny_load_config(path, dtype="float32"))
        assert loaded.model is None and (loaded.native or loaded.fused) is not None, loaded.runtime.forward
        assert loaded.eos_token_ids == (2,) and loaded.max_position_embeddings == 128
        ids = loaded.tokenizer.encode("Hello world")
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0, -1]
            reference = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0, len(ids):].tolist()
        forward = {"native": loaded.native, "fused": loaded.fused}
        torch.testing.assert_close(_logits(loaded, ids, **forward), expected, atol=1e-4, rtol=1e-4)
        assert _greedy(loaded, ids, **forward) == reference


def test_an_end_of_turn_token_the_file_names_ends_generation_too(tmp_path, tiny_family):
    """tokenizer.ggml.eot_token_id (as llama.cpp's converter writes for chat models whose turns end with
    another token than <eos>) joins the EOS ids."""
    arch, _, model = tiny_family
    plain = open_gguf(write_gguf(tmp_path / "plain.gguf", model, F32_TYPES, {"tokenizer.ggml.eos_token_id": 2}))
    named = open_gguf(write_gguf(tmp_path / "eot.gguf", model, F32_TYPES,
                                 {"tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.eot_token_id": 7}))
    assert plain.eos_token_ids == (2,) and named.eos_token_ids == (2, 7)
