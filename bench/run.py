"""`make bench`: in-process baseline, then a fresh server under the HTTP load generator, one report.

Order matters on a small machine: the in-process run goes first, in its own process, before the
server starts, so the two never share CPU cores. Then `python -m app` starts on a free loopback port
(cold start = process start to /health OK), the loadgen scenarios and the multi-turn chat scenario
run, the server gets SIGTERM; a second server with the prefix cache off runs the multi-turn scenario
again as the baseline; the combined report is printed and written to bench/results/<timestamp>.json.

    python -m bench.run [--quick] [--concurrency 1 4 16 64] [--requests-per-stream 4] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from bench import compile_app
from bench.client import LoadConfig
from bench.inprocess import summary_line
from bench.loadgen import markdown_table, run_all
from bench.multiturn import markdown as multiturn_table
from bench.multiturn import run_multiturn
from bench.grammar_cost import table as grammar_table
from bench.perplexity import table as perplexity_table
from bench.stats import fmt, ratio

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_perplexity(out: Path) -> list[dict]:
    """bench.perplexity in a child process: each forward, dtype and weight format on the fixed text."""
    subprocess.run([sys.executable, "-m", "bench.perplexity", "--json", str(out)], cwd=ROOT, check=True,
                   timeout=600, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_grammar_cost(out: Path) -> list[dict]:
    """bench.grammar_cost in a child process: a decode step with and without a JSON-schema grammar."""
    subprocess.run([sys.executable, "-m", "bench.grammar_cost", "--json", str(out)], cwd=ROOT, check=True,
                   timeout=900, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_inprocess(args: argparse.Namespace, out: Path) -> dict:
    """bench.inprocess in a child process (its model is freed before the server loads one)."""
    cmd = [sys.executable, "-m", "bench.inprocess", "--max-tokens", str(args.max_tokens),
           # As many single streams as the HTTP 1-stream scenario sends: the same numbered texts.
           "--repeats", str(args.requests_per_stream), "--json", str(out),
           "--batch-sizes", *map(str, args.inprocess_batches),
           "--clients", *(["16"] if 16 in args.concurrency else []),
           "--requests-per-client", str(args.requests_per_stream)]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=args.inprocess_timeout)
    return json.loads(out.read_text())


def start_server(port: int, log_path: Path, log_level: str,
                 settings: dict[str, str] | None = None) -> tuple[subprocess.Popen, float]:
    """Start `python -m app` on 127.0.0.1:port (with extra TOKENWIRE_* `settings`); return it once
    /health says ok, with the seconds it took."""
    env = {**os.environ, "TOKENWIRE_HOST": "127.0.0.1", "TOKENWIRE_PORT": str(port),
           "TOKENWIRE_LOG_LEVEL": log_level, **(settings or {})}
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/health", timeout=300.0)
        cold_start_s = time.perf_counter() - started
        wait_settled(f"http://127.0.0.1:{port}/health")
    except BaseException:
        stop_server(proc)
        raise
    return proc, cold_start_s


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> None:
    """Poll /health until it says ok; raise if the server exits or `timeout` passes."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before /health was ok")
        try:
            resp = httpx.get(url, timeout=2.0)
            if resp.status_code == 200 and resp.json().get("status") == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ok after {timeout:.0f}s")


def wait_settled(url: str, timeout: float = 60.0) -> None:
    """Poll a tokenwire /health until its start-up chores are done (the token byte table, kernel warming
    on torch forwards), so the scenarios measure the steady state; a server without the field counts
    as settled."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if not httpx.get(url, timeout=2.0).json().get("start_up_chores", 0):
                return
        except (httpx.HTTPError, ValueError, AttributeError):
            return  # not tokenwire's /health: nothing to wait for
        time.sleep(0.05)
    raise TimeoutError(f"{url} still had start-up chores after {timeout:.0f}s")


def stop_server(proc: subprocess.Popen, grace: float = 30.0) -> dict:
    """SIGTERM our server process; SIGKILL it if it outlives `grace`. Returns how it went."""
    if proc.poll() is not None:
        return {"exit_code": proc.returncode, "shutdown_s": 0.0, "killed": False}
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        killed = True
    return {"exit_code": proc.returncode, "shutdown_s": time.perf_counter() - started, "killed": killed}


def load_config(args: argparse.Namespace, port: int) -> LoadConfig:
    """The loadgen settings for the server just started."""
    return LoadConfig(url=f"http://127.0.0.1:{port}", concurrency=tuple(args.concurrency),
                      prompts=tuple(args.prompts), max_tokens=args.max_tokens,
                      requests_per_stream=args.requests_per_stream, scenario_timeout_s=args.scenario_timeout,
                      interference=not args.no_interference, interference_max_tokens=args.interference_max_tokens)


def run_http(args: argparse.Namespace, stamp: str) -> dict:
    """Fresh server -> loadgen -> SIGTERM; the loadgen report plus server facts."""
    port = args.port or free_port()
    log_path = RESULTS / f"{stamp}-server.log"
    print(f"starting the server on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr, flush=True)
    proc, cold_start = start_server(port, log_path, args.server_log_level)
    try:
        report = asyncio.run(run_all(load_config(args, port)))
        if not args.skip_multiturn:
            report["multiturn"] = asyncio.run(run_multiturn(f"http://127.0.0.1:{port}", args.multiturn_users,
                                                            args.multiturn_turns, 32, args.reuse_repeats))
    finally:
        shutdown = stop_server(proc)
    report["server"] = {"cold_start_s": cold_start, **shutdown, "log": str(log_path)}
    return report


def run_multiturn_uncached(args: argparse.Namespace, stamp: str) -> dict:
    """The multi-turn scenario again on a fresh server with the prefix cache off (the baseline)."""
    port = free_port()
    log_path = RESULTS / f"{stamp}-server-uncached.log"
    print(f"starting a server without prefix cache on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    proc, _ = start_server(port, log_path, args.server_log_level, {"TOKENWIRE_PREFIX_CACHE": "false"})
    try:
        return asyncio.run(run_multiturn(f"http://127.0.0.1:{port}", args.multiturn_users, args.multiturn_turns,
                                         32, 0))
    finally:
        stop_server(proc)


def find(scenarios: list[dict], prompt: str, concurrency: int) -> dict | None:
    """The scenario summary for (prompt, concurrency), if it ran."""
    return next((s for s in scenarios if s["prompt"] == prompt and s["concurrency"] == concurrency), None)


def ratios(inproc: dict | None, http: dict) -> dict:
    """HTTP ÷ in-process: 1-stream decode tok/s, and aggregate tok/s of 16 clients (the same closed loop
    of numbered requests in process); then aggregate tok/s at 16 streams ÷ 1 stream."""
    scenarios = http["scenarios"]
    one, sixteen = find(scenarios, "short", 1), find(scenarios, "short", 16)
    loop16 = next((c for c in (inproc or {}).get("clients", []) if c["clients"] == 16), None)
    out = {"http_1stream_over_inprocess": ratio(one and one["stream_tok_s_p50"],
                                                inproc and inproc["stream_tok_s_p50"]),
           "http_16streams_over_inprocess": ratio(sixteen and sixteen["agg_tok_s"], loop16 and loop16["agg_tok_s"])}
    for kind in dict.fromkeys(s["prompt"] for s in scenarios):
        c1, c16 = find(scenarios, kind, 1), find(scenarios, kind, 16)
        out[f"agg_16_over_1_{kind}"] = ratio(c16 and c16["agg_tok_s"], c1 and c1["agg_tok_s"])
    return out


def report_text(result: dict) -> str:
    """The combined markdown report."""
    env, server, r = result["environment"], result["http"]["server"], result["ratios"]
    lines = [f"## tokenwire bench {result['stamp']}", "",
             f"{env['cpus']} CPUs; load average before {env['loadavg_before'][0]:.2f}, after "
             f"{env['loadavg_after'][0]:.2f} (1-min; above ~0.5 before means something else was running)",
             f"model {result['http']['model']}; max_tokens {result['http']['max_tokens']}; "
             f"{result['http']['requests_per_stream']} requests per client per scenario", ""]
    if result["inprocess"]:
        lines += [summary_line(result["inprocess"]), ""]
    lines += [f"server cold start (process start → /health ok): {server['cold_start_s']:.1f} s; "
              f"SIGTERM → exit {server['shutdown_s']:.1f} s (exit code {server['exit_code']}"
              f"{', killed' if server['killed'] else ''})", "", markdown_table(result["http"]), ""]
    if result["http"].get("multiturn"):
        lines += ["multi-turn chat (bench.multiturn), prefix cache on vs off:", "",
                  multiturn_table(result["http"]["multiturn"], result.get("multiturn_uncached")), ""]
    if result.get("perplexity"):
        lines += ["perplexity on bench/ppl_text.py (lossy levers may be defaults only within 1% of fp32):", "",
                  perplexity_table(result["perplexity"]), ""]
    if result.get("grammar"):
        lines += ["constrained decoding (bench.grammar_cost), median decode step in-process:", "",
                  grammar_table(result["grammar"]), ""]
    lines += [f"ratio HTTP 1-stream decode tok/s ÷ in-process: {fmt(r['http_1stream_over_inprocess'], 2)}",
              f"ratio HTTP 16 streams' aggregate tok/s ÷ in-process 16 clients: "
              f"{fmt(r.get('http_16streams_over_inprocess'), 2)}"]
    lines += [f"ratio aggregate tok/s 16 streams ÷ 1 stream ({key.rsplit('_', 1)[1]} prompt): {fmt(v, 2)}"
              for key, v in r.items() if key.startswith("agg_16_over_1_")]
    return "\n".join(lines)


FULL = {"concurrency": [1, 4, 16, 64], "requests_per_stream": 4, "scenario_timeout": 300.0,
        "inprocess_batches": [1, 4, 16], "interference_max_tokens": 256,
        "multiturn_users": [1, 8], "multiturn_turns": 6, "reuse_repeats": 3}
QUICK = {"concurrency": [1, 4, 16], "requests_per_stream": 2, "scenario_timeout": 90.0,
         "inprocess_batches": [1, 4], "interference_max_tokens": 128,
         "multiturn_users": [1, 4], "multiturn_turns": 5, "reuse_repeats": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench.run CLI; unset options take the --quick or full defaults."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests, concurrency 1 4 16")
    p.add_argument("--concurrency", type=int, nargs="+")
    p.add_argument("--prompts", nargs="+", choices=["short", "long"], default=["short", "long"])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-stream", type=int)
    p.add_argument("--scenario-timeout", type=float, help="hard wall-time cap per scenario, seconds")
    p.add_argument("--inprocess-batches", type=int, nargs="+")
    p.add_argument("--inprocess-timeout", type=float, default=600.0)
    p.add_argument("--skip-inprocess", action="store_true")
    p.add_argument("--skip-perplexity", action="store_true")
    p.add_argument("--skip-grammar", action="store_true", help="no constrained-decoding step cost")
    p.add_argument("--skip-multiturn", action="store_true", help="no multi-turn chat scenario")
    p.add_argument("--multiturn-users", type=int, nargs="+", help="concurrent conversations, one run each")
    p.add_argument("--multiturn-turns", type=int)
    p.add_argument("--reuse-repeats", type=int, help="next-turn TTFT pairs (cached vs changed first message)")
    p.add_argument("--no-interference", action="store_true")
    p.add_argument("--interference-max-tokens", type=int)
    p.add_argument("--port", type=int, default=0, help="0: a free loopback port")
    p.add_argument("--server-log-level", default="warning")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def git_revision() -> str:
    """Short HEAD hash, '+dirty' with uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    """Entry point of `make bench`."""
    args = parse_args(argv)
    compile_app()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    env = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "git": git_revision()}
    if env["loadavg_before"][0] > 0.5:
        print(f"warning: 1-min load average is {env['loadavg_before'][0]:.2f}; other work is running and "
              "CPU numbers will be distorted (torch threads slow down badly when cores are shared)",
              file=sys.stderr, flush=True)
    inproc = None if args.skip_inprocess else run_inprocess(args, RESULTS / f"{stamp}-inprocess.json")
    ppl = None if args.skip_perplexity else run_perplexity(RESULTS / f"{stamp}-perplexity.json")
    grammar = None if args.skip_grammar else run_grammar_cost(RESULTS / f"{stamp}-grammar.json")
    http = run_http(args, stamp)
    uncached = None if args.skip_multiturn else run_multiturn_uncached(args, stamp)
    env["loadavg_after"] = os.getloadavg()
    result = {"stamp": stamp, "args": vars(args), "environment": env, "inprocess": inproc, "http": http,
              "ratios": ratios(inproc, http), "perplexity": ppl, "grammar": grammar,
              "multiturn_uncached": uncached}
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    print(report_text(result))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
