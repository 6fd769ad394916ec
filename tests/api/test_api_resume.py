"""Resumable streams on /v1/chat/completions and /v1/completions: numbered events, X-Stream-Resume,
GET with Last-Event-ID after a dropped connection or the end, the unattended bound, cancel, owners,
and a store shared by two apps (a restart on SQLite; two replicas on Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from tests.api.fake_engine import FakeEngine, scripted_events
from tests.api.helpers import chat_body, completion_body, parse_sse
from tests.api.test_api_streaming import drive_until_disconnect

ENDPOINTS = {"/v1/completions": completion_body, "/v1/chat/completions": chat_body}
WORDS = [f" w{i}" for i in range(40)]


@asynccontextmanager
async def serve(engine: FakeEngine, **settings) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    app = create_app(Settings(_env_file=None, **settings), engine=engine)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
            yield manager.app, client


@asynccontextmanager
async def serve_live(engine: FakeEngine, **settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind a real uvicorn on a loopback port (httpx's in-process transport would hand over a
    streamed body only once it ended), on this event loop."""
    import uvicorn

    from tests.e2e.conftest import free_port

    port = free_port()
    app = create_app(Settings(_env_file=None, **settings), engine=engine)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    running = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await running


def slow_fake(delay_s: float = 0.01, words=WORDS) -> FakeEngine:
    fake = FakeEngine()
    fake.script = scripted_events(words)
    fake.event_delay_s = delay_s
    return fake


def blocks(raw: str) -> list[str]:
    """The events of an SSE body as their raw text blocks (id + data), keep-alive comments left out."""
    return [block for block in raw.split("\n\n")[:-1] if not block.startswith(":")]


def resume_url(response: httpx.Response) -> str:
    url = response.headers["x-stream-resume"]
    assert url.startswith("/v1/streams/") and len(url.rsplit("/", 1)[1]) >= 16
    return url


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_after_the_end_a_resume_gives_exactly_the_events_after_the_last_seen(path):
    async with serve(slow_fake(0)) as (_, client):
        whole = await client.post(path, json=ENDPOINTS[path](stream=True, stream_options={"include_usage": True}))
        events = blocks(whole.text)
        assert [event.split("\n")[0] for event in events] == [f"id: {i}" for i in range(len(events))]
        assert events[-1].endswith("data: [DONE]") and '"usage"' in events[-2]  # both numbered too
        url = resume_url(whole)
        for seen in (0, 5, len(events) - 2, len(events) - 1):
            rest = await client.get(url, headers={"Last-Event-ID": str(seen)})
            assert rest.status_code == 200 and rest.headers["content-type"].startswith("text/event-stream")
            assert blocks(rest.text) == events[seen + 1:]
        assert blocks((await client.get(url)).text) == events  # no Last-Event-ID: the whole stream


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_dropped_connection_does_not_stop_the_generation_and_the_rest_can_be_read(path):
    fake = slow_fake()
    async with serve(fake) as (app, client):
        sent = await drive_until_disconnect(app, path, ENDPOINTS[path](stream=True), 4)
        start = sent[0]
        url = dict(start["headers"])[b"x-stream-resume"].decode()
        seen = blocks(b"".join(m.get("body", b"") for m in sent[1:]).decode())
        assert 0 < len(seen) < len(WORDS)
        last = int(seen[-1].split("\n")[0].removeprefix("id: "))
        rest = await client.get(url, headers={"Last-Event-ID": str(last)})
        payloads = parse_sse("\n\n".join(seen + blocks(rest.text)) + "\n\n")  # ids run on, no gap, no repeat
        assert payloads[-1] == "[DONE]"
        assert not fake.last_call.closed_early and fake.last_call.finished
        # The same as an uninterrupted stream of the same request, but for ids and timestamps.
        whole = parse_sse((await client.post(path, json=ENDPOINTS[path](stream=True))).text)
        assert len(whole) == len(payloads)


async def test_a_resume_while_the_first_connection_still_reads_gets_the_same_events():
    fake = slow_fake()
    async with serve_live(fake) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as first:
            url = resume_url(first)
            chunks = first.aiter_text()
            raw = await anext(chunks)
            assert not fake.last_call.finished  # the resume below starts mid-generation
            second = asyncio.create_task(client.get(url, headers={"Last-Event-ID": "2"}))
            raw += "".join([chunk async for chunk in chunks])
        assert blocks((await second).text) == blocks(raw)[3:]


async def test_a_stream_nobody_reads_is_cancelled_after_the_unattended_bound():
    fake = slow_fake(0.02, [f" w{i}" for i in range(500)])  # 10 s of tokens
    async with serve(fake, stream_unattended="0.3s") as (app, client):
        sent = await drive_until_disconnect(app, "/v1/chat/completions", chat_body(stream=True), 3)
        url = dict(sent[0]["headers"])[b"x-stream-resume"].decode()
        await asyncio.sleep(0.15)
        assert not fake.last_call.closed_early  # still generating for a client that may come back
        await asyncio.sleep(0.6)
        assert fake.last_call.closed_early and not fake.last_call.finished
        events = parse_sse((await client.get(url)).text)
        assert events[-1] == "[DONE]" and '"code":"cancelled"' in events[-2]


async def test_with_no_unattended_time_a_dropped_connection_cancels_at_once():
    fake = slow_fake(0.005, [f" w{i}" for i in range(1000)])
    async with serve(fake, stream_unattended="0") as (app, _):
        sent = await drive_until_disconnect(app, "/v1/completions", completion_body(stream=True), 3)
        await asyncio.sleep(0.05)
        assert len(sent) < 50
        assert fake.last_call.closed_early and not fake.last_call.finished


async def test_cancel_stops_the_generation_and_ends_the_stream():
    fake = slow_fake(0.02, [f" w{i}" for i in range(500)])
    async with serve_live(fake) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as first:
            url = resume_url(first)
            lines = first.aiter_lines()
            assert (await anext(lines)).startswith("id: 0")
            cancelled = await client.post(url + "/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
            rest = "\n".join([line async for line in lines])
        assert fake.last_call.closed_early
        assert '"code":"cancelled"' in rest and rest.rstrip().endswith("data: [DONE]")
        assert (await client.post("/v1/streams/strm_nope/cancel")).status_code == 404


async def test_unknown_streams_are_404_in_the_openai_shape():
    async with serve(slow_fake(0)) as (_, client):
        missing = await client.get("/v1/streams/strm_" + uuid.uuid4().hex, headers={"Last-Event-ID": "3"})
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"


async def test_a_stream_is_resumable_only_with_the_key_that_made_it():
    keys = "sk-a name=alice,sk-b name=bob"
    async with serve(slow_fake(0), api_keys=keys) as (_, client):
        made = await client.post("/v1/chat/completions", json=chat_body(stream=True),
                                 headers={"Authorization": "Bearer sk-a"})
        url = resume_url(made)
        assert (await client.get(url, headers={"Authorization": "Bearer sk-b"})).status_code == 404
        assert (await client.post(url + "/cancel", headers={"Authorization": "Bearer sk-b"})).status_code == 404
        assert (await client.get(url)).status_code == 401
        mine = await client.get(url, headers={"Authorization": "Bearer sk-a"})
        assert blocks(mine.text) == blocks(made.text)


async def test_a_finished_stream_is_resumable_after_a_restart_on_the_same_sqlite_file(tmp_path):
    store = f"sqlite:///{tmp_path}/store.sqlite3"
    async with serve(slow_fake(0), store_url=store) as (_, client):
        made = await client.post("/v1/completions", json=completion_body(stream=True))
    async with serve(slow_fake(0), store_url=store) as (_, client):  # a new process, the same file
        rest = await client.get(resume_url(made), headers={"Last-Event-ID": "1"})
        assert rest.status_code == 200 and blocks(rest.text) == blocks(made.text)[2:]


async def test_replicas_sharing_redis_resume_and_cancel_a_stream_the_other_generates(redis_url):
    first_fake = slow_fake(0.02, [f" w{i}" for i in range(300)])
    async with serve_live(first_fake, store_url=redis_url) as first, serve_live(FakeEngine(), store_url=redis_url) as other:
        async with first.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as live:
            url = resume_url(live)
            lines = live.aiter_lines()
            assert (await anext(lines)).startswith("id: 0")
            await asyncio.sleep(0.3)  # some events are in Redis by now
            async with other.stream("GET", url, headers={"Last-Event-ID": "0"}) as elsewhere:
                seen = []
                async for line in elsewhere.aiter_lines():
                    if line.startswith("id: "):
                        seen.append(int(line.removeprefix("id: ")))
                    if len(seen) == 20:
                        break
            assert seen == list(range(1, 21))  # followed live, in order, from the other replica
            assert (await other.post(url + "/cancel")).status_code == 200
            rest = "\n".join([line async for line in lines])
        assert first_fake.last_call.closed_early and '"code":"cancelled"' in rest


async def test_a_background_response_made_on_one_replica_is_read_resumed_and_cancelled_on_another(redis_url):
    first_fake = slow_fake(0.02, [f" w{i}" for i in range(300)])
    async with serve_live(first_fake, store_url=redis_url) as first, serve_live(FakeEngine(), store_url=redis_url) as other:
        made = await first.post("/v1/responses", json={"model": "fake-model", "input": "Hi", "background": True,
                                                        "stream": False})
        assert made.status_code == 200 and made.json()["status"] in ("queued", "in_progress")
        response_id = made.json()["id"]
        await asyncio.sleep(0.3)
        seen = await other.get(f"/v1/responses/{response_id}")
        assert seen.status_code == 200 and seen.json()["status"] == "in_progress"
        numbers = []
        async with other.stream("GET", f"/v1/responses/{response_id}",
                                params={"stream": "true", "starting_after": "1"}) as resumed:
            async for line in resumed.aiter_lines():
                if line.startswith("data: "):
                    numbers.append(int(line.split('"sequence_number":')[1].split(",")[0].split("}")[0]))
                if len(numbers) == 10:
                    break
        assert numbers == list(range(2, 12))  # live from the other replica, in order, no gap
        cancelled = await other.post(f"/v1/responses/{response_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert first_fake.last_call.closed_early and not first_fake.last_call.finished
        assert (await first.get(f"/v1/responses/{response_id}")).json()["status"] == "cancelled"


async def test_a_stored_response_s_stream_is_not_reachable_through_the_chat_streams_routes():
    async with serve(slow_fake(0)) as (_, client):
        made = await client.post("/v1/responses", json={"model": "fake-model", "input": "hi", "stream": True})
        response_id = made.text.split('"id":"resp_')[1].split('"')[0]
        assert (await client.get(f"/v1/streams/resp_{response_id}")).status_code == 404
        assert (await client.post(f"/v1/streams/resp_{response_id}/cancel")).status_code == 404
