"""The app factory: no import-time side effects; tests inject an engine (real or fake)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.routes import router
from app.config import Settings
from app.engine.engine import Engine


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app; the lifespan starts the engine (loading the model) and stops it on shutdown."""
    if engine is None:
        engine = Engine((settings or Settings()).engine_config())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="tokenwire", version="0.1.0", lifespan=lifespan)
    app.state.engine = engine
    app.include_router(router)
    install_error_handlers(app)
    return app
