"""Gemma 2 (Gemma2ForCausalLM), on FusedGemma (fused_gemma.py): RMSNorms scaling by (1 + weight) before and
after attention and the MLP, embeddings times sqrt(hidden_size), a gelu_pytorch_tanh-gated MLP, scores
scaled by query_pre_attn_scalar ** -0.5 and soft-capped (attn_logit_softcapping), final logits
soft-capped (final_logit_softcapping), sliding-window layers as layer_types say (or, in a config.json
from transformers 4.4x, alternating: gemma_config.py reads it as Gemma2Config does). The fast path refuses
another activation, bidirectional attention and a RoPE whose tables change with the sequence length."""

from app.engine.models.families.gemma_config import gemma2_as_saved
from app.engine.models.families.registry import Family, Getter, rope_parameters

_VARYING_ROPE = ("dynamic", "longrope")  # tables recomputed from the batch's longest sequence


def gemma_refusal(get: Getter) -> str | None:
    """What FusedGemma does not compute for a Gemma 2 or 3 config, in one line naming the field."""
    activation = get("hidden_activation", None)
    if activation != "gelu_pytorch_tanh":
        return f"hidden_activation {activation!r}"
    if get("use_bidirectional_attention", None):
        return "use_bidirectional_attention (not causal)"
    params = rope_parameters(get)
    for rope in [p for p in params.values() if isinstance(p, dict)] or [params]:
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type in _VARYING_ROPE:
            return f"rope_scaling type {rope_type!r} (its tables change with the sequence length)"
    return None


def gemma_biases(get: Getter) -> tuple[str, ...]:
    return ("q", "k", "v", "o") if get("attention_bias", False) else ()


FAMILY = Family("gemma2", "Gemma2ForCausalLM", layer="gemma", biases=gemma_biases, refusal=gemma_refusal,
                softcapping=("attn_logit_softcapping", "final_logit_softcapping"), as_saved=gemma2_as_saved)
