"""A Llama-family checkpoint read straight into FusedLlama computes what transformers' own model does,
for each architecture and layout it accepts; anything it cannot read exactly goes through transformers.
Either way the native kernels then get the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers import Qwen2Config, Qwen2ForCausalLM

from app.engine.models.fused_llama import DefaultRotary
from app.engine.models.llama_checkpoint import open_checkpoint
from app.engine.models.loader import load, load_tokenizer
from app.engine.text.tokenizer import FastTokenizer
from tests.conftest import build_tiny_model
from tests.engine.helpers import reference_logits, tiny_load_config

PROMPT = "The capital of France is Paris. Hello world!"
SIZES = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.5)


def _save(folder: Path, model, **save_options) -> Path:
    torch.manual_seed(0)
    model.eval().save_pretrained(folder, **save_options)
    return folder


def _both_ways(folder: Path, tokenizer_dir: Path, dtype: str = "float32", native: bool = False):
    """(read from the checkpoint, through transformers) for a folder given the tiny tokenizer; on
    torch's fused forward (transformers' model kept) unless `native`."""
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).exists() and not (folder / name).exists():
            (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    direct = load(tiny_load_config(folder, dtype=dtype, native_kernels=native))
    through = load(tiny_load_config(folder, dtype=dtype, read_checkpoints=False, native_kernels=native))
    return direct, through


def _last_logits(loaded, ids: list[int]) -> torch.Tensor:
    from tests.engine.helpers import make_core

    runner = make_core(loaded).runner
    return runner.prefill(runner.new_cache(), ids, 0)


def test_the_tiny_model_is_read_without_transformers_model_class(tiny_loaded, tiny_fused):
    assert tiny_loaded.model is None and tiny_loaded.native is not None
    assert tiny_fused.model is None and tiny_fused.fused is not None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reading_directly_gives_exactly_transformers_weights_and_logits(tiny_model_dir, dtype):
    direct, through = _both_ways(tiny_model_dir, tiny_model_dir, dtype)
    assert direct.model is None and through.model is not None
    for mine, theirs in zip(direct.fused.linears(), through.fused.linears(), strict=True):
        assert torch.equal(mine.weight, theirs.weight) and mine.weight.dtype == theirs.weight.dtype
    for mine, theirs in zip(direct.fused.layers, through.fused.layers, strict=True):
        assert torch.equal(mine.input_norm, theirs.input_norm) and torch.equal(mine.post_norm, theirs.post_norm)
    assert torch.equal(direct.fused.embed_weight, through.fused.embed_weight)
    assert direct.eos_token_ids == through.eos_token_ids
    assert direct.max_position_embeddings == through.max_position_embeddings
    assert direct.dims == through.dims
    ids = direct.tokenizer.encode(PROMPT)
    assert torch.equal(_last_logits(direct, ids), _last_logits(through, ids))
    direct, through = _both_ways(tiny_model_dir, tiny_model_dir, dtype, native=True)
    assert direct.native is not None and through.native is not None
    assert torch.equal(_last_logits(direct, ids), _last_logits(through, ids))


def test_the_default_rope_matches_transformers_rotary_module(tiny_reference_fp32):
    module = tiny_reference_fp32.model.rotary_emb
    config = tiny_reference_fp32.config
    rotary = DefaultRotary(config.rope_parameters["rope_theta"], config.head_dim, torch.device("cpu"))
    positions = torch.tensor([[0, 1, 2, 7, 100, 4095]])
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.zeros(1, 6, 4, dtype=dtype)
        for mine, theirs in zip(rotary(x, positions), module(x, positions), strict=True):
            assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)


@pytest.mark.parametrize("model", [
    Qwen2ForCausalLM(Qwen2Config(**SIZES, tie_word_embeddings=False)),  # q/k/v biases, an LM head of its own
    LlamaForCausalLM(LlamaConfig(**SIZES, attention_bias=True, mlp_bias=True, rope_theta=500000.0)),
    MistralForCausalLM(MistralConfig(**SIZES, sliding_window=None, head_dim=32)),
], ids=["qwen2", "llama-biases", "mistral"])
def test_each_architecture_reads_exactly(tmp_path, tiny_model_dir, model):
    direct, through = _both_ways(_save(tmp_path, model), tiny_model_dir)
    assert direct.model is None, "read from the checkpoint"
    ids = [3, 17, 42, 5, 88, 11, 60]
    expected = reference_logits(through.model, ids)[-1]
    torch.testing.assert_close(_last_logits(direct, ids), expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(_last_logits(direct, ids), _last_logits(through, ids))
    direct, through = _both_ways(tmp_path, tiny_model_dir, native=True)
    torch.testing.assert_close(_last_logits(direct, ids), expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(_last_logits(direct, ids), _last_logits(through, ids))


def test_a_sharded_checkpoint_reads_like_one_file(tmp_path, tiny_model_dir):
    model = LlamaForCausalLM(LlamaConfig(**SIZES))
    direct, through = _both_ways(_save(tmp_path, model, max_shard_size="60KB"), tiny_model_dir)
    assert (tmp_path / "model.safetensors.index.json").is_file() and direct.model is None
    ids = [3, 17, 42, 5]
    assert torch.equal(_last_logits(direct, ids), _last_logits(through, ids))


def _rewrite_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _rewrite_tensors(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("change, reason", [
    (lambda f: _rewrite_config(f, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 64}), "RoPE type"),
    (lambda f: _rewrite_config(f, quantization_config={"quant_method": "gptq"}), "quantized"),
    (lambda f: _rewrite_config(f, model_type="gemma"), "model_type"),
    (lambda f: _rewrite_config(f, hidden_act="gelu"), "hidden_act"),
    (lambda f: _rewrite_tensors(f, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")), "missing tensors"),
    (lambda f: _rewrite_tensors(f, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)})),
     "unexpected tensors"),
    (lambda f: (f / "model.safetensors").unlink(), "no safetensors"),
    (lambda f: _rewrite_config(f, rope_scaling={"type": "linear", "factor": 2.0}), "RoPE type"),  # beats rope_parameters
    (lambda f: _rewrite_config(f, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     "per layer type"),
    (lambda f: _rewrite_config(f, vocab_size=500), "tensor shapes"),
    (lambda f: _rewrite_config(f, model_type="qwen2", architectures=["Qwen2ForCausalLM"], num_key_value_heads=None),
     "num_key_value_heads"),  # Qwen2Config's default (32) is not the head count
    (lambda f: (f / "model.safetensors").write_bytes(b"not a safetensors file"), "unreadable"),
], ids=["rope-scaling", "quantized", "other-architecture", "activation", "missing", "unexpected", "no-weights",
        "rope-scaling-beats-parameters", "nested-rope", "shapes", "qwen2-default-kv-heads", "corrupt"])
def test_what_it_cannot_read_exactly_is_refused_with_a_reason(tmp_path, change, reason):
    folder = build_tiny_model(tmp_path / "model")
    change(folder)
    refusal = open_checkpoint(str(folder))
    assert isinstance(refusal, str) and reason in refusal


def test_an_old_checkpoints_stored_rotary_frequencies_are_ignored(tmp_path):
    folder = build_tiny_model(tmp_path / "model")
    _rewrite_tensors(folder, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    assert not isinstance(open_checkpoint(str(folder)), str)


def test_a_refused_checkpoint_still_loads_through_transformers(tmp_path):
    folder = build_tiny_model(tmp_path / "model")
    _rewrite_config(folder, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    loaded = load(tiny_load_config(folder, dtype="float32", native_kernels=False))
    assert loaded.model is not None and loaded.runtime.forward.startswith("fused")  # over transformers' model
    ids = loaded.tokenizer.encode(PROMPT)
    expected = reference_logits(loaded.model, ids)[-1]
    torch.testing.assert_close(_last_logits(loaded, ids), expected, atol=1e-4, rtol=1e-4)
    native = load(tiny_load_config(folder, dtype="float32"))  # the linear RoPE as a table: native too
    assert native.runtime.forward.startswith("native")
    torch.testing.assert_close(_last_logits(native, ids), expected, atol=1e-4, rtol=1e-4)


def test_mistral_biases_are_not_read_as_transformers_drops_them(tmp_path, tiny_model_dir):
    folder = _save(tmp_path, MistralForCausalLM(MistralConfig(**SIZES, sliding_window=None)))
    _rewrite_config(folder, attention_bias=True)
    _rewrite_tensors(folder, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.ones(64)}))
    assert "unexpected tensors" in open_checkpoint(str(folder))


def test_a_qwen2_folder_gets_the_tokenizer_auto_tokenizer_builds(tmp_path, tiny_model_dir):
    direct, _ = _both_ways(_save(tmp_path, Qwen2ForCausalLM(Qwen2Config(**SIZES))), tiny_model_dir)
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(auto).__name__ == "Qwen2Tokenizer"  # with its own normaliser and regex, which FastTokenizer takes
    assert isinstance(direct.tokenizer, FastTokenizer) and direct.tokenizer.tokenizer_class == "Qwen2Tokenizer"
    texts = ["cafe\u0301 na\u00efve", "a\r\n\r\nb", PROMPT]
    assert [direct.tokenizer.encode(t) for t in texts] == [auto.encode(t) for t in texts]


def test_the_generic_tokenizer_works_as_the_one_auto_tokenizer_builds(tiny_model_dir):
    direct, auto = load_tokenizer(str(tiny_model_dir)), AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert isinstance(direct, FastTokenizer)  # without importing transformers (test_fast_tokenizer.py)
    texts = [PROMPT, "東京は日本の首都です 👋🏽", "<|im_start|>user\nhi<|im_end|>\n", "  spaces\tand\ttabs  "]
    assert [direct.encode(t) for t in texts] == [auto.encode(t) for t in texts]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (direct.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert (direct.eos_token_id, direct.bos_token_id, direct.all_special_ids) == (
        auto.eos_token_id, auto.bos_token_id, auto.all_special_ids)


def test_loading_the_tiny_model_imports_no_transformers_model_code(tiny_model_dir):
    """The point of reading checkpoints directly: the modeling code (and torch.distributed, which
    transformers' config classes pull in) costs seconds of start-up. Checked in a fresh interpreter."""
    script = (
        "import sys\n"
        "from app.engine.models.loader import LoadConfig, load\n"
        "import app.main, app.lifecycle\n"
        f"loaded = load(LoadConfig({str(tiny_model_dir)!r}, dtype='float32', quantization='none'))\n"
        "assert loaded.model is None\n"
        "heavy = [m for m in ('transformers.modeling_utils', 'transformers.models.llama.configuration_llama',"
        " 'torch.distributed.tensor') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_auto_dtype_is_the_kernels_choice_only_for_a_checkpoint_they_run(tiny_model_dir):
    """A model only transformers reads may end on torch's forward, where bf16 is emulated on an AVX2
    CPU: it gets the CPU's own auto dtype, not the kernels' (bf16 on every CPU)."""
    direct = load(tiny_load_config(tiny_model_dir, dtype="auto"))
    through = load(tiny_load_config(tiny_model_dir, dtype="auto", read_checkpoints=False))
    if direct.native is None:
        pytest.skip(f"the native kernels are not in use here: {direct.runtime.forward}")
    assert direct.runtime.dtype == "bfloat16" and "native kernels" in direct.runtime.dtype_reason
    assert "native kernels" not in through.runtime.dtype_reason
