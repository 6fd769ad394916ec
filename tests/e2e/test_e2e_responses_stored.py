"""Stored responses through the real server and the official `openai` client, unmodified: a chain by
previous_response_id that reuses the prefix cache, a background response polled to its end, and a
background stream dropped after a few events and resumed with starting_after."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.e2e.test_e2e_prefix_cache import GUIDE

pytestmark = pytest.mark.e2e


def _poll(openai_client, response_id: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while (response := openai_client.responses.retrieve(response_id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, f"{response_id} still {response.status}"
        time.sleep(0.1)
    return response


def test_a_chained_turn_reuses_the_first_turns_prompt(openai_client, server):
    instructions = f"[{uuid.uuid4().hex}] {GUIDE}"  # fresh: nothing cached yet
    first = openai_client.responses.create(model=server.model, instructions=instructions, temperature=0,
                                           input="What does tokenwire stream?", max_output_tokens=16)
    assert first.store and first.usage.input_tokens_details.cached_tokens == 0
    second = openai_client.responses.create(model=server.model, instructions=instructions, temperature=0,
                                            input="And what does it keep?", previous_response_id=first.id,
                                            max_output_tokens=16)
    assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0
    assert openai_client.responses.retrieve(second.id).output_text == second.output_text
    assert [i.type for i in openai_client.responses.input_items.list(second.id).data] == ["message"]


def test_a_background_response_is_polled_to_its_end(openai_client, server):
    created = openai_client.responses.create(model=server.model, input="Count to five.", background=True,
                                             max_output_tokens=24, temperature=0)
    assert created.status in ("queued", "in_progress") and created.background
    done = _poll(openai_client, created.id)
    assert done.status in ("completed", "incomplete") and done.output_text and done.usage.output_tokens > 0


def test_a_dropped_background_stream_is_resumed_where_it_left(openai_client, server, http):
    body = {"model": server.model, "input": "Write a short poem about the sea.", "background": True,
            "stream": True, "max_output_tokens": 48, "temperature": 0}
    head: list[dict] = []
    with http.stream("POST", "/v1/responses", json=body) as answer:  # read a few events, then hang up
        for line in answer.iter_lines():
            if line.startswith("data: "):
                head.append(json.loads(line[len("data: "):]))
                if len(head) == 6:
                    break
    response_id = head[0]["response"]["id"]
    resumed = list(openai_client.responses.retrieve(response_id, stream=True, starting_after=head[-1]["sequence_number"]))
    numbers = [e["sequence_number"] for e in head] + [e.sequence_number for e in resumed]
    assert numbers == list(range(len(numbers)))  # no gap, no duplicate
    assert resumed[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e["delta"] for e in head if e["type"] == "response.output_text.delta") + \
        "".join(e.delta for e in resumed if e.type == "response.output_text.delta")
    final = _poll(openai_client, response_id)
    assert text == final.output_text == resumed[-1].response.output_text and text
