"""Tools, tool_choice and reasoning on the wire, over a scripted engine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from app.engine.types import Constraint
from tests.api.fake_engine import scripted_events
from tests.api.helpers import chat_body, sse_json

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
CALL_TEXT = ['Sure. <tool', '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}\n</tool_call>']


def _stream_calls(chunks: list[dict]) -> tuple[str, dict[int, dict], list]:
    content, calls, finishes = "", {}, []
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for piece in delta.get("tool_calls", []):
                call = calls.setdefault(piece["index"], {"id": None, "name": None, "arguments": ""})
                if "id" in piece:
                    call["id"], call["name"] = piece["id"], piece["function"]["name"]
                call["arguments"] += piece["function"]["arguments"]
            if choice["finish_reason"]:
                finishes.append(choice["finish_reason"])
    return content, calls, finishes


async def test_auto_tools_reach_the_template_and_a_call_is_parsed(client, fake):
    fake.script = scripted_events(CALL_TEXT)
    body = chat_body(tools=[WEATHER, TIME])
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    assert fake.encoded_tools[-1] == [WEATHER, {"type": "function", "function": {"name": "get_time"}}]
    assert fake.last_call.params.constraint is None  # auto: the model decides, nothing is forced
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Sure. "
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}
    content, calls, finishes = _stream_calls(sse_json((await client.post(
        "/v1/chat/completions", json={**body, "stream": True})).text))
    assert content == "Sure. " and "<tool" not in content and finishes == ["tool_calls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("get_weather", {"city": "Oslo"})]


async def test_tool_choice_none_hides_the_tools(client, fake):
    fake.script = scripted_events(CALL_TEXT)
    whole = (await client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER], tool_choice="none"))).json()
    assert fake.encoded_tools[-1] is None and "tool_calls" not in whole["choices"][0]["message"]
    assert whole["choices"][0]["finish_reason"] == "stop"


async def test_a_named_tool_choice_forces_its_arguments_schema_and_streams_them(client, fake):
    fake.script = scripted_events(['{"city":', '"Rome"}'])
    body = chat_body(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    schema = json.loads(fake.last_call.params.constraint.source)
    assert fake.last_call.params.constraint.kind == "json_schema"
    assert schema["properties"] == WEATHER["function"]["parameters"]["properties"] and schema["additionalProperties"] is False
    message = whole["choices"][0]["message"]
    assert message["content"] is None and whole["choices"][0]["finish_reason"] == "stop"  # OpenAI's answer here
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    chunks = sse_json((await client.post("/v1/chat/completions", json={**body, "stream": True})).text)
    pieces = [p for c in chunks for ch in c["choices"] for p in ch["delta"].get("tool_calls", [])]
    assert pieces[0]["function"] == {"name": "get_weather", "arguments": ""} and "id" in pieces[0]
    assert [p["function"]["arguments"] for p in pieces[1:]] == ['{"city":', '"Rome"}']


@pytest.mark.parametrize("parallel", [True, False])
async def test_required_forces_an_array_of_calls_to_offered_tools(client, fake, parallel):
    fake.script = scripted_events(['[{"name":"get_time","arguments":{}}]'])
    body = chat_body(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=parallel)
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    schema = json.loads(fake.last_call.params.constraint.source)
    assert schema["type"] == "array" and schema["minItems"] == 1 and ("maxItems" in schema) is not parallel
    assert {b["properties"]["name"]["const"] for b in schema["items"]["anyOf"]} == {"get_weather", "get_time"}
    assert whole["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}
    assert whole["choices"][0]["finish_reason"] == "tool_calls"


async def test_earlier_calls_and_tool_results_reach_the_template(client, fake):
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
    ]
    response = await client.post("/v1/chat/completions", json=chat_body(messages=messages, tools=[WEATHER]))
    assert response.status_code == 200, response.text
    sent = fake.encoded_chats[-1]
    assert sent[1]["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert sent[2] == {"role": "tool", "content": "12 C, rain", "tool_call_id": "call_1"}


@pytest.mark.parametrize(("fields", "param"), [
    ({"tool_choice": "required"}, None),  # nothing to call
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, None),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, None),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
])
async def test_inconsistent_tool_requests_are_400(client, fake, fields, param):
    response = await client.post("/v1/chat/completions", json=chat_body(**fields))
    assert response.status_code == 400 and response.json()["error"]["param"] == param and fake.calls == []


REASONING = ("<think>", "</think>")


@pytest.fixture
def thinking(client, fake):
    """A fake model whose tokenizer has reasoning markers (set once the app has started it)."""
    fake.info = replace(fake.info, reasoning_markers=REASONING)
    return fake


@pytest.mark.parametrize("opened_by_prompt", [False, True])
async def test_reasoning_is_sent_apart_from_the_answer(client, thinking, opened_by_prompt):
    thinking.prompt_opens_reasoning = opened_by_prompt
    texts = ["<th", "ink>", "2+2 is", " 4.</think>", "It is 4."]
    thinking.script = scripted_events(texts[2:] if opened_by_prompt else texts)
    whole = (await client.post("/v1/chat/completions", json=chat_body())).json()
    message = whole["choices"][0]["message"]
    assert message["content"] == "It is 4."
    assert message["reasoning_content"] == message["reasoning"] == "2+2 is 4."
    chunks = sse_json((await client.post("/v1/chat/completions", json=chat_body(stream=True))).text)
    deltas = [ch["delta"] for c in chunks for ch in c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "2+2 is 4."
    assert "".join(d.get("reasoning", "") for d in deltas) == "2+2 is 4."
    assert "".join(d.get("content", "") for d in deltas) == "It is 4."


async def test_earlier_reasoning_is_accepted_under_either_name(client, thinking):
    for name in ("reasoning_content", "reasoning"):
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello", name: "greet back"},
                    {"role": "user", "content": "bye"}]
        assert (await client.post("/v1/chat/completions", json=chat_body(messages=messages))).status_code == 200
        assert thinking.encoded_chats[-1][1]["reasoning_content"] == "greet back"


async def test_a_model_without_markers_leaves_think_tags_in_the_answer(client, fake):
    fake.script = scripted_events(["<think>x</think>y"])
    whole = (await client.post("/v1/chat/completions", json=chat_body())).json()
    assert whole["choices"][0]["message"]["content"] == "<think>x</think>y"
    assert "reasoning_content" not in whole["choices"][0]["message"]


async def test_tool_constraints_are_the_engines(client, fake):
    await client.post("/v1/chat/completions", json=chat_body(tools=[TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}))
    assert fake.last_call.params.constraint == Constraint(
        "json_schema", json.dumps({"type": "object", "properties": {}, "additionalProperties": False}))


@pytest.mark.parametrize("fields", [{"response_format": {"type": "json_object"}},
                                    {"tools": [TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}])
async def test_a_grammar_shaped_answer_is_never_taken_for_reasoning(client, thinking, fields):
    """A template that opens <think> must not swallow constrained output that never closes it."""
    thinking.prompt_opens_reasoning = True
    thinking.script = scripted_events(['{"x":', '1}'])
    message = (await client.post("/v1/chat/completions", json=chat_body(**fields))).json()["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert message["content"] == '{"x":1}' or message["tool_calls"][0]["function"]["arguments"] == '{"x":1}'


async def test_stop_strings_cannot_cut_a_forced_call(client, fake):
    body = chat_body(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}, stop=["}"])
    await client.post("/v1/chat/completions", json=body)
    assert fake.last_call.params.stop == ()
    await client.post("/v1/chat/completions", json=chat_body(stop=["}"], response_format={"type": "json_object"}))
    assert fake.last_call.params.stop == ("}",)  # asked for with a response_format: honoured


async def test_tokenize_errors_name_messages(client, fake):
    from app.engine.errors import InvalidRequest

    async def refuse(*args, **kwargs):
        raise InvalidRequest("the model's chat template refused these messages", param="prompt")
    fake.encode_chat = refuse
    response = await client.post("/tokenize", json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


@pytest.fixture
def mistral(client, fake):
    """A fake model whose chat template is Mistral Small 3.2's (set once the app has started it)."""
    from app.chat_formats.registry import format_for
    template = (Path(__file__).resolve().parents[1] / "data" / "chat_templates" /
                "Mistral-Small-3.2-24B-Instruct-2506.jinja").read_text()
    fake.info = replace(fake.info, chat_format=format_for(template), markup_token_ids=(("[TOOL_CALLS]", 9), ("[ARGS]", 32)))
    return fake


async def test_a_family_format_reads_its_calls_and_keeps_its_special_tokens(client, mistral):
    mistral.script = scripted_events(["Checking. [TOOL", "_CALLS]get_wea", 'ther[ARGS]{"city":', ' "Oslo"}'])
    body = chat_body(tools=[WEATHER, TIME])
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    assert mistral.last_call.params.skip_special_tokens is False and mistral.last_call.params.constraint is None
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Checking. "
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    content, calls, _ = _stream_calls(sse_json((await client.post(
        "/v1/chat/completions", json={**body, "stream": True})).text))
    assert content == "Checking. " and [(c["name"], c["arguments"]) for c in calls.values()] == [
        ("get_weather", '{"city": "Oslo"}')]


async def test_a_family_format_forces_a_call_in_its_own_markup(client, mistral):
    mistral.script = scripted_events(['[TOOL_CALLS]get_weather[ARGS]{"city":', '"Rome"}'])
    body = chat_body(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    constraint = mistral.last_call.params.constraint
    assert constraint.kind == "lark" and "<[9]>" in constraint.source and '"get_weather"' in constraint.source
    assert "get_time" not in constraint.source
    assert whole["choices"][0]["finish_reason"] == "stop"  # forced by name, as OpenAI answers
    assert whole["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                           "arguments": '{"city":"Rome"}'}
