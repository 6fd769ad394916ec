"""Qwen2 (Qwen2ForCausalLM): always q/k/v biases; a sliding window only with use_sliding_window."""

from app.engine.models.families.registry import Family

FAMILY = Family("qwen2", "Qwen2ForCausalLM", required=("num_key_value_heads", "max_position_embeddings"),
                defaults={"use_sliding_window": False}, biases=lambda get: ("q", "k", "v"))
