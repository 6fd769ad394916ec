"""Limits and access against a real server with tiny limits: API keys, CORS, body size and receive
deadline, header size, admission (429 at once, 400 for what can never fit) and the generation deadline.

One extra server for the whole module (loopback only); every request is bounded in count and time.
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import ExitStack

import httpx
import openai
import pytest

from tests.e2e.default_model import NO_EOS
from tests.e2e.health import wait_idle
from tests.e2e.sse_client import finish_reason

pytestmark = pytest.mark.e2e

KEY = "sk-e2e-limits"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "http://app.test"
MAX_BODY = 4096


@pytest.fixture(scope="module")
def limited(start_server):
    server = start_server(
        TOKENWIRE_MAX_RUNNING="2", TOKENWIRE_MAX_WAITING="2", TOKENWIRE_KV_CACHE_MEMORY_MB="16",
        TOKENWIRE_API_KEYS=KEY, TOKENWIRE_CORS_ORIGINS=ORIGIN, TOKENWIRE_MAX_BODY_BYTES=str(MAX_BODY),
        TOKENWIRE_MAX_HEADER_BYTES="4096", TOKENWIRE_REQUEST_READ_TIMEOUT_S="1",
    )
    yield server
    server.stop()


@pytest.fixture
def http(limited):
    with httpx.Client(base_url=limited.url, headers=AUTH, timeout=httpx.Timeout(60, connect=10)) as client:
        yield client


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# ---- access ---------------------------------------------------------------------------------------


def test_keys_guard_everything_but_health(limited):
    with httpx.Client(base_url=limited.url, timeout=30) as anonymous:
        assert anonymous.get("/health").status_code == 200
        assert error_of(anonymous.get("/v1/models"), 401)["code"] == "invalid_api_key"
        wrong = anonymous.post("/v1/completions", headers={"Authorization": "Bearer nope"},
                               json={"model": limited.model, "prompt": "Hi", "max_tokens": 1})
        assert error_of(wrong, 401)["code"] == "invalid_api_key"
        assert anonymous.get("/v1/models", headers=AUTH).status_code == 200


def test_the_openai_client_sends_its_key(limited):
    with openai.OpenAI(base_url=f"{limited.url}/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        answer = client.completions.create(model=limited.model, prompt="Hello", max_tokens=2, temperature=0,
                                           logit_bias=NO_EOS)
        assert answer.usage.completion_tokens == 2
    with openai.OpenAI(base_url=f"{limited.url}/v1", api_key="wrong", max_retries=0, timeout=60) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_cors_preflight_for_the_configured_origin(limited):
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    preflight = httpx.options(f"{limited.url}/v1/chat/completions", headers=headers, timeout=30)
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN


# ---- the HTTP edge ---------------------------------------------------------------------------------


def test_a_large_body_is_413_declared_or_streamed(http, limited):
    body = b'{"model": "%s", "prompt": "%s"}' % (limited.model.encode(), b"x" * MAX_BODY)
    declared = http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert error_of(declared, 413)["code"] == "request_too_large"
    chunked = http.post("/v1/completions", content=iter([body[:2000], body[2000:]]),
                        headers={"Content-Type": "application/json"})
    assert error_of(chunked, 413)["code"] == "request_too_large"


def test_a_slow_body_gets_408_and_the_connection_is_closed(limited):
    host, port = limited.url.removeprefix("http://").split(":")
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"model": ')  # and then nothing more
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(4096):  # ends when the server closes the connection
            received += chunk
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b'"request_timeout"' in received
    assert 0.8 < elapsed < 5


def test_oversized_headers_are_refused(http, limited):
    whole = http.get("/v1/models", headers={"X-Padding": "a" * 8000})
    assert error_of(whole, 431)["code"] == "request_header_fields_too_large"
    # A head still arriving past the limit is cut off by uvicorn's h11 parser before it is complete.
    host, port = limited.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nX-Padding: " + b"a" * 6000)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400"), received[:200]
    assert http.get("/v1/models").status_code == 200


# ---- admission -------------------------------------------------------------------------------------


def test_what_can_never_fit_is_400_at_once(http, limited):
    too_long = http.post("/v1/completions", json={"model": limited.model, "prompt": "Hi",
                                                  "max_tokens": limited.max_model_len})
    assert error_of(too_long, 400)["code"] == "context_length_exceeded"
    over_kv = http.post("/v1/completions", json={"model": limited.model, "prompt": "Hi", "max_tokens": 2000})
    error = error_of(over_kv, 400)
    assert error["code"] == "context_length_exceeded" and "KV-cache" in error["message"]


def test_past_running_plus_waiting_a_request_gets_429_at_once(http, limited):
    body = {"model": limited.model, "prompt": "Once upon a time", "max_tokens": 200, "temperature": 0.8,
            "seed": 1, "logit_bias": NO_EOS, "stream": True}
    with ExitStack() as streams:
        for _ in range(4):  # MAX_RUNNING=2 + MAX_WAITING=2
            client = streams.enter_context(httpx.Client(base_url=limited.url, headers=AUTH, timeout=60))
            response = streams.enter_context(client.stream("POST", "/v1/completions", json=body))
            assert response.status_code == 200
        started = time.monotonic()
        refused = http.post("/v1/completions", json={**body, "stream": False})
        assert time.monotonic() - started < 5
        assert error_of(refused, 429)["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1
    assert wait_idle(http)["active_requests"] == 0  # closing the streams aborted them


# ---- the generation deadline -----------------------------------------------------------------------


def test_a_request_deadline_ends_the_stream_with_timeout(http, limited):
    body = {"model": limited.model, "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0.8,
            "seed": 3, "logit_bias": NO_EOS, "stream": True, "timeout": 0.5}
    started = time.monotonic()
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert finish_reason(chunks) == "timeout"
    assert time.monotonic() - started < 10
    assert wait_idle(http)["kv_cache_bytes"] == 0
