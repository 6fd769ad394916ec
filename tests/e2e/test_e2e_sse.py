"""Raw SSE against the real server: framing, greedy answers, streamed == non-streamed, UTF-8 deltas."""

from __future__ import annotations

import os
import time

import pytest

from tests.e2e.default_model import FRANCE, NO_EOS
from tests.e2e.sse_client import deltas, finish_reason, post_stream

pytestmark = pytest.mark.e2e


def test_health_and_models(http, server):
    health = http.get("/health").json()
    assert health["status"] == "ok"
    assert set(health) == {"status", "running", "waiting", "active_requests", "kv_cache_bytes", "start_up_chores",
                           "runtime", "models"}
    assert [(m["name"], m["status"]) for m in health["models"]] == [(server.model, "loaded")]
    deadline = time.monotonic() + 60
    while health["start_up_chores"]:  # the byte table (and, on torch, kernel warming) finish after start-up
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
        health = http.get("/health").json()
    runtime = health["runtime"]
    if runtime["device"] == "cpu" and runtime["forward"].startswith("native"):
        # The default model's layers lie on Q4_1 grids (its embedding on Q8_0): held exactly in 4 and 8 bits.
        assert runtime["quantization"].startswith("exact: q4 x120, q8 x1"), runtime
    assert runtime["device"].split(":")[0] in ("cpu", "cuda") and runtime["torch_threads"] >= 1
    assert runtime["dtype"] in ("float32", "bfloat16", "float16")
    if os.environ.get("TOKENWIRE_DTYPE", "auto") != "auto":
        assert runtime["dtype"] == os.environ["TOKENWIRE_DTYPE"]
    assert runtime["dtype_reason"] and isinstance(runtime["cpu_features"], list)
    start_up = server.log_path.read_text(errors="replace").split("model ready", 1)[0]
    assert f"dtype={runtime['dtype']} ({runtime['dtype_reason']})" in start_up  # the start-up log says it too
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and len(models["data"]) == 1
    assert models["data"][0]["id"] == server.model == "SmolLM2-135M-Instruct"
    assert models["data"][0]["max_model_len"] == 8192


def test_greedy_chat_answers_paris(http, server):
    _, events = post_stream(http, "/v1/chat/completions", {
        "model": server.model, "messages": FRANCE, "temperature": 0, "max_tokens": 24})
    first = events[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({(e["id"], e["created"], e["model"]) for e in events}) == 1
    assert "Paris" in "".join(deltas(events))
    assert finish_reason(events) in ("stop", "length")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stream_joins_to_the_non_streamed_text(http, server, path):
    body = {"model": server.model, "temperature": 0, "max_tokens": 24, "logit_bias": NO_EOS}
    if path == "/v1/completions":
        body["prompt"] = "The three primary colors are"
    else:
        body["messages"] = [{"role": "user", "content": "Name three fruits."}]
    _, events = post_stream(http, path, {**body, "stream_options": {"include_usage": True}})
    whole = http.post(path, json=body)
    assert whole.status_code == 200, whole.text
    whole = whole.json()
    choice = whole["choices"][0]
    text = choice["text"] if path == "/v1/completions" else choice["message"]["content"]
    assert "".join(deltas(events)) == text
    assert text
    assert finish_reason(events) == choice["finish_reason"]
    usage_chunk = events[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    assert all(e["usage"] is None for e in events[:-1])
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + whole["usage"]["completion_tokens"]


@pytest.mark.parametrize("prompt", [
    "Emoji list: 😀 😃 😄 😁 😆 😅 🤣 😂 🙂",
    "東京は日本の首都です。大阪は",
])
@pytest.mark.parametrize("max_tokens", [29, 30, 31])
def test_every_delta_is_whole_utf8(http, server, prompt, max_tokens):
    """Characters split over several tokens never leak out as U+FFFD or half bytes, wherever max_tokens
    cuts (tests/engine/test_unfinished_characters.py cuts inside a character on purpose). That the
    model continues CJK or emoji text with some CJK or emoji is a fact any sane run gives."""
    body = {"model": server.model, "prompt": prompt, "temperature": 0, "max_tokens": max_tokens,
            "logit_bias": NO_EOS}
    _, events = post_stream(http, "/v1/completions", body)
    parts = deltas(events)
    for part in parts:
        assert not part.endswith("\ufffd"), parts
        part.encode("utf-8", errors="strict")  # no lone surrogates
    text = "".join(parts)
    assert text == http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert any(ord(c) >= 0x2E80 for c in text), f"expected CJK or emoji in {text!r}"


def test_echo_streams_the_prompt_first(http, server):
    _, events = post_stream(http, "/v1/completions", {
        "model": server.model, "prompt": "Hello there", "echo": True, "temperature": 0, "max_tokens": 4})
    assert deltas(events)[0] == "Hello there"


@pytest.mark.parametrize("prompt", [[19556, 665], [[19556, 665]]])
def test_token_id_prompt(http, server, prompt):
    response = http.post("/v1/completions", json={"model": server.model, "prompt": prompt, "echo": True,
                                                  "temperature": 0, "max_tokens": 3, "logit_bias": NO_EOS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert len(body["choices"][0]["text"]) > 3  # the decoded prompt, then the completion
