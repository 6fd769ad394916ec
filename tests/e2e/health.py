"""Waiting for a real server to be idle again, read from its /health."""

from __future__ import annotations

import time

import httpx

IDLE = {"running": 0, "waiting": 0, "active_requests": 0, "kv_cache_bytes": 0}


def wait_idle(http: httpx.Client, timeout_s: float = 10.0) -> dict:
    """Poll /health until nothing runs, waits or holds KV memory; fail with the last reading after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = http.get("/health").json()
        if all(health[key] == value for key, value in IDLE.items()):
            return health
        assert time.monotonic() < deadline, f"not idle {timeout_s}s later: {health}"
        time.sleep(0.05)


def metric_value(http: httpx.Client, name: str, **labels: str) -> float:
    """A real server's /metrics: the samples named `name` that carry these labels, summed over any other
    labels they have (every model's, say); 0 when there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(http.get("/metrics").text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def wait_for_metric(http: httpx.Client, name: str, value: float, timeout_s: float = 5.0, **labels: str) -> float:
    """Poll until the metric reaches `value` (it is counted as the response ends); return the last reading."""
    deadline = time.monotonic() + timeout_s
    while (seen := metric_value(http, name, **labels)) < value and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen
