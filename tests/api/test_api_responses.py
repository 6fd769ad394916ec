"""POST /v1/responses (stateless), non-streamed and streamed, checked with the official SDK in process
(function tools: test_api_responses_tools.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.engine.errors import EngineError
from app.engine.types import FinishReason
from tests.api.fake_engine import MODEL_NAME, scripted_events
from tests.api.helpers import assert_error_shape, named_sse_json

EXPECTED_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
                   "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                   "response.output_text.done", "response.content_part.done", "response.output_item.done"]


async def test_a_response_with_instructions_and_input_items(sdk, fake):
    fake.script = [replace(e, num_cached_tokens=2) for e in scripted_events(["Par", "is"], FinishReason.STOP, 9)]
    response = await sdk.responses.create(model=MODEL_NAME, instructions="Be brief.", max_output_tokens=20,
                                          input=[{"role": "user", "content": "Capital of France?"}],
                                          metadata={"ticket": "7"})
    assert response.status == "completed" and response.output_text == "Paris"
    assert response.id.startswith("resp_") and response.model == MODEL_NAME
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.input_tokens == 9 and response.usage.output_tokens == 2
    assert response.usage.input_tokens_details.cached_tokens == 2
    assert response.max_output_tokens == 20 and response.metadata == {"ticket": "7"}
    assert fake.encoded_chats[-1] == [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Capital of France?"}]
    assert fake.last_call.params.max_tokens == 20


async def test_max_output_tokens_makes_it_incomplete(sdk, fake):
    fake.script = scripted_events(["a", "b"], FinishReason.LENGTH)
    response = await sdk.responses.create(model=MODEL_NAME, input="hi", max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "ab"


async def test_the_stream_has_the_sdks_event_sequence(sdk, fake):
    fake.script = scripted_events(["Hel", "lo"], FinishReason.STOP)
    events = [event async for event in await sdk.responses.create(model=MODEL_NAME, input="hi", stream=True)]
    assert [e.type for e in events] == [*EXPECTED_EVENTS, "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello"
    assert events[-1].response.output_text == "Hello" and events[-1].response.usage.output_tokens == 2
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1


async def test_the_sdk_stream_helper_gives_the_final_response(sdk, fake):
    fake.script = scripted_events(["Hel", "lo"], FinishReason.STOP)
    async with sdk.responses.stream(model=MODEL_NAME, input="hi") as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert deltas == ["Hel", "lo"] and final.output_text == "Hello" and final.status == "completed"


async def test_a_stream_cut_by_max_output_tokens_ends_incomplete(sdk, fake):
    fake.script = scripted_events(["a", "b"], FinishReason.LENGTH)
    events = [event async for event in await sdk.responses.create(model=MODEL_NAME, input="hi", stream=True)]
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"


async def test_a_failure_after_the_stream_began_is_an_error_then_response_failed(client, fake):
    fake.script = [*scripted_events(["a"], None), EngineError("boom")]
    response = await client.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi", "stream": True})
    assert response.status_code == 200
    bodies = [body for _, body in named_sse_json(response.text)]
    assert [b["type"] for b in bodies][-2:] == ["error", "response.failed"]
    assert bodies[-1]["response"]["status"] == "failed" and bodies[-1]["response"]["error"]["message"]


@pytest.mark.parametrize("body", [
    {"model": MODEL_NAME, "input": "hi", "previous_response_id": "resp_1"},
    {"model": MODEL_NAME, "input": "hi", "tools": [{"type": "web_search"}]},
    {"model": MODEL_NAME, "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
    {"model": MODEL_NAME, "input": "hi", "text": {"format": {"type": "grammar"}}},
    {"model": MODEL_NAME, "input": ""},
    {"model": MODEL_NAME, "input": "hi", "max_output_tokens": 0},
    {"model": MODEL_NAME},
    # Reasoning items alone make no turn to answer (the schema fuzz found this a 500).
    {"model": MODEL_NAME, "input": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "a"}]}]},
])
async def test_what_it_refuses(client, body):
    response = await client.post("/v1/responses", json=body)
    assert response.status_code == 400
    assert_error_shape(response.json())


async def test_plain_text_format_is_accepted(client):
    body = {"model": MODEL_NAME, "input": "hi", "text": {"format": {"type": "text"}}}
    assert (await client.post("/v1/responses", json=body)).status_code == 200


async def test_unknown_model_is_404(client):
    response = await client.post("/v1/responses", json={"model": "gpt-9", "input": "hi"})
    assert response.status_code == 404
