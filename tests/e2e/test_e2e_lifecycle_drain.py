"""Readiness, request ids, metrics and SIGTERM draining against real `python -m app` processes.

The drain tests start their own servers (SIGTERM ends them); everything is on loopback, bounded in
count (16 streams at most) and in time.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.default_model import NO_EOS
from tests.e2e.sse_client import post_stream

pytestmark = pytest.mark.e2e

EXIT_TIMEOUT_S = 60


def requests_by_outcome(http: httpx.Client) -> tuple[Counter, dict[str, float]]:
    counts, totals = Counter(), {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "tokenwire_requests_total":  # every model's, "unknown" (refused) included
                counts[(sample.labels["endpoint"], sample.labels["outcome"])] += sample.value
            elif set(sample.labels) <= {"model"}:  # summed over models (one here)
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return counts, totals


def test_ready_only_after_the_warm_up(http, server):
    ready = http.get("/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    log = server.log_path.read_text(errors="replace")
    assert "warm-up generation done" in log, log[-2000:]
    assert log.index("warm-up generation done") < log.index("Uvicorn running on"), log[-2000:]


def test_request_id_is_echoed_and_is_the_completion_id(http, server):
    body = {"model": server.model, "prompt": "Hello", "max_tokens": 2}
    given = http.post("/v1/completions", json=body, headers={"X-Request-Id": "e2e-trace.1"})
    made = http.post("/v1/completions", json=body)
    refused = http.post("/v1/completions", json={**body, "model": "gpt-9"}, headers={"X-Request-Id": "bad id!"})
    assert given.headers["x-request-id"] == "e2e-trace.1" == given.json()["id"]
    assert made.json()["id"] == "cmpl-" + made.headers["x-request-id"]
    assert refused.status_code == 404 and refused.headers["x-request-id"] not in ("", "bad id!")


def test_metrics_match_the_drivers_own_counts(http, server):
    before, totals_before = requests_by_outcome(http)
    driven, tokens = Counter(), Counter()
    for i, max_tokens in enumerate([3, 40, 5, 64]):
        path = "/v1/completions" if i % 2 else "/v1/chat/completions"
        body = {"model": server.model, "max_tokens": max_tokens, "temperature": 0}
        body.update({"prompt": "The capital of France is"} if i % 2 else
                    {"messages": [{"role": "user", "content": "What is the capital of France?"}]})
        endpoint = "completions" if i % 2 else "chat_completions"
        if i < 2:
            response = http.post(path, json=body)
            reason, usage = response.json()["choices"][0]["finish_reason"], response.json()["usage"]
        else:
            _, events = post_stream(http, path, {**body, "stream_options": {"include_usage": True}})
            reason, usage = events[-2]["choices"][0]["finish_reason"], events[-1]["usage"]
        driven[(endpoint, reason)] += 1
        tokens["prompt"] += usage["prompt_tokens"]
        tokens["completion"] += usage["completion_tokens"]
    assert http.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}).status_code == 404
    driven[("completions", "rejected_validation")] += 1
    assert http.post("/v1/chat/completions", json={"model": server.model, "messages": []}).status_code == 400
    driven[("chat_completions", "rejected_validation")] += 1

    after, totals = requests_by_outcome(http)
    assert {k: v for k, v in (after - before).items() if v} == driven
    assert totals["tokenwire_prompt_tokens_total"] - totals_before["tokenwire_prompt_tokens_total"] == tokens["prompt"]
    generated = totals["tokenwire_generation_tokens_total"] - totals_before["tokenwire_generation_tokens_total"]
    assert generated == tokens["completion"]
    for histogram in ("time_to_first_token", "e2e_request_latency", "queue_time"):
        name = f"tokenwire_{histogram}_seconds_count"
        assert totals[name] - totals_before[name] == 4, name


def test_a_client_that_leaves_is_counted_as_cancelled(http, server):
    before, _ = requests_by_outcome(http)
    body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 2000, "logit_bias": NO_EOS,
            "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as leaving:
        with leaving.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert sum(1 for _, line in zip(range(20), lines) if line.startswith("data: ")) >= 3
            lines.close()
    deadline = time.monotonic() + 10
    while (requests_by_outcome(http)[0] - before)[("completions", "cancelled")] != 1:
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.05)


# ---- draining -----------------------------------------------------------------------------------


class Streams:
    """`n` streams in threads; `started` is set once every one has received its first chunk."""

    def __init__(self, url: str, body: dict, n: int) -> None:
        self.url, self.body, self.n = url, body, n
        self._first = threading.Semaphore(0)
        self.pool = ThreadPoolExecutor(max_workers=n)
        self.futures = [self.pool.submit(self._run) for _ in range(n)]

    def _run(self) -> tuple[int, list[str]]:
        payloads: list[str] = []
        with httpx.Client(base_url=self.url, timeout=120) as client:
            with client.stream("POST", "/v1/completions", json={**self.body, "stream": True}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        payloads.append(line.removeprefix("data: "))
                        if len(payloads) == 1:
                            self._first.release()
        return response.status_code, payloads

    def wait_started(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        for _ in range(self.n):
            assert self._first.acquire(timeout=max(0.0, deadline - time.monotonic())), "a stream never started"

    def results(self, timeout_s: float = 120) -> list[tuple[int, list[str]]]:
        try:
            return [future.result(timeout=timeout_s) for future in self.futures]
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)


def sigterm_and_check_refusals(server) -> float:
    """SIGTERM, then /ready must say draining and a new request must get 503 at once."""
    server.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10) as probe:
        while (ready := probe.get("/ready")).status_code == 200:
            assert time.monotonic() - sent < 2, "/ready did not flip to 503"
            time.sleep(0.02)
        flipped = time.monotonic() - sent
        assert ready.json() == {"status": "draining"}
        refused = probe.post("/v1/completions", json={"model": server.model, "prompt": "Hi", "max_tokens": 2})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "draining" and refused.headers["x-request-id"]
    return flipped


def assert_exits_cleanly(server) -> None:
    try:
        code = server.process.wait(timeout=EXIT_TIMEOUT_S)
    except Exception:
        pytest.fail(f"the server did not exit after draining:\n{server.log_tail()}")
    assert code == 0, f"exit code {code}:\n{server.log_tail()}"


def test_sigterm_lets_16_streams_finish_then_exits_0(start_server):
    server = start_server(TOKENWIRE_DRAIN_TIMEOUT_S="60")
    streams = Streams(server.url, {"model": server.model, "prompt": "Count slowly:", "max_tokens": 48,
                                   "temperature": 0, "logit_bias": NO_EOS}, n=16)
    streams.wait_started()
    flipped = sigterm_and_check_refusals(server)
    results = streams.results()
    for status, payloads in results:
        assert status == 200 and payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert not any("error" in c for c in chunks), chunks[-2:]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert_exits_cleanly(server)
    assert flipped < 2 and "drained: every request finished" in server.log_tail(20000)


def test_at_the_drain_deadline_streams_get_an_error_event_then_done(start_server):
    server = start_server(TOKENWIRE_DRAIN_TIMEOUT_S="1", TOKENWIRE_LOG_FORMAT="json")
    streams = Streams(server.url, {"model": server.model, "prompt": "Tell a story:", "max_tokens": 4000,
                                   "temperature": 0.8, "seed": 1, "logit_bias": NO_EOS}, n=4)
    streams.wait_started()
    sigterm_and_check_refusals(server)
    started = time.monotonic()
    for status, payloads in streams.results(timeout_s=30):
        assert status == 200 and payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
        error = json.loads(payloads[-2])["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "draining")
    assert time.monotonic() - started < 15
    assert_exits_cleanly(server)
    assert_json_request_log(server, expected_outcomes={"error": 4, "rejected_draining": 1})


def assert_json_request_log(server, expected_outcomes: dict[str, int]) -> None:
    """With TOKENWIRE_LOG_FORMAT=json every log line is a JSON object (progress bars aside)."""
    lines = [line for line in server.log_path.read_text().splitlines() if not line.startswith("Loading weights")]
    records = [json.loads(line) for line in lines if line.strip()]
    assert {"ts", "level", "logger", "message"} <= set(records[0])
    requests = [r for r in records if r["logger"] == "tokenwire.request"]
    assert Counter(r["outcome"] for r in requests) == expected_outcomes
    assert all(len(r["request_id"]) == 32 and "prompt" not in r for r in requests)
    assert any(r["logger"] == "uvicorn.error" for r in records)  # uvicorn's lines too
