"""/v1/models, /health and the lifespan (the app starts and stops the injected engine)."""

from __future__ import annotations

from tests.api.fake_engine import MODEL_NAME


async def test_models(client):
    response = await client.get("/v1/models")
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": [{
        "id": MODEL_NAME, "object": "model", "created": 1_700_000_000, "owned_by": "tokenwire",
        "max_model_len": 2048}]}


async def test_health(client, fake):
    fake.running, fake.waiting, fake.kv_bytes = 2, 5, 123_456
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "running": 2, "waiting": 5, "active_requests": 0,
                               "kv_cache_bytes": 123_456}


async def test_health_reports_a_dead_engine(client, fake):
    fake.alive = False
    body = (await client.get("/health")).json()
    assert body["status"] == "unavailable"
    assert set(body) == {"status", "running", "waiting", "active_requests", "kv_cache_bytes"}


async def test_lifespan_starts_the_engine(client, fake):
    assert fake.started and not fake.stopped  # the fixture checks `stopped` after shutdown
