"""Which configs batched decoding serves, decided from the config alone (app/engine/models/attention_layers.py)."""

from __future__ import annotations

import pytest

from app.engine.models.attention_layers import full_attention_overrides
from app.engine.errors import ModelLoadFailed, ModelRefused

MISTRAL = {"model_type": "mistral", "max_position_embeddings": 8192, "sliding_window": 4096}


def test_a_window_shorter_than_the_context_is_served_sliding():
    assert full_attention_overrides(MISTRAL, 0) == {}


def test_the_window_is_measured_against_the_context_served():
    assert full_attention_overrides(MISTRAL, 4096) == {"sliding_window": None}
    assert full_attention_overrides(MISTRAL, 4097) == {}
    # A longer max_model_len than the model's positions is cut to them.
    assert full_attention_overrides({**MISTRAL, "max_position_embeddings": 4096}, 100_000) == {"sliding_window": None}


def test_a_window_at_least_the_positions_is_full_attention():
    phi3_128k = {"model_type": "phi3", "max_position_embeddings": 131072, "sliding_window": 262144}
    assert full_attention_overrides(phi3_128k, 0) == {"sliding_window": None}


def test_no_window_or_an_unused_one_needs_nothing():
    assert full_attention_overrides({"model_type": "llama", "max_position_embeddings": 2048}, 0) == {}
    qwen2 = {"model_type": "qwen2", "sliding_window": 1024, "use_sliding_window": False,
             "max_position_embeddings": 32768, "layer_types": ["full_attention"] * 2}
    assert full_attention_overrides(qwen2, 0) == {}
    assert full_attention_overrides({**qwen2, "layer_types": None}, 0) == {}


def test_sliding_layer_types_are_served_or_made_full():
    gemma2 = {"model_type": "gemma2", "sliding_window": 4096, "max_position_embeddings": 8192,
              "layer_types": ["sliding_attention", "full_attention"]}
    assert full_attention_overrides(gemma2, 0) == {}
    assert full_attention_overrides(gemma2, 2048) == {"layer_types": ["full_attention"] * 2}
    # GPT-OSS: alternating layers, attention sinks in the attention module (nothing for the cache).
    gpt_oss = {"model_type": "gpt_oss", "sliding_window": 128, "max_position_embeddings": 131072,
               "layer_types": ["sliding_attention", "full_attention"] * 12}
    assert full_attention_overrides(gpt_oss, 0) == {}


def test_sliding_layers_without_a_window_are_refused():
    with pytest.raises(ModelRefused, match="layer_types has sliding_attention with no sliding_window"):
        full_attention_overrides({"layer_types": ["sliding_attention"]}, 0)


@pytest.mark.parametrize("config, field", [
    ({"layer_types": ["linear_attention", "full_attention"]}, "layer_types has linear_attention"),
    ({"layer_types": ["chunked_attention"]}, "layer_types has chunked_attention"),
    ({"attention_chunk_size": 8192}, "attention_chunk_size=8192"),
    ({"kv_sharing_modes": ["own", "reuse"]}, "kv_sharing_modes"),
    ({"text_config": {"layer_types": ["sliding_attention", "hybrid"]}}, "layer_types has hybrid"),
])
def test_other_cache_kinds_are_refused(config, field):
    with pytest.raises(ModelRefused, match=field):
        full_attention_overrides(config, 0)
    assert issubclass(ModelRefused, ModelLoadFailed)  # the pool's 503
