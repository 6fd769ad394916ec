"""Incremental detokenizer, one per request: token ids in, new text out.

Invariant: the concatenation of every `step()` result and `flush()` equals
`decode(context + generated)[len(decode(context)):]`, where `context` is the last few prompt
tokens; for byte-level BPE (and with no prompt) that is `tokenizer.decode(generated)`. For
SentencePiece-style tokenizers the context is what gives the first word its leading space.
No delta ends inside a UTF-8 sequence, so none contains U+FFFD unless the model produced
invalid bytes. Each step decodes only the short window since the last emitted text.

Method: prefix/read offsets as in TGI `decode_token` and vLLM `detokenize_incrementally`.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

# How many prompt tokens to keep as left context (vLLM uses the same number).
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


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
        self._prefix_text = self._decode(self._ids)

    @property
    def token_ids(self) -> list[int]:
        """The generated ids so far (prompt context excluded)."""
        return self._ids[self._num_context :]

    def step(self, token_id: int) -> str:
        """Add one generated token; return the new text (maybe "", never a partial character)."""
        self._ids.append(token_id)
        new_text = self._decode(self._ids[self._prefix_offset :])
        # Hold back while the window ends mid UTF-8 sequence (decoders render that as U+FFFD).
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        return self._advance(new_text)

    def flush(self) -> str:
        """Return whatever is still held back (even a dangling U+FFFD); call once at the end."""
        if self._read_offset == len(self._ids):
            return ""
        return self._advance(self._decode(self._ids[self._prefix_offset :]))

    def _advance(self, new_text: str) -> str:
        """Emit the window's text past the prefix and slide the window to the new tokens."""
        delta = new_text[len(self._prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        return delta

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        # No clean-up: it rewrites text across window borders, so windows would not add up.
        return self._tokenizer.decode(
            ids,
            skip_special_tokens=self._skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )
