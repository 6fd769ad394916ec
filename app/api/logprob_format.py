"""Engine TokenLogprobs in OpenAI's two shapes: chat `logprobs.content` entries and the legacy
completions block (tokens, token_logprobs, top_logprobs, text_offset).

A token's string is its bytes as UTF-8; a token that holds part of a character shows its bytes as
`\\xNN` escapes (OpenAI does the same), and `bytes` always has the raw values. Log-probabilities of
tokens the sampling distribution excluded (-inf) are reported as -9999.0, as OpenAI and vLLM do.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Sequence

from app.engine.types import TokenLogprob

EXCLUDED = -9999.0


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else EXCLUDED


class LogprobFormatter:
    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self.token_bytes = token_bytes

    def token(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    def _entry(self, token_id: int, logprob: float) -> dict:
        return {"token": self.token(token_id), "logprob": _finite(logprob), "bytes": list(self.token_bytes(token_id))}

    def chat_entries(self, logprobs: Sequence[TokenLogprob]) -> list[dict]:
        """`choices[].logprobs.content`: each token with its k best alternatives."""
        return [{**self._entry(lp.token_id, lp.logprob),
                 "top_logprobs": [self._entry(token_id, value) for token_id, value in lp.top]} for lp in logprobs]


class CompletionLogprobs:
    """The legacy block for one choice, built as its tokens arrive; text_offset counts characters of the
    returned text (the echoed prompt included), so each offset is where its token's text begins there."""

    def __init__(self, formatter: LogprobFormatter) -> None:
        self.formatter = formatter
        self._characters = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def prompt_block(self, token_ids: Sequence[int], logprobs: Sequence[TokenLogprob | None]) -> dict:
        """The echoed prompt's block (logprob None: the first token, which nothing predicts); offsets
        from the tokens' bytes, as the prompt's text is their decoding."""
        offsets = []
        for token_id in token_ids:
            offsets.append(self._characters)
            self._characters += len(self._decoder.decode(self.formatter.token_bytes(token_id)))
        self._characters += len(self._decoder.decode(b"", final=True))
        return self._block(token_ids, logprobs, offsets)

    def block(self, logprobs: Sequence[TokenLogprob], text: str) -> dict:
        """One event's tokens, whose text is `text`: a token whose text is held back (part of a
        character) starts where the next text will."""
        block = self._block([lp.token_id for lp in logprobs], logprobs, [self._characters] * len(logprobs))
        self._characters += len(text)
        return block

    def _block(self, token_ids: Sequence[int], logprobs: Sequence[TokenLogprob | None], offsets: list[int]) -> dict:
        return {"tokens": [self.formatter.token(token_id) for token_id in token_ids],
                "token_logprobs": [None if lp is None else _finite(lp.logprob) for lp in logprobs],
                "top_logprobs": [None if lp is None else self._top(lp) for lp in logprobs],
                "text_offset": offsets}

    def _top(self, lp: TokenLogprob) -> dict[str, float]:
        # OpenAI: the k most likely tokens, and the sampled one, so up to k + 1 entries.
        top = {self.formatter.token(token_id): _finite(value) for token_id, value in lp.top}
        top.setdefault(self.formatter.token(lp.token_id), _finite(lp.logprob))
        return top


def merge_blocks(blocks: Sequence[dict]) -> dict | None:
    """One block from several (the echoed prompt's and each chunk's), in order."""
    if not blocks:
        return None
    return {key: [item for block in blocks for item in block[key]] for key in blocks[0]}
