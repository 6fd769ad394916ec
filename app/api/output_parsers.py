"""Splitting one choice's generated text into reasoning, answer and tool calls, as it streams.

Each parser is fed text deltas and returns what can be released now, holding back only text that
may still turn out to be markup (a partial `<think>` or `<tool_call>`); `finish()` releases the rest.
Streamed and non-streamed answers run through the same parsers, so they agree.

Recognised tool-call formats (`auto`): Hermes/Qwen `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
blocks anywhere in the answer, and an answer that is only a JSON object `{"name": ..., "arguments" (or
"parameters"): {...}}` naming an offered tool (Llama 3.x style). Forced calls (`required`, a named
function) are grammar-constrained JSON: see app/api/tool_schema.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from app.engine.stopping import partial_tail_len

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


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
    """`auto` tool choice: release answer text, turn recognised tool-call markup into calls."""

    def __init__(self, tool_names: set[str], parallel: bool = True) -> None:
        self.tool_names = tool_names
        self.parallel = parallel
        self.calls: list[ParsedCall] = []
        self._held = ""
        self._inside = False
        self._started = False  # some non-blank answer text was seen
        self._maybe_json = False  # the answer began with "{": held whole until it ends

    def feed(self, text: str) -> tuple[str, list[dict]]:
        """(answer text, tool-call stream pieces) that can be released after `text`."""
        buffer, self._held = self._held + text, ""
        if not self._started:
            if not buffer.strip():
                self._held = buffer
                return "", []
            self._started = True
            self._maybe_json = buffer.lstrip().startswith("{")
        if self._maybe_json:
            self._held = buffer
            return "", []
        answer, new_calls = [], []
        while buffer:
            marker = TOOL_CLOSE if self._inside else TOOL_OPEN
            at = buffer.find(marker)
            if at < 0:
                keep = len(buffer) if self._inside else partial_tail_len(buffer, (marker,))
                if not self._inside:
                    answer.append(buffer[:len(buffer) - keep])
                self._held = buffer[len(buffer) - keep:]
                break
            if self._inside:
                calls = self._json_calls(buffer[:at])
                if calls is None:  # not a call after all: the model's text, shown as it was
                    answer.append(TOOL_OPEN + buffer[:at] + TOOL_CLOSE)
                else:  # a call, sent if there is room for it (parallel_tool_calls)
                    new_calls.extend(self._admit(calls))
            else:
                answer.append(buffer[:at])
            buffer = buffer[at + len(marker):]
            self._inside = not self._inside
        return "".join(answer), new_calls

    def finish(self) -> tuple[str, list[dict]]:
        held, self._held = self._held, ""
        if not (self._maybe_json or self._inside):
            return held, []
        calls = self._json_calls(held)  # a bare JSON answer, or an unclosed block at the end
        if calls is None:  # not a call: the text as it was
            return (held if self._maybe_json else TOOL_OPEN + held), []
        return "", self._admit(calls)

    def _json_calls(self, text: str) -> list[ParsedCall] | None:
        """The calls `text` holds, or None when it is not (only) calls to offered tools."""
        try:
            value = json.loads(text.strip())
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        calls = [call for call in (self._call(item) for item in items) if call is not None]
        return calls if calls and len(calls) == len(items) else None

    def _call(self, item: object) -> ParsedCall | None:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or item["name"] not in self.tool_names:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            return ParsedCall(item["name"], arguments)
        return ParsedCall(item["name"], json.dumps(arguments, ensure_ascii=False))

    def _admit(self, calls: list[ParsedCall]) -> list[dict]:
        """Keep the calls there is room for (one in all without parallel_tool_calls); their stream pieces."""
        room = len(calls) if self.parallel else max(1 - len(self.calls), 0)
        first = len(self.calls)
        self.calls.extend(calls[:room])
        return whole_calls(first, calls[:room])


class ForcedCallParser:
    """`required` or a named function: the whole output is grammar-constrained call JSON.

    A named function's output is its arguments, streamed as they come after a first piece with the
    call's id and name; `required` gives an array of {"name", "arguments"}, released when it ends."""

    def __init__(self, name: str | None) -> None:
        self.name = name
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
