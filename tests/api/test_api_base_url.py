"""A base URL without `/v1` (`/models`, `/chat/completions`, `/completions`, `/responses`) is served exactly
like `/v1`: same answers, same auth, same metrics; OpenAPI lists only the `/v1` paths."""

from __future__ import annotations

import pytest

from tests.api.fake_engine import MODEL_NAME
from tests.api.helpers import assert_error_shape, chat_body, completion_body, sse_json
from tests.api.test_api_limits import client_for


def _without_ids(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "created", "created_at")}


async def test_models_without_v1_is_the_v1_list(client):
    response = await client.get("/models")
    assert response.status_code == 200 and response.json() == (await client.get("/v1/models")).json()


@pytest.mark.parametrize("path, body", [("/chat/completions", chat_body()), ("/completions", completion_body())])
async def test_generation_without_v1_answers_as_v1_does(client, path, body):
    plain = await client.post(path, json=body)
    assert plain.status_code == 200
    assert _without_ids(plain.json()) == _without_ids((await client.post("/v1" + path, json=body)).json())
    streamed = await client.post(path, json={**body, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    assert sse_json(streamed.text) and streamed.text.rstrip().endswith("data: [DONE]")


async def test_without_v1_the_same_key_is_needed(fake):
    async with client_for(fake, api_keys="k1") as client:
        assert (await client.post("/completions", json=completion_body())).status_code == 401
        assert (await client.get("/models")).status_code == 401
        answer = await client.post("/completions", json=completion_body(), headers={"Authorization": "Bearer k1"})
        assert answer.status_code == 200


async def test_without_v1_is_counted_under_the_same_endpoint(client):
    await client.post("/completions", json=completion_body())
    metrics = (await client.get("/metrics")).text
    counted = [line for line in metrics.splitlines()
               if line.startswith('tokenwire_requests_total{endpoint="completions"') and 'outcome="stop"' in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == 1.0


async def test_paths_with_routes_of_their_own_are_left_alone_and_unknown_ones_are_404(client):
    assert (await client.get("/health")).json()["status"] == "ok"
    assert (await client.post("/tokenize", json={"model": MODEL_NAME, "prompt": "a"})).json()["count"] == 1
    missing = await client.get("/nothing")
    assert missing.status_code == 404
    assert_error_shape(missing.json())
    wrong_method = await client.get("/chat/completions")
    assert wrong_method.status_code == 405


async def test_openapi_lists_only_the_v1_paths(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/v1/chat/completions" in paths and "/chat/completions" not in paths and "/models" not in paths
