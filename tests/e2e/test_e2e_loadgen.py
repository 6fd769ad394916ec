"""The benchmark's load generator against the real server: what it reads off the stream (text, token
counts, errors) is what the server sent, so the figures bench.run reports are about real answers."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bench.client import LoadConfig, make_client, numbered, stream_request
from bench.loadgen import run_all
from bench.prompts import PROMPTS

pytestmark = pytest.mark.e2e


def test_every_request_of_each_scenario_is_read_to_its_end(server):
    cfg = LoadConfig(url=server.url, concurrency=(1, 3), prompts=("short",), max_tokens=12, requests_per_stream=2)
    report = asyncio.run(run_all(cfg))
    for scenario in report["scenarios"]:
        assert scenario["ok"] == scenario["requests"] == 2 * scenario["concurrency"], scenario
        assert scenario["usage_reported"] and scenario["completion_tokens_p50"] <= 12
        assert scenario["stream_tok_s_p50"] and scenario["ttft_ms"]["p50"] > 0


def test_the_streamed_text_it_reads_is_the_servers_answer(server, openai_client):
    prompt = numbered(PROMPTS["short"], "1.1")
    answer = openai_client.completions.create(model=server.model, prompt=prompt, max_tokens=40, temperature=0)
    cfg = LoadConfig(url=server.url, model=server.model)

    async def stream() -> list:
        async with make_client(cfg, 1) as client:
            body = {"model": server.model, "prompt": prompt, "max_tokens": 40, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            return [await stream_request(client, "/v1/completions", body, [])]

    [result] = asyncio.run(stream())
    assert result.ok and result.done, result.error
    assert "".join(result.text) == answer.choices[0].text
    assert result.usage_tokens == answer.usage.completion_tokens
    assert result.finish_reason == answer.choices[0].finish_reason


def test_an_error_status_is_reported_with_its_body(server):
    cfg = replace(LoadConfig(url=server.url), model=server.model)

    async def stream():
        async with make_client(cfg, 1) as client:
            body = {"model": server.model, "prompt": "hi", "max_tokens": -1, "stream": True}
            return await stream_request(client, "/v1/completions", body, [])

    result = asyncio.run(stream())
    assert result.error is not None and result.error.startswith("HTTP 400") and "max_tokens" in result.error
