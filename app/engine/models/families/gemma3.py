"""Gemma 3's text model (Gemma3ForCausalLM, model_type gemma3_text), on FusedGemma: Gemma 2's layer with
an RMSNorm (1 + weight) over each head of q and k before RoPE (q_norm, k_norm), local layers' RoPE
(rope_local_base_freq) apart from the global layers' (which may be scaled, e.g. linear), the final
logits soft-capped where final_logit_softcapping is set; attention scores are never capped (Gemma 3's
attention ignores attn_logit_softcapping). Layers slide as layer_types (or sliding_window_pattern) say;
a config.json from transformers 4.4x (rope_theta, rope_local_base_freq, rope_scaling) is read as
Gemma3TextConfig reads it (gemma_config.py)."""

from app.engine.models.families.gemma2 import gemma_biases, gemma_refusal
from app.engine.models.families.gemma_config import gemma3_as_saved
from app.engine.models.families.registry import Family

FAMILY = Family("gemma3_text", "Gemma3ForCausalLM", layer="gemma", head_norms=True, biases=gemma_biases,
                refusal=gemma_refusal, softcapping=("final_logit_softcapping",), as_saved=gemma3_as_saved)
