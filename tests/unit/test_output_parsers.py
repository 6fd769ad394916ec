"""Splitting generated text into reasoning, answer and tool calls gives the same result however the
text is cut into deltas, and never shows markup as answer text."""

from __future__ import annotations

import json
import random

import pytest

from app.api.output_parsers import ForcedCallParser, ReasoningSplitter, ToolCallParser


def _pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def _split_reasoning(text: str, seed: int, inside: bool = False) -> tuple[str, str]:
    splitter = ReasoningSplitter("<think>", "</think>", inside=inside)
    reasoning, answer = [], []
    for piece in _pieces(text, seed):
        r, a = splitter.feed(piece)
        reasoning.append(r)
        answer.append(a)
    r, a = splitter.finish()
    return "".join(reasoning) + r, "".join(answer) + a


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("text", "inside", "expected"), [
    ("<think>Let me see.</think>The answer is 4.", False, ("Let me see.", "The answer is 4.")),
    ("Hmm, 2+2.</think>4", True, ("Hmm, 2+2.", "4")),  # the template opened the block
    ("No reasoning here <thin k>", False, ("", "No reasoning here <thin k>")),
    ("<think>cut off mid-thought", False, ("cut off mid-thought", "")),
    ("a < b and c <think", False, ("", "a < b and c <think")),
])
def test_reasoning_is_split_the_same_however_the_text_arrives(seed, text, inside, expected):
    assert _split_reasoning(text, seed, inside) == expected


def _parse_tools(parser, text: str, seed: int) -> tuple[str, list[dict]]:
    answer, pieces = [], []
    for piece in _pieces(text, seed):
        a, p = parser.feed(piece)
        answer.append(a)
        pieces += p
    a, p = parser.finish()
    return "".join(answer) + a, pieces + p


def _calls(pieces: list[dict]) -> list[tuple[str, dict]]:
    """Reassemble streamed pieces the way the openai SDK does: by index, arguments concatenated."""
    calls: dict[int, dict] = {}
    for piece in pieces:
        call = calls.setdefault(piece["index"], {"name": None, "arguments": ""})
        if "id" in piece:
            assert piece["id"].startswith("call_") and piece["function"]["name"]
            call["name"] = piece["function"]["name"]
        call["arguments"] += piece["function"].get("arguments", "")
    return [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]


TOOLS = {"get_weather", "get_time"}


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("text", "answer", "calls"), [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "",
     [("get_weather", {"city": "Paris"})]),
    ('Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
     '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', "Let me check. ",
     [("get_weather", {"city": "Oslo"}), ("get_time", {})]),
    ('  {"name": "get_time", "parameters": {"zone": "UTC"}}', "", [("get_time", {"zone": "UTC"})]),  # Llama style
    ('{"answer": 42}', '{"answer": 42}', []),  # JSON that is not a call stays the answer
    ('<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',
     '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>', []),  # not an offered tool
    ("Use <b>bold</b> and a < b.", "Use <b>bold</b> and a < b.", []),
    ('<tool_call>{"name": "get_time", "arguments": {}}', "", [("get_time", {})]),  # unclosed at EOS
])
def test_auto_tool_calls_are_found_however_the_text_arrives(seed, text, answer, calls):
    got_answer, pieces = _parse_tools(ToolCallParser(TOOLS), text, seed)
    assert got_answer == answer
    assert _calls(pieces) == calls
    assert "<tool_call>" not in got_answer or not calls


def test_without_parallel_calls_only_the_first_is_kept():
    text = ('<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    _, pieces = _parse_tools(ToolCallParser(TOOLS, parallel=False), text, 0)
    assert _calls(pieces) == [("get_weather", {"city": "A"})]


@pytest.mark.parametrize("seed", range(10))
def test_a_forced_named_call_streams_its_arguments_after_its_name(seed):
    parser = ForcedCallParser("get_weather")
    text = '{"city":"Paris","unit":"c"}'
    answer, pieces = _parse_tools(parser, text, seed)
    assert answer == "" and "id" in pieces[0] and pieces[0]["function"]["arguments"] == ""
    assert _calls(pieces) == [("get_weather", {"city": "Paris", "unit": "c"})]
    assert parser.calls[0].arguments == text and parser.calls[0].id == pieces[0]["id"]


def test_a_required_call_array_cut_short_keeps_its_whole_calls():
    parser = ForcedCallParser(None)
    text = '[{"name":"get_time","arguments":{}},{"name":"get_weather","arguments":{"ci'
    answer, pieces = _parse_tools(parser, text, 3)
    assert answer == "" and _calls(pieces) == [("get_time", {})]
    assert _parse_tools(ForcedCallParser(None), '[{"name":"get_ti', 0) == ('[{"name":"get_ti', [])


@pytest.mark.parametrize("seed", range(5))
def test_a_call_beyond_parallel_tool_calls_is_dropped_not_shown(seed):
    text = ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call> and '
            '<tool_call>{"name": "get_weather", "arguments": {"city": "B"}}</tool_call>')
    answer, pieces = _parse_tools(ToolCallParser(TOOLS, parallel=False), text, seed)
    assert answer == " and " and _calls(pieces) == [("get_time", {})]


@pytest.mark.parametrize("text", ['{"name": ["get_time"], "arguments": {}}', '{"name": {"a": 1}}',
                                  '<tool_call>{"name": null}</tool_call>', "<tool_call>[]</tool_call>"])
def test_odd_json_from_the_model_is_text_not_an_error(text):
    answer, pieces = _parse_tools(ToolCallParser(TOOLS), text, 1)
    assert answer == text and pieces == []
