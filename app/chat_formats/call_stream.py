"""Finding a family's calls in streamed output text, the same however the text is cut.

Answer text is released as soon as it cannot be the start of markup. A block whose `header` names the
call before its arguments (Mistral's `name[ARGS]`, harmony's `to=functions.name ... <|message|>`)
opens the call as soon as the name is read and streams the arguments; other blocks are read whole when
they close. Markup that is not a call to an offered tool is given back as the text it was.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import regex

from app.chat_formats.calls import ArgumentsPiece, Call, CallEvent, CallOpened
from app.chat_formats.json_calls import json_calls

Reader = Callable[[str, Collection[str]], "list[Call] | None"]


@dataclass(frozen=True)
class Block:
    """One kind of call markup: `open`, a body, then one of `close` (or the end of the output)."""

    open: str
    read: Reader  # the body read whole: its calls, or None when it is not (only) calls to offered tools
    close: tuple[str, ...] = ()
    keep_close: bool = False  # the close marker starts the next block (Mistral's repeated [TOOL_CALLS])
    header: str | None = None  # regex up to the arguments, with group "name": the arguments then stream


def partial_tail_len(text: str, markers: Collection[str]) -> int:
    """The longest end of `text` that is the start of some marker (held back until it is decided)."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best


def _earliest(text: str, markers: Collection[str]) -> tuple[int, str | None]:
    found = [(text.find(m), -len(m), m) for m in markers if m in text]
    if not found:
        return -1, None
    at, _, marker = min(found)
    return at, marker


class CallStream:
    """Feed output text; get back the answer text and call events it releases."""

    def __init__(self, blocks: Collection[Block], tool_names: Collection[str], drop: Collection[str] = (),
                 bare_json: bool = False) -> None:
        self.tool_names = set(tool_names)
        self.calls: list[Call] = []
        self._blocks = {block.open: block for block in blocks}
        self._drop = tuple(drop)  # framing markup with no meaning for the answer (harmony's headers)
        self._markers = (*self._blocks, *self._drop)
        self._bare_json = bare_json  # an answer that is only a JSON call (Llama 3.x), held whole
        self._started = self._maybe_json = False
        self._held = ""  # undecided text outside a block
        self._block: Block | None = None
        self._body = ""  # the open block's text not yet decided
        self._streaming = False  # the open block's call is open; _body holds its undecided argument tail
        self._whole = False  # the open block is read whole when it closes

    def feed(self, text: str) -> tuple[str, list[CallEvent]]:
        buffer, self._held = self._held + text, ""
        if self._bare_json and not self._started:
            if not buffer.strip():
                self._held = buffer
                return "", []
            self._started = True
            self._maybe_json = buffer.lstrip().startswith("{")
        if self._maybe_json:
            self._held = buffer
            return "", []
        return self._run(buffer, final=False)

    def _run(self, buffer: str, final: bool) -> tuple[str, list[CallEvent]]:
        answer: list[str] = []
        events: list[CallEvent] = []
        while buffer:
            if self._block is not None:
                buffer = self._inside(buffer, answer, events)
                continue
            at, marker = _earliest(buffer, self._markers)
            if marker is not None and not final and self._may_grow(buffer[at:]):
                answer.append(buffer[:at])  # a longer marker may start here (harmony's channel headers)
                self._held = buffer[at:]
                break
            if marker is None:
                keep = 0 if final else partial_tail_len(buffer, self._markers)
                answer.append(buffer[:len(buffer) - keep])
                self._held = buffer[len(buffer) - keep:]
                break
            answer.append(buffer[:at])
            buffer = buffer[at + len(marker):]
            if marker in self._blocks:
                self._block, self._body, self._streaming, self._whole = self._blocks[marker], "", False, False
        return "".join(answer), events

    def finish(self) -> tuple[str, list[CallEvent]]:
        """The end of the output closes whatever is open."""
        held, self._held = self._held, ""
        if self._maybe_json:
            calls = json_calls(held, self.tool_names)
            return ("", self._whole_calls(calls)) if calls is not None else (held, [])
        answer, events = self._run(held, final=True)
        if self._block is not None:
            closing: list[str] = []
            self._close(self._body, "", closing, events)
            answer += "".join(closing)
        return answer, events

    def _may_grow(self, tail: str) -> bool:
        return any(len(m) > len(tail) and m.startswith(tail) for m in self._markers)

    def _inside(self, buffer: str, answer: list[str], events: list[CallEvent]) -> str:
        """Take what the open block can of `buffer`; the text after the block, if it closed."""
        block = self._block
        assert block is not None
        body = self._body + buffer
        if not self._streaming and not self._whole and block.header is not None:
            match = regex.match(block.header, body, partial=True)
            if match is not None and match.partial:
                self._body = body  # the header may still come
                return ""
            if match is not None and match["name"] in self.tool_names:
                self._streaming = True
                events.append(CallOpened(len(self.calls), match["name"]))
                self.calls.append(Call(match["name"], ""))
                body = body[match.end():]
            else:
                self._whole = True
        if block.header is None:
            self._whole = True
        at, marker = _earliest(body, block.close)
        if marker is None:
            keep = partial_tail_len(body, block.close)
            if self._streaming:  # trailing space may end the arguments: held until more comes
                keep = len(body) - len(body[:len(body) - keep].rstrip())
                self._stream(body[:len(body) - keep], events)
            self._body = body[len(body) - keep:] if self._streaming else body
            return ""
        self._close(body[:at], marker, answer, events)
        return body[at:] if block.keep_close else body[at + len(marker):]

    def _close(self, body: str, marker: str, answer: list[str], events: list[CallEvent]) -> None:
        block = self._block
        assert block is not None
        self._block, self._body = None, ""
        if self._streaming:
            self._stream(body.rstrip(), events)
            return
        calls = block.read(body, self.tool_names)
        if calls is None:  # not a call after all: the model's text, shown as it was
            answer.append(block.open + body + ("" if block.keep_close else marker))
        else:
            events.extend(self._whole_calls(calls))

    def _stream(self, piece: str, events: list[CallEvent]) -> None:
        if piece:
            last = self.calls[-1]
            self.calls[-1] = Call(last.name, last.arguments + piece)
            events.append(ArgumentsPiece(len(self.calls) - 1, piece))

    def _whole_calls(self, calls: list[Call]) -> list[CallEvent]:
        events: list[CallEvent] = []
        for call in calls:
            events += [CallOpened(len(self.calls), call.name), ArgumentsPiece(len(self.calls), call.arguments)]
            self.calls.append(call)
        return events
