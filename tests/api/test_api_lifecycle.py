"""Readiness, keep-alive pings and draining, in process over the fake engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.api.drain import drain
from tests.api.fake_engine import scripted_events
from tests.api.helpers import assert_error_shape, chat_body, completion_body, parse_sse, sse_json
from tests.api.test_api_observability import requests_total, samples, serve, serve_app


# ---- readiness ----------------------------------------------------------------------------------


async def test_ready_once_warmed_up(fake):
    async with serve(fake) as client:
        response = await client.get("/ready")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


@pytest.mark.parametrize(("change", "status"), [({"warm": False}, "loading"), ({"alive": False}, "dead")])
async def test_not_ready_while_loading_or_after_the_engine_died(fake, change, status):
    async with serve(fake) as client:
        for name, value in change.items():
            setattr(fake, name, value)
        response = await client.get("/ready")
        health = await client.get("/health")
    assert (response.status_code, response.json()) == (503, {"status": status})
    assert health.status_code == (503 if status == "dead" else 200)


async def test_probes_answer_while_every_request_waits(fake):
    """/health, /ready and /metrics never wait for the engine: they answer at once under load."""
    fake.event_delay_s = 0.5
    async with serve(fake) as client:
        busy = [asyncio.create_task(client.post("/v1/completions", json=completion_body(stream=True)))
                for _ in range(8)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        statuses = [(await client.get(path)).status_code for path in ("/health", "/ready", "/metrics")]
        elapsed = time.monotonic() - started
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
    assert statuses == [200, 200, 200] and elapsed < 0.3


# ---- keep-alive ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_a_waiting_stream_gets_keepalive_comments(fake, path):
    fake.script = scripted_events(["late"])
    fake.event_delay_s = 0.35  # the only token arrives after several ping intervals
    body = completion_body(stream=True) if path == "/v1/completions" else chat_body(stream=True)
    async with serve(fake, sse_keepalive_s=0.1) as client:
        response = await client.post(path, json=body)
    assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
    pings = [line for line in response.text.split("\n") if line.startswith(": ping")]
    assert len(pings) >= 2, response.text
    before_token = response.text.split('"late"')[0]
    assert ": ping" in before_token
    assert parse_sse(response.text)[-1] == "[DONE]"  # comments do not break the framing


async def test_no_keepalive_comment_on_a_fast_stream(fake):
    async with serve(fake, sse_keepalive_s=30) as client:
        response = await client.post("/v1/completions", json=completion_body(stream=True))
    assert ": ping" not in response.text


# ---- draining -----------------------------------------------------------------------------------


async def test_while_draining_new_generation_requests_get_503_and_other_routes_work(fake):
    async with serve_app(fake) as (app, client):
        app.state.drain.closed = True
        refused = await client.post("/v1/chat/completions", json=chat_body(stream=True))
        ready = await client.get("/ready")
        models = await client.get("/v1/models")
        metrics = samples((await client.get("/metrics")).text)
    assert refused.status_code == 503 and refused.headers["connection"] == "close"
    assert refused.headers["x-request-id"]
    error = assert_error_shape(refused.json())
    assert (error["type"], error["code"]) == ("service_unavailable", "draining")
    assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
    assert models.status_code == 200
    assert fake.calls == []
    assert requests_total(metrics, "chat_completions", "rejected_draining", "unknown") == 1


async def test_drain_waits_for_requests_in_flight_to_finish(fake):
    fake.event_delay_s = 0.1
    async with serve_app(fake) as (app, client):
        state = app.state.drain
        request = asyncio.create_task(client.post("/v1/completions", json=completion_body(stream=True)))
        while state.num_in_flight == 0:
            await asyncio.sleep(0.01)
        finished_in_time = await drain(state, fake, timeout_s=5, poll_s=0.01)
        response = await request
    assert finished_in_time and state.num_in_flight == 0
    chunks = sse_json(response.text)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert fake.failure is None


async def test_at_the_drain_deadline_remaining_streams_end_with_an_error_event(fake):
    fake.script = scripted_events([f"t{i}" for i in range(100)])
    fake.event_delay_s = 0.05
    async with serve_app(fake) as (app, client):
        state = app.state.drain
        streamed = asyncio.create_task(client.post("/v1/completions", json=completion_body(stream=True)))
        whole = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        while state.num_in_flight < 2:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        finished_in_time = await drain(state, fake, timeout_s=0.3, poll_s=0.01)
        elapsed = time.monotonic() - started
        streamed, whole = await streamed, await whole
    assert not finished_in_time and elapsed < 2
    events = sse_json(streamed.text)  # ends with exactly one [DONE]
    error = assert_error_shape(events[-1])
    assert error["code"] == "draining" and all("choices" in e for e in events[:-1])
    assert whole.status_code == 503 and assert_error_shape(whole.json())["code"] == "draining"
