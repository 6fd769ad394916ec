"""FusedLlama: the forward pass of Llama-family models (Llama, Mistral, Qwen2, Qwen3, Phi-3) in a few ops per layer.

transformers' modeling code runs about forty small ops and Python layers per decoder layer; on a CPU
with a small model that overhead costs more than the matmuls (measured on SmolLM2-135M, 2 cores:
52 ms per single-row step through transformers, 36 ms here). This computes the same function with
the model's own weights: q/k/v in one matmul and gate/up in another (the HF modules' weights become
views of the fused matrices, so nothing is stored twice), one fused RMSNorm op, rotary embeddings from
the model's own rotary module (so every RoPE scaling type it knows still applies) or, for a checkpoint
read without transformers' modeling code (app/engine/models/llama_checkpoint.py), the default RoPE, and SDPA
over the same KV cache layers transformers would use. The families it computes, and how each one's
modules and tensors map onto it, are registered in app/engine/models/families/; models it does not recognise
keep transformers' forward. Sliding-window layers (Mistral, Qwen2) get a per-position window mask
(`attention_mask`, shared with fused_gemma.py's FusedGemma, Gemma 2/3's forward); the native kernels
compute the same window (each query's keys start at its position - window + 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from app.engine.models.attention_layers import configured_window, layer_windows
from app.engine.models.families import architectures, by_architecture
from app.engine.models.families.registry import Family
from app.engine.models.packed_linear import PackedLinear

if TYPE_CHECKING:  # importing transformers' modeling code costs seconds at start-up
    from transformers import DynamicCache, PreTrainedModel

def _fuse(modules: list[torch.nn.Linear]) -> PackedLinear:
    """One PackedLinear for linears that read the same input; their weights become views of it."""
    weight = torch.cat([m.weight.detach() for m in modules]).contiguous()
    biases = [m.bias for m in modules]
    bias = None if all(b is None for b in biases) else torch.cat([
        b.detach() if b is not None else weight.new_zeros(m.out_features) for m, b in zip(modules, biases)])
    start = 0
    for module in modules:
        module.weight.data = weight[start:start + module.out_features]
        if bias is not None and module.bias is not None:
            module.bias.data = bias[start:start + module.out_features]
        start += module.out_features
    return PackedLinear(weight, bias)


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """Why FusedLlama cannot run this model, or None if it can."""
    cls = type(model)
    family = by_architecture(cls.__name__)
    if family is None or not cls.__module__.startswith("transformers.models."):
        return f"{cls.__name__} is not one of {architectures()}"

    def get(key: str, default: object) -> object:
        return getattr(model.config, key, default)

    return family.refusal(get) or (config_reason(get, windows=True) if family.layer == "llama" else None)


def config_reason(get: Callable[[str, object], object], windows: bool = False) -> str | None:
    """Why a config (read through `get(key, default)`) describes layers FusedLlama does not compute;
    sliding windows only where `windows` (a transformers model's: `layer_windows` reads them)."""
    if get("hidden_act", "silu") != "silu":
        return f"hidden_act {get('hidden_act', None)!r}"
    if get("pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    if windows:
        others = {t for t in get("layer_types", None) or [] if t not in ("full_attention", "sliding_attention")}
        return f"layer_types {sorted(others)}" if others else None
    if any(t != "full_attention" for t in (get("layer_types", None) or [])):
        return "sliding-window layers"
    if configured_window(get):
        return "a sliding window"
    return None


@dataclass(frozen=True)
class LlamaDims:
    """The sizes a forward pass needs, from the model's config."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    vocab_size: int

    @classmethod
    def of(cls, get: Callable[[str, object], object]) -> LlamaDims:
        heads = int(get("num_attention_heads", 0) or 0)
        head_dim = get("head_dim", None) or (int(get("hidden_size", 0) or 0) // heads if heads else 0)
        return cls(int(get("num_hidden_layers", 0) or 0), heads, int(get("num_key_value_heads", None) or heads),
                   int(head_dim), int(get("intermediate_size", 0) or 0), float(get("rms_norm_eps", 0.0) or 0.0),
                   int(get("vocab_size", 0) or 0))


class DefaultRotary:
    """RoPE's cos/sin without scaling, computed as transformers' Llama rotary module does."""

    def __init__(self, theta: float, head_dim: int, device: torch.device) -> None:
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
        self.inv_freq = (1.0 / (theta ** exponents)).to(device)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


@dataclass
class FusedLayer:
    input_norm: torch.Tensor
    qkv: PackedLinear
    o: PackedLinear
    post_norm: torch.Tensor
    gate_up: PackedLinear
    down: PackedLinear
    q_norm: torch.Tensor | None = None  # fp32 [head_dim]: Qwen3's RMSNorm over each head of q, before RoPE
    k_norm: torch.Tensor | None = None  # and of k
    window: int | None = None  # a sliding-window layer's window (positions); None: full attention


Rotary = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (x, positions) -> cos, sin


class FusedLlama:
    """forward(input_ids, mask, positions, cache) -> float32 logits of each row's last position.

    Built from a transformers model (`fused_from_model`) or straight from a checkpoint's tensors.
    Norm weights are fp32; `embed` and the linears are in the model's dtype.
    """

    @property
    def native_refusal(self) -> str | None:
        """Why the native kernels cannot compute this forward's layers (None: they can). They compute
        every layer FusedLlama and FusedGemma do (windows, Gemma's norms, caps and RoPE tables); what
        they cannot take (a device, dtype, head size or RoPE type) native/backend.py says."""
        return None

    def __init__(self, dims: LlamaDims, embed: torch.Tensor, rotary: Rotary, layers: list[FusedLayer],
                 final_norm: torch.Tensor, lm_head: PackedLinear) -> None:
        self.dims = dims
        self.num_heads, self.num_kv_heads, self.head_dim = dims.num_heads, dims.num_kv_heads, dims.head_dim
        self.intermediate, self.eps = dims.intermediate_size, dims.rms_norm_eps
        self.embed_weight, self.rotary, self.dtype = embed, rotary, embed.dtype
        self.layers, self.final_norm, self.lm_head = layers, final_norm, lm_head

    @property
    def windows(self) -> list[int | None]:
        """Each layer's sliding window (None: full attention)."""
        return [layer.window for layer in self.layers]

    def linears(self) -> list[PackedLinear]:
        """Every weight matrix a forward pass multiplies by, the LM head last."""
        return [lin for layer in self.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)] + [
            self.lm_head]

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor,
                cache: DynamicCache, last_only: bool = True) -> torch.Tensor:
        """mask: [rows, past + new columns] (1 = real token) or None when no row is padded.

        Logits [rows, vocab] of the last position, or [rows, tokens, vocab] with last_only=False.
        """
        embedded = F.embedding(input_ids, self.embed_weight)
        cos, sin = self.rotary(embedded, positions)
        # The residual stream stays fp32 whatever the weights' dtype: in bf16 its large activations
        # (hundreds, here) round by whole units at every add, and near-tied tokens flip.
        hidden = embedded.float()
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        masks = self._masks(mask, positions, cache)
        for index, layer in enumerate(self.layers):
            hidden = self._layer(layer, hidden, cos, sin, cache.layers[index], masks[index])
        kept = hidden[:, -1] if last_only else hidden
        return self.lm_head(self._norm(kept, self.final_norm)).float()

    def _masks(self, mask: torch.Tensor | None, positions: torch.Tensor, cache: DynamicCache,
               explicit: bool = False) -> list[torch.Tensor | None]:
        """Each layer's attention mask for this pass, from its window and the columns it holds (a sliding
        layer may hold only the last ones: KVStore); made once per distinct pair."""
        made: dict[tuple[int | None, int], torch.Tensor | None] = {}
        masks = []
        for layer, kv_layer in zip(self.layers, cache.layers):
            key = (layer.window, kv_layer.get_seq_length() if kv_layer.is_initialized else 0)
            if key not in made:
                made[key] = attention_mask(mask, positions, key[1], layer.window, explicit)
            masks.append(made[key])
        return masks

    def _norm(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm in fp32 over the last axis, handed on in the weights' dtype."""
        return F.rms_norm(hidden.float(), (hidden.shape[-1],), weight, self.eps).to(self.dtype)

    def _layer(self, layer: FusedLayer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               kv_layer, attn_mask: torch.Tensor | None) -> torch.Tensor:
        rows, tokens, _ = hidden.shape
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = layer.qkv(self._norm(hidden, layer.input_norm)).view(rows, tokens, heads + 2 * kv_heads, dim).transpose(1, 2)
        if layer.q_norm is None:
            qk = _rotate(qkv[:, : heads + kv_heads], cos, sin)
        else:
            qk = _rotate(torch.cat((self._norm(qkv[:, :heads], layer.q_norm),
                                    self._norm(qkv[:, heads: heads + kv_heads], layer.k_norm)), dim=1), cos, sin)
        keys, values = kv_layer.update(qk[:, heads:], qkv[:, heads + kv_heads:])
        attended = self._attend(qk[:, :heads], keys, values, attn_mask)
        hidden = hidden + layer.o(attended.transpose(1, 2).reshape(rows, tokens, heads * dim))
        gate, up = layer.gate_up(self._norm(hidden, layer.post_norm)).split(self.intermediate, dim=-1)
        return hidden + layer.down(F.silu(gate) * up)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        """q [rows, heads, tokens, dim] over keys/values [rows, kv_heads, columns, dim]."""
        rows, heads, tokens, dim = q.shape
        groups = heads // self.num_kv_heads
        if tokens == 1:
            # One query per head: fold each KV head's group of query heads into the query axis, so
            # GQA needs no copied keys. The mask [rows, 1, 1, columns] broadcasts over both.
            folded = q.reshape(rows, self.num_kv_heads, groups, dim)
            out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=attn_mask)
            return out.reshape(rows, heads, 1, dim)
        if groups > 1:
            keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
        if attn_mask is None:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)


def attention_mask(mask: torch.Tensor | None, positions: torch.Tensor, held: int, window: int | None = None,
                   explicit: bool = False) -> torch.Tensor | None:
    """Bool [rows or 1, 1, tokens, held + tokens]: True where a query may look; None = plain causal with
    nothing hidden (SDPA's is_causal; never with `explicit`, for forwards that mask scores themselves).

    mask: [rows, past + tokens] (1 = real token) or None when no row is padded; positions: [rows or 1,
    tokens], each query's position; held: the columns the layer holds before this pass, the last `held`
    of the `past` (fewer than past only for a sliding layer that forgot older ones: KVStore). A sliding
    `window` limits each query to keys whose position is greater than its own minus the window
    (transformers' sliding_window_overlay): positions, not columns, since a left-padded row numbers its
    keys from its first real column (mask.cumsum).
    """
    tokens, device = positions.shape[-1], positions.device
    columns = held + tokens
    if window is None and not explicit:
        if tokens == 1:
            return None if mask is None else mask[:, None, None, -columns:].bool()
        if mask is None and held == 0:
            return None
    query = torch.arange(held, columns, device=device)[:, None]
    key = torch.arange(columns, device=device)[None, :]
    allowed = (key <= query)[None, None]
    if window is not None:
        # Unpadded rows are all as long: their first query's position tells the keys' (no host sync).
        key_positions = positions[:, :1] - held + key if mask is None else (mask.cumsum(dim=-1) - 1)[:, -columns:]
        allowed = allowed & (key_positions[:, None, :] > positions[:, :, None] - window)[:, None]
    if mask is not None:
        mask = mask[:, -columns:]
        # A padding query sees only itself: a row with nothing to look at would turn into NaNs.
        allowed = (allowed & mask[:, None, None, :].bool()) | (key == query)[None, None]
    return allowed


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as transformers applies it: x * cos + rotate_half(x) * sin."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def _joined(parent: torch.nn.Module, names: tuple[str, ...]) -> PackedLinear:
    """The family's modules for q/k/v (or gate/up) as one PackedLinear: fused now, or stored fused."""
    return _fuse([getattr(parent, name) for name in names])


def _fuse_layer(layer, family: Family, window: int | None) -> FusedLayer:
    attn, mlp = layer.self_attn, layer.mlp
    return FusedLayer(
        input_norm=layer.input_layernorm.weight.float(),
        qkv=_joined(attn, family.qkv),
        o=PackedLinear(attn.o_proj.weight, attn.o_proj.bias),
        post_norm=layer.post_attention_layernorm.weight.float(),
        gate_up=_joined(mlp, family.gate_up),
        down=PackedLinear(mlp.down_proj.weight, mlp.down_proj.bias),
        q_norm=attn.q_norm.weight.float() if family.head_norms else None,
        k_norm=attn.k_norm.weight.float() if family.head_norms else None,
        window=window,
    )


def fused_from_model(model: PreTrainedModel) -> FusedLlama:
    """FusedLlama over a transformers model's own weights (its modules' weights become views)."""
    get = lambda key, default: getattr(model.config, key, default)  # noqa: E731
    dims, family = LlamaDims.of(get), by_architecture(type(model).__name__)
    inner = model.model
    layers, windows = inner.layers[: dims.num_layers], layer_windows(get, dims.num_layers)
    return FusedLlama(dims, inner.embed_tokens.weight, inner.rotary_emb,
                      [_fuse_layer(layer, family, window) for layer, window in zip(layers, windows)],
                      inner.norm.weight.float(), PackedLinear(model.lm_head.weight, model.lm_head.bias))


def build_fused(hf_model: PreTrainedModel, enabled: bool) -> tuple[FusedLlama | None, str]:
    """FusedLlama where it applies, and a description of the forward in use."""
    if not enabled:
        return None, "transformers (fused forward turned off)"
    reason = unsupported_reason(hf_model)
    if reason is not None:
        return None, f"transformers ({reason})"
    family = by_architecture(type(hf_model).__name__)
    if family.layer == "gemma":
        from app.engine.models.fused_gemma import gemma_from_model

        return gemma_from_model(hf_model, family), "fused"
    return fused_from_model(hf_model), "fused"
