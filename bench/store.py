"""The store's costs, per backend: SQLite in a file and Redis (a redis-server of its own on loopback, or
--redis-url). What a stream pays per event (appends in the batches the relay writes: 1 event, and 16 as
under load), what a resume pays (reading a stream's rest; a follower's one-event poll), what a stored
response pays (put, get), and the memory a stored response takes (file or Redis memory per response).

    .venv/bin/python -m bench.store [--streams 200] [--events 200] [--responses 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from app.api.store import StoreLimits, open_store
from bench.run import free_port

# A chat chunk as the server streams it (one token), numbered.
FRAME = ('id: {n}\ndata: {{"id":"chatcmpl-0123456789abcdef0123456789abcdef","object":"chat.completion.chunk",'
         '"created":1796675646,"model":"SmolLM2-135M-Instruct","system_fingerprint":null,"choices":[{{"index":0,'
         '"delta":{{"content":" word"}},"logprobs":null,"finish_reason":null}}]}}\n\n')


def stored_response(i: int, words: int = 300) -> str:
    """A stored Response as the Responses routes keep it: the object, its input items (~3 KB in all)."""
    text = " ".join(f"word{j}" for j in range(words))
    return json.dumps({"response": {"id": f"resp_{i:032x}", "object": "response", "status": "completed",
                                    "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
                                    "usage": {"input_tokens": 40, "output_tokens": words}},
                       "input_items": [{"type": "message", "role": "user", "content": "Write a story. " * 10}]})


def per_event_us(total_s: float, events: int) -> float:
    return total_s / events * 1e6


async def measure(store, streams: int, events: int, responses: int) -> dict:
    figures: dict[str, float] = {}
    for batch in (1, 16) if streams else ():
        started = time.perf_counter()
        for s in range(streams):
            key = f"strm_b{batch}_{s}"
            for first in range(0, events, batch):
                chunk = [(n, FRAME.format(n=n)) for n in range(first, min(first + batch, events))]
                await store.append_events(key, "owner", chunk, ended=first + batch >= events)
        figures[f"append, batches of {batch} (us/event)"] = per_event_us(time.perf_counter() - started,
                                                                         streams * events)
    if streams:
        started = time.perf_counter()
        for s in range(streams):
            await store.read_events(f"strm_b1_{s}", "owner", events // 2)
        figures["resume: read the last half (us/event)"] = per_event_us(time.perf_counter() - started,
                                                                        streams * (events - events // 2 - 1))
    polls = []
    for s in range(streams):
        started = time.perf_counter()
        await store.read_events(f"strm_b1_{s}", "owner", events - 2)
        polls.append(time.perf_counter() - started)
    if polls:
        figures["follower poll, 1 new event (us, median)"] = statistics.median(polls) * 1e6
    puts, gets = [], []
    for i in range(responses):
        value = stored_response(i)
        started = time.perf_counter()
        await store.put_record(f"resp_{i}", "owner", value)
        puts.append(time.perf_counter() - started)
    for i in range(responses):
        started = time.perf_counter()
        await store.get_record(f"resp_{i}", "owner")
        gets.append(time.perf_counter() - started)
    if responses:
        figures["response put (us, median)"] = statistics.median(puts) * 1e6
        figures["response get (us, median)"] = statistics.median(gets) * 1e6
    return figures


async def sqlite_run(args) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        events_store = open_store(f"sqlite:///{folder}/events.sqlite3", StoreLimits())
        figures = await measure(events_store, args.streams, args.events, 0)
        await events_store.close()
        store = open_store(f"sqlite:///{folder}/responses.sqlite3", StoreLimits())
        before = _sqlite_bytes(folder / "responses.sqlite3")
        figures.update({k: v for k, v in (await measure(store, 0, 0, args.responses)).items() if "response" in k})
        await store.close()
        figures["memory per stored response (bytes, file)"] = (_sqlite_bytes(folder / "responses.sqlite3") - before) / args.responses
        return figures
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sqlite_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def redis_run(args, url: str) -> dict:
    import redis.asyncio as redis

    probe = redis.from_url(url)
    await probe.flushdb()
    store = open_store(url, StoreLimits())
    figures = await measure(store, args.streams, args.events, 0)
    await probe.flushdb()
    before = (await probe.info("memory"))["used_memory"]
    figures.update({k: v for k, v in (await measure(store, 0, 0, args.responses)).items() if "response" in k})
    figures["memory per stored response (bytes, Redis used_memory)"] = (
        (await probe.info("memory"))["used_memory"] - before) / args.responses
    await probe.flushdb()
    await store.close()
    await probe.aclose()
    return figures


def start_redis() -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--responses", type=int, default=2000)
    parser.add_argument("--redis-url", default="", help="an existing Redis (its database is flushed!)")
    args = parser.parse_args()
    results = {"sqlite": asyncio.run(sqlite_run(args))}
    process = None
    url = args.redis_url
    if not url:
        process, url = start_redis()
    try:
        results["redis"] = asyncio.run(redis_run(args, url))
    finally:
        if process is not None:
            process.terminate()
    rows = list(results["sqlite"])
    for row in rows + [r for r in results["redis"] if r not in rows]:
        values = [f"{results[b][row]:10.1f}" if row in results[b] else f"{'-':>10}" for b in ("sqlite", "redis")]
        print(f"{row:58s} {values[0]} {values[1]}")
    print(f"({args.streams} streams x {args.events} events; {args.responses} responses; cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
