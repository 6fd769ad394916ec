"""Splitting one choice's generated text into reasoning, answer and tool calls, as it streams.

Each parser is fed text deltas and returns what can be released now, holding back only text that
may still turn out to be markup (a partial `<think>` or `<tool_call>`); `finish()` releases the rest.
Streamed and non-streamed answers run through the same parsers, so they agree.

Tool calls are found by the model's chat format (app/chat_formats: Hermes/Qwen blocks, Llama 3.x JSON,
Mistral [TOOL_CALLS], harmony channels, Gemma); here they become OpenAI's `delta.tool_calls` pieces.
Forced calls (`required`, a named function) follow the format's grammar; for Hermes (the default) that
is bare grammar-constrained JSON, read by ForcedCallParser: see app/api/tool_schema.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from app.chat_formats.calls import CallEvent, CallOpened
from app.chat_formats.format import ChatFormat
from app.chat_formats.registry import DEFAULT as DEFAULT_FORMAT
from app.engine.text.stopping import partial_tail_len


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def message_entry(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ReasoningSplitter:
    """Text between the model's reasoning markers goes to `reasoning`, the rest to the answer.

    `inside` starts True when the prompt already opened a reasoning block (templates that end the
    generation prompt with `<think>`)."""

    def __init__(self, start: str, end: str, inside: bool = False) -> None:
        self.start, self.end = start, end
        self.inside = inside
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, answer) that can be released after `text`."""
        buffer, self._held = self._held + text, ""
        reasoning, answer = [], []
        while buffer:
            marker = self.end if self.inside else self.start
            at = buffer.find(marker)
            if at < 0:
                keep = partial_tail_len(buffer, (marker,))
                released, self._held = buffer[:len(buffer) - keep], buffer[len(buffer) - keep:]
                (reasoning if self.inside else answer).append(released)
                break
            (reasoning if self.inside else answer).append(buffer[:at])
            buffer = buffer[at + len(marker):]
            self.inside = not self.inside
        return "".join(reasoning), "".join(answer)

    def finish(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        return (held, "") if self.inside else ("", held)


class ToolCallParser:
    """`auto` tool choice (and a call forced in the family's own markup): the chat format's parser finds
    the calls; this turns them into OpenAI's stream pieces, with ids, keeping only the calls there is
    room for (one in all without parallel_tool_calls)."""

    def __init__(self, tool_names: set[str], parallel: bool = True, chat_format: ChatFormat = DEFAULT_FORMAT,
                 forced_name: str | None = None) -> None:
        self.parallel = parallel
        self.forced_name = forced_name  # a call forced by name (its finish_reason stays "stop")
        self.calls: list[ParsedCall] = []
        self._stream = chat_format.parser(tool_names)
        self._ids: dict[int, str] = {}

    def feed(self, text: str) -> tuple[str, list[dict]]:
        """(answer text, tool-call stream pieces) that can be released after `text`."""
        answer, events = self._stream.feed(text)
        return answer, self._pieces(events)

    def finish(self) -> tuple[str, list[dict]]:
        answer, events = self._stream.finish()
        return answer, self._pieces(events)

    def _pieces(self, events: list[CallEvent]) -> list[dict]:
        pieces = []
        for event in events:
            if event.index > 0 and not self.parallel:
                continue  # a call beyond the first without parallel_tool_calls: dropped, not shown
            if isinstance(event, CallOpened):
                call = ParsedCall(event.name, "")
                self._ids[event.index] = call.id
                pieces.append(call_opening(event.index, call))
            else:
                pieces.append(arguments_piece(event.index, event.text))
        self.calls = [ParsedCall(call.name, call.arguments, self._ids[index])
                      for index, call in enumerate(self._stream.calls) if index in self._ids]
        return pieces


class ForcedCallParser:
    """`required` or a named function: the whole output is grammar-constrained call JSON.

    A named function's output is its arguments, streamed as they come after a first piece with the
    call's id and name; `required` gives an array of {"name", "arguments"}, released when it ends."""

    def __init__(self, name: str | None) -> None:
        self.name = self.forced_name = name
        self.calls: list[ParsedCall] = []
        self._parts: list[str] = []

    def feed(self, text: str) -> tuple[str, list[dict]]:
        if not text:
            return "", []
        self._parts.append(text)
        if self.name is None:
            return "", []
        pieces = []
        if not self.calls:
            self.calls.append(ParsedCall(self.name, ""))
            pieces.append(call_opening(0, self.calls[0]))
        return "", pieces + [arguments_piece(0, text)]

    def finish(self) -> tuple[str, list[dict]]:
        text = "".join(self._parts)
        if self.name is not None:
            if not self.calls:  # nothing was generated: the call still exists, with empty arguments
                self.calls.append(ParsedCall(self.name, ""))
                return "", [call_opening(0, self.calls[0])]
            self.calls[0] = ParsedCall(self.name, text, self.calls[0].id)
            return "", []
        items = _complete_items(text)
        if not items:  # cut short (max_tokens) inside the first call: no call can be made of it
            return text, []
        self.calls = [ParsedCall(item["name"], json.dumps(item["arguments"], ensure_ascii=False)) for item in items]
        return "", whole_calls(0, self.calls)


def _complete_items(text: str) -> list[dict]:
    """The whole objects of a JSON array, also when max_tokens cut it after some of them."""
    decoder = json.JSONDecoder()
    items, position = [], text.find("[") + 1
    while 0 < position < len(text):
        try:
            item, position = decoder.raw_decode(text, position)
        except ValueError:
            break
        if isinstance(item, dict) and "name" in item and "arguments" in item:
            items.append(item)
        position = text.find(",", position) + 1 if text.find(",", position) >= 0 else 0
    return items


def call_opening(index: int, call: ParsedCall) -> dict:
    """A streamed call's first piece: its index, id and name (arguments follow)."""
    return {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}


def arguments_piece(index: int, fragment: str) -> dict:
    return {"index": index, "function": {"arguments": fragment}}


def whole_calls(first_index: int, calls: list[ParsedCall]) -> list[dict]:
    """Stream pieces for calls parsed whole: each one's opening, then its arguments."""
    pieces = []
    for offset, call in enumerate(calls):
        pieces += [call_opening(first_index + offset, call), arguments_piece(first_index + offset, call.arguments)]
    return pieces
