"""StreamRelay, StoreWriter and StreamHub without HTTP: numbering, readers joining late, the unattended
bound, cancel endings, and one store write for many streams' frames."""

from __future__ import annotations

import asyncio

from app.api.store import open_store
from app.api.store_writer import StoreWriter
from app.api.stream_hub import StreamHub
from app.api.stream_relay import StreamRelay


async def frames(count: int, delay_s: float = 0.0):
    for i in range(count):
        if delay_s:
            await asyncio.sleep(delay_s)
        yield f"data: {i}\n\n"


def ending(reason: str) -> list[str]:
    return [f"data: ended {reason}\n\n"]


async def test_frames_are_numbered_and_every_reader_gets_the_same_from_where_it_asks():
    relay = StreamRelay("s", "k", None, None, ending)
    relay.start(frames(5, 0.01))
    first, late = relay.follow(), relay.follow(2)
    got = [frame async for frame in first]
    assert got == [f"id: {i}\ndata: {i}\n\n" for i in range(5)]
    assert [frame async for frame in late] == got[3:]
    await relay.done


async def test_nobody_reading_for_the_bound_cancels_with_the_ending_frames():
    relay = StreamRelay("s", "k", None, 0.1, ending)
    relay.start(frames(1000, 0.01))  # nobody ever reads: cancelled after the first reader's grace
    await asyncio.wait_for(relay.generated, 3)
    assert relay.cancelled == "unattended" and relay.frames[-1] == f"id: {len(relay.frames) - 1}\ndata: ended unattended\n\n"
    assert len(relay.frames) < 300


async def test_a_reader_holds_off_the_bound_and_leaving_rearms_it():
    relay = StreamRelay("s", "k", None, 0.1, ending)
    relay.start(frames(100, 0.01))  # a second of frames
    reader = relay.follow()
    for _ in range(25):  # 0.25 s: longer than the bound, but read throughout
        await anext(reader)
    assert relay.cancelled is None
    await reader.aclose()
    await asyncio.wait_for(relay.generated, 2)
    assert relay.cancelled == "unattended" and len(relay.frames) < 60


async def test_one_store_write_carries_every_stream_s_frames(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    calls = []
    append_many = store.append_many

    async def counted(appends):
        calls.append(len(appends))
        return await append_many(appends)

    store.append_many = counted
    writer = StoreWriter(store)
    relays = [StreamRelay(f"s{i}", "k", writer, None, ending) for i in range(20)]
    for relay in relays:
        relay.start(frames(50))
    await asyncio.gather(*(relay.done for relay in relays))
    assert sum(calls) >= 20 and len(calls) < 20 * 50 / 4  # batched across streams, not one write per frame
    for relay in relays:
        stored = await store.read_events(relay.key, "k", -1)
        assert stored.ended and [frame for _, frame in stored.events] == relay.frames
    await store.close()


async def test_the_hub_finds_a_stream_locally_then_in_the_store_and_cancels_it(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    hub = StreamHub(store, unattended_s=None)
    relay = hub.open("s1", "k", frames(1000, 0.01), ending)
    assert await hub.follow("s1", "other", -1) is None
    assert await hub.cancel("s1", "k")
    await relay.done
    assert relay.frames[-1].endswith("data: ended cancelled\n\n")
    other_process = StreamHub(store, unattended_s=None)  # sees it only through the store
    rest = [frame async for frame in await other_process.follow("s1", "k", len(relay.frames) - 3)]
    assert rest == relay.frames[-2:]
    await hub.stop()
    await store.close()


async def test_a_relay_cancelled_before_its_task_ran_still_ends():
    relay = StreamRelay("s", "k", None, None, ending)
    relay.start(frames(10))
    relay.cancel()  # before the pump's first step: its `finally` never runs
    await asyncio.wait_for(relay.done, 1)
    assert relay.ended and relay.frames == ["id: 0\ndata: ended cancelled\n\n"]


async def test_with_no_unattended_time_the_first_reader_still_gets_its_stream():
    relay = StreamRelay("s", "k", None, 0.0, ending)
    relay.start(frames(5, 0.01))
    await asyncio.sleep(0.02)  # the response starts reading a moment later
    got = [frame async for frame in relay.follow()]
    assert got[-1].endswith("data: 4\n\n") and relay.cancelled is None


async def test_a_store_that_fails_for_a_while_gets_every_frame_later_without_a_gap(tmp_path, monkeypatch):
    import app.api.store_writer as store_writer

    monkeypatch.setattr(store_writer, "RETRY_S", 0.05)
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    append_many, failing = store.append_many, {"left": 3}

    async def flaky(appends):
        if failing["left"]:
            failing["left"] -= 1
            raise OSError("database is locked")
        return await append_many(appends)

    store.append_many = flaky
    relay = StreamRelay("s", "k", StoreWriter(store), None, ending)
    relay.start(frames(20, 0.005))
    await asyncio.wait_for(relay.done, 5)
    stored = await store.read_events("s", "k", -1)
    assert stored.ended and [frame for _, frame in stored.events] == relay.frames
    await store.close()


async def test_a_stream_the_store_refuses_is_served_from_memory_and_ends(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.append_events("s", "someone else", [(0, "theirs")])
    relay = StreamRelay("s", "k", StoreWriter(store), None, ending)
    relay.start(frames(5))
    await asyncio.wait_for(relay.done, 2)
    assert [frame async for frame in relay.follow()][-1].endswith("data: 4\n\n")
    assert (await store.read_events("s", "someone else", -1)).events == [(0, "theirs")]
    await store.close()
