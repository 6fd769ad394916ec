"""API keys over every route the real server publishes, and slow clients that stall mid-head or mid-body.

One extra server (loopback only) with two API keys, a 2 s head and a 3 s body deadline and room for exactly one
request (TOKENWIRE_MAX_RUNNING=1, TOKENWIRE_MAX_WAITING=0): a stalled client that held an engine slot
would turn the normal request beside it into a 429.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.e2e.default_model import NO_EOS
from tests.e2e.health import wait_idle

pytestmark = pytest.mark.e2e

KEYS = ("sk-e2e-sweep-one", "sk-e2e-sweep-two")
READ_TIMEOUT_S = 3.0
HEAD_TIMEOUT_S = 2.0
MARGIN_S = 3.0
OPEN = {"/health", "/ready", "/"}  # "/": the playground page (its calls need the key)
# FastAPI serves these itself; they are not in the spec's `paths` but are routes all the same.
FRAMEWORK_ROUTES = [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")]
WRONG_AUTHORIZATIONS = [
    "Bearer sk-wrong",
    "Bearer",  # no token (a trailing space is not a legal header value; h11 would strip it anyway)
    f"Basic {KEYS[0]}",
    KEYS[0],  # no scheme
    f"Bearer {KEYS[0]}x",
    f"Bearer {KEYS[0][:-1]}",
    f"Bearer {KEYS[0].upper()}",
    f"Bearer {','.join(KEYS)}",  # the raw setting is not a key
    f"Token {KEYS[1]}",
]


@pytest.fixture(scope="module")
def guarded(start_server):
    server = start_server(TOKENWIRE_API_KEYS=",".join(KEYS), TOKENWIRE_REQUEST_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
                          TOKENWIRE_REQUEST_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
                          TOKENWIRE_MAX_RUNNING="1", TOKENWIRE_MAX_WAITING="0")
    yield server
    server.stop()


@pytest.fixture
def http(guarded):
    with httpx.Client(base_url=guarded.url, headers={"Authorization": f"Bearer {KEYS[0]}"},
                      timeout=httpx.Timeout(60, connect=10)) as client:
        yield client


def routes_of(http: httpx.Client) -> list[tuple[str, str]]:
    spec = http.get("/openapi.json")
    assert spec.status_code == 200, spec.text
    found = [(method.upper(), path) for path, item in spec.json()["paths"].items() for method in item]
    assert ("POST", "/v1/completions") in found and ("GET", "/health") in found, found
    return found + FRAMEWORK_ROUTES + [("GET", "/v1/no-such-route"), ("POST", "/v1/embeddings")]


def request_body(path: str, model: str) -> dict | None:
    if path == "/v1/completions":
        return {"model": model, "prompt": "Hi", "max_tokens": 1}
    if path == "/v1/chat/completions":
        return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    return None


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.method, response.request.url, response.text[:200])
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    if response.request.url.path.startswith("/v1/messages"):  # Anthropic's API answers in its own shape
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
        return
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == "invalid_api_key", body


# ---- the key sweep -------------------------------------------------------------------------------------


def test_every_route_needs_a_key_except_the_probes(guarded, http):
    routes = routes_of(http)
    checked = 0
    with httpx.Client(base_url=guarded.url, timeout=httpx.Timeout(60, connect=10)) as anonymous:
        for method, path in routes:
            body = request_body(path, guarded.model)
            attempts = [{}] + [{"Authorization": value} for value in WRONG_AUTHORIZATIONS]
            for headers in attempts:
                response = anonymous.request(method, path, json=body, headers=headers)
                checked += 1
                if path in OPEN:
                    assert response.status_code == 200, (method, path, headers, response.text[:200])
                else:
                    assert_401(response)
            for key in KEYS:
                for scheme in ("Bearer", "bearer"):
                    response = anonymous.request(method, path, json=body, headers={"Authorization": f"{scheme} {key}"})
                    checked += 1
                    assert response.status_code != 401, (method, path, response.text[:200])
                    assert response.status_code < 500, (method, path, response.text[:200])
                    if (method, path) in [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                                          ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/openapi.json")]:
                        assert response.status_code == 200, (method, path, response.text[:200])
    assert checked >= 150
    assert http.get("/health").json()["status"] == "ok"


def test_a_401_does_not_wait_for_the_body(guarded):
    """Without a key a request is refused on its headers: a body announced but never sent is not awaited."""
    host, port = guarded.url.removeprefix("http://").split(":")
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 10000000\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head.encode())
        received = sock.recv(65536)
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 401"), received[:200]
    assert elapsed < READ_TIMEOUT_S / 2, elapsed


# ---- slow clients ---------------------------------------------------------------------------------------


class Stalled:
    """A raw connection that sends the head and part of a body, then nothing; records the answer."""

    def __init__(self, url: str, head_extra: str, first_bytes: bytes) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=READ_TIMEOUT_S + MARGIN_S + 5)
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEYS[1]}\r\n"
                f"Content-Type: application/json\r\n{head_extra}\r\n")
        self.sock.sendall(head.encode() + first_bytes)
        self.stalled_at = time.monotonic()
        self.received = b""
        self.closed_after: float | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(4096):  # ends when the server closes the connection
                self.received += chunk
            self.closed_after = time.monotonic() - self.stalled_at
        except OSError:
            pass
        finally:
            self.sock.close()


def test_stalled_bodies_get_408_and_hold_no_slot(guarded, http):
    half_body = json.dumps({"model": guarded.model, "prompt": "Hello there", "max_tokens": 2}).encode()
    stalled = [
        Stalled(guarded.url, f"Content-Length: {len(half_body)}\r\n", half_body[: len(half_body) // 2]),
        Stalled(guarded.url, "Content-Length: 200\r\n", b""),  # the head only
        Stalled(guarded.url, "Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (10, half_body[:10])),
    ]
    time.sleep(0.3)
    # Meanwhile: the engine holds none of them, and a normal request (the one slot there is) is served.
    assert http.get("/health").json()["active_requests"] == 0
    with http.stream("POST", "/v1/completions", json={"model": guarded.model, "prompt": "Hello", "max_tokens": 4,
                                                      "temperature": 0, "logit_bias": NO_EOS,
                                                      "stream": True}) as response:
        assert response.status_code == 200, response.read()
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and '"finish_reason":"length"' in events[-2], events
    served_at = max(time.monotonic() - s.stalled_at for s in stalled)
    assert served_at < READ_TIMEOUT_S, f"the normal request took until {served_at:.1f}s into the stall"
    assert all(s.closed_after is None for s in stalled), "a stalled client was cut off before its deadline"
    assert wait_idle(http, timeout_s=2)["active_requests"] == 0

    for s in stalled:
        s.thread.join(READ_TIMEOUT_S + MARGIN_S + 5)
        assert s.received.startswith(b"HTTP/1.1 408"), s.received[:300]
        assert b'"request_timeout"' in s.received and b"connection: close" in s.received.lower()
        assert s.closed_after is not None, "the server never closed the stalled connection"
        assert READ_TIMEOUT_S - 0.5 < s.closed_after < READ_TIMEOUT_S + MARGIN_S, s.closed_after
    assert wait_idle(http)["status"] == "ok"
    again = http.post("/v1/completions", json={"model": guarded.model, "prompt": "Hello", "max_tokens": 2,
                                               "temperature": 0, "logit_bias": NO_EOS})
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2, again.text


def trickle_head(url: str, gap_s: float = 0.25) -> tuple[bytes, float | None]:
    """Send a request head one byte per `gap_s`, never ending it; (what came back, seconds until closed)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=gap_s) as sock:
        started = time.monotonic()
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        received = b""
        while time.monotonic() - started < HEAD_TIMEOUT_S + MARGIN_S:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                if not received:  # write only while nothing came back: a write after the close resets
                    sock.sendall(b"a")
                continue
            if not chunk:
                return received, time.monotonic() - started
            received += chunk
    return received, None


def test_a_head_that_never_ends_gets_408_and_is_closed(guarded):
    received, closed_after = trickle_head(guarded.url)
    assert received.startswith(b"HTTP/1.1 408"), received[:300]
    assert b'"request_timeout"' in received and b"connection: close" in received.lower(), received
    assert closed_after is not None, "the server never closed the trickling connection"
    assert HEAD_TIMEOUT_S - 0.5 < closed_after < HEAD_TIMEOUT_S + MARGIN_S, closed_after


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(guarded):
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=HEAD_TIMEOUT_S + MARGIN_S) as sock:
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert HEAD_TIMEOUT_S - 0.5 < time.monotonic() - started < HEAD_TIMEOUT_S + MARGIN_S


def test_the_head_deadline_does_not_cut_a_long_response_or_the_next_request(guarded, http):
    # Sampled (no long prompt-lookup runs) and long enough to outlast the deadline on a fast machine too.
    body = {"model": guarded.model, "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 1.0,
            "seed": 7, "stream": True, "logit_bias": NO_EOS}
    started = time.monotonic()
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert time.monotonic() - started > HEAD_TIMEOUT_S, "the response should outlast the head deadline"
    assert events[-1] == "data: [DONE]" and '"finish_reason":"length"' in events[-2], events[-3:]
    time.sleep(HEAD_TIMEOUT_S / 2)  # idle on the kept-alive connection, within its keep-alive time
    again = http.post("/v1/completions", json={"model": guarded.model, "prompt": "Hello", "max_tokens": 2})
    assert again.status_code == 200, again.text
