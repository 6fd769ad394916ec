"""Overload: 200 concurrent requests against a server that takes 4 running + 4 waiting.

The surplus gets 429 with `Retry-After` at once, not after waiting for a slot: a slot frees only when
an accepted request ends, so every 429 must come before the first accepted request ends, on the client's
clock and on the server's (its JSON request log). Measured alone: 429s within 0.05-0.6 s, accepted
requests end after 1.5 s or more; on a busier machine both stretch, which is why the bound is relative.
Nothing gets a 5xx, every accepted request (streamed or not) completes with a valid response, and afterwards the
server is idle and serves again. One extra server for the module (loopback only).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.default_model import NO_EOS
from tests.e2e.sse_client import parse_events

pytestmark = pytest.mark.e2e

MAX_RUNNING = 4
MAX_WAITING = 4
REQUESTS = 200
MAX_TOKENS = 24
# With NO_EOS every accepted request runs its full max_tokens, so the first eight stay in flight while
# the rest arrive.


@pytest.fixture(scope="module")
def small(start_server):
    server = start_server(TOKENWIRE_MAX_RUNNING=str(MAX_RUNNING), TOKENWIRE_MAX_WAITING=str(MAX_WAITING),
                          TOKENWIRE_LOG_FORMAT="json")
    yield server
    server.stop()


@dataclass
class Outcome:
    index: int
    stream: bool
    status: int
    latency_s: float  # sending to the status line
    finished_s: float  # sending to the end of the body
    retry_after: str | None
    body: bytes


def body_for(i: int, model: str) -> tuple[str, dict]:
    stream = i % 2 == 0
    common = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0.7, "seed": i, "logit_bias": NO_EOS,
              "stream": stream}
    if i % 4 < 2:
        return "/v1/completions", {**common, "prompt": f"Request {i}: once upon a time"}
    return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": f"Say {i} things."}]}


async def send(http: httpx.AsyncClient, i: int, model: str, start: asyncio.Event) -> Outcome:
    path, body = body_for(i, model)
    await start.wait()  # all 200 go out together
    sent = time.monotonic()
    async with http.stream("POST", path, json=body) as response:
        latency = time.monotonic() - sent
        raw = await response.aread()
    return Outcome(i, body["stream"], response.status_code, latency, time.monotonic() - sent,
                   response.headers.get("retry-after"), raw)


async def flood(url: str, model: str) -> list[Outcome]:
    limits = httpx.Limits(max_connections=REQUESTS + 10, max_keepalive_connections=REQUESTS + 10)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(120, connect=20)) as http:
        start = asyncio.Event()
        tasks = [asyncio.create_task(send(http, i, model, start)) for i in range(REQUESTS)]
        await asyncio.sleep(0.2)  # every task is parked at `start`
        start.set()
        return await asyncio.gather(*tasks)


def check_accepted(outcome: Outcome) -> None:
    chat = (outcome.index % 4) >= 2
    if not outcome.stream:
        body = json.loads(outcome.body)
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length", body
        assert (choice["message"]["content"] if chat else choice["text"]), body
        assert body["usage"]["completion_tokens"] == MAX_TOKENS, body
        return
    events = parse_events(outcome.body)
    reasons = [e["choices"][0]["finish_reason"] for e in events]
    assert all(r is None for r in reasons[:-1]) and reasons[-1] == "length", reasons


def server_times(server, outcome: str, completion_tokens: int = 0) -> list[float]:
    """Arrival-to-answer seconds of the requests with this outcome, from the server's JSON request log."""
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    return [line["e2e_s"] for line in lines if line.get("message") == "request" and line.get("outcome") == outcome
            and line.get("completion_tokens") == completion_tokens]


def test_the_surplus_gets_429_at_once_and_the_rest_complete(small):
    outcomes = asyncio.run(flood(small.url, small.model))

    statuses = sorted({o.status for o in outcomes})
    assert set(statuses) <= {200, 429}, [(o.status, o.body[:200]) for o in outcomes if o.status not in (200, 429)]
    accepted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    # The first eight to arrive are all admitted; later arrivals only as earlier ones finish.
    assert MAX_RUNNING + MAX_WAITING <= len(accepted) <= 3 * (MAX_RUNNING + MAX_WAITING), len(accepted)
    assert len(refused) >= REQUESTS - 3 * (MAX_RUNNING + MAX_WAITING)

    first_end = min(o.finished_s for o in accepted)
    late = sorted(o.latency_s for o in refused if o.latency_s >= first_end)
    assert not late, f"{len(late)} of {len(refused)} 429s came after an accepted request ended ({first_end:.2f}s)"
    served_in, served_ok = server_times(small, "rejected_overloaded"), server_times(small, "length", MAX_TOKENS)
    assert len(served_in) == len(refused), (len(served_in), len(refused))
    assert max(served_in) < min(served_ok), (sorted(served_in)[-3:], sorted(served_ok)[:3])
    for o in refused:
        assert o.retry_after is not None and o.retry_after.isdigit() and int(o.retry_after) >= 1, o
        error = json.loads(o.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "rate_limit_error" and error["code"] == "overloaded", error
    for o in accepted:
        check_accepted(o)

    with httpx.Client(base_url=small.url, timeout=60) as http:
        deadline = time.monotonic() + 10
        while (health := http.get("/health").json())["active_requests"] or health["kv_cache_bytes"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["status"] == "ok" and health["running"] == 0 and health["waiting"] == 0, health
        again = http.post("/v1/completions", json={"model": small.model, "prompt": "Hello", "max_tokens": 2,
                                                      "temperature": 0, "logit_bias": NO_EOS})
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2, again.text
    print(f"accepted {len(accepted)}, refused {len(refused)}, slowest 429 "
          f"{max(o.latency_s for o in refused):.3f}s")
