"""What the engine receives: prompt forms, chat messages, and request fields -> SamplingParams."""

from __future__ import annotations

import pytest

from app.engine.types import SamplingParams
from tests.api.helpers import chat_body, completion_body


async def post_ok(client, path: str, body: dict) -> dict:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


# ---- prompt forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["Hi there", ["Hi there"]])
async def test_text_prompts_are_encoded(client, fake, prompt):
    await post_ok(client, "/v1/completions", completion_body(prompt=prompt))
    assert fake.encoded_texts == ["Hi there"]
    assert fake.checked_ids == []
    assert fake.last_call.prompt_ids == [ord(c) for c in "Hi there"]


@pytest.mark.parametrize("prompt", [[5, 6, 7], [[5, 6, 7]]])
async def test_token_id_prompts_are_checked_not_encoded(client, fake, prompt):
    await post_ok(client, "/v1/completions", completion_body(prompt=prompt))
    assert fake.encoded_texts == []
    assert fake.checked_ids == [[5, 6, 7]]
    assert fake.last_call.prompt_ids == [5, 6, 7]


async def test_chat_messages_reach_the_template(client, fake):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
         "name": "ann"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Bye"},
    ]
    await post_ok(client, "/v1/chat/completions", chat_body(messages=messages))
    # developer is OpenAI's newer name for system; text parts are joined.
    assert fake.encoded_chats == [[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Bye"},
    ]]
    rendered = "<system>Be brief.\n<user>Hello there\n<assistant>Hi.\n<user>Bye\n<assistant>"
    assert fake.last_call.prompt_ids == [ord(c) for c in rendered]


async def test_unknown_fields_are_ignored(client, fake):
    await post_ok(client, "/v1/chat/completions", chat_body(parallel_tool_calls=False, metadata={"a": "b"},
                                                            user="u-1", logprobs=False))
    assert fake.last_call.params.max_tokens == 16


# ---- SamplingParams -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_defaults_translate_to_default_params(client, fake, path):
    body = completion_body() if path == "/v1/completions" else chat_body()
    del body["max_tokens"]
    await post_ok(client, path, body)
    assert fake.last_call.params == SamplingParams()  # max_tokens None: the rest of the context


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_every_field_translates(client, fake, path):
    fields = dict(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, presence_penalty=0.5, frequency_penalty=-1.5,
                  repetition_penalty=1.2, logit_bias={"42": 5, "7": -100, "0": 0.5}, seed=1234, max_tokens=33,
                  stop=["END", "\n\n"])
    body = completion_body(**fields) if path == "/v1/completions" else chat_body(**fields)
    await post_ok(client, path, body)
    assert fake.last_call.params == SamplingParams(
        temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, presence_penalty=0.5, frequency_penalty=-1.5,
        repetition_penalty=1.2, logit_bias=((42, 5.0), (7, -100.0), (0, 0.5)), seed=1234, max_tokens=33,
        stop=("END", "\n\n"))
    assert all(isinstance(k, int) and isinstance(v, float) for k, v in fake.last_call.params.logit_bias)


async def test_temperature_zero_is_greedy(client, fake):
    await post_ok(client, "/v1/completions", completion_body(temperature=0))
    assert fake.last_call.params.is_greedy


@pytest.mark.parametrize(("stop", "expected"), [
    ("END", ("END",)), (["a", "b", "c", "d"], ("a", "b", "c", "d")), ([], ()), (None, ()),
])
async def test_stop_forms(client, fake, stop, expected):
    await post_ok(client, "/v1/completions", completion_body(stop=stop))
    assert fake.last_call.params.stop == expected


@pytest.mark.parametrize("seed", [0, -(2**63), 2**64 - 1])
async def test_seed_bounds_accepted(client, fake, seed):
    await post_ok(client, "/v1/completions", completion_body(seed=seed))
    assert fake.last_call.params.seed == seed


@pytest.mark.parametrize("top_k", [-1, 1, 50])
async def test_top_k_values_accepted(client, fake, top_k):  # 0 is refused: see test_api_bounds.py
    await post_ok(client, "/v1/completions", completion_body(top_k=top_k))
    assert fake.last_call.params.top_k == top_k


async def test_negative_logit_bias_key_passes_through_to_the_engine(client, fake):
    # Range checks against the vocabulary are the engine's (it knows the vocabulary).
    await post_ok(client, "/v1/completions", completion_body(logit_bias={"-1": 1}))
    assert fake.last_call.params.logit_bias == ((-1, 1.0),)


# ---- max_tokens / max_completion_tokens ---------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected"), [
    ({"max_tokens": 12}, 12),
    ({"max_completion_tokens": 7}, 7),
    ({"max_tokens": 12, "max_completion_tokens": 7}, 7),  # the newer name wins
    ({"max_tokens": 3, "max_completion_tokens": 9}, 9),
    ({"max_tokens": 5, "max_completion_tokens": None}, 5),
    ({}, None),
])
async def test_chat_max_completion_tokens_alias(client, fake, fields, expected):
    body = chat_body(**fields)
    if "max_tokens" not in fields:
        del body["max_tokens"]
    await post_ok(client, "/v1/chat/completions", body)
    assert fake.last_call.params.max_tokens == expected


async def test_completions_use_max_tokens(client, fake):
    await post_ok(client, "/v1/completions", completion_body(max_tokens=21))
    assert fake.last_call.params.max_tokens == 21


@pytest.mark.parametrize("path, body", [("/v1/completions", completion_body), ("/v1/chat/completions", chat_body)])
@pytest.mark.parametrize("stream", [False, True])
async def test_ignore_eos_and_min_tokens_reach_the_engine(client, fake, path, body, stream):
    response = await client.post(path, json=body(ignore_eos=True, min_tokens=3, stream=stream))
    assert response.status_code == 200, response.text
    assert fake.last_call.params.ignore_eos is True and fake.last_call.params.min_tokens == 3


@pytest.mark.parametrize("field, value", [("min_tokens", -1), ("min_tokens", "3"), ("ignore_eos", "yes")])
async def test_bad_ignore_eos_or_min_tokens_is_a_400_naming_it(client, field, value):
    response = await client.post("/v1/completions", json=completion_body(**{field: value}))
    assert response.status_code == 400 and response.json()["error"]["param"] == field
