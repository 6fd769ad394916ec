"""Incremental detokenizer, one per request: token ids in, new text out.

Invariant: the concatenation of every `step()` result and `flush()` equals
`decode(context + generated)[len(decode(context)):]`, where `context` is the last few prompt
tokens, less an unfinished character at the very end (below); for byte-level BPE (and with no
prompt) that is `tokenizer.decode(generated)`. For
SentencePiece-style tokenizers the context is what gives the first word its leading space.
No delta ends inside a UTF-8 sequence, so none contains U+FFFD unless the model produced
invalid bytes. Each step decodes only the short window since the last emitted text.

The end of a generation (EOS, stop, max_tokens, deadline) can fall inside a character. Rule:
`flush()` drops the final tokens that only begin a character (at most a few), so the text ends with
the last whole character and never with a U+FFFD the model did not make; their ids still count as
generated tokens. Streamed deltas and the non-streamed text both come from here, so they agree.

Method: prefix/read offsets as in TGI `decode_token` and vLLM `detokenize_incrementally`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


# How many prompt tokens to keep as left context (vLLM uses the same number).
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"
# A UTF-8 character has at most 4 bytes and a token at least 1, so an unfinished one spans at most
# 3 tokens; one more allows for a token that decodes to nothing (a skipped special token).
_MAX_UNFINISHED_TAIL_TOKENS = 4


class IncrementalDetokenizer:
    """Turns one request's generated token ids into text deltas."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._num_context = len(self._ids)
        # Text of ids[prefix:read] has been emitted already (or is context); ids[read:] is pending.
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        # Decoded on the first step, not here: a request's detokenizer is built on the event loop,
        # and the tokenizer it is given belongs to the model thread (a fast tokenizer serves one thread).
        self._prefix_text: str | None = None

    @property
    def token_ids(self) -> list[int]:
        """The generated ids so far (prompt context excluded)."""
        return self._ids[self._num_context :]

    def step(self, token_id: int) -> str:
        """Add one generated token; return the new text (maybe "", never a partial character)."""
        self._ids.append(token_id)
        new_text = self._decode(self._ids[self._prefix_offset :])
        # Hold back while the window ends mid UTF-8 sequence (decoders render that as U+FFFD).
        if len(new_text) <= len(self._emitted_prefix()) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        return self._advance(new_text)

    def flush(self) -> str:
        """Return the held-back text that forms whole characters; call once, at the end.

        Trailing tokens that only begin a character are dropped (the fewest that make the text stop
        ending in U+FFFD). If no such cut exists, the U+FFFDs are invalid bytes the model made: kept.
        """
        pending = len(self._ids) - self._read_offset
        if pending == 0:
            return ""
        window = self._ids[self._prefix_offset :]
        for dropped in range(min(pending, _MAX_UNFINISHED_TAIL_TOKENS) + 1):
            text = self._decode(window[: len(window) - dropped])
            if not text.endswith(_REPLACEMENT_CHAR):
                return self._advance(text)
        return self._advance(self._decode(window))

    def _advance(self, new_text: str) -> str:
        """Emit the window's text past the prefix and slide the window to the new tokens."""
        delta = new_text[len(self._emitted_prefix()) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        return delta

    def _emitted_prefix(self) -> str:
        """The text of ids[prefix:read], which new windows are compared against."""
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        return self._prefix_text

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        # No clean-up: it rewrites text across window borders, so windows would not add up.
        return self._tokenizer.decode(
            ids,
            skip_special_tokens=self._skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )
