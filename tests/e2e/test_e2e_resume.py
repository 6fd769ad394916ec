"""Resumable streams against real servers (the default model): a dropped stream resumed with Last-Event-ID
gives the text an uninterrupted one gives (default settings, greedy); replicas sharing Debian's redis-server
behind the HAProxy configuration resume and cancel a stream, and a background response, another replica
is generating."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import start_redis
from tests.e2e.default_model import NO_EOS
from tests.e2e.test_e2e_balancer import HAPROXY, REPLICA_HEADER, start_balancer

pytestmark = pytest.mark.e2e


def read_events(source, stop_after: int | None = None) -> list[tuple[int, str]]:
    """(id, data) of each event of a response (or its line iterator), in order, until [DONE] or
    `stop_after` events."""
    events, current = [], None
    for line in (source.iter_lines() if isinstance(source, httpx.Response) else source):
        if line.startswith("id: "):
            current = int(line.removeprefix("id: "))
        elif line.startswith("data: "):
            events.append((current, line.removeprefix("data: ")))
            if line == "data: [DONE]" or (stop_after is not None and len(events) >= stop_after):
                break
    return events


def content_of(events: list[tuple[int, str]]) -> str:
    import json

    text = ""
    for _, data in events:
        if data != "[DONE]":
            for choice in json.loads(data).get("choices", []):
                text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
    return text


def test_a_dropped_stream_resumed_gives_the_uninterrupted_answer(start_server):
    server = start_server(TOKENWIRE_STREAM_UNATTENDED="15s")  # the default: a client may come back
    body = {"model": server.model, "messages": [{"role": "user", "content": "Write a short poem about rivers."}],
            "max_tokens": 48, "temperature": 0, "stream": True, "logit_bias": NO_EOS}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as first:
            url = first.headers["x-stream-resume"]
            seen = read_events(first, stop_after=6)  # then the connection drops
        time.sleep(1.0)  # the generation goes on meanwhile
        with client.stream("GET", url, headers={"Last-Event-ID": str(seen[-1][0])}) as resumed:
            rest = read_events(resumed)
        whole = read_events(client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True))
    ids = [i for i, _ in seen + rest]
    assert ids == list(range(len(ids))) and rest[-1][1] == "[DONE]"  # no gap, no repeat, to the end
    assert content_of(seen + rest) == content_of(whole) and len(content_of(whole)) > 20


@pytest.fixture(scope="module")
def redis_replicas(start_server, tmp_path_factory):
    if HAPROXY is None:
        pytest.skip("needs Debian's haproxy")
    redis, url = start_redis(tmp_path_factory.mktemp("redis-e2e"))
    replicas = [start_server(TOKENWIRE_STORE_URL=url, TOKENWIRE_STREAM_UNATTENDED="15s") for _ in range(2)]
    balancer = start_balancer([r.url for r in replicas], tmp_path_factory.mktemp("haproxy-resume"))
    yield balancer, replicas
    balancer.stop()
    for replica in replicas:
        replica.stop()
    redis.terminate()
    redis.wait(10)


def slow_body(model: str) -> dict:
    return {"model": model, "prompt": "The lighthouse keeper said", "max_tokens": 3000, "temperature": 0,
            "logit_bias": NO_EOS, "stream": True}


def test_another_replica_resumes_a_stream_while_the_first_generates(redis_replicas):
    balancer, (first, second) = redis_replicas
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", first.url + "/v1/completions", json={**slow_body(first.model), "max_tokens": 200}) as made:
            path = made.headers["x-stream-resume"]
            seen = read_events(made, stop_after=5)
        assert httpx.get(first.url + "/health").json()["active_requests"] == 1  # still generating, unread
        with client.stream("GET", second.url + path, headers={"Last-Event-ID": str(seen[-1][0])}) as elsewhere:
            rest = read_events(elsewhere)
        with client.stream("GET", balancer.url + path, headers={"Last-Event-ID": "2"}) as through_balancer:
            replica = through_balancer.headers.get(REPLICA_HEADER)
            again = read_events(through_balancer)
    ids = [i for i, _ in seen + rest]
    assert ids == list(range(len(ids))) and rest[-1][1] == "[DONE]"
    assert again == (seen + rest)[3:], f"through the balancer (replica {replica})"
    assert len(content_of(seen + rest)) > 0


def test_another_replica_cancels_a_stream_the_first_generates(redis_replicas):
    _, (first, second) = redis_replicas
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", first.url + "/v1/completions", json=slow_body(first.model)) as made:
            path = made.headers["x-stream-resume"]
            lines = made.iter_lines()
            read_events(lines, stop_after=3)
            cancelled = client.post(second.url + path + "/cancel")
            assert cancelled.status_code == 200
            rest = read_events(lines)
    assert rest[-1][1] == "[DONE]" and '"code":"cancelled"' in rest[-2][1]
    deadline = time.monotonic() + 5
    while httpx.get(first.url + "/health").json()["active_requests"]:
        assert time.monotonic() < deadline, "the first replica kept generating"
        time.sleep(0.1)


def test_a_background_response_is_retrieved_resumed_and_cancelled_through_another_replica(redis_replicas):
    """Made through one replica with the official client; read, resumed and cancelled through the other
    (and retrieved through the balancer) while the first still generates."""
    import openai

    balancer, (first, second) = redis_replicas
    made = openai.OpenAI(base_url=first.url + "/v1", api_key="unused").responses.create(
        model=first.model, input="Write the numbers from 1 to 1000 separated by commas.", background=True,
        max_output_tokens=1500, temperature=0)  # greedy, the default model counts on for all 1500 tokens
    other = openai.OpenAI(base_url=second.url + "/v1", api_key="unused")
    deadline = time.monotonic() + 30
    while (seen := other.responses.retrieve(made.id)).status == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert seen.status == "in_progress"
    through_balancer = openai.OpenAI(base_url=balancer.url + "/v1", api_key="unused").responses.retrieve(made.id)
    assert through_balancer.id == made.id
    numbers = []
    with other.responses.retrieve(made.id, stream=True, starting_after=2) as events:
        for event in events:
            numbers.append(event.sequence_number)
            if len(numbers) == 8:
                break
    assert numbers == list(range(3, 11))
    cancelled = other.responses.cancel(made.id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 5
    while httpx.get(first.url + "/health").json()["active_requests"]:
        assert time.monotonic() < deadline, "the first replica kept generating"
        time.sleep(0.1)
