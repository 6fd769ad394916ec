"""A Gemma 2 / Gemma 3 config.json as transformers 5 reads it, from the shape the Hub ships it in.

Hub checkpoints (google/gemma-2-2b-it, gemma-2-9b-it, gemma-3-1b-it, gemma-3-270m, ...) were saved by
transformers 4.4x: no `layer_types` (Gemma 2 alternates sliding and full layers, Gemma 3 repeats
`sliding_window_pattern`, 6 unless set), `rope_theta` / `rope_local_base_freq` / `rope_scaling` beside
each other instead of `rope_parameters` per layer type, and class defaults left unwritten. Their config
classes (Gemma2Config, Gemma3TextConfig and PreTrainedConfig's RoPE standardisation) derive the rest;
this mirrors that derivation in a few lines, because importing those classes costs about a second of
start-up (they pull in torch.distributed and the configuration machinery), which the direct read
exists to avoid. tests/engine/test_gemma_config.py holds it to the classes on the Hub's configs.

What is not mirrored (a layer pattern that is not a positive integer, rope_scaling without a layer to
apply to) is refused in one line naming the field and its value, and the loader takes transformers' path.
"""

from __future__ import annotations

import copy

_SLIDING, _FULL = "sliding_attention", "full_attention"

# The class defaults of what the fast path reads, for keys config.json leaves out (Gemma2Config's and
# Gemma3TextConfig's dataclass fields; the test compares them with the classes).
_COMMON = {
    "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "attention_bias": False, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
}
GEMMA2_DEFAULTS = {**_COMMON, "vocab_size": 256000, "max_position_embeddings": 8192,
                   "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
                   "use_bidirectional_attention": None}
GEMMA3_DEFAULTS = {**_COMMON, "vocab_size": 262_208, "max_position_embeddings": 131_072,
                   "final_logit_softcapping": None, "attn_logit_softcapping": None,
                   "use_bidirectional_attention": False}
_BASE_THETA = 10_000.0  # RotaryEmbeddingConfigMixin.default_theta (Gemma 2)
_GEMMA3_THETA = {_FULL: 1_000_000.0, _SLIDING: 10_000.0}  # Gemma3TextConfig.default_theta
_GEMMA3_PATTERN = 6  # Gemma3TextConfig: kwargs.get("sliding_window_pattern", 6)
# Keys the config classes read and drop: the derived fields replace them.
_CONSUMED = ("rope_scaling", "rope_theta", "rope_local_base_freq", "sliding_window_pattern", "partial_rotary_factor")


def _with_defaults(config: dict, defaults: dict) -> dict:
    """config.json's keys as written (an explicit null stays null, as the classes keep it), else the default."""
    return {**copy.deepcopy(defaults), **copy.deepcopy(config)}


def _standardized(params: dict, layer_types: list[str], theta: object, partial: object) -> dict:
    """PreTrainedConfig.standardize_rope_params: each layer type's dict (or the one flat dict) gets its
    rope_type (from the legacy `type`) and rope_theta, where it names none."""
    nested = [key for key in params if key in layer_types]
    for entry in [params[key] for key in nested] or [params]:
        if entry is None:
            continue
        entry.setdefault("rope_type", entry.get("type", "default"))
        entry.setdefault("rope_theta", theta)
        if partial is not None:
            entry.setdefault("partial_rotary_factor", partial)
    return params


def _pattern_refusal(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"config.json sliding_window_pattern={value!r} is not a positive layer count"
    return None


def gemma2_as_saved(config: dict) -> dict | str:
    """Gemma2Config's reading of config.json, written out; or why it is not mirrored here."""
    out = _with_defaults(config, GEMMA2_DEFAULTS)
    layers = out["num_hidden_layers"]
    if out.get("layer_types") is None:  # Gemma2Config.__post_init__
        out["layer_types"] = [_SLIDING if (i + 1) % 2 else _FULL for i in range(layers)]
    # PreTrainedConfig.convert_rope_params_to_dict: rope_scaling, when set, replaces rope_parameters.
    params = out.get("rope_scaling") or out.get("rope_parameters") or {}
    if not isinstance(params, dict):
        return f"config.json rope_parameters={params!r} is not a mapping"
    theta = out.get("rope_theta", _BASE_THETA)
    out["rope_parameters"] = _standardized(dict(params), out["layer_types"], theta, out.get("partial_rotary_factor"))
    return {key: value for key, value in out.items() if key not in _CONSUMED}


def gemma3_as_saved(config: dict) -> dict | str:
    """Gemma3TextConfig's reading of config.json, written out; or why it is not mirrored here."""
    out = _with_defaults(config, GEMMA3_DEFAULTS)
    layers = out["num_hidden_layers"]
    if out.get("layer_types") is None:  # Gemma3TextConfig.__post_init__
        pattern = out.get("sliding_window_pattern", _GEMMA3_PATTERN)
        if refusal := _pattern_refusal(pattern):
            return refusal
        out["layer_types"] = [_SLIDING if (i + 1) % pattern else _FULL for i in range(layers)]
    # Gemma3TextConfig.convert_rope_params_to_dict: the global layers take rope_scaling and rope_theta,
    # the local ones rope_local_base_freq; each with its class default.
    params = out.get("rope_parameters")
    params = dict(params) if params is not None else {_SLIDING: {"rope_type": "default"}, _FULL: {"rope_type": "default"}}
    if not all(isinstance(params.get(kind), (dict, type(None))) for kind in (_SLIDING, _FULL)):
        return f"config.json rope_parameters={params!r} is not one mapping per layer type"
    scaling = out.get("rope_scaling")
    if scaling is not None:
        if not isinstance(scaling, dict) or params.get(_FULL) is None:
            return f"config.json rope_scaling={scaling!r} with no full_attention RoPE to scale"
        params[_FULL] = {**params[_FULL], **scaling}
    for kind, source in ((_FULL, "rope_theta"), (_SLIDING, "rope_local_base_freq")):
        params[kind] = dict(params.get(kind) or {"rope_type": "default"})
        params[kind].setdefault("rope_theta", out.get(source, _GEMMA3_THETA[kind]))
    out["rope_parameters"] = _standardized(params, out["layer_types"], None, out.get("partial_rotary_factor"))
    return {key: value for key, value in out.items() if key not in _CONSUMED}
