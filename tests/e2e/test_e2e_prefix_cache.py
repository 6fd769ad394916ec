"""Prefix caching through the real server and the official client: the next turn reports reused tokens.

Exactness (same tokens with and without a hit) is tested on the tiny model in fp32
(tests/engine/test_prefix_cache.py); here the default model shows the contract a client sees.
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.health import metric_value, wait_for_metric

pytestmark = pytest.mark.e2e

GUIDE = ("You answer questions about the tokenwire server. It streams tokens over server-sent events, "
         "batches requests continuously, and keeps the KV cache of recent prompts so that the next turn of "
         "a conversation only computes what is new. Answer briefly and plainly. ") * 4


def _system() -> dict:
    # A fresh nonce first: earlier tests cannot have cached this conversation.
    return {"role": "system", "content": f"[{uuid.uuid4().hex}] {GUIDE}"}


def test_the_second_turn_of_a_conversation_reuses_the_first(openai_client, server, http):
    hits_before = metric_value(http, "tokenwire_prefix_cache_hits_total")
    messages = [_system(), {"role": "user", "content": "What does tokenwire stream?"}]
    first = openai_client.chat.completions.create(model=server.model, messages=messages, temperature=0,
                                                  max_tokens=16)
    assert first.usage.prompt_tokens > 200
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And what does it keep?"}]
    stream = openai_client.chat.completions.create(model=server.model, messages=messages, temperature=0,
                                                   max_tokens=16, stream=True,
                                                   stream_options={"include_usage": True})
    usage = list(stream)[-1].usage
    # At least turn one's prompt (its answer may be re-prefilled), never the new message.
    assert first.usage.prompt_tokens - 1 <= usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    assert wait_for_metric(http, "tokenwire_prefix_cache_hits_total", hits_before + 1) == hits_before + 1
    assert metric_value(http, "tokenwire_prefix_cache_bytes") > 0


def test_completions_sharing_a_long_prefix_report_it(openai_client, server):
    prefix = f"[{uuid.uuid4().hex}] {GUIDE}"
    first = openai_client.completions.create(model=server.model, prompt=prefix + "Question one:", max_tokens=4,
                                             temperature=0)
    second = openai_client.completions.create(model=server.model, prompt=prefix + "Another question:",
                                              max_tokens=4, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert 200 < second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens


@pytest.fixture(scope="module")
def uncached_server(start_server):
    started = start_server(TOKENWIRE_PREFIX_CACHE="false")
    yield started
    started.stop()


def test_with_the_cache_off_nothing_is_reused(uncached_server):
    import openai

    prompt = f"[{uuid.uuid4().hex}] {GUIDE}"
    with openai.OpenAI(base_url=f"{uncached_server.url}/v1", api_key="unused", max_retries=0) as client:
        for _ in range(2):
            result = client.completions.create(model=uncached_server.model, prompt=prompt, max_tokens=2)
            assert result.usage.prompt_tokens_details.cached_tokens == 0
