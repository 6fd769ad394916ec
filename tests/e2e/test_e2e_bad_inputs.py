"""A table of bad inputs sent as raw bytes to the real server: every one is a 4xx in OpenAI's error shape,
the server stays alive, and a greedy canary answers the same text before and after the whole corpus.

Each case is (id, method, path, body builder, expected status, expected `param` or ANY). A body builder
gets the served model name and the context window and returns raw bytes (or an iterator of bytes, sent
chunked). Runs against the shared session server (default limits: 1 MiB body, 8192-token context).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

pytestmark = pytest.mark.e2e

C = "/v1/completions"
CH = "/v1/chat/completions"
ANY = object()  # `param` not checked
DROP = object()  # comp()/chat(): remove the field from the valid body
MAX_BODY_BYTES = 1 << 20  # the server's default TOKENWIRE_MAX_BODY_BYTES
VOCAB = 49152  # SmolLM2's vocabulary size
USER = [{"role": "user", "content": "Hi"}]

Body = bytes | Iterator[bytes]


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    build: Callable[[str, int], Body]
    status: int = 400
    param: object = ANY
    method: str = "POST"
    content_type: str | None = "application/json"


def raw(data: bytes) -> Callable[[str, int], Body]:
    return lambda model, ctx: data


def dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()  # "\ud800" stays an escape, as a client sends it


def comp(**fields: object) -> Callable[[str, int], Body]:
    """A completions body: a valid one (model, prompt, max_tokens 2) with `fields` replacing or adding keys."""
    def build(model: str, ctx: int) -> Body:
        body = {"model": model, "prompt": "Hi", "max_tokens": 2, **fields}
        return dumps({k: v for k, v in body.items() if v is not DROP})
    return build


def chat(**fields: object) -> Callable[[str, int], Body]:
    def build(model: str, ctx: int) -> Body:
        body = {"model": model, "messages": USER, "max_tokens": 2, **fields}
        return dumps({k: v for k, v in body.items() if v is not DROP})
    return build


def with_model(template: bytes) -> Callable[[str, int], Body]:
    """Raw bytes with `MODEL` replaced by the served name (for bodies json.dumps cannot produce)."""
    return lambda model, ctx: template.replace(b"MODEL", model.encode())


def beyond_context_max_tokens(path: str) -> Callable[[str, int], Body]:
    def build(model: str, ctx: int) -> Body:
        base = {"prompt": "Hello"} if path == C else {"messages": USER}
        return dumps({"model": model, **base, "max_tokens": ctx})  # prompt >= 1 token: ctx + 1 or more
    return build


def beyond_context_prompt_ids(model: str, ctx: int) -> Body:
    return dumps({"model": model, "prompt": [42] * (ctx + 1), "max_tokens": 1})


def beyond_context_prompt_text(model: str, ctx: int) -> Body:
    return dumps({"model": model, "prompt": "hello " * (ctx + 100), "max_tokens": 1})


def oversized_declared(model: str, ctx: int) -> Body:
    return dumps({"model": model, "prompt": "x" * (MAX_BODY_BYTES + 1), "max_tokens": 1})


def oversized_chunked(model: str, ctx: int) -> Body:
    whole = dumps({"model": model, "prompt": "y" * (MAX_BODY_BYTES + 1), "max_tokens": 1})
    return iter([whole[i:i + 65536] for i in range(0, len(whole), 65536)])  # no Content-Length: chunked


CASES: list[Case] = [
    # ---- malformed JSON -------------------------------------------------------------------------------
    Case("json-empty-body", C, raw(b"")),
    Case("json-empty-body-chat", CH, raw(b"")),
    Case("json-whitespace-only", C, raw(b"  \n\t ")),
    Case("json-truncated", C, with_model(b'{"model": "MODEL", "prompt": "Hi", "max_tokens": 2')),
    Case("json-truncated-chat", CH, with_model(b'{"model": "MODEL", "messages": [{"role": "user", "con')),
    Case("json-trailing-garbage", C, with_model(b'{"model": "MODEL", "prompt": "Hi", "max_tokens": 2} xyz')),
    Case("json-two-objects", CH, with_model(b'{"model": "MODEL"}{"messages": []}')),
    Case("json-array-not-object", C, raw(b"[]")),
    Case("json-string-not-object", C, raw(b'"a prompt"')),
    Case("json-null-not-object", CH, raw(b"null")),
    Case("json-number-not-object", CH, raw(b"42")),
    Case("json-single-quotes", C, with_model(b"{'model': 'MODEL', 'prompt': 'Hi'}")),
    Case("json-nan-literal", C, with_model(b'{"model": "MODEL", "prompt": "Hi", "max_tokens": 2, "temperature": NaN}'),
         param="temperature"),
    Case("json-infinity-literal", C, with_model(b'{"model": "MODEL", "prompt": "Hi", "max_tokens": 2, "top_p": Infinity}'),
         param="top_p"),
    Case("json-deep-nesting", C, raw(b"[" * 200_000)),
    Case("json-invalid-utf8", C, with_model(b'{"model": "MODEL", "prompt": "Hi \xff\xfe there", "max_tokens": 2}')),
    Case("json-overlong-utf8", CH, with_model(
        b'{"model": "MODEL", "messages": [{"role": "user", "content": "\xc0\xaf"}], "max_tokens": 2}')),
    Case("json-text-plain-content-type", C, comp(), content_type="text/plain"),
    Case("json-no-content-type", CH, raw(b"model=x&prompt=hi"), content_type=None),
    # ---- wrong types, completions ----------------------------------------------------------------------
    Case("type-model-int", C, comp(model=123), param="model"),
    Case("type-model-missing", C, comp(model=DROP), param="model"),
    Case("type-prompt-missing", C, comp(prompt=DROP), param="prompt"),
    Case("type-prompt-object", C, comp(prompt={"text": "Hi"}), param="prompt"),
    Case("type-prompt-bool", C, comp(prompt=True), param="prompt"),
    Case("type-prompt-mixed-list", C, comp(prompt=[1, "a"]), param=ANY),
    Case("type-prompt-float-ids", C, comp(prompt=[1.5, 2.5]), param=ANY),
    Case("type-max-tokens-string", C, comp(max_tokens="many"), param="max_tokens"),
    Case("type-max-tokens-float", C, comp(max_tokens=1.5), param="max_tokens"),
    Case("type-max-tokens-list", C, comp(max_tokens=[2]), param="max_tokens"),
    Case("type-temperature-string", C, comp(temperature="hot"), param="temperature"),
    Case("type-top-p-list", C, comp(top_p=[0.5]), param="top_p"),
    Case("type-top-k-float", C, comp(top_k=1.5), param="top_k"),
    Case("type-min-p-object", C, comp(min_p={}), param="min_p"),
    Case("type-presence-penalty-string", C, comp(presence_penalty="x"), param="presence_penalty"),
    Case("type-frequency-penalty-list", C, comp(frequency_penalty=[]), param="frequency_penalty"),
    Case("type-repetition-penalty-string", C, comp(repetition_penalty="x"), param="repetition_penalty"),
    Case("type-logit-bias-list", C, comp(logit_bias=[1, 2]), param="logit_bias"),
    Case("type-logit-bias-value-string", C, comp(logit_bias={"5": "up"}), param=ANY),
    Case("type-seed-string", C, comp(seed="abc"), param="seed"),
    Case("type-seed-float", C, comp(seed=1.5), param="seed"),
    Case("type-stop-int", C, comp(stop=5), param=ANY),
    Case("type-stop-list-of-ints", C, comp(stop=[1, 2]), param=ANY),
    Case("type-stream-string", C, comp(stream="maybe"), param="stream"),
    Case("type-stream-options-string", C, comp(stream_options="usage"), param="stream_options"),
    Case("type-stream-options-include-usage", C, comp(stream=True, stream_options={"include_usage": "maybe"}),
         param="stream_options.include_usage"),
    Case("type-user-int", C, comp(user=5), param="user"),
    Case("type-timeout-string", C, comp(timeout="soon"), param="timeout"),
    Case("type-n-string", C, comp(n="two"), param="n"),
    Case("type-echo-string", C, comp(echo="maybe"), param="echo"),
    Case("type-best-of-string", C, comp(best_of="x"), param=ANY),
    Case("type-suffix-int", C, comp(suffix=5), param=ANY),
    Case("type-logprobs-string", C, comp(logprobs="x"), param=ANY),
    # ---- wrong types, chat -------------------------------------------------------------------------------
    Case("type-messages-missing", CH, chat(messages=DROP), param="messages"),
    Case("type-messages-string", CH, chat(messages="Hi"), param="messages"),
    Case("type-messages-list-of-ints", CH, chat(messages=[5]), param=ANY),
    Case("type-role-int", CH, chat(messages=[{"role": 5, "content": "Hi"}]), param="messages.0.role"),
    Case("type-content-int", CH, chat(messages=[{"role": "user", "content": 5}]), param=ANY),
    Case("type-content-object", CH, chat(messages=[{"role": "user", "content": {"text": "Hi"}}]), param=ANY),
    Case("type-content-part-text-int", CH, chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
         param=ANY),
    Case("type-content-part-image", CH, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x.test/a.png"}}]}]), param=ANY),
    Case("type-content-part-no-text", CH, chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), param=ANY),
    Case("type-name-int", CH, chat(messages=[{"role": "user", "content": "Hi", "name": 5}]), param="messages.0.name"),
    Case("type-max-completion-tokens-string", CH, chat(max_completion_tokens="x"), param="max_completion_tokens"),
    Case("type-chat-logprobs-string", CH, chat(logprobs="x"), param="logprobs"),
    Case("type-top-logprobs-string", CH, chat(top_logprobs="x"), param="top_logprobs"),
    Case("type-chat-temperature-object", CH, chat(temperature={"v": 1}), param="temperature"),
    # ---- bounds ----------------------------------------------------------------------------------------------
    Case("bound-max-tokens-0", C, comp(max_tokens=0), param="max_tokens"),
    Case("bound-max-tokens-neg", C, comp(max_tokens=-1), param="max_tokens"),
    Case("bound-max-tokens-0-chat", CH, chat(max_tokens=0), param="max_tokens"),
    Case("bound-max-completion-tokens-neg", CH, chat(max_completion_tokens=-1), param="max_completion_tokens"),
    Case("bound-max-tokens-beyond-context", C, beyond_context_max_tokens(C), param="max_tokens"),
    Case("bound-max-tokens-beyond-context-chat", CH, beyond_context_max_tokens(CH), param="max_tokens"),
    Case("bound-max-tokens-2-pow-70", C, comp(max_tokens=2**70), param="max_tokens"),
    Case("bound-temperature-neg", C, comp(temperature=-0.1), param="temperature"),
    Case("bound-temperature-2.1", CH, chat(temperature=2.1), param="temperature"),
    Case("bound-top-p-0", C, comp(top_p=0), param="top_p"),
    Case("bound-top-p-1.1", CH, chat(top_p=1.1), param="top_p"),
    Case("bound-top-k-0", C, comp(top_k=0), param="top_k"),
    Case("bound-top-k-neg2", CH, chat(top_k=-2), param="top_k"),
    Case("bound-min-p-neg", C, comp(min_p=-0.1), param="min_p"),
    Case("bound-min-p-1.1", CH, chat(min_p=1.1), param="min_p"),
    Case("bound-presence-penalty-2.1", C, comp(presence_penalty=2.1), param="presence_penalty"),
    Case("bound-presence-penalty-neg2.1", CH, chat(presence_penalty=-2.1), param="presence_penalty"),
    Case("bound-frequency-penalty-2.1", CH, chat(frequency_penalty=2.1), param="frequency_penalty"),
    Case("bound-frequency-penalty-neg2.1", C, comp(frequency_penalty=-2.1), param="frequency_penalty"),
    Case("bound-repetition-penalty-0", C, comp(repetition_penalty=0), param="repetition_penalty"),
    Case("bound-repetition-penalty-neg", CH, chat(repetition_penalty=-1), param="repetition_penalty"),
    Case("bound-repetition-penalty-10.1", C, comp(repetition_penalty=10.1), param="repetition_penalty"),
    Case("bound-n-0", C, comp(n=0), param="n"),
    Case("bound-n-129", CH, chat(n=129), param="n"),
    Case("bound-n-1000", C, comp(n=1000), param="n"),
    Case("bound-best-of-2", C, comp(best_of=2), param="best_of"),
    Case("bound-stop-5-strings", C, comp(stop=["a", "b", "c", "d", "e"]), param="stop"),
    Case("bound-stop-empty-string", C, comp(stop=""), param="stop"),
    Case("bound-stop-empty-in-list", CH, chat(stop=["ok", ""]), param="stop.1"),
    Case("bound-stop-over-long", C, comp(stop="s" * 257), param="stop"),
    Case("bound-logit-bias-101", C, comp(logit_bias={"5": 101}), param="logit_bias.5"),
    Case("bound-logit-bias-neg101", CH, chat(logit_bias={"5": -101}), param="logit_bias.5"),
    Case("bound-logit-bias-non-integer-key", C, comp(logit_bias={"1.5": 1}), param="logit_bias"),
    Case("bound-logit-bias-word-key", C, comp(logit_bias={"hello": 1}), param="logit_bias"),
    Case("bound-logit-bias-oov-key", C, comp(logit_bias={"999999": 1}), param="logit_bias"),
    Case("bound-logit-bias-vocab-size-key", CH, chat(logit_bias={str(VOCAB): 1}), param="logit_bias"),
    Case("bound-logit-bias-negative-key", C, comp(logit_bias={"-1": 1}), param="logit_bias"),
    Case("bound-logit-bias-301-entries", C, comp(logit_bias={str(i): 1 for i in range(301)}), param="logit_bias"),
    Case("bound-seed-2-pow-64", C, comp(seed=2**64), param="seed"),
    Case("bound-seed-below-int64", CH, chat(seed=-(2**63) - 1), param="seed"),
    Case("bound-timeout-0", C, comp(timeout=0), param="timeout"),
    Case("bound-timeout-neg", CH, chat(timeout=-1), param="timeout"),
    Case("bound-timeout-over-a-day", C, comp(timeout=86_401), param="timeout"),
    # ---- prompts -------------------------------------------------------------------------------------------
    Case("prompt-empty-string", C, comp(prompt=""), param="prompt"),
    Case("prompt-empty-list", C, comp(prompt=[]), param="prompt"),
    Case("prompt-list-of-empty-string", C, comp(prompt=[""]), param=ANY),
    Case("prompt-list-of-empty-list", C, comp(prompt=[[]]), param=ANY),
    Case("prompt-two-strings", C, comp(prompt=["a", "b"]), param="prompt"),
    Case("prompt-two-id-lists", C, comp(prompt=[[1], [2]]), param="prompt"),
    Case("prompt-oov-token-id", C, comp(prompt=[999_999]), param="prompt"),
    Case("prompt-vocab-size-token-id", C, comp(prompt=[5, VOCAB]), param="prompt"),
    Case("prompt-oov-nested-token-id", C, comp(prompt=[[5, 10**12]]), param="prompt"),
    Case("prompt-negative-token-id", C, comp(prompt=[-1]), param=ANY),
    Case("prompt-negative-nested-token-id", C, comp(prompt=[[3, -7]]), param=ANY),
    Case("prompt-ids-beyond-context", C, beyond_context_prompt_ids, param=ANY),
    Case("prompt-text-beyond-context", C, beyond_context_prompt_text, param=ANY),
    # ---- invalid Unicode (lone surrogates as JSON escapes) --------------------------------------------------
    Case("unicode-prompt-lone-high-surrogate", C, comp(prompt="Hi \ud800 there"), param="prompt"),
    Case("unicode-prompt-lone-low-surrogate", C, comp(prompt="\udfff"), param="prompt"),
    Case("unicode-prompt-list-surrogate", C, comp(prompt=["\ud800"]), param=ANY),
    Case("unicode-chat-content-surrogate", CH, chat(messages=[{"role": "user", "content": "a\ud83db"}]), param=ANY),
    Case("unicode-chat-part-surrogate", CH, chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "\ud800"}]}]), param=ANY),
    Case("unicode-chat-name-surrogate", CH, chat(messages=[{"role": "user", "content": "Hi", "name": "\udc00"}]),
         param="messages.0.name"),
    Case("unicode-stop-surrogate", C, comp(stop=["\ud800"]), param="stop.0"),
    Case("unicode-model-surrogate", C, comp(model="\ud800"), param="model"),
    Case("unicode-user-surrogate", CH, chat(user="\ud800"), param="user"),
    # ---- chat messages -----------------------------------------------------------------------------------
    Case("chat-empty-messages", CH, chat(messages=[]), param="messages"),
    Case("chat-unknown-role", CH, chat(messages=[{"role": "wizard", "content": "Hi"}]), param="messages.0.role"),
    Case("chat-message-without-content", CH, chat(messages=[{"role": "user"}]), param="messages.0"),
    Case("chat-message-null-content", CH, chat(messages=[{"role": "user", "content": None}]), param="messages.0"),
    Case("chat-message-empty-parts", CH, chat(messages=[{"role": "user", "content": []}]), param=ANY),
    Case("chat-message-without-role", CH, chat(messages=[{"content": "Hi"}]), param="messages.0.role"),
    # ---- unknown model, unsupported features ---------------------------------------------------------------
    Case("model-unknown", C, comp(model="gpt-9"), status=404),
    Case("model-unknown-chat", CH, chat(model="gpt-9"), status=404),
    Case("model-empty-string", C, comp(model=""), status=404),
    Case("unsupported-suffix", C, comp(suffix="the end")),
    Case("bound-logprobs-21", C, comp(logprobs=21), param="logprobs"),
    Case("bound-top-logprobs-21", CH, chat(logprobs=True, top_logprobs=21), param="top_logprobs"),
    Case("top-logprobs-without-logprobs", CH, chat(top_logprobs=2)),
    Case("unsupported-audio", CH, chat(audio={"voice": "alloy", "format": "wav"}), param="audio"),
    Case("unsupported-functions", CH, chat(functions=[{"name": "f"}]), param="functions"),
    Case("bad-response-format-type", CH, chat(response_format={"type": "yaml"}), param="response_format.type"),
    Case("bad-json-schema-not-json-schema", CH, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": 5}}}), param="response_format"),
    Case("tool-choice-required-without-tools", CH, chat(tool_choice="required")),
    # ---- body size -------------------------------------------------------------------------------------------
    Case("body-oversized-declared", C, oversized_declared, status=413),
    Case("body-oversized-chunked", CH, oversized_chunked, status=413),
    # ---- other routes ----------------------------------------------------------------------------------------
    Case("route-get-completions", C, raw(b""), status=405, method="GET", content_type=None),
    Case("route-delete-chat", CH, raw(b""), status=405, method="DELETE", content_type=None),
    Case("route-post-models", "/v1/models", comp(), status=405),
    Case("route-post-health", "/health", raw(b"{}"), status=405),
    Case("route-put-metrics", "/metrics", raw(b"{}"), status=405, method="PUT"),
    Case("route-unknown", "/v1/embeddings", comp(), status=404),
    Case("route-unknown-get", "/v1/nothing/../../etc/passwd", raw(b""), status=404, method="GET", content_type=None),
]

ERROR_KEYS = {"message", "type", "param", "code"}


def greedy_canary(http: httpx.Client, model: str) -> str:
    response = http.post(C, json={"model": model, "prompt": "The capital of France is", "temperature": 0,
                                  "max_tokens": 16})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] >= 1
    return body["choices"][0]["text"]


@pytest.fixture(scope="module")
def canary_before(server) -> str:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        text = greedy_canary(http, server.model)
    assert text
    return text


def assert_alive(http: httpx.Client, server) -> None:
    assert server.process is None or server.process.poll() is None, server.log_tail()
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_a_4xx_in_openai_shape(case: Case, server, http, canary_before):
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    content = case.build(server.model, server.max_model_len)
    response = http.request(case.method, case.path, content=content, headers=headers)

    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    if case.param is not ANY:
        assert error["param"] == case.param, error
    if case.status == 404 and case.path in (C, CH):
        assert error["code"] == "model_not_found", error
    if case.status == 413:
        assert error["code"] == "request_too_large", error
    if case.id.startswith(("bound-max-tokens-beyond", "prompt-ids-beyond", "prompt-text-beyond")):
        assert error["code"] == "context_length_exceeded", error
    assert_alive(http, server)


# Each body is otherwise valid and asks for at most 2 tokens, so an accepted one ends at once.
COERCED: list[tuple[str, str, Callable[[str, int], Body]]] = [
    ("max-tokens-bool", C, comp(max_tokens=True)),
    ("max-tokens-numeric-string", C, comp(max_tokens="2")),
    ("temperature-numeric-string", CH, chat(temperature="0.5")),
    ("stream-yes-string", C, comp(stream="yes")),
    ("echo-on-string", C, comp(echo="on")),
    ("n-bool", CH, chat(n=True)),
]


@pytest.mark.parametrize(("path", "build"), [(path, build) for _, path, build in COERCED],
                         ids=[name for name, _, _ in COERCED])
def test_wrong_json_types_are_not_coerced(path, build, server, http, canary_before):
    response = http.post(path, content=build(server.model, server.max_model_len),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert set(response.json()["error"]) == ERROR_KEYS


def test_the_canary_is_unchanged_after_the_corpus(server, http, canary_before):
    """Runs last in this module: the same greedy request gives the same text as before the corpus."""
    assert greedy_canary(http, server.model) == canary_before
    deadline = time.monotonic() + 5  # a finished request leaves the engine's books within a step
    while (health := http.get("/health").json())["active_requests"] or health["kv_cache_bytes"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
