"""API keys (every route but the probes needs one, as a Bearer token or x-api-key) and CORS (off unless
origins are configured)."""

from __future__ import annotations

import logging

import pytest

from app.config import Settings
from app.main import create_app
from tests.api.helpers import assert_anthropic_error, assert_error_shape
from tests.api.test_api_limits import client_for

KEY, OTHER_KEY = "sk-test-first", "sk-test-second"
OPEN = {"/health", "/ready", "/"}  # "/" is the playground page (its assets too: test_api_playground)


def flatten(routes, prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of every route, descending into included routers (FastAPI keeps them nested)."""
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            found += flatten(included.routes, prefix + route.include_context.prefix)
            continue
        path = (prefix + route.path).replace("{", "").replace("}", "")
        found += [(method, path) for method in sorted(getattr(route, "methods", None) or {"GET"}) if method != "HEAD"]
    return found


def registered_routes() -> list[tuple[str, str]]:
    app = create_app(Settings(_env_file=None, api_keys=KEY), engine=object())  # type: ignore[arg-type]
    found = flatten(app.routes)
    assert ("POST", "/v1/chat/completions") in found and ("GET", "/health") in found
    return found


def assert_401(response) -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    if response.request.url.path.startswith("/v1/messages"):  # Anthropic's API answers in its own shape
        assert_anthropic_error(response.json(), "authentication_error")
        return
    error = assert_error_shape(response.json())
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"


@pytest.mark.parametrize(("method", "path"), registered_routes())
async def test_every_route_needs_a_valid_key(fake, method, path):
    async with client_for(fake, api_keys=f"{KEY}, {OTHER_KEY}") as client:
        missing = await client.request(method, path)
        wrong = await client.request(method, path, headers={"Authorization": "Bearer sk-test-firs"})
        right = await client.request(method, path, headers={"Authorization": f"Bearer {OTHER_KEY}"})
        # Anthropic's clients send the key as x-api-key.
        wrong_x = await client.request(method, path, headers={"x-api-key": "sk-test-firs"})
        right_x = await client.request(method, path, headers={"x-api-key": KEY})
    if path in OPEN:
        assert missing.status_code != 401 and wrong.status_code != 401
    else:
        assert_401(missing)
        assert_401(wrong)
        assert_401(wrong_x)
    assert right.status_code != 401, right.text
    assert right_x.status_code != 401, right_x.text


async def test_health_stays_open_and_unknown_paths_need_a_key(fake):
    async with client_for(fake, api_keys=KEY) as client:
        assert (await client.get("/health")).status_code == 200
        assert_401(await client.get("/v2/anything"))
        assert (await client.get("/v2/anything", headers={"Authorization": f"Bearer {KEY}"})).status_code == 404


@pytest.mark.parametrize("header", [KEY, f"Basic {KEY}", f"Token {KEY}", "Bearer", "Bearer ", f"Bearer {KEY}x"])
async def test_malformed_authorization_is_401(fake, header):
    async with client_for(fake, api_keys=KEY) as client:
        assert_401(await client.get("/v1/models", headers={"Authorization": header}))


async def test_the_scheme_is_case_insensitive_and_the_key_reaches_no_engine_call(fake):
    async with client_for(fake, api_keys=KEY) as client:
        ok = await client.get("/v1/models", headers={"Authorization": f"bearer {KEY}"})
        refused = await client.post("/v1/completions", json={"model": "fake-model", "prompt": "hi"})
    assert ok.status_code == 200
    assert_401(refused)
    assert fake.calls == []


async def test_keys_from_a_file_and_the_variable_both_work(fake, tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# team keys\n{OTHER_KEY}\n\n  sk-test-third  \n")
    async with client_for(fake, api_keys=KEY, api_key_file=str(key_file)) as client:
        for key in (KEY, OTHER_KEY, "sk-test-third"):
            assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})).status_code == 200
        assert_401(await client.get("/v1/models", headers={"Authorization": "Bearer # team keys"}))


def test_a_missing_key_file_fails_at_start(tmp_path):
    settings = Settings(_env_file=None, api_key_file=str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError):
        create_app(settings, engine=object())  # type: ignore[arg-type]


async def test_no_keys_means_an_open_api(fake):
    async with client_for(fake) as client:
        assert (await client.get("/v1/models")).status_code == 200


async def test_keys_never_reach_logs_or_reprs(fake, caplog):
    settings = Settings(_env_file=None, api_keys=KEY)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    caplog.set_level(logging.DEBUG)
    async with client_for(fake, api_keys=KEY) as client:
        await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}-wrong"})
    assert KEY not in caplog.text


# ---- CORS -----------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


async def test_no_cors_headers_by_default(fake):
    async with client_for(fake) as client:
        preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
        simple = await client.get("/v1/models", headers={"Origin": "http://app.test"})
    assert preflight.status_code == 405
    for response in (preflight, simple):
        assert not any(name.startswith("access-control-") for name in response.headers)


async def test_configured_origins_get_cors_headers(fake):
    async with client_for(fake, cors_origins="http://app.test, http://other.test") as client:
        preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
        simple = await client.get("/v1/models", headers={"Origin": "http://other.test"})
        foreign = await client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "http://evil.test"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.test"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert simple.headers["access-control-allow-origin"] == "http://other.test"
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers


async def test_cors_preflight_needs_no_key_and_a_401_is_readable_by_the_page(fake):
    async with client_for(fake, cors_origins="http://app.test", api_keys=KEY) as client:
        preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
        refused = await client.get("/v1/models", headers={"Origin": "http://app.test"})
    assert preflight.status_code == 200
    assert_401(refused)
    assert refused.headers["access-control-allow-origin"] == "http://app.test"
