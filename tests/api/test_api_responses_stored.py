"""Stored responses, through the official SDK in process, on each store (SQLite, and Redis as replicas
share it): retrieve, delete, input_items, previous_response_id chains, background runs with polling and
cancel, and stream resumption by sequence_number."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.engine.types import FinishReason
from app.main import create_app
from tests.api.fake_engine import MODEL_NAME, FakeEngine, scripted_events
from tests.api.helpers import assert_error_shape, named_sse_json
from tests.api.test_api_responses_tools import CALL_TEXT, WEATHER
from tests.api.test_api_tools import REASONING

KEYS = "sk-ada name=ada, sk-bob name=bob"
LONG = [f"w{i} " for i in range(40)]


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return f"sqlite:///{tmp_path}/store.sqlite3"


@asynccontextmanager
async def app_for(fake: FakeEngine, store_url: str, **settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(_env_file=None, store_url=store_url, **settings), engine=fake)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
            yield client


def sdk_for(client: httpx.AsyncClient, key: str = "unused") -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=client._transport, base_url="http://testserver/v1", timeout=10)
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


@pytest.fixture
async def http(fake, store_url) -> AsyncIterator[httpx.AsyncClient]:
    async with app_for(fake, store_url) as client:
        yield client


@pytest.fixture
async def sdk(http) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_for(http) as client:
        yield client


async def poll(sdk: openai.AsyncOpenAI, response_id: str, until: tuple[str, ...], timeout_s: float = 5.0):
    for _ in range(int(timeout_s / 0.02)):
        response = await sdk.responses.retrieve(response_id)
        if response.status in until:
            return response
        await asyncio.sleep(0.02)
    raise AssertionError(f"{response_id} stayed {response.status}")


# ---- store, retrieve, delete, input_items ------------------------------------------------------------


async def test_a_response_is_stored_by_default_and_retrieved_as_returned(sdk, fake):
    fake.script = scripted_events(["Hel", "lo"])
    created = await sdk.responses.create(model=MODEL_NAME, input="hi", metadata={"k": "v"})
    assert created.store is True and created.status == "completed" and created.previous_response_id is None
    retrieved = await sdk.responses.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump()


async def test_delete_answers_the_deletion_object_then_the_response_is_gone(sdk, http, fake):
    created = await sdk.responses.create(model=MODEL_NAME, input="hi")
    deleted = await http.delete(f"/v1/responses/{created.id}")
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.responses.retrieve(created.id)
    assert_error_shape(caught.value.body if "error" in caught.value.body else {"error": caught.value.body})
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.delete(created.id)


async def test_store_false_keeps_nothing(sdk, fake):
    created = await sdk.responses.create(model=MODEL_NAME, input="hi", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(created.id)
    streamed = [e async for e in await sdk.responses.create(model=MODEL_NAME, input="hi", store=False, stream=True)]
    assert streamed[-1].response.store is False
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(streamed[-1].response.id)


async def test_input_items_are_listed_with_ids_in_either_order_and_paged(sdk, fake):
    created = await sdk.responses.create(model=MODEL_NAME, tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "12 C"},
        {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]}])
    listed = await sdk.responses.input_items.list(created.id)
    assert [item.type for item in listed.data] == ["message", "function_call_output", "function_call", "message"]
    assert listed.data[0].content[0].text == "And tomorrow?" and listed.has_more is False
    assert [i.id[:3] for i in listed.data] == ["msg", "fco", "fc_", "msg"]
    assert listed.first_id == listed.data[0].id and listed.last_id == listed.data[-1].id
    ascending = await sdk.responses.input_items.list(created.id, order="asc", limit=2)
    assert [i.type for i in ascending.data] == ["message", "function_call"] and ascending.has_more is True
    rest = await sdk.responses.input_items.list(created.id, order="asc", after=ascending.last_id)
    assert [i.type for i in rest.data] == ["function_call_output", "message"] and rest.has_more is False
    assert [i.id for i in ascending.data + rest.data] == [i.id for i in reversed(listed.data)]


async def test_unknown_ids_are_404_in_openais_shape(http):
    for method, path in [("GET", "/v1/responses/resp_nope"), ("DELETE", "/v1/responses/resp_nope"),
                         ("POST", "/v1/responses/resp_nope/cancel"), ("GET", "/v1/responses/resp_nope/input_items")]:
        answer = await http.request(method, path)
        assert answer.status_code == 404, path
        assert assert_error_shape(answer.json())["type"] == "invalid_request_error"


async def test_another_api_keys_responses_are_invisible(fake, store_url):
    async with app_for(fake, store_url, api_keys=KEYS) as client, sdk_for(client, "sk-ada") as ada, \
            sdk_for(client, "sk-bob") as bob:
        mine = await ada.responses.create(model=MODEL_NAME, input="hi")
        fake.event_delay_s = 0.05
        running = await ada.responses.create(model=MODEL_NAME, input="hi", background=True)
        for call in (bob.responses.retrieve(mine.id), bob.responses.delete(mine.id),
                     bob.responses.input_items.list(mine.id), bob.responses.cancel(running.id),
                     bob.responses.create(model=MODEL_NAME, input="x", previous_response_id=mine.id)):
            with pytest.raises((openai.NotFoundError, openai.BadRequestError)):
                await call
        assert (await ada.responses.retrieve(mine.id)).id == mine.id
        assert (await poll(ada, running.id, ("completed",))).output_text == "Hello, world!"


# ---- previous_response_id ---------------------------------------------------------------------------


async def test_a_chained_turn_follows_the_earlier_input_and_output_without_its_instructions(sdk, fake):
    fake.script = scripted_events(["Hello", " Ada"])
    first = await sdk.responses.create(model=MODEL_NAME, instructions="Be brief.", input="My name is Ada.")
    fake.script = [replace(e, num_cached_tokens=7) for e in scripted_events(["Ada", "."])]
    second = await sdk.responses.create(model=MODEL_NAME, input="What is my name?", previous_response_id=first.id)
    assert fake.encoded_chats[-1] == [{"role": "user", "content": "My name is Ada."},
                                      {"role": "assistant", "content": "Hello Ada"},
                                      {"role": "user", "content": "What is my name?"}]
    assert second.previous_response_id == first.id and second.instructions is None
    assert second.usage.input_tokens_details.cached_tokens == 7
    third = await sdk.responses.create(model=MODEL_NAME, input="Again?", previous_response_id=second.id)
    assert [m["content"] for m in fake.encoded_chats[-1]] == ["My name is Ada.", "Hello Ada", "What is my name?",
                                                              "Ada.", "Again?"]
    assert third.status == "completed"
    # The chained prompt starts with the earlier one: the prefix cache can serve it.
    assert fake.calls[-1].prompt_ids[:len(fake.calls[-2].prompt_ids) - len("<assistant>")] == \
        fake.calls[-2].prompt_ids[:-len("<assistant>")]


async def test_a_function_call_and_its_output_round_trip_through_a_chain(sdk, fake):
    fake.script = scripted_events(CALL_TEXT)
    first = await sdk.responses.create(model=MODEL_NAME, input="Weather in Oslo?", tools=[WEATHER])
    call = first.output[-1]
    assert call.type == "function_call"
    fake.script = scripted_events(["12 C", " in Oslo."])
    second = await sdk.responses.create(model=MODEL_NAME, tools=[WEATHER], previous_response_id=first.id, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "12 C, rain"}])
    assert fake.encoded_chats[-1] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Sure. ", "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "12 C, rain", "tool_call_id": call.call_id, "name": "get_weather"}]
    assert second.output_text == "12 C in Oslo."


async def test_an_unknown_previous_response_is_openais_400(http, fake):
    answer = await http.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi",
                                                    "previous_response_id": "resp_unknown"})
    error = assert_error_shape(answer.json())
    assert answer.status_code == 400 and error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id" and fake.calls == []


async def test_reasoning_is_an_item_of_its_own_and_carried_to_the_next_turn(sdk, fake):
    fake.info = replace(fake.info, reasoning_markers=REASONING)
    fake.script = scripted_events(["<think>", "Name is", " Ada.</think>", "Hi Ada"])
    events = [e async for e in await sdk.responses.create(model=MODEL_NAME, input="I am Ada", stream=True)]
    types = [e.type for e in events]
    assert "response.reasoning_text.delta" in types and "response.reasoning_text.done" in types
    first = events[-1].response
    assert [item.type for item in first.output] == ["reasoning", "message"]
    assert first.output[0].content[0].text == "Name is Ada." and first.output_text == "Hi Ada"
    assert first.usage.output_tokens_details.reasoning_tokens == 2
    fake.script = scripted_events(["Ada"])
    await sdk.responses.create(model=MODEL_NAME, input="Who am I?", previous_response_id=first.id)
    assert fake.encoded_chats[-1][1] == {"role": "assistant", "content": "Hi Ada", "reasoning_content": "Name is Ada."}


# ---- background -------------------------------------------------------------------------------------


async def test_a_background_response_answers_queued_and_is_polled_to_completion(sdk, fake):
    fake.event_delay_s = 0.02
    created = await sdk.responses.create(model=MODEL_NAME, input="hi", background=True)
    assert created.status in ("queued", "in_progress") and created.background is True and created.output == []
    done = await poll(sdk, created.id, ("completed",))
    assert done.output_text == "Hello, world!" and done.usage.output_tokens == 4


async def test_cancelling_a_background_response_stops_its_generation(sdk, fake):
    fake.script, fake.event_delay_s = scripted_events(LONG), 0.02
    created = await sdk.responses.create(model=MODEL_NAME, input="hi", background=True)
    await poll(sdk, created.id, ("in_progress",))
    await asyncio.sleep(0.1)
    cancelled = await sdk.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    await asyncio.sleep(0.1)
    assert fake.last_call.closed_early and not fake.last_call.finished
    assert (await sdk.responses.retrieve(created.id)).status == "cancelled"
    assert (await sdk.responses.cancel(created.id)).status == "cancelled"  # again: as it is


async def test_only_background_responses_can_be_cancelled_and_a_finished_one_is_returned_as_is(sdk, fake):
    plain = await sdk.responses.create(model=MODEL_NAME, input="hi")
    with pytest.raises(openai.BadRequestError):
        await sdk.responses.cancel(plain.id)
    background = await sdk.responses.create(model=MODEL_NAME, input="hi", background=True)
    finished = await poll(sdk, background.id, ("completed",))
    assert (await sdk.responses.cancel(background.id)).model_dump() == finished.model_dump()


async def test_background_needs_store(http):
    answer = await http.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi", "background": True,
                                                    "store": False})
    assert answer.status_code == 400 and assert_error_shape(answer.json())


# ---- streams and their resumption --------------------------------------------------------------------


async def read_events(http: httpx.AsyncClient, method: str, path: str, **kwargs) -> list[dict]:
    """The events of a Responses stream."""
    answer = await http.request(method, path, **kwargs)
    assert answer.status_code == 200, answer.text
    return [body for _, body in named_sse_json(answer.text)]


@pytest.mark.parametrize("while_running", [True, False])
async def test_a_background_stream_resumes_after_any_event(http, fake, while_running):
    # (httpx's in-process transport hands over a stream once it ended: the real dropped connection is
    # tests/e2e/test_e2e_responses_stored.py's; here the resumes begin while the generation runs, or after.)
    fake.script, fake.event_delay_s = scripted_events(LONG[:12]), 0.03
    body = {"model": MODEL_NAME, "input": "hi", "background": True, "stream": True}
    response_id = (await http.post("/v1/responses", json={**body, "stream": False})).json()["id"]
    path = f"/v1/responses/{response_id}"
    if while_running:
        await asyncio.sleep(0.15)
        assert (await http.get(path)).json()["status"] == "in_progress"
    else:
        for _ in range(100):
            if (await http.get(path)).json()["status"] == "completed":
                break
            await asyncio.sleep(0.05)
    rest = await read_events(http, "GET", path, params={"stream": "true", "starting_after": 4})
    whole = await read_events(http, "GET", path, params={"stream": "true"})
    assert [e["sequence_number"] for e in whole] == list(range(len(whole)))  # no gap, no duplicate
    assert rest == whole[5:] and rest[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in whole if e["type"] == "response.output_text.delta")
    assert text == "".join(LONG[:12]) == rest[-1]["response"]["output"][0]["content"][0]["text"]
    assert (await http.get(path)).json() == rest[-1]["response"]


async def test_a_streamed_post_is_numbered_like_its_replay(http, fake):
    fake.script = scripted_events(LONG[:5])
    body = {"model": MODEL_NAME, "input": "hi", "stream": True}
    posted = await read_events(http, "POST", "/v1/responses", json=body)
    replayed = await read_events(http, "GET", f"/v1/responses/{posted[0]['response']['id']}",
                                 params={"stream": "true", "starting_after": 2})
    assert replayed == posted[3:]


async def test_the_sdk_resumes_a_stored_stream(sdk, fake):
    fake.script = scripted_events(["a", "b", "c"])
    events = [e async for e in await sdk.responses.create(model=MODEL_NAME, input="hi", stream=True)]
    response_id = events[0].response.id
    resumed = [e async for e in await sdk.responses.retrieve(response_id, stream=True, starting_after=3)]
    assert [e.sequence_number for e in resumed] == list(range(4, len(events)))
    async with sdk.responses.stream(response_id=response_id, starting_after=5) as stream:
        later = [e async for e in stream]
        final = await stream.get_final_response()
    assert [e.sequence_number for e in later] == list(range(6, len(events))) and final.output_text == "abc"


async def test_the_sdk_stream_helper_on_a_background_response(sdk, fake):
    fake.script = scripted_events(["Hel", "lo"])
    async with sdk.responses.stream(model=MODEL_NAME, input="hi", background=True) as stream:
        first = [e async for e in stream][0]
        final = await stream.get_final_response()
    assert first.type == "response.created" and first.response.status == "queued"
    assert final.output_text == "Hello" and (await sdk.responses.retrieve(final.id)).status == "completed"


async def test_a_response_never_streamed_has_no_events_to_replay(sdk, http):
    plain = await sdk.responses.create(model=MODEL_NAME, input="hi")
    answer = await http.get(f"/v1/responses/{plain.id}", params={"stream": "true"})
    assert answer.status_code == 400 and assert_error_shape(answer.json())


async def test_a_cancelled_stream_ends_with_response_cancelled(http, fake):
    fake.script, fake.event_delay_s = scripted_events(LONG), 0.02
    body = {"model": MODEL_NAME, "input": "hi", "background": True}
    response_id = (await http.post("/v1/responses", json=body)).json()["id"]
    await asyncio.sleep(0.2)
    cancelled = (await http.post(f"/v1/responses/{response_id}/cancel")).json()
    assert cancelled["status"] == "cancelled"
    events = await read_events(http, "GET", f"/v1/responses/{response_id}", params={"stream": "true"})
    assert events[-1]["type"] == "response.cancelled" and events[-1]["response"]["status"] == "cancelled"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert json.dumps(events[-1]["response"]["output"])  # the message so far, closed incomplete
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"
