"""API keys as tenants against a real server with the default model and the official client: a
newcomer's request is admitted ahead of another key's queue, a key's request limit answers 429, and
the usage ledger counts each key by name.

One extra server (two decode rows, so a queue forms with a handful of streams); ordering, not timing,
is asserted.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.e2e.default_model import NO_EOS
from tests.e2e.health import wait_idle

pytestmark = pytest.mark.e2e

KEYS = {"batch": "sk-e2e-batch", "person": "sk-e2e-person", "limited": "sk-e2e-limited"}
ENTRIES = (f"{KEYS['batch']} name=batchjob priority=batch, {KEYS['person']} name=person weight=2, "
           f"{KEYS['limited']} name=limited requests=2/min")
HEAVY_STREAMS = 5


@pytest.fixture(scope="module")
def shared(start_server):
    server = start_server(TOKENWIRE_MAX_RUNNING="2", TOKENWIRE_MAX_WAITING="8", TOKENWIRE_API_KEYS=ENTRIES)
    yield server
    server.stop()


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS[key], max_retries=0, timeout=120)


def stream_times(server, key: str, content: str, max_tokens: int,
                 started: threading.Event | None = None) -> tuple[float, float]:
    """Stream a chat answer; the monotonic times its first token and its end arrived."""
    with client(server, key) as api:
        stream = api.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
            temperature=0, stream=True, logit_bias=NO_EOS)
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic()
                if started is not None:
                    started.set()
    assert first is not None
    return first, time.monotonic()


def test_another_keys_request_is_admitted_ahead_of_a_queue(shared):
    with httpx.Client(base_url=shared.url, timeout=30) as http:
        wait_idle(http)
    started = [threading.Event() for _ in range(HEAVY_STREAMS)]
    with ThreadPoolExecutor(HEAVY_STREAMS) as pool:
        heavy = [pool.submit(stream_times, shared, "batch", f"Count to {100 + i} slowly.", 48, started[i])
                 for i in range(HEAVY_STREAMS)]
        deadline = time.monotonic() + 60
        while sum(e.is_set() for e in started) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(e.is_set() for e in started) == 2, "two rows should be running, the rest queued"
        newcomer, _ = stream_times(shared, "person", "Say hello.", 4)
        times = sorted(f.result() for f in heavy)
    # The newcomer went past the full batch (before either running row ended) and ahead of the queue.
    assert times[1][0] < newcomer < min(end for _, end in times[:2])
    assert newcomer < times[2][0]


def test_a_keys_request_limit_answers_429_through_the_official_client(shared):
    with client(shared, "limited") as api:
        for _ in range(2):
            answer = api.chat.completions.with_raw_response.create(
                model=shared.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
            assert answer.headers["x-ratelimit-limit-requests"] == "2"
        with pytest.raises(openai.RateLimitError) as refused:
            api.chat.completions.create(model=shared.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert refused.value.status_code == 429 and int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.code == "rate_limit_exceeded" and "limited" in refused.value.message


def test_the_usage_ledger_counts_each_key_by_name(shared):
    with client(shared, "person") as api:
        answer = api.completions.create(model=shared.model, prompt="One, two,", max_tokens=5, logit_bias=NO_EOS)
    assert answer.usage.completion_tokens == 5
    metrics = httpx.get(f"{shared.url}/metrics", headers={"Authorization": f"Bearer {KEYS['person']}"}).text
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
             if line.startswith("tokenwire_usage_")}
    model = shared.model
    assert lines[f'tokenwire_usage_completion_tokens_total{{key="person",model="{model}"}}'] >= 5
    assert lines[f'tokenwire_usage_requests_total{{key="limited",model="{model}"}}'] >= 3  # the refusal too
    assert not any(key in metrics for key in KEYS.values())
