"""Many models through the real app over fake engines: listing with status, load on demand, keep_alive,
POST /models/load and /models/unload, the bounds' 429, per-model metrics and /health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.engine.models.model_catalog import ModelCatalog
from app.engine.model_pool import ModelPool, PoolConfig
from app.main import create_app
from tests.api.fake_models import Factory, default_config, models_folder
from tests.api.helpers import assert_error_shape
from tests.api.test_api_observability import samples


@asynccontextmanager
async def models_client(tmp_path: Path, factory: Factory, pool: PoolConfig = PoolConfig(),
                        **settings) -> AsyncIterator[tuple[httpx.AsyncClient, ModelPool]]:
    models = ModelPool(ModelCatalog(default_config(tmp_path), str(models_folder(tmp_path / "models"))), pool, factory)
    app = create_app(Settings(_env_file=None, **settings), models=models)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
            yield client, models


def chat(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


async def statuses(client: httpx.AsyncClient, path: str = "/v1/models") -> dict[str, str]:
    return {model["id"]: model["status"] for model in (await client.get(path)).json()["data"]}


async def test_every_model_is_listed_and_a_request_naming_one_loads_it(tmp_path):
    factory = Factory()
    async with models_client(tmp_path, factory) as (client, _):
        assert await statuses(client) == {"default": "loaded", "alpha": "unloaded", "beta": "unloaded",
                                          "delta": "unloaded", "gamma": "unloaded"}
        response = await client.post("/v1/chat/completions", json=chat("alpha"))
        assert response.status_code == 200 and response.json()["model"] == "alpha"
        assert (await statuses(client, "/models"))["alpha"] == "loaded"  # the base URL without /v1 too
        assert factory.built[-1][1].calls, "the request reached alpha's own engine"
        one = (await client.get("/v1/models/alpha")).json()
        assert one["status"] == "loaded" and one["max_model_len"] == 2048
        for path in ("/v1/chat/completions", "/v1/models/nope"):
            missing = await (client.get(path) if "models" in path else client.post(path, json=chat("nope")))
            assert missing.status_code == 404 and assert_error_shape(missing.json())
            assert missing.json()["error"]["code"] == "model_not_found"
        assert [name for name, _ in factory.built] == ["default", "alpha"]


async def test_keep_alive_zero_unloads_the_model_after_the_request(tmp_path):
    async with models_client(tmp_path, Factory()) as (client, _):
        response = await client.post("/v1/completions", json={"model": "beta", "prompt": "x", "keep_alive": 0})
        assert response.status_code == 200
        await asyncio.sleep(0.05)
        assert (await statuses(client))["beta"] == "unloaded"
        kept = await client.post("/v1/responses", json={"model": "gamma", "input": "x", "keep_alive": "-1"})
        assert kept.status_code == 200
        gamma = (await client.get("/health")).json()["models"][-1]
        assert (gamma["name"], gamma["status"], gamma["keep_alive_s"]) == ("gamma", "loaded", None)
        bad = await client.post("/v1/chat/completions", json=chat("alpha", keep_alive="5 minutes"))
        assert bad.status_code == 400 and assert_error_shape(bad.json())
        assert bad.json()["error"]["param"] == "keep_alive"


async def test_models_load_and_unload_need_a_key_when_keys_are_set(tmp_path):
    async with models_client(tmp_path, Factory(), api_keys="sk-ops") as (client, _):
        key = {"Authorization": "Bearer sk-ops"}
        assert (await client.post("/models/load", json={"model": "alpha"})).status_code == 401
        loaded = await client.post("/models/load", json={"model": "alpha"}, headers=key)
        assert loaded.status_code == 200 and loaded.json()["success"] and loaded.json()["status"] == "loaded"
        unloaded = await client.post("/models/unload", json={"model": "alpha"}, headers=key)
        assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded"
        missing = await client.post("/models/load", json={"model": "nope"}, headers=key)
        assert missing.status_code == 404 and assert_error_shape(missing.json())


async def test_a_model_that_cannot_be_placed_gets_429_with_retry_after(tmp_path):
    factory = Factory()
    async with models_client(tmp_path, factory, PoolConfig(max_loaded=1)) as (client, _):
        default = factory.built[0][1]
        default.event_delay_s = 0.2  # a stream holds the default model while alpha is asked for
        stream = asyncio.create_task(client.post("/v1/chat/completions", json=chat("default")))
        await asyncio.sleep(0.05)
        refused = await client.post("/v1/chat/completions", json=chat("alpha"))
        assert refused.status_code == 429 and assert_error_shape(refused.json())
        assert int(refused.headers["retry-after"]) >= 1
        assert (await stream).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat("alpha"))).status_code == 200
        assert await statuses(client) | {"beta": "-", "gamma": "-", "delta": "-"} == {
            "default": "unloaded", "alpha": "loaded", "beta": "-", "gamma": "-", "delta": "-"}


async def test_a_request_for_a_loaded_model_does_not_wait_for_another_models_load(tmp_path):
    factory = Factory()
    async with models_client(tmp_path, factory) as (client, models):
        factory.load_s = 1.0
        loading = asyncio.create_task(client.post("/v1/chat/completions", json=chat("alpha")))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        response = await client.post("/v1/chat/completions", json=chat("default"))
        assert response.status_code == 200 and time.monotonic() - started < 0.5
        health = (await client.get("/health")).json()
        alpha = next(model for model in health["models"] if model["name"] == "alpha")
        assert alpha["status"] == "loading" and alpha["loading"]["stage"] == "weights"
        assert not loading.done()
        assert (await loading).status_code == 200


async def test_metrics_are_per_model(tmp_path):
    async with models_client(tmp_path, Factory()) as (client, _):
        for model in ("default", "alpha", "alpha"):
            assert (await client.post("/v1/chat/completions", json=chat(model))).status_code == 200
        metrics = samples((await client.get("/metrics")).text)
    stop = lambda model: metrics[("tokenwire_requests_total", (  # noqa: E731
        ("endpoint", "chat_completions"), ("model", model), ("outcome", "stop")))]
    assert (stop("default"), stop("alpha")) == (1, 2)
    assert metrics[("tokenwire_model_loaded", (("model", "alpha"),))] == 1
    assert metrics[("tokenwire_model_loaded", (("model", "beta"),))] == 0
    assert ("tokenwire_requests_running", (("model", "alpha"),)) in metrics
    assert ("tokenwire_requests_running", (("model", "beta"),)) not in metrics
    assert metrics[("tokenwire_time_to_first_token_seconds_count", (("model", "alpha"),))] == 2


@pytest.mark.parametrize("keep_alive", [True, "1h", "-", ""])
async def test_keep_alive_takes_seconds_or_a_duration(tmp_path, keep_alive):
    async with models_client(tmp_path, Factory()) as (client, _):
        response = await client.post("/v1/chat/completions", json=chat("alpha", keep_alive=keep_alive))
        assert response.status_code == (200 if keep_alive == "1h" else 400)


async def test_a_model_that_cannot_be_loaded_is_503_with_the_reason(tmp_path):
    factory = Factory(failing=frozenset({"alpha"}))
    async with models_client(tmp_path, factory) as (client, _):
        response = await client.post("/v1/chat/completions", json=chat("alpha"))
        assert response.status_code == 503 and assert_error_shape(response.json())["code"] == "model_load_failed"
        assert "weights unreadable" in response.json()["error"]["message"]
        alpha = next(m for m in (await client.get("/health")).json()["models"] if m["name"] == "alpha")
        assert alpha["status"] == "unloaded" and "weights unreadable" in alpha["error"]
