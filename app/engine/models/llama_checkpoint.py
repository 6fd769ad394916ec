"""Reading a local Llama-family (or Gemma 2/3) safetensors folder straight into FusedLlama (FusedGemma),
without transformers' modeling code.

Importing transformers' model classes (and, through their config classes, torch.distributed) costs
about two seconds on a small CPU; reading config.json and the safetensors files costs a tenth of
that. This reads only checkpoints it can compute exactly as transformers would: one of the families
registered in app/engine/models/families/ (which say each one's tensor names, biases, extra norms and
refusals), the default RoPE, no quantization config, and exactly the tensors transformers would load;
Gemma 2/3 with RoPE per layer type (default or linear), whether config.json writes out its layer types
and RoPE parameters (as transformers 5 saves it) or leaves them to the config class, as the Hub's
configs from transformers 4.4x do (families/gemma_config.py derives them as Gemma2Config and
Gemma3TextConfig do). Anything else is refused with a reason, and the loader takes transformers' path instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from app.engine.models.attention_layers import layer_windows
from app.engine.models.families import by_model_type, model_types
from app.engine.models.families.registry import Family, rope_parameters
from app.engine.models.fused_gemma import FusedGemma, GemmaLayer, GemmaScales, gemma_rotaries, rope_by_layer_type
from app.engine.models.fused_llama import (
    DefaultRotary,
    FusedLayer,
    FusedLlama,
    LlamaDims,
    config_reason,
)
from app.engine.models.packed_linear import PackedLinear

# Keys whose class defaults differ between the families: written out (each family adds its own, where
# its defaults differ from what this module assumes when one is missing: LlamaConfig's).
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "rms_norm_eps",
             "vocab_size")
# Left in some older checkpoints; transformers recomputes it and ignores the stored copy.
_IGNORED_SUFFIX = "rotary_emb.inv_freq"


@dataclass
class LlamaCheckpoint:
    """A checkpoint this module can read: its config and where each tensor lives."""

    folder: Path
    config: dict
    files: dict[str, Path]  # tensor name -> safetensors file
    dtypes: frozenset[str] = frozenset()  # as the files store them ("F32", "BF16", ...)

    def get(self, key: str, default: object = None) -> object:
        return self.config.get(key, default)

    @property
    def family(self) -> Family:
        return by_model_type(self.config["model_type"])

    @property
    def stored_float32(self) -> bool:
        return self.dtypes == {"F32"}


def rope_theta(config: dict) -> tuple[float | None, str | None]:
    """The default RoPE's theta, or why the config asks for another RoPE. Read as transformers does:
    `rope_scaling`, when set, replaces `rope_parameters`; a value inside them beats one beside them."""
    params = rope_parameters(config.get)
    if any(isinstance(value, dict) for value in params.values()):
        return None, "RoPE parameters per layer type"
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "default":
        return None, f"RoPE type {rope_type!r}"
    if params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        return None, "partial rotary embeddings"
    theta = params.get("rope_theta", config.get("rope_theta"))
    return (float(theta), None) if theta is not None else (None, "config.json names no rope_theta")


def _tensor_shapes(folder: Path) -> dict[str, tuple[Path, tuple[int, ...], str]] | None:
    """Each tensor's file, shape and stored dtype (headers only), from model.safetensors or, as
    transformers looks second, the sharded index; None without either."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        return None
    shapes = {}
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                shapes[name] = (path, tuple(tensor.get_shape()), tensor.get_dtype())
    return shapes


def expected_tensors(config: dict) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """({name: shape} transformers would load, {name: shape} it would accept but not need)."""
    family, dims = by_model_type(config["model_type"]), LlamaDims.of(config.get)
    hidden, vocab = int(config["hidden_size"]), dims.vocab_size
    q_out, kv_out, inter = dims.num_heads * dims.head_dim, dims.num_kv_heads * dims.head_dim, dims.intermediate_size
    outputs = {"q": q_out, "k": kv_out, "v": kv_out, "o": hidden, "gate": inter, "up": inter, "down": hidden}
    inputs = {"q": hidden, "k": hidden, "v": hidden, "o": q_out, "gate": hidden, "up": hidden, "down": inter}
    biases = family.biases(config.get)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(dims.num_layers):
        prefix = f"model.layers.{i}."
        shapes[prefix + "input_layernorm.weight"] = shapes[prefix + "post_attention_layernorm.weight"] = (hidden,)
        for module, parts in family.tensor_names().items():
            shapes[f"{prefix}{module}.weight"] = (sum(outputs[part] for part in parts), inputs[parts[0]])
            if all(part in biases for part in parts):
                shapes[f"{prefix}{module}.bias"] = (sum(outputs[part] for part in parts),)
        if family.head_norms:
            shapes[prefix + "self_attn.q_norm.weight"] = shapes[prefix + "self_attn.k_norm.weight"] = (dims.head_dim,)
        if family.layer == "gemma":
            shapes[prefix + "pre_feedforward_layernorm.weight"] = (hidden,)
            shapes[prefix + "post_feedforward_layernorm.weight"] = (hidden,)
    lm_head = {"lm_head.weight": (vocab, hidden)}
    if config.get("tie_word_embeddings", False):
        return shapes, lm_head  # tied: transformers uses the embedding whatever the file holds
    return shapes | lm_head, {}


def _config_refusal(config: dict) -> str | None:
    model_type = config.get("model_type")
    family = by_model_type(model_type)
    if family is None:
        return f"model_type {model_type!r} is not one of {model_types()}"
    if config.get("architectures") not in (None, [family.architecture]):
        return f"architectures {config.get('architectures')}"
    if config.get("quantization_config"):
        return "a quantized checkpoint"
    missing = [key for key in _REQUIRED + family.required if config.get(key) is None]
    if missing:
        return f"config.json does not name {', '.join(missing)}"

    def get(key: str, default: object) -> object:  # config.json, else the family's class default
        return config.get(key, family.defaults.get(key, default))

    if family.layer == "gemma":
        return family.refusal(get) or gemma_rope_refusal(config)
    # Windows are read where config.json says which layers slide, as transformers reads it.
    windows = bool(config.get("layer_types")) or family.window_on_every_layer
    return family.refusal(get) or config_reason(get, windows=windows) or rope_theta(config)[1]


def gemma_rope_refusal(config: dict) -> str | None:
    if "sliding_attention" in config["layer_types"] and config.get("sliding_window") is None:
        return "config.json sliding_window=None with sliding_attention layers"
    for kind, params in rope_by_layer_type(config).items():
        where = f"config.json rope_parameters[{kind!r}]"
        if not isinstance(params, dict) or params.get("rope_theta") is None:
            return f"{where} names no rope_theta"
        rope_type = params.get("rope_type", "default")
        if rope_type not in ("default", "linear"):
            return f"{where} rope_type={rope_type!r} (read directly: default or linear)"
        if rope_type == "linear" and not isinstance(params.get("factor"), (int, float)):
            return f"{where} factor={params.get('factor')!r} for linear RoPE"
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            return f"{where} partial_rotary_factor={params['partial_rotary_factor']!r}"
    return None


def as_saved(config: dict) -> dict | str:
    """config.json as its family's transformers config class reads it (families/gemma_config.py for
    Gemma's older configs; others as written), or why that is not mirrored."""
    family = by_model_type(config.get("model_type"))
    return config if family is None else family.as_saved(config)


def open_checkpoint(reference: str, overrides: dict[str, object] | None = None) -> LlamaCheckpoint | str:
    """The checkpoint at `reference` (a local folder), or why this module cannot read it. `overrides`:
    config fields set over the stored ones, as from_pretrained gets them (loader.attention_overrides:
    a sliding window no shorter than the context, read as full attention), applied before the config
    class derives its fields, as from_pretrained applies them."""
    folder = Path(reference)
    if not (folder / "config.json").is_file():
        return "not a local folder with a config.json"
    try:
        config = as_saved(json.loads((folder / "config.json").read_text()) | dict(overrides or {}))
        refusal = config if isinstance(config, str) else _config_refusal(config)
        stored = None if refusal else _tensor_shapes(folder)
    except Exception as exc:  # noqa: BLE001 - unreadable JSON or safetensors headers: transformers says what is wrong
        return f"unreadable files ({type(exc).__name__}: {exc})"
    if refusal:
        return refusal
    if stored is None:
        return "no safetensors weights"
    needed, optional = expected_tensors(config)
    present = {name for name in stored if not name.endswith(_IGNORED_SUFFIX)}
    unknown, absent = present - needed.keys() - optional.keys(), needed.keys() - present
    if unknown or absent:
        sample = sorted(unknown)[:3] or sorted(absent)[:3]
        return f"{'unexpected' if unknown else 'missing'} tensors ({', '.join(sample)})"
    wrong = [name for name in sorted(present) if stored[name][1] != (needed | optional)[name]]
    if wrong:
        return f"tensor shapes unlike config.json's ({wrong[0]}: {stored[wrong[0]][1]})"
    return LlamaCheckpoint(folder, config, {name: path for name, (path, _, _) in stored.items()},
                           frozenset(dtype for _, _, dtype in stored.values()))


class _Reader:
    """Tensors by name, each file opened once, converted to the model's dtype and device."""

    def __init__(self, files: dict[str, Path], dtype: torch.dtype, device: torch.device) -> None:
        self._files, self._dtype, self._device = files, dtype, device
        self._handles: dict[Path, object] = {}

    def __call__(self, name: str) -> torch.Tensor:
        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path].get_tensor(name).to(device=self._device, dtype=self._dtype)

    def maybe(self, name: str) -> torch.Tensor | None:
        return self(name) if name in self._files else None

    def fused(self, prefix: str, names: tuple[str, ...]) -> PackedLinear:
        """One PackedLinear for projections that read the same input (q/k/v, gate/up), stored apart or fused."""
        weights = [self(f"{prefix}{name}.weight") for name in names]
        biases = [self.maybe(f"{prefix}{name}.bias") for name in names]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])
        return PackedLinear(torch.cat(weights), bias)

    def linear(self, name: str) -> PackedLinear:
        return PackedLinear(self(f"{name}.weight"), self.maybe(f"{name}.bias"))

    def norm(self, name: str) -> torch.Tensor:
        # Through the model's dtype first, as transformers holds it, then fp32 as FusedLlama uses it.
        return self(name).float()


def fused_from_checkpoint(checkpoint: LlamaCheckpoint, dtype: torch.dtype, device: torch.device) -> FusedLlama:
    """FusedLlama with the checkpoint's weights in `dtype` on `device`."""
    dims, family = LlamaDims.of(checkpoint.get), checkpoint.family
    read = _Reader(checkpoint.files, dtype, device)
    if family.layer == "gemma":
        return _gemma_from_checkpoint(checkpoint, read, dims, device)
    layers = []
    for i, window in enumerate(layer_windows(checkpoint.get, dims.num_layers)):
        prefix = f"model.layers.{i}."
        layers.append(FusedLayer(
            input_norm=read.norm(prefix + "input_layernorm.weight"),
            qkv=read.fused(prefix + "self_attn.", family.qkv),
            o=read.linear(prefix + "self_attn.o_proj"),
            post_norm=read.norm(prefix + "post_attention_layernorm.weight"),
            gate_up=read.fused(prefix + "mlp.", family.gate_up),
            down=read.linear(prefix + "mlp.down_proj"),
            q_norm=read.norm(prefix + "self_attn.q_norm.weight") if family.head_norms else None,
            k_norm=read.norm(prefix + "self_attn.k_norm.weight") if family.head_norms else None,
            window=window,
        ))
    embed = read("model.embed_tokens.weight")
    lm_head = PackedLinear(embed) if checkpoint.get("tie_word_embeddings", False) else read.linear("lm_head")
    theta, _ = rope_theta(checkpoint.config)
    return FusedLlama(dims, embed, DefaultRotary(theta, dims.head_dim, device), layers,
                      read.norm("model.norm.weight"), lm_head)


def _gemma_from_checkpoint(checkpoint: LlamaCheckpoint, read: _Reader, dims: LlamaDims,
                           device: torch.device) -> FusedGemma:
    """FusedGemma with the checkpoint's weights: norms as 1 + weight (fp32, from the weight in the model's
    dtype, as transformers computes them), RoPE per layer type (default or linear: inv_freq / factor)."""
    config, family = checkpoint.config, checkpoint.family
    layer_types = list(config["layer_types"])[: dims.num_layers]
    windows = layer_windows(checkpoint.get, dims.num_layers)
    layers = []
    for i, (kind, window) in enumerate(zip(layer_types, windows)):
        prefix = f"model.layers.{i}."
        layers.append(GemmaLayer(
            input_norm=1.0 + read.norm(prefix + "input_layernorm.weight"),
            qkv=read.fused(prefix + "self_attn.", family.qkv),
            o=read.linear(prefix + "self_attn.o_proj"),
            post_norm=1.0 + read.norm(prefix + "post_attention_layernorm.weight"),
            gate_up=read.fused(prefix + "mlp.", family.gate_up),
            down=read.linear(prefix + "mlp.down_proj"),
            q_norm=1.0 + read.norm(prefix + "self_attn.q_norm.weight") if family.head_norms else None,
            k_norm=1.0 + read.norm(prefix + "self_attn.k_norm.weight") if family.head_norms else None,
            window=window,
            pre_mlp_norm=1.0 + read.norm(prefix + "pre_feedforward_layernorm.weight"),
            post_mlp_norm=1.0 + read.norm(prefix + "post_feedforward_layernorm.weight"),
            layer_type=kind,
        ))
    rotaries = gemma_rotaries(config, dims.head_dim, device)
    embed = read("model.embed_tokens.weight")
    lm_head = PackedLinear(embed) if config["tie_word_embeddings"] else read.linear("lm_head")
    return FusedGemma(dims, embed, rotaries, layers, 1.0 + read.norm("model.norm.weight"), lm_head,
                      GemmaScales.of(checkpoint.get, family))
