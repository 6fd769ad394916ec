"""bench.tenants' arithmetic on made-up streams: tokens per window, TTFTs, the verdicts and the report."""

from __future__ import annotations

import argparse

from bench.client import RequestResult
from bench.tenants import (CpuMeter, b_message, first_request_tokens, parse_args, parse_queue_metrics, report_text,
                           server_settings, tenant_keys, timeline, tokens_between, ttfts, verdicts)


def _stream(start: float, chunks: list[float], usage: int | None, error: str | None = None) -> RequestResult:
    return RequestResult(t_start=start, t_end=chunks[-1] + 0.01 if usage is not None else None,
                         chunk_times=chunks, usage_tokens=usage, error=error, done=usage is not None)


def test_tokens_are_counted_by_chunk_arrival_and_weighted_by_usage():
    results = [_stream(0.0, [1.0, 2.0, 3.0, 4.0], 8),  # 4 chunks carried 8 tokens: 2 each
               _stream(0.0, [2.5, 3.5], None),  # still streaming: 1 per chunk
               _stream(0.0, [9.0], 1)]  # outside the window
    assert tokens_between(results, 2.0, 4.0) == 2 * 2 + 2
    assert tokens_between(results, 0.0, 100.0) == 8 + 2 + 1
    assert timeline(results, 0.0, 5.0) == [0.0, 2.0, 3.0, 3.0, 2.0]


def test_ttfts_take_requests_sent_in_the_window_with_a_first_token_and_no_error():
    results = [_stream(0.0, [0.5], 1), _stream(1.0, [3.0], None),  # cancelled after its first token: counts
               _stream(1.5, [1.6], None, error="HTTP 429"), RequestResult(t_start=2.0)]
    assert ttfts(results) == [0.5, 2.0]
    assert ttfts(results, 0.5, 10.0) == [2.0]


def test_first_requests_spread_over_the_whole_length():
    lengths = [first_request_tokens(i, 128) for i in range(64)]
    assert min(lengths) >= 1 and max(lengths) <= 128
    assert len({n // 16 for n in lengths}) == 8  # every eighth of the range is used
    assert len({b_message(n) for n in range(20)}) == 20


def test_server_settings_per_condition():
    args = argparse.Namespace(plain_keys=False, max_running=0)
    fifo, fair = server_settings("fifo", args), server_settings("fair", args)
    assert fifo["TOKENWIRE_FAIR_SHARE"] == "false" and fair["TOKENWIRE_FAIR_SHARE"] == "true"
    assert fair["TOKENWIRE_API_KEYS"] == "bench-tenant-a name=batchjob,bench-tenant-b name=chat"
    assert "TOKENWIRE_MAX_RUNNING" not in fair
    assert tenant_keys(True) == "bench-tenant-a,bench-tenant-b"
    quick = parse_args(["--quick"])
    assert (quick.a_streams, quick.blocks, quick.block, quick.max_running) == (24, 2, 4.0, 16)
    assert parse_args([]).a_streams == 160


def test_queue_metrics_and_cpu_cores():
    text = ("# HELP tokenwire_requests_waiting x\n# TYPE tokenwire_requests_waiting gauge\n"
            "tokenwire_requests_waiting 96.0\ntokenwire_requests_running 64.0\ntokenwire_kv_cache_bytes 1.0\n")
    assert parse_queue_metrics(text) == {"waiting": 96.0, "running": 64.0}
    before = {"busy": 10.0, "steal": 0.0, "server": 5.0, "client": 1.0}
    after = {"busy": 30.0, "steal": 1.0, "server": 21.0, "client": 2.0}
    assert CpuMeter.cores(before, after, 10.0) == {"server": 1.6, "client": 0.1, "others": 0.3, "steal": 0.1}


def _condition(name: str, idle: float, loaded: float, alone: float, contention: float) -> dict:
    cores = {"server": 1.8, "client": 0.05, "others": 0.0, "steal": 0.0}
    return {"condition": name, "b_idle_ttft_ms": [idle], "b_idle_ttft_ms_p50": idle, "b_idle_errors": [],
            "b_loaded_ttft_ms": [loaded], "b_loaded_ttft_ms_p50": loaded, "b_loaded_ttft_ms_p90": loaded,
            "b_loaded_errors": [], "b_ttft_ratio": loaded / idle, "a_tok_s_alone": alone,
            "a_tok_s_contention": contention, "a_drop_pct": 100 * (alone - contention) / alone,
            "a_ttft_s_p50_alone": 20.0, "a_ttft_s_p50_contention": 21.0, "a_errors": 0, "a_error_samples": [],
            "a_completion_tokens_p50": 128, "queue_alone": {"waiting": 96.0, "running": 64.0},
            "queue_contention": {"waiting": 95.0, "running": 64.0}, "cpu_cores_alone": cores,
            "cpu_cores_contention": cores}


def test_verdicts_and_report():
    fifo, fair = _condition("fifo", 40.0, 20000.0, 500.0, 495.0), _condition("fair", 40.0, 70.0, 500.0, 440.0)
    assert [line.rsplit(" ", 1)[1] for line in verdicts(fifo)] == ["FAIL", "PASS"]
    assert [line.rsplit(" ", 1)[1] for line in verdicts(fair)] == ["PASS", "FAIL"]
    report = {"stamp": "S", "git": "g", "cpus": 2, "loadavg_before": [0.1], "loadavg_after": [1.9],
              "args": {"a_streams": 160, "a_max_tokens": 128, "warmup": 20.0, "blocks": 6, "block": 10.0},
              "conditions": [fifo, fair]}
    text = report_text(report)
    assert "| fair | 40.0 | 70.0 / 70.0 | 1 / 1 | 1.75 | 500.0 | 440.0 | 12.0 | 20.00 / 21.00 | 95 / 64 |" in text
    assert "warning" not in text


def test_blocks_alternate_abba_so_each_kind_is_first_as_often():
    from bench.tenants import block_order

    assert block_order(4) == ["alone", "contention", "contention", "alone"] * 2
