"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) over the scripted engine: the
request as the chat request it becomes, the Message and its named stream events, stop reasons, usage,
tools, thinking, and every refusal in Anthropic's error shape."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from app.engine.errors import InvalidRequest, Overloaded
from app.engine.types import FinishReason
from tests.api.fake_engine import MODEL_NAME, scripted_events
from tests.api.helpers import assert_anthropic_error, named_sse_json
from tests.api.test_api_limits import client_for
from tests.api.test_api_observability import requests_total, samples, serve_app
from tests.api.test_api_tools import CALL_TEXT, REASONING

WEATHER = {"name": "get_weather", "description": "Weather now",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


def messages_body(**overrides) -> dict:
    return {"model": MODEL_NAME, "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi"}], **overrides}


async def stream_of(client, body: dict) -> list[tuple[str, dict]]:
    response = await client.post("/v1/messages", json={**body, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    return named_sse_json(response.text)


def whole_of_stream(events: list[tuple[str, dict]]) -> dict:
    """The Message a client assembles from a stream, as the anthropic SDK does."""
    message = events[0][1]["message"]
    for name, body in events[1:]:
        if name == "content_block_start":
            assert body["index"] == len(message["content"])  # indexes count from 0, in order
            message["content"].append({**body["content_block"], "partial_json": ""})
        elif name == "content_block_delta":
            block, delta = message["content"][body["index"]], body["delta"]
            key = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json",
                   "signature_delta": "signature"}[delta["type"]]
            block[key] = (block[key] + delta[key]) if key != "signature" else delta[key]
        elif name == "message_delta":
            message.update(body["delta"], usage=body["usage"])
    for block in message["content"]:
        if block["type"] == "tool_use":
            block["input"] = json.loads(block["partial_json"] or "{}")
        del block["partial_json"]
    return message


async def test_a_text_answer_is_a_message(client, fake):
    response = await client.post("/v1/messages", json=messages_body(metadata={"user_id": "u-1"}, unknown_field=1))
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["id"].startswith("msg_") and message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == MODEL_NAME
    assert message["content"] == [{"type": "text", "text": "Hello, world!"}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    assert message["usage"] == {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 0,
                                "cache_creation_input_tokens": 0}
    assert fake.encoded_chats[-1] == [{"role": "user", "content": "Say hi"}]
    assert fake.last_call.params.max_tokens == 16


async def test_the_stream_is_anthropics_event_sequence(client, fake):
    events = await stream_of(client, messages_body())
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", *["content_block_delta"] * 4, "content_block_stop",
        "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] == 3
    assert [body["delta"] for name, body in events if name == "content_block_delta"] == [
        {"type": "text_delta", "text": text} for text in ("Hello", ",", " world", "!")]
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"]["output_tokens"] == 4
    whole = (await client.post("/v1/messages", json=messages_body())).json()
    streamed = whole_of_stream(events)
    assert {**streamed, "id": whole["id"]} == whole


async def test_system_sampling_and_stop_sequences_reach_the_engine(client, fake):
    body = messages_body(system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
                         temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END", "\n\n"])
    assert (await client.post("/v1/messages", json=body)).status_code == 200
    assert fake.encoded_chats[-1][0] == {"role": "system", "content": "Be brief."}
    params = fake.last_call.params
    assert (params.temperature, params.top_p, params.top_k, params.stop) == (0.5, 0.9, 40, ("END", "\n\n"))


@pytest.mark.parametrize(("finish", "stop_string", "expected"), [
    (FinishReason.STOP, None, ("end_turn", None)),
    (FinishReason.STOP, "END", ("stop_sequence", "END")),
    (FinishReason.LENGTH, None, ("max_tokens", None)),
])
async def test_stop_reasons(client, fake, finish, stop_string, expected):
    *head, last = scripted_events(["Hi", " there"], finish_reason=finish)
    fake.script = [*head, replace(last, stop_string=stop_string)]
    body = messages_body(stop_sequences=["END"])
    message = (await client.post("/v1/messages", json=body)).json()
    assert (message["stop_reason"], message["stop_sequence"]) == expected
    delta = [b for name, b in await stream_of(client, body) if name == "message_delta"][0]["delta"]
    assert (delta["stop_reason"], delta["stop_sequence"]) == expected


async def test_usage_counts_cached_prompt_tokens_apart(client, fake):
    fake.script = [replace(event, num_prompt_tokens=40, num_cached_tokens=32)
                   for event in scripted_events(["Hi", "!"])]
    usage = {"input_tokens": 8, "output_tokens": 2, "cache_read_input_tokens": 32, "cache_creation_input_tokens": 0}
    assert (await client.post("/v1/messages", json=messages_body())).json()["usage"] == usage
    events = await stream_of(client, messages_body())
    assert events[0][1]["message"]["usage"] == {**usage, "output_tokens": 0}
    assert events[-2][1]["usage"] == usage


# ---- tools ----------------------------------------------------------------------------------------


async def test_a_tool_round_trip_becomes_chat_messages(client, fake):
    conversation = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "use the tool", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "12 C"}]},
            {"type": "text", "text": "Thanks."}]},
    ]
    response = await client.post("/v1/messages", json=messages_body(messages=conversation, tools=[WEATHER]))
    assert response.status_code == 200, response.text
    assert fake.encoded_chats[-1] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "12 C", "tool_call_id": "toolu_1"},
        {"role": "user", "content": "Thanks."},
    ]
    assert fake.encoded_tools[-1] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather now", "parameters": WEATHER["input_schema"]}}]


async def test_a_hermes_call_is_a_tool_use_block(client, fake):
    fake.script = scripted_events(CALL_TEXT)
    body = messages_body(tools=[WEATHER, TIME])
    message = (await client.post("/v1/messages", json=body)).json()
    assert fake.last_call.params.constraint is None  # auto: the model decides
    text, call = message["content"]
    assert text == {"type": "text", "text": "Sure. "}
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_")
    assert (call["name"], call["input"]) == ("get_weather", {"city": "Oslo"})
    assert message["stop_reason"] == "tool_use"
    events = await stream_of(client, body)
    deltas = [b["delta"] for name, b in events if name == "content_block_delta" and b["index"] == 1]
    assert deltas and all(delta["type"] == "input_json_delta" for delta in deltas)
    streamed = whole_of_stream(events)
    assert [block["type"] for block in streamed["content"]] == ["text", "tool_use"]
    assert streamed["content"][1]["input"] == {"city": "Oslo"} and streamed["stop_reason"] == "tool_use"


async def test_tool_choice_tool_forces_the_named_call(client, fake):
    fake.script = scripted_events(['{"city":', '"Rome"}'])
    body = messages_body(tools=[WEATHER, TIME], tool_choice={"type": "tool", "name": "get_weather"})
    message = (await client.post("/v1/messages", json=body)).json()
    schema = json.loads(fake.last_call.params.constraint.source)
    assert schema["properties"] == WEATHER["input_schema"]["properties"]
    [call] = message["content"]
    assert (call["name"], call["input"], message["stop_reason"]) == ("get_weather", {"city": "Rome"}, "tool_use")
    deltas = [b["delta"]["partial_json"] for name, b in await stream_of(client, body) if name == "content_block_delta"]
    assert deltas == ['{"city":', '"Rome"}']


@pytest.mark.parametrize("disable_parallel", [False, True])
async def test_tool_choice_any_requires_a_call(client, fake, disable_parallel):
    fake.script = scripted_events(['[{"name":"get_time","arguments":{}}]'])
    body = messages_body(tools=[WEATHER, TIME],
                         tool_choice={"type": "any", "disable_parallel_tool_use": disable_parallel})
    message = (await client.post("/v1/messages", json=body)).json()
    schema = json.loads(fake.last_call.params.constraint.source)
    assert schema["type"] == "array" and ("maxItems" in schema) == disable_parallel
    assert [(b["name"], b["input"]) for b in message["content"]] == [("get_time", {})]
    assert message["stop_reason"] == "tool_use"


async def test_tool_choice_none_hides_the_tools(client, fake):
    fake.script = scripted_events(CALL_TEXT)
    message = (await client.post("/v1/messages", json=messages_body(tools=[WEATHER],
                                                                    tool_choice={"type": "none"}))).json()
    assert fake.encoded_tools[-1] is None and fake.last_call.params.constraint is None
    assert [block["type"] for block in message["content"]] == ["text"] and message["stop_reason"] == "end_turn"


# ---- thinking -------------------------------------------------------------------------------------


async def test_reasoning_comes_back_as_a_thinking_block(client, fake):
    fake.info = replace(fake.info, reasoning_markers=REASONING)
    fake.script = scripted_events(["<think>", "2+2 is", " 4.</think>", "It is 4."])
    body = messages_body(max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024})
    message = (await client.post("/v1/messages", json=body)).json()
    assert message["content"] == [{"type": "thinking", "thinking": "2+2 is 4.", "signature": ""},
                                  {"type": "text", "text": "It is 4."}]
    events = await stream_of(client, body)
    assert [(name, b.get("delta", {}).get("type")) for name, b in events[1:-2]] == [
        ("content_block_start", None), ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"), ("content_block_delta", "signature_delta"),
        ("content_block_stop", None), ("content_block_start", None), ("content_block_delta", "text_delta"),
        ("content_block_stop", None)]
    assert {**whole_of_stream(events), "id": message["id"]} == message


# ---- count_tokens ---------------------------------------------------------------------------------


async def test_count_tokens_is_the_prompt_a_message_request_would_have(client, fake):
    body = messages_body(system="Be brief.", tools=[WEATHER])
    counted = await client.post("/v1/messages/count_tokens", json={k: v for k, v in body.items() if k != "max_tokens"})
    assert counted.status_code == 200 and fake.calls == []
    assert (await client.post("/v1/messages", json=body)).status_code == 200
    assert counted.json() == {"input_tokens": len(fake.last_call.prompt_ids)}
    assert fake.encoded_chats[0] == fake.encoded_chats[1] and fake.encoded_tools[0] == fake.encoded_tools[1]


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "named"), [
    ({"max_tokens": None}, "max_tokens"),
    ({"temperature": 1.5}, "temperature"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages.0.content.0"),
    ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, "nope"),
    ({"mcp_servers": [{"url": "https://example.com"}]}, "mcp_servers"),
    ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "budget_tokens"),
])
async def test_bad_bodies_are_400_naming_the_field(client, fake, overrides, named):
    body = {k: v for k, v in messages_body(**overrides).items() if v is not None}
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 400, response.text
    assert named in assert_anthropic_error(response.json(), "invalid_request_error")
    assert fake.calls == []


async def test_an_engine_refusal_names_the_anthropic_field(client, fake):
    fake.generate_error = InvalidRequest("the prompt is too long", param="prompt")
    response = await client.post("/v1/messages", json=messages_body())
    assert response.status_code == 400
    assert assert_anthropic_error(response.json(), "invalid_request_error") == "messages: the prompt is too long"


async def test_an_unknown_model_is_not_found(client, fake):
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = await client.post(path, json=messages_body(model="nope"))
        assert response.status_code == 404
        assert_anthropic_error(response.json(), "not_found_error")


async def test_overload_is_429_with_retry_after(client, fake):
    fake.generate_error = Overloaded("too many requests in flight; retry shortly", retry_after_s=3)
    response = await client.post("/v1/messages", json=messages_body())
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert_anthropic_error(response.json(), "rate_limit_error")


async def test_a_failure_after_the_stream_began_is_an_error_event(client, fake):
    fake.script = [*scripted_events(["Hi"], finish_reason=None), RuntimeError("boom")]
    events = await stream_of(client, messages_body())
    assert [name for name, _ in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "internal server error"}}


async def test_middleware_refusals_answer_in_anthropics_shape(fake):
    async with client_for(fake, api_keys="sk-a", max_body_bytes=2048) as client:
        missing = await client.post("/v1/messages", json=messages_body())
        too_large = await client.post("/v1/messages", headers={"x-api-key": "sk-a"},
                                      json=messages_body(system="x" * 4096))
        openai_path = await client.post("/v1/chat/completions", json={})
    assert missing.status_code == 401
    assert_anthropic_error(missing.json(), "authentication_error")
    assert too_large.status_code == 413
    assert_anthropic_error(too_large.json(), "request_too_large")
    assert set(openai_path.json()) == {"error"}  # the other APIs keep OpenAI's shape


async def test_x_api_key_and_anthropic_headers_are_accepted(fake):
    headers = {"x-api-key": "sk-a", "anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-04-04"}
    async with client_for(fake, api_keys="sk-a") as client:
        answered = await client.post("/v1/messages", headers=headers, json=messages_body())
        wrong = await client.post("/v1/messages", headers={**headers, "x-api-key": "sk-b"}, json=messages_body())
    assert answered.status_code == 200, answered.text
    assert wrong.status_code == 401


async def test_draining_refuses_in_anthropics_shape_and_messages_are_counted(fake):
    async with serve_app(fake) as (app, client):
        assert (await client.post("/v1/messages", json=messages_body())).status_code == 200
        app.state.drain.closed = True
        refused = await client.post("/v1/messages", json=messages_body())
        metrics = samples((await client.get("/metrics")).text)
    assert refused.status_code == 503 and refused.headers["connection"] == "close"
    assert_anthropic_error(refused.json(), "overloaded_error")
    assert requests_total(metrics, "messages", "stop") == 1
    assert requests_total(metrics, "messages", "rejected_draining", "unknown") == 1
