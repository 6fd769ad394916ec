"""Prefill interference: does one long prompt arriving mid-decode stall the running streams?

8 streams decode (short prompt, long max_tokens); once each has streamed a few chunks, one ~1000-token
prompt is sent (max_tokens 1). Its prefill window is [sent, its first token]. We compare the 8
streams' inter-token gaps that overlap that window with all their gaps; target: window p99 < 3x the
overall median.
"""

from __future__ import annotations

import asyncio

import httpx

from bench.client import LoadConfig, RequestResult, clock, stream_one
from bench.prompts import PROMPTS
from bench.stats import fmt, ms, percentile, ratio

NUM_STREAMS = 8
CHUNKS_BEFORE_PROBE = 8  # each stream must have streamed this many chunks before the long prompt
TARGET_RATIO = 3.0


async def wait_until_streaming(results: list[RequestResult], deadline: float) -> bool:
    """Poll until every stream has CHUNKS_BEFORE_PROBE content chunks; False if one ended or time ran out."""
    while clock() < deadline:
        if any(r.t_end is not None for r in results):
            return False
        if len(results) == NUM_STREAMS and all(len(r.chunk_times) >= CHUNKS_BEFORE_PROBE for r in results):
            return True
        await asyncio.sleep(0.005)
    return False


def split_gaps(streams: list[RequestResult], start: float, end: float) -> tuple[list[float], list[float]]:
    """(all gaps, gaps whose interval overlaps [start, end])."""
    every, window = [], []
    for r in streams:
        for a, b in zip(r.chunk_times, r.chunk_times[1:]):
            every.append(b - a)
            if a < end and b > start:
                window.append(b - a)
    return every, window


def analyse(streams: list[RequestResult], probe: RequestResult, probed: bool) -> dict:
    """ITL statistics overall and during the probe's prefill window."""
    if not probed or probe.t_first is None:
        return {"ok": False, "reason": "streams ended before the probe, or the probe failed",
                "probe_error": probe.error, "stream_errors": [r.error for r in streams if r.error]}
    every, window = split_gaps(streams, probe.t_start, probe.t_first)
    overall_p50, window_p99 = percentile(every, 50), percentile(window, 99)
    return {
        "ok": True, "streams": len(streams), "stream_errors": sum(1 for r in streams if not r.ok),
        "streams_alive_after_window": sum(1 for r in streams if r.chunk_times and r.chunk_times[-1] > probe.t_first),
        "probe_prompt_tokens": probe.prompt_tokens, "probe_ttft_ms": ms(probe.t_first - probe.t_start),
        "overall_itl_ms": {"p50": ms(overall_p50), "p99": ms(percentile(every, 99)), "n": len(every)},
        "window_itl_ms": {"p50": ms(percentile(window, 50)), "p99": ms(window_p99), "n": len(window),
                          "max": ms(max(window, default=None))},
        "window_p99_over_overall_p50": ratio(window_p99, overall_p50),
        "target_ratio": TARGET_RATIO,
        "passes": bool(window_p99 is not None and window_p99 < TARGET_RATIO * overall_p50),
    }


async def run_interference(client: httpx.AsyncClient, cfg: LoadConfig) -> dict:
    """Start the 8 streams, send the long probe once they stream, wait for all, analyse."""
    streams: list[RequestResult] = []
    tasks = [asyncio.create_task(stream_one(client, cfg, PROMPTS["short"], cfg.interference_max_tokens, streams,
                                            f"i.{number}"))
             for number in range(1, NUM_STREAMS + 1)]
    deadline = clock() + cfg.scenario_timeout_s
    probed = await wait_until_streaming(streams, deadline)
    probe_results: list[RequestResult] = []
    if probed:
        await stream_one(client, cfg, PROMPTS["long"], 1, probe_results, "probe.1")
    _, pending = await asyncio.wait(tasks, timeout=max(deadline - clock(), 1.0))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    probe = probe_results[0] if probe_results else RequestResult(t_start=clock(), error="not sent")
    report = analyse(streams, probe, probed)
    report["max_tokens"] = cfg.interference_max_tokens
    return report


def interference_text(r: dict) -> str:
    """A few markdown lines for the report."""
    if not r.get("ok"):
        return f"**Interference:** not measured ({r.get('reason')}; probe error: {r.get('probe_error')})"
    o, w = r["overall_itl_ms"], r["window_itl_ms"]
    verdict = "PASS" if r["passes"] else "FAIL"
    return (f"**Interference** ({r['streams']} streams × max_tokens {r['max_tokens']}, one "
            f"{r['probe_prompt_tokens']}-token prompt arrives; its TTFT {fmt(r['probe_ttft_ms'])} ms): "
            f"ITL overall p50 {fmt(o['p50'])} / p99 {fmt(o['p99'])} ms (n={o['n']}); during its prefill "
            f"p50 {fmt(w['p50'])} / p99 {fmt(w['p99'])} / max {fmt(w['max'])} ms (n={w['n']}); "
            f"window p99 ÷ overall p50 = {fmt(r['window_p99_over_overall_p50'], 2)} "
            f"(target < {r['target_ratio']:.0f}) → {verdict}; "
            f"{r['streams_alive_after_window']}/{r['streams']} streams still decoding after the window.")
