"""Input bounds added for production: top_k, the `timeout` extension, empty prompts, and text that
is not valid Unicode (lone surrogates, invalid UTF-8): each a 400 naming the parameter, never a 500."""

from __future__ import annotations

import json as jsonlib

import pytest

from app.engine.types import FinishReason
from tests.api.fake_engine import scripted_events
from tests.api.helpers import assert_error_shape, chat_body, completion_body, sse_json

ENDPOINTS = ["/v1/completions", "/v1/chat/completions"]
LONE = "\ud800"


def body_for(path: str, **overrides) -> dict:
    return completion_body(**overrides) if path == "/v1/completions" else chat_body(**overrides)


async def expect_400(client, fake, path: str, *, json=None, content: bytes | None = None) -> dict:
    # json.dumps escapes lone surrogates as \udXXX, as a client in another language may send them.
    content = content if content is not None else jsonlib.dumps(json).encode("ascii")
    response = await client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = assert_error_shape(response.json())
    assert error["type"] == "invalid_request_error"
    assert fake.calls == [] and fake.encoded_texts == [] and fake.encoded_chats == []
    return error


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_top_k_zero_is_400(client, fake, path):
    error = await expect_400(client, fake, path, json=body_for(path, top_k=0))
    assert error["param"] == "top_k" and "-1 (disabled) or at least 1" in error["message"]
    assert "Value error" not in error["message"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("timeout", [0, -1, 86_401, "soon", [1]])
async def test_out_of_range_timeout_is_400(client, fake, path, timeout):
    error = await expect_400(client, fake, path, json=body_for(path, timeout=timeout))
    assert error["param"] == "timeout"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(("timeout", "expected"), [(2.5, 2.5), (86_400, 86_400.0), (None, None)])
async def test_timeout_reaches_the_engine(client, fake, path, timeout, expected):
    response = await client.post(path, json=body_for(path, timeout=timeout))
    assert response.status_code == 200, response.text
    assert fake.last_call.params.timeout_s == expected


@pytest.mark.parametrize("prompt", ["", [""]])
async def test_empty_text_prompt_is_400_before_encoding(client, fake, prompt):
    error = await expect_400(client, fake, "/v1/completions", json=completion_body(prompt=prompt))
    assert error["param"].startswith("prompt")


@pytest.mark.parametrize(("field", "value"), [
    ("prompt", f"a{LONE}b"), ("prompt", [LONE]), ("stop", LONE), ("stop", ["ok", LONE]), ("model", LONE),
    ("user", LONE),
])
async def test_lone_surrogates_in_completion_fields_are_400(client, fake, field, value):
    error = await expect_400(client, fake, "/v1/completions", json=completion_body(**{field: value}))
    assert error["param"].split(".")[0] == field and "surrogate" in error["message"]


@pytest.mark.parametrize("message", [
    {"role": "user", "content": LONE},
    {"role": "user", "content": [{"type": "text", "text": f"hi {LONE}"}]},
    {"role": "user", "content": "hi", "name": LONE},
])
async def test_lone_surrogates_in_messages_are_400(client, fake, message):
    error = await expect_400(client, fake, "/v1/chat/completions", json=chat_body(messages=[message]))
    assert error["param"].startswith("messages.0.") and "surrogate" in error["message"]


@pytest.mark.parametrize("raw", [
    b'{"model":"fake-model","prompt":"\\ud800"}',  # a JSON escape of a lone surrogate
    b'{"model":"fake-model","prompt":"x\\udfff\\ud800y"}',
    b'{"model":"fake-model","prompt":"\xed\xa0\x80"}',  # UTF-8-encoded surrogate: json.loads lets it pass
])
async def test_escaped_lone_surrogates_in_raw_json_are_400(client, fake, raw):
    error = await expect_400(client, fake, "/v1/completions", content=raw)
    assert error["param"] == "prompt"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("raw", [
    b'{"model":"x","prompt":"\xff"}', b'{"model":"x","messages":[{"role":"user","content":"\xc3\x28"}]}',
    b"\xff\xfe{}",
])
async def test_invalid_utf8_bodies_are_400(client, fake, path, raw):
    error = await expect_400(client, fake, path, content=raw)
    assert error["param"] is None


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_deadline_ends_with_finish_reason_timeout(client, fake, path):
    fake.script = scripted_events(["Par", "tial"], finish_reason=FinishReason.TIMEOUT)
    whole = (await client.post(path, json=body_for(path, timeout=1))).json()
    assert whole["choices"][0]["finish_reason"] == "timeout"
    streamed = sse_json((await client.post(path, json=body_for(path, timeout=1, stream=True))).text)
    assert streamed[-1]["choices"][0]["finish_reason"] == "timeout"
