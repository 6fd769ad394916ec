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
