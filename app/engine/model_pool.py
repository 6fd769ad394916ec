"""The loaded models: one Engine per model, loaded on first use and unloaded when idle or to make room.

A request holds its model with a lease from `acquire` until its response ends; a model with a lease or
a request in flight is busy and never unloaded. A load runs on a worker thread, off every model
thread's step loop, so other models keep streaming; callers asking for a model that is loading wait for
that one load. Room is made by unloading the least recently used idle models, never a busy one; when
every model in the way is busy the caller gets Overloaded (429 with Retry-After).

Keep-alive, as Ollama counts it: an idle model is unloaded `keep_alive` seconds after its last request
ended (0: at once; negative: never). A request may set it for its model; the pool's setting applies
otherwise, except to the start-up model, which stays loaded until something says otherwise.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.engine.engine import Engine, EngineConfig
from app.engine.errors import EngineError, ModelLoadFailed, Overloaded, UnknownModel
from app.engine.models.memory import keep_large_buffers_out_of_the_heap, release_free_memory
from app.engine.models.model_catalog import CatalogEntry, ModelCatalog
from app.engine.types import EngineState

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 1.0  # how often idle models are checked against their keep-alive
MIB = 1 << 20


@dataclass(frozen=True)
class PoolConfig:
    max_loaded: int = 0  # models loaded at once; 0: no bound
    memory_budget_bytes: int = 0  # weights + KV budget of every loaded model; 0: no bound
    keep_alive_s: float = 300.0  # idle seconds before a model loaded on demand is unloaded; < 0: never


class ModelStatus(enum.Enum):
    LOADED = "loaded"
    LOADING = "loading"
    UNLOADED = "unloaded"


@dataclass
class _Slot:
    """One model's place in the pool; its engine is set only while the model is loaded."""

    entry: CatalogEntry
    engine: Engine | None = None
    loading: asyncio.Task | None = None
    starting: Engine | None = None  # the engine being loaded, until it is ready
    holders: int = 0  # leases not yet released
    last_used: float = 0.0  # monotonic time the last lease was taken or released
    keep_alive_s: float | None = None  # the last request's choice; None: the pool's
    load_started: float | None = None
    load_s: float | None = None  # how long the last load took
    error: str | None = None  # why the last load failed

    @property
    def busy(self) -> bool:
        return self.holders > 0 or (self.engine is not None and self.engine.num_active_requests > 0)

    @property
    def status(self) -> ModelStatus:
        if self.loading is not None:
            return ModelStatus.LOADING
        return ModelStatus.UNLOADED if self.engine is None else ModelStatus.LOADED

    def footprint(self) -> int:
        """Bytes counted against the memory budget: the weight files and the KV budget."""
        return self.entry.file_bytes + self.entry.config.scheduler.kv_budget_bytes


@dataclass(frozen=True)
class ModelView:
    """A model as listings show it; `engine` only while it is loaded."""

    name: str
    status: ModelStatus
    created: int  # when its files last changed (a loaded model's info says when it was loaded)
    engine: Engine | None
    loading_s: float | None  # seconds into a load in progress
    load_stage: str | None  # how far a load in progress is: reading "weights", or the "warm-up" generation
    load_s: float | None  # how long the last finished load took
    error: str | None
    keep_alive_s: float | None  # the idle time that unloads it; None: never


class ModelLease:
    """A request's hold on its model's engine, from `acquire` until the response ends."""

    def __init__(self, pool: ModelPool, slot: _Slot, engine: Engine) -> None:
        self.engine = engine
        self._pool, self._slot = pool, slot
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._released(self._slot)


class ModelPool:
    def __init__(self, catalog: ModelCatalog, config: PoolConfig = PoolConfig(),
                 new_engine: Callable[[EngineConfig], Engine] = Engine) -> None:
        keep_large_buffers_out_of_the_heap()  # so an unloaded model's memory goes back whole
        self.catalog = catalog
        self.config = config
        self._new_engine = new_engine
        self._slots: dict[str, _Slot] = {}
        self._reaper: asyncio.Task | None = None
        self._unloads: set[asyncio.Task] = set()
        self._started = self._stopped = False

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the default model (its errors stop the start-up), then watch idle models' keep-alive."""
        slot = self._slot(self.catalog.default_name)
        await self._loaded_engine(slot)
        self._started = True
        self._reaper = asyncio.create_task(self._reap_idle())

    async def stop(self) -> None:
        self._stopped = True
        if self._reaper is not None:
            self._reaper.cancel()
        loading = [slot.loading for slot in self._slots.values() if slot.loading is not None]
        if loading:
            await asyncio.wait(loading)
        await asyncio.gather(*(engine.stop() for engine in self.engines().values()))

    @property
    def state(self) -> EngineState:
        """The server's readiness: loading until the default model is ready, dead if a loaded model died."""
        if self._stopped:
            return EngineState.STOPPED
        if not self._started:
            return EngineState.LOADING
        if any(engine.state is EngineState.DEAD for engine in self.engines().values()):
            return EngineState.DEAD
        default = self.default_engine  # None once unloaded: the next request loads it again
        return EngineState.READY if default is None else default.state

    @property
    def is_alive(self) -> bool:
        return self.state is not EngineState.DEAD and not self._stopped

    # ---- what is served ---------------------------------------------------------------------

    def engines(self) -> dict[str, Engine]:
        """The loaded models' engines by name."""
        return {name: slot.engine for name, slot in self._slots.items() if slot.engine is not None}

    @property
    def default_engine(self) -> Engine | None:
        return self.engines().get(self.catalog.default_name)

    def views(self) -> list[ModelView]:
        """Every model of the catalog (the folder read again), loaded or not."""
        return [self.view(name) for name in self.catalog.names()]

    def view(self, name: str) -> ModelView:
        slot = self._slot(name)
        loading = slot.loading is not None and slot.load_started is not None
        stage = None if slot.starting is None else "weights" if slot.starting.info is None else "warm-up"
        return ModelView(name, slot.status, slot.entry.created, slot.engine,
                         time.monotonic() - slot.load_started if loading else None, stage,
                         slot.load_s, slot.error, self._keep_alive(slot))

    def check(self, name: str) -> None:
        """Raise UnknownModel unless the catalog has `name` (nothing is loaded)."""
        if self.catalog.lookup(name) is None:
            raise UnknownModel(name)

    # ---- leases -----------------------------------------------------------------------------

    async def acquire(self, name: str, keep_alive_s: float | None = None) -> ModelLease:
        """The named model's engine, loaded first if it is not; held until the lease is released.
        `keep_alive_s`: the request's keep-alive for this model (None: leave it as it is)."""
        slot = self._slot(name)
        slot.holders += 1
        slot.last_used = time.monotonic()
        try:
            engine = await self._loaded_engine(slot)
        except BaseException as exc:  # a failed load, or the caller gone (cancelled) while it ran
            self._released(slot)
            if isinstance(exc, Exception) and not isinstance(exc, EngineError):
                raise ModelLoadFailed(f"the model {name!r} could not be loaded: {slot.error}") from exc
            raise
        if keep_alive_s is not None:
            slot.keep_alive_s = keep_alive_s
        return ModelLease(self, slot, engine)

    def _released(self, slot: _Slot) -> None:
        slot.holders -= 1
        slot.last_used = time.monotonic()
        if slot.holders == 0 and self._keep_alive(slot) == 0:
            self._unload_when_idle(slot)

    async def load(self, name: str) -> ModelView:
        """Load a model now (as a request naming it would), without holding it."""
        (await self.acquire(name)).release()
        return self.view(name)

    async def unload(self, name: str) -> ModelView:
        """Unload a model now if it is idle, else as soon as its last request ends."""
        slot = self._slot(name)
        if slot.loading is not None:
            await asyncio.wait([slot.loading])
        if slot.engine is not None and slot.busy:
            slot.keep_alive_s = 0  # the last lease's release unloads it
        elif slot.engine is not None:
            await self._unload(slot)
        return self.view(name)

    def fail_all(self, error: Exception) -> None:
        for engine in self.engines().values():
            engine.fail_all(error)

    # ---- loading and unloading --------------------------------------------------------------

    def _slot(self, name: str) -> _Slot:
        entry = self.catalog.lookup(name)
        if entry is None:
            raise UnknownModel(name)
        slot = self._slots.get(name)
        if slot is None:
            slot = self._slots[name] = _Slot(entry)
        elif slot.engine is None and slot.loading is None:
            slot.entry = entry  # unloaded: the next load reads the folder as it is now
        return slot

    async def _loaded_engine(self, slot: _Slot) -> Engine:
        if slot.engine is not None:
            return slot.engine
        if slot.loading is None:
            victims = self._make_room(slot)  # decided before any await: two loads never pick the same room
            slot.loading = asyncio.create_task(self._load(slot, victims))
        # Shielded: a caller that goes away does not cancel the load others may wait for.
        return await asyncio.shield(slot.loading)

    def _make_room(self, slot: _Slot) -> list[tuple[str, Engine]]:
        """The idle models unloaded, least recently used first, so that `slot` fits the bounds; their
        engines are taken out of the pool now and stopped when the load begins."""
        if self.config.memory_budget_bytes and slot.footprint() > self.config.memory_budget_bytes:
            raise ModelLoadFailed(
                f"the model {slot.entry.name!r} needs about {slot.footprint() // MIB} MiB (weights and KV "
                f"budget), more than the models' memory budget of {self.config.memory_budget_bytes // MIB} MiB")
        others = [s for s in self._slots.values() if s is not slot and (s.engine or s.loading)]
        idle = sorted((s for s in others if s.loading is None and not s.busy), key=lambda s: s.last_used)
        victims: list[_Slot] = []
        while self._over_bounds(slot, [s for s in others if s not in victims]):
            if not idle:
                raise Overloaded(f"cannot load {slot.entry.name!r}: the models loaded are all busy and no "
                                 "more fit (TOKENWIRE_MAX_LOADED_MODELS, TOKENWIRE_MODELS_MEMORY_MB)")
            victims.append(idle.pop(0))
        return [(victim.entry.name, self._detach(victim)) for victim in victims]

    def _over_bounds(self, slot: _Slot, loaded: list[_Slot]) -> bool:
        over_count = self.config.max_loaded and len(loaded) + 1 > self.config.max_loaded
        budget = self.config.memory_budget_bytes
        over_memory = budget and sum(s.footprint() for s in loaded) + slot.footprint() > budget
        return bool(over_count or over_memory)

    async def _load(self, slot: _Slot, victims: list[tuple[str, Engine]]) -> Engine:
        if victims:
            log.info("unloading %s to make room for %s", ", ".join(name for name, _ in victims), slot.entry.name)
            await _stop(victims)
        slot.load_started = started = time.monotonic()
        engine = slot.starting = self._new_engine(slot.entry.config)
        try:
            await engine.start()
        except BaseException as exc:
            slot.error = f"{type(exc).__name__}: {exc}"
            log.error("loading %s failed: %s", slot.entry.name, slot.error)
            await engine.stop()
            raise
        finally:
            slot.loading = slot.starting = None
        slot.engine, slot.error, slot.load_s = engine, None, time.monotonic() - started
        slot.last_used = time.monotonic()
        log.info("model %s loaded in %.1fs", slot.entry.name, slot.load_s)
        return engine

    def _keep_alive(self, slot: _Slot) -> float | None:
        """Idle seconds before `slot` is unloaded; None: never."""
        seconds = slot.keep_alive_s
        if seconds is None:
            seconds = -1 if slot.entry.name == self.catalog.default_name else self.config.keep_alive_s
        return None if seconds < 0 else seconds

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            now = time.monotonic()
            for slot in list(self._slots.values()):
                keep_alive = self._keep_alive(slot)
                if (slot.engine is not None and not slot.busy and keep_alive is not None
                        and now - slot.last_used >= keep_alive):
                    log.info("unloading %s: idle for %.0fs", slot.entry.name, now - slot.last_used)
                    await _logged(self._unload(slot), slot.entry.name)

    def _unload_when_idle(self, slot: _Slot) -> None:
        if slot.engine is not None and not slot.busy:
            task = asyncio.create_task(_logged(self._unload(slot), slot.entry.name))
            self._unloads.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._unloads.discard)

    async def _unload(self, slot: _Slot) -> None:
        if slot.engine is not None:
            await _stop([(slot.entry.name, self._detach(slot))])

    @staticmethod
    def _detach(slot: _Slot) -> Engine:
        """Take the engine out of the pool; a keep-alive set by requests ends with the load it applied to."""
        engine, slot.engine, slot.keep_alive_s = slot.engine, None, None
        assert engine is not None
        return engine


async def _logged(unloading, name: str) -> None:
    """An unload nobody awaits (the reaper's, a keep-alive of 0): its failure goes to the log."""
    try:
        await unloading
    except Exception:  # noqa: BLE001 - the pool carries on; the model is out of it already
        log.exception("unloading %s failed", name)


async def _stop(unloaded: list[tuple[str, Engine]]) -> None:
    """Stop the unloaded models' engines and give their memory back to the system; the list is
    emptied as they stop, so nothing else holds them when the memory is collected."""
    while unloaded:
        name, engine = unloaded.pop()
        await engine.stop()
        del engine
        log.info("model %s unloaded", name)
    await asyncio.to_thread(_return_memory)


def _return_memory() -> None:
    """Sweep what the engine left in reference cycles (its own are broken at stop, so this is the rest;
    the start-up heap app.lifecycle froze is not walked) and give the freed heap back to the system."""
    started = time.perf_counter()
    gc.collect()
    release_free_memory()
    log.debug("memory returned in %.3fs", time.perf_counter() - started)
