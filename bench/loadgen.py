"""Streaming load generator for any OpenAI-compatible server (asyncio + httpx).

For each (prompt kind, concurrency) scenario, C clients each send requests back to back to
/v1/completions (stream, temperature 0, stream_options.include_usage) and we time every chunk:

    python -m bench.loadgen --url http://127.0.0.1:8000 --concurrency 1 4 16 --prompts short long \
        --max-tokens 64 --requests-per-stream 4 --json out.json [--interference]

Only standard OpenAI fields are sent, so generations may end early at EOS; completion token counts
come from the usage chunk (or, if the server sends none, the number of content chunks).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys

import httpx

from bench.client import LoadConfig, RequestResult, check_loopback, clock, make_client, stream_one
from bench.interference import interference_text, run_interference
from bench.prompts import PROMPTS
from bench.stats import decode_rate, fmt, ms, percentile


async def run_clients(client: httpx.AsyncClient, cfg: LoadConfig, prompt: str, concurrency: int,
                      results: list[RequestResult]) -> float:
    """C clients x requests_per_stream requests, hard-capped at scenario_timeout_s; returns wall time."""
    numbers = itertools.count(1)

    async def one_client() -> None:
        for _ in range(cfg.requests_per_stream):
            await stream_one(client, cfg, prompt, cfg.max_tokens, results, f"{concurrency}.{next(numbers)}")

    start = clock()
    tasks = [asyncio.create_task(one_client()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=cfg.scenario_timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for result in results:
        if result.t_end is None:
            result.error, result.t_end = "cut off at the scenario wall-time cap", clock()
    return clock() - start


def summarize(kind: str, concurrency: int, results: list[RequestResult], wall: float) -> dict:
    """Scenario metrics over the successful requests; errors are counted and sampled."""
    ok = [r for r in results if r.ok]
    ttft = [r.t_first - r.t_start for r in ok if r.t_first is not None]
    itl = [gap for r in ok for gap in r.gaps()]
    rates = [x for r in ok if (x := decode_rate(r.tokens, r.t_first, r.chunk_times[-1] if r.chunk_times else None))]
    tokens = sum(r.tokens for r in ok)
    prompt_tokens = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return {
        "prompt": kind, "concurrency": concurrency, "requests": len(results), "ok": len(ok),
        "errors": len(results) - len(ok), "error_samples": sorted({r.error for r in results if r.error})[:3],
        "prompt_tokens_p50": percentile(prompt_tokens, 50), "completion_tokens": tokens,
        "completion_tokens_p50": percentile([r.tokens for r in ok], 50),
        "ttft_ms": {f"p{q}": ms(percentile(ttft, q)) for q in (50, 90, 99)},
        "itl_ms": {f"p{q}": ms(percentile(itl, q)) for q in (50, 99)},
        "stream_tok_s_p50": percentile(rates, 50),
        "e2e_s_p50": percentile([r.t_end - r.t_start for r in ok], 50),
        "agg_tok_s": tokens / wall if wall > 0 else None, "wall_s": wall,
        "usage_reported": all(r.usage_tokens is not None for r in ok),
    }


async def run_scenario(client: httpx.AsyncClient, cfg: LoadConfig, kind: str, concurrency: int) -> dict:
    """Run one (prompt kind, concurrency) scenario and summarize it; progress goes to stderr."""
    results: list[RequestResult] = []
    wall = await run_clients(client, cfg, PROMPTS[kind], concurrency, results)
    summary = summarize(kind, concurrency, results, wall)
    print(f"  {kind:>5} x{concurrency:<3} {summary['ok']}/{summary['requests']} ok, "
          f"agg {fmt(summary['agg_tok_s'])} tok/s, {wall:.1f}s", file=sys.stderr, flush=True)
    return summary


async def resolve_model(client: httpx.AsyncClient) -> str:
    """The first model id the server lists."""
    resp = await client.get("/v1/models")
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


async def run_all(cfg: LoadConfig) -> dict:
    """Warm up, then every scenario in order (prompt kind outer, concurrency inner), then interference."""
    async with make_client(cfg, max([*cfg.concurrency, 9])) as client:
        cfg.model = cfg.model or await resolve_model(client)
        for number in range(1, cfg.warmup + 1):
            await stream_one(client, cfg, PROMPTS["short"], cfg.max_tokens, [], f"w.{number}")
        scenarios = [await run_scenario(client, cfg, kind, c) for kind in cfg.prompts for c in cfg.concurrency]
        interference = await run_interference(client, cfg) if cfg.interference else None
    return {"url": cfg.url, "model": cfg.model, "max_tokens": cfg.max_tokens,
            "requests_per_stream": cfg.requests_per_stream, "scenarios": scenarios,
            "interference": interference}


TABLE_HEADER = (
    "| prompt | conc | ok/reqs | err | prompt tok | out tok p50 | TTFT p50 / p90 / p99 (ms) "
    "| ITL p50 / p99 (ms) | stream tok/s p50 ¹ | agg tok/s ² | e2e p50 (s) |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
TABLE_NOTES = (
    "¹ per request: (completion_tokens − 1) / (last content chunk − first content chunk), "
    "median over requests (decode speed one client sees).\n"
    "² all completion tokens of successful requests / scenario wall time.")


def table_row(s: dict) -> str:
    """One markdown row for a scenario summary."""
    t, i = s["ttft_ms"], s["itl_ms"]
    return (f"| {s['prompt']} | {s['concurrency']} | {s['ok']}/{s['requests']} | {s['errors']} "
            f"| {fmt(s['prompt_tokens_p50'], 0)} | {fmt(s['completion_tokens_p50'], 0)} "
            f"| {fmt(t['p50'])} / {fmt(t['p90'])} / {fmt(t['p99'])} | {fmt(i['p50'])} / {fmt(i['p99'])} "
            f"| {fmt(s['stream_tok_s_p50'])} | {fmt(s['agg_tok_s'])} | {fmt(s['e2e_s_p50'], 2)} |")


def markdown_table(report: dict) -> str:
    """The scenario table, its footnotes and (if run) the interference summary."""
    lines = [TABLE_HEADER, *(table_row(s) for s in report["scenarios"]), "", TABLE_NOTES]
    lines += [f"errors in {s['prompt']} x{s['concurrency']}: " + "; ".join(s["error_samples"])
              for s in report["scenarios"] if s["error_samples"]]
    if report.get("interference"):
        lines += ["", interference_text(report["interference"])]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The loadgen CLI."""
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--url", default=LoadConfig.url)
    p.add_argument("--model", default="", help="model name to send; default: first id of /v1/models")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(LoadConfig.concurrency))
    p.add_argument("--prompts", nargs="+", choices=sorted(PROMPTS), default=list(LoadConfig.prompts))
    p.add_argument("--max-tokens", type=int, default=LoadConfig.max_tokens)
    p.add_argument("--requests-per-stream", type=int, default=LoadConfig.requests_per_stream)
    p.add_argument("--scenario-timeout", type=float, default=LoadConfig.scenario_timeout_s,
                   help="hard wall-time cap per scenario, seconds")
    p.add_argument("--request-timeout", type=float, default=LoadConfig.request_timeout_s)
    p.add_argument("--warmup", type=int, default=LoadConfig.warmup, help="unmeasured requests first")
    p.add_argument("--interference", action="store_true", help="also run the prefill-interference scenario")
    p.add_argument("--interference-max-tokens", type=int, default=LoadConfig.interference_max_tokens)
    p.add_argument("--api-key", default="", help="sent as 'Authorization: Bearer KEY' if given")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    p.add_argument("--json", help="write the full results here")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """CLI namespace -> LoadConfig."""
    return LoadConfig(
        url=args.url, model=args.model, concurrency=tuple(args.concurrency), prompts=tuple(args.prompts),
        max_tokens=args.max_tokens, requests_per_stream=args.requests_per_stream,
        scenario_timeout_s=args.scenario_timeout, request_timeout_s=args.request_timeout,
        warmup=args.warmup, interference=args.interference,
        interference_max_tokens=args.interference_max_tokens, api_key=args.api_key)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: check the URL, run everything, print the table, write JSON."""
    args = parse_args(argv)
    check_loopback(args.url, args.allow_remote)
    report = asyncio.run(run_all(config_from_args(args)))
    print(markdown_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
