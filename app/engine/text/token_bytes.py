"""Each token id's raw bytes: what logprobs report as `bytes`, and the text of a lone token.

A token may hold part of a UTF-8 character, so decoding one token alone can give U+FFFD; the bytes
come from the vocabulary itself instead. Byte-level BPE (GPT-2, Llama 3, SmolLM) spells bytes with
GPT-2's printable stand-ins; SentencePiece writes `<0xNN>` for raw bytes and `▁` for a space;
anything else (special tokens, other schemes) falls back to decoding the token alone.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from app.engine.scheduling.chores import Slices

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SPIECE_SPACE = "\u2581"


@lru_cache(maxsize=1)
def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte -> printable character map, inverted: printable bytes stand for themselves, the
    other 68 are shifted above U+00FF in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    chars = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shifted)
            shifted += 1
    return {chr(char): byte for byte, char in zip(printable, chars)}


@lru_cache(maxsize=1)
def _gpt2_translation() -> dict[int, int]:
    """str.translate table: each stand-in to the code point of its byte; any other character below
    U+0100 to U+FFFF, so that a piece holding one fails to encode as latin-1 (it spells no bytes)."""
    table = dict.fromkeys(range(256), 0xFFFF)
    table.update({ord(char): byte for char, byte in _gpt2_byte_decoder().items()})
    return table


def _spelled_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level BPE piece spells, or None if it is not made of GPT-2's stand-ins."""
    if not piece:
        return None
    try:
        return piece.translate(_gpt2_translation()).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _sentencepiece_bytes(piece: str) -> bytes:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace(_SPIECE_SPACE, " ").encode()


_IDS_PER_SLICE = 8192  # about 10 ms of the loop below on 2 cores


def token_byte_slices(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Slices:
    """bytes for every id below `vocab_size` (the model's size: ids past the tokenizer's are b""), built
    in slices of _IDS_PER_SLICE ids (a chore for the model thread); the table is the result."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    special = set(tokenizer.all_special_ids)
    spelled_bytes = [None if piece is None else _spelled_bytes(piece) for piece in pieces]
    byte_level = sum(spelled is not None for spelled in spelled_bytes) > len(pieces) * 0.9
    sentencepiece = any(p and p.startswith(_SPIECE_SPACE) for p in pieces)
    table = []
    for token_id, piece in enumerate(pieces):
        if token_id % _IDS_PER_SLICE == 0:
            yield
        spelled = None
        if token_id not in special and piece is not None:
            if byte_level:
                spelled = spelled_bytes[token_id]
            elif sentencepiece:
                spelled = _sentencepiece_bytes(piece)
        table.append(spelled if spelled is not None else tokenizer.decode([token_id]).encode())
    return table + [b""] * (vocab_size - len(table))
