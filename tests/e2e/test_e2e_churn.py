"""Churn: 64 concurrent streaming clients per round, about 10% of them leaving at random points (before
the response starts, right after the headers, or mid-stream), three rounds with a fixed seed (after a
warm-up round; see WARM_UP_TOKENS).

After each round the engine is idle again within seconds (no running, waiting or active request, no KV
cache), and the server's RSS after round 3 is within 5% of its RSS after round 1 (nothing left behind
grows per round). Every client that stayed gets a complete, well-formed stream ending in [DONE].
While a round runs, /health and /ready (polled from another thread) answer 200 within PROBE_QUICK_S.
Runs against the shared session server (TOKENWIRE_MAX_RUNNING 64).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import psutil
import pytest

from tests.e2e.default_model import NO_EOS
from tests.e2e.health import wait_idle
from tests.e2e.sse_client import parse_events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 20260101
CLIENTS = 64
ROUNDS = 3
LEAVERS = 7  # about 10% of the clients
IDLE_WITHIN_S = 5.0
# WARM_UP_TOKENS: RSS is a high-water mark of the allocator's arenas, which the first wide batches raise
# (measured on 2 CPUs without a warm-up, RSS after each round: 986, 1047, 1111, 1115, 1116, 1101 MiB: a
# plateau after 3 rounds, not a leak). So round 0 runs all 64 clients to 32 tokens each, a wider batch
# than the measured rounds reach. The other creep, oneDNN's kernel per (batch rows, weight) shape
# (~0.35 MiB each), is paid at start-up: the server builds them for every decode batch size then.
WARM_UP_TOKENS = 32
RSS_TOLERANCE = 0.05
PROMPTS = ["Once upon a time", "The three primary colors are", "def fibonacci(n):", "Dear diary, today",
           "The capital of France is", "List of fruits:"]


@dataclass(frozen=True)
class Client:
    index: int
    path: str
    body: dict
    leave: str | None  # None (stays), "before-headers", "after-headers" or "mid-stream"
    leave_after: float | int = 0  # seconds (before-headers) or data events (mid-stream)


def plan_warm_up(model: str) -> list[Client]:
    return [Client(c.index, c.path, {**c.body, "max_tokens": WARM_UP_TOKENS, "logit_bias": NO_EOS}, None)
            for c in plan_round(0, model)]


def plan_round(round_no: int, model: str) -> list[Client]:
    rng = random.Random(SEED + round_no)
    leavers = dict(zip(rng.sample(range(CLIENTS), LEAVERS),
                       ["before-headers", "before-headers", "after-headers", "after-headers",
                        "mid-stream", "mid-stream", "mid-stream"]))
    clients = []
    for i in range(CLIENTS):
        chat = i % 2 == 1
        path = "/v1/chat/completions" if chat else "/v1/completions"
        prompt = rng.choice(PROMPTS)
        body = {"model": model, "stream": True, "temperature": 0.8, "seed": rng.randrange(2**31),
                "max_tokens": rng.randint(4, 24)}
        body.update({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        leave = leavers.get(i)
        if leave is None:
            clients.append(Client(i, path, body, None))
            continue
        body.update(max_tokens=256, logit_bias=NO_EOS)
        after = rng.uniform(0.0, 0.02) if leave == "before-headers" else rng.randint(1, 6)
        clients.append(Client(i, path, body, leave, after))
    return clients


def check_complete(client: Client, raw: bytes) -> None:
    events = parse_events(raw)
    assert len({(e["id"], e["created"], e["model"]) for e in events}) == 1
    chat = client.path.endswith("chat/completions")
    assert all(e["object"] == ("chat.completion.chunk" if chat else "text_completion") for e in events)
    with_usage = client.body.get("stream_options", {}).get("include_usage", False)
    usage = None
    if with_usage:
        usage_chunk = events.pop()
        assert usage_chunk["choices"] == [] and usage_chunk["usage"], usage_chunk
        usage = usage_chunk["usage"]
        assert all(e["usage"] is None for e in events)
    reasons = [e["choices"][0]["finish_reason"] for e in events]
    assert all(r is None for r in reasons[:-1]) and reasons[-1] in ("stop", "length"), reasons
    if chat:
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    if usage is not None:
        assert 1 <= usage["completion_tokens"] <= client.body["max_tokens"], usage
        if reasons[-1] == "length":
            assert usage["completion_tokens"] == client.body["max_tokens"], usage


async def run_client(client: Client, url: str) -> str:
    """Run one client; returns what it did ("complete" or how it left)."""
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120, connect=10)) as http:
        if client.leave == "before-headers":
            task = asyncio.create_task(http.post(client.path, json=client.body))
            await asyncio.sleep(client.leave_after)
            if task.done():  # answered before we could leave: nothing to check, it must still be a 200
                assert (await task).status_code == 200
                return "complete-early"
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            return "left-before-headers"
        async with http.stream("POST", client.path, json=client.body) as response:
            assert response.status_code == 200, await response.aread()
            if client.leave == "after-headers":
                return "left-after-headers"  # leaving the block unread closes the connection
            if client.leave == "mid-stream":
                seen = 0
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        assert line != "data: [DONE]" and '"error"' not in line, line
                        seen += 1
                        if seen >= client.leave_after:
                            return "left-mid-stream"
                raise AssertionError("the stream ended before the client meant to leave")
            check_complete(client, await response.aread())
            return "complete"


async def run_round(clients: list[Client], url: str) -> list[str]:
    return await asyncio.gather(*(run_client(c, url) for c in clients))


def test_three_rounds_of_churn_leave_nothing_behind(server, http):
    assert server.process is not None, "needs the server's process to read its RSS"
    process = psutil.Process(server.process.pid)
    wait_idle(http, IDLE_WITHIN_S)
    assert asyncio.run(run_round(plan_warm_up(server.model), server.url)) == ["complete"] * CLIENTS
    wait_idle(http, IDLE_WITHIN_S)
    rss: list[int] = []
    for round_no in range(1, ROUNDS + 1):
        clients = plan_round(round_no, server.model)
        started = time.monotonic()
        outcomes = asyncio.run(run_round(clients, server.url))
        elapsed = time.monotonic() - started
        stayed = [o for c, o in zip(clients, outcomes) if c.leave is None]
        assert stayed == ["complete"] * (CLIENTS - LEAVERS), outcomes
        assert sum(o.startswith("left") for o in outcomes) >= LEAVERS - 2, outcomes
        wait_idle(http, IDLE_WITHIN_S)
        assert server.process.poll() is None
        rss.append(process.memory_info().rss)
        print(f"round {round_no}: {elapsed:.1f}s, RSS {rss[-1] / 2**20:.0f} MiB, {sorted(Counter(outcomes).items())}")
    assert abs(rss[-1] - rss[0]) <= RSS_TOLERANCE * rss[0], [f"{r / 2**20:.1f} MiB" for r in rss]
    answer = http.post("/v1/completions", json={"model": server.model, "prompt": "Hello", "max_tokens": 2,
                                                "temperature": 0, "logit_bias": NO_EOS})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2


def test_a_non_streamed_client_that_leaves_frees_its_slot(server, http):
    # Bounded even with the bug: the request's own deadline ends it 8 s after admission.
    body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0.8,
            "seed": 5, "logit_bias": NO_EOS, "timeout": 8}
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(1.0, connect=5))
        left = time.monotonic()
        while (health := http.get("/health").json())["active_requests"]:
            assert time.monotonic() - left < 3, f"still generating 3 s after the client left: {health}"
            time.sleep(0.05)
    finally:
        wait_idle(http, 15)  # leave the shared server idle for the next test either way


PROBE_QUICK_S = 0.5


@dataclass(frozen=True)
class ProbeAnswer:
    path: str
    status: int
    seconds: float
    running: int | None  # /health's count of running sequences


def poll_probes(url: str, stop: threading.Event, seen: list[ProbeAnswer]) -> None:
    """From a thread of its own: /health and /ready in turn until `stop`."""
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            for path in ("/health", "/ready"):
                sent = time.monotonic()
                response = http.get(path)
                seconds = time.monotonic() - sent
                seen.append(ProbeAnswer(path, response.status_code, seconds, response.json().get("running")))
            time.sleep(0.05)


def test_probes_answer_fast_while_64_streams_decode(server, http):
    wait_idle(http, IDLE_WITHIN_S)
    seen: list[ProbeAnswer] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_probes, args=(server.url, stop, seen), daemon=True)
    poller.start()
    try:
        asyncio.run(run_round(plan_round(ROUNDS + 2, server.model), server.url))
    finally:
        stop.set()
        poller.join(15)
    busiest = max(a.running or 0 for a in seen)
    assert busiest >= CLIENTS // 2, f"the load never got high: at most {busiest} running"
    assert {a.path for a in seen} == {"/health", "/ready"} and len(seen) >= 10, seen
    assert all(a.status == 200 for a in seen), [a for a in seen if a.status != 200]
    slowest = sorted(seen, key=lambda a: a.seconds)[-3:]
    print(f"{len(seen)} probes, at most {busiest} running; slowest: {slowest}")
    assert slowest[-1].seconds < PROBE_QUICK_S, slowest
    wait_idle(http, IDLE_WITHIN_S)
