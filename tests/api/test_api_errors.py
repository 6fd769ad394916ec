"""Every error status and body: validation (400), unknown model (404), engine errors, unknown routes.

Every error body is exactly `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import pytest

from app.engine.errors import ContextLengthExceeded, EngineDead, EngineError, InvalidRequest, Overloaded
from tests.api.fake_engine import FakeEngine
from tests.api.helpers import assert_error_shape, chat_body, completion_body

ENDPOINTS = ["/v1/completions", "/v1/chat/completions"]


def body_for(path: str, **overrides) -> dict:
    return completion_body(**overrides) if path == "/v1/completions" else chat_body(**overrides)


async def expect_error(client, path: str, status: int, *, json=None, content=None, headers=None) -> dict:
    if content is not None:
        response = await client.post(path, content=content, headers=headers or {"content-type": "application/json"})
    else:
        response = await client.post(path, json=json)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return assert_error_shape(response.json())


def top_param(error: dict) -> str | None:
    """The field a validation error names (nested locations such as `logit_bias.5` start with it)."""
    return error["param"].split(".")[0] if error["param"] else None


# ---- malformed bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("raw", [b"{bad json", b'{"model": "fake-model",}', b"{", b'{"model": "x"'])
async def test_malformed_json_is_400(client, fake, path, raw):
    error = await expect_error(client, path, 400, content=raw)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("the body is not valid JSON")
    assert error["param"] is None and error["code"] is None
    assert fake.calls == []


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"null", b"42", b""])
async def test_a_body_that_is_not_an_object_is_400(client, fake, path, raw):
    error = await expect_error(client, path, 400, content=raw)
    assert error["type"] == "invalid_request_error"
    assert fake.calls == []


# ---- wrong types --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(("field", "value"), [
    ("model", None), ("model", 5), ("temperature", "hot"), ("top_p", [1]), ("max_tokens", "ten"),
    ("max_tokens", 1.5), ("seed", "abc"), ("stream", [1]), ("stop", 5), ("logit_bias", [1, 2]),
    ("stream_options", "yes"), ("n", "two"),
])
async def test_wrong_types_are_400_naming_the_field(client, fake, path, field, value):
    error = await expect_error(client, path, 400, json=body_for(path, **{field: value}))
    assert error["type"] == "invalid_request_error"
    assert top_param(error) == field
    assert field in error["message"]
    assert fake.calls == []


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_missing_model_is_400(client, path):
    body = body_for(path)
    del body["model"]
    error = await expect_error(client, path, 400, json=body)
    assert error["param"] == "model"


async def test_missing_prompt_is_400(client):
    body = completion_body()
    del body["prompt"]
    assert (await expect_error(client, "/v1/completions", 400, json=body))["param"] == "prompt"


@pytest.mark.parametrize("messages", [
    None, "hi", [], [{"content": "no role"}], [{"role": "wizard", "content": "x"}], [{"role": "user"}],
    [{"role": "user", "content": None}], [{"role": "user", "content": []}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
])
async def test_bad_messages_are_400(client, fake, messages):
    error = await expect_error(client, "/v1/chat/completions", 400, json=chat_body(messages=messages))
    assert top_param(error) == "messages"
    assert fake.calls == []


@pytest.mark.parametrize("prompt", [5, None, [], [[]], ["a", "b"], [[1], [2]], [-1], [[1, -2]], [1.5], [{"a": 1}]])
async def test_bad_prompts_are_400(client, fake, prompt):
    error = await expect_error(client, "/v1/completions", 400, json=completion_body(prompt=prompt))
    assert top_param(error) == "prompt"
    assert fake.calls == []


# ---- out-of-range values ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(("field", "value"), [
    ("temperature", 3), ("temperature", -0.1), ("top_p", 0), ("top_p", 1.01), ("top_k", -2), ("min_p", 1.5),
    ("n", 129), ("n", 0), ("max_tokens", 0), ("max_tokens", -5), ("presence_penalty", 5),
    ("frequency_penalty", -2.5), ("repetition_penalty", 0), ("repetition_penalty", 11),
    ("seed", 2**64), ("seed", -(2**63) - 1),
    ("stop", ["a", "b", "c", "d", "e"]), ("stop", ""), ("stop", ["ok", ""]), ("stop", "x" * 257),
    ("logit_bias", {"5": 200}), ("logit_bias", {"5": -101}), ("logit_bias", {"abc": 1}),
    ("logit_bias", {"1.5": 1}), ("logit_bias", {"--5": 1}), ("logit_bias", {"²": 1}), ("logit_bias", {"": 1}),
    ("logit_bias", {str(i): 1 for i in range(301)}),
])
async def test_out_of_range_values_are_400_naming_the_field(client, fake, path, field, value):
    error = await expect_error(client, path, 400, json=body_for(path, **{field: value}))
    assert error["type"] == "invalid_request_error"
    assert top_param(error) == field
    assert fake.calls == []


async def test_max_completion_tokens_zero_is_400(client):
    error = await expect_error(client, "/v1/chat/completions", 400, json=chat_body(max_completion_tokens=0))
    assert error["param"] == "max_completion_tokens"


async def test_best_of_above_one_is_400(client):
    error = await expect_error(client, "/v1/completions", 400, json=completion_body(best_of=2))
    assert error["param"] == "best_of"


# ---- unsupported features -----------------------------------------------------------------------


async def test_suffix_is_400(client, fake):
    error = await expect_error(client, "/v1/completions", 400, json=completion_body(suffix="tail"))
    assert "suffix" in error["message"]
    assert fake.calls == []


@pytest.mark.parametrize("logprobs", [-1, 21, True])
async def test_completion_logprobs_out_of_bounds_are_400(client, logprobs):
    error = await expect_error(client, "/v1/completions", 400, json=completion_body(logprobs=logprobs))
    assert error["param"] == "logprobs"


@pytest.mark.parametrize(("fields", "param"), [({"top_logprobs": 2}, None), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                                               ({"logprobs": 1}, "logprobs")])
async def test_chat_logprobs_out_of_bounds_are_400(client, fields, param):
    error = await expect_error(client, "/v1/chat/completions", 400, json=chat_body(**fields))
    assert error["param"] == param and "logprobs" in error["message"]


async def test_null_or_false_unsupported_fields_are_accepted(client):
    assert (await client.post("/v1/completions", json=completion_body(suffix=None, logprobs=None))).status_code == 200
    assert (await client.post("/v1/completions", json=completion_body(suffix=""))).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat_body(logprobs=False))).status_code == 200


# ---- unknown model ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_404(client, fake, path, stream):
    error = await expect_error(client, path, 404, json=body_for(path, model="gpt-17", stream=stream))
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "gpt-17" in error["message"]
    assert fake.calls == []


# ---- engine errors before the response starts ---------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_context_length_exceeded_is_400(client, fake, path, stream):
    message = "this model's maximum context length is 2048 tokens; the prompt has 10 tokens and max_tokens asks for 9000 more"
    fake.generate_error = ContextLengthExceeded(message, param="max_tokens")
    error = await expect_error(client, path, 400, json=body_for(path, stream=stream, max_tokens=9000))
    assert error == {"message": message, "type": "invalid_request_error", "param": "max_tokens",
                     "code": "context_length_exceeded"}


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_invalid_request_from_the_engine_is_400(client, fake, path):
    fake.generate_error = InvalidRequest("logit_bias names token id 99999, outside the vocabulary", param="logit_bias")
    error = await expect_error(client, path, 400, json=body_for(path))
    assert error == {"message": "logit_bias names token id 99999, outside the vocabulary",
                     "type": "invalid_request_error", "param": "logit_bias", "code": None}


async def test_out_of_vocabulary_token_ids_are_400(client, fake):
    error = await expect_error(client, "/v1/completions", 400, json=completion_body(prompt=[1, 2, 10**9]))
    assert error["param"] == "prompt" and "1000000000" in error["message"]
    assert fake.calls == []


async def test_empty_prompt_rejected_by_the_encoder_is_400(client, fake):
    error = await expect_error(client, "/v1/completions", 400, json=completion_body(prompt=""))
    assert error["param"] == "prompt"
    assert fake.calls == []


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_overloaded_is_429_with_retry_after(client, fake, path, stream):
    fake.generate_error = Overloaded("too many requests in flight; retry shortly", retry_after_s=3)
    response = await client.post(path, json=body_for(path, stream=stream))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert assert_error_shape(response.json()) == {
        "message": "too many requests in flight; retry shortly", "type": "rate_limit_error", "param": None,
        "code": "overloaded"}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_engine_dead_is_503(client, fake, path, stream):
    fake.generate_error = EngineDead("the model thread is not running")
    error = await expect_error(client, path, 503, json=body_for(path, stream=stream))
    assert error == {"message": "the model thread is not running", "type": "service_unavailable", "param": None,
                     "code": "engine_unavailable"}


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_dead_engine_thread_is_503(client, fake, path):
    fake.alive = False  # the fake's generate raises EngineDead itself, like the real one
    error = await expect_error(client, path, 503, json=body_for(path))
    assert error["type"] == "service_unavailable"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_other_engine_errors_are_500(client, fake, path):
    fake.generate_error = EngineError("generation failed inside the engine")
    error = await expect_error(client, path, 500, json=body_for(path))
    assert error == {"message": "generation failed inside the engine", "type": "server_error", "param": None,
                     "code": None}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_unexpected_exception_is_500_without_details(lenient_client, fake, path, stream):
    fake.generate_error = RuntimeError("secret internals /etc/passwd")
    response = await lenient_client.post(path, json=body_for(path, stream=stream))
    assert response.status_code == 500
    assert assert_error_shape(response.json()) == {
        "message": "internal server error", "type": "server_error", "param": None, "code": None}


async def test_model_not_loaded_is_503():
    import httpx
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    fake = FakeEngine(info_on_start=None)
    app = create_app(engine=fake)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as client:
            for path in ENDPOINTS:
                error = await expect_error(client, path, 503, json=body_for(path))
                assert error["type"] == "service_unavailable"
            models = (await client.get("/v1/models")).json()
            assert [m["id"] for m in models["data"]] == ["fake-model"] and "max_model_len" not in models["data"][0]


# ---- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/v1/embeddings", "/v1/chat/completion", "/v2/completions"])
async def test_unknown_route_is_404(client, path):
    for response in (await client.get(path), await client.post(path, json={})):
        assert response.status_code == 404
        assert assert_error_shape(response.json())["type"] == "invalid_request_error"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/completions"), ("GET", "/v1/chat/completions"),
                                              ("POST", "/v1/models"), ("DELETE", "/health")])
async def test_wrong_method_is_405(client, method, path):
    response = await client.request(method, path)
    assert response.status_code == 405
    assert assert_error_shape(response.json())["type"] == "invalid_request_error"
