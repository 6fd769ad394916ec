"""How llama.cpp lays out each architecture gguf_checkpoint.py reads, and what transformers' GGUF loader
makes of it (integrations/ggml.py's key mapping, modeling_gguf_pytorch_utils.py's tensor processors).

All four are FusedLlama's layer under other names (app/engine/models/families/): what differs is whether
llama.cpp permuted Q/K's rows (Llama only: transformers' LlamaTensorProcessor undoes it; Qwen2/Qwen3/
Phi-3 keep the base TensorProcessor), which matrices are stored fused (Phi-3's `attn_qkv` [q; k; v] and
`ffn_up` [gate; up], transformers' qkv_proj and gate_up_proj), Qwen2's q/k/v biases, Qwen3's per-head
q/k norms, and the config class defaults transformers fills in for what the file does not say (Qwen3's
head_dim is its class's 128 whatever the file says: qwen3 maps no `attention.key_length`).

Gemma 2 and Gemma 3 (`gemma=True`) are FusedGemma's layer: llama.cpp's converter stores every RMSNorm
weight as 1 + weight (Gemma's norms scale by 1 + weight; llama.cpp's by the weight), names the norm
before attention `attn_norm`, after it `post_attention_norm`, before the MLP `ffn_norm`, after it
`post_ffw_norm`, leaves Q/K unpermuted, and Gemma 2's output is always the embedding (no `output.weight`).
Their config is read as llama.cpp reads it (gguf_checkpoint._gemma_config), not only from the keys
transformers' GGUF loader maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GgufLayout:
    arch: str  # general.architecture, also transformers' model_type here
    qkv: tuple[str, ...] = ("attn_q", "attn_k", "attn_v")  # one name: stored fused [q; k; v]
    gate_up: tuple[str, ...] = ("ffn_gate", "ffn_up")  # one name: stored fused [gate; up]
    permuted_qk: bool = False  # llama.cpp permuted Q and K's rows for its RoPE
    qkv_biases: bool = False
    head_norms: bool = False  # attn_q_norm / attn_k_norm of head_dim
    # The config class's defaults for what the file may leave out; head_dim None: hidden / heads.
    defaults: Mapping[str, object] = field(default_factory=dict)
    eos_token_id: int | None = None  # the config class's, where the file names none
    gemma: bool = False  # Gemma 2/3: FusedGemma's layer, norms stored as 1 + weight, four norms a layer
    model_type: str | None = None  # transformers' model_type where it is not the architecture's name
    untied: bool = True  # whether the file may hold its own output.weight (Gemma 2's never does)
    # Tokens that end a chat turn though the file names only <eos> (Gemma's chat template ends a turn with
    # <end_of_turn>; transformers' generation_config lists it, llama.cpp finds it by its text).
    turn_ends: tuple[str, ...] = ()

    def head_dim(self, hidden: int, heads: int) -> int:
        return int(self.defaults.get("head_dim") or hidden // heads)


LAYOUTS = {layout.arch: layout for layout in (
    GgufLayout("llama", permuted_qk=True, defaults={"max_position_embeddings": 2048, "rope_theta": 10000.0},
               eos_token_id=2),
    GgufLayout("qwen2", qkv_biases=True, defaults={"max_position_embeddings": 32768, "rope_theta": 10000.0}),
    GgufLayout("qwen3", head_norms=True,
               defaults={"max_position_embeddings": 32768, "rope_theta": 10000.0, "head_dim": 128}),
    GgufLayout("phi3", qkv=("attn_qkv",), gate_up=("ffn_up",),
               defaults={"max_position_embeddings": 4096, "rope_theta": 10000.0}, eos_token_id=32000),
    GgufLayout("gemma2", gemma=True, untied=False, eos_token_id=1, turn_ends=("<end_of_turn>",)),
    GgufLayout("gemma3", gemma=True, head_norms=True, model_type="gemma3_text", eos_token_id=1,
               turn_ends=("<end_of_turn>",)),
)}
_BY_MODEL_TYPE = {layout.model_type or layout.arch: layout for layout in LAYOUTS.values()}


def layout_for(model_type: str) -> GgufLayout:
    """The layout of a GGUF config's model_type (transformers' name: gemma3_text for `gemma3`)."""
    return _BY_MODEL_TYPE[model_type]
