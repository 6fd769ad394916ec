"""FastTokenizer: a folder's tokenizer.json through the `tokenizers` library alone, as transformers would.

Importing transformers costs about half a second of every start-up, and for the plain fast tokenizers
(what AutoTokenizer builds for Llama folders: `TokenizersBackend` / `PreTrainedTokenizerFast`) all
it adds is bookkeeping: special tokens named in tokenizer_config.json, the chat template, encode and
decode with the backend's truncation and padding off. This class does that much (the methods the
engine uses), and `applies_to` says which folders it covers exactly; everything else loads through
AutoTokenizer. tests/engine/test_fast_tokenizer.py holds both side by side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from app.engine.text import chat_template

GENERIC_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, Mapping) else value


def applies_to(folder: Path) -> str | None:
    """Why a folder's tokenizer needs transformers after all, or None when FastTokenizer is exact."""
    config = _read_json(folder / "tokenizer_config.json")
    if not (folder / "tokenizer.json").is_file():
        return "no tokenizer.json"
    if config.get("tokenizer_class") not in GENERIC_CLASSES or "auto_map" in config:
        return f"tokenizer class {config.get('tokenizer_class')!r}"
    if config.get("clean_up_tokenization_spaces"):
        return "clean_up_tokenization_spaces"  # transformers rewrites decoded text then
    if config.get("added_tokens_decoder") or config.get("additional_special_tokens"):
        return "tokens added in tokenizer_config.json"
    # Files transformers also reads (legacy special tokens, which override the config's; named extra
    # chat templates, chosen by use): read by transformers itself rather than half-read here.
    for extra in ("special_tokens_map.json", "added_tokens.json", "additional_chat_templates"):
        if (folder / extra).exists():
            return extra
    return None  # and every named special token in the vocabulary: FastTokenizer.unknown_special_tokens


class FastTokenizer:
    """encode / decode / chat templates over a `tokenizers.Tokenizer`, with transformers' conventions."""

    def __init__(self, backend: Tokenizer, config: Mapping, template: str | Mapping[str, str] | None) -> None:
        backend.no_padding()
        backend.no_truncation()
        self.backend_tokenizer = backend
        self._config = dict(config)
        self.chat_template = template
        self.special_tokens_map = {name: text for name in SPECIAL_NAMES
                                   if (text := _token_text(config.get(name))) is not None}
        for name in SPECIAL_NAMES:  # bos_token, bos_token_id, ...: None when the config names none
            text = self.special_tokens_map.get(name)
            setattr(self, name, text)
            setattr(self, f"{name}_id", None if text is None else backend.token_to_id(text))
        # transformers counts only the named special tokens (additional ones are refused by applies_to)
        self.all_special_ids = sorted({backend.token_to_id(t) for t in self.special_tokens_map.values()} - {None})
        self.model_max_length = int(config.get("model_max_length") or 1 << 60)

    @classmethod
    def from_folder(cls, folder: str | Path) -> FastTokenizer:
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), config, template)

    @property
    def unknown_special_tokens(self) -> list[str]:
        """Named special tokens the vocabulary lacks (transformers would add them as new tokens)."""
        return [text for text in self.special_tokens_map.values() if self.backend_tokenizer.token_to_id(text) is None]

    def copy(self) -> FastTokenizer:
        """An independent tokenizer (a backend must not serve two threads at once)."""
        return FastTokenizer(Tokenizer.from_str(self.backend_tokenizer.to_str()), self._config, self.chat_template)

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
