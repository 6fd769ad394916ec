"""Serving the app with uvicorn, and what SIGTERM/SIGINT do to it.

The first signal drains (app/api/drain.py) while the server still listens, so new requests get a
503 instead of a refused connection; then uvicorn's own shutdown runs and the process exits 0. A
second signal skips the rest of the drain; a third stops waiting for open connections.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.api.drain import drain
from app.config import Settings

log = logging.getLogger(__name__)

# After the drain, what uvicorn still waits for open responses (the last bytes of finished streams).
GRACEFUL_SHUTDOWN_S = 5
STARTUP_FAILURE = 3  # uvicorn's exit code when the app cannot start


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[object]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._signalled = False

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        resume_garbage_collection()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's, records no signal: uvicorn would re-raise it at exit and the code would be -15.
        if self._signalled or not self.started or self._loop is None:
            self.force_exit = self.should_exit  # a third signal: stop waiting for connections
            self.should_exit = True
            return
        self._signalled = True
        log.info("received %s: draining", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:  # noqa: BLE001 - a failed drain must still let the server exit
            log.exception("drain failed")
        finally:
            self.should_exit = True


def resume_garbage_collection() -> None:
    """Collection back on after a start-up that paused it (app/__main__.py). What is alive now stays
    for the process's life: frozen, later collections skip it."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def serve(app: FastAPI, settings: Settings) -> int:
    """Run the server until it is stopped; the process exit code."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            log_config=None, access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            **settings.uvicorn_options())
    state, engine = app.state.drain, app.state.engine
    server = GracefulServer(config, lambda: drain(state, engine, settings.drain_timeout_s))
    server.run()
    return 0 if server.started else STARTUP_FAILURE
