"""Request ids, the request log and Prometheus metrics, in process over the fake engine."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.engine.errors import ContextLengthExceeded, EngineError, Overloaded
from app.engine.kv.prefix_cache import PrefixCacheStats
from app.engine.types import FinishReason
from app.main import create_app
from tests.api.fake_engine import MODEL_NAME, FakeEngine, scripted_events
from tests.api.helpers import assert_error_shape, chat_body, completion_body, sse_json

ENDPOINTS = ["/v1/completions", "/v1/chat/completions"]
PREFIX = {"/v1/completions": "cmpl-", "/v1/chat/completions": "chatcmpl-"}


def body_for(path: str, **overrides) -> dict:
    return completion_body(**overrides) if path == "/v1/completions" else chat_body(**overrides)


@asynccontextmanager
async def serve_app(engine: FakeEngine, **settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app over `engine`, with these settings (and no .env)."""
    app = create_app(Settings(_env_file=None, **settings), engine=engine)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
            yield app, client


@asynccontextmanager
async def serve(engine: FakeEngine, **settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(engine, **settings) as (_, client):
        yield client


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


MODEL = (("model", MODEL_NAME),)  # the labels of a per-model series


def requests_total(metrics: dict, endpoint: str, outcome: str, model: str = MODEL_NAME) -> float:
    """A request counter by endpoint and outcome; `model` is "unknown" for a request refused before
    its body was read (no key, a drain)."""
    return metrics[("tokenwire_requests_total", (("endpoint", endpoint), ("model", model), ("outcome", outcome)))]


# ---- request ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_generated_request_id_is_echoed_and_is_the_completion_id(fake, path, stream):
    async with serve(fake) as client:
        response = await client.post(path, json=body_for(path, stream=stream))
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    ids = {chunk["id"] for chunk in sse_json(response.text)} if stream else {response.json()["id"]}
    assert ids == {PREFIX[path] + request_id}
    assert fake.last_call.request_id == PREFIX[path] + request_id


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_client_request_id_is_echoed_and_used_as_is(fake, path):
    async with serve(fake) as client:
        response = await client.post(path, json=body_for(path), headers={"X-Request-Id": "trace-42:a.b_c"})
    assert response.headers["x-request-id"] == "trace-42:a.b_c"
    assert response.json()["id"] == "trace-42:a.b_c"


@pytest.mark.parametrize("unsafe", ["x" * 129, "has space", "new\\nline", "quote\"", "ü", ""])
async def test_an_unsafe_client_request_id_is_replaced(fake, unsafe):
    async with serve(fake) as client:
        response = await client.post("/v1/completions", json=completion_body(),
                                     headers={"X-Request-Id": unsafe.encode("utf-8")})
    request_id = response.headers["x-request-id"]
    assert request_id != unsafe and len(request_id) == 32
    assert response.json()["id"] == "cmpl-" + request_id


async def test_every_response_carries_a_request_id_errors_included(fake):
    async with serve(fake) as client:
        responses = [
            await client.get("/health"), await client.get("/ready"), await client.get("/metrics"),
            await client.get("/v1/nothing"),  # 404 route
            await client.post("/v1/completions", json={"model": "gpt-9", "prompt": "hi"}),  # 404 model
            await client.post("/v1/completions", json={"prompt": "hi"}),  # 400 validation
        ]
        fake.generate_error = Overloaded("busy")
        responses.append(await client.post("/v1/completions", json=completion_body()))  # 429
        fake.generate_error = RuntimeError("a bug")
        responses.append(await client.post("/v1/completions", json=completion_body()))  # 500, outside
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 404, 400, 429, 500]
    for response in responses:
        assert len(response.headers.get_list("x-request-id")) == 1, response.headers
    for response in responses[3:]:
        assert_error_shape(response.json())


async def test_a_client_id_reaches_the_engine_even_when_reused(fake):
    """The engine makes its own keys unique (tests/engine); the API passes the client's id as it is."""
    async with serve(fake) as client:
        for _ in range(2):
            response = await client.post("/v1/completions", json=completion_body(), headers={"X-Request-Id": "same"})
            assert response.status_code == 200
    assert [call.request_id for call in fake.calls] == ["same", "same"]


# ---- the request log ----------------------------------------------------------------------------


def request_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "tokenwire.request"]


async def test_one_log_line_per_generation_request_without_the_prompt(fake, caplog):
    caplog.set_level(logging.INFO, logger="tokenwire.request")
    async with serve(fake) as client:
        await client.post("/v1/completions", json=completion_body(prompt="secret words"),
                          headers={"X-Request-Id": "log-1"})
        await client.get("/health")  # debug level: not logged at info
    (line,) = request_lines(caplog)
    assert line["request_id"] == "log-1" and line["path"] == "/v1/completions" and line["status"] == 200
    assert line["outcome"] == "stop" and line["model"] == "fake-model"
    assert line["prompt_tokens"] == 3 and line["completion_tokens"] == 4
    assert line["ttft_s"] >= 0 and line["e2e_s"] >= line["ttft_s"] and line["tokens_per_s"] > 0
    assert "prompt" not in line and "secret words" not in json.dumps(line)


async def test_prompts_are_logged_only_when_asked(fake, caplog):
    caplog.set_level(logging.INFO, logger="tokenwire.request")
    async with serve(fake, log_prompts=True) as client:
        await client.post("/v1/completions", json=completion_body(prompt="secret words"))
        await client.post("/v1/chat/completions", json=chat_body())
    first, second = request_lines(caplog)
    assert first["prompt"] == "secret words"
    assert second["prompt"][0]["content"] == "Say hi"


async def test_a_rejected_request_is_logged_with_its_status_and_reason(fake, caplog):
    caplog.set_level(logging.INFO, logger="tokenwire.request")
    fake.generate_error = ContextLengthExceeded("too long", param="max_tokens")
    async with serve(fake) as client:
        await client.post("/v1/chat/completions", json=chat_body())
    (line,) = request_lines(caplog)
    assert line["status"] == 400 and line["outcome"] == "rejected_context_length"


# ---- metrics ------------------------------------------------------------------------------------


async def test_metrics_count_requests_by_outcome_and_tokens(fake):
    async with serve(fake) as client:
        assert (await client.post("/v1/completions", json=completion_body())).status_code == 200
        assert (await client.post("/v1/completions", json=completion_body(stream=True))).status_code == 200
        fake.script = scripted_events(["a", "b"], FinishReason.LENGTH)
        assert (await client.post("/v1/chat/completions", json=chat_body(stream=True))).status_code == 200
        fake.script = [*scripted_events(["a", "b"], None), EngineError("boom")]
        assert (await client.post("/v1/chat/completions", json=chat_body(stream=True))).status_code == 200
        assert (await client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})).status_code == 404
        assert (await client.post("/v1/completions", json=completion_body(temperature=9))).status_code == 400
        fake.generate_error = Overloaded("busy")
        assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 429
        fake.generate_error = ContextLengthExceeded("too long", param="max_tokens")
        assert (await client.post("/v1/completions", json=completion_body())).status_code == 400
        fake.running, fake.waiting, fake.kv_bytes = 3, 5, 12345
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    metrics = samples(response.text)
    expected = {("completions", "stop"): 2, ("chat_completions", "length"): 1, ("chat_completions", "error"): 1,
                ("completions", "rejected_validation"): 2, ("chat_completions", "rejected_overloaded"): 1,
                ("completions", "rejected_context_length"): 1}
    counted = {key[1]: value for key, value in metrics.items() if key[0] == "tokenwire_requests_total" and value}
    model_of = lambda outcome: "unknown" if outcome == "rejected_validation" else MODEL_NAME  # noqa: E731 - a body it could not read
    assert counted == {(("endpoint", e), ("model", model_of(o)), ("outcome", o)): n for (e, o), n in expected.items()}
    assert metrics[("tokenwire_generation_tokens_total", MODEL)] == 4 + 4 + 2 + 2
    assert metrics[("tokenwire_prompt_tokens_total", MODEL)] == 3 * 4
    assert metrics[("tokenwire_time_to_first_token_seconds_count", MODEL)] == 4
    assert metrics[("tokenwire_inter_token_latency_seconds_count", MODEL)] == 3 + 3 + 1 + 1
    assert metrics[("tokenwire_e2e_request_latency_seconds_count", MODEL)] == 3  # finished ones
    assert metrics[("tokenwire_requests_running", MODEL)] == 3
    assert metrics[("tokenwire_requests_waiting", MODEL)] == 5
    assert metrics[("tokenwire_kv_cache_bytes", MODEL)] == 12345


async def test_metrics_show_the_prefix_cache(fake):
    fake.prefix_stats = PrefixCacheStats(bytes=4096, entries=2, hits=3, misses=4, evictions=1, reused_tokens=640)
    async with serve(fake) as client:
        metrics = samples((await client.get("/metrics")).text)
    assert metrics[("tokenwire_prefix_cache_bytes", MODEL)] == 4096
    assert metrics[("tokenwire_prefix_cache_entries", MODEL)] == 2
    assert metrics[("tokenwire_prefix_cache_hits_total", MODEL)] == 3
    assert metrics[("tokenwire_prefix_cache_misses_total", MODEL)] == 4
    assert metrics[("tokenwire_prefix_cache_evictions_total", MODEL)] == 1
    assert metrics[("tokenwire_prefix_cache_reused_tokens_total", MODEL)] == 640


async def test_every_outcome_series_exists_from_the_start(fake):
    async with serve(fake) as client:
        metrics = samples((await client.get("/metrics")).text)
    for endpoint in ("completions", "chat_completions"):
        for outcome in ("stop", "length", "timeout", "cancelled", "error", "rejected_draining", "rejected_auth"):
            assert requests_total(metrics, endpoint, outcome) == 0


async def test_apps_have_their_own_registries():
    first, second = FakeEngine(), FakeEngine()
    async with serve(first) as one, serve(second) as two:
        await one.post("/v1/completions", json=completion_body())
        assert requests_total(samples((await one.get("/metrics")).text), "completions", "stop") == 1
        assert requests_total(samples((await two.get("/metrics")).text), "completions", "stop") == 0


async def test_auth_rejections_are_counted(fake):
    async with serve(fake, api_keys="k1") as client:
        response = await client.post("/v1/completions", json=completion_body())
        assert response.status_code == 401 and response.headers["x-request-id"]
        metrics = samples((await client.get("/metrics", headers={"Authorization": "Bearer k1"})).text)
    assert requests_total(metrics, "completions", "rejected_auth", "unknown") == 1
