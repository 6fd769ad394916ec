"""Tiny GGUF files written from transformers models as llama.cpp's convert_hf_to_gguf.py writes them
(its tensor names, Llama's Q/K rows permuted, its metadata keys), for the GGUF reader's tests."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.quants import quantize

T = gguf.GGMLQuantizationType

# transformers' module (under model.layers.N.) -> llama.cpp's tensor (under blk.N.), and its part
# in a `types` dict (None: a norm or bias, always F32).
_LAYER_NAMES = {
    "input_layernorm": ("attn_norm", None), "post_attention_layernorm": ("ffn_norm", None),
    "self_attn.q_proj": ("attn_q", "q"), "self_attn.k_proj": ("attn_k", "k"), "self_attn.v_proj": ("attn_v", "v"),
    "self_attn.qkv_proj": ("attn_qkv", "qkv"), "self_attn.o_proj": ("attn_output", "output"),
    "self_attn.q_norm": ("attn_q_norm", None), "self_attn.k_norm": ("attn_k_norm", None),
    "mlp.gate_proj": ("ffn_gate", "gate"), "mlp.up_proj": ("ffn_up", "up"), "mlp.gate_up_proj": ("ffn_up", "up"),
    "mlp.down_proj": ("ffn_down", "down"),
}
_ARCH = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
         "Phi3ForCausalLM": "phi3"}

F32_TYPES = dict.fromkeys(("q", "k", "v", "qkv", "output", "gate", "up", "down", "embed"), T.F32)
# Q4_0 attention, Q4_1 o and gate/up, Q8_0 down and embedding (and output).
GRID_TYPES = {"q": T.Q4_0, "k": T.Q4_0, "v": T.Q4_0, "qkv": T.Q4_0, "output": T.Q4_1, "gate": T.Q4_1,
              "up": T.Q4_1, "down": T.Q8_0, "embed": T.Q8_0}


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def write_gguf(path: Path, model, types: dict, fields: dict | None = None, extra: dict[str, np.ndarray] | None = None,
               tokenizer=None) -> Path:
    """`model` as a GGUF of its architecture, each matrix in `types`; `fields` added as they are (str, float or
    uint32), `extra` tensors too; `tokenizer(writer)` adds a vocabulary."""
    config = model.config
    arch = _ARCH[type(model).__name__]
    writer = _sized_writer(path, arch, config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if arch == "qwen3" and "qwen3.attention.key_length" not in (fields or {}):  # as llama.cpp writes Qwen3
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    _add_fields(writer, fields, tokenizer)
    put = _tensor_putter(writer)
    state = model.state_dict()
    put("token_embd.weight", state["model.embed_tokens.weight"], types["embed"])
    put("output_norm.weight", state["model.norm.weight"])
    if not config.tie_word_embeddings:
        put("output.weight", state["lm_head.weight"], types["embed"])
    for i, module, suffix, tensor in _layer_tensors(state, config.num_hidden_layers):
        name, part = _LAYER_NAMES[module]
        if arch == "llama" and part in ("q", "k"):
            heads = config.num_attention_heads if part == "q" else config.num_key_value_heads
            tensor = torch.from_numpy(permute(tensor.numpy(), heads))
        put(f"blk.{i}.{name}.{suffix}", tensor, types[part] if part and suffix == "weight" else T.F32)
    return _finish(writer, extra, path)


def _layer_tensors(state: dict, layers: int):
    """(layer, module, "weight" or "bias", tensor) of each layer's tensors in a state dict, layer by layer."""
    for i in range(layers):
        prefix = f"model.layers.{i}."
        for key, tensor in state.items():
            if key.startswith(prefix):
                module, suffix = key[len(prefix):].rsplit(".", 1)
                yield i, module, suffix, tensor


def _sized_writer(path: Path, arch: str, config):
    """A GGUFWriter for `arch` with the sizes every architecture writes: layers, context, widths, heads."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    return writer


def _add_fields(writer, fields: dict | None, tokenizer) -> None:
    """`fields` as they are (str, float or uint32), then the vocabulary `tokenizer(writer)` adds."""
    for key, value in (fields or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    if tokenizer is not None:
        tokenizer(writer)


def _tensor_putter(writer):
    """put(name, tensor, kind): a tensor into the file, F32 as it is, else quantized to `kind`'s blocks."""
    def put(name: str, tensor: torch.Tensor, kind=T.F32) -> None:
        values = np.ascontiguousarray(tensor.detach().float().numpy())
        if kind == T.F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, quantize(values, kind), raw_dtype=kind)
    return put


def _finish(writer, extra: dict[str, np.ndarray] | None, path: Path) -> Path:
    """The `extra` tensors, then header, fields and tensors written out."""
    for name, values in (extra or {}).items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# A Llama-2-style sentencepiece vocabulary (tokenizer.ggml.model "llama"): <unk>, <s>, </s>, the 256
# byte tokens <0x00>..<0xFF> (byte fallback), then pieces with "▁" for a space, scored best first.
SPM_PIECES = ["▁", "e", "t", "a", "o", "n", "i", "s", "h", "r", "l", "d", "c", "u", "w", "f", "H", "W", "T",
              "é", "東", "京", "▁t", "he", "▁the", "in", "er", "▁a", "on", "re", "▁w", "or", "ll", "▁H", "▁W",
              "an", "en", "▁c", "▁f", "at", "is", "▁is", "▁wor", "ld", "▁world", "▁He", "llo", "▁Hello", "\n",
              "▁▁", "▁▁▁", "。", "東京"]
SPM_SPECIALS = ["<|user|>", "<|end|>"]  # control tokens, as chat models add them


def spm_tokenizer(writer) -> int:
    """Writes the sentencepiece vocabulary into `writer`; returns its size."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)] + SPM_PIECES + SPM_SPECIALS
    # token types: 2 unknown, 3 control, 6 byte, 1 normal; pieces scored best first, as sentencepiece does
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES) + [3] * len(SPM_SPECIALS)
    scores = [0.0] * 259 + [-float(rank) for rank in range(len(SPM_PIECES))] + [0.0] * len(SPM_SPECIALS)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    return len(tokens)


# Gemma 2/3 as llama.cpp's convert_hf_to_gguf.py (conversion/gemma.py) writes them: its tensor names
# (the norm after attention `post_attention_norm`, before the MLP `ffn_norm`, after it `post_ffw_norm`),
# every `*norm.weight` stored as 1 + weight, no Q/K permutation, Gemma 2 without `output.weight`.
_GEMMA_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}


def write_gemma_gguf(path: Path, model, types: dict, tokenizer=None, fields: dict | None = None,
                     extra: dict[str, np.ndarray] | None = None) -> Path:
    """A Gemma2ForCausalLM / Gemma3ForCausalLM as its GGUF (`gemma2` / `gemma3`), with the metadata the
    converter writes for it; `fields` added as they are (str, float or uint32), `extra` tensors too."""
    config = model.config
    arch = {"Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3"}[type(model).__name__]
    writer = _sized_writer(path, arch, config)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    if arch == "gemma2":  # Gemma2Model.set_gguf_parameters: no RoPE base (llama.cpp's default, 10,000)
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)
    else:  # TextModel's RoPE fields (the global layers' scaling and base, the local base), then Gemma 3's
        full, local = config.rope_parameters["full_attention"], config.rope_parameters["sliding_attention"]
        if full.get("rope_type") == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(full["factor"])
        writer.add_rope_freq_base(full["rope_theta"])
        writer.add_rope_freq_base_swa(local["rope_theta"])
        if config.final_logit_softcapping:
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)
    _add_fields(writer, fields, tokenizer)
    put = _tensor_putter(writer)
    state = model.state_dict()
    put("token_embd.weight", state["model.embed_tokens.weight"], types["embed"])
    put("output_norm.weight", state["model.norm.weight"] + 1)
    for i, module, suffix, tensor in _layer_tensors(state, config.num_hidden_layers):
        if module in _GEMMA_NORMS or module.endswith("_norm"):
            name = _GEMMA_NORMS.get(module) or _LAYER_NAMES[module][0]
            put(f"blk.{i}.{name}.{suffix}", tensor + 1)
            continue
        name, part = _LAYER_NAMES[module]
        put(f"blk.{i}.{name}.{suffix}", tensor, types[part] if suffix == "weight" else T.F32)
    return _finish(writer, extra, path)


# A Gemma-style sentencepiece vocabulary as llama.cpp writes Gemma's (tokenizer.ggml.model "llama", no
# space prefix): <pad> <eos> <bos> <unk>, turn markers, the byte tokens, pieces with "▁" for a space,
# runs of spaces stored as real spaces, and an HTML tag as a user-defined token.
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_PIECES = ["▁", "e", "t", "a", "o", "n", "i", "s", "h", "r", "l", "d", "c", "u", "w", "f", "H", "W", "T",
                "é", "東", "京", "\n", "▁t", "he", "▁the", "in", "er", "▁a", "on", "re", "▁w", "or", "ll", "▁H",
                "▁W", "an", "en", "▁c", "▁f", "at", "is", "▁is", "▁wor", "ld", "▁world", "▁He", "llo", "▁Hello",
                "Hello", "world", "  ", "   ", "\n\n", "。", "東京", "user", "model"]
GEMMA_USER_DEFINED = ["<table>"]


def gemma_tokenizer(writer) -> int:
    """Writes the Gemma-style vocabulary into `writer`; returns its size."""
    tokens = GEMMA_SPECIALS + [f"<0x{byte:02X}>" for byte in range(256)] + GEMMA_PIECES + GEMMA_USER_DEFINED
    types = [3, 3, 3, 2, 4, 3, 3] + [6] * 256 + [1] * len(GEMMA_PIECES) + [4] * len(GEMMA_USER_DEFINED)
    scores = [0.0] * (len(GEMMA_SPECIALS) + 256) + [-float(rank) for rank in range(len(GEMMA_PIECES))] \
        + [0.0] * len(GEMMA_USER_DEFINED)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_space_prefix(False)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    return len(tokens)
