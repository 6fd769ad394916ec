"""A generation that ends inside a UTF-8 character, by every way it can end (max_tokens, a stop token,
a stop string, the deadline): the unfinished character is dropped, the text ends with the last whole
character, no event carries U+FFFD, and the tokens still count. The tiny model runs for real; its
logits are overridden so it emits chosen token ids that split characters (its tokenizer splits 東 and
👋 over several byte tokens), so this does not depend on what any dtype's greedy text happens to be.
It runs on torch's fused forward, whose one `_forward` is the place to override them."""

from __future__ import annotations

import pytest
import torch

from app.engine.types import FinishReason, SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of

PAST = 0.0


def _force(core, script: list[int]) -> None:
    """Make each forward pass of the single sequence pick the next id of `script`."""
    original, ids = core.runner._forward, iter(script)

    def forward(*args, **kwargs):
        logits = original(*args, **kwargs)
        forced = torch.full_like(logits, -1e9)
        forced[:, next(ids)] = 0.0
        return forced

    core.runner._forward = forward


def _encode(loaded, text: str) -> list[int]:
    return loaded.tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture
def tiny_loaded(tiny_fused):
    return tiny_fused


@pytest.fixture
def split(tiny_loaded):
    """("ab" ids, the first tokens of a character the tokenizer splits, that character)."""
    for char in ("東", "👋"):
        ids = _encode(tiny_loaded, char)
        if len(ids) >= 2:
            return _encode(tiny_loaded, "ab"), ids[:-1], char
    pytest.fail("the tiny tokenizer should split 東 or 👋 over several tokens")


def _run(loaded, script: list[int], params: SamplingParams, expire_after: int | None = None):
    core = make_core(loaded)
    _force(core, script)
    events: list = []
    sequence = make_sequence(loaded, "cut", _encode(loaded, "Hello"), params, events)
    core.add(sequence)
    steps = 0
    while core.has_work:
        if expire_after is not None and steps == expire_after:
            sequence.deadline = PAST
        core.step()
        steps += 1
    assert core.kv_cache_bytes == 0
    return events


def _check(events, expected_text: str, reason: FinishReason, num_tokens: int) -> None:
    ids, text, finish = output_of(events)
    assert text == expected_text
    assert not any("\ufffd" in e.text for e in events), [e.text for e in events]
    assert finish == reason.value
    assert events[-1].num_completion_tokens == num_tokens


def test_max_tokens_inside_a_character(tiny_loaded, split):
    ab, partial, _ = split
    script = ab + partial
    events = _run(tiny_loaded, script, SamplingParams(temperature=0, max_tokens=len(script)))
    _check(events, "ab", FinishReason.LENGTH, len(script))


def test_a_stop_token_right_after_part_of_a_character(tiny_loaded, split):
    ab, partial, _ = split
    script = ab + partial + [tiny_loaded.eos_token_ids[0]]
    events = _run(tiny_loaded, script, SamplingParams(temperature=0, max_tokens=50))
    _check(events, "ab", FinishReason.STOP, len(script))


def test_a_held_back_stop_prefix_is_released_and_the_unfinished_character_is_not(tiny_loaded, split):
    ab, partial, char = split
    script = ab + partial  # "b" is held back as the start of the stop string "b<char>"
    events = _run(tiny_loaded, script, SamplingParams(temperature=0, max_tokens=len(script), stop=("b" + char,)))
    _check(events, "ab", FinishReason.LENGTH, len(script))


def test_the_deadline_inside_a_character(tiny_loaded, split):
    ab, partial, _ = split
    script = ab + partial + ab  # never reached: the deadline falls right after the partial character
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    events = _run(tiny_loaded, script, params, expire_after=len(ab) + len(partial))
    _check(events, "ab", FinishReason.TIMEOUT, len(ab) + len(partial))


def test_the_whole_character_comes_out_once_it_completes(tiny_loaded, split):
    ab, partial, char = split
    script = ab + _encode(tiny_loaded, char)
    events = _run(tiny_loaded, script, SamplingParams(temperature=0, max_tokens=len(script)))
    _check(events, "ab" + char, FinishReason.LENGTH, len(script))
