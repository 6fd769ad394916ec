"""OpenAI response objects: stream chunks and whole responses for both endpoints.

A Framer holds one response's stable id/created/model and turns text deltas into the JSON shapes
of its endpoint; streamed and non-streamed answers are built from the same TokenEvents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.engine.types import TokenEvent


def usage(event: TokenEvent) -> dict:
    """OpenAI's usage object; cached_tokens (prompt tokens whose KV was reused) is always present."""
    return {
        "prompt_tokens": event.num_prompt_tokens,
        "completion_tokens": event.num_completion_tokens,
        "total_tokens": event.num_prompt_tokens + event.num_completion_tokens,
        "prompt_tokens_details": {"cached_tokens": event.num_cached_tokens},
    }


@dataclass
class Framer:
    """Shapes for /v1/completions; ChatFramer overrides the few that differ."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    include_usage: bool = False
    chunk_object = "text_completion"
    response_object = "text_completion"

    def _envelope(self, object_: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}

    def chunk(self, text: str, finish_reason: str | None) -> dict:
        body = self._envelope(self.chunk_object, [self._chunk_choice(text, finish_reason)])
        if self.include_usage:
            body["usage"] = None
        return body

    def first_chunks(self, echo_text: str | None = None) -> list[dict]:
        """Chunks sent before any token: the echoed prompt for completions."""
        return [self.chunk(echo_text, None)] if echo_text else []

    def usage_chunk(self, last: TokenEvent) -> dict:
        body = self._envelope(self.chunk_object, [])
        body["usage"] = usage(last)
        return body

    def response(self, text: str, last: TokenEvent) -> dict:
        body = self._envelope(self.response_object, [self._full_choice(text, last)])
        body["usage"] = usage(last)
        return body

    def _chunk_choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def _full_choice(self, text: str, last: TokenEvent) -> dict:
        return self._chunk_choice(text, _reason(last))


@dataclass
class ChatFramer(Framer):
    chunk_object = "chat.completion.chunk"
    response_object = "chat.completion"

    def first_chunks(self, echo_text: str | None = None) -> list[dict]:
        # OpenAI opens every chat stream with the role and empty content.
        body = self._envelope(self.chunk_object, [{
            "index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}])
        if self.include_usage:
            body["usage"] = None
        return [body]

    def _chunk_choice(self, text: str, finish_reason: str | None) -> dict:
        delta = {"content": text} if text else {}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def _full_choice(self, text: str, last: TokenEvent) -> dict:
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": _reason(last)}


def _reason(event: TokenEvent) -> str | None:
    return event.finish_reason.value if event.finish_reason else None
