"""SSE framing of both endpoints, usage chunks, echo, streamed == non-streamed, mid-stream failures."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.api.framing import Framer
from app.api.sse import stream_events
from app.engine.errors import EngineDead, EngineError, Overloaded
from app.engine.types import FinishReason, SamplingParams
from app.main import create_app
from tests.api.fake_engine import MODEL_NAME, FakeEngine, scripted_events
from tests.api.helpers import assert_error_shape, chat_body, completion_body, parse_sse, sse_json

ENDPOINTS = ["/v1/completions", "/v1/chat/completions"]


def body_for(path: str, **overrides) -> dict:
    return completion_body(**overrides) if path == "/v1/completions" else chat_body(**overrides)


def chunk_text(path: str, chunk: dict) -> str:
    choice = chunk["choices"][0]
    return choice["text"] if path == "/v1/completions" else choice["delta"].get("content", "")


async def stream(client: httpx.AsyncClient, path: str, **overrides) -> tuple[httpx.Response, list[dict]]:
    response = await client.post(path, json=body_for(path, stream=True, **overrides))
    assert response.status_code == 200, response.text
    return response, sse_json(response.text)


# ---- framing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_stream_headers(client, path):
    response = await client.post(path, json=body_for(path, stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_every_event_is_one_data_line_then_a_blank_line(client, path):
    response = await client.post(path, json=body_for(path, stream=True))
    payloads = parse_sse(response.text)  # asserts the framing of every event
    assert payloads[-1] == "[DONE]"
    assert response.text.endswith("data: [DONE]\n\n")
    for payload in payloads[:-1]:
        json.loads(payload)


async def test_completion_chunks(client, fake):
    _, chunks = await stream(client, "/v1/completions")
    assert [c["choices"][0]["text"] for c in chunks] == ["Hello", ",", " world", "!"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    first = chunks[0]
    assert first["id"].startswith("cmpl-")
    assert first["model"] == MODEL_NAME
    assert isinstance(first["created"], int) and first["created"] > 0
    for chunk in chunks:
        assert chunk["object"] == "text_completion"
        assert (chunk["id"], chunk["created"], chunk["model"]) == (first["id"], first["created"], first["model"])
        assert chunk["choices"][0]["index"] == 0 and chunk["choices"][0]["logprobs"] is None
        assert "usage" not in chunk
    assert fake.last_call.request_id == first["id"]


async def test_chat_chunks(client, fake):
    _, chunks = await stream(client, "/v1/chat/completions")
    first = chunks[0]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert [c["choices"][0]["delta"] for c in chunks[1:]] == [
        {"content": "Hello"}, {"content": ","}, {"content": " world"}, {"content": "!"}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert first["id"].startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert (chunk["id"], chunk["created"], chunk["model"]) == (first["id"], first["created"], MODEL_NAME)
        assert "usage" not in chunk
    assert fake.last_call.request_id == first["id"]


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_empty_text_events_make_no_chunk(client, fake, path):
    fake.script = scripted_events(["", "A", "", "", "B", ""], FinishReason.LENGTH)
    _, chunks = await stream(client, path)
    if path == "/v1/chat/completions":
        chunks = chunks[1:]  # the role chunk
    assert [chunk_text(path, c) for c in chunks] == ["A", "B", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    if path == "/v1/chat/completions":
        assert chunks[-1]["choices"][0]["delta"] == {}  # a finish-only chunk has an empty delta


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_last_text_and_finish_reason_share_one_chunk(client, fake, path):
    fake.script = scripted_events(["one", " two"], FinishReason.STOP)
    _, chunks = await stream(client, path)
    if path == "/v1/chat/completions":
        chunks = chunks[1:]
    assert [(chunk_text(path, c), c["choices"][0]["finish_reason"]) for c in chunks] == [
        ("one", None), (" two", "stop")]


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_include_usage(client, fake, path):
    fake.script = scripted_events(["a", "b", "c"], num_prompt_tokens=11)
    _, chunks = await stream(client, path, stream_options={"include_usage": True})
    *content, usage_chunk = chunks
    for chunk in content:
        assert chunk["usage"] is None
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                                   "prompt_tokens_details": {"cached_tokens": 0}}
    assert (usage_chunk["id"], usage_chunk["created"], usage_chunk["object"]) == (
        content[0]["id"], content[0]["created"], content[0]["object"])


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_cached_prompt_tokens_are_reported_streamed_and_not(client, fake, path):
    events = scripted_events(["a", "b"], num_prompt_tokens=90)
    fake.script = [replace(e, num_cached_tokens=64) for e in events]
    _, chunks = await stream(client, path, stream_options={"include_usage": True})
    body = (await client.post(path, json=completion_body() if "chat" not in path else chat_body())).json()
    for usage in (chunks[-1]["usage"], body["usage"]):
        assert usage["prompt_tokens"] == 90 and usage["prompt_tokens_details"] == {"cached_tokens": 64}


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_include_usage_false_sends_no_usage(client, path):
    _, chunks = await stream(client, path, stream_options={"include_usage": False})
    assert all("usage" not in c and c["choices"] for c in chunks)


# ---- non-streamed == streamed -------------------------------------------------------------------


async def test_completion_response_equals_joined_stream(client, fake):
    fake.script = scripted_events(["The", " answer", "", " is", " 42"], FinishReason.LENGTH, num_prompt_tokens=6)
    _, chunks = await stream(client, "/v1/completions")
    response = await client.post("/v1/completions", json=completion_body())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == MODEL_NAME
    assert body["choices"] == [{"index": 0, "text": "".join(c["choices"][0]["text"] for c in chunks),
                                "logprobs": None, "finish_reason": "length"}]
    assert body["choices"][0]["text"] == "The answer is 42"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert fake.last_call.request_id == body["id"]


async def test_chat_response_equals_joined_stream(client, fake):
    fake.script = scripted_events(["Par", "is", "."], FinishReason.STOP, num_prompt_tokens=20)
    _, chunks = await stream(client, "/v1/chat/completions")
    body = (await client.post("/v1/chat/completions", json=chat_body())).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    joined = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": joined, "refusal": None},
                                "logprobs": None, "finish_reason": "stop"}]
    assert joined == "Paris."
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23,
                             "prompt_tokens_details": {"cached_tokens": 0}}


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_non_streamed_ignores_stream_options(client, path):
    body = (await client.post(path, json=body_for(path, stream_options={"include_usage": True}))).json()
    assert body["usage"]["completion_tokens"] == 4


# ---- echo ---------------------------------------------------------------------------------------


async def test_echo_streamed_sends_the_prompt_first(client):
    _, chunks = await stream(client, "/v1/completions", prompt="Once upon", echo=True)
    assert [c["choices"][0]["text"] for c in chunks] == ["Once upon", "Hello", ",", " world", "!"]
    assert chunks[0]["choices"][0]["finish_reason"] is None


async def test_echo_with_usage_chunk(client):
    _, chunks = await stream(client, "/v1/completions", prompt="Hi", echo=True,
                             stream_options={"include_usage": True})
    assert chunks[0]["choices"][0]["text"] == "Hi" and chunks[0]["usage"] is None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_echo_non_streamed(client):
    body = (await client.post("/v1/completions", json=completion_body(prompt="Once upon", echo=True))).json()
    assert body["choices"][0]["text"] == "Once upon" + "Hello, world!"


async def test_echo_of_token_ids_decodes_them(client):
    body = (await client.post("/v1/completions", json=completion_body(prompt=[72, 105], echo=True))).json()
    assert body["choices"][0]["text"] == "Hi" + "Hello, world!"


async def test_no_echo_by_default(client):
    body = (await client.post("/v1/completions", json=completion_body(prompt="Once upon"))).json()
    assert body["choices"][0]["text"] == "Hello, world!"


# ---- failures after the stream began ------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(("error", "type_", "code", "message"), [
    (EngineError("generation failed inside the engine"), "server_error", None, "generation failed inside the engine"),
    (EngineDead("the model thread died"), "service_unavailable", "engine_unavailable", "the model thread died"),
    (Overloaded("kv cache full", retry_after_s=2), "rate_limit_error", "overloaded", "kv cache full"),
    (RuntimeError("secret internals"), "server_error", None, "internal server error"),
])
async def test_mid_stream_failure_is_one_error_event_then_done(client, fake, path, error, type_, code, message):
    fake.script = [*scripted_events(["partial", " text"], finish_reason=None), error]
    response = await client.post(path, json=body_for(path, stream=True, stream_options={"include_usage": True}))
    assert response.status_code == 200  # the status line was already sent
    events = sse_json(response.text)
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1 and events[-1] is errors[0], events
    error_obj = assert_error_shape(errors[0])
    assert (error_obj["type"], error_obj["code"], error_obj["message"]) == (type_, code, message)
    texts = [chunk_text(path, c) for c in events[:-1] if c["choices"]]
    assert "".join(texts) == "partial text"
    assert all(c["choices"][0]["finish_reason"] is None for c in events[:-1])
    assert not any(c.get("usage") for c in events[:-1])
    assert fake.last_call.finished and not fake.last_call.closed_early


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_failure_before_the_first_event_is_still_in_band(client, fake, path):
    fake.script = [EngineError("boom")]
    response = await client.post(path, json=body_for(path, stream=True))
    assert response.status_code == 200
    events = sse_json(response.text)
    assert assert_error_shape(events[-1])["message"] == "boom"
    assert len([e for e in events if "error" in e]) == 1


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(("error", "status", "type_"), [
    (EngineError("generation failed inside the engine"), 500, "server_error"),
    (EngineDead("the model thread died"), 503, "service_unavailable"),
    (Overloaded("kv cache full", retry_after_s=2), 429, "rate_limit_error"),
])
async def test_failure_of_a_non_streamed_request_maps_to_a_status(client, fake, path, error, status, type_):
    fake.script = [*scripted_events(["partial"], finish_reason=None), error]
    response = await client.post(path, json=body_for(path))
    assert response.status_code == status
    assert assert_error_shape(response.json())["type"] == type_
    if status == 429:
        assert response.headers["retry-after"] == "2"


async def test_unexpected_failure_of_a_non_streamed_request_is_a_500(lenient_client, fake):
    fake.script = [*scripted_events(["partial"], finish_reason=None), ValueError("secret internals")]
    response = await lenient_client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 500
    assert assert_error_shape(response.json()) == {
        "message": "internal server error", "type": "server_error", "param": None, "code": None}


# ---- leaving early closes the engine iterator ----------------------------------------------------


async def test_leaving_the_stream_early_closes_the_engine_iterator(fake):
    fake.started = True  # no app here: drive app.api.sse directly
    fake.script = scripted_events([f"t{i}" for i in range(100)])
    events = fake.generate([1, 2, 3], SamplingParams(), "cmpl-x")
    stream_ = stream_events(events, Framer("cmpl-x", MODEL_NAME))
    assert "t0" in await stream_.__anext__()
    assert "t1" in await stream_.__anext__()
    await stream_.aclose()
    assert fake.last_call.closed_early
    assert fake.num_active_requests == 0


async def test_a_finished_stream_is_not_closed_early(client, fake):
    await stream(client, "/v1/chat/completions")
    assert fake.last_call.finished and not fake.last_call.closed_early
    assert fake.num_active_requests == 0


async def drive_until_disconnect(app, path: str, body: dict, chunks_before_leaving: int) -> list[dict]:
    """Call the ASGI app like a server would, with a client that hangs up after some body chunks."""
    raw = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                                          (b"content-length", str(len(raw)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    sent: list[dict] = []
    gone = asyncio.Event()
    inbox = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive():
        if inbox:
            return inbox.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if sum(m["type"] == "http.response.body" for m in sent) >= chunks_before_leaving:
            gone.set()

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_client_disconnect_aborts_the_request(fake, path):
    fake.script = scripted_events([f"t{i}" for i in range(1000)])
    fake.event_delay_s = 0.005  # 1000 events would take 5 s; the client leaves after 3 chunks
    app = create_app(engine=fake)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        sent = await drive_until_disconnect(manager.app, path, body_for(path, stream=True), 3)
        await asyncio.sleep(0.05)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert len(sent) < 50
    assert fake.last_call.closed_early and not fake.last_call.finished
    assert fake.num_active_requests == 0


def test_events_are_encoded_exactly_as_sse_starlette_would_encode_them():
    from sse_starlette.event import ServerSentEvent

    from app.api.sse import data_frame, json_data
    from app.api.stream_relay import numbered

    for body in ({"a": "line\nbreak\r\nand\u2028separator", "b": "émoji 👋"}, {}):
        payload = json_data(body)
        assert data_frame(payload).encode() == ServerSentEvent(data=payload, sep="\n").encode()
        assert numbered(7, data_frame(payload)).encode() == ServerSentEvent(data=payload, id="7", sep="\n").encode()
    assert data_frame("[DONE]").encode() == ServerSentEvent(data="[DONE]", sep="\n").encode()
