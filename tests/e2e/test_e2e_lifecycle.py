"""Client disconnects, concurrency and error statuses against the real server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.default_model import NO_EOS
from tests.e2e.health import IDLE, wait_idle
from tests.e2e.sse_client import deltas, finish_reason, post_stream

pytestmark = pytest.mark.e2e



def assert_still_serving(http: httpx.Client, model: str) -> None:
    assert http.get("/health").json()["status"] == "ok"
    response = http.post("/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 2,
                                                  "temperature": 0, "logit_bias": NO_EOS})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_client_disconnect_stops_generation_and_frees_the_cache(http, server, path):
    body = {"model": server.model, "max_tokens": 4000, "temperature": 0.8, "seed": 7, "logit_bias": NO_EOS,
            "stream": True}
    if path == "/v1/completions":
        body["prompt"] = "Once upon a time"
    else:
        body["messages"] = [{"role": "user", "content": "Tell me a very long story."}]
    with httpx.Client(base_url=server.url, timeout=60) as streaming:  # its own connection, closed below
        with streaming.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            received = 0
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    assert '"finish_reason":null' in line, line
                    received += 1
                if received >= 5:
                    break
            # Still streaming (leaving the loop early closes the connection once `lines` is gone).
            during = http.get("/health").json()
            assert during["active_requests"] == 1 and during["kv_cache_bytes"] > 0, during
            lines.close()
    # 4000 tokens would take minutes on a CPU; an abort frees everything at once.
    health = wait_idle(http, timeout_s=5)
    assert health["status"] == "ok" and {key: health[key] for key in IDLE} == IDLE
    assert_still_serving(http, server.model)


def test_concurrent_streams_all_finish(http, server):
    def run(i: int) -> tuple[str, str | None]:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            _, events = post_stream(client, "/v1/completions", {
                "model": server.model, "prompt": f"Count from {i}:", "temperature": 0, "max_tokens": 12,
                "logit_bias": NO_EOS})
            return "".join(deltas(events)), finish_reason(events)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(4)))
    assert all(text and reason == "length" for text, reason in results), results
    assert wait_idle(http)["kv_cache_bytes"] == 0


# ---- error statuses -----------------------------------------------------------------------------


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_malformed_json_is_400(http, server):
    response = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [',
                         headers={"content-type": "application/json"})
    assert error_of(response, 400)["type"] == "invalid_request_error"
    assert_still_serving(http, server.model)


def test_unknown_model_is_404(http, server):
    error = error_of(http.post("/v1/completions", json={"model": "gpt-9", "prompt": "hi"}), 404)
    assert error["code"] == "model_not_found"
    assert_still_serving(http, server.model)


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_exceeded_is_400_naming_the_numbers(http, server, stream):
    body = {"model": server.model, "prompt": "Hello there", "max_tokens": 9000, "stream": stream}
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "max_tokens"
    assert str(server.max_model_len) in error["message"] and "9000" in error["message"]
    assert_still_serving(http, server.model)


def test_out_of_range_temperature_is_400(http, server):
    error = error_of(http.post("/v1/chat/completions", json={
        "model": server.model, "messages": [{"role": "user", "content": "hi"}], "temperature": 3}), 400)
    assert error["param"] == "temperature"
    assert_still_serving(http, server.model)


def test_out_of_vocabulary_ids_are_400(http, server):
    error = error_of(http.post("/v1/completions", json={"model": server.model, "prompt": [1, 10**7]}), 400)
    assert error["param"] == "prompt"
    error = error_of(http.post("/v1/completions", json={
        "model": server.model, "prompt": "hi", "logit_bias": {"99999999": 1}}), 400)
    assert error["param"] == "logit_bias"
    assert_still_serving(http, server.model)


def test_unknown_route_is_404(http, server):
    assert error_of(http.get("/v1/nothing"), 404)["type"] == "invalid_request_error"
