"""ModelLeases (pure ASGI, innermost): a request holds the models it uses until its response has been
sent, a stream's last event included, so no model is unloaded under a request (app/engine/model_pool.py)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send


class ModelLeases:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        leases: list = []
        scope.setdefault("state", {})["model_leases"] = leases  # routes append what they acquire
        try:
            await self.app(scope, receive, send)
        finally:
            for lease in leases:
                lease.release()


def hold_until(request: Request, done: asyncio.Future) -> None:
    """Keep the request's models past its response, until `done`: a generation that outlives its
    connection (a background response, a stream whose client left) is not unloaded under."""
    leases = list(request.state.model_leases)
    request.state.model_leases.clear()
    done.add_done_callback(lambda _: [lease.release() for lease in leases])
