"""The model families the fast path computes: what each checkpoint looks like.

Every family here but Gemma's has the same decoder layer (FusedLlama's, which the native kernels
compute): RMSNorm -> attention (q/k/v/o, RoPE, GQA) -> residual -> RMSNorm -> SiLU-gated MLP -> residual.
What differs is written down once, in one module per family (llama.py, qwen2.py, ...): the tensor names
(q/k/v stored apart or fused, gate/up likewise), which projections carry biases, extra norms (Qwen3's
per-head q/k norms), the config keys whose class defaults must be written out, and what the fast path
cannot compute for it (refused in one line, the model then runs on transformers' forward). Gemma 2 and 3
(`layer="gemma"`: four norms around attention and MLP, a GELU MLP, soft-capping, local and global
layers) run on FusedGemma (fused_gemma.py), torch only. The loader, llama_checkpoint.py, fused_llama.py
and the native kernels look a family up here by config.json's `model_type` or transformers' class name,
so adding a family is one module (a `FAMILY`), its name in _MODULES, and its test
(tests/engine/test_families.py), as mini-sglang's models/register.py lists its model modules.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Getter = Callable[[str, object], object]  # (config key, default) -> value: a config.json dict or a config object

# The family modules, each defining FAMILY; imported on the first lookup.
_MODULES = ("llama", "qwen2", "mistral", "qwen3", "phi3", "gemma2", "gemma3")


def _none(get: Getter) -> tuple[str, ...]:
    return ()


def _nothing_refused(get: Getter) -> str | None:
    return None


def _as_written(config: dict) -> dict | str:
    return config


@dataclass(frozen=True)
class Family:
    """How one transformers architecture maps onto FusedLlama."""

    model_type: str  # config.json's model_type
    architecture: str  # transformers' class, as config.json's `architectures` names it
    # Modules under self_attn holding q, k and v in that order: three, or one stored fused [q; k; v].
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    # Modules under mlp holding gate and up: two, or one stored fused [gate; up].
    gate_up: tuple[str, ...] = ("gate_proj", "up_proj")
    # self_attn.q_norm / k_norm: an RMSNorm (weights of head_dim) over each head of q and k before RoPE.
    head_norms: bool = False
    # config.json keys that must be present: the class default differs from what a missing key reads as
    # here (LlamaConfig's: as many KV heads as heads, head_dim = hidden / heads, 2,048 positions).
    required: tuple[str, ...] = ()
    # Class defaults the config checks must see when config.json leaves the key out.
    defaults: Mapping[str, object] = field(default_factory=dict)
    # Which projections carry a bias, by part ("q", "k", "v", "o", "gate", "up", "down"), from the config.
    biases: Callable[[Getter], tuple[str, ...]] = _none
    # What the fast path cannot compute for this family, in one line naming the field; None if nothing.
    refusal: Callable[[Getter], str | None] = _nothing_refused
    # The decoder layer's shape, which picks the forward: "llama" (FusedLlama) or "gemma" (FusedGemma,
    # fused_gemma.py); the native kernels are packed from either.
    layer: str = "llama"
    # Config keys whose values cap the attention scores and/or the final logits as cap * tanh(x / cap)
    # (Gemma 2: both; Gemma 3 reads only the final one): where a key's value is None, no cap.
    softcapping: tuple[str, ...] = ()
    # config.json -> the config its transformers class reads from it, with what the class derives from
    # older fields and its defaults written out (Gemma: families/gemma_config.py), or why that is not
    # mirrored (one line naming the field and its value). Others: config.json as written.
    as_saved: Callable[[dict], dict | str] = _as_written
    # Whether a sliding window applies to every layer when config.json lists no layer_types (Mistral,
    # Phi-3), so a checkpoint can be read with its windows; elsewhere (Qwen2/3: max_window_layers and
    # use_sliding_window pick the layers) only layer_types written out say which layers slide.
    window_on_every_layer: bool = False

    def tensor_names(self) -> dict[str, tuple[str, ...]]:
        """Each stored projection module (relative to a layer) -> the parts it holds, in order."""
        def stored(parent: str, names: tuple[str, ...], parts: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
            if len(names) == 1:
                return {f"{parent}.{names[0]}": parts}
            assert len(names) == len(parts), f"{self.model_type}: {names} for {parts}"
            return {f"{parent}.{name}": (part,) for name, part in zip(names, parts)}

        return (stored("self_attn", self.qkv, ("q", "k", "v")) | {"self_attn.o_proj": ("o",)}
                | stored("mlp", self.gate_up, ("gate", "up")) | {"mlp.down_proj": ("down",)})


@functools.cache
def _registered() -> dict[str, Family]:
    families = {}
    for name in _MODULES:
        family = importlib.import_module(f"app.engine.models.families.{name}").FAMILY
        families[family.model_type] = family
    return families


def families() -> list[Family]:
    return list(_registered().values())


def by_model_type(model_type: object) -> Family | None:
    return _registered().get(model_type) if isinstance(model_type, str) else None


def by_architecture(name: str) -> Family | None:
    return next((f for f in _registered().values() if f.architecture == name), None)


def model_types() -> list[str]:
    return sorted(_registered())


def architectures() -> list[str]:
    return sorted(f.architecture for f in _registered().values())


def rope_parameters(get: Getter) -> dict:
    """The RoPE parameters as transformers reads them: `rope_scaling`, when set, replaces `rope_parameters`."""
    params = get("rope_scaling", None) or get("rope_parameters", None) or {}
    return params if isinstance(params, dict) else {}
