"""Incremental detokenizer over tokenizers built here (no downloads): byte-level BPE and a
SentencePiece-like Unigram with byte fallback, both splitting emoji and CJK over several tokens."""

from __future__ import annotations

import random
import string

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from app.engine.text.detokenizer import IncrementalDetokenizer

BYTE_DECODER = {char: byte for byte, char in bytes_to_unicode().items()}

FFFD = "\ufffd"
EMOJI = "Hi 👋🏽 there"
CJK = "東京は日本の首都です"
ENGLISH = "the quick brown fox jumps over the lazy dog. hello world there"


@pytest.fixture(scope="module")
def byte_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE trained on English only: non-ASCII chars stay split in bytes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator([ENGLISH] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def sentencepiece_like() -> PreTrainedTokenizerFast:
    """Llama-2 style: "▁" word marks, byte fallback, a decoder that strips the first space."""
    words = ["▁Hello", "▁world", "▁the", "▁capital", "▁of", "▁France", "▁is", "▁Paris"]
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    pieces += [(f"<0x{b:02X}>", 0.0) for b in range(256)] + [("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + ",.!?"] + [(w, -1.0) for w in words]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def stream(tokenizer, ids, prompt_ids=(), skip_special_tokens=True) -> list[str]:
    """All step() deltas followed by the flush() result."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip_special_tokens)
    deltas = [detok.step(i) for i in ids]
    return [*deltas, detok.flush()]


def expected_text(tokenizer, ids, prompt_ids=()) -> str:
    context = list(prompt_ids)[-5:]
    full = tokenizer.decode(context + list(ids), skip_special_tokens=True)
    return full[len(tokenizer.decode(context, skip_special_tokens=True)) :]


# ---- the fixtures really split characters over tokens ---------------------------------------


@pytest.mark.parametrize("fixture", ["byte_bpe", "sentencepiece_like"])
@pytest.mark.parametrize("char", ["👋", "🏽", "東", "は"])
def test_multibyte_chars_span_several_tokens(request, fixture, char):
    tokenizer = request.getfixturevalue(fixture)
    ids = encode(tokenizer, char)
    assert len(ids) >= len(char.encode()) >= 3
    assert tokenizer.decode(ids[:-1]).endswith(FFFD)


# ---- byte-level BPE --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [EMOJI, CJK, ENGLISH, f"{EMOJI} {CJK}!"])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_byte_level_deltas_are_whole_chars_and_join_to_decode(byte_bpe, text, with_prompt):
    ids = encode(byte_bpe, text)
    prompt_ids = encode(byte_bpe, "hello there, 東") if with_prompt else ()
    deltas = stream(byte_bpe, ids, prompt_ids)
    assert "".join(deltas) == byte_bpe.decode(ids) == text
    assert not any(FFFD in d for d in deltas)


@pytest.mark.parametrize("text", [EMOJI, CJK])
def test_partial_chars_are_held_back(byte_bpe, text):
    deltas = stream(byte_bpe, encode(byte_bpe, text))
    assert deltas.count("") > 1  # some steps only carried part of a character
    assert deltas[-1] == ""  # nothing left for flush on well-formed output


def test_special_tokens_skipped_or_kept(byte_bpe):
    eos = byte_bpe.eos_token_id
    ids = encode(byte_bpe, "hello") + [eos] + encode(byte_bpe, " 東京")
    assert "".join(stream(byte_bpe, ids)) == "hello 東京"
    kept = stream(byte_bpe, ids, skip_special_tokens=False)
    assert "".join(kept) == "hello<|endoftext|> 東京"
    assert "".join(kept) == byte_bpe.decode(ids, skip_special_tokens=False)


# ---- a generation that ends inside a character ---------------------------------------------


def test_flush_drops_an_unfinished_character_at_the_end(byte_bpe):
    ids = encode(byte_bpe, "ab") + encode(byte_bpe, "👋")[:2]  # the model stopped mid emoji
    assert byte_bpe.decode(ids) == f"ab{FFFD}"
    deltas = stream(byte_bpe, ids)
    assert "".join(deltas) == "ab"
    assert not any(FFFD in d for d in deltas)


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes one token stands for, in either fixture's vocabulary."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
        return bytes([int(piece[3:-1], 16)])
    if tokenizer.backend_tokenizer.pre_tokenizer is None:  # the SentencePiece-like fixture
        return piece.replace("▁", " ").encode()
    return bytes(BYTE_DECODER[c] for c in piece)  # byte-level BPE: one char per byte


@pytest.mark.parametrize("fixture", ["byte_bpe", "sentencepiece_like"])
@pytest.mark.parametrize("text", [EMOJI, CJK, f"{CJK} {EMOJI}!"])
def test_every_cut_ends_with_the_last_whole_character(request, fixture, text):
    """Cut the ids anywhere, as max_tokens, a stop token or a deadline can: the text is exactly the
    whole characters among the bytes before the cut, and no delta carries U+FFFD."""
    tokenizer = request.getfixturevalue(fixture)
    prompt_ids = encode(tokenizer, "Hello")
    ids = encode(tokenizer, text)
    whole = "".join(stream(tokenizer, ids, prompt_ids)).encode()
    cuts_inside_a_char = 0
    for cut in range(1, len(ids) + 1):
        covered = whole[: sum(len(token_bytes(tokenizer, i)) for i in ids[:cut])]
        expected = covered.decode("utf-8", errors="ignore")  # drops only the unfinished tail
        cuts_inside_a_char += len(expected.encode()) < len(covered)
        deltas = stream(tokenizer, ids[:cut], prompt_ids)
        assert "".join(deltas) == expected, (cut, deltas)
        assert not any(FFFD in d for d in deltas), (cut, deltas)
    assert cuts_inside_a_char >= 3  # the fixtures really split characters


def test_only_the_unfinished_tail_is_dropped_not_invalid_bytes_before_it(byte_bpe):
    wave = encode(byte_bpe, "👋")
    ids = encode(byte_bpe, "a") + wave[:2] + encode(byte_bpe, "b") + wave[:2]  # invalid, 'b', then unfinished
    assert "".join(stream(byte_bpe, ids)) == f"a{FFFD}b"


def test_invalid_bytes_that_no_short_cut_removes_are_kept(byte_bpe):
    lead = encode(byte_bpe, "東")[0]  # a lead byte alone: every prefix of this run ends in U+FFFD
    ids = encode(byte_bpe, "a") + [lead] * 8
    assert "".join(stream(byte_bpe, ids)) == byte_bpe.decode(ids)


def test_a_second_flush_adds_nothing(byte_bpe):
    detok = IncrementalDetokenizer(byte_bpe)
    for token_id in encode(byte_bpe, "ab") + encode(byte_bpe, "👋")[:2]:
        detok.step(token_id)
    assert detok.flush() == "" and detok.flush() == ""  # "ab" went out with its steps; the rest is dropped
    assert len(detok.token_ids) == len(encode(byte_bpe, "ab")) + 2  # dropped text, counted tokens


def test_invalid_bytes_in_the_middle_come_out_once_the_text_moves_on(byte_bpe):
    ids = encode(byte_bpe, "a") + encode(byte_bpe, "👋")[:2] + encode(byte_bpe, "b")
    deltas = stream(byte_bpe, ids)
    assert "".join(deltas) == byte_bpe.decode(ids) == f"a{FFFD}b"
    assert not any(d.endswith(FFFD) for d in deltas)


def test_flush_with_nothing_held_is_empty(byte_bpe):
    detok = IncrementalDetokenizer(byte_bpe)
    assert detok.flush() == ""
    assert detok.step(encode(byte_bpe, "hello")[0]) != ""
    assert detok.flush() == ""


def test_token_ids_excludes_prompt_context(byte_bpe):
    detok = IncrementalDetokenizer(byte_bpe, encode(byte_bpe, "the quick brown fox"))
    ids = encode(byte_bpe, " hello")
    for i in ids:
        detok.step(i)
    assert detok.token_ids == ids


class DecodeSpy:
    """Duck-typed tokenizer that records how many ids each decode call sees."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.window_sizes: list[int] = []

    def decode(self, ids, **kwargs) -> str:
        self.window_sizes.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def test_decodes_only_a_short_window_each_step(byte_bpe):
    ids = encode(byte_bpe, f"{ENGLISH} {EMOJI} {CJK} " * 10)
    assert len(ids) > 300
    spy = DecodeSpy(byte_bpe)
    deltas = stream(spy, ids, prompt_ids=encode(byte_bpe, ENGLISH))
    assert "".join(deltas) == byte_bpe.decode(ids)
    # A window spans the previous chunk plus the pending tokens: at most a few characters' bytes.
    assert max(spy.window_sizes) <= 10
    assert len(spy.window_sizes) <= 2 * len(ids) + 2


# ---- SentencePiece-like ----------------------------------------------------------------------


def test_prompt_context_gives_the_first_word_its_space(sentencepiece_like):
    tok = sentencepiece_like
    prompt_ids = encode(tok, "The capital of France is")
    ids = encode(tok, "Paris, the capital")
    assert tok.convert_ids_to_tokens(ids[:1]) == ["▁Paris"]
    assert "".join(stream(tok, ids, prompt_ids)) == " Paris, the capital"
    # Without a prompt the first token is the start of the text, as in tokenizer.decode.
    assert "".join(stream(tok, ids)) == tok.decode(ids) == "Paris, the capital"


def test_sentencepiece_spaces_survive_window_starts(sentencepiece_like):
    tok = sentencepiece_like
    ids = encode(tok, "Hello world the capital of France")
    deltas = stream(tok, ids)
    assert deltas[:6] == ["Hello", " world", " the", " capital", " of", " France"]


@pytest.mark.parametrize("text", [EMOJI, CJK, f"Hello {CJK} world {EMOJI}"])
def test_sentencepiece_byte_fallback_never_splits_chars(sentencepiece_like, text):
    tok = sentencepiece_like
    prompt_ids = encode(tok, "Hello")
    ids = encode(tok, text)
    deltas = stream(tok, ids, prompt_ids)
    assert "".join(deltas) == expected_text(tok, ids, prompt_ids) == " " + text
    assert not any(FFFD in d for d in deltas)


# ---- randomised ------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["byte_bpe", "sentencepiece_like"])
def test_random_texts_keep_the_invariant(request, fixture):
    tokenizer = request.getfixturevalue(fixture)
    rng = random.Random(1234)
    pool = list("abc xyz.,!é ßñ") + ["東", "京", "は", "👋", "🏽", "🇫🇷", " the", " Paris"]
    for _ in range(60):
        text = "".join(rng.choices(pool, k=rng.randint(1, 25))).strip() or "x"
        prompt_ids = encode(tokenizer, "".join(rng.choices(pool, k=rng.randint(0, 8))))
        ids = encode(tokenizer, text)
        deltas = stream(tokenizer, ids, prompt_ids)
        assert "".join(deltas) == expected_text(tokenizer, ids, prompt_ids)
        assert not any(FFFD in d for d in deltas), (text, deltas)
        if not prompt_ids:
            assert "".join(deltas) == tokenizer.decode(ids)
