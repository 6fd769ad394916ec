"""Start-up to first answer: a server started again and again, each timed from process start until a
one-token completion succeeds, then stopped. Warm: the first, unmeasured start fills the page cache.

Several commands alternate run by run (tokenwire's `python -m app`, a peer, another checkout's
server), so a slow spell on a shared machine lands on each of them alike. Prints min and median per
command and writes bench/results/<stamp>-startup.json.

    python -m bench.startup [--runs 5] [--cmd 'NAME=command with {port}' ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone

from bench import compile_app
from bench.peers import first_answer, launch, stop
from bench.run import RESULTS, free_port, git_revision
from bench.stats import fmt

TOKENWIRE = f"tokenwire={shlex.quote(sys.executable)} -m app"


def time_one_start(command: str, stamp: str, name: str) -> float:
    """Seconds from process start to its first answer (the server is stopped afterwards)."""
    port = str(free_port())
    argv = shlex.split(command.replace("{port}", port))
    env = {**os.environ, "TOKENWIRE_HOST": "127.0.0.1", "TOKENWIRE_PORT": port, "TOKENWIRE_LOG_LEVEL": "warning"}
    started = time.perf_counter()
    proc = launch(argv, env, RESULTS / f"{stamp}-startup-{name}.log")
    try:
        return first_answer(f"http://127.0.0.1:{port}", proc, started)
    finally:
        stop(proc)


def parse_commands(specs: list[str]) -> dict[str, str]:
    commands = {}
    for spec in specs:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            raise SystemExit(f"--cmd wants NAME=COMMAND, got {spec!r}")
        commands[name] = command
    return commands


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="measured starts per command (after one unmeasured)")
    p.add_argument("--cmd", action="append", default=[],
                   help="NAME=COMMAND serving on 127.0.0.1:{port} (repeatable; default: tokenwire's python -m app)")
    args = p.parse_args(argv)
    commands = parse_commands(args.cmd or [TOKENWIRE])
    compile_app()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    for name, command in commands.items():
        time_one_start(command, stamp, name)  # unmeasured: page cache, a peer's one-time build
    times: dict[str, list[float]] = {name: [] for name in commands}
    for run in range(args.runs):
        for name, command in commands.items():
            times[name].append(time_one_start(command, stamp, name))
            print(f"run {run + 1} {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    result = {"stamp": stamp, "git": git_revision(), "cpus": os.cpu_count(), "commands": commands, "seconds": times}
    (RESULTS / f"{stamp}-startup.json").write_text(json.dumps(result, indent=2))
    print("| server | min s | median s | runs |\n|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {fmt(min(values), 2)} | {fmt(statistics.median(values), 2)} | {len(values)} |")


if __name__ == "__main__":
    main()
