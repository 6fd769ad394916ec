"""The model thread: the one thread that steps the EngineCore (so the one that runs torch).

Everything reaches it as a command on a queue, applied between steps: add a sequence, abort one, fail
every request in flight, stop. Events go back through each sequence's sink into the outbox, flushed to
the event loop after each forward and each turn (app/engine/scheduling/outbox.py); after each step the load
(running, waiting, KV bytes) is published as one tuple that probes read without waiting on the thread.
Between steps it also works through its chores (app/engine/scheduling/chores.py), one slice per loop turn.
"""

from __future__ import annotations

import logging
import queue
import threading

import torch

from app.engine.scheduling.chores import Chore
from app.engine.core import EngineCore
from app.engine.errors import EngineDead, EngineError
from app.engine.models.memory import release_free_memory
from app.engine.scheduling.outbox import Outbox
from app.engine.scheduling.sequence import Sequence

log = logging.getLogger(__name__)


class ModelThread:
    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self._chores: list[Chore] = []  # done in order, a slice per loop turn
        # Each counter has one writer (the caller of add_chores; this thread), so no lock is needed.
        self._chores_added = self._chores_over = 0
        self.dead: BaseException | None = None  # what killed the thread, if anything did
        self.load = (0, 0, 0)  # (running, waiting, KV bytes), replaced whole after each step
        self.prefix_cache_stats = core.prefix_cache_stats  # a frozen snapshot, replaced after each step
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.outbox = Outbox()  # where the sinks of the engine's sequences post their events
        core.on_emitted = self.outbox.flush  # each forward's tokens go out as soon as they are sampled
        # Requests of tenants holding no decode row, sent but not yet taken from the inbox (each counter
        # is written by one thread only): what may end a step early (EngineCore._cuts_short).
        self._newcomers_sent = self._newcomers_taken = 0
        self.tenants_decoding: frozenset[str] = frozenset()  # replaced whole after each step
        core.arrivals_pending = lambda: self._newcomers_sent > self._newcomers_taken
        self._thread = threading.Thread(target=self._run, name="tokenwire-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # ---- commands (safe from any thread) ---------------------------------------------------------

    def add(self, sequence: Sequence) -> None:
        newcomer = sequence.share.tenant not in self.tenants_decoding
        if newcomer:
            self._newcomers_sent += 1  # before the put: the model thread never sees more taken than sent
        self._inbox.put(("add", (sequence, newcomer)))
        if self.dead is not None:  # it died since the caller checked: nobody will read the inbox
            self._reject_queued(EngineDead("the model thread died"))
            self.outbox.flush()

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def add_chores(self, chores: list[Chore]) -> None:
        self._chores_added += len(chores)
        self._inbox.put(("chores", chores))

    @property
    def chores_left(self) -> int:
        """Chores added and not yet over, for probes and tests."""
        return self._chores_added - self._chores_over

    def fail_all(self, error: Exception) -> None:
        self._inbox.put(("fail", error))

    def stop(self) -> None:
        self._inbox.put(("stop", None))

    # ---- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        core = self.core
        try:
            with torch.inference_mode():
                while self._handle_commands(block=not (core.has_work or self._chores)):
                    if core.has_work:
                        self._step()
                        self.outbox.flush()  # expiries and releases, before any chore runs
                        if not core.has_work:
                            release_free_memory()  # idle now: return freed pages before blocking
                    if self._chores and self._chores[0].run_slice():
                        self._chores.pop(0)
                        self._chores_over += 1
                        release_free_memory()
                    self._publish_load()
                    self.outbox.flush()  # events of commands (a refused add) and chores
            self.outbox.flush()  # a stop fails what was in flight
        except BaseException as exc:  # noqa: BLE001 - the thread must report any death
            log.exception("model thread died")
            self.dead = exc
            self.load = (0, 0, 0)  # before the requests learn of it: nothing runs any more
            self._fail_everything(EngineDead("the model thread died"))
            self._reject_queued(EngineDead("the model thread died"))
            self.outbox.flush()

    def _handle_commands(self, block: bool) -> bool:
        """Apply queued commands; False once asked to stop."""
        while True:
            try:
                command, payload = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command == "stop":
                self._fail_everything(EngineDead("the engine is shutting down"))
                return False
            if command == "add":
                sequence, newcomer = payload  # type: ignore[misc]
                self._newcomers_taken += newcomer
                self._add(sequence)
            elif command == "abort":
                self.core.abort(payload)  # type: ignore[arg-type]
            elif command == "fail":
                self._fail_everything(payload)  # type: ignore[arg-type]
            elif command == "chores":
                self._chores.extend(payload)  # type: ignore[arg-type]

    def _add(self, sequence: Sequence) -> None:
        try:
            self.core.add(sequence)
        except EngineError as exc:
            sequence.sink(exc)

    def _step(self) -> None:
        try:
            self.core.step()
        except Exception:  # a failed step fails its requests, not the server
            log.exception("engine step failed; failing the requests in flight")
            self._fail_everything(EngineError("generation failed inside the engine"))

    def _publish_load(self) -> None:
        sched = self.core.scheduler
        self.load = (len(sched.admitted), len(sched.waiting), self.core.kv_cache_bytes)
        self.tenants_decoding = frozenset(s.share.tenant for s in sched.running)
        self.prefix_cache_stats = self.core.prefix_cache_stats

    def _fail_everything(self, error: Exception) -> None:
        """Tell every request first, then free them: a broken core must not keep anyone waiting."""
        sched = self.core.scheduler
        sequences = [*sched.waiting, *sched.prefilling, *sched.running]
        for sequence in sequences:
            sequence.sink(error)
        try:
            for sequence in sequences:
                self.core.abort(sequence.request_id)
        except Exception:  # noqa: BLE001 - the requests already have their error
            log.exception("freeing failed requests failed")

    def _reject_queued(self, error: EngineError) -> None:
        """Fail the adds still queued for a dead thread."""
        while True:
            try:
                command, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if command == "add":
                sequence, _ = payload  # type: ignore[misc]
                sequence.sink(error)
