"""The model catalog (a models folder) and the pool's loading, unloading and bounds, over fake engines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.engine import model_pool
from app.engine.errors import ModelLoadFailed, Overloaded, UnknownModel
from app.engine.models.model_catalog import ModelCatalog
from app.engine.model_pool import ModelPool, ModelStatus, PoolConfig
from tests.api.fake_models import Factory, default_config, model_folder, models_folder

MIB = 1 << 20


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return models_folder(tmp_path / "models")


async def started_pool(tmp_path: Path, models_dir: Path | None, factory: Factory, **config) -> ModelPool:
    pool = ModelPool(ModelCatalog(default_config(tmp_path), models_dir and str(models_dir)), PoolConfig(**config),
                     factory)
    await pool.start()
    return pool


def status(pool: ModelPool) -> dict[str, str]:
    return {view.name: view.status.value for view in pool.views()}


def test_the_folder_holds_subfolders_with_a_config_and_gguf_files(tmp_path, models_dir):
    catalog = ModelCatalog(default_config(tmp_path), str(models_dir))
    assert catalog.names() == ["default", "alpha", "beta", "delta", "gamma"]
    assert catalog.lookup("delta").config.load.model == str(models_dir / "delta.gguf")
    assert catalog.lookup("alpha").config.served_model_name == "alpha"
    assert catalog.lookup("alpha").file_bytes == 1000
    assert catalog.lookup("empty") is None and catalog.lookup(".hidden") is None
    model_folder(models_dir, "epsilon")  # copied in while the server runs
    assert catalog.lookup("epsilon") is not None and "epsilon" in catalog.names()


def test_the_default_model_in_the_folder_is_listed_once_by_its_own_name(tmp_path, models_dir):
    default = default_config(tmp_path)
    (models_dir / "default-copy").symlink_to(default.load.model)
    assert ModelCatalog(default, str(models_dir)).names() == ["default", "alpha", "beta", "delta", "gamma"]


async def test_a_model_loads_on_first_use_and_concurrent_requests_wait_for_one_load(tmp_path, models_dir):
    factory = Factory(load_s=0.2)
    pool = await started_pool(tmp_path, models_dir, factory)
    assert status(pool) == {"default": "loaded", "alpha": "unloaded", "beta": "unloaded", "delta": "unloaded",
                            "gamma": "unloaded"}
    waiting = [asyncio.create_task(pool.acquire("alpha")) for _ in range(5)]
    await asyncio.sleep(0.05)
    view = pool.view("alpha")
    assert view.status is ModelStatus.LOADING and view.loading_s is not None and view.load_stage == "weights"
    leases = await asyncio.gather(*waiting)
    assert factory.loads_of("alpha") == 1 and len({id(lease.engine) for lease in leases}) == 1
    assert pool.view("alpha").status is ModelStatus.LOADED and pool.view("alpha").load_s >= 0.2
    for lease in leases:
        lease.release()
    await pool.stop()
    assert all(engine.stopped for _, engine in factory.built)


async def test_a_caller_that_goes_away_does_not_cancel_the_load(tmp_path, models_dir):
    factory = Factory(load_s=0.2)
    pool = await started_pool(tmp_path, models_dir, factory)
    impatient = asyncio.create_task(pool.acquire("alpha"))
    await asyncio.sleep(0.05)
    impatient.cancel()
    lease = await pool.acquire("alpha")
    assert factory.loads_of("alpha") == 1 and lease.engine.started
    assert pool.view("alpha").status is ModelStatus.LOADED
    lease.release()
    assert (await pool.unload("alpha")).status is ModelStatus.UNLOADED  # the one that left holds nothing
    await pool.stop()


async def test_an_unknown_name_is_refused_without_loading(tmp_path, models_dir):
    factory = Factory()
    pool = await started_pool(tmp_path, models_dir, factory)
    with pytest.raises(UnknownModel):
        await pool.acquire("nope")
    with pytest.raises(UnknownModel):
        pool.check("nope")
    assert [name for name, _ in factory.built] == ["default"]
    await pool.stop()


async def test_the_least_recently_used_idle_model_makes_room(tmp_path, models_dir):
    factory = Factory()
    pool = await started_pool(tmp_path, models_dir, factory, max_loaded=3)
    for name in ("alpha", "beta"):
        (await pool.acquire(name)).release()
    (await pool.acquire("default")).release()  # now alpha is the least recently used
    (await pool.acquire("gamma")).release()
    assert status(pool) == {"default": "loaded", "alpha": "unloaded", "beta": "loaded", "delta": "unloaded",
                            "gamma": "loaded"}
    assert dict(factory.built)["alpha"].stopped
    await pool.stop()


async def test_a_busy_model_is_never_unloaded_and_a_full_pool_of_busy_models_answers_overloaded(tmp_path, models_dir):
    factory = Factory()
    pool = await started_pool(tmp_path, models_dir, factory, max_loaded=2)
    held = [await pool.acquire("default"), await pool.acquire("alpha")]
    with pytest.raises(Overloaded) as refused:
        await pool.acquire("beta")
    assert refused.value.retry_after_s >= 1
    assert status(pool)["beta"] == "unloaded" and pool.view("beta").status is ModelStatus.UNLOADED
    # A request in flight keeps a model busy after its lease too (the engine counts it).
    engine = held[1].engine
    engine._open_iterators = 1
    held[1].release()
    with pytest.raises(Overloaded):
        await pool.acquire("beta")
    engine._open_iterators = 0
    (await pool.acquire("beta")).release()
    assert status(pool)["alpha"] == "unloaded" and status(pool)["default"] == "loaded"
    held[0].release()
    await pool.stop()


async def test_the_memory_budget_counts_weight_files_and_the_kv_budget(tmp_path, models_dir):
    factory = Factory()
    # default and every folder model: 1000 bytes of weights + 1 MiB of KV budget; room for two.
    pool = await started_pool(tmp_path, models_dir, factory, memory_budget_bytes=2 * MIB + 2500)
    for name in ("alpha", "default", "beta"):
        (await pool.acquire(name)).release()
    assert status(pool)["alpha"] == "unloaded"  # default + beta fit; alpha, used least recently, made room
    model_folder(models_dir, "huge", weight_bytes=3 * MIB)
    with pytest.raises(ModelLoadFailed, match="budget"):
        await pool.acquire("huge")
    await pool.stop()


async def test_keep_alive_zero_unloads_after_the_request_and_negative_keeps_it(tmp_path, models_dir, monkeypatch):
    monkeypatch.setattr(model_pool, "REAP_INTERVAL_S", 0.02)
    factory = Factory()
    pool = await started_pool(tmp_path, models_dir, factory, keep_alive_s=0.1)
    lease = await pool.acquire("alpha", keep_alive_s=0)
    assert status(pool)["alpha"] == "loaded"
    lease.release()
    await asyncio.sleep(0.05)
    assert status(pool)["alpha"] == "unloaded"
    (await pool.acquire("beta", keep_alive_s=-1)).release()
    (await pool.acquire("gamma")).release()  # the pool's keep-alive: 0.1 s
    await asyncio.sleep(0.3)
    assert status(pool) | {"alpha": "-"} == {"default": "loaded", "alpha": "-", "beta": "loaded",
                                             "delta": "unloaded", "gamma": "unloaded"}
    assert pool.view("beta").keep_alive_s is None and pool.view("default").keep_alive_s is None
    (await pool.acquire("default", keep_alive_s=0)).release()  # a request may unload even the default model
    await asyncio.sleep(0.05)
    assert status(pool)["default"] == "unloaded"
    await pool.stop()


async def test_a_model_in_use_outlives_its_keep_alive(tmp_path, models_dir, monkeypatch):
    monkeypatch.setattr(model_pool, "REAP_INTERVAL_S", 0.02)
    pool = await started_pool(tmp_path, models_dir, Factory(), keep_alive_s=0.05)
    lease = await pool.acquire("alpha")
    await asyncio.sleep(0.2)
    assert status(pool)["alpha"] == "loaded"
    lease.release()
    await asyncio.sleep(0.2)
    assert status(pool)["alpha"] == "unloaded"
    await pool.stop()


async def test_unload_waits_for_the_requests_in_flight(tmp_path, models_dir):
    pool = await started_pool(tmp_path, models_dir, Factory())
    await pool.unload("alpha")  # not loaded: nothing to do, and nothing remembered for its next load
    (await pool.acquire("alpha")).release()
    assert pool.view("alpha").status is ModelStatus.LOADED
    lease = await pool.acquire("alpha")
    assert (await pool.unload("alpha")).status is ModelStatus.LOADED
    lease.release()
    await asyncio.sleep(0.05)
    assert status(pool)["alpha"] == "unloaded"
    assert (await pool.load("alpha")).status is ModelStatus.LOADED  # and back on demand,
    assert pool.view("alpha").keep_alive_s == 300  # with the pool's keep-alive again
    await pool.stop()


async def test_a_failed_load_says_why_and_the_next_request_tries_again(tmp_path, models_dir):
    factory = Factory(failing=frozenset({"alpha"}))
    pool = await started_pool(tmp_path, models_dir, factory)
    with pytest.raises(ModelLoadFailed, match="weights unreadable"):
        await pool.acquire("alpha")
    view = pool.view("alpha")
    assert view.status is ModelStatus.UNLOADED and "weights unreadable" in view.error
    factory.failing = frozenset()
    (await pool.acquire("alpha")).release()
    assert pool.view("alpha").status is ModelStatus.LOADED and pool.view("alpha").error is None
    await pool.stop()


async def test_a_failing_default_model_stops_the_start_up_with_its_own_error(tmp_path):
    pool = ModelPool(ModelCatalog(default_config(tmp_path)), PoolConfig(), Factory(failing=frozenset({"default"})))
    with pytest.raises(OSError, match="weights unreadable"):
        await pool.start()
