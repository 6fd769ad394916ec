"""Whether batched decoding can serve a model, decided from its config before any weight is read.

Left-padded batched decoding (kv_store.py) keeps position-ordered keys and values on every layer.
Full-attention layers keep them all; sliding-window layers (Mistral/Qwen2 windows, Gemma 2/3's and
Cohere2's local layers, GPT-OSS's alternating ones) are served with a mask limiting each query to the
last `sliding_window` positions: on the fused forward for the registered families (Mistral, Qwen2,
Gemma 2/3: fused_llama.attention_mask, the KV store then forgetting columns no window reaches), else on
transformers' forward with its sliding-window mask over every column (slab_cache.slab_cache makes their
cache layers full slabs). Layers that keep other state cannot be:
chunked attention, linear attention and recurrent layers, layers sharing another layer's KV. This
reads the fields transformers' DynamicCache builds its layers from (cache_utils.get_layer_types_and_kwargs)
and refuses those first; `check_plain_cache` refuses them again once the weights are loaded. A sliding
window at least as long as the context never slides, so that model is loaded as full attention, with the
overrides returned here (and may then run on the fused forward).
"""

from __future__ import annotations

from app.engine.errors import ModelRefused
from app.engine.models.families.registry import Getter

_FULL, _SLIDING = "full_attention", "sliding_attention"
_SERVED = (_FULL, _SLIDING)
_NEEDS = "batched decoding serves full and sliding-window attention layers only"


def configured_window(get: Getter) -> int | None:
    """The config's sliding window; Qwen2-style configs keep one they do not use unless
    use_sliding_window says so."""
    return get("sliding_window", None) if get("use_sliding_window", True) else None


def layer_windows(get: Getter, num_layers: int) -> list[int | None]:
    """Each layer's sliding window as transformers' modeling code applies it (None: full attention):
    the layers layer_types calls sliding (Qwen2/3, Gemma), else every layer where a window is set
    (Mistral, Phi-3)."""
    window = configured_window(get)
    types = get("layer_types", None)
    if types:
        return [window if kind == _SLIDING else None for kind in list(types)[:num_layers]]
    return [window or None] * num_layers


def full_attention_overrides(config: dict, max_model_len: int, source: str = "config.json") -> dict[str, object]:
    """Config fields to pass to from_pretrained so that a window that never slides is full attention
    ({}: none needed; sliding layers whose window is shorter than the context are served as they are).
    Raises ModelRefused, naming the field and its value, where a layer keeps a cache the KV store cannot."""
    text = config.get("text_config") or config
    positions = int(text.get("max_position_embeddings") or 2048)
    context = min(max_model_len or positions, positions)
    layer_types = text.get("layer_types")
    others = sorted({kind for kind in layer_types or () if kind not in _SERVED})
    if others:
        raise ModelRefused(f"{source} layer_types has {', '.join(others)}: {_NEEDS}")
    sharing = text.get("kv_sharing_modes")
    if sharing and "reuse" in sharing:
        raise ModelRefused(f"{source} kv_sharing_modes has 'reuse' (layers sharing a KV cache): {_NEEDS}")
    if text.get("attention_chunk_size") is not None:
        raise ModelRefused(f"{source} attention_chunk_size={text['attention_chunk_size']} (chunked attention): {_NEEDS}")
    window = configured_window(text.get)
    sliding = _SLIDING in (layer_types or ()) or (layer_types is None and window is not None)
    if not sliding:
        return {}
    if window is None:
        raise ModelRefused(f"{source} layer_types has {_SLIDING} with no sliding_window: {_NEEDS}")
    if window < context:
        return {}  # served sliding: every column kept, the mask slides
    # Where the config lists layer types, the modeling code slides on those; elsewhere on the window.
    return {"layer_types": [_FULL] * len(layer_types)} if layer_types else {"sliding_window": None}
