"""Llama (LlamaForCausalLM): biases where attention_bias / mlp_bias say (q/k/v/o; gate/up/down)."""

from app.engine.models.families.registry import Family, Getter


def _biases(get: Getter) -> tuple[str, ...]:
    return (("q", "k", "v", "o") if get("attention_bias", False) else ()) + (
        ("gate", "up", "down") if get("mlp_bias", False) else ())


FAMILY = Family("llama", "LlamaForCausalLM", biases=_biases)
