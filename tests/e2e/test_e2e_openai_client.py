"""The official `openai` client against the real server."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.default_model import FRANCE, NO_EOS

pytestmark = pytest.mark.e2e


def test_completion(openai_client, server):
    result = openai_client.completions.create(model=server.model, prompt="The capital of France is",
                                              temperature=0, max_tokens=8)
    assert result.object == "text_completion" and result.model == server.model
    assert result.choices[0].text
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage.completion_tokens <= 8


def test_completion_stream(openai_client, server):
    chunks = list(openai_client.completions.create(model=server.model, prompt="The capital of France is",
                                                   temperature=0, max_tokens=8, stream=True))
    whole = openai_client.completions.create(model=server.model, prompt="The capital of France is",
                                             temperature=0, max_tokens=8)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len({c.id for c in chunks}) == 1


def test_chat(openai_client, server):
    result = openai_client.chat.completions.create(model=server.model, messages=FRANCE, temperature=0,
                                                   max_tokens=24)
    assert result.object == "chat.completion"
    assert result.choices[0].message.role == "assistant"
    assert "Paris" in result.choices[0].message.content
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0


def test_chat_stream_with_usage(openai_client, server):
    stream = openai_client.chat.completions.create(model=server.model, messages=FRANCE, temperature=0,
                                                   max_tokens=24, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in content)
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert "Paris" in text
    assert content[-1].choices[0].finish_reason in ("stop", "length")
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_gives_finish_reason_length(openai_client, server, stream):
    kwargs = dict(model=server.model, prompt="Write a long story about a dragon:", temperature=0, max_tokens=5,
                  logit_bias=NO_EOS)
    if not stream:
        result = openai_client.completions.create(**kwargs)
        assert result.choices[0].finish_reason == "length"
        assert result.usage.completion_tokens == 5
    else:
        chunks = list(openai_client.completions.create(**kwargs, stream=True,
                                                       stream_options={"include_usage": True}))
        assert chunks[-2].choices[0].finish_reason == "length"
        assert chunks[-1].usage.completion_tokens == 5


def test_max_completion_tokens(openai_client, server):
    result = openai_client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Tell me a long story."}], temperature=0,
        max_completion_tokens=5, logit_bias=NO_EOS)
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_is_not_in_the_output(openai_client, server, stream):
    """The answer is cut right before the stop string. That the greedy answer names Paris holds in every
    dtype (default_model.FRANCE); the rest compares with this run's own answer."""
    kwargs = dict(model=server.model, messages=FRANCE, temperature=0, max_tokens=24)
    whole = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    assert "Paris" in whole
    kwargs["stop"] = ["Paris"]
    if stream:
        chunks = list(openai_client.chat.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        reason = chunks[-1].choices[0].finish_reason
    else:
        result = openai_client.chat.completions.create(**kwargs)
        text, reason = result.choices[0].message.content, result.choices[0].finish_reason
    assert text == whole[: whole.index("Paris")]
    assert reason == "stop"


def test_seed_reproducibility(openai_client, server):
    def sample(seed: int) -> str:
        return openai_client.completions.create(model=server.model, prompt="Once upon a time", temperature=1.0,
                                                seed=seed, max_tokens=16).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    streamed = openai_client.completions.create(model=server.model, prompt="Once upon a time", temperature=1.0,
                                                seed=1234, max_tokens=16, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == first
    assert len({first, sample(1), sample(2)}) > 1, "different seeds should (almost surely) differ"


def test_errors_become_sdk_exceptions(openai_client, server):
    with pytest.raises(openai.NotFoundError) as not_found:
        openai_client.chat.completions.create(model="no-such-model", messages=FRANCE, max_tokens=2)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.chat.completions.create(model=server.model, messages=FRANCE, max_tokens=2, temperature=3)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as too_long:
        openai_client.completions.create(model=server.model, prompt="hi", max_tokens=9000)
    assert too_long.value.code == "context_length_exceeded"


def test_responses_with_the_official_client(openai_client, server):
    response = openai_client.responses.create(model=server.model, input="What is the capital of France?",
                                              instructions="Answer in one sentence.", max_output_tokens=24,
                                              temperature=0)
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 24
    with openai_client.responses.stream(model=server.model, input="Say hello.", max_output_tokens=8,
                                        temperature=0) as stream:
        events = [event.type for event in stream]
    assert events[0] == "response.created" and events[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in events


def test_tokenize_counts_what_the_endpoints_bill(openai_client, server, http):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = openai_client.chat.completions.create(model=server.model, messages=messages, max_tokens=1)
    counted = http.post("/tokenize", json={"model": server.model, "messages": messages}).json()
    assert counted["count"] == chat.usage.prompt_tokens == len(counted["tokens"])
    assert counted["max_model_len"] == server.max_model_len
    text = openai_client.completions.create(model=server.model, prompt="Hello there", max_tokens=1)
    tokens = http.post("/tokenize", json={"model": server.model, "prompt": "Hello there"}).json()["tokens"]
    assert len(tokens) == text.usage.prompt_tokens
    assert http.post("/detokenize", json={"model": server.model, "tokens": tokens}).json() == {"prompt": "Hello there"}


def test_a_base_url_without_v1_works_as_with_it(openai_client, server):
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60) as bare:
        assert [m.id for m in bare.models.list().data] == [server.model]
        messages = FRANCE
        answer = bare.chat.completions.create(model=server.model, messages=messages, temperature=0, max_tokens=16)
        streamed = bare.chat.completions.create(model=server.model, messages=messages, temperature=0, max_tokens=16,
                                                stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    with_v1 = openai_client.chat.completions.create(model=server.model, messages=messages, temperature=0,
                                                    max_tokens=16)
    assert answer.choices[0].message.content == text == with_v1.choices[0].message.content
