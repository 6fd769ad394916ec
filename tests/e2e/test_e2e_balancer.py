"""tokenwire replicas behind HAProxy, with the very configuration file docker-compose.scale.yml uses.

Debian's haproxy binary runs on loopback in front of real `python -m app` processes (the tiny model,
so three start quickly; one test puts the default model behind it): load spreads by least
connections, one conversation stays on one replica, SSE passes through token by token, a client that
leaves aborts the replica's generation, SIGTERM to a replica under load loses no request, and a killed
replica's streams end in an error the client sees while every other request completes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO_ROOT, Server, free_port
from tests.e2e.default_model import NO_EOS
from tests.e2e.health import metric_value

pytestmark = pytest.mark.e2e

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
if HAPROXY is None:
    pytest.skip("needs Debian's haproxy (apt-get install haproxy; .ci/run installs it)", allow_module_level=True)

CONFIG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
MODEL_MAP = REPO_ROOT / "deploy" / "haproxy" / "models.map"
SLOTS = 8
POOL_B_SLOTS = 4
REPLICA_HEADER = "x-tokenwire-replica"


@dataclass
class Balancer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_balancer(replicas: list[str], log_dir: Path, maxconn: int = 320, pool_b: tuple[str, ...] = (),
                   model_map: Path = MODEL_MAP) -> Balancer:
    """HAProxy with CONFIG, the given replica URLs in the first slots (of the `replicas` pool, and of
    `pool_b`), the rest unresolvable (idle)."""
    port = free_port()
    env = {**os.environ, "TW_LB_BIND": f"127.0.0.1:{port}", "TW_DNS": "127.0.0.1:1",
           "TW_REPLICA_MAXCONN": str(maxconn), "TW_MODEL_MAP": str(model_map)}
    for prefix, urls, slots in (("TW_REPLICA_", replicas, SLOTS), ("TW_POOL_B_", pool_b, POOL_B_SLOTS)):
        for slot in range(1, slots + 1):
            env[f"{prefix}{slot}"] = urls[slot - 1].removeprefix("http://") if slot <= len(urls) else "unused.invalid:8000"
    log_path = log_dir / "haproxy.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(CONFIG)], env=env, stdout=log, stderr=subprocess.STDOUT)
    balancer = Balancer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 15
    while True:  # every replica up: each has answered /ready to `rise` checks
        assert process.poll() is None, log_path.read_text()
        seen = _replicas_answering(balancer.url, len(replicas))
        if len(seen) == len(replicas):
            return balancer
        assert time.monotonic() < deadline, f"replicas seen through HAProxy: {seen}"
        time.sleep(0.3)


def _replicas_answering(url: str, count: int) -> set[str]:
    with ThreadPoolExecutor(4 * count) as pool:
        responses = list(pool.map(lambda _: _try_get(f"{url}/v1/models"), range(4 * count)))
    return {r.headers.get(REPLICA_HEADER) for r in responses if r is not None and r.status_code == 200}


def _try_get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def served_by_replica(replicas: list[Server]) -> list[float]:
    """Generation requests each replica counted (its own /metrics), in replica order."""
    totals = []
    for replica in replicas:
        with httpx.Client(base_url=replica.url, timeout=10) as http:
            totals.append(sum(metric_value(http, "tokenwire_requests_total", endpoint=endpoint, outcome=outcome)
                              for endpoint in ("completions", "chat_completions")
                              for outcome in ("stop", "length", "cancelled", "error", "timeout")))
    return totals


@dataclass
class Streamed:
    replica: str | None
    events: list[float]  # arrival time of each data event
    done: bool
    error: str | None


def stream(url: str, body: dict, headers: dict | None = None, read_events: int | None = None,
           started: threading.Semaphore | None = None) -> Streamed:
    """POST a streamed completion through `url`; stop reading after `read_events` if given; release
    `started` at the first event."""
    events, done, error, replica = [], False, None, None
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, headers=headers,
                          timeout=httpx.Timeout(120, connect=10)) as response:
            replica = response.headers.get(REPLICA_HEADER)
            if response.status_code != 200:
                return Streamed(replica, [], False, f"HTTP {response.status_code}: {response.read()[:200]!r}")
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                if '"error"' in line:
                    error = line
                events.append(time.monotonic())
                if started is not None and len(events) == 1:
                    started.release()
                if read_events is not None and len(events) >= read_events:
                    break
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Streamed(replica, events, done, error)


def _body(model: str, max_tokens: int = 24, **extra) -> dict:
    """A greedy completion that runs to max_tokens (the special tokens, EOS among them, are banned)."""
    return {"model": model, "prompt": "The lighthouse keeper said", "max_tokens": max_tokens, "temperature": 0,
            "logit_bias": NO_EOS, **extra}


@pytest.fixture(scope="module")
def long_tiny_model(tmp_path_factory) -> Path:
    """The tiny model with room for 4,096 positions, so a stream lasts seconds (a kill can land mid-way)."""
    from tests.conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-long"), max_position_embeddings=4096)


@pytest.fixture(scope="module")
def start_replicas(start_server, long_tiny_model) -> Callable[..., list[Server]]:
    def start(count: int, **settings: str) -> list[Server]:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: start_server(TOKENWIRE_MODEL=str(long_tiny_model), **settings),
                                 range(count)))
    return start


def wait_started(started: threading.Semaphore, count: int) -> None:
    for _ in range(count):
        assert started.acquire(timeout=60), "the streams did not start"


@pytest.fixture(scope="module")
def cluster(start_replicas, tmp_path_factory) -> Iterator[tuple[Balancer, list[Server]]]:
    replicas = start_replicas(3)
    balancer = start_balancer([r.url for r in replicas], tmp_path_factory.mktemp("haproxy"))
    yield balancer, replicas
    balancer.stop()
    for replica in replicas:
        replica.stop()


def _order(replicas: list[Server]) -> dict[str, int]:
    """HAProxy's server name (tw1, tw2, ...) -> index in `replicas`."""
    return {f"tw{i + 1}": i for i in range(len(replicas))}


def test_the_model_field_picks_the_pool(start_replicas, start_server, long_tiny_model, tmp_path_factory):
    """models.map sends one model's requests to pool_b's replica; every other model, and requests
    without a body, go to the `replicas` pool."""
    folder = tmp_path_factory.mktemp("haproxy-pools")
    (folder / "models.map").write_text("# a coder model on its own pool\ncoder pool_b\n")
    default = start_replicas(1)[0]
    coder = start_server(TOKENWIRE_MODEL=str(long_tiny_model), TOKENWIRE_SERVED_MODEL_NAME="coder")
    balancer = start_balancer([default.url], folder, pool_b=(coder.url,), model_map=folder / "models.map")
    try:
        deadline = time.monotonic() + 15
        while (routed := stream(balancer.url, _body("coder", 4))).replica != "b1":
            assert time.monotonic() < deadline, routed  # until pool_b's health checks pass
            time.sleep(0.3)
        for model, replica in ((default.model, "tw1"), ("coder", "b1")):
            results = [stream(balancer.url, _body(model, 4)) for _ in range(3)]
            assert all(r.done for r in results) and {r.replica for r in results} == {replica}, results
        listed = httpx.get(f"{balancer.url}/v1/models", timeout=10)
        assert listed.headers[REPLICA_HEADER] == "tw1" and listed.json()["data"][0]["id"] == default.model
    finally:
        balancer.stop()
        default.stop()
        coder.stop()


def test_load_spreads_across_replicas(cluster):
    balancer, replicas = cluster
    before = served_by_replica(replicas)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: stream(balancer.url, _body(replicas[0].model, 48)), range(12)))
    assert all(r.done and r.error is None for r in results), [r.error for r in results]
    gained = [after - first for after, first in zip(served_by_replica(replicas), before)]
    assert sum(gained) == 12 and all(n >= 2 for n in gained), gained
    assert {r.replica for r in results} == set(_order(replicas))


@pytest.mark.parametrize("affinity", ["header", "user"])
def test_one_conversation_stays_on_one_replica(cluster, affinity):
    balancer, replicas = cluster
    for session in ("alice", "bob", "carol"):
        headers = {"X-Session-Id": session} if affinity == "header" else None
        extra = {"user": session} if affinity == "user" else {}
        turns = [stream(balancer.url, _body(replicas[0].model, 4, **extra), headers) for _ in range(5)]
        assert all(t.done for t in turns)
        assert len({t.replica for t in turns}) == 1, [t.replica for t in turns]


def test_a_client_that_leaves_aborts_the_replicas_generation(cluster):
    balancer, replicas = cluster
    cancelled = lambda: sum(metric_value(httpx.Client(base_url=r.url), "tokenwire_requests_total",  # noqa: E731
                                         endpoint="completions", outcome="cancelled") for r in replicas)
    before = cancelled()
    left = stream(balancer.url, _body(replicas[0].model, 3000), read_events=3)
    assert len(left.events) == 3 and not left.done
    deadline = time.monotonic() + 10
    while cancelled() < before + 1:
        assert time.monotonic() < deadline, "no replica saw the client leave"
        time.sleep(0.1)


def test_sigterm_under_load_loses_no_request(start_replicas, tmp_path_factory):
    replicas = start_replicas(2, TOKENWIRE_DRAIN_TIMEOUT_S="30")
    balancer = start_balancer([r.url for r in replicas], tmp_path_factory.mktemp("haproxy-drain"))
    try:
        body, started = _body(replicas[0].model, 1500), threading.Semaphore(0)
        with ThreadPoolExecutor(16) as pool:
            first = [pool.submit(stream, balancer.url, body, started=started) for _ in range(8)]
            wait_started(started, 8)  # all streaming now, on both replicas
            replicas[0].process.send_signal(signal.SIGTERM)
            later = [pool.submit(stream, balancer.url, body) for _ in range(8)]  # arrive during the drain
            results = [f.result() for f in first + later]
        assert all(r.done and r.error is None for r in results), [(r.replica, r.error) for r in results]
        assert replicas[0].process.wait(60) == 0
        assert all(r.replica == "tw2" for r in results[8:][-4:]), [r.replica for r in results[8:]]
    finally:
        balancer.stop()
        for replica in replicas:
            replica.stop()


def test_a_killed_replicas_streams_end_in_an_error_and_the_rest_complete(start_replicas, tmp_path_factory):
    replicas = start_replicas(2)
    balancer = start_balancer([r.url for r in replicas], tmp_path_factory.mktemp("haproxy-kill"))
    try:
        body, started = _body(replicas[0].model, 3000), threading.Semaphore(0)
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(stream, balancer.url, body, started=started) for _ in range(6)]
            wait_started(started, 6)
            replicas[0].process.kill()
            futures += [pool.submit(stream, balancer.url, _body(replicas[0].model, 24)) for _ in range(6)]
            results = [f.result() for f in futures]
        killed = [r for r in results if r.replica == "tw1" and r.events]
        assert killed, "no stream was running on the killed replica"
        for r in killed:  # cut mid-stream: the client sees an error, never a clean end
            assert not r.done and r.error is not None, r
        others = [r for r in results if r not in killed]
        assert others and all(r.done and r.error is None for r in others), [(r.replica, r.error) for r in others]
    finally:
        balancer.stop()
        for replica in replicas:
            replica.stop()


def test_full_replicas_make_requests_wait_at_the_balancer_not_fail(start_replicas, tmp_path_factory):
    """Each replica takes one request and queues none (it would answer 429); with maxconn matching,
    HAProxy queues the rest itself, so a burst of six over two replicas all succeed."""
    replicas = start_replicas(2, TOKENWIRE_MAX_RUNNING="1", TOKENWIRE_MAX_WAITING="0")
    balancer = start_balancer([r.url for r in replicas], tmp_path_factory.mktemp("haproxy-full"), maxconn=1)
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: stream(balancer.url, _body(replicas[0].model, 200)), range(6)))
        assert all(r.done and r.error is None for r in results), [r.error for r in results]
        assert {r.replica for r in results} == {"tw1", "tw2"}
    finally:
        balancer.stop()
        for replica in replicas:
            replica.stop()


def test_tokens_arrive_one_by_one_through_the_proxy(server, tmp_path_factory):
    """The default model behind HAProxy: a stream's events spread over its generation, not one burst.
    (Relative bounds: a forward may emit several tokens at once when prompt-lookup drafts are kept,
    and a fast machine decodes 40 tokens in a fifth of a second; a buffering proxy would deliver all
    200 in one burst at the end.)"""
    balancer = start_balancer([server.url], tmp_path_factory.mktemp("haproxy-sse"))
    try:
        result = stream(balancer.url, {"model": server.model, "prompt": "Once upon a time", "max_tokens": 200,
                                       "temperature": 0, "logit_bias": NO_EOS})
        assert result.done and len(result.events) == 200
        spread = result.events[-1] - result.events[0]
        gaps = [b - a for a, b in zip(result.events, result.events[1:])]
        bursts = sum(gap > 0.001 for gap in gaps)  # separate arrivals
        assert spread > 0.1 and bursts >= 40, (spread, bursts, gaps)
    finally:
        balancer.stop()

