"""The official `anthropic` client, unmodified, against the real server's /v1/messages."""

from __future__ import annotations

import anthropic
import pytest

from tests.e2e.default_model import FRANCE

pytestmark = pytest.mark.e2e

WEATHER = {"name": "get_weather", "description": "The current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# Greedy decoding; this SDK's `create` has no `temperature` parameter any more, the API still takes it.
GREEDY = {"temperature": 0}
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.fixture
def client(server):
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def test_create(client, server):
    message = client.messages.create(model=server.model, max_tokens=24, extra_body=GREEDY, messages=FRANCE,
                                     system="Answer in one short sentence.")
    assert message.type == "message" and message.role == "assistant" and message.model == server.model
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"] and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 24


def test_stream_gives_the_text_and_the_final_message(client, server):
    whole = client.messages.create(model=server.model, max_tokens=24, extra_body=GREEDY, messages=FRANCE)
    with client.messages.stream(model=server.model, max_tokens=24, extra_body=GREEDY, messages=FRANCE) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_is_honoured(client, server, stream):
    kwargs = dict(model=server.model, max_tokens=5, extra_body=GREEDY, messages=STORY)
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.usage.output_tokens <= 5
    if message.stop_reason == "max_tokens":
        assert message.usage.output_tokens == 5


def test_count_tokens_matches_the_usage_of_the_same_request(client, server):
    kwargs = dict(model=server.model, messages=FRANCE, system="Be brief.", tools=[WEATHER])
    counted = client.messages.count_tokens(**kwargs)
    message = client.messages.create(max_tokens=4, extra_body=GREEDY, **kwargs)
    assert counted.input_tokens > 0
    assert counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens


def test_a_forced_tool_call_and_its_result(client, server):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    called = client.messages.create(model=server.model, max_tokens=64, extra_body=GREEDY, messages=[question],
                                    tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"})
    [call] = [block for block in called.content if block.type == "tool_use"]
    assert called.stop_reason == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    assert isinstance(call.input, dict) and isinstance(call.input["city"], str)
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 degrees Celsius."}
    answer = client.messages.create(model=server.model, max_tokens=32, extra_body=GREEDY, tools=[WEATHER],
                                    messages=[question, {"role": "assistant", "content": called.content},
                                              {"role": "user", "content": [result]}])
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens > called.usage.input_tokens


def test_a_streamed_forced_call_assembles_its_input(client, server):
    with client.messages.stream(model=server.model, max_tokens=64, extra_body=GREEDY, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        final = stream.get_final_message()
    [call] = final.content
    assert call.type == "tool_use" and isinstance(call.input["city"], str) and final.stop_reason == "tool_use"


def test_errors_are_the_sdks_exceptions(client, server):
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=4, messages=FRANCE)
    assert missing.value.status_code == 404 and missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=server.model, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])
    assert "image" in refused.value.body["error"]["message"]
