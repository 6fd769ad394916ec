"""Function tools on /v1/responses through the official `openai` client, unmodified, against the real server.

A call forced by name is grammar-constrained, so the tiny default model makes it whatever its dtype; its
arguments are only checked against the schema, never for greedy text.
"""

from __future__ import annotations

import json

import pytest
from openai.types.responses import ResponseFunctionToolCall

pytestmark = pytest.mark.e2e

WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
FORCED = {"type": "function", "name": "get_weather"}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


def _the_call(output: list) -> ResponseFunctionToolCall:
    [call] = output
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert isinstance(json.loads(call.arguments)["city"], str)  # the schema's one required key, and no other
    assert set(json.loads(call.arguments)) == {"city"}
    return call


def test_a_forced_call_and_its_result(openai_client, server):
    called = openai_client.responses.create(model=server.model, input=[QUESTION], tools=[WEATHER],
                                            tool_choice=FORCED, temperature=0, max_output_tokens=64)
    call = _the_call(called.output)
    assert called.status == "completed" and called.tool_choice.name == "get_weather"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 degrees Celsius."}
    # The client sends its previous output back as input, as OpenAI's guide shows; "none" makes the answer text.
    answer = openai_client.responses.create(model=server.model, input=[QUESTION, *called.output, result],
                                            tools=[WEATHER], tool_choice="none", temperature=0,
                                            max_output_tokens=24)
    assert [item.type for item in answer.output] == ["message"] and answer.output_text
    assert answer.status in ("completed", "incomplete")
    alone = openai_client.responses.create(model=server.model, input=[QUESTION], max_output_tokens=1)
    assert answer.usage.input_tokens > alone.usage.input_tokens  # the call and its result were in the prompt


def test_a_streamed_forced_call(openai_client, server):
    kwargs = dict(model=server.model, input=[QUESTION], tools=[WEATHER], tool_choice=FORCED, temperature=0,
                  max_output_tokens=64)
    with openai_client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    call = _the_call(final.output)
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == call.arguments
    assert [e.sequence_number for e in events] == list(range(len(events)))
    raw = list(openai_client.responses.create(stream=True, **kwargs))
    assert raw[-1].type == "response.completed" and _the_call(raw[-1].response.output).arguments == call.arguments
