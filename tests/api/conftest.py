"""In-process API fixtures: the real app (routes, schemas, SSE, error handlers) over a FakeEngine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from tests.api.fake_engine import FakeEngine


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


async def _client(engine: FakeEngine, raise_app_exceptions: bool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine=engine)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
            yield client
    assert engine.stopped, "the lifespan must stop the engine"


@pytest.fixture
async def client(fake: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(fake, raise_app_exceptions=True):
        yield c


@pytest.fixture
async def lenient_client(fake: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    """For unexpected exceptions: Starlette answers 500 and then re-raises to the server, as designed."""
    async for c in _client(fake, raise_app_exceptions=False):
        yield c


@pytest.fixture
async def sdk(client: httpx.AsyncClient) -> AsyncIterator[openai.AsyncOpenAI]:
    """The openai SDK speaking to the app in process (same transport as `client`)."""
    http = httpx.AsyncClient(transport=client._transport, base_url="http://testserver/v1")
    async with openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http,
                                  max_retries=0) as sdk_client:
        yield sdk_client
