"""Draining (SIGTERM): refuse new generation requests, let those in flight finish until a deadline,
then end the rest with an error event (streams) or a 503 (non-streamed), so the process can exit.

`DrainGate` (middleware) counts generation requests until their response is fully sent (a stream
that outlives its connection, until it ends); `drain()` is
what the server runs on the first SIGTERM before it stops listening.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import Draining, error_response
from app.api.request_context import GENERATION_ENDPOINTS, after_generation

log = logging.getLogger(__name__)

# After the deadline: time for the error events to reach their clients.
FAIL_GRACE_S = 5.0


@dataclass
class DrainState:
    closed: bool = False
    num_in_flight: int = 0  # generation requests whose response has not ended


class DrainGate:
    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_ENDPOINTS:
            await self.app(scope, receive, send)
            return
        if self.state.closed:
            await refusal(scope)(scope, receive, send)
            return
        self.state.num_in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            after_generation(scope.setdefault("state", {}), self._one_less)

    def _one_less(self) -> None:
        self.state.num_in_flight -= 1


def refusal(scope: Scope) -> JSONResponse:
    scope.setdefault("state", {})["error_code"] = "draining"
    # Closing the connection sends the client's next request to another instance.
    return error_response(Draining(), scope, headers={"Connection": "close"})


async def drain(state: DrainState, models, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Close the gate and wait for the requests in flight; True if they all finished in time."""
    state.closed = True
    log.info("draining: %d generation requests in flight, deadline %gs", state.num_in_flight, timeout_s)
    if await _wait_idle(state, timeout_s, poll_s):
        log.info("drained: every request finished")
        return True
    log.warning("drain deadline passed: ending %d requests with an error", state.num_in_flight)
    models.fail_all(Draining("the server shut down before this request finished"))
    await _wait_idle(state, FAIL_GRACE_S, poll_s)
    return False


async def _wait_idle(state: DrainState, timeout_s: float, poll_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while state.num_in_flight and loop.time() < deadline:
        await asyncio.sleep(poll_s)
    return state.num_in_flight == 0
