"""RateLimits: each tenant's request rate and token quota, as token buckets refilled continuously.

A generation request takes one unit from its tenant's request bucket when it is accepted. Tokens
cannot be known up front (an answer ends at its EOS), so a request is accepted while the tenant's
token bucket holds at least one token, and its prompt and completion tokens are charged when it
ends: concurrent requests can overdraw the bucket, and the debt is paid back before the next one.
Both refusals are RateLimited (429, with Retry-After: when the bucket will allow the next request).
Runs on the event loop only: no locks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.api.tenants import Rate, Tenant


class RateLimited(Exception):
    """A tenant is past one of its limits."""

    def __init__(self, tenant: str, limit: str, rate: Rate, retry_after_s: float,
                 headers: dict[str, str] | None = None) -> None:
        self.retry_after_s = max(math.ceil(retry_after_s), 1)
        self.headers = headers or {}  # x-ratelimit-*, as on an accepted request
        super().__init__(f"rate limit reached for {tenant!r}: {rate.limit} {limit} per {rate.unit}; "
                         f"retry in {self.retry_after_s} s")


@dataclass
class TokenBucket:
    rate: Rate
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.level + (now - self.at) * self.rate.limit / self.rate.window_s, self.rate.limit)
        self.at = now

    def wait_s(self, needed: float) -> float:
        """Seconds until the bucket holds `needed` (after a refill)."""
        return max(needed - self.level, 0.0) * self.rate.window_s / self.rate.limit


class RateLimits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}  # (tenant, "requests" | "tokens")

    def _bucket(self, tenant: Tenant, limit: str) -> TokenBucket | None:
        rate: Rate | None = getattr(tenant, limit)
        if rate is None:
            return None
        now = self._clock()
        bucket = self._buckets.get((tenant.name, limit))
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[(tenant.name, limit)] = TokenBucket(rate, float(rate.limit), now)
        bucket.refill(now)
        return bucket

    def admit(self, tenant: Tenant | None) -> dict[str, str]:
        """Take one request from the tenant's budget, or raise RateLimited (nothing taken). Returns
        OpenAI's `x-ratelimit-*` headers for the limits the tenant has."""
        if tenant is None:
            return {}
        requests, tokens = self._bucket(tenant, "requests"), self._bucket(tenant, "tokens")
        for limit, bucket in (("tokens", tokens), ("requests", requests)):
            if bucket is not None and bucket.level < 1:
                raise RateLimited(tenant.name, limit, bucket.rate, bucket.wait_s(1), _headers(requests, tokens))
        if requests is not None:
            requests.level -= 1
        return _headers(requests, tokens)

    def charge(self, tenant: str | None, num_tokens: int) -> None:
        """A finished request's tokens (prompt + completion); the bucket may go below zero."""
        bucket = self._buckets.get((tenant or "", "tokens"))
        if bucket is not None and num_tokens > 0:
            bucket.refill(self._clock())
            bucket.level -= num_tokens


def _headers(requests: TokenBucket | None, tokens: TokenBucket | None) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` as OpenAI sends them, for the limits the
    tenant has (reset: until the bucket is full)."""
    headers = {}
    for limit, bucket in (("requests", requests), ("tokens", tokens)):
        if bucket is not None:
            headers.update({f"x-ratelimit-limit-{limit}": str(bucket.rate.limit),
                            f"x-ratelimit-remaining-{limit}": str(max(math.floor(bucket.level), 0)),
                            f"x-ratelimit-reset-{limit}": duration(bucket.wait_s(bucket.rate.limit))})
    return headers


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
