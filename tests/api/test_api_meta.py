"""/v1/models, /health and the lifespan (the app starts and stops the injected engine)."""

from __future__ import annotations

from tests.api.fake_engine import FAKE_RUNTIME, MODEL_NAME


async def test_models(client):
    response = await client.get("/v1/models")
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": [{
        "id": MODEL_NAME, "object": "model", "created": 1_700_000_000, "owned_by": "tokenwire",
        "status": "loaded", "max_model_len": 2048}]}
    one = await client.get(f"/v1/models/{MODEL_NAME}")
    assert one.json() == response.json()["data"][0]
    missing = await client.get("/v1/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_health(client, fake):
    fake.running, fake.waiting, fake.kv_bytes, fake.chores = 2, 5, 123_456, 2
    response = await client.get("/health")
    assert response.status_code == 200
    runtime = {"device": "cpu", "dtype": "float32", "dtype_reason": "asked for", "torch_threads": 2,
               "cpu_features": ["avx2"], "isa_cap": "", "torch_version": "0.0", "forward": "transformers",
               "quantization": "none"}
    load = {"running": 2, "waiting": 5, "active_requests": 0, "kv_cache_bytes": 123_456, "start_up_chores": 2}
    body = response.json()
    model = body.pop("models")
    assert body == {"status": "ok", **load, "runtime": runtime}
    assert len(model) == 1 and model[0].pop("load_seconds") >= 0
    assert model == [{"name": MODEL_NAME, "status": "loaded", "state": "ready", **load, "runtime": runtime,
                      "keep_alive_s": None}]


async def test_health_reports_a_dead_engine(client, fake):
    fake.alive = False
    body = (await client.get("/health")).json()
    assert body["status"] == "unavailable"
    assert set(body) == {"status", "running", "waiting", "active_requests", "kv_cache_bytes", "start_up_chores",
                         "runtime", "models"}
    assert body["models"][0]["state"] == "dead"


async def test_metrics_show_what_the_server_runs_on(client):
    text = (await client.get("/metrics")).text
    lines = [line for line in text.splitlines() if line.startswith("tokenwire_runtime_info{")]
    assert len(lines) == 1 and lines[0].endswith(" 1.0"), lines
    for key, value in FAKE_RUNTIME.as_dict().items():
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        assert f'{key}="{shown}"' in lines[0]


async def test_lifespan_starts_the_engine(client, fake):
    assert fake.started and not fake.stopped  # the fixture checks `stopped` after shutdown


async def test_the_openapi_document_describes_the_real_answers(client):
    spec = (await client.get("/openapi.json")).json()
    statuses = {status for item in spec["paths"].values() for op in item.values() for status in op["responses"]}
    assert "422" not in statuses, statuses
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path in ("/v1/completions", "/v1/chat/completions"):
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
        for status in ("400", "401", "404", "408", "413", "429", "431", "503"):
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
    error = spec["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
