"""Fair share between tenants: a small interactive tenant's TTFT next to a batch tenant that fills the queue.

For each condition (`fifo`: TOKENWIRE_FAIR_SHARE=false, first-in first-out admission; `fair`: the fair
scheduler) a fresh `python -m app` starts with two API keys, A and B (same weight, default priority):

1. idle: B alone sends `--b-requests` short chat requests one at a time → B's TTFT on an idle server;
2. A keeps `--a-streams` (160) chat streams open in a closed loop (each one that ends is replaced at
   once), `--a-max-tokens` (128) tokens each with `ignore_eos`, so more than the 64 the server runs at
   once wait in its queue; after `--warmup` s,
3. `--blocks` pairs of `--block`-second blocks, A alone and A with B sending one short request at a time
   (0.5 s apart), alternated ABBA so that a VM whose speed drifts during the run (±15-25% here within
   minutes) weighs on both kinds alike → B's TTFT under load, A's tokens/s alone and with B.

The requirement it measures: B's loaded TTFT p50 ≤ 2 × its idle p50, and A's tokens/s drops by ≤ 10%.
Prints one table for all conditions and writes bench/results/<stamp>-tenants.json (with each server's log).

    python -m bench.tenants [--conditions fifo fair] [--a-streams 160] [--blocks 6] [--block 10] [--quick] [--plain-keys]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import psutil

from bench import compile_app
from bench.client import LoadConfig, RequestResult, clock, make_client, numbered, stream_request
from bench.prompts import SHORT_PROMPT
from bench.run import RESULTS, free_port, git_revision, start_server, stop_server
from bench.stats import fmt, ms, percentile, ratio

KEY_A, KEY_B = "bench-tenant-a", "bench-tenant-b"
NAME_A, NAME_B = "batchjob", "chat"
CONDITIONS = {"fifo": "false", "fair": "true"}  # condition -> TOKENWIRE_FAIR_SHARE
B_MAX_TOKENS = 16
# B's short questions; each request is led by its number too, so no two share more than the chat
# template's own opening and the prefix cache cannot make later ones cheaper than the first.
B_PROMPTS = ["What is the capital of France?", "Name three primary colours.", "How many legs does a spider have?",
             "What is water made of?", "Give me a synonym for happy.", "Why is the sky blue?",
             "What is 12 times 12?", "Who wrote Hamlet?", "What does a bee make?", "Translate 'thank you' to Spanish."]
TTFT_LIMIT = 2.0  # B's loaded TTFT p50 / idle p50 at most
DROP_LIMIT = 10.0  # A's tokens/s drop in percent at most
GOLDEN = 0.6180339887498949
OTHERS_LIMIT = 0.1  # cores other processes may use in a block kind before the report warns

FULL = {"a_streams": 160, "a_max_tokens": 128, "blocks": 6, "block": 10.0, "warmup": 20.0, "b_requests": 20,
        "max_running": 0}
QUICK = {"a_streams": 24, "a_max_tokens": 64, "blocks": 2, "block": 4.0, "warmup": 4.0, "b_requests": 3,
         "max_running": 16}


def tenant_keys(plain: bool) -> str:
    """TOKENWIRE_API_KEYS for the two tenants: `key name=...` entries, or bare keys (servers before tenants)."""
    if plain:
        return f"{KEY_A},{KEY_B}"
    return f"{KEY_A} name={NAME_A},{KEY_B} name={NAME_B}"


def server_settings(condition: str, args: argparse.Namespace) -> dict[str, str]:
    settings = {"TOKENWIRE_API_KEYS": tenant_keys(args.plain_keys), "TOKENWIRE_API_KEY_FILE": "",
                "TOKENWIRE_FAIR_SHARE": CONDITIONS[condition]}
    if args.max_running:
        settings["TOKENWIRE_MAX_RUNNING"] = str(args.max_running)
    return settings


def first_request_tokens(stream: int, max_tokens: int) -> int:
    """max_tokens of a stream's first request, spread over 1..max_tokens (golden-ratio sequence, so any
    run of consecutive streams covers the range evenly). Every later request asks for max_tokens, so the
    running rows finish one or two at a time instead of in waves of 64 that would make throughput
    depend on where a window falls, and a free row would come only once a wave ends."""
    return 1 + int(((stream * GOLDEN) % 1.0) * max_tokens)


def chat_body(model: str, content: str, max_tokens: int, ignore_eos: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def b_message(number: int) -> str:
    return f"Question {number}: {B_PROMPTS[number % len(B_PROMPTS)]}"


@dataclass
class ClosedLoop:
    """A's load: `streams` clients, each sending its next request as soon as the last one ends."""

    client: httpx.AsyncClient
    model: str
    streams: int
    max_tokens: int
    results: list[RequestResult] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def start(self) -> None:
        numbers = itertools.count(1)

        async def one_stream(stream: int) -> None:
            tokens = first_request_tokens(stream, self.max_tokens)
            while True:
                body = chat_body(self.model, numbered(SHORT_PROMPT, f"A.{next(numbers)}"), tokens, True)
                result = await stream_request(self.client, "/v1/chat/completions", body, self.results)
                tokens = self.max_tokens
                if result.error:  # a refusal (429, 503) must not turn into a busy loop
                    await asyncio.sleep(0.5)

        self.tasks = [asyncio.create_task(one_stream(i)) for i in range(self.streams)]

    async def stop(self) -> None:
        """Cancel every stream (the connections close; the server aborts their requests)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def tokens_between(results: list[RequestResult], start: float, end: float) -> float:
    """Completion tokens whose content chunk arrived in [start, end): each chunk counts as the request's
    usage.completion_tokens / its number of content chunks (1 until the usage chunk has come)."""
    total = 0.0
    for r in results:
        times = r.chunk_times
        if not times or times[0] >= end or times[-1] < start:
            continue
        inside = bisect.bisect_left(times, end) - bisect.bisect_left(times, start)
        total += inside * (r.usage_tokens / len(times) if r.usage_tokens else 1.0)
    return total


def ttfts(results: list[RequestResult], start: float = float("-inf"), end: float = float("inf")) -> list[float]:
    """Seconds to the first content chunk of the requests sent in [start, end) that got one without an
    error (a stream cancelled at the end after its first token counts)."""
    return [r.t_first - r.t_start for r in results
            if r.error is None and r.t_first is not None and start <= r.t_start < end]


def errors(results: list[RequestResult]) -> list[str]:
    return [r.error for r in results if r.error]


async def queue_sample(client: httpx.AsyncClient) -> dict[str, float]:
    """tokenwire_requests_waiting and _running from /metrics now."""
    try:
        response = await client.get("/metrics", timeout=10.0)
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    if response.status_code != 200:
        return {"error": f"HTTP {response.status_code}"}
    return parse_queue_metrics(response.text)


def parse_queue_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("tokenwire_requests_waiting", "tokenwire_requests_running"):
            samples[name.removeprefix("tokenwire_requests_")] = float(value)
    return samples


class CpuMeter:
    """CPU seconds of the whole machine (busy, all cores), of the server process and of this one, so a
    window can tell how much CPU something else took (another job on a shared machine) and VM steal."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)

    def read(self) -> dict[str, float]:
        machine = psutil.cpu_times()
        server = self.server.cpu_times()
        me = os.times()
        return {"busy": machine.user + machine.nice + machine.system + getattr(machine, "irq", 0.0)
                + getattr(machine, "softirq", 0.0), "steal": getattr(machine, "steal", 0.0),
                "server": server.user + server.system, "client": me.user + me.system}

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
        """Cores used in the interval: server, client, everything else, and VM steal."""
        delta = {key: after[key] - before[key] for key in before}
        return {"server": delta["server"] / seconds, "client": delta["client"] / seconds,
                "others": max(0.0, delta["busy"] - delta["server"] - delta["client"]) / seconds,
                "steal": delta["steal"] / seconds}


def timeline(results: list[RequestResult], start: float, end: float, step: float = 1.0) -> list[float]:
    """Tokens per second in consecutive `step`-second bins from `start` (each chunk weighted as above)."""
    bins = [0.0] * max(1, int((end - start) / step))
    for r in results:
        weight = r.usage_tokens / len(r.chunk_times) if r.usage_tokens and r.chunk_times else 1.0
        for t in r.chunk_times:
            index = int((t - start) / step)
            if 0 <= index < len(bins):
                bins[index] += weight / step
    return [round(x, 1) for x in bins]


async def sample_at(client: httpx.AsyncClient, when: float) -> dict[str, float]:
    await asyncio.sleep(max(0.0, when - clock()))
    return await queue_sample(client)


async def b_one_at_a_time(client: httpx.AsyncClient, model: str, numbers: itertools.count, results: list,
                          until: float, count: int, pause: float) -> None:
    """B's requests one after the other, `pause` s apart: `count` of them, or sent until `until`."""
    sent = 0
    while sent < count and clock() < until:
        body = chat_body(model, b_message(next(numbers)), B_MAX_TOKENS, False)
        await stream_request(client, "/v1/chat/completions", body, results)
        sent += 1
        await asyncio.sleep(pause)


async def every_second(meter: CpuMeter, client: httpx.AsyncClient, start: float, out: list[dict]) -> None:
    """Once a second from `start` until cancelled: the cores each party used in that second, and the
    engine's running / waiting from /health (no key needed; the JSON's per-second record)."""
    before = meter.read()
    for second in itertools.count(1):
        await asyncio.sleep(max(0.0, start + second - clock()))
        now = meter.read()
        row = {key: round(value, 2) for key, value in CpuMeter.cores(before, now, 1.0).items()}
        before = now
        try:
            health = (await client.get("/health", timeout=2.0)).json()
            row.update(running=health.get("running"), waiting=health.get("waiting"))
        except (httpx.HTTPError, ValueError):
            pass
        out.append(row)


async def measure(url: str, args: argparse.Namespace, server_pid: int) -> dict:
    """The three phases against one running server."""
    def cfg(key: str) -> LoadConfig:
        return LoadConfig(url=url, api_key=key, request_timeout_s=args.request_timeout)

    async with make_client(cfg(KEY_A), args.a_streams) as client_a, make_client(cfg(KEY_B), 2) as client_b:
        models = await client_b.get("/v1/models")
        if models.status_code != 200:
            raise RuntimeError(f"GET /v1/models with key B: HTTP {models.status_code} {models.text[:200]} "
                               "(a server without tenant settings in TOKENWIRE_API_KEYS needs --plain-keys)")
        model = models.json()["data"][0]["id"]
        numbers = itertools.count(0)
        warm: list[RequestResult] = []
        await b_one_at_a_time(client_b, model, numbers, warm, float("inf"), 1, args.b_pause)  # unmeasured
        b_idle: list[RequestResult] = []
        await b_one_at_a_time(client_b, model, numbers, b_idle, float("inf"), args.b_requests, args.b_pause)

        load = ClosedLoop(client_a, model, args.a_streams, args.a_max_tokens)
        meter = CpuMeter(server_pid)
        a_started = clock()
        load.start()
        per_second: list[dict] = []
        recorder = asyncio.create_task(every_second(meter, client_b, a_started, per_second))
        b_loaded: list[RequestResult] = []
        blocks: list[Block] = []
        queues: dict[str, dict] = {}
        try:
            await asyncio.sleep(max(0.0, a_started + args.warmup - clock()))
            for kind in block_order(args.blocks):
                blocks.append(await run_block(kind, args, meter, client_a, client_b, model, numbers, b_loaded, queues))
        finally:
            recorder.cancel()
            await load.stop()

    alone = [b for b in blocks if b.kind == "alone"]
    contention = [b for b in blocks if b.kind == "contention"]
    alone_rate = sum(tokens_between(load.results, b.start, b.end) for b in alone) / seconds(alone)
    contention_rate = sum(tokens_between(load.results, b.start, b.end) for b in contention) / seconds(contention)
    idle_p50 = percentile(ttfts(b_idle), 50)
    loaded = ttfts(b_loaded)
    a_done = [r for r in load.results if r.ok and r.usage_tokens is not None]
    first_block = blocks[0].start
    full_length = [r.usage_tokens for r in a_done if r.t_start >= first_block]
    return {
        "model": model,
        "b_idle_ttft_ms": [ms(x) for x in ttfts(b_idle)], "b_idle_ttft_ms_p50": ms(idle_p50),
        "b_idle_errors": errors(b_idle),
        "b_loaded_ttft_ms": [ms(x) for x in loaded], "b_loaded_ttft_ms_p50": ms(percentile(loaded, 50)),
        "b_loaded_ttft_ms_p90": ms(percentile(loaded, 90)), "b_loaded_errors": errors(b_loaded),
        "b_ttft_ratio": ratio(percentile(loaded, 50), idle_p50),
        "a_tok_s_alone": alone_rate, "a_tok_s_contention": contention_rate,
        "a_drop_pct": None if not alone_rate else 100.0 * (alone_rate - contention_rate) / alone_rate,
        "a_ttft_s_p50_alone": percentile([t for b in alone for t in ttfts(load.results, b.start, b.end)], 50),
        "a_ttft_s_p50_contention": percentile([t for b in contention for t in ttfts(load.results, b.start, b.end)], 50),
        "a_requests_done": len(a_done), "a_errors": len(errors(load.results)),
        "a_error_samples": sorted(set(errors(load.results)))[:3],
        "a_completion_tokens_p50": percentile(full_length, 50),
        "queue_alone": queues.get("alone", {}), "queue_contention": queues.get("contention", {}),
        "blocks": [{"kind": b.kind, "s": round(b.end - b.start, 2),
                    "a_tok_s": round(tokens_between(load.results, b.start, b.end) / (b.end - b.start), 1)}
                   for b in blocks],
        "cpu_cores_alone": mean_cores(alone), "cpu_cores_contention": mean_cores(contention),
        "a_tok_s_timeline": timeline(load.results, a_started, blocks[-1].end),
        "per_second": per_second,
    }


@dataclass
class Block:
    """One stretch of the measurement: A alone, or A with B sending; and the CPU each party used."""

    kind: str
    start: float
    end: float
    cores: dict[str, float]


def block_order(pairs: int) -> list[str]:
    """alone, contention, contention, alone, ...: each kind as often first as second, so a machine
    that speeds up or slows down during the run does not favour either."""
    order: list[str] = []
    for pair in range(pairs):
        order += ["alone", "contention"] if pair % 2 == 0 else ["contention", "alone"]
    return order


async def run_block(kind: str, args: argparse.Namespace, meter: CpuMeter, client_a: httpx.AsyncClient,
                    client_b: httpx.AsyncClient, model: str, numbers: itertools.count, b_loaded: list,
                    queues: dict) -> Block:
    """A `--block`-second stretch; a contention block lasts until B's last request has ended, and the
    next block starts only then, so no alone block holds a B request."""
    start, before = clock(), meter.read()
    end = start + args.block
    sample = asyncio.create_task(sample_at(client_a, start + args.block / 2)) if kind not in queues else None
    if kind == "contention":
        await b_one_at_a_time(client_b, model, numbers, b_loaded, end, sys.maxsize, args.b_pause)
    await asyncio.sleep(max(0.0, end - clock()))
    if sample is not None:
        queues[kind] = await sample
    finish = clock()
    return Block(kind, start, finish, CpuMeter.cores(before, meter.read(), finish - start))


def seconds(blocks: list[Block]) -> float:
    return sum(b.end - b.start for b in blocks) or 1.0


def mean_cores(blocks: list[Block]) -> dict[str, float]:
    """Cores per party over these blocks, weighted by their lengths."""
    total = seconds(blocks)
    keys = blocks[0].cores.keys() if blocks else ()
    return {key: sum(b.cores[key] * (b.end - b.start) for b in blocks) / total for key in keys}


def run_condition(condition: str, args: argparse.Namespace, stamp: str) -> dict:
    """A fresh server for the condition, the three phases, SIGTERM."""
    port = free_port()
    log_path = RESULTS / f"{stamp}-tenants-{condition}.log"
    settings = server_settings(condition, args)
    print(f"{condition}: starting the server on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr, flush=True)
    proc, cold_start = start_server(port, log_path, args.server_log_level, settings)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready")
        result = asyncio.run(measure(f"http://127.0.0.1:{port}", args, proc.pid))
    finally:
        shutdown = stop_server(proc)
    result.update(condition=condition, settings={k: v for k, v in settings.items() if "KEYS" not in k},
                  api_keys=settings["TOKENWIRE_API_KEYS"].replace(KEY_A, "A").replace(KEY_B, "B"),
                  server={"cold_start_s": cold_start, **shutdown, "log": str(log_path)})
    print(f"{condition}: {condition_line(result)}", file=sys.stderr, flush=True)
    return result


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def condition_line(r: dict) -> str:
    return (f"B TTFT idle {fmt(r['b_idle_ttft_ms_p50'])} ms, loaded {fmt(r['b_loaded_ttft_ms_p50'])} ms; "
            f"A {fmt(r['a_tok_s_alone'])} → {fmt(r['a_tok_s_contention'])} tok/s")


def verdicts(r: dict) -> list[str]:
    """The two pass/fail lines of one condition."""
    ttft_ok = r["b_ttft_ratio"] is not None and r["b_ttft_ratio"] <= TTFT_LIMIT
    drop_ok = r["a_drop_pct"] is not None and r["a_drop_pct"] <= DROP_LIMIT
    return [f"{r['condition']}: B TTFT p50 loaded ÷ idle = {fmt(r['b_ttft_ratio'], 2)} (≤ {TTFT_LIMIT:g}): "
            f"{'PASS' if ttft_ok else 'FAIL'}",
            f"{r['condition']}: A tokens/s drop = {fmt(r['a_drop_pct'])}% (≤ {DROP_LIMIT:g}%): "
            f"{'PASS' if drop_ok else 'FAIL'}"]


def cores_text(cores: dict[str, float]) -> str:
    return " / ".join(fmt(cores[key], 2) for key in ("server", "client", "others", "steal"))


def report_text(report: dict) -> str:
    args = report["args"]
    lines = [f"## tokenwire fair share {report['stamp']} ({report['git']})", "",
             f"{report['cpus']} CPUs; load average before {report['loadavg_before'][0]:.2f}, after "
             f"{report['loadavg_after'][0]:.2f}; A: {args['a_streams']} streams × {args['a_max_tokens']} "
             f"tokens (ignore_eos); B: {B_MAX_TOKENS}-token chats one at a time; warm-up {args['warmup']:g} s, "
             f"{args['blocks']} pairs of {args['block']:g} s blocks (A alone / A with B) alternated ABBA", "",
             "| condition | B idle TTFT p50 (ms) | B loaded TTFT p50 / p90 (ms) | B n idle / loaded "
             "| loaded ÷ idle | A tok/s alone | A tok/s with B | A drop % | A TTFT p50 alone / with B (s) "
             "| waiting / running mid-window ¹ | A out tok p50 | errors A / B |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["conditions"]:
        q = r["queue_contention"]
        lines.append(
            f"| {r['condition']} | {fmt(r['b_idle_ttft_ms_p50'])} | {fmt(r['b_loaded_ttft_ms_p50'])} / "
            f"{fmt(r['b_loaded_ttft_ms_p90'])} | {len(r['b_idle_ttft_ms'])} / {len(r['b_loaded_ttft_ms'])} "
            f"| {fmt(r['b_ttft_ratio'], 2)} | {fmt(r['a_tok_s_alone'])} | {fmt(r['a_tok_s_contention'])} "
            f"| {fmt(r['a_drop_pct'])} | {fmt(r['a_ttft_s_p50_alone'], 2)} / {fmt(r['a_ttft_s_p50_contention'], 2)} "
            f"| {fmt(q.get('waiting'), 0)} / "
            f"{fmt(q.get('running'), 0)} | {fmt(r['a_completion_tokens_p50'], 0)} "
            f"| {r['a_errors']} / {len(r['b_idle_errors']) + len(r['b_loaded_errors'])} |")
    lines += ["", "¹ tokenwire_requests_waiting / _running from /metrics, sampled once in the middle of the "
              "first contention block (first A-alone block: " + "; ".join(
                  f"{r['condition']} {fmt(r['queue_alone'].get('waiting'), 0)} / "
                  f"{fmt(r['queue_alone'].get('running'), 0)}" for r in report["conditions"]) + ")", ""]
    for r in report["conditions"]:
        alone, contention = r["cpu_cores_alone"], r["cpu_cores_contention"]
        lines.append(f"{r['condition']}: CPU cores server / client / other processes / steal: A alone "
                     f"{cores_text(alone)}, with B {cores_text(contention)}; A tokens per server core-second "
                     f"{fmt(ratio(r['a_tok_s_alone'], alone['server']))} → "
                     f"{fmt(ratio(r['a_tok_s_contention'], contention['server']))}")
        if max(r["cpu_cores_alone"]["others"], r["cpu_cores_contention"]["others"]) > OTHERS_LIMIT:
            lines.append(f"{r['condition']}: warning: other processes used more than {OTHERS_LIMIT:g} cores "
                         "during the blocks; its figures are measured under contention")
    lines.append("")
    for r in report["conditions"]:
        lines += verdicts(r)
        b_errors = sorted(set(r["b_idle_errors"] + r["b_loaded_errors"]))[:3]
        lines += [f"{r['condition']}: A errors: " + "; ".join(r["a_error_samples"])] if r["a_error_samples"] else []
        lines += [f"{r['condition']}: B errors: " + "; ".join(b_errors)] if b_errors else []
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__.split("\n")[0])
    p.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS),
                   help="fifo: TOKENWIRE_FAIR_SHARE=false; fair: true; each on a fresh server, in this order")
    p.add_argument("--quick", action="store_true", help="a smoke run: 24 streams, 16 running, 4 s + 8 s + 8 s")
    p.add_argument("--a-streams", type=int, help="A's streams kept open (default 160; quick 24)")
    p.add_argument("--a-max-tokens", type=int, help="tokens per A request, ignore_eos (default 128; quick 64)")
    p.add_argument("--blocks", type=int, help="pairs of blocks, A alone and A with B, alternated ABBA "
                   "(default 6; quick 2)")
    p.add_argument("--block", type=float, help="seconds of each block (default 10; quick 4)")
    p.add_argument("--warmup", type=float, help="seconds of A's load before the first block (default 20; quick 4)")
    p.add_argument("--b-requests", type=int, help="B's requests on the idle server (default 20; quick 3)")
    p.add_argument("--b-pause", type=float, default=0.5, help="seconds between B's requests")
    p.add_argument("--max-running", type=int, help="TOKENWIRE_MAX_RUNNING for the servers (0: the server's "
                   "default, 64; quick 16 so that 24 streams still form a queue)")
    p.add_argument("--plain-keys", action="store_true",
                   help="TOKENWIRE_API_KEYS as bare keys, no name= fields (servers without tenant settings)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="read timeout per request, seconds")
    p.add_argument("--server-log-level", default="warning")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    compile_app()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    loadavg_before = os.getloadavg()
    if loadavg_before[0] > 0.5:
        print(f"warning: 1-min load average is {loadavg_before[0]:.2f}; other work is running and the "
              "numbers will be measured under contention", file=sys.stderr, flush=True)
    conditions = [run_condition(condition, args, stamp) for condition in args.conditions]
    report = {"stamp": stamp, "git": git_revision(), "cpus": os.cpu_count(), "args": vars(args),
              "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(), "conditions": conditions}
    out = RESULTS / f"{stamp}-tenants.json"
    out.write_text(json.dumps(report, indent=2))
    print(report_text(report))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
