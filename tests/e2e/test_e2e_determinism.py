"""A request's text depends only on the model, the dtype and the request (README: Same answer under
any load): the real default model through the official client, greedy and seeded, chat and
completions, alone and among 16 concurrent streams, right after start-up and after a restart."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

TOPICS = ["Why is the sky blue?", "Name three French cheeses.", "What is a prime number?", "Write a haiku about rain.",
          "How do bees make honey?", "Explain recursion briefly.", "What is the capital of Japan?",
          "Give me a tip for learning to cook."]
# Long enough that, sent while others decode, it is prefilled in several chunks (48 tokens each).
LONG = " ".join(f"Sentence {i} of a long shared document about lighthouses and the sea." for i in range(30))


def _requests() -> list[tuple[str, dict]]:
    """(kind, arguments): 8 chat and 8 completions, half greedy, half seeded sampling, some ignoring EOS."""
    requests = []
    for i, topic in enumerate(TOPICS):
        sampling = {"temperature": 0.0} if i % 2 == 0 else {"temperature": 0.9, "top_p": 0.95, "seed": 100 + i}
        requests.append(("chat", {"messages": [{"role": "user", "content": topic}], "max_tokens": 32, **sampling}))
        prompt = (LONG + " " if i % 4 == 1 else "") + f"({i}) The old lighthouse keeper {topic.lower()}"
        extra = {"extra_body": {"ignore_eos": True}} if i % 2 == 0 else {}
        requests.append(("completion", {"prompt": prompt, "max_tokens": 32, **sampling, **extra}))
    return requests


async def _text(client: openai.AsyncOpenAI, model: str, kind: str, arguments: dict, stream: bool) -> str:
    if kind == "chat":
        if not stream:
            return (await client.chat.completions.create(model=model, **arguments)).choices[0].message.content
        chunks = await client.chat.completions.create(model=model, stream=True, **arguments)
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    if not stream:
        return (await client.completions.create(model=model, **arguments)).choices[0].text
    chunks = await client.completions.create(model=model, stream=True, **arguments)
    return "".join([c.choices[0].text async for c in chunks if c.choices])


async def _answers(url: str, model: str, together: bool) -> list[str]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as client:
        if together:
            return list(await asyncio.gather(*[_text(client, model, kind, args, True) for kind, args in _requests()]))
        return [await _text(client, model, kind, args, False) for kind, args in _requests()]


def _wait_settled(url: str) -> None:
    for _ in range(600):
        if not httpx.get(f"{url}/health", timeout=5).json().get("start_up_chores", 0):
            return
        asyncio.run(asyncio.sleep(0.1))
    pytest.fail("start-up chores did not finish")


def test_sixteen_concurrent_streams_equal_their_answers_alone(server):
    alone = asyncio.run(_answers(server.url, server.model, together=False))
    together = asyncio.run(_answers(server.url, server.model, together=True))
    assert all(alone) and len(set(alone)) > 8
    differ = [i for i, (a, b) in enumerate(zip(alone, together)) if a != b]
    assert not differ, [(_requests()[i][0], alone[i], together[i]) for i in differ]


def test_answers_right_after_start_up_equal_later_ones_and_a_restarts(start_server):
    first = start_server()
    try:
        at_once = asyncio.run(_answers(first.url, first.model, together=False))
        _wait_settled(first.url)
        later = asyncio.run(_answers(first.url, first.model, together=True))
    finally:
        first.stop()
    second = start_server()
    try:
        restarted = asyncio.run(_answers(second.url, second.model, together=False))
    finally:
        second.stop()
    assert at_once == later == restarted
