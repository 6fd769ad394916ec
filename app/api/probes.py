"""Operational routes: liveness, readiness and Prometheus metrics.

They read only plain values the engines publish (ints, their state), never a model thread, so they
answer at once under full load.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.api.openapi import METRICS_RESPONSES, PROBE_RESPONSES
from app.api.routes import get_models
from app.engine.model_pool import ModelPool, ModelView
from app.engine.types import EngineState

router = APIRouter()

LOAD_FIGURES = {"running": "num_running", "waiting": "num_waiting", "active_requests": "num_active_requests",
                "kv_cache_bytes": "kv_cache_bytes", "start_up_chores": "chores_left"}


@router.get("/health", responses=PROBE_RESPONSES)
async def health(models: ModelPool = Depends(get_models)):
    """Liveness, the load of every loaded model (totals, then each model's with its state, load progress
    and runtime: device, dtype, threads, CPU features); 503 once a loaded model died."""
    views = models.views()
    loaded = [view.engine for view in views if view.engine is not None]
    default = models.default_engine
    body = {"status": "ok" if models.is_alive else "unavailable",
            **{field: sum(getattr(engine, attribute) for engine in loaded) for field, attribute in LOAD_FIGURES.items()},
            "runtime": None if default is None or default.runtime is None else default.runtime.as_dict(),
            "models": [model_health(view) for view in views]}
    return JSONResponse(body, status_code=200 if models.is_alive else 503)


def model_health(view: ModelView) -> dict:
    body: dict = {"name": view.name, "status": view.status.value}
    engine = view.engine
    if engine is not None:
        body |= {"state": engine.state.value,
                 **{field: getattr(engine, attribute) for field, attribute in LOAD_FIGURES.items()},
                 "runtime": None if engine.runtime is None else engine.runtime.as_dict()}
    if view.loading_s is not None:
        body["loading"] = {"stage": view.load_stage, "seconds": round(view.loading_s, 1)}
    if view.load_s is not None:
        body["load_seconds"] = round(view.load_s, 2)
    body["keep_alive_s"] = view.keep_alive_s  # null: stays loaded
    if view.error is not None:
        body["error"] = view.error
    return body


@router.get("/ready", responses=PROBE_RESPONSES)
async def ready(request: Request, models: ModelPool = Depends(get_models)):
    """Readiness: 200 only once the default model is loaded and warmed up, and not while draining."""
    state = models.state
    status = "draining" if request.app.state.drain.closed and state is EngineState.READY else state.value
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSES)
async def metrics(request: Request):
    metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=metrics.content_type)
