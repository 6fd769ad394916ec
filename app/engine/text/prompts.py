"""Prompt encoding: text, token ids and chat messages -> validated prompt token ids.

Chat templates come from the model's own tokenizer files; they render in a sandboxed Jinja
environment (app/engine/text/chat_template.py, or transformers' for tokenizers it loads), so template
syntax inside a message is plain text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from jinja2.exceptions import SecurityError, TemplateError

from app.chat_formats.registry import format_for
from app.engine.errors import InvalidRequest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# A one-tool list: a template that renders tools shows the probe's name somewhere.
PROBE_TOOL = "tokenwire_probe_tool"
_PROBE = [{"type": "function", "function": {"name": PROBE_TOOL, "description": "probe",
                                            "parameters": {"type": "object", "properties": {}}}}]


class PromptEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.renders_tools = self._renders_tools()
        # The model family's chat format (app/chat_formats), from the markers its template holds.
        self.format = format_for(getattr(tokenizer, "chat_template", None))
        vocab = tokenizer.get_vocab()
        self.reasoning_markers = self.format.reasoning_markers(vocab)
        # The format's markup that is one token here: a forced call's grammar names those tokens.
        self.markup_token_ids = tuple((text, vocab[text]) for text in self.format.markup if text in vocab)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def _renders_tools(self) -> bool:
        """Whether the model's own template shows offered tools (else they are written in as text)."""
        if not self.has_chat_template:
            return False
        try:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=_PROBE,
                                                      tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template that cannot take tools does not render them
            return False
        return PROBE_TOOL in text

    def opens_reasoning(self, ids: Sequence[int]) -> bool:
        """True when the prompt ends inside a reasoning block (the template opened it for the model)."""
        if self.reasoning_markers is None:
            return False
        start, end = self.reasoning_markers
        tail = self.tokenizer.decode(list(ids[-8:]), skip_special_tokens=False)
        return tail.rfind(start) > tail.rfind(end)

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

    def encode_chat(self, messages: Sequence[Mapping], add_special_tokens: bool = False,
                    tools: Sequence[Mapping] | None = None) -> list[int]:
        """Render with the model's template; tools (Hugging Face's function schema) reach it natively
        when it renders them, else written into the conversation by the model's chat format."""
        if not self.has_chat_template:
            raise InvalidRequest("this model has no chat template; send a plain-text prompt instead", param="prompt")
        if self.renders_tools:
            messages, extra = [dict(m) for m in messages], ({"tools": list(tools)} if tools else {})
        else:
            messages, extra = self.format.rewrite(messages, tools), {}
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        except SecurityError:
            raise  # the model's template misbehaved: a server fault, not the request's
        except TemplateError as exc:  # e.g. raise_exception("roles must alternate")
            raise InvalidRequest(f"the model's chat template refused these messages: {exc}", param="prompt") from exc
        # The template already wrote any BOS; encoding must not add another (unless asked to).
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if not ids:
            raise InvalidRequest("the messages render to an empty prompt", param="prompt")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
