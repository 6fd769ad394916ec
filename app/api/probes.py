"""Operational routes: liveness, readiness and Prometheus metrics.

They read only plain values the engine publishes (ints, its state), never the model thread, so they
answer at once under full load.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.api.openapi import METRICS_RESPONSES, PROBE_RESPONSES
from app.api.routes import get_engine
from app.api.engine_port import ServingEngine
from app.engine.types import EngineState

router = APIRouter()


@router.get("/health", responses=PROBE_RESPONSES)
async def health(engine: ServingEngine = Depends(get_engine)):
    """Liveness, the engine's load and what it runs on (device, dtype, threads, CPU features); 503 once dead."""
    body = {"status": "ok" if engine.is_alive else "unavailable", "running": engine.num_running,
            "waiting": engine.num_waiting, "active_requests": engine.num_active_requests,
            "kv_cache_bytes": engine.kv_cache_bytes, "start_up_chores": engine.chores_left,
            "runtime": None if engine.runtime is None else engine.runtime.as_dict()}
    return JSONResponse(body, status_code=200 if engine.is_alive else 503)


@router.get("/ready", responses=PROBE_RESPONSES)
async def ready(request: Request, engine: ServingEngine = Depends(get_engine)):
    """Readiness: 200 only once the model is loaded and warmed up, and not while draining."""
    state = engine.state
    status = "draining" if request.app.state.drain.closed and state is EngineState.READY else state.value
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSES)
async def metrics(request: Request):
    metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=metrics.content_type)
