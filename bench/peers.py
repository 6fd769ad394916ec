"""tokenwire side by side with another server (llama.cpp's, say) on the same machine, in one run.

Both servers are started one after the other (`--peer-cmd` with `{port}`, or an already running
`--peer-url`), each timed from process start to its first answer and its idle RSS read; then the same
scenarios (short prompt at 1, 16 and 64 streams; a ~1,000-token prompt at 1 stream) run against one
server at a time, alternating, so both meet the same machine. Prints one table with the ratios
tokenwire / peer and writes bench/results/<stamp>-peers.json.

    python -m bench.peers --peer-cmd '../shared/peers/llamacpp-server {port}' [--max-tokens 128] [--no-eos 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil

from bench import compile_app
from bench.client import LoadConfig
from bench.loadgen import run_all
from bench.run import RESULTS, ROOT, free_port, git_revision, wait_settled
from bench.stats import fmt, ratio

SHORT_CONCURRENCY = (1, 16, 64)
START_TIMEOUT_S = 900  # a peer may build itself on first use


def first_answer(url: str, proc: subprocess.Popen, started: float) -> float:
    """Seconds from `started` until a one-token completion succeeds."""
    deadline = started + START_TIMEOUT_S
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} during start-up")
        try:
            model = httpx.get(f"{url}/v1/models", timeout=2).json()["data"][0]["id"]
            answer = httpx.post(f"{url}/v1/completions", timeout=30,
                                json={"model": model, "prompt": "Hi", "max_tokens": 1})
            if answer.status_code == 200:
                return time.perf_counter() - started
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} gave no answer within {START_TIMEOUT_S}s")


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (a wrapper script's server is its child)."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def launch(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group (a wrapper and its server), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


SCENARIOS = [("short", c) for c in SHORT_CONCURRENCY] + [("long", 1)]


def start(name: str, command: list[str], env: dict[str, str], stamp: str) -> tuple[str, subprocess.Popen, dict]:
    """Start one server on a free port; its URL, process and start-up facts once it has answered."""
    port = str(free_port())
    command = [part.replace("{port}", port) for part in command]
    env = {key: value.replace("{port}", port) for key, value in env.items()}
    print(f"starting {name}: {shlex.join(command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = launch(command, env, RESULTS / f"{stamp}-{name}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        facts = {"url": url, "first_answer_s": first_answer(url, proc, started), "scenarios": []}
        wait_settled(f"{url}/health")  # tokenwire's start-up chores: measure the steady state
        facts["idle_rss_mib"] = tree_rss_mib(proc.pid)
    except BaseException:
        stop(proc)
        raise
    return url, proc, facts


def run_scenario(url: str, cfg: LoadConfig, prompt: str, concurrency: int) -> dict:
    report = asyncio.run(run_all(replace(cfg, url=url, prompts=(prompt,), concurrency=(concurrency,))))
    return report["scenarios"][0]


def compare(servers: dict[str, tuple[str, dict]], cfg: LoadConfig) -> None:
    """Every scenario on each server in turn, alternating who goes first, so a slow spell on a shared
    machine does not land on one side only. Only one server is under load at a time."""
    names = list(servers)
    for index, (prompt, concurrency) in enumerate(SCENARIOS):
        for name in names if index % 2 == 0 else names[::-1]:
            url, facts = servers[name]
            print(f"{name}:", file=sys.stderr, flush=True)
            facts["scenarios"].append(run_scenario(url, cfg, prompt, concurrency))


def scenario(facts: dict, prompt: str, concurrency: int) -> dict:
    return next(s for s in facts["scenarios"] if s["prompt"] == prompt and s["concurrency"] == concurrency)


def rows(ours: dict, peer: dict) -> list[tuple[str, float | None, float | None]]:
    """(metric, peer value, tokenwire value)."""
    out = []
    for c in SHORT_CONCURRENCY:
        p, o = scenario(peer, "short", c), scenario(ours, "short", c)
        if c == 1:
            out += [("1 stream: tokens/s", p["stream_tok_s_p50"], o["stream_tok_s_p50"]),
                    ("1 stream: TTFT ms", p["ttft_ms"]["p50"], o["ttft_ms"]["p50"])]
        else:
            out += [(f"{c} streams: total tokens/s", p["agg_tok_s"], o["agg_tok_s"]),
                    (f"{c} streams: TTFT p50 ms", p["ttft_ms"]["p50"], o["ttft_ms"]["p50"]),
                    (f"{c} streams: errors", p["errors"], o["errors"])]
    p, o = scenario(peer, "long", 1), scenario(ours, "long", 1)
    out.append((f"{fmt(o['prompt_tokens_p50'], 0)}-token prompt: TTFT ms", p["ttft_ms"]["p50"], o["ttft_ms"]["p50"]))
    out += [("start-up to first answer s", peer.get("first_answer_s"), ours.get("first_answer_s")),
            ("idle RSS MiB", peer.get("idle_rss_mib"), ours.get("idle_rss_mib"))]
    return out


def table(result: dict) -> str:
    lines = ["| | peer | tokenwire | tokenwire / peer |", "|---|---:|---:|---:|"]
    for metric, peer, ours in rows(result["tokenwire"], result["peer"]):
        lines.append(f"| {metric} | {fmt(peer)} | {fmt(ours)} | {fmt(ratio(ours, peer), 2)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    peer = p.add_mutually_exclusive_group(required=True)
    peer.add_argument("--peer-cmd", help="command that serves the peer on 127.0.0.1:{port}")
    peer.add_argument("--peer-url", help="a peer already running on loopback (no start-up or RSS figures)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--requests-per-stream", type=int, default=2)
    p.add_argument("--scenario-timeout", type=float, default=600.0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--no-eos", type=int, action="append", default=[],
                   help="token id to ban (logit_bias -100) on both servers, so every request runs to max_tokens")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    compile_app()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    cfg = LoadConfig(max_tokens=args.max_tokens, requests_per_stream=args.requests_per_stream,
                     scenario_timeout_s=args.scenario_timeout, request_timeout_s=args.request_timeout,
                     logit_bias={str(t): -100 for t in args.no_eos})
    result = {"stamp": stamp, "git": git_revision(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
              "peer_command": args.peer_cmd or args.peer_url}
    env = {**os.environ, "TOKENWIRE_HOST": "127.0.0.1", "TOKENWIRE_PORT": "{port}", "TOKENWIRE_LOG_LEVEL": "warning"}
    processes = []
    try:
        url, proc, result["tokenwire"] = start("tokenwire", [sys.executable, "-m", "app"], env, stamp)
        processes.append(proc)
        servers = {"tokenwire": (url, result["tokenwire"])}
        if args.peer_cmd:
            url, proc, result["peer"] = start("peer", shlex.split(args.peer_cmd), dict(os.environ), stamp)
            processes.append(proc)
        else:
            url, result["peer"] = args.peer_url, {"url": args.peer_url, "scenarios": []}
        servers["peer"] = (url, result["peer"])
        compare(servers, cfg)
    finally:
        for proc in processes:
            stop(proc)
    result["loadavg_after"] = os.getloadavg()
    out = RESULTS / f"{stamp}-peers.json"
    out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\npeer: {result['peer_command']}\nwritten: {out}")


if __name__ == "__main__":
    main()
