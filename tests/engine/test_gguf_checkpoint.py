"""A GGUF file read directly (app/engine/models/gguf_checkpoint.py, native/gguf_weights.py) computes what
the same file loaded through transformers' from_pretrained(gguf_file=...) computes, and a GGUF written
from a model computes what its safetensors folder computes; what the reader cannot serve is refused
with a line naming the field, and then goes through transformers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

gguf = pytest.importorskip("gguf")

from app.engine.models.gguf_checkpoint import fused_from_gguf, open_gguf  # noqa: E402
from app.engine.models.llama_checkpoint import fused_from_checkpoint, open_checkpoint  # noqa: E402
from app.engine.models.loader import LoadedModel, load  # noqa: E402
from app.engine.native.gguf_weights import native_from_gguf  # noqa: E402
from app.engine.native.library import native_library  # noqa: E402
from app.engine.native.model import native_from_fused  # noqa: E402
from tests.engine.gguf_files import F32_TYPES, GRID_TYPES, write_gguf  # noqa: E402
from tests.engine.helpers import TEST_DTYPE, logit_tolerance, make_core, tiny_load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_GGUF = REPO / "models" / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SIZES = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.5, rope_theta=50000.0,
             rms_norm_eps=2.0 ** -17, tie_word_embeddings=False)  # eps: a float32 (as GGUF stores it); tied: the default GGUF
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> tuple[Path, LlamaForCausalLM]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SIZES)).eval()
    folder = tmp_path_factory.mktemp("tiny-gguf-source")
    model.save_pretrained(folder)
    return folder, model


def _as_loaded(template: LoadedModel, dtype: torch.dtype, **forward) -> LoadedModel:
    """A LoadedModel around a forward built here (the tiny tokenizer's, which the ids below fit)."""
    return replace(template, **{"model": None, "fused": None, "native": None, "dtype": dtype, **forward})


def _last_logits(loaded, ids: list[int]) -> torch.Tensor:
    runner = make_core(loaded).runner
    return runner.prefill(runner.new_cache(), ids, 0)


IDS = [3, 17, 42, 5, 88, 11, 60, 7]


def test_a_float_gguf_round_trips_to_the_safetensors_models_weights_and_logits(tmp_path, tiny_llama, tiny_loaded):
    folder, model = tiny_llama
    path = write_gguf(tmp_path / "tiny.gguf", model, F32_TYPES)
    checkpoint, reference = open_gguf(path), open_checkpoint(str(folder))
    assert not isinstance(checkpoint, str), checkpoint
    assert checkpoint.config["tie_word_embeddings"] is False and checkpoint.config["head_dim"] == 16
    dtype, cpu = getattr(torch, TEST_DTYPE), torch.device("cpu")
    mine, theirs = fused_from_gguf(checkpoint, dtype, cpu), fused_from_checkpoint(reference, dtype, cpu)
    assert mine.dims == theirs.dims
    for a, b in zip(mine.linears(), theirs.linears(), strict=True):
        assert torch.equal(a.weight, b.weight)
    for a, b in zip(mine.layers, theirs.layers, strict=True):
        assert torch.equal(a.input_norm, b.input_norm) and torch.equal(a.post_norm, b.post_norm)
    assert torch.equal(mine.embed_weight, theirs.embed_weight) and torch.equal(mine.final_norm, theirs.final_norm)
    direct, through = _as_loaded(tiny_loaded, dtype, fused=mine), _as_loaded(tiny_loaded, dtype, fused=theirs)
    assert torch.equal(_last_logits(direct, IDS), _last_logits(through, IDS))
    library = native_library(tiny_loaded.native.library.isa) if tiny_loaded.native else None
    if library is None:
        pytest.skip("the native kernels are not in use here")
    native = native_from_gguf(checkpoint, library, dtype, 128, "none")
    expected = native_from_fused(theirs, library, dtype, 128, "none")
    assert torch.equal(_last_logits(_as_loaded(tiny_loaded, dtype, native=native), IDS),
                       _last_logits(_as_loaded(tiny_loaded, dtype, native=expected), IDS))


def test_q4_and_q8_blocks_go_to_the_kernels_as_they_are(tmp_path, tiny_llama, tiny_loaded):
    """Q4_0 q/k/v, Q4_1 o and gate/up, Q8_0 down and embedding: packed from the blocks, they compute
    what the dequantized weights compute on torch's forward (fp32)."""
    if tiny_loaded.native is None:
        pytest.skip("the native kernels are not in use here")
    _, model = tiny_llama
    checkpoint = open_gguf(write_gguf(tmp_path / "grid.gguf", model, GRID_TYPES))
    library = native_library(tiny_loaded.native.library.isa)
    native = native_from_gguf(checkpoint, library, torch.float32, 128, "auto")
    assert native.weight_formats == {"q4": 6, "q8": 4}  # q/k/v, o, gate/up per layer; down x2, embedding, head
    assert native_from_gguf(checkpoint, library, torch.float32, 128, "none").weight_formats == {"f32": 10}
    fused = fused_from_gguf(checkpoint, torch.float32, torch.device("cpu"))
    mine = _last_logits(_as_loaded(tiny_loaded, torch.float32, native=native), IDS)
    expected = _last_logits(_as_loaded(tiny_loaded, torch.float32, fused=fused), IDS)
    torch.testing.assert_close(mine, expected, atol=1e-4, rtol=1e-4)
    if TEST_DTYPE != "float32":  # bf16 storage: the blocks are the same, activations 8-bit
        bf16 = native_from_gguf(checkpoint, library, torch.bfloat16, 128, "auto")
        torch.testing.assert_close(_last_logits(_as_loaded(tiny_loaded, torch.bfloat16, native=bf16), IDS),
                                   expected, **logit_tolerance(torch.bfloat16))


@pytest.mark.parametrize("fields, extra, reason", [
    ({"llama.rope.scaling.type": "linear"}, None, "llama.rope.scaling.type"),
    ({"llama.expert_count": 8}, None, "llama.expert_count"),
    ({"llama.attention.sliding_window": 64}, None, "llama.attention.sliding_window"),
    ({"llama.attention.key_length": 32}, None, "llama.attention.key_length"),
    ({"general.name": "mistral"}, None, "general.name"),
    ({}, {"rope_freqs.weight": np.ones(8, dtype=np.float32)}, "rope_freqs.weight"),
], ids=["rope-scaling", "experts", "sliding-window", "key-length", "mistral", "rope-freqs"])
def test_what_it_cannot_read_is_refused_naming_the_field(tmp_path, tiny_llama, fields, extra, reason):
    _, model = tiny_llama
    refusal = open_gguf(write_gguf(tmp_path / "odd.gguf", model, F32_TYPES, fields, extra))
    assert isinstance(refusal, str) and reason in refusal and "\n" not in refusal


def test_other_architectures_are_refused_naming_the_field(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "general.architecture='gemma'" in open_gguf(tmp_path / "g.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    assert "unreadable" in open_gguf(tmp_path / "bad.gguf") or "version" in open_gguf(tmp_path / "bad.gguf")


# The default model's GGUF, loaded both ways (transformers' path takes ~15-30 s here: once per module).
needs_default_gguf = pytest.mark.skipif(not DEFAULT_GGUF.is_file(),
                                        reason=f"{DEFAULT_GGUF} is absent (python -m app.prepare_model keeps it)")


@pytest.fixture(scope="module")
def through_transformers():
    return load(tiny_load_config(DEFAULT_GGUF, dtype="float32", read_checkpoints=False, native_kernels=False))


def _greedy(loaded, ids: list[int], steps: int = 6) -> list[int]:
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(_last_logits(loaded, ids).reshape(-1).argmax()))
    return ids[-steps:]


@needs_default_gguf
def test_the_default_gguf_read_directly_computes_what_transformers_loads(through_transformers):
    assert through_transformers.model is not None and through_transformers.fused is not None
    ids = through_transformers.tokenizer.encode("The capital of France is")
    expected = _last_logits(through_transformers, ids)
    # torch's forward over the directly read weights: the same weights, so the same logits
    fused = load(tiny_load_config(DEFAULT_GGUF, dtype="float32", native_kernels=False))
    assert fused.model is None and fused.fused is not None
    for mine, theirs in zip(fused.fused.linears(), through_transformers.fused.linears(), strict=True):
        assert torch.equal(mine.weight, theirs.weight)
    assert torch.equal(_last_logits(fused, ids), expected)
    assert fused.eos_token_ids == through_transformers.eos_token_ids
    assert fused.max_position_embeddings == through_transformers.max_position_embeddings
    assert fused.dims == through_transformers.dims
    # the kernels, the Q4_1 / Q8_0 blocks packed as they are
    native = load(tiny_load_config(DEFAULT_GGUF, dtype="float32", quantization="auto"))
    if native.native is None:
        pytest.skip(f"the native kernels are not in use here: {native.runtime.forward}")
    assert native.native.weight_formats == {"q4": 120, "q8": 1}
    torch.testing.assert_close(_last_logits(native, ids), expected, atol=2e-4, rtol=1e-4)
    assert _greedy(native, ids) == _greedy(through_transformers, ids)
    if TEST_DTYPE != "float32":
        low = load(tiny_load_config(DEFAULT_GGUF, dtype=TEST_DTYPE, quantization="auto"))
        assert low.native.weight_formats == {"q4": 120, "q8": 1}
        logits = _last_logits(low, ids)
        assert torch.isfinite(logits).all() and (logits - expected).abs().max() < 1.0


@needs_default_gguf
def test_the_default_gguf_s_tokenizer_is_autotokenizer_s_without_its_config_pass():
    from transformers import AutoTokenizer

    from app.engine.models.loader import _gguf_tokenizer

    direct = _gguf_tokenizer(str(DEFAULT_GGUF))
    reference = AutoTokenizer.from_pretrained(str(DEFAULT_GGUF.parent), gguf_file=DEFAULT_GGUF.name)
    assert direct is not None and type(direct) is type(reference)
    for text in ("Hello world", " leading space", "東京は日本の首都です。 👋🏽 café", "def f(x):\n\treturn x**2\n",
                 "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", ""):
        ids = reference(text)["input_ids"]
        assert direct(text)["input_ids"] == ids, text
        assert direct.decode(ids) == reference.decode(ids)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert direct.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (direct.bos_token, direct.eos_token, direct.pad_token, direct.unk_token) == \
        (reference.bos_token, reference.eos_token, reference.pad_token, reference.unk_token)
    assert direct.added_tokens_decoder == reference.added_tokens_decoder and len(direct) == len(reference)
