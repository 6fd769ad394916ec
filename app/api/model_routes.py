"""The models a server offers: OpenAI's list and retrieve, with each model's `status` (loaded, loading,
unloaded, as llama-server's router reports it), and the router's POST /models/load and /models/unload."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.openapi import MODEL_LOAD_RESPONSES, MODEL_RESPONSES, MODEL_UNLOAD_RESPONSES, UNAUTHORIZED
from app.api.routes import get_models
from app.api.schemas import ModelRequest
from app.engine.model_pool import ModelPool, ModelView

router = APIRouter()


def model_object(view: ModelView) -> dict:
    info = None if view.engine is None else view.engine.info
    body = {"id": view.name, "object": "model", "created": view.created if info is None else info.created,
            "owned_by": "tokenwire", "status": view.status.value}
    if info is not None:
        body["max_model_len"] = info.max_model_len
    return body


@router.get("/v1/models", responses=UNAUTHORIZED)
async def list_models(models: ModelPool = Depends(get_models)):
    return {"object": "list", "data": [model_object(view) for view in models.views()]}


@router.get("/v1/models/{name:path}", responses=MODEL_RESPONSES)
async def retrieve_model(name: str, models: ModelPool = Depends(get_models)):
    return model_object(models.view(name))


@router.post("/models/load", responses=MODEL_LOAD_RESPONSES)
async def load_model(body: ModelRequest, models: ModelPool = Depends(get_models)):
    """Load a model now (a request naming it would load it too); answers once it is ready."""
    return {"success": True, **model_object(await models.load(body.model))}


@router.post("/models/unload", responses=MODEL_UNLOAD_RESPONSES)
async def unload_model(body: ModelRequest, models: ModelPool = Depends(get_models)):
    """Unload a model now, or as soon as its requests in flight end."""
    return {"success": True, **model_object(await models.unload(body.model))}
