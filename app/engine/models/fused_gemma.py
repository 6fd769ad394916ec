"""FusedGemma: Gemma 2's and Gemma 3's (text) forward pass in a few torch ops per layer.

The same function as transformers' Gemma2ForCausalLM / Gemma3ForCausalLM over the model's own weights:
embeddings times sqrt(hidden_size) (rounded to the model's dtype, as transformers' scaled embedding
does), per layer an RMSNorm scaling by (1 + weight) before attention, after attention, before and after
the MLP (the fp32 norm weights here are 1 + weight, so FusedLlama's one-op RMSNorm computes them), q/k/v
in one matmul, Gemma 3's per-head q/k norms before RoPE, RoPE from the model's own rotary module (per
layer type for Gemma 3: local layers' rope_local_base_freq, global layers' scaled RoPE), scores scaled
by query_pre_attn_scalar ** -0.5, Gemma 2's tanh soft-cap on the scores and on the final logits, and a
gelu_pytorch_tanh-gated MLP. Sliding layers limit each query to keys whose position lies within the
window (fused_llama.attention_mask). Attention is written out (scores, cap, mask, fp32 softmax) since
SDPA cannot cap scores; GQA folds each KV head's group of query heads into the query axis, so no keys
are copied. The residual stream stays fp32, as FusedLlama's does. The native kernels compute this same
function (app/engine/native/model.py: native_from_fused, with the sandwich norms, the GELU gate, the caps,
the windows and a RoPE table per layer type), so the loader's auto choice moves a FusedGemma onto them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from app.engine.models.families.registry import Family, Getter
from app.engine.models.attention_layers import layer_windows
from app.engine.models.fused_llama import DefaultRotary, FusedLayer, FusedLlama, LlamaDims, Rotary, _joined, _rotate
from app.engine.models.packed_linear import PackedLinear

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel

_FULL = "full_attention"


@dataclass
class GemmaLayer(FusedLayer):
    """FusedLayer's fields (post_norm: after attention), and the norms around the MLP."""

    pre_mlp_norm: torch.Tensor | None = None
    post_mlp_norm: torch.Tensor | None = None
    layer_type: str = _FULL  # which RoPE table the layer reads (Gemma 3's local and global layers differ)


@dataclass(frozen=True)
class GemmaScales:
    """What a Gemma config sets beside the sizes: the embeddings' scale, the scores' scale, the caps."""

    embed_scale: float  # sqrt(hidden_size)
    scaling: float  # query_pre_attn_scalar ** -0.5
    attention_cap: float | None  # Gemma 2's attn_logit_softcapping (Gemma 3's attention reads none)
    final_cap: float | None  # final_logit_softcapping

    @classmethod
    def of(cls, get: Getter, family: Family) -> GemmaScales:
        caps = {key: get(key, None) for key in family.softcapping}
        return cls(float(get("hidden_size", None)) ** 0.5, float(get("query_pre_attn_scalar", None)) ** -0.5,
                   caps.get("attn_logit_softcapping"), caps.get("final_logit_softcapping"))


def _cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


class FusedGemma(FusedLlama):
    """forward(input_ids, mask, positions, cache, last_only) -> float32 logits, as FusedLlama's."""

    def __init__(self, dims: LlamaDims, embed: torch.Tensor, rotaries: dict[str, Rotary], layers: list[GemmaLayer],
                 final_norm: torch.Tensor, lm_head: PackedLinear, scales: GemmaScales) -> None:
        super().__init__(dims, embed, rotaries[_FULL] if _FULL in rotaries else next(iter(rotaries.values())),
                         layers, final_norm, lm_head)
        self.rotaries = rotaries
        # transformers multiplies by the scale held in the weights' dtype (sqrt(3584) is 59.75 in bf16).
        self.embed_scale = torch.tensor(scales.embed_scale).to(embed.dtype)
        self.scaling, self.attention_cap, self.final_cap = scales.scaling, scales.attention_cap, scales.final_cap

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor,
                cache: DynamicCache, last_only: bool = True) -> torch.Tensor:
        embedded = F.embedding(input_ids, self.embed_weight) * self.embed_scale
        tables = {kind: tuple(t.unsqueeze(1) for t in rotary(embedded, positions))
                  for kind, rotary in self.rotaries.items()}
        hidden = embedded.float()
        masks = self._masks(mask, positions, cache, explicit=True)
        for index, layer in enumerate(self.layers):
            hidden = self._layer(layer, hidden, *tables[layer.layer_type], cache.layers[index], masks[index])
        kept = hidden[:, -1] if last_only else hidden
        return _cap(self.lm_head(self._norm(kept, self.final_norm)).float(), self.final_cap)

    def _layer(self, layer: GemmaLayer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               kv_layer, attn_mask: torch.Tensor | None) -> torch.Tensor:
        rows, tokens, _ = hidden.shape
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = layer.qkv(self._norm(hidden, layer.input_norm)).view(rows, tokens, heads + 2 * kv_heads, dim).transpose(1, 2)
        q, k = qkv[:, :heads], qkv[:, heads: heads + kv_heads]
        if layer.q_norm is not None:
            q, k = self._norm(q, layer.q_norm), self._norm(k, layer.k_norm)
        keys, values = kv_layer.update(_rotate(k, cos, sin), qkv[:, heads + kv_heads:])
        attended = self._attend(_rotate(q, cos, sin), keys, values, attn_mask)
        attended = layer.o(attended.transpose(1, 2).reshape(rows, tokens, heads * dim))
        hidden = hidden + self._norm(attended, layer.post_norm)
        gate, up = layer.gate_up(self._norm(hidden, layer.pre_mlp_norm)).split(self.intermediate, dim=-1)
        return hidden + self._norm(layer.down(F.gelu(gate, approximate="tanh") * up), layer.post_mlp_norm)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        """q [rows, heads, tokens, dim] over keys/values [rows, kv_heads, columns, dim]; attn_mask bool
        [rows or 1, 1, tokens, columns] (None only for one token of unpadded rows: every key is seen)."""
        rows, heads, tokens, dim = q.shape
        groups = heads // self.num_kv_heads
        folded = q.reshape(rows, self.num_kv_heads, groups * tokens, dim)
        scores = torch.matmul(folded, keys.transpose(2, 3)).float() * self.scaling
        scores = _cap(scores, self.attention_cap).view(rows, self.num_kv_heads, groups, tokens, -1)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1).to(values.dtype).view(rows, self.num_kv_heads, groups * tokens, -1)
        return torch.matmul(weights, values).view(rows, heads, tokens, dim)


def rope_by_layer_type(config: dict) -> dict[str, dict]:
    """Each layer type's RoPE parameters from a config dict as transformers 5 saves it (Gemma 3: one dict
    per type; Gemma 2: one set for every layer)."""
    params = config["rope_parameters"]
    return {kind: params[kind] if isinstance(params.get(kind), dict) else params for kind in set(config["layer_types"])}


def gemma_rotaries(config: dict, head_dim: int, device: torch.device) -> dict[str, Rotary]:
    """The RoPE tables per layer type, default or linear (inv_freq / factor), from a config dict."""
    rotaries = {}
    for kind, params in rope_by_layer_type(config).items():
        rotary = DefaultRotary(float(params["rope_theta"]), head_dim, device)
        if params.get("rope_type", "default") == "linear":
            rotary.inv_freq = rotary.inv_freq / float(params["factor"])
        rotaries[kind] = rotary
    return rotaries


def _one_plus(norm: torch.nn.Module) -> torch.Tensor:
    """Gemma's RMSNorm scales by (1 + weight), computed in fp32 from the weight as the model holds it."""
    return 1.0 + norm.weight.float()


def _fuse_layer(layer, family: Family, layer_type: str, window: int | None) -> GemmaLayer:
    attn, mlp = layer.self_attn, layer.mlp
    return GemmaLayer(
        input_norm=_one_plus(layer.input_layernorm),
        qkv=_joined(attn, family.qkv),
        o=PackedLinear(attn.o_proj.weight, attn.o_proj.bias),
        post_norm=_one_plus(layer.post_attention_layernorm),
        gate_up=_joined(mlp, family.gate_up),
        down=PackedLinear(mlp.down_proj.weight, mlp.down_proj.bias),
        q_norm=_one_plus(attn.q_norm) if family.head_norms else None,
        k_norm=_one_plus(attn.k_norm) if family.head_norms else None,
        window=window,
        pre_mlp_norm=_one_plus(layer.pre_feedforward_layernorm),
        post_mlp_norm=_one_plus(layer.post_feedforward_layernorm),
        layer_type=layer_type,
    )


def _rotaries(module: torch.nn.Module, config, layer_types: list[str]) -> dict[str, Rotary]:
    """The model's rotary module per layer type: Gemma 3's takes the type (RoPE parameters per layer
    type), Gemma 2's one table serves every layer."""
    params = getattr(config, "rope_parameters", None) or {}
    if all(isinstance(params.get(kind), dict) for kind in set(layer_types)):
        return {kind: _TypedRotary(module, kind) for kind in set(layer_types)}
    return {kind: module for kind in set(layer_types)}


class _TypedRotary:
    """Gemma 3's rotary module for one layer type, with that type's rope_type (native/backend.py reads it:
    a table serves static RoPE only)."""

    def __init__(self, module: torch.nn.Module, kind: str) -> None:
        self.module, self.kind = module, kind
        types = getattr(module, "rope_type", "default")
        self.rope_type = types.get(kind, "default") if isinstance(types, dict) else types

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module(x, positions, self.kind)


def gemma_from_model(model: PreTrainedModel, family: Family) -> FusedGemma:
    """FusedGemma over a transformers Gemma 2 / Gemma 3 text model's weights (its modules' become views)."""
    config = model.config
    get = lambda key, default: getattr(config, key, default)  # noqa: E731
    dims = LlamaDims.of(get)
    layer_types = list(getattr(config, "layer_types", None) or [_FULL] * dims.num_layers)[: dims.num_layers]
    inner = model.model
    layers = [_fuse_layer(layer, family, kind, window) for layer, kind, window
              in zip(inner.layers[: dims.num_layers], layer_types, layer_windows(get, dims.num_layers))]
    return FusedGemma(dims, inner.embed_tokens.weight, _rotaries(inner.rotary_emb, config, layer_types), layers,
                      _one_plus(inner.norm), PackedLinear(model.lm_head.weight, model.lm_head.bias),
                      GemmaScales.of(get, family))
