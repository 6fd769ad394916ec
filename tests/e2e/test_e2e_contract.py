"""The rest of the OpenAI contract with the real default model and the official client: structured
outputs (chat.completions.parse with a Pydantic model), forced tool calls whose arguments validate,
logprobs and n. Assertions hold in either dtype: they check shapes, validity and self-consistency,
never a particular greedy text."""

from __future__ import annotations

import json
import math

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.e2e


class City(BaseModel):
    # Bounded, so no valid answer can outrun max_tokens (a greedy small model may run a field on).
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int = Field(ge=0, le=100_000_000)
    capital: bool


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_parse_with_a_pydantic_model_returns_a_valid_instance(openai_client, server, temperature):
    result = openai_client.chat.completions.parse(
        model=server.model, response_format=City, temperature=temperature, seed=3, max_tokens=300,
        messages=[{"role": "user", "content": "Describe Paris as a JSON object."}])
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)


def test_json_object_mode_returns_a_json_object_streamed_too(openai_client, server):
    stream = openai_client.chat.completions.create(
        model=server.model, response_format={"type": "json_object"}, temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": "Give me a JSON object about cats."}], stream=True,
        frequency_penalty=0.5)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if chunks[-1].choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")


def test_a_schema_the_grammar_library_refuses_is_a_400_naming_response_format(openai_client, server):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "not": {"required": ["a"]}}
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(
            model=server.model, messages=ASK_WEATHER, max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert caught.value.body["param"] == "response_format" and "not" in caught.value.body["message"]


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_tool_call_has_arguments_that_validate(openai_client, server, tool_choice, stream):
    kwargs = dict(model=server.model, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=tool_choice,
                  temperature=0, max_tokens=160, parallel_tool_calls=False)
    if stream:
        with openai_client.chat.completions.stream(**kwargs) as events:
            for _ in events:
                pass
            completion = events.get_final_completion()
    else:
        completion = openai_client.chat.completions.create(**kwargs)
    choice = completion.choices[0]
    assert choice.finish_reason == ("tool_calls" if tool_choice == "required" else "stop")  # as OpenAI answers
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_a_conversation_with_a_tool_result_is_answered(openai_client, server):
    first = openai_client.chat.completions.create(
        model=server.model, messages=ASK_WEATHER, tools=[WEATHER], temperature=0, max_tokens=160,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK_WEATHER, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "sunny"}'}]
    second = openai_client.chat.completions.create(model=server.model, messages=messages, tools=[WEATHER],
                                                   temperature=0, max_tokens=40)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.choices[0].message.content or second.choices[0].message.tool_calls


def test_chat_logprobs_are_consistent(openai_client, server):
    result = openai_client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Name a colour."}], temperature=0,
        max_tokens=12, logprobs=True, top_logprobs=5)
    choice = result.choices[0]
    entries = choice.logprobs.content
    ended_by_eos = choice.finish_reason == "stop"  # no stop strings here: the end token, which has no entry
    assert len(entries) == result.usage.completion_tokens - ended_by_eos
    assert b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace").startswith(choice.message.content[:3])
    for entry in entries:
        assert len(entry.top_logprobs) == 5
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert entry.logprob == pytest.approx(values[0], abs=1e-3)  # greedy takes the top token
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-3
        assert bytes(entry.bytes).decode("utf-8", "backslashreplace") == entry.token


def test_completion_echo_logprobs_cover_the_prompt(openai_client, server):
    prompt = "The capital of France is"
    result = openai_client.completions.create(model=server.model, prompt=prompt, echo=True, logprobs=2,
                                              max_tokens=4, temperature=0)
    choice = result.choices[0]
    block = choice.logprobs
    assert choice.text.startswith(prompt)
    assert len(block.tokens) == result.usage.prompt_tokens + result.usage.completion_tokens
    assert block.token_logprobs[0] is None and all(v <= 0 for v in block.token_logprobs[1:])
    assert block.text_offset == sorted(block.text_offset) and block.text_offset[0] == 0
    assert "".join(block.tokens[:result.usage.prompt_tokens]) == prompt  # ASCII: token strings are its text


def test_n_seeded_choices_are_reproducible_and_differ(openai_client, server):
    kwargs = dict(model=server.model, messages=[{"role": "user", "content": "Write a short poem."}],
                  temperature=1.0, seed=42, max_tokens=16, n=3, logprobs=True)
    first = openai_client.chat.completions.create(**kwargs)
    again = openai_client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1
    assert first.usage.completion_tokens == sum(len(c.logprobs.content) + (c.finish_reason == "stop")
                                                for c in first.choices)


def test_n_streamed_choices_each_finish(openai_client, server):
    chunks = list(openai_client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Say hello."}], temperature=0.8, seed=1,
        max_tokens=10, n=2, stream=True))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]


@pytest.mark.parametrize("stream", [False, True])
def test_responses_parse_with_a_pydantic_model(openai_client, server, stream):
    kwargs = dict(model=server.model, input="Describe Paris as a JSON object.", text_format=City,
                  temperature=0, max_output_tokens=300)
    if stream:
        with openai_client.responses.stream(**kwargs) as events:
            for _ in events:
                pass
            response = events.get_final_response()
    else:
        response = openai_client.responses.parse(**kwargs)
    assert response.status == "completed" and isinstance(response.output_parsed, City)
