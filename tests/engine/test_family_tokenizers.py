"""Each family's tokenizer folder loads as a FastTokenizer exactly where that is what AutoTokenizer builds.

Folders are saved as each family's tokenizer is saved: the tests' byte-level BPE (tests/conftest.py) and
the default model's files with the family's tokenizer_class and its usual tokenizer_config fields, the
folders transformers' own Qwen2Tokenizer / GemmaTokenizer save when built from a vocabulary and merges,
and a sentencepiece-style BPE (byte fallback, "▁" spaces: Llama 2, Mistral, Phi-3, Gemma) declared as
`LlamaTokenizer` or `GemmaTokenizer`. Each is compared with AutoTokenizer on encode, decode, tokens,
special tokens, vocabulary and the rendered chat template. Then the folders kept on AutoTokenizer, each
with what would differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, GemmaTokenizer, Qwen2Tokenizer

from app.engine.models.loader import load_tokenizer
from app.engine.text.tokenizer import FastTokenizer, applies_to, auto_class
from tests.conftest import CORPUS

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "models" / "SmolLM2-135M-Instruct"
TEXTS = [
    "The capital of France is Paris.", "東京は日本の首都です。 👋🏽 🎉 café naïve Ａｂｃ ﬁ e\u0301 ñ",
    "<|im_start|>user\nhi<|im_end|>\n", "  leading, trailing and  multiple   spaces  ", "\ttabs\tand\n\nnewlines\r\n",
    "digits 1234567890 3.14159 0x1F", "def f(x):\n    return {'a': x ** 2}  # ok\n", "", "I'M HERE'S they'll",
    "<|endoftext|><|im_end|>x<s></s><unk><bos><eos><pad><mask>", "a" * 200, " ", "\n", "▁ ▁▁x",
]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}{{ eos_token }}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi é 東京"}]
SPM_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<eos>", "<bos>", "<mask>", "<|im_start|>", "<|im_end|>",
                "<|endoftext|>"]


def _copy(source: Path, folder: Path, model_type: str, **tokenizer_config) -> Path:
    """source's tokenizer files in a new folder of that model type, tokenizer_config.json fields changed."""
    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **tokenizer_config}))
    return folder


def _spm_style(folder: Path) -> Path:
    """A sentencepiece-style BPE as Llama 2 / Mistral ship it in tokenizer.json: byte fallback tokens, the
    "▁" prepended and replacing spaces in the normalizer, the decoder undoing it."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=500, special_tokens=SPM_SPECIALS))
    learned = json.loads(trained.to_str())["model"]
    pieces = SPM_SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]) if p not in SPM_SPECIALS]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    spm = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    spm.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPM_SPECIALS])
    folder.mkdir(parents=True)
    spm.save(str(folder / "tokenizer.json"))
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 32768, "spaces_between_special_tokens": False}))
    return folder


def _vocab_and_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    return model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _saved_by(tokenizer, folder: Path, model_type: str) -> Path:
    """A folder as transformers' own class saves it (with the family's config.json)."""
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


QWEN2_CONFIG = dict(tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|im_end|>",
                    pad_token="<|endoftext|>", unk_token=None, errors="replace", add_prefix_space=False,
                    model_max_length=131072, split_special_tokens=False)
GEMMA_CONFIG = dict(tokenizer_class="GemmaTokenizer", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                    unk_token="<unk>", add_bos_token=True, add_eos_token=False, spaces_between_special_tokens=False)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory) -> Path:
    return _spm_style(tmp_path_factory.mktemp("spm") / "spm")


# case -> (the class AutoTokenizer builds, how the folder is made)
CASES = {
    "qwen2-as-the-tests-save-it": ("Qwen2Tokenizer", lambda tiny, spm, d: _copy(tiny, d, "qwen2")),
    "qwen2-hub-fields": ("Qwen2Tokenizer", lambda tiny, spm, d: _copy(tiny, d, "qwen2", **QWEN2_CONFIG)),
    "qwen2-default-model": ("Qwen2Tokenizer", lambda tiny, spm, d: _copy(DEFAULT, d, "qwen2", **QWEN2_CONFIG)),
    "qwen2-saved-by-Qwen2Tokenizer": ("Qwen2Tokenizer", lambda tiny, spm, d: _saved_by(Qwen2Tokenizer(
        *_vocab_and_merges(tiny), unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        errors="replace"), d, "qwen2")),
    "qwen3-generic": ("TokenizersBackend", lambda tiny, spm, d: _copy(tiny, d, "qwen3")),
    "qwen3-default-model": ("Qwen2Tokenizer", lambda tiny, spm, d: _copy(DEFAULT, d, "qwen3", **QWEN2_CONFIG)),
    "qwen3-saved-by-Qwen2Tokenizer": ("Qwen2Tokenizer", lambda tiny, spm, d: _saved_by(Qwen2Tokenizer(
        *_vocab_and_merges(tiny), eos_token="<|im_end|>"), d, "qwen3")),
    "mistral-generic": ("TokenizersBackend", lambda tiny, spm, d: _copy(tiny, d, "mistral")),
    "mistral-llama-class-byte-level": ("TokenizersBackend", lambda tiny, spm, d: _copy(
        DEFAULT, d, "mistral", tokenizer_class="LlamaTokenizer", add_bos_token=True, legacy=False)),
    "mistral-sentencepiece": ("TokenizersBackend", lambda tiny, spm, d: _copy(spm, d, "mistral")),
    "phi3-generic": ("TokenizersBackend", lambda tiny, spm, d: _copy(tiny, d, "phi3")),
    "phi3-sentencepiece": ("TokenizersBackend", lambda tiny, spm, d: _copy(
        spm, d, "phi3", tokenizer_class="LlamaTokenizer", eos_token="<|endoftext|>", pad_token="<|endoftext|>")),
    "gemma2-generic": ("TokenizersBackend", lambda tiny, spm, d: _copy(tiny, d, "gemma2")),
    "gemma2-saved-by-GemmaTokenizer": ("GemmaTokenizer", lambda tiny, spm, d: _saved_by(
        GemmaTokenizer(*_vocab_and_merges(spm)), d, "gemma2")),
    "gemma3-sentencepiece-declared-gemma": ("GemmaTokenizer", lambda tiny, spm, d: _copy(
        spm, d, "gemma3_text", **GEMMA_CONFIG)),
    "llama-generic": ("TokenizersBackend", lambda tiny, spm, d: _copy(tiny, d, "llama")),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory, tiny_model_dir, spm_dir):
    expected_class, make = CASES[request.param]
    if "default-model" in request.param and not (DEFAULT / "tokenizer.json").is_file():
        pytest.skip("the default model is not prepared")
    folder = make(tiny_model_dir, spm_dir, tmp_path_factory.mktemp(request.param) / "model")
    ours, theirs = load_tokenizer(str(folder)), AutoTokenizer.from_pretrained(str(folder))
    return expected_class, folder, ours, theirs


def test_the_loader_reads_it_without_transformers_as_the_class_autotokenizer_builds(case):
    expected_class, folder, ours, theirs = case
    assert type(theirs).__name__ == expected_class  # what this module claims AutoTokenizer builds there
    assert applies_to(folder) is None
    assert isinstance(ours, FastTokenizer) and ours.tokenizer_class == expected_class and ours.refusal() is None


def test_encoding_and_decoding_match_transformers(case):
    _, _, ours, theirs = case
    for text in TEXTS:
        for special in (True, False):
            expected = theirs.encode(text, add_special_tokens=special)
            assert ours.encode(text, add_special_tokens=special) == expected, text
        ids = theirs.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), text
    everything = list(range(len(theirs)))
    assert ours.convert_ids_to_tokens(everything) == theirs.convert_ids_to_tokens(everything)
    for skip in (True, False):  # every token at once, special ones included
        assert ours.decode(everything, skip_special_tokens=skip) == theirs.decode(everything, skip_special_tokens=skip)


def test_special_tokens_vocabulary_and_chat_template_match_transformers(case):
    _, _, ours, theirs = case
    names = ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id", "mask_token_id")
    assert [getattr(ours, n) for n in names] == [getattr(theirs, n) for n in names]
    assert ours.special_tokens_map == {k: v for k, v in theirs.special_tokens_map.items() if isinstance(v, str)}
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    assert ours.get_vocab() == theirs.get_vocab() and len(ours) == len(theirs)
    assert ours.model_max_length == theirs.model_max_length
    for prompt in (True, False):
        assert ours.apply_chat_template(CHAT, add_generation_prompt=prompt) == \
            theirs.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=prompt)
    assert ours.copy().encode(TEXTS[1]) == theirs.encode(TEXTS[1])


# ---- kept on AutoTokenizer, and why ----

def _generic_reading(folder: Path) -> FastTokenizer:
    """tokenizer.json read as it is (what FastTokenizer would give were the folder not refused)."""
    return FastTokenizer.from_folder(folder, tokenizer_class="TokenizersBackend")


def _first_difference(ours, theirs) -> str | None:
    for text in TEXTS:
        if ours.encode(text) != theirs.encode(text):
            return text
    return None


def test_a_llama_folder_declaring_llama_tokenizer_keeps_autotokenizer(tmp_path, spm_dir):
    """LlamaTokenizer builds its own pipeline (a Metaspace pre-tokenizer prepending "▁" to the first
    piece only, legacy=False) where tokenizer.json prepends it to every piece between added tokens."""
    folder = _copy(spm_dir, tmp_path / "llama", "llama")
    theirs = AutoTokenizer.from_pretrained(str(folder))
    assert type(theirs).__name__ == "LlamaTokenizer" and auto_class("llama", "LlamaTokenizerFast") is None
    assert _first_difference(_generic_reading(folder), theirs) is not None
    assert applies_to(folder) is not None and not isinstance(load_tokenizer(str(folder)), FastTokenizer)


def test_gemma_defaults_missing_from_the_vocabulary_keep_autotokenizer(tmp_path, tiny_model_dir):
    """GemmaTokenizer names <mask>, <pad>, ... of its own; one the vocabulary lacks becomes a new token."""
    folder = _copy(tiny_model_dir, tmp_path / "gemma", "gemma2", tokenizer_class="GemmaTokenizer")
    theirs, ours = AutoTokenizer.from_pretrained(str(folder)), FastTokenizer.from_folder(folder)
    assert len(theirs) == len(ours) + 1 and theirs.mask_token == "<mask>"
    assert ours.refusal() is not None and not isinstance(load_tokenizer(str(folder)), FastTokenizer)


def _with_added_tokens(folder: Path, edit) -> Path:
    data = json.loads((folder / "tokenizer.json").read_text())
    edit(data["added_tokens"], len(data["model"]["vocab"]))
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


def _added(content: str, token_id: int, normalized: bool = False, special: bool = True) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": special}


def test_added_tokens_qwen2_tokenizer_adds_again_come_out_the_same(tmp_path, tiny_model_dir):
    """Qwen2Tokenizer adds tokenizer.json's added tokens again onto its own backend: past a gap in the
    ids, and normalized ones under its NFC normalizer, they come out as `tokenizers` reads them."""
    folder = _with_added_tokens(_copy(tiny_model_dir, tmp_path / "qwen2", "qwen2"), lambda added, size: added.extend(
        [_added("<tool>", size + 5), _added("e\u0301x", size + 6, normalized=True, special=False)]))
    theirs, ours = AutoTokenizer.from_pretrained(str(folder)), load_tokenizer(str(folder))
    assert isinstance(ours, FastTokenizer) and ours.get_vocab() == theirs.get_vocab()
    for text in ("a <tool> b", "e\u0301x \u00e9x", "<tool>e\u0301x"):
        assert ours.encode(text) == theirs.encode(text)


def test_a_special_token_with_flags_of_its_own_keeps_autotokenizer_for_qwen2(tmp_path, tiny_model_dir):
    """Qwen2Tokenizer then adds its special tokens once more, plain: <|im_end|> read with lstrip stops
    taking the space before it."""
    def flag(added, size):
        for token in added:
            if token["content"] == "<|im_end|>":
                token["lstrip"] = True
    folder = _with_added_tokens(_copy(tiny_model_dir, tmp_path / "qwen2", "qwen2"), flag)
    theirs, ours = AutoTokenizer.from_pretrained(str(folder)), FastTokenizer.from_folder(folder)
    assert theirs.encode("a <|im_end|>") != _generic_reading(folder).encode("a <|im_end|>")
    assert "<|im_end|>" in ours.refusal() and not isinstance(load_tokenizer(str(folder)), FastTokenizer)
    generic = _copy(folder, tmp_path / "qwen3", "qwen3")  # read as it is by the generic class: flags kept
    assert load_tokenizer(str(generic)).encode("a <|im_end|>") == AutoTokenizer.from_pretrained(str(generic)).encode(
        "a <|im_end|>")


def test_a_special_token_that_is_not_an_added_token_keeps_autotokenizer(tmp_path, tiny_model_dir):
    """transformers makes every named special token an added special token (skip_special_tokens then
    drops it); tokenizer.json read as it is keeps it a plain one."""
    vocabulary = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    plain = max((token for token in vocabulary if token.isalpha() and token.isascii()), key=len)  # a word
    folder = _copy(tiny_model_dir, tmp_path / "llama", "llama", pad_token=plain)
    theirs, ours = AutoTokenizer.from_pretrained(str(folder)), FastTokenizer.from_folder(folder)
    assert theirs.pad_token_id == ours.pad_token_id == vocabulary[plain]
    ids = [vocabulary[plain]]
    assert theirs.decode(ids, skip_special_tokens=True) == "" != ours.decode(ids, skip_special_tokens=True)
    assert plain in ours.refusal() and not isinstance(load_tokenizer(str(folder)), FastTokenizer)


def test_split_special_tokens_keeps_autotokenizer(tmp_path, tiny_model_dir):
    folder = _copy(tiny_model_dir, tmp_path / "qwen3", "qwen3", split_special_tokens=True)
    theirs = AutoTokenizer.from_pretrained(str(folder))
    assert theirs.encode("<|im_end|>") != _generic_reading(folder).encode("<|im_end|>")
    assert applies_to(folder) == "split_special_tokens"
    assert not isinstance(load_tokenizer(str(folder)), FastTokenizer)


def test_fix_mistral_regex_keeps_autotokenizer(tmp_path):
    """On a Mistral folder saved before transformers 5 with more than 100000 tokens, fix_mistral_regex
    has transformers put its own split in front of tokenizer.json's pre-tokenizer."""
    vocabulary = {**{chr(0x100 + i): i for i in range(256)}, **{f"t{i}": 256 + i for i in range(100_000)}}
    big = Tokenizer(models.BPE(vocabulary, []))
    big.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    big.decoder = decoders.ByteLevel()
    big.add_special_tokens(["<s>", "</s>"])
    folder = tmp_path / "mistral"
    folder.mkdir()
    big.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"model_type": "mistral", "transformers_version": "4.57.1"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "fix_mistral_regex": True}))
    theirs = AutoTokenizer.from_pretrained(str(folder))
    assert theirs.backend_tokenizer.pre_tokenizer.__getstate__() != big.pre_tokenizer.__getstate__()
    assert applies_to(folder) == "fix_mistral_regex"
    assert not isinstance(load_tokenizer(str(folder)), FastTokenizer)


@pytest.mark.parametrize("model_type, declared", [("qwen2", "BertTokenizer"), ("qwen3", "LlamaTokenizer"),
                                                  ("gemma2", "LlamaTokenizerFast"), ("gpt2", "TokenizersBackend")])
def test_classes_it_does_not_follow_go_to_transformers(tmp_path, tiny_model_dir, model_type, declared):
    folder = _copy(tiny_model_dir, tmp_path / "m", model_type, tokenizer_class=declared)
    assert auto_class(model_type, declared) is None and applies_to(folder) is not None


def test_a_tekken_vocabulary_goes_to_transformers(tmp_path, tiny_model_dir):
    """Where mistral-common is installed, AutoTokenizer builds its backend from tekken.json instead."""
    folder = _copy(tiny_model_dir, tmp_path / "mistral", "mistral")
    (folder / "tekken.json").write_text("{}")
    assert applies_to(folder) == "tekken.json"
