"""POST /tokenize and /detokenize (vLLM's shape), and base URLs with a doubled slash."""

from __future__ import annotations

import pytest

from tests.api.fake_engine import MODEL_NAME
from tests.api.helpers import assert_error_shape
from tests.api.test_api_limits import client_for


async def test_tokenize_a_prompt_counts_what_completions_would(client, fake):
    response = await client.post("/tokenize", json={"model": MODEL_NAME, "prompt": "Hi!"})
    assert response.status_code == 200
    assert response.json() == {"tokens": [72, 105, 33], "count": 3, "max_model_len": fake.info.max_model_len}
    assert fake.special_token_flags == [True]  # as /v1/completions encodes text


async def test_tokenize_messages_applies_the_chat_template(client, fake):
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = (await client.post("/tokenize", json={"model": MODEL_NAME, "messages": messages})).json()
    assert fake.encoded_chats == [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    assert body["count"] == len(body["tokens"]) == len("<system>Be brief.\n<user>Hi\n<assistant>")
    assert fake.special_token_flags == [False]  # as /v1/chat/completions does
    await client.post("/tokenize", json={"model": MODEL_NAME, "messages": messages, "add_special_tokens": True})
    assert fake.special_token_flags == [False, True]


@pytest.mark.parametrize("body", [{"model": MODEL_NAME}, {"model": MODEL_NAME, "prompt": "a",
                                                          "messages": [{"role": "user", "content": "b"}]},
                                  {"model": MODEL_NAME, "prompt": ""}, {"model": MODEL_NAME, "prompt": 5}])
async def test_tokenize_needs_exactly_one_input(client, body):
    response = await client.post("/tokenize", json=body)
    assert response.status_code == 400
    assert_error_shape(response.json())


async def test_detokenize_and_its_bounds(client):
    response = await client.post("/detokenize", json={"model": MODEL_NAME, "tokens": [72, 105]})
    assert response.status_code == 200 and response.json() == {"prompt": "Hi"}
    assert (await client.post("/detokenize", json={"model": MODEL_NAME, "tokens": []})).json() == {"prompt": ""}
    outside = await client.post("/detokenize", json={"model": MODEL_NAME, "tokens": [10**9]})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "tokens"
    unknown = await client.post("/detokenize", json={"model": "other", "tokens": [1]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", ["//v1/models", "/v1//models", "//health"])
async def test_a_doubled_slash_is_the_single_slash_route(client, path):
    # A base URL ending in "/" joined with "/v1/models"; absolute, or httpx would read "//v1" as a host.
    response = await client.get(f"http://testserver{path}")
    assert response.status_code == 200
    if path != "//health":  # health carries live counters
        assert response.json() == (await client.get(path.replace("//", "/"))).json()


async def test_a_doubled_slash_still_needs_the_key(fake):
    async with client_for(fake, api_keys="k1") as client:
        doubled = "http://testserver//v1/models"
        assert (await client.get(doubled)).status_code == 401
        assert (await client.get(doubled, headers={"Authorization": "Bearer k1"})).status_code == 200
