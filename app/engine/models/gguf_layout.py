"""How llama.cpp lays out each architecture gguf_checkpoint.py reads, and what transformers' GGUF loader
makes of it (integrations/ggml.py's key mapping, modeling_gguf_pytorch_utils.py's tensor processors).

All four are FusedLlama's layer under other names (app/engine/models/families/): what differs is whether
llama.cpp permuted Q/K's rows (Llama only: transformers' LlamaTensorProcessor undoes it; Qwen2/Qwen3/
Phi-3 keep the base TensorProcessor), which matrices are stored fused (Phi-3's `attn_qkv` [q; k; v] and
`ffn_up` [gate; up], transformers' qkv_proj and gate_up_proj), Qwen2's q/k/v biases, Qwen3's per-head
q/k norms, and the config class defaults transformers fills in for what the file does not say (Qwen3's
head_dim is its class's 128 whatever the file says: qwen3 maps no `attention.key_length`).
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
)}
