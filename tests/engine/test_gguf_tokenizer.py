"""A GGUF file's sentencepiece (Llama-2-style, tokenizer.ggml.model "llama") vocabulary built directly
(loader._gguf_tokenizer) encodes and decodes as AutoTokenizer.from_pretrained(gguf_file=...) does:
byte fallback for what no piece holds, "▁" for spaces, control tokens kept whole."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

pytest.importorskip("gguf")

from app.engine.models.loader import _gguf_tokenizer, load_tokenizer  # noqa: E402
from tests.engine.gguf_files import (  # noqa: E402
    F32_TYPES, SPM_PIECES, SPM_SPECIALS, spm_tokenizer, write_gguf)

VOCAB = 3 + 256 + len(SPM_PIECES) + len(SPM_SPECIALS)
SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
TEXTS = ["Hello world", " Hello world", "  Hello  world ", "Hello\nworld\n\n", "the world is a world",
         "東京は日本の首都です。 👋🏽 café", "Ünïcödé ☃ 𝔘 \u200b", "<|user|>Hello<|end|>", "<|user|> hi <|end|>\n",
         "<s>Hello</s>", "<unk>", "<0x41>", "▁Hello", "", " ", "\t"]
# llama: Metaspace adds the space prefix; phi3: a normalizer does (transformers' phi3_tokenizer).
MODELS = {"llama": lambda: LlamaForCausalLM(LlamaConfig(**SIZES)),
          "phi3": lambda: Phi3ForCausalLM(Phi3Config(**SIZES))}


@pytest.fixture(scope="module", params=sorted(MODELS))
def spm_gguf(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"spm-{request.param}")
    return write_gguf(folder / "spm.gguf", MODELS[request.param]().eval(), F32_TYPES, tokenizer=spm_tokenizer)


def test_a_sentencepiece_gguf_tokenizer_is_autotokenizer_s(spm_gguf):
    direct = _gguf_tokenizer(str(spm_gguf))
    reference = AutoTokenizer.from_pretrained(str(spm_gguf.parent), gguf_file=spm_gguf.name)
    assert direct is not None and type(direct) is type(reference)
    for text in TEXTS:
        ids = reference(text)["input_ids"]
        assert direct(text)["input_ids"] == ids, text
        bare = reference(text, add_special_tokens=False)["input_ids"]
        assert direct(text, add_special_tokens=False)["input_ids"] == bare, text
        for skip in (False, True):
            assert direct.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)
        assert direct.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(ids)
    assert direct("東京 👋")["input_ids"][:3] == [1, 259 + SPM_PIECES.index("▁"), 259 + SPM_PIECES.index("東京")]
    assert "<0xF0>" in direct.convert_ids_to_tokens(direct("👋")["input_ids"])  # byte fallback
    assert (direct.bos_token, direct.eos_token, direct.pad_token, direct.unk_token) == \
        (reference.bos_token, reference.eos_token, reference.pad_token, reference.unk_token)
    assert direct.added_tokens_decoder == reference.added_tokens_decoder and len(direct) == len(reference)


def test_the_loader_takes_the_direct_sentencepiece_tokenizer(spm_gguf, monkeypatch):
    import transformers

    def no_auto(*args, **kwargs):
        raise AssertionError("AutoTokenizer was asked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_auto)
    tokenizer = load_tokenizer(str(spm_gguf))
    assert tokenizer("Hello world")["input_ids"] == [1, 259 + SPM_PIECES.index("▁Hello"),
                                                     259 + SPM_PIECES.index("▁world")]
