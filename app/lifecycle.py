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
from app.engine.errors import ModelRefused
from app.engine.models.loader import attention_overrides
from app.http_protocol import h11_with_head_deadline

log = logging.getLogger(__name__)

# After the drain, what uvicorn still waits for open responses (the last bytes of finished streams).
GRACEFUL_SHUTDOWN_S = 5
STARTUP_FAILURE = 3  # uvicorn's exit code when the app cannot start; also a refused default model's


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
        resume_garbage_collection(asyncio.get_running_loop())

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


# After start-up, when to sweep the garbage it left (0.15 s for the default model, which would delay
# the first answer) and freeze what survives: modules and the model stay for the process's life, so
# later full collections need not walk them again.
FREEZE_AFTER_S = 5.0


def resume_garbage_collection(loop: asyncio.AbstractEventLoop) -> None:
    """Collection back on after a start-up that paused it (app/__main__.py); the one full sweep and
    the freeze come FREEZE_AFTER_S later."""
    if gc.isenabled():
        return  # nobody paused it (tests, an app embedding create_app)
    gc.enable()
    loop.call_later(FREEZE_AFTER_S, _freeze_the_start_up_heap)


def _freeze_the_start_up_heap() -> None:
    gc.collect()
    gc.freeze()


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """uvicorn keyword arguments for the connection limits.

    h11, not httptools: only h11 bounds the header size (uvicorn answers 400 and closes); our
    subclass of its protocol also bounds the time a head may take.
    """
    return {"http": h11_with_head_deadline(settings.request_head_timeout_s),
            "h11_max_incomplete_event_size": settings.max_header_bytes,
            "timeout_keep_alive": settings.keep_alive_timeout_s}


def serve(app: FastAPI, settings: Settings) -> int:
    """Run the server until it is stopped; the process exit code."""
    try:
        # Before uvicorn: its lifespan would log the refusal with a traceback, after the port was taken.
        attention_overrides(settings.engine_config().load)
    except ModelRefused as exc:
        log.error("%s", exc)
        return STARTUP_FAILURE
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            log_config=None, access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            **uvicorn_options(settings))
    state, models = app.state.drain, app.state.models
    server = GracefulServer(config, lambda: drain(state, models, settings.drain_timeout_s))
    server.run()
    return 0 if server.started else STARTUP_FAILURE
