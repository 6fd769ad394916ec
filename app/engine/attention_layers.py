"""Whether batched decoding can serve a model, decided from its config before any weight is read.

Left-padded batched decoding (kv_store.py) needs a plain full-attention KV cache on every layer;
`check_plain_cache` refuses anything else, but only once the weights are loaded. This reads the fields
transformers' DynamicCache builds its layers from (cache_utils.get_layer_types_and_kwargs) and refuses
first. A sliding window at least as long as the context never slides, so that model is loaded as full
attention, with the overrides returned here.
"""

from __future__ import annotations

from app.engine.errors import ModelRefused

_FULL, _SLIDING = "full_attention", "sliding_attention"
_NEEDS = "batched decoding needs full attention on every layer"


def full_attention_overrides(config: dict, max_model_len: int, source: str = "config.json") -> dict[str, object]:
    """Config fields to pass to from_pretrained so that every layer is full attention ({}: none needed).
    Raises ModelRefused, naming the field and its value, where a layer would attend otherwise."""
    text = config.get("text_config") or config
    positions = int(text.get("max_position_embeddings") or 2048)
    context = min(max_model_len or positions, positions)
    layer_types = text.get("layer_types")
    others = sorted({kind for kind in layer_types or () if kind not in (_FULL, _SLIDING)})
    if others:
        raise ModelRefused(f"{source} layer_types has {', '.join(others)}: {_NEEDS}")
    sharing = text.get("kv_sharing_modes")
    if sharing and "reuse" in sharing:
        raise ModelRefused(f"{source} kv_sharing_modes has 'reuse' (layers sharing a KV cache): {_NEEDS}")
    if text.get("attention_chunk_size") is not None:
        raise ModelRefused(f"{source} attention_chunk_size={text['attention_chunk_size']} (chunked attention): {_NEEDS}")
    # Qwen2-style configs keep a window they do not use unless use_sliding_window says so.
    window = text.get("sliding_window") if text.get("use_sliding_window", True) else None
    sliding = _SLIDING in (layer_types or ()) or (layer_types is None and window is not None)
    if not sliding:
        return {}
    if window is None:
        raise ModelRefused(f"{source} layer_types has {_SLIDING} with no sliding_window: {_NEEDS}")
    if window < context:
        layers = f"layer_types has {_SLIDING}, and " if layer_types else ""
        raise ModelRefused(f"{source} {layers}sliding_window={window} is shorter than the context ({context}): {_NEEDS}")
    # Where the config lists layer types, the modeling code slides on those; elsewhere on the window.
    return {"layer_types": [_FULL] * len(layer_types)} if layer_types else {"sliding_window": None}
