"""Qwen3 (dense, Qwen3ForCausalLM): Qwen2's layer without its q/k/v biases (all four attention
projections have one only with attention_bias), and an RMSNorm over each head of q and of k (q_norm,
k_norm: head_dim weights) before RoPE. head_dim is its own (Qwen3Config's default is 128, not
hidden / heads), so config.json must name it."""

from app.engine.models.families.registry import Family

FAMILY = Family("qwen3", "Qwen3ForCausalLM", head_norms=True,
                required=("num_key_value_heads", "max_position_embeddings", "head_dim"),
                defaults={"use_sliding_window": False},
                biases=lambda get: ("q", "k", "v", "o") if get("attention_bias", False) else ())
