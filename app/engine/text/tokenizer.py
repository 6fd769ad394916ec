"""FastTokenizer: a folder's tokenizer.json through the `tokenizers` library alone, as transformers would.

Importing transformers costs about half a second of every start-up (and AutoTokenizer builds the model's
config class first), yet for the fast tokenizers AutoTokenizer builds for the covered families all it
adds to tokenizer.json is bookkeeping: special tokens named in tokenizer_config.json, the chat template,
encode and decode with the backend's truncation and padding off, and for two classes a pipeline of
their own around tokenizer.json's vocabulary and merges. This class does that much (the methods the
engine uses): `auto_class` says which class AutoTokenizer builds for a folder, `applies_to` and
`FastTokenizer.refusal` which folders it reproduces exactly; everything else loads through AutoTokenizer.
tests/engine/test_fast_tokenizer.py holds both side by side.

What transformers 5 builds (models/auto/tokenization_auto.py, tokenization_utils_tokenizers.py):

* the generic class (`TokenizersBackend`, alias `PreTrainedTokenizerFast`) reads tokenizer.json as it is.
  AutoTokenizer builds it for a folder that declares it (Llama, Qwen3, Gemma 2/3, ...), and for every
  Mistral and Phi-3 folder whatever class it declares (`LlamaTokenizer` on the hub): Phi-3 is on its list
  of models whose hub class is wrong, Mistral's own class is mistral-common's backend, used only where
  that package is installed and the folder has a `tekken.json` (refused here). It adds named special
  tokens tokenizer.json lacks (refused here), and rewrites Mistral's pre-tokenizer on `fix_mistral_regex`
  (refused here). `add_bos_token` / `add_eos_token` in tokenizer_config.json are dropped when there is a
  tokenizer.json, so its post-processor stands.
* `Qwen2Tokenizer` (every Qwen2 folder, whatever it declares; Qwen3 folders that declare it) and
  `GemmaTokenizer` (Gemma folders that declare it) build a new backend from tokenizer.json's vocabulary
  and merges with their own normalizer, pre-tokenizer, decoder and BPE options, re-add tokenizer.json's
  added tokens in id order, and name special tokens of their own where the config names none. `_PIPELINES`
  holds what each builds; FastTokenizer puts the same pieces on the backend it read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers

from app.engine.text import chat_template

GENERIC = "TokenizersBackend"
GENERIC_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# transformers' Qwen2Tokenizer splits text with this pattern before its byte-level step (its PRETOKENIZE_REGEX)
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class _Pipeline:
    """What a transformers tokenizer class builds around tokenizer.json's vocabulary and merges."""

    special_defaults: Mapping[str, str | None]  # the class's own special tokens, where the config names none
    pieces: Callable[[Mapping], tuple]  # tokenizer_config -> (normalizer, pre-tokenizer, decoder)
    bpe: Callable[[Mapping], dict]  # tokenizer_config (special tokens resolved) -> the BPE model's options
    re_adds_special_tokens: bool  # adds its special tokens again, plain, after the rest


def _qwen2_pieces(config: Mapping) -> tuple:
    split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space")), use_regex=False)
    return normalizers.NFC(), pre_tokenizers.Sequence([split, byte_level]), decoders.ByteLevel()


def _gemma_pieces(config: Mapping) -> tuple:
    decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return (normalizers.Replace(" ", "▁"), pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False),
            decoder)


_PIPELINES: dict[str, _Pipeline] = {
    "Qwen2Tokenizer": _Pipeline(
        {"unk_token": "<|endoftext|>", "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        _qwen2_pieces,
        lambda special: dict(dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                             fuse_unk=False, byte_fallback=False, ignore_merges=False),
        re_adds_special_tokens=True),
    # GemmaTokenizer's BPE takes str() of the config's unk token, as here (a null one becomes "None").
    "GemmaTokenizer": _Pipeline(
        {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
         "mask_token": "<mask>"},
        _gemma_pieces,
        lambda special: dict(dropout=None, unk_token=str(special.get("unk_token")), continuing_subword_prefix=None,
                             end_of_word_suffix=None, fuse_unk=True, byte_fallback=True, ignore_merges=False),
        re_adds_special_tokens=False),
}


def auto_class(model_type: str | None, tokenizer_class: str | None) -> str | None:
    """The tokenizer class transformers 5's AutoTokenizer builds for a local folder of a covered family
    (config.json's model_type, tokenizer_config.json's tokenizer_class, no auto_map): GENERIC, a key of
    `_PIPELINES`, or None where this module does not follow it."""
    declared = GENERIC if tokenizer_class in GENERIC_CLASSES else (tokenizer_class or "").removesuffix("Fast")
    if model_type == "qwen2":  # on AutoTokenizer's list of wrong hub classes: its own class, always
        return "Qwen2Tokenizer" if declared in (GENERIC, "Qwen2Tokenizer") else None
    if model_type in ("mistral", "phi3"):  # the generic class whatever the folder declares (see above)
        return GENERIC if declared in (GENERIC, "LlamaTokenizer") else None
    own = {"llama": None, "qwen3": "Qwen2Tokenizer", "gemma2": "GemmaTokenizer", "gemma3_text": "GemmaTokenizer"}
    if model_type not in own:
        return None
    return declared if declared == GENERIC or (declared == own[model_type] and declared in _PIPELINES) else None


def applies_to(folder: Path) -> str | None:
    """Why a folder's tokenizer needs transformers after all, or None when FastTokenizer is exact
    (given what only the tokenizer itself shows: FastTokenizer.refusal)."""
    config = _read_json(folder / "tokenizer_config.json")
    if not (folder / "tokenizer.json").is_file():
        return "no tokenizer.json"
    model_type = _read_json(folder / "config.json").get("model_type")
    if "auto_map" in config or auto_class(model_type, config.get("tokenizer_class")) is None:
        return f"tokenizer class {config.get('tokenizer_class')!r} for model type {model_type!r}"
    if config.get("clean_up_tokenization_spaces"):
        return "clean_up_tokenization_spaces"  # transformers rewrites decoded text then
    if config.get("split_special_tokens"):
        return "split_special_tokens"  # special tokens written in text are then split like any text
    if config.get("fix_mistral_regex"):
        return "fix_mistral_regex"  # transformers may replace a Mistral tokenizer's pre-tokenizer then
    if config.get("added_tokens_decoder") or config.get("additional_special_tokens") \
            or config.get("extra_special_tokens"):
        return "tokens added in tokenizer_config.json"
    if any(key.endswith("_token") and key not in SPECIAL_NAMES and isinstance(value, (str, Mapping))
           for key, value in config.items()):
        return "model-specific special tokens"  # transformers keeps them as named extra special tokens
    # Files transformers also reads (legacy special tokens, which override the config's; named extra
    # chat templates, chosen by use; Mistral's own vocabulary): read by transformers itself rather than
    # half-read here.
    for extra in ("special_tokens_map.json", "added_tokens.json", "additional_chat_templates", "tekken.json"):
        if (folder / extra).exists():
            return extra
    return None


class FastTokenizer:
    """encode / decode / chat templates over a `tokenizers.Tokenizer`, with transformers' conventions."""

    def __init__(self, backend: Tokenizer, config: Mapping, template: str | Mapping[str, str] | None,
                 tokenizer_class: str = GENERIC) -> None:
        backend.no_padding()
        backend.no_truncation()
        self.backend_tokenizer = backend
        self._config = dict(config)
        self.tokenizer_class = tokenizer_class
        self.chat_template = template
        defaults = _PIPELINES[tokenizer_class].special_defaults if tokenizer_class in _PIPELINES else {}
        named = {name: _token_text(config[name]) if name in config else defaults.get(name) for name in SPECIAL_NAMES}
        self.special_tokens_map = {name: text for name, text in named.items() if text is not None}
        for name in SPECIAL_NAMES:  # bos_token, bos_token_id, ...: None when neither config nor class names one
            text = self.special_tokens_map.get(name)
            setattr(self, name, text)
            setattr(self, f"{name}_id", None if text is None else backend.token_to_id(text))
        # transformers counts only the named special tokens (additional ones are refused by applies_to)
        self.all_special_ids = sorted({backend.token_to_id(t) for t in self.special_tokens_map.values()} - {None})
        self.model_max_length = int(config.get("model_max_length") or 1 << 60)
        self._pipeline_refusal: str | None = None

    @classmethod
    def from_folder(cls, folder: str | Path, tokenizer_class: str | None = None) -> FastTokenizer:
        """The folder's tokenizer as `tokenizer_class` builds it (default: the class AutoTokenizer would
        build, `auto_class`, else the generic one); `refusal` says whether that is exact."""
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        if tokenizer_class is None:
            model_type = _read_json(folder / "config.json").get("model_type")
            tokenizer_class = auto_class(model_type, config.get("tokenizer_class")) or GENERIC
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
        fast = cls(Tokenizer.from_file(str(folder / "tokenizer.json")), config, template, tokenizer_class)
        if tokenizer_class in _PIPELINES:
            fast._pipeline_refusal = fast._take_pipeline(_PIPELINES[tokenizer_class])
        return fast

    def _take_pipeline(self, pipeline: _Pipeline) -> str | None:
        """Put the class's normalizer, pre-tokenizer, decoder and BPE options on the backend read from
        tokenizer.json, as the class builds them around its vocabulary and merges; or why the result
        would not be what the class builds (the backend is then left alone)."""
        backend = self.backend_tokenizer
        model = backend.model
        if type(model).__name__ != "BPE":
            return f"a {type(model).__name__} model in tokenizer.json (the class builds BPE)"
        options = pipeline.bpe(self.special_tokens_map)
        # The merges were read with tokenizer.json's affixes: only "" and None (no affix) are interchangeable.
        for affix in ("continuing_subword_prefix", "end_of_word_suffix"):
            if (getattr(model, affix) or "") != (options[affix] or ""):
                return f"{affix} {getattr(model, affix)!r}"
        # The class re-adds tokenizer.json's added tokens onto its new backend in id order, as `tokenizers`
        # reads them (an id past a gap closes up either way, and a normalized one matches text normalized
        # by the new normalizer either way: tests/engine/test_family_tokenizers.py); then the special ones
        # again, plain (no strip, not normalized), which changes a special token read with flags of its own.
        for token in backend.get_added_tokens_decoder().values():
            if token.content in self.special_tokens_map.values() and \
                    (token.normalized, token.lstrip, token.rstrip, token.single_word, token.special) != \
                    (False, False, False, False, True) and pipeline.re_adds_special_tokens:
                return f"special token {token.content!r} with flags of its own"
        normalizer, pre_tokenizer, decoder = pipeline.pieces(self._config)
        backend.normalizer, backend.pre_tokenizer, backend.decoder = normalizer, pre_tokenizer, decoder
        for option in ("dropout", "unk_token", "fuse_unk", "byte_fallback", "ignore_merges"):
            setattr(model, option, options[option])
        return None

    def refusal(self) -> str | None:
        """Why AutoTokenizer would build something else from this folder after all (what only the
        tokenizer shows), or None: exact."""
        if self._pipeline_refusal:
            return self._pipeline_refusal
        if unknown := self.unknown_special_tokens:
            return f"special tokens not in the vocabulary: {unknown}"  # transformers would add them
        added = {token.content for token in self.backend_tokenizer.get_added_tokens_decoder().values()}
        if plain := [text for text in self.special_tokens_map.values() if text not in added]:
            return f"special tokens that are not added tokens: {plain}"  # transformers would add them as special
        return None

    def copy(self) -> FastTokenizer:
        """An independent tokenizer (a backend must not serve two threads at once)."""
        return FastTokenizer(Tokenizer.from_str(self.backend_tokenizer.to_str()), self._config, self.chat_template,
                             self.tokenizer_class)

    @property
    def unknown_special_tokens(self) -> list[str]:
        """Named special tokens the vocabulary lacks (transformers would add them as new tokens)."""
        return [text for text in self.special_tokens_map.values() if self.backend_tokenizer.token_to_id(text) is None]

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def add_tokens(self, tokens: Sequence[str], special_tokens: bool = False) -> int:
        """transformers' add_tokens: whole-string tokens appended to the vocabulary; how many were new."""
        added = [AddedToken(t, special=special_tokens, normalized=not special_tokens) for t in tokens]
        return (self.backend_tokenizer.add_special_tokens if special_tokens else self.backend_tokenizer.add_tokens)(added)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        # Folders that ask for clean-up load through transformers (applies_to); the engine never asks.
        assert not clean_up_tokenization_spaces, "clean-up is transformers' job"
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int] | None:
        if isinstance(tokens, str):
            found = self.backend_tokenizer.token_to_id(tokens)
            return found if found is not None else getattr(self, "unk_token_id", None)
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def apply_chat_template(self, messages: Sequence[Mapping], tools: Sequence[Mapping] | None = None,
                            tokenize: bool = False, add_generation_prompt: bool = False, **variables) -> str:
        """The rendered prompt text (this engine always tokenizes it itself: `tokenize` must be False)."""
        assert not tokenize, "render, then encode"
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        return chat_template.render(self.chat_template, messages, self.special_tokens_map, tools=tools,
                                    add_generation_prompt=add_generation_prompt, **variables)
