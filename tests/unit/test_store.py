"""The store's contract, on both backends: SQLite in a file and a real redis-server on loopback."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.api.store import StoreLimits, open_store, wait_events
from app.main import keep_pruned, stop_task


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    def make(limits: StoreLimits = StoreLimits()):
        if request.param == "sqlite":
            store = open_store(f"sqlite:///{tmp_path}/store.sqlite3", limits)
        else:
            store = open_store(request.getfixturevalue("redis_url"), limits)
            store.ns = f"test-{uuid.uuid4().hex[:8]}:"  # each test its own keys
        return store

    return make


async def test_records_are_seen_only_by_their_owner(make_store):
    store = make_store()
    await store.put_record("resp_1", "alice", '{"a": 1}')
    assert await store.get_record("resp_1", "alice") == '{"a": 1}'
    assert await store.get_record("resp_1", "bob") is None
    await store.put_record("resp_1", "bob", '{"stolen": true}')  # another key cannot overwrite it
    assert await store.get_record("resp_1", "alice") == '{"a": 1}'
    assert not await store.delete_record("resp_1", "bob")
    await store.put_record("resp_1", "alice", '{"a": 2}')
    assert await store.get_record("resp_1", "alice") == '{"a": 2}'
    assert await store.delete_record("resp_1", "alice")
    assert await store.get_record("resp_1", "alice") is None
    assert not await store.delete_record("resp_1", "alice")
    await store.close()


async def test_event_logs_append_in_order_and_read_after_a_position(make_store):
    store = make_store()
    assert await store.read_events("s1", "alice", -1) is None
    await store.append_events("s1", "alice", [(0, "id: 0\ndata: a\n\n"), (1, "id: 1\ndata: b\n\n")])
    await store.append_events("s1", "alice", [(2, "id: 2\ndata: [DONE]\n\n")], ended=True)
    whole = await store.read_events("s1", "alice", -1)
    assert [p for p, _ in whole.events] == [0, 1, 2] and whole.ended
    tail = await store.read_events("s1", "alice", 1)
    assert tail.events == [(2, "id: 2\ndata: [DONE]\n\n")]
    assert (await store.read_events("s1", "alice", 2)).events == []
    assert await store.read_events("s1", "bob", -1) is None
    with pytest.raises(PermissionError):
        await store.append_events("s1", "bob", [(3, "x")])
    with pytest.raises(ValueError):  # a gap or a repeat would break "no gap, no duplicate"
        await store.append_events("s1", "alice", [(5, "x")])
    await store.close()


async def test_a_reader_waits_for_events_another_writer_appends(make_store):
    store = make_store()
    await store.append_events("s2", "k", [(0, "first")])
    seen = asyncio.create_task(wait_events(store, "s2", "k", 0, timeout_s=5))
    await asyncio.sleep(0.1)
    assert not seen.done()
    await store.append_events("s2", "k", [(1, "second")])
    assert (await asyncio.wait_for(seen, 2)).events == [(1, "second")]
    await store.close()


async def test_deleting_a_record_drops_its_event_log(make_store):
    store = make_store()
    await store.put_record("resp_2", "k", "{}")
    await store.append_events("resp_2", "k", [(0, "e")], ended=True)
    await store.delete_record("resp_2", "k")
    assert await store.read_events("resp_2", "k", -1) is None
    await store.close()


async def test_cancel_requests_reach_any_reader(make_store):
    store = make_store()
    assert not await store.cancel_requested("resp_3")
    await store.request_cancel("resp_3")
    assert await store.cancel_requested("resp_3")
    await store.close()


async def test_age_bounds_records_and_event_logs(make_store):
    store = make_store(StoreLimits(max_age_s=3, stream_retention_s=1, max_bytes=1 << 20))
    await store.put_record("old", "k", "{}")
    await store.append_events("old-stream", "k", [(0, "e")], ended=True)
    await store.append_events("running", "k", [(0, "e")])  # a stream still being written
    await asyncio.sleep(1.3)
    await store.put_record("new", "k", "{}")
    await store.prune()
    assert await store.read_events("old-stream", "k", -1) is None  # ended: kept for the retention
    assert (await store.read_events("running", "k", -1)).events == [(0, "e")]  # running: for the age bound
    await store.append_events("running", "k", [(1, "f")])
    await asyncio.sleep(2.0)
    await store.prune()
    assert await store.get_record("old", "k") is None
    assert await store.get_record("new", "k") == "{}"
    await store.close()


async def test_size_bound_drops_the_least_recently_written_first(make_store):
    store = make_store(StoreLimits(max_bytes=10_000))
    for i in range(5):
        await store.put_record(f"r{i}", "k", "x" * 3000)
        await asyncio.sleep(0.01)
    await store.prune()
    kept = [i for i in range(5) if await store.get_record(f"r{i}", "k") is not None]
    assert kept == [2, 3, 4]  # 15 kB over a 10 kB bound: the oldest go until 90% of it is left
    assert await store.size_bytes() <= 9_000
    await store.close()


async def test_cancels_among_names_only_the_cancelled(make_store):
    store = make_store()
    await store.request_cancel("b")
    assert await store.cancels_among(["a", "b", "c"]) == {"b"}
    assert await store.cancels_among([]) == set()
    await store.close()


async def test_many_streams_append_in_one_write(make_store):
    store = make_store()
    await store.append_many([("m1", "k", [(0, "a"), (1, "b")], False), ("m2", "k", [(0, "c")], True)])
    await store.append_many([("m1", "k", [(2, "d")], True)])
    assert (await store.read_events("m1", "k", -1)).events == [(0, "a"), (1, "b"), (2, "d")]
    assert (await store.read_events("m2", "k", -1)).ended
    outcomes = await store.append_many([("m3", "k", [(0, "x")], False), ("m1", "k", [(9, "gap")], False),
                                        ("m2", "other", [(1, "y")], False)])
    assert outcomes[0] is None and isinstance(outcomes[1], ValueError) and isinstance(outcomes[2], PermissionError)
    assert (await store.read_events("m3", "k", -1)).events == [(0, "x")]  # the refused ones did not undo it
    assert [p for p, _ in (await store.read_events("m1", "k", -1)).events] == [0, 1, 2]
    await store.close()


class CancelNotPassedOn:
    """A store whose call, when cancelled, raises its own error or returns as if nothing happened (redis-py
    does either, depending on where the cancel finds the call)."""

    def __init__(self, swallow: bool) -> None:
        self.swallow = swallow

    async def prune(self) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if not self.swallow:
                raise ConnectionError("Connection closed by server.") from None


@pytest.mark.parametrize("swallow", [False, True])
async def test_the_pruning_loop_ends_when_cancelled_though_the_store_did_not_pass_the_cancel_on(swallow):
    pruning = asyncio.create_task(keep_pruned(CancelNotPassedOn(swallow)))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    await stop_task(pruning, timeout_s=2)
    assert pruning.cancelled()


async def test_the_pruning_loop_on_redis_ends_with_its_cancel_wherever_the_cancel_finds_it(redis_url):
    # Cancelled and closed after n steps of the loop: connecting, the handshake, a command in flight.
    # redis-py turns some of these cancels into ConnectionError, which the loop must not outlive.
    for steps in range(32):
        store = open_store(redis_url)
        pruning = asyncio.create_task(keep_pruned(store))
        for _ in range(steps):
            await asyncio.sleep(0)
        pruning.cancel()
        await store.close()
        await asyncio.wait([pruning], timeout=2)
        assert pruning.done(), f"the pruning loop outlived a cancel after {steps} steps"
