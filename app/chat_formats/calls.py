"""What a format's parser reports while output streams: a call opening (its name), then argument text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class CallOpened:
    index: int
    name: str


@dataclass(frozen=True)
class ArgumentsPiece:
    index: int
    text: str


CallEvent = CallOpened | ArgumentsPiece
