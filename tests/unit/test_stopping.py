"""Stop token checks and the stop-string matcher's hold-back."""

from __future__ import annotations

import random

import pytest

from app.engine.text.stopping import StopMatcher, check_token_stop


def feed(matcher: StopMatcher, deltas: list[str]) -> tuple[list[str], bool]:
    """Push deltas until a stop; return each push's text (then flush's) and whether it stopped."""
    out = []
    for delta in deltas:
        text, stopped = matcher.push(delta)
        out.append(text)
        if stopped:
            return out, True
    out.append(matcher.flush())
    return out, False


def reference(text: str, stops: list[str]) -> tuple[str, bool]:
    """Full text cut at the first stop string to complete, scanning one character at a time."""
    for end in range(1, len(text) + 1):
        hits = [end - len(s) for s in stops if text[:end].endswith(s)]
        if hits:
            return text[: min(hits)], True
    return text, False


# ---- check_token_stop ------------------------------------------------------------------------


def test_check_token_stop():
    assert check_token_stop(2, eos_ids={2}, stop_token_ids=(), ignore_eos=False)
    assert not check_token_stop(2, eos_ids={2}, stop_token_ids=(), ignore_eos=True)
    assert check_token_stop(7, eos_ids={2}, stop_token_ids=(7,), ignore_eos=True)
    assert not check_token_stop(5, eos_ids={2}, stop_token_ids=(7,), ignore_eos=False)


# ---- StopMatcher -----------------------------------------------------------------------------


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError):
        StopMatcher(["ok", ""])


def test_no_stops_passes_text_through():
    m = StopMatcher([])
    assert m.push("hello") == ("hello", False)
    assert m.flush() == ""


def test_stop_in_one_delta():
    assert StopMatcher(["END"]).push("abcENDxyz") == ("abc", True)


def test_stop_spanning_many_deltas():
    m = StopMatcher(["</answer>"])
    assert m.push("The answer is 4<") == ("The answer is 4", False)
    assert m.push("/ans") == ("", False)
    assert m.push("wer") == ("", False)
    assert m.push(">\nmore") == ("", True)
    assert m.stopped


def test_hold_back_released_as_soon_as_mismatch():
    m = StopMatcher(["STOP"])
    assert m.push("ab ST") == ("ab ", False)
    assert m.push("O") == ("", False)
    assert m.push("x") == ("STOx", False)  # "STOx" cannot start a stop any more
    assert m.push("S") == ("", False)
    assert m.flush() == "S"


def test_holds_only_the_longest_viable_tail():
    m = StopMatcher(["abc"])
    # "a" cannot be the start of a match ("aa" is no prefix of "abc"), only the last "a" can.
    assert m.push("aa") == ("a", False)
    assert m.push("ab") == ("a", False)  # "aab" -> first "a" released, "ab" held
    assert m.push("c") == ("", True)


def test_overlapping_candidates_ab_and_abc():
    # "ab" completes first, so it wins even though "abc" could have followed.
    assert feed(StopMatcher(["abc", "ab"]), ["x", "a", "b", "c"]) == (["x", "", ""], True)


def test_overlapping_candidates_abc_and_bcd():
    m = StopMatcher(["abc", "bcd"])
    assert m.push("zab") == ("z", False)
    assert m.push("d") == ("abd", False)
    m = StopMatcher(["abx", "bcd"])
    assert m.push("zab") == ("z", False)
    assert m.push("c") == ("a", False)  # "abc" is no prefix of "abx"; "bc" still may be "bcd"
    assert m.push("d") == ("", True)


def test_earliest_position_wins_among_multiple_stops():
    assert StopMatcher(["world", "lo"]).push("hello world") == ("hel", True)
    assert StopMatcher(["lo", "world"]).push("hello world") == ("hel", True)


def test_stop_inside_a_longer_stop_completes_first():
    # Reading left to right "bc" is complete before "abcd" could be, whatever the split.
    assert StopMatcher(["abcd", "bc"]).push("xabcd") == ("xa", True)
    assert feed(StopMatcher(["abcd", "bc"]), list("xabcd")) == (["x", "", "", "a"], True)


def test_same_end_prefers_the_longer_stop():
    assert StopMatcher(["bc", "abc"]).push("xabc") == ("x", True)


def test_matched_names_the_stop_string_that_ended_the_text():
    m = StopMatcher(["world", "lo"])
    assert m.matched is None
    assert feed(m, ["hel", "lo wor"]) == (["he", "l"], True)
    assert m.matched == "lo"
    m = StopMatcher(["bc", "abc"])
    m.push("xabc")
    assert m.matched == "abc"
    m = StopMatcher(["<|end|>"])
    m.push("text <|en")
    m.flush()
    assert m.matched is None  # flushed for another reason: no stop string ended it


def test_after_stop_nothing_more_is_emitted():
    m = StopMatcher(["."])
    assert m.push("Hi. there") == ("Hi", True)
    assert m.push("more") == ("", True)
    assert m.flush() == ""


def test_flush_releases_held_text_once():
    m = StopMatcher(["<|end|>"])
    assert m.push("done <|en") == ("done ", False)
    assert m.flush() == "<|en"
    assert m.flush() == ""


def test_unicode_stop_strings():
    m = StopMatcher(["。", "👋🏽"])
    assert m.push("東京👋") == ("東京", False)
    assert m.push("🏽!") == ("", True)


def test_repeated_characters_in_stop():
    m = StopMatcher(["aab"])
    assert m.push("aaa") == ("a", False)
    assert m.push("ab") == ("a", True)


@pytest.mark.parametrize("seed", range(5))
def test_random_splits_keep_invariants(seed):
    rng = random.Random(seed)
    alphabet = "abc d\n<>/"
    for _ in range(300):
        num_stops = rng.randint(1, 3)
        stops = ["".join(rng.choices(alphabet, k=rng.randint(1, 4))) for _ in range(num_stops)]
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
        deltas = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        emitted, stopped = feed(StopMatcher(stops), deltas)
        expected, expected_stopped = reference(text, stops)
        joined = "".join(emitted)
        assert (joined, stopped) == (expected, expected_stopped), (stops, deltas)
        for s in stops:  # no piece of text emitted ever completes a stop string
            assert s not in joined


def test_random_single_character_stream_holds_exactly_the_viable_tail():
    rng = random.Random(11)
    stops = ["<end>", "dd"]
    text = "".join(rng.choices("<end>d ", k=400))
    m = StopMatcher(stops)
    emitted = ""
    for i, ch in enumerate(text):
        out, stopped = m.push(ch)
        emitted += out
        if stopped:
            break
        held = text[: i + 1][len(emitted) :]
        seen = text[: i + 1]
        viable = [t for t in range(1, 5) if any(len(s) > t and seen.endswith(s[:t]) for s in stops)]
        assert len(held) == max(viable, default=0)
