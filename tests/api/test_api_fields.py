"""No OpenAI field that changes the output is silently ignored: each is honoured or refused with a
400 naming it; engine errors name the field the client actually sent."""

from __future__ import annotations

import pytest

from app.engine.errors import ContextLengthExceeded, InvalidRequest
from tests.api.fake_engine import MODEL_NAME
from tests.api.helpers import chat_body, completion_body

REFUSED_CHAT = [
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
    ("web_search_options", {}),
    ("reasoning_effort", "high"),
    ("verbosity", "low"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED_CHAT)
async def test_chat_fields_this_server_cannot_honour_are_400_naming_them(client, fake, field, value):
    response = await client.post("/v1/chat/completions", json=chat_body(**{field: value}))
    assert response.status_code == 400
    assert response.json()["error"]["param"].split(".")[0] == field and fake.calls == []


@pytest.mark.parametrize(("field", "value"), [
    ("metadata", {"a": "b"}), ("service_tier", "auto"), ("store", False), ("user", "u-1"),
    ("safety_identifier", "x"), ("prompt_cache_key", "k"), ("modalities", ["text"]),
    ("prediction", {"type": "content", "content": "hello"}), ("parallel_tool_calls", False),
    ("stream_options", {"include_usage": False, "include_obfuscation": True}),
])
async def test_fields_that_do_not_change_the_tokens_are_accepted(client, fake, field, value):
    response = await client.post("/v1/chat/completions", json=chat_body(**{field: value}))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("field", "value"), [("suffix", "tail"), ("best_of", 3)])
async def test_completion_fields_this_server_cannot_honour_are_400_naming_them(client, fake, field, value):
    response = await client.post("/v1/completions", json=completion_body(**{field: value}))
    assert response.status_code == 400 and response.json()["error"]["param"] == field and fake.calls == []


@pytest.mark.parametrize(("path", "body", "engine_param", "expected"), [
    ("/v1/chat/completions", chat_body(max_completion_tokens=9), "max_tokens", "max_completion_tokens"),
    ("/v1/chat/completions", chat_body(max_tokens=9), "max_tokens", "max_tokens"),
    ("/v1/chat/completions", chat_body(), "prompt", "messages"),
    ("/v1/chat/completions", chat_body(response_format={"type": "json_object"}), "constraint", "response_format"),
    ("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=1), "logprobs", "top_logprobs"),
    ("/v1/completions", completion_body(), "prompt", "prompt"),
    ("/v1/completions", completion_body(logprobs=1, echo=True), "prompt_logprobs", "logprobs"),
    ("/v1/responses", {"model": MODEL_NAME, "input": "hi", "max_output_tokens": 5}, "max_tokens", "max_output_tokens"),
    ("/v1/responses", {"model": MODEL_NAME, "input": "hi"}, "prompt", "input"),
    ("/v1/responses", {"model": MODEL_NAME, "input": "hi", "text": {"format": {"type": "json_object"}}},
     "constraint", "text.format"),
])
async def test_engine_errors_name_the_field_the_client_sent(client, fake, path, body, engine_param, expected):
    error = ContextLengthExceeded if engine_param in ("max_tokens", "prompt") else InvalidRequest
    fake.generate_error = error("refused", param=engine_param)
    response = await client.post(path, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == expected


async def test_a_forced_tool_calls_grammar_error_names_tools(client, fake):
    fake.generate_error = InvalidRequest("the JSON schema cannot be used: bad", param="constraint")
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    response = await client.post("/v1/chat/completions", json=chat_body(tools=[tool], tool_choice="required"))
    assert response.json()["error"]["param"] == "tools"


@pytest.mark.parametrize(("field", "value"), [
    ("reasoning", {"effort": "high"}), ("conversation", "conv_1"), ("prompt", {"id": "pmpt_1"}),
    ("top_logprobs", 3), ("include", ["message.output_text.logprobs"]),
    ("truncation", "auto"), ("tool_choice", "required"), ("text", {"verbosity": "low"}),
])
async def test_responses_fields_this_server_cannot_honour_are_400_naming_them(client, fake, field, value):
    response = await client.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi", field: value})
    assert response.status_code == 400 and response.json()["error"]["param"].split(".")[0] == field
    assert fake.calls == []


@pytest.mark.parametrize(("field", "value"), [
    ("truncation", "disabled"), ("tool_choice", "none"), ("include", []), ("service_tier", "auto"),
    ("parallel_tool_calls", True), ("text", {"verbosity": "medium"}), ("store", False), ("store", True),
    ("background", False),
])
async def test_responses_fields_that_do_not_change_the_tokens_are_accepted(client, fake, field, value):
    response = await client.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi", field: value})
    assert response.status_code == 200, response.text
