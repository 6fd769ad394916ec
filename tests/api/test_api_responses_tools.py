"""Function tools on POST /v1/responses over a scripted engine, checked with the official SDK in process."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import ResponseFunctionToolCall

from tests.api.fake_engine import MODEL_NAME, scripted_events
from tests.api.helpers import assert_error_shape

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather now",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"type": "function", "name": "get_time"}
CALL_TEXT = ['Sure. <tool', '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}\n</tool_call>']


async def test_an_auto_call_is_a_function_call_item_after_the_message(sdk, fake):
    fake.script = scripted_events(CALL_TEXT)
    response = await sdk.responses.create(model=MODEL_NAME, input="Weather in Oslo?", tools=[WEATHER, TIME])
    assert fake.encoded_tools[-1] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}},
                                      {"type": "function", "function": {"name": "get_time"}}]
    assert fake.last_call.params.constraint is None  # auto: the model decides
    message, call = response.output
    assert message.type == "message" and response.output_text == "Sure. "
    assert isinstance(call, ResponseFunctionToolCall) and call.status == "completed"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.call_id.startswith("call_") and call.id == "fc_" + call.call_id.removeprefix("call_")
    assert response.status == "completed" and response.tool_choice == "auto" and response.parallel_tool_calls is True
    assert [tool.name for tool in response.tools] == ["get_weather", "get_time"]


async def test_a_named_choice_forces_the_functions_schema(sdk, fake):
    fake.script = scripted_events(['{"city":', '"Rome"}'])
    response = await sdk.responses.create(model=MODEL_NAME, input="Rome?", tools=[WEATHER, TIME],
                                          tool_choice={"type": "function", "name": "get_weather"})
    constraint = fake.last_call.params.constraint
    assert constraint.kind == "json_schema"
    assert json.loads(constraint.source)["properties"] == WEATHER["parameters"]["properties"]
    [call] = response.output
    assert call.type == "function_call" and call.arguments == '{"city":"Rome"}' and call.name == "get_weather"
    assert response.tool_choice.type == "function" and response.tool_choice.name == "get_weather"


@pytest.mark.parametrize("parallel", [True, False])
async def test_required_forces_an_array_of_calls(sdk, fake, parallel):
    fake.script = scripted_events(['[{"name":"get_time","arguments":{}}]'])
    response = await sdk.responses.create(model=MODEL_NAME, input="hi", tools=[WEATHER, TIME],
                                          tool_choice="required", parallel_tool_calls=parallel)
    schema = json.loads(fake.last_call.params.constraint.source)
    assert schema["type"] == "array" and ("maxItems" in schema) is not parallel
    assert [(item.type, item.name, item.arguments) for item in response.output] == [("function_call", "get_time", "{}")]
    assert response.parallel_tool_calls is parallel


async def test_tool_choice_none_hides_the_tools_and_parses_nothing(sdk, fake):
    fake.script = scripted_events(CALL_TEXT)
    response = await sdk.responses.create(model=MODEL_NAME, input="hi", tools=[WEATHER], tool_choice="none")
    assert fake.encoded_tools[-1] is None and fake.last_call.params.constraint is None
    assert [item.type for item in response.output] == ["message"] and "<tool_call>" in response.output_text


async def test_calls_and_their_outputs_reach_the_template(sdk, fake):
    await sdk.responses.create(model=MODEL_NAME, instructions="Be brief.", tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}',
         "id": "fc_1", "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "12 C, rain"},
        {"type": "function_call_output", "call_id": "call_2", "output": "25 C"},
    ])
    assert fake.encoded_chats[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "12 C, rain", "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "tool", "content": "25 C", "tool_call_id": "call_2", "name": "get_weather"},
    ]


async def test_a_call_joins_the_assistant_message_before_it(sdk, fake):
    await sdk.responses.create(model=MODEL_NAME, tools=[WEATHER], input=[
        {"role": "user", "content": "Oslo?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "12 C"},
    ])
    assistant = fake.encoded_chats[-1][1]
    assert assistant["content"] == "Checking." and assistant["tool_calls"][0]["id"] == "call_1"


async def test_the_streamed_call_events_are_numbered_without_gaps(sdk, fake):
    fake.script = scripted_events(CALL_TEXT)
    stream = await sdk.responses.create(model=MODEL_NAME, input="hi", tools=[WEATHER], stream=True)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    added = events[8]
    assert added.output_index == 1 and added.item.type == "function_call"
    assert added.item.arguments == "" and added.item.status == "in_progress"
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert all(e.item_id == added.item.id and e.output_index == 1 for e in deltas)
    assert json.loads(events[10].arguments) == {"city": "Oslo"} and events[11].item.status == "completed"
    final = events[-1].response
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output[1].call_id == added.item.call_id


async def test_a_streamed_named_call_sends_its_arguments_as_they_come(sdk, fake):
    fake.script = scripted_events(['{"city":', '"Rome"}'])
    async with sdk.responses.stream(model=MODEL_NAME, input="hi", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"}) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
        final = await stream.get_final_response()
    assert deltas == ['{"city":', '"Rome"}']
    [call] = final.output
    assert isinstance(call, ResponseFunctionToolCall) and call.arguments == '{"city":"Rome"}'


@pytest.mark.parametrize(("tools", "named"), [
    ([{"type": "web_search"}], "web_search"),
    ([WEATHER, {"type": "file_search", "vector_store_ids": ["v"]}, {"type": "mcp", "server_label": "x"}],
     "file_search, mcp"),
    ([{"type": "code_interpreter", "container": {"type": "auto"}}], "code_interpreter"),
])
async def test_hosted_tools_are_refused_by_name(client, tools, named):
    response = await client.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi", "tools": tools})
    assert response.status_code == 400
    assert named in assert_error_shape(response.json())["message"]


@pytest.mark.parametrize("fields", [
    {"tool_choice": "required"},  # nothing to call
    {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
    {"tools": [WEATHER], "tool_choice": {"type": "web_search"}},
    {"tools": [{"type": "function", "name": "bad name!"}]},
    {"tools": [WEATHER], "tool_choice": "required", "text": {"format": {"type": "json_object"}}},
    {"input": [{"type": "function_call_output", "output": "x"}]},  # no call_id
    {"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]},
])
async def test_inconsistent_tool_fields_are_refused(client, fields):
    response = await client.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi", **fields})
    assert response.status_code == 400
    assert_error_shape(response.json())


async def test_a_result_that_is_not_text_is_refused(client):
    body = ('{"model": "%s", "input": [{"type": "function_call_output", "call_id": "call_1", "output": "\\ud800"}]}'
            % MODEL_NAME)
    response = await client.post("/v1/responses", content=body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "surrogate" in assert_error_shape(response.json())["message"]
