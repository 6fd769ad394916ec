"""API keys as tenants through the real app over the fake engine: the share handed to the engine, the
limits (429 + Retry-After + x-ratelimit-*), the usage ledger in /metrics and the request log."""

from __future__ import annotations

import logging

from tests.api.fake_engine import MODEL_NAME, scripted_events
from tests.api.helpers import assert_error_shape, chat_body, completion_body
from tests.api.test_api_limits import client_for
from tests.api.test_api_observability import request_lines, requests_total, samples

from app.engine.types import Priority, Share

KEYS = "sk-chat name=chat weight=3 requests=2/min, sk-night name=nightly priority=batch tokens=10/h, sk-plain"


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def usage(metrics: dict, name: str, key: str, model: str = MODEL_NAME) -> float:
    return metrics.get((f"tokenwire_usage_{name}_total", (("key", key), ("model", model))), 0.0)


async def test_each_keys_tenant_reaches_the_engine_as_its_share(fake):
    async with client_for(fake, api_keys=KEYS) as client:
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth("sk-chat"))).status_code == 200
        assert fake.last_call.share == Share("chat", 3.0, Priority.INTERACTIVE)
        assert (await client.post("/v1/completions", json=completion_body(), headers=auth("sk-night"))).status_code == 200
        assert fake.last_call.share == Share("nightly", 1.0, Priority.BATCH)
        response = await client.post("/v1/responses", json={"model": MODEL_NAME, "input": "hi"}, headers=auth("sk-plain"))
        assert response.status_code == 200 and fake.last_call.share.tenant.startswith("key-")


async def test_the_open_api_is_one_anonymous_tenant(fake):
    async with client_for(fake) as client:
        assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 200
        assert fake.last_call.share == Share()
        metrics = samples((await client.get("/metrics")).text)
        assert usage(metrics, "requests", "anonymous") == 1


async def test_a_request_limit_answers_429_with_retry_after_and_the_limits_in_headers(fake):
    async with client_for(fake, api_keys=KEYS) as client:
        first = await client.post("/v1/chat/completions", json=chat_body(), headers=auth("sk-chat"))
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        streamed = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=auth("sk-chat"))
        assert streamed.status_code == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "0"
        calls = len(fake.calls)
        refused = await client.post("/v1/chat/completions", json=chat_body(), headers=auth("sk-chat"))
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        error = assert_error_shape(refused.json())
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert "chat" in error["message"] and "requests" in error["message"]
        assert len(fake.calls) == calls  # nothing reached the engine
        # Another key is not affected; keys without limits get no x-ratelimit headers.
        other = await client.post("/v1/chat/completions", json=chat_body(), headers=auth("sk-plain"))
        assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
        metrics = samples((await client.get("/metrics", headers=auth("sk-plain"))).text)
        assert requests_total(metrics, "chat_completions", "rejected_rate_limited") == 1
        assert usage(metrics, "requests", "chat") == 3  # the refusal is on the ledger too


async def test_a_token_quota_is_charged_when_a_request_ends(fake):
    fake.script = scripted_events(["a", "b", "c", "d"], num_prompt_tokens=7)  # 7 + 4 = 11 tokens > 10/h
    async with client_for(fake, api_keys=KEYS) as client:
        ok = await client.post("/v1/completions", json=completion_body(), headers=auth("sk-night"))
        assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-tokens"] == "10"
        refused = await client.post("/v1/completions", json=completion_body(), headers=auth("sk-night"))
        assert refused.status_code == 429 and "tokens" in refused.json()["error"]["message"]
        # One token refills every 360 s; the debt of 1 and the token needed: 2 * 360 s.
        assert 700 <= int(refused.headers["Retry-After"]) <= 720


async def test_the_ledger_counts_tokens_per_key_name_and_model_and_the_log_names_the_key(fake, caplog):
    caplog.set_level(logging.INFO, logger="tokenwire.request")
    fake.script = scripted_events(["x", "y"], num_prompt_tokens=5)
    async with client_for(fake, api_keys=KEYS) as client:
        for key in ("sk-chat", "sk-chat", "sk-plain"):
            assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))).status_code == 200
        metrics = samples((await client.get("/metrics", headers=auth("sk-plain"))).text)
    assert usage(metrics, "requests", "chat") == 2
    assert usage(metrics, "prompt_tokens", "chat") == 10 and usage(metrics, "completion_tokens", "chat") == 4
    assert usage(metrics, "cached_tokens", "chat") == 0
    plain = [labels for (name, labels) in metrics if name == "tokenwire_usage_requests_total"
             and dict(labels)["key"].startswith("key-")]
    assert len(plain) == 1
    text = str(metrics)
    assert "sk-chat" not in text and "sk-plain" not in text  # names, never keys
    keys = [line.get("key") for line in request_lines(caplog)]
    assert keys[:2] == ["chat", "chat"] and keys[2].startswith("key-")


def test_a_bad_key_entry_stops_the_server_in_one_line_before_anything_loads(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "TOKENWIRE_API_KEYS": "sk-a name=a weight=heavy", "TOKENWIRE_MODEL": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "weight='heavy'" in done.stderr and "Traceback" not in done.stderr


async def test_requests_without_a_valid_key_are_on_nobodys_ledger(fake):
    async with client_for(fake, api_keys=KEYS) as client:
        assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 401
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth("wrong"))).status_code == 401
        metrics = samples((await client.get("/metrics", headers=auth("sk-plain"))).text)
    assert not [name for name, _ in metrics if name == "tokenwire_usage_requests_total"]
    assert requests_total(metrics, "chat_completions", "rejected_auth", "unknown") == 2
