"""Phi-3 (Phi3ForCausalLM): q/k/v stored fused as qkv_proj [q; k; v] and gate/up as gate_up_proj
[gate; up] (FusedLlama's own layouts), no biases. The fast path rotates whole heads with one RoPE
table: a partial_rotary_factor below 1 (Phi-4-mini) and LongRoPE (Phi-3-*-128k, whose tables switch
with the sequence length) keep transformers' forward."""

from app.engine.models.families.registry import Family, Getter, rope_parameters


def _refusal(get: Getter) -> str | None:
    params = rope_parameters(get)
    factor = params.get("partial_rotary_factor", get("partial_rotary_factor", None))
    if factor is not None and float(factor) != 1.0:
        return f"partial_rotary_factor={factor} (the fast path rotates whole heads)"
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type in ("longrope", "su", "yarn"):  # Phi3Config reads "su" and "yarn" as LongRoPE
        return f"rope_scaling type {rope_type!r} (LongRoPE: its tables switch with the sequence length)"
    return None


FAMILY = Family("phi3", "Phi3ForCausalLM", qkv=("qkv_proj",), gate_up=("gate_up_proj",),
                required=("max_position_embeddings",), refusal=_refusal, window_on_every_layer=True)
