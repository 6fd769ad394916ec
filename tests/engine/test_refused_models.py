"""Models batched decoding cannot serve (chunked, linear or shared-KV layers) are refused from their
config before any weight is read; a sliding window at least as long as the context is served as full
attention, exactly as transformers computes it (shorter ones: tests/engine/test_sliding_window.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, MistralConfig, MistralForCausalLM
from transformers import Qwen2Config, Qwen2ForCausalLM

from app.engine.engine import EngineConfig
from app.engine.errors import ModelRefused
from app.engine.models.loader import load
from app.engine.models.model_catalog import ModelCatalog
from app.engine.model_pool import ModelPool, PoolConfig
from app.engine.types import SamplingParams
from tests.engine.helpers import run_alone, tiny_load_config
from tests.engine.test_parity import _hf_greedy

SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.5)
GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


def _folder(root: Path, tiny_model_dir: Path, model_class, config) -> Path:
    """A tiny random model of `model_class` saved with the tiny Llama's tokenizer."""
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    config.vocab_size = vocab
    torch.manual_seed(0)
    model_class(config).eval().save_pretrained(root)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model_dir / name).exists():
            (root / name).write_bytes((tiny_model_dir / name).read_bytes())
    return root


def _garbage_weights(folder: Path) -> Path:
    (folder / "model.safetensors").write_bytes(b"not safetensors" * 100)
    return folder


def _with_fields(folder: Path, **fields) -> Path:
    """The folder's config.json with `fields` set (a kind of layer batched decoding cannot serve)."""
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return folder


def test_chunked_attention_is_refused_before_the_weights(tmp_path, tiny_model_dir):
    folder = _with_fields(_garbage_weights(_folder(tmp_path, tiny_model_dir, MistralForCausalLM,
                                                   MistralConfig(**SIZES, sliding_window=None))),
                          attention_chunk_size=64)
    with pytest.raises(ModelRefused, match=r"attention_chunk_size=64 \(chunked attention\)"):
        load(tiny_load_config(folder, dtype="float32"))


def test_other_layer_types_are_refused_naming_the_field(tmp_path, tiny_model_dir):
    config = Gemma2Config(**SIZES, head_dim=16, sliding_window=32, layer_types=["sliding_attention", "full_attention"])
    folder = _with_fields(_garbage_weights(_folder(tmp_path, tiny_model_dir, Gemma2ForCausalLM, config)),
                          layer_types=["sliding_attention", "linear_attention"])
    with pytest.raises(ModelRefused, match="layer_types has linear_attention"):
        load(tiny_load_config(folder, dtype="float32"))


def test_qwen2_without_its_sliding_window_is_served(tmp_path, tiny_model_dir):
    folder = _folder(tmp_path, tiny_model_dir, Qwen2ForCausalLM,
                     Qwen2Config(**SIZES, sliding_window=32, use_sliding_window=False))
    loaded = load(tiny_load_config(folder, dtype="float32"))
    tokens, _, reason = run_alone(loaded, loaded.tokenizer.encode("Hello world"), GREEDY)
    assert len(tokens) == 16 and reason == "length"


@pytest.mark.parametrize("window", [128, 4096])
def test_a_window_as_long_as_the_context_is_served_as_transformers_computes_it(tmp_path, tiny_model_dir, window):
    folder = _folder(tmp_path, tiny_model_dir, MistralForCausalLM, MistralConfig(**SIZES, sliding_window=window))
    loaded = load(tiny_load_config(folder, dtype="float32", native_kernels=False))
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # its window as saved
    assert reference.config.sliding_window == window
    for prompt in ("The capital of France", "def main():\n"):
        ids = loaded.tokenizer.encode(prompt)
        # Up to the last position the window allows: prompt plus completion fill the context.
        steps = 128 - len(ids)
        ours, _, _ = run_alone(loaded, ids, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True))
        assert ours == _hf_greedy(reference, ids, steps), prompt


async def test_an_on_demand_refused_model_fails_at_once_and_is_checked_again(tmp_path, tiny_model_dir):
    windowed = _with_fields(_garbage_weights(_folder(tmp_path / "models" / "windowed", tiny_model_dir,
                                                     MistralForCausalLM, MistralConfig(**SIZES, sliding_window=None))),
                            attention_chunk_size=64)
    config = EngineConfig(tiny_load_config(tiny_model_dir, dtype="float32"), "tiny")
    pool = ModelPool(ModelCatalog(config, str(tmp_path / "models")), PoolConfig())
    await pool.start()
    try:
        started = time.monotonic()
        with pytest.raises(ModelRefused, match="attention_chunk_size=64"):
            await pool.acquire("windowed")
        assert time.monotonic() - started < 1.0
        assert "attention_chunk_size=64 (chunked attention)" in pool.view("windowed").error
        # The folder changed: the next request reads it again.
        _folder(windowed, tiny_model_dir, MistralForCausalLM, MistralConfig(**SIZES, sliding_window=None))
        (await pool.acquire("windowed")).release()
        assert pool.view("windowed").error is None
    finally:
        await pool.stop()
