"""Request limits: head size -> 431, body size (declared and streamed bytes) -> 413, receive deadline -> 408.

Both answer in OpenAI's error shape with `Connection: close`, before the engine sees anything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.api.request_limits import head_size
from app.config import Settings
from app.main import create_app
from tests.api.fake_engine import FakeEngine
from tests.api.helpers import assert_error_shape, completion_body, sse_json

CAP = 2048


@asynccontextmanager
async def client_for(fake: FakeEngine, **settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with explicit settings (no .env) over the fake engine."""
    app = create_app(Settings(_env_file=None, **settings), engine=fake)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
            yield client


def body_of_size(size: int) -> bytes:
    """A valid completion request of exactly `size` bytes (an ignored field pads it)."""
    base = json.dumps({**completion_body(), "pad": ""}).encode()
    return json.dumps({**completion_body(), "pad": "x" * (size - len(base))}).encode()


async def chunks(*parts: bytes, pause_s: float = 0.0) -> AsyncIterator[bytes]:
    """A request body without Content-Length (chunked), optionally sent slowly."""
    for part in parts:
        await asyncio.sleep(pause_s)
        yield part


def assert_refused(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["connection"] == "close"
    error = assert_error_shape(response.json())
    assert error["type"] == "invalid_request_error" and error["code"] == code
    return error


async def test_a_body_at_the_cap_is_served(fake):
    async with client_for(fake, max_body_bytes=CAP) as client:
        response = await client.post("/v1/completions", content=body_of_size(CAP),
                                     headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(fake.calls) == 1


async def test_a_declared_length_over_the_cap_is_413_before_reading(fake):
    async with client_for(fake, max_body_bytes=CAP) as client:
        response = await client.post("/v1/completions", content=body_of_size(CAP + 1),
                                     headers={"content-type": "application/json"})
    error = assert_refused(response, 413, "request_too_large")
    assert str(CAP) in error["message"]
    assert fake.calls == [] and fake.encoded_texts == []


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_streamed_bytes_over_the_cap_are_413_without_content_length(fake, path):
    body = body_of_size(CAP + 500)
    async with client_for(fake, max_body_bytes=CAP) as client:
        request = client.build_request("POST", path, content=chunks(body[:1000], body[1000:2000], body[2000:]),
                                       headers={"content-type": "application/json"})
        assert "content-length" not in request.headers
        response = await client.send(request)
    assert_refused(response, 413, "request_too_large")
    assert fake.calls == []


async def test_a_body_slower_than_the_read_deadline_is_408(fake):
    body = json.dumps(completion_body()).encode()
    async with client_for(fake, request_read_timeout_s=0.2) as client:
        started = asyncio.get_running_loop().time()
        response = await client.post("/v1/completions", content=chunks(body[:10], body[10:], pause_s=0.15),
                                     headers={"content-type": "application/json"})
        elapsed = asyncio.get_running_loop().time() - started
    error = assert_refused(response, 408, "request_timeout")
    assert "0.2 seconds" in error["message"]
    assert fake.calls == [] and elapsed < 1.0


async def test_a_body_in_slow_chunks_within_the_deadline_is_served(fake):
    body = json.dumps(completion_body()).encode()
    async with client_for(fake, request_read_timeout_s=2) as client:
        response = await client.post("/v1/completions", content=chunks(body[:10], body[10:], pause_s=0.05),
                                     headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


async def test_the_deadline_does_not_cut_a_long_response(fake):
    # After the body is complete, receive() only listens for a disconnect: a long stream is fine.
    fake.event_delay_s = 0.1
    async with client_for(fake, request_read_timeout_s=0.1) as client:
        response = await client.post("/v1/completions", json=completion_body(stream=True))
    assert response.status_code == 200
    assert sse_json(response.text)[-1]["choices"][0]["finish_reason"] == "stop"


async def test_gets_pass_through(fake):
    async with client_for(fake, max_body_bytes=1024, request_read_timeout_s=0.01) as client:
        assert (await client.get("/v1/models")).status_code == 200
        assert (await client.get("/health")).status_code == 200


# ---- the request head -----------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "query"), [("/v1/models", b""), ("/v1/models?x=1&y=%20", b"x=1&y=%20")])
def test_head_size_counts_the_bytes_as_sent(target, query):
    headers = [(b"host", b"127.0.0.1:8000"), (b"authorization", b"Bearer sk-1"), (b"x-empty", b"")]
    raw = f"GET {target} HTTP/1.1\r\n".encode() + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    scope = {"type": "http", "method": "GET", "path": "/v1/models", "raw_path": b"/v1/models",
             "query_string": query, "headers": headers}
    assert head_size(scope) == len(raw)


async def test_a_head_over_the_limit_is_431(fake):
    async with client_for(fake, max_header_bytes=1024) as client:
        small = await client.post("/v1/completions", json=completion_body(), headers={"x-pad": "a" * 700})
        large = await client.post("/v1/completions", json=completion_body(), headers={"x-pad": "a" * 1024})
        long_url = await client.get("/v1/models?q=" + "a" * 1024)
    assert small.status_code == 200
    for response in (large, long_url):
        error = assert_refused(response, 431, "request_header_fields_too_large")
        assert "1024" in error["message"]
    assert len(fake.calls) == 1
