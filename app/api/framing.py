"""OpenAI response objects: stream chunks and whole responses for both endpoints.

A Framer holds one response's stable id/created/model and one state per choice (n of them). Every
TokenEvent goes through its choice's state, which splits the text (reasoning, answer, tool calls)
and keeps its logprobs; the stream sends what each event releases, the whole response is built from
the same states after the last event, so streamed and non-streamed answers agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.api.logprob_format import CompletionLogprobs, LogprobFormatter, merge_blocks
from app.api.output_parsers import ForcedCallParser, ReasoningSplitter, ToolCallParser
from app.chat_formats.format import ChatFormat
from app.chat_formats.registry import DEFAULT as DEFAULT_FORMAT
from app.engine.types import FinishReason, TokenEvent, TokenLogprob


def usage(finals: list[TokenEvent]) -> dict:
    """OpenAI's usage object over every choice's final event; cached_tokens is always present."""
    first = finals[0]
    completion = sum(event.num_completion_tokens for event in finals)
    return {
        "prompt_tokens": first.num_prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": first.num_prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": first.num_cached_tokens},
    }


def _reason(event: TokenEvent | None) -> str | None:
    return event.finish_reason.value if event is not None and event.finish_reason else None


@dataclass
class Framer:
    """Shapes for /v1/completions; ChatFramer overrides the ones that differ."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    include_usage: bool = False
    n: int = 1
    formatter: LogprobFormatter | None = None  # set when the request asked for logprobs
    echo_text: str | None = None  # completions: the prompt, sent ahead of each choice's text
    prompt_ids: list[int] = field(default_factory=list)  # for echoed prompt logprobs
    chunk_object = "text_completion"
    response_object = "text_completion"

    def __post_init__(self) -> None:
        self._finals: dict[int, TokenEvent] = {}
        self._states = {index: self._new_state(index) for index in range(self.n)}
        self._prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    def _new_state(self, index: int):
        return CompletionChoice(index, self.echo_text, None if self.formatter is None else CompletionLogprobs(self.formatter))

    def _envelope(self, object_: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}

    def _chunk(self, choice: dict) -> dict:
        body = self._envelope(self.chunk_object, [choice])
        if self.include_usage:
            body["usage"] = None
        return body

    def opening_chunks(self) -> list[dict]:
        """Chunks sent before any token: the echoed prompt, unless its logprobs must wait for the engine."""
        if self.echo_text is None or self.formatter is not None:
            return []
        return [self._chunk(choice) for state in self._states.values() for choice in state.echo()]

    def on_event(self, event: TokenEvent) -> list[dict]:
        """The chunks this event releases (the usage chunk after the last choice's final event)."""
        chunks = [self._chunk(choice) for choice in self._feed(event)]
        if event.finish_reason is not None and len(self._finals) == self.n and self.include_usage:
            body = self._envelope(self.chunk_object, [])
            body["usage"] = usage(self.finals)
            chunks.append(body)
        return chunks

    def _feed(self, event: TokenEvent) -> list[dict]:
        if event.prompt_logprobs is not None:
            self._prompt_logprobs = event.prompt_logprobs  # the same prompt for every choice
        if event.finish_reason is not None:
            self._finals[event.index] = event
        return self._states[event.index].feed(event, self._prompt_logprobs, self.prompt_ids)

    @property
    def finals(self) -> list[TokenEvent]:
        return [self._finals[index] for index in sorted(self._finals)]

    def response(self, events: list[TokenEvent]) -> dict:
        """The whole response from every event of the request, in arrival order."""
        for event in events:
            self._feed(event)
        body = self._envelope(self.response_object, [self._states[i].whole() for i in range(self.n)])
        body["usage"] = usage(self.finals)
        return body


class CompletionChoice:
    """One completions choice: its text so far and its legacy logprobs block."""

    def __init__(self, index: int, echo_text: str | None, logprobs: CompletionLogprobs | None) -> None:
        self.index = index
        self._echo = echo_text
        self._logprobs = logprobs
        self._parts: list[str] = []
        self._blocks: list[dict] = []
        self._unsent: list[dict] = []  # blocks of tokens whose text is still held back
        self._last: TokenEvent | None = None

    def echo(self, prompt_logprobs=None, prompt_ids: list[int] | None = None) -> list[dict]:
        """The echoed prompt's chunk (with its logprobs when asked), once; [] when there is none to send."""
        if self._echo is None:
            return []
        text, self._echo = self._echo, None
        self._parts.append(text)
        block = self._prompt_block(prompt_logprobs, prompt_ids or [])
        if block is not None:
            self._blocks.append(block)
        return [{"index": self.index, "text": text, "logprobs": block, "finish_reason": None}]

    def feed(self, event: TokenEvent, prompt_logprobs, prompt_ids: list[int]) -> list[dict]:
        chunks = self.echo(prompt_logprobs, prompt_ids)  # when it had to wait for the prompt's logprobs
        if self._logprobs is not None:
            block = self._logprobs.block(event.logprobs, event.text)
            self._blocks.append(block)
            self._unsent.append(block)
        self._parts.append(event.text)
        if event.finish_reason is not None:
            self._last = event
        if not event.text and event.finish_reason is None:
            return chunks  # text held back: its tokens' logprobs go with the next chunk
        block, self._unsent = merge_blocks(self._unsent), []
        block = block if block and block["tokens"] else None  # a chunk of no tokens (the end) has none
        return chunks + [{"index": self.index, "text": event.text, "logprobs": block,
                          "finish_reason": _reason(event)}]

    def _prompt_block(self, prompt_logprobs, prompt_ids: list[int]) -> dict | None:
        if self._logprobs is None or prompt_logprobs is None:
            return None
        return self._logprobs.prompt_block(prompt_ids, prompt_logprobs)

    def whole(self) -> dict:
        return {"index": self.index, "text": "".join(self._parts), "logprobs": merge_blocks(self._blocks),
                "finish_reason": _reason(self._last)}


@dataclass
class ChatFramer(Framer):
    reasoning_markers: tuple[str, str] | None = None  # the model's reasoning delimiters, if it has them
    reasoning_open: bool = False  # the prompt ended inside a reasoning block
    tool_mode: str | None = None  # None, "auto", "required" or "named"
    tool_names: tuple[str, ...] = ()  # offered tools; for "named", the one forced
    parallel_tool_calls: bool = True
    chat_format: ChatFormat = DEFAULT_FORMAT  # the model family's markup: how its calls are read
    chunk_object = "chat.completion.chunk"
    response_object = "chat.completion"

    def _new_state(self, index: int):
        reasoning = None
        if self.reasoning_markers is not None:
            reasoning = ReasoningSplitter(*self.reasoning_markers, inside=self.reasoning_open)
        tools: ToolCallParser | ForcedCallParser | None = None
        named = self.tool_names[0] if self.tool_mode == "named" else None
        if self.tool_mode == "auto":
            tools = ToolCallParser(set(self.tool_names), self.parallel_tool_calls, self.chat_format)
        elif self.tool_mode in ("named", "required") and not self.chat_format.forced_in_markup:
            tools = ForcedCallParser(named)  # the server's bare JSON call grammar
        elif self.tool_mode in ("named", "required"):  # the call was forced in the family's own markup
            tools = ToolCallParser(set(self.tool_names), self.parallel_tool_calls, self.chat_format, named)
        return ChatChoice(index, reasoning, tools, self.formatter)

    def opening_chunks(self) -> list[dict]:
        # OpenAI opens every chat stream with the role and empty content, once per choice.
        return [self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}) for index in range(self.n)]


class ChatChoice:
    """One chat choice: reasoning, answer and tool calls split from its text, and its logprobs."""

    def __init__(self, index: int, reasoning: ReasoningSplitter | None,
                 tools: ToolCallParser | ForcedCallParser | None, formatter: LogprobFormatter | None) -> None:
        self.index = index
        self._reasoning = reasoning
        self._tools = tools
        self._formatter = formatter
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._unsent: list[TokenLogprob] = []  # logprobs of tokens whose text is still held back
        self._last: TokenEvent | None = None

    def feed(self, event: TokenEvent, prompt_logprobs=None, prompt_ids=None) -> list[dict]:
        thinking, answer = self._split_reasoning(event.text, event.finish_reason is not None)
        content, pieces = self._split_tools(answer, event.finish_reason is not None)
        self._content.append(content)
        self._thinking.append(thinking)
        self._logprobs.extend(event.logprobs)
        self._unsent.extend(event.logprobs)
        if event.finish_reason is not None:
            self._last = event
        deltas: list[dict] = []
        text_delta = {**({"content": content} if content else {}),
                      **({"reasoning_content": thinking, "reasoning": thinking} if thinking else {})}
        if text_delta:
            deltas.append(text_delta)
        deltas += [{"tool_calls": [piece]} for piece in pieces]
        if event.finish_reason is not None and not deltas:
            deltas.append({})
        choices = [{"index": self.index, "delta": delta, "logprobs": None, "finish_reason": None} for delta in deltas]
        if choices and self._formatter is not None and self._unsent:
            choices[0]["logprobs"] = {"content": self._formatter.chat_entries(self._unsent)}
            self._unsent = []
        if choices and event.finish_reason is not None:
            choices[-1]["finish_reason"] = self.finish_reason
        return choices

    def _split_reasoning(self, text: str, last: bool) -> tuple[str, str]:
        if self._reasoning is None:
            return "", text
        thinking, answer = self._reasoning.feed(text)
        if last:
            more_thinking, more_answer = self._reasoning.finish()
            thinking, answer = thinking + more_thinking, answer + more_answer
        return thinking, answer

    def _split_tools(self, text: str, last: bool) -> tuple[str, list[dict]]:
        if self._tools is None:
            return text, []
        content, pieces = self._tools.feed(text)
        if last:
            more_content, more_pieces = self._tools.finish()
            content, pieces = content + more_content, pieces + more_pieces
        return content, pieces

    @property
    def calls(self) -> list:
        return [] if self._tools is None else self._tools.calls

    @property
    def finish_reason(self) -> str | None:
        # As OpenAI answers (vLLM matches it): "tool_calls", except for a call forced by name: "stop".
        named = self._tools is not None and self._tools.forced_name is not None
        if self.calls and not named and self._last is not None and self._last.finish_reason is FinishReason.STOP:
            return "tool_calls"
        return _reason(self._last)

    def whole(self) -> dict:
        content = "".join(self._content)
        message: dict = {"role": "assistant", "content": None if self.calls and not content else content,
                         "refusal": None}
        if self.calls:
            message["tool_calls"] = [call.message_entry() for call in self.calls]
        thinking = "".join(self._thinking)
        if thinking:
            message["reasoning_content"] = message["reasoning"] = thinking
        logprobs = None
        if self._formatter is not None:
            logprobs = {"content": self._formatter.chat_entries(self._logprobs), "refusal": None}
        return {"index": self.index, "message": message, "logprobs": logprobs, "finish_reason": self.finish_reason}
