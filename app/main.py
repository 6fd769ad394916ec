"""The app factory: no import-time side effects; tests inject an engine (real or fake) and a tracer."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app.api.anthropic_routes import router as anthropic_router
from app.api.auth import OPEN_PATHS, PLAYGROUND_PATHS, PLAYGROUND_PREFIX, ApiKeyAuth
from app.api.drain import DrainGate, DrainState
from app.api.errors import install_error_handlers
from app.api.metrics import Metrics
from app.api.model_leases import ModelLeases
from app.api.model_routes import router as model_router
from app.api.openapi import install_openapi
from app.api.canonical_path import CanonicalPath
from app.api.playground import install_playground
from app.api.probes import router as probes_router
from app.api.request_context import RequestContext
from app.api.request_limits import RequestLimits
from app.api.rate_limits import RateLimits
from app.api.responses_routes import router as responses_router
from app.api.routes import router
from app.api.store import Store, StoreLimits, end_if_cancelled, open_store
from app.api.stream_hub import StreamHub
from app.api.stream_routes import RESUME_HEADER, router as stream_router
from app.api.tenants import KeyTable
from app.api.tracing import RequestTracer
from app.config import Settings
from app.engine.engine import Engine
from app.engine.models.model_catalog import ModelCatalog
from app.engine.model_pool import ModelPool


TRACE_FLUSH_S = 5.0  # at shutdown, after the drain
PRUNE_EVERY_S = 60.0  # the store's age and size bounds are enforced this often


def create_app(settings: Settings | None = None, engine: Engine | None = None,
               tracer: RequestTracer | None = None, models: ModelPool | None = None) -> FastAPI:
    """Build the app; the lifespan loads the default model (its engine) and stops every engine on shutdown.

    `engine`: serve this engine as the default model instead of loading TOKENWIRE_MODEL (tests);
    `models`: serve this pool of models instead of the settings' (tests).
    `tracer`: spans go to it; without one, to OTEL_EXPORTER_OTLP_ENDPOINT when that is set, else nowhere.
    """
    settings = settings or Settings()
    models = models or model_pool(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.store = store = await asyncio.to_thread(open_store, settings.store_url, store_limits(settings))
        app.state.streams = StreamHub(store, settings.store_seconds()[2])
        pruning = asyncio.create_task(keep_pruned(store))
        await models.start()
        try:
            yield
        finally:
            try:
                await app.state.streams.stop()
                await stop_task(pruning)  # before the store closes: a call cut by the close is no clean end
                await models.stop()
            finally:
                await store.close()
                if app.state.tracer is not None:  # export the spans still queued, not waiting on a dead collector
                    await asyncio.wait([asyncio.create_task(asyncio.to_thread(app.state.tracer.shutdown))],
                                       timeout=TRACE_FLUSH_S)

    app = FastAPI(title="tokenwire", version="0.1.0", lifespan=lifespan)
    app.state.models = models
    app.include_router(router)
    app.include_router(responses_router)
    app.include_router(anthropic_router)
    app.include_router(model_router)
    app.include_router(stream_router)
    app.include_router(probes_router)
    if settings.playground:
        install_playground(app)
    install_error_handlers(app)
    install_openapi(app)
    add_lifecycle(app, settings)
    add_http_guards(app, settings)
    add_request_context(app, settings, models, tracer)
    app.add_middleware(CanonicalPath, routes=app.router.routes)  # outermost: every layer sees the canonical path
    return app


def store_limits(settings: Settings) -> StoreLimits:
    max_age_s, retention_s, _ = settings.store_seconds()
    return StoreLimits(max_age_s, retention_s, settings.store_max_mb << 20)


async def keep_pruned(store: Store) -> None:
    """Drop what the store's bounds no longer allow, at start-up and then every PRUNE_EVERY_S."""
    while True:
        try:
            await store.prune()
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop the pruning
            end_if_cancelled(exc)
            logging.getLogger(__name__).warning("pruning the store failed: %r", exc)
        end_if_cancelled()
        await asyncio.sleep(PRUNE_EVERY_S)


async def stop_task(task: asyncio.Task, timeout_s: float = 5.0) -> None:
    """Cancel the task and wait (at most timeout_s) until it has ended."""
    task.cancel()
    await asyncio.wait([task], timeout=timeout_s)



def model_pool(settings: Settings, engine: Engine | None = None) -> ModelPool:
    """The models served: TOKENWIRE_MODEL (or `engine`, standing in for it) and TOKENWIRE_MODELS_DIR's."""
    default = settings.engine_config()
    if engine is None:
        return ModelPool(ModelCatalog(default, settings.models_dir), settings.pool_config())
    default = replace(default, served_model_name=getattr(engine, "name", settings.model_name))
    return ModelPool(ModelCatalog(default, settings.models_dir), settings.pool_config(), lambda _: engine)


def add_lifecycle(app: FastAPI, settings: Settings) -> None:
    """Innermost, a request's hold on its models until its response ends; then the drain gate
    (app.lifecycle runs the drain on SIGTERM): it counts only requests past the guards."""
    app.state.drain = DrainState()
    app.state.sse_keepalive_s = settings.sse_keepalive_s
    app.add_middleware(ModelLeases)
    app.add_middleware(DrainGate, state=app.state.drain)


def add_request_context(app: FastAPI, settings: Settings, models: ModelPool,
                        tracer: RequestTracer | None = None) -> None:
    """Outside every guard (only CanonicalPath wraps it): every response (401s and 413s too) carries X-Request-Id and is counted and logged;
    generation requests are traced when OTEL_EXPORTER_OTLP_ENDPOINT is set (the SDK is imported only then)."""
    app.state.metrics = Metrics(models)
    app.state.log_prompts = settings.log_prompts
    if tracer is None and settings.otel_exporter_otlp_endpoint:
        tracer = RequestTracer(settings.otel_exporter_otlp_endpoint)
    app.state.tracer = tracer
    app.state.rate_limits = RateLimits()
    app.add_middleware(RequestContext, metrics=app.state.metrics, tracer=tracer,
                       rate_limits=app.state.rate_limits)


# Headers a browser page on another origin may read: when to retry, and its key's limits.
EXPOSED_HEADERS = ["Retry-After", "X-Request-Id", RESUME_HEADER, *(f"x-ratelimit-{what}-{limit}" for what in ("limit", "remaining", "reset")
                                                  for limit in ("requests", "tokens"))]


def add_http_guards(app: FastAPI, settings: Settings) -> None:
    """Innermost first: size/time limits, API keys, CORS (the guards' outermost: preflights and 401s get CORS headers)."""
    app.add_middleware(RequestLimits, max_header_bytes=settings.max_header_bytes,
                       max_bytes=settings.max_body_bytes, read_timeout_s=settings.request_read_timeout_s)
    entries = settings.api_key_entries()
    if entries:
        keys = KeyTable(entries)
        if settings.playground:
            app.add_middleware(ApiKeyAuth, keys=keys, open_paths=OPEN_PATHS | PLAYGROUND_PATHS,
                               open_prefixes=(PLAYGROUND_PREFIX,))
        else:
            app.add_middleware(ApiKeyAuth, keys=keys)
    origins = settings.cors_origin_list()
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["*"], expose_headers=EXPOSED_HEADERS)
