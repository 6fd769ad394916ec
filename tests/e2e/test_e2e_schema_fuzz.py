"""Schemathesis against the real server's own OpenAPI spec: positive and negative bodies for every
operation; no answer may be a 5xx, and every answer must be one the spec documents (status, content
type, schema: a refusal in OpenAI's error shape, or Anthropic's on /v1/messages).

A dedicated server keeps each generation short: a 256-token context and a 5 s generation deadline.
Generated bodies mostly name a random model (a fast 404), so a hook gives half of them the served name
(and chat messages without content some text), and a generated `max_tokens` inside the context is
capped at 8 tokens (values beyond it, which the server refuses at once, are kept; a missing one is set,
since the default is the rest of the context). Bounded: MAX_EXAMPLES per operation and mode, fixed
Hypothesis seed (derandomize), no shrinking.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import httpx
import hypothesis
import hypothesis.strategies as st
import pytest
import schemathesis
from schemathesis import Case, GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 50
MAX_MODEL_LEN = 256
CAPPED_TOKENS = 8
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server(start_server):
    server = start_server(TOKENWIRE_MAX_MODEL_LEN=str(MAX_MODEL_LEN), TOKENWIRE_REQUEST_TIMEOUT_S="5",
                          TOKENWIRE_SSE_KEEPALIVE_S="1")
    yield server
    server.stop()


def _bounded(body: object, served: str, use_served_model: bool) -> object:
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if use_served_model and isinstance(body.get("model"), str):
        body["model"] = served
        if isinstance(body.get("messages"), list):  # the spec says `content` is optional; it is not
            body["messages"] = [{**m, "content": "Hi"} if isinstance(m, dict) and m.get("content") is None else m
                                for m in body["messages"]]
    for name in TOKEN_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and CAPPED_TOKENS < value <= MAX_MODEL_LEN:
            body[name] = CAPPED_TOKENS
    if not any(name in body for name in TOKEN_FIELDS):
        body["max_tokens"] = CAPPED_TOKENS  # the default, the rest of the context, takes too long here
    return body


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")

    @schema.hook
    def flatmap_body(context, body):
        return st.booleans().map(lambda use_served: _bounded(body, fuzz_server.model, use_served))

    return schema


def error_shape(ctx, response, case):
    """A refusal is OpenAI's `{"error": {message, type, param, code}}` (Anthropic's `{"type": "error",
    "error": {type, message}}` on /v1/messages), with a string message."""
    if 400 <= response.status_code < 500:
        body = json.loads(response.content)
        if case.path.startswith("/v1/messages"):
            assert set(body) == {"type", "error"} and set(body["error"]) == {"type", "message"}, body
        else:
            assert set(body) == {"error"}, body
            assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str), body


def fuzz(operation, mode: GenerationMode, hooks) -> Counter[int]:
    """Send one operation's generated cases (bounded) and check each answer; return the statuses seen."""
    statuses: Counter[int] = Counter()
    # Schemathesis also draws from the global `random` (dictionary-based values), so without this the
    # cases depend on whichever test ran before in the same process.
    random.seed(f"{operation.label} {mode.value}")

    @hypothesis.given(case=operation.as_strategy(mode, hooks=hooks))
    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    def run(case: Case) -> None:
        response = case.call_and_validate(checks=CHECKS, additional_checks=[error_shape], timeout=30)
        statuses[response.status_code] += 1

    run()
    return statuses


def _constrained(operation) -> bool:
    """Whether some parameter has values that break its schema (a plain string in the path has none)."""
    return any(not (parameter.location.value == "path" and parameter.definition.get("schema") == {
        "type": "string", "title": parameter.definition.get("schema", {}).get("title")})
        for parameter in operation.iter_parameters())


# (Schemathesis' own `schemathesis.pytest.from_fixture(...).parametrize()` needs a pytest private
# attribute that pytest 9.2 no longer has, so the operations are walked here with `as_strategy`.)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_server_errors(api_schema, mode):
    seen: dict[str, Counter[int]] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not (operation.body or _constrained(operation)):
            continue  # nothing to make invalid (no body, no parameter but a path segment any string fills)
        seen[operation.label] = fuzz(operation, mode, api_schema.hooks)
    # (A stored response's cancel is a POST too, but random ids only ever name no stored response: a 404.)
    generation = [label for label in seen if label.startswith("POST") and not label.endswith("/cancel")]
    assert set(generation) == {"POST /v1/completions", "POST /v1/chat/completions", "POST /v1/responses",
                               "POST /v1/messages", "POST /v1/messages/count_tokens", "POST /tokenize",
                               "POST /detokenize", "POST /models/load", "POST /models/unload"}, seen
    for label in generation:
        assert seen[label].total() >= MAX_EXAMPLES // 2, seen  # not vacuous
        if mode is GenerationMode.POSITIVE:
            assert seen[label][200] >= 1, seen  # some bodies reached the engine and generated
        # (Negative bodies may still get a 200: pydantic's lax mode coerces e.g. `"seed": false`; see
        # test_e2e_bad_inputs.py::test_wrong_json_types_are_not_coerced.)


def test_the_server_is_idle_and_alive_after_the_fuzz(fuzz_server):
    """Runs after the fuzz: nothing it sent is still generating (deadline 5 s) and the server still serves."""
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as http:
        deadline = time.monotonic() + 10
        while (health := http.get("/health").json())["active_requests"] or health["kv_cache_bytes"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        answer = http.post("/v1/completions", json={"model": fuzz_server.model, "prompt": "Hello",
                                                     "max_tokens": 2, "temperature": 0})
        assert answer.status_code == 200, answer.text
