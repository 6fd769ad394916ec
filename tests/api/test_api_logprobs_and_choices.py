"""logprobs and n on the wire, over a scripted engine: OpenAI's shapes, streamed and not, agree."""

from __future__ import annotations

import json

import pytest

from app.engine.types import Constraint, FinishReason, TokenEvent, TokenLogprob
from tests.api.helpers import chat_body, completion_body, sse_json


def _event(text: str, token_id: int, index: int = 0, final: bool = False, count: int = 1, top=(), **extra) -> TokenEvent:
    logprob = TokenLogprob(token_id, -0.5, tuple(top))
    return TokenEvent(text=text, token_ids=(token_id,), num_prompt_tokens=3, num_completion_tokens=count,
                      finish_reason=FinishReason.STOP if final else None, index=index, logprobs=(logprob,), **extra)


# "é" is two bytes, C3 A9, and here two tokens; the fake's other ids are code points.
SPLIT_CHARACTER = {0xE6: b"\xc3", 0xA9: b"\xa9", 0xFF: b"\xff"}  # and FF: a byte no UTF-8 text has


@pytest.fixture
def fake(fake):
    fake.token_bytes = lambda token_id: SPLIT_CHARACTER.get(token_id) or chr(token_id).encode()
    return fake


SCRIPT = [
    _event("H", ord("H"), top=((ord("H"), -0.5), (ord("J"), -1.5)),
           prompt_logprobs=(None, TokenLogprob(ord("b"), -2.0, ((ord("x"), -0.1),)), TokenLogprob(ord("c"), float("-inf")))),
    _event("", 0xE6, count=2),  # a token holding part of a character: text held back
    _event("é", 0xA9, count=3, final=True),
]


async def test_chat_logprobs_have_openais_shape_and_match_the_stream(client, fake):
    fake.script = SCRIPT
    body = chat_body(logprobs=True, top_logprobs=2)
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    assert fake.last_call.params.logprobs == 2
    content = whole["choices"][0]["logprobs"]["content"]
    assert [entry["token"] for entry in content] == ["H", "\\xc3", "\\xa9"]
    assert content[1]["bytes"] == [0xC3] and content[2]["bytes"] == [0xA9]
    assert content[0] == {"token": "H", "logprob": -0.5, "bytes": list(b"H"), "top_logprobs": [
        {"token": "H", "logprob": -0.5, "bytes": list(b"H")}, {"token": "J", "logprob": -1.5, "bytes": list(b"J")}]}
    streamed = sse_json((await client.post("/v1/chat/completions", json={**body, "stream": True})).text)
    entries = [e for chunk in streamed for choice in chunk["choices"] if choice["logprobs"]
               for e in choice["logprobs"]["content"]]
    assert entries == content  # the held-back token's logprob rides with the next chunk


async def test_chat_without_logprobs_reports_null(client, fake):
    whole = (await client.post("/v1/chat/completions", json=chat_body())).json()
    assert whole["choices"][0]["logprobs"] is None and fake.last_call.params.logprobs is None


async def test_completion_logprobs_with_echo_include_the_prompt(client, fake):
    fake.script = SCRIPT
    body = completion_body(prompt="abc", logprobs=1, echo=True)
    whole = (await client.post("/v1/completions", json=body)).json()
    params = fake.last_call.params
    assert params.logprobs == 1 and params.prompt_logprobs == 1
    choice = whole["choices"][0]
    assert choice["text"] == "abcHé"
    block = choice["logprobs"]
    assert block["tokens"] == ["a", "b", "c", "H", "\\xc3", "\\xa9"]
    assert block["token_logprobs"] == [None, -2.0, -9999.0, -0.5, -0.5, -0.5]  # -inf is reported as -9999
    assert block["top_logprobs"][0] is None and block["top_logprobs"][1] == {"x": -0.1, "b": -2.0}
    assert block["top_logprobs"][3] == {"H": -0.5, "J": -1.5}
    assert block["text_offset"] == [0, 1, 2, 3, 4, 4]  # characters of the returned text
    streamed = sse_json((await client.post("/v1/completions", json={**body, "stream": True})).text)
    joined = {key: [item for chunk in streamed for c in chunk["choices"] if c["logprobs"] for item in c["logprobs"][key]]
              for key in block}
    assert joined == block
    assert "".join(c["text"] for chunk in streamed for c in chunk["choices"]) == "abcHé"


async def test_completion_logprobs_without_echo_leave_the_prompt_out(client, fake):
    fake.script = SCRIPT
    whole = (await client.post("/v1/completions", json=completion_body(logprobs=0))).json()
    assert fake.last_call.params.prompt_logprobs is None
    assert whole["choices"][0]["logprobs"]["tokens"] == ["H", "\\xc3", "\\xa9"]
    assert whole["choices"][0]["logprobs"]["text_offset"] == [0, 1, 1]


def _two_choices() -> list[TokenEvent]:
    return [_event("a", 97, index=0), _event("x", 120, index=1), _event("b", 98, index=0, final=True, count=2),
            _event("y", 121, index=1, count=2), _event("z", 122, index=1, count=3, final=True)]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_n_choices_each_have_their_index_and_usage_counts_them_all(client, fake, path):
    fake.script = _two_choices()
    body = (chat_body if path == "/v1/chat/completions" else completion_body)(n=2, seed=5)
    whole = (await client.post(path, json=body)).json()
    assert fake.last_call.params.n == 2 and fake.last_call.params.seed == 5
    texts = [c["message"]["content"] if "message" in c else c["text"] for c in whole["choices"]]
    assert [c["index"] for c in whole["choices"]] == [0, 1] and texts == ["ab", "xyz"]
    assert whole["usage"]["completion_tokens"] == 5 and whole["usage"]["prompt_tokens"] == 3
    streamed = sse_json((await client.post(path, json={**body, "stream": True,
                                                       "stream_options": {"include_usage": True}})).text)
    by_index: dict[int, str] = {}
    finishes = []
    for chunk in streamed[:-1]:
        for c in chunk["choices"]:
            by_index[c["index"]] = by_index.get(c["index"], "") + (c["delta"].get("content", "") if "delta" in c else c["text"])
            if c["finish_reason"]:
                finishes.append(c["index"])
    assert by_index == {0: "ab", 1: "xyz"} and finishes == [0, 1]
    assert streamed[-1]["choices"] == [] and streamed[-1]["usage"]["completion_tokens"] == 5


async def test_best_of_equal_to_n_is_accepted(client, fake):
    fake.script = _two_choices()
    response = await client.post("/v1/completions", json=completion_body(n=2, best_of=2))
    assert response.status_code == 200 and len(response.json()["choices"]) == 2


@pytest.mark.parametrize(("response_format", "constraint"), [
    ({"type": "text"}, None),
    ({"type": "json_object"}, Constraint("json")),
    ({"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": {"type": "object", "properties": {
        "a": {"type": "integer"}}}}}, Constraint("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))),
])
async def test_response_format_becomes_the_engines_constraint(client, fake, response_format, constraint):
    await client.post("/v1/chat/completions", json=chat_body(response_format=response_format))
    assert fake.last_call.params.constraint == constraint


async def test_responses_text_format_becomes_the_engines_constraint(client, fake):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    body = {"model": "fake-model", "input": "hi", "text": {"format": {"type": "json_schema", "name": "r", "schema": schema}}}
    response = (await client.post("/v1/responses", json=body)).json()
    assert fake.last_call.params.constraint == Constraint("json_schema", json.dumps(schema))
    assert response["text"]["format"]["type"] == "json_schema" and response["text"]["format"]["schema"] == schema


async def test_completions_honour_response_format_too(client, fake):
    await client.post("/v1/completions", json=completion_body(response_format={"type": "json_object"}))
    assert fake.last_call.params.constraint == Constraint("json")


async def test_text_offsets_follow_the_returned_text_also_past_an_invalid_byte(client, fake):
    # The detokenizer shows an invalid byte as U+FFFD: one character of the text, so offsets move by one.
    fake.script = [_event("a", 97), _event("\ufffd", 0xFF, count=2), _event("b", 98, count=3, final=True)]
    whole = (await client.post("/v1/completions", json=completion_body(logprobs=0))).json()
    choice = whole["choices"][0]
    assert choice["text"] == "a\ufffdb" and choice["logprobs"]["text_offset"] == [0, 1, 2]
    assert choice["logprobs"]["tokens"] == ["a", "\\xff", "b"]
