"""Mistral (MistralForCausalLM): no biases (transformers drops any stored); MistralConfig's default
sliding window (4,096) applies where config.json names none, on every layer (the fast path computes it)."""

from app.engine.models.families.registry import Family

FAMILY = Family("mistral", "MistralForCausalLM", required=("num_key_value_heads", "max_position_embeddings"),
                defaults={"sliding_window": 4096}, window_on_every_layer=True)
