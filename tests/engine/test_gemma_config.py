"""Gemma 2 / Gemma 3 config.json files in the shapes the Hub ships them (written by transformers 4.4x: no
layer_types, rope_theta / rope_local_base_freq / rope_scaling beside each other, class defaults left
out) read by families/gemma_config.py to what Gemma2Config / Gemma3TextConfig make of them: the layer
types, the RoPE parameters per layer type and every field the fast path reads. What it does not mirror
is refused in one line naming the field and its value."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import Gemma2Config, Gemma3TextConfig

from app.engine.models.families.gemma_config import GEMMA2_DEFAULTS, GEMMA3_DEFAULTS, gemma2_as_saved, gemma3_as_saved
from app.engine.models.llama_checkpoint import as_saved

# Trimmed to the fields that matter, as the Hub's config.json files write them.
_GEMMA2_2B = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 107],
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
    "transformers_version": "4.42.4", "use_cache": True, "vocab_size": 256000,
}
_GEMMA2_9B = {**_GEMMA2_2B, "hidden_size": 3584, "intermediate_size": 14336, "num_attention_heads": 16,
              "num_hidden_layers": 42, "num_key_value_heads": 8, "sliding_window_size": 4096,
              "torch_dtype": "bfloat16", "transformers_version": "4.42.0.dev0"}
_GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": True, "vocab_size": 262144,
}
_GEMMA3_270M = {**_GEMMA3_1B, "_sliding_window_pattern": 6, "hidden_size": 640, "intermediate_size": 2048,
                "num_hidden_layers": 18, "rope_local_base_freq": 10000.0, "rope_theta": 1000000.0,
                "use_bidirectional_attention": False, "transformers_version": "4.55.0.dev0",
                "layer_types": ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 5
                + ["full_attention"] + ["sliding_attention"] * 5 + ["full_attention"]}
del _GEMMA3_270M["sliding_window_pattern"], _GEMMA3_270M["cache_implementation"]
# gemma-3-4b-it's text_config (its folder is Gemma3ForConditionalGeneration; this is the text part).
_GEMMA3_4B_TEXT = {
    "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024,
}
_GEMMA3_12B_TEXT = {**_GEMMA3_4B_TEXT, "hidden_size": 3840, "num_hidden_layers": 48, "num_attention_heads": 16,
                    "num_key_value_heads": 8, "rope_scaling": {"type": "linear", "factor": 8.0},
                    "sliding_window_pattern": 6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0}
CASES = {
    "gemma-2-2b-it": (_GEMMA2_2B, Gemma2Config),
    "gemma-2-9b-it": (_GEMMA2_9B, Gemma2Config),
    "gemma-2-odd": ({**_GEMMA2_2B, "num_hidden_layers": 5, "rope_theta": 5000.0, "final_logit_softcapping": None,
                     "rope_scaling": {"type": "linear", "factor": 4.0}}, Gemma2Config),
    "gemma-2-bare": ({"model_type": "gemma2", "num_hidden_layers": 3}, Gemma2Config),
    "gemma-3-1b-it": (_GEMMA3_1B, Gemma3TextConfig),
    "gemma-3-270m": (_GEMMA3_270M, Gemma3TextConfig),
    "gemma-3-4b-it text": (_GEMMA3_4B_TEXT, Gemma3TextConfig),
    "gemma-3-12b-it text": (_GEMMA3_12B_TEXT, Gemma3TextConfig),
    "gemma-3-pattern-2": ({**_GEMMA3_1B, "num_hidden_layers": 5, "sliding_window_pattern": 2,
                           "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, Gemma3TextConfig),
    "gemma-3-new-format": ({**_GEMMA3_1B, "layer_types": ["sliding_attention", "full_attention"], "num_hidden_layers": 2,
                            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 7.0},
                                                "full_attention": {"rope_type": "linear", "factor": 3.0,
                                                                   "rope_theta": 9.0}}}, Gemma3TextConfig),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hub_config_reads_as_its_config_class_reads_it(name):
    stored, config_class = CASES[name]
    mine = as_saved(dict(stored))
    assert isinstance(mine, dict), mine
    theirs = config_class.from_dict(dict(stored))
    assert mine["layer_types"] == theirs.layer_types
    for kind in set(theirs.layer_types):  # the RoPE each layer type reads
        expected = theirs.rope_parameters.get(kind) if kind in theirs.rope_parameters else theirs.rope_parameters
        got = mine["rope_parameters"].get(kind) if kind in mine["rope_parameters"] else mine["rope_parameters"]
        assert got == expected, kind
    for key in {**GEMMA2_DEFAULTS, **GEMMA3_DEFAULTS}:
        assert mine[key] == getattr(theirs, key), key
    assert "rope_scaling" not in mine and "rope_theta" not in mine


@pytest.mark.parametrize("defaults, config_class", [(GEMMA2_DEFAULTS, Gemma2Config), (GEMMA3_DEFAULTS, Gemma3TextConfig)])
def test_the_defaults_are_the_config_classes(defaults, config_class):
    fields = {f.name: f.default for f in dataclasses.fields(config_class)}
    assert {key: fields[key] for key in defaults} == defaults


def test_a_stored_config_is_not_changed():
    stored = dict(_GEMMA3_4B_TEXT)
    gemma3_as_saved(stored)
    gemma2_as_saved(_GEMMA2_2B)
    assert stored == _GEMMA3_4B_TEXT and _GEMMA3_4B_TEXT["rope_scaling"] == {"factor": 8.0, "rope_type": "linear"}


@pytest.mark.parametrize("stored, field", [
    ({**_GEMMA3_1B, "sliding_window_pattern": 0}, "sliding_window_pattern=0"),
    ({**_GEMMA3_1B, "sliding_window_pattern": "6"}, "sliding_window_pattern='6'"),
    ({**_GEMMA3_1B, "rope_scaling": [8.0]}, "rope_scaling=[8.0]"),
    ({**_GEMMA2_2B, "rope_parameters": "default"}, "rope_parameters='default'"),
])
def test_what_is_not_mirrored_is_refused_naming_the_field_and_value(stored, field):
    refusal = as_saved(stored)
    assert isinstance(refusal, str) and field in refusal and "\n" not in refusal
