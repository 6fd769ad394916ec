"""Prompt encoding: text, token ids and chat messages -> validated prompt token ids.

Chat templates come from the model's own tokenizer files; transformers renders them in a
sandboxed Jinja environment, so template syntax inside a message is plain text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jinja2.exceptions import SecurityError, TemplateError
from transformers import PreTrainedTokenizerBase

from app.engine.errors import InvalidRequest


class PromptEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return ids

    def check_ids(self, ids: Sequence[int], param: str = "prompt") -> list[int]:
        if not ids:
            raise InvalidRequest("the prompt is empty", param=param)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})", param=param
            )
        return list(ids)

    def encode_chat(self, messages: Sequence[Mapping[str, str]], add_special_tokens: bool = False) -> list[int]:
        if not self.has_chat_template:
            raise InvalidRequest("this model has no chat template; use /v1/completions", param="messages")
        try:
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
        except SecurityError:
            raise  # the model's template misbehaved: a server fault, not the request's
        except TemplateError as exc:  # e.g. raise_exception("roles must alternate")
            raise InvalidRequest(f"the model's chat template refused these messages: {exc}", param="messages") from exc
        # The template already wrote any BOS; encoding must not add another (unless asked to).
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if not ids:
            raise InvalidRequest("the messages render to an empty prompt", param="messages")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
