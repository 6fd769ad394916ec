"""API key entries as tenants, and their rate limits as buckets. No app, no model."""

from __future__ import annotations

import pytest

from app.api.rate_limits import RateLimited, RateLimits, duration
from app.api.tenants import KeyTable, Rate, Tenant, default_name, parse_entry
from app.engine.types import Priority, Share


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_a_key_and_its_fields():
    key, tenant = parse_entry("sk-abc name=chat weight=2.5 priority=batch requests=60/min tokens=1000/h")
    assert key == "sk-abc"
    assert tenant == Tenant("chat", 2.5, Priority.BATCH, Rate(60, 60.0, "min"), Rate(1000, 3600.0, "h"))
    assert tenant.share == Share("chat", 2.5, Priority.BATCH)


def test_a_bare_key_is_its_own_tenant_named_without_the_key():
    key, tenant = parse_entry("sk-secret-value")
    assert tenant == Tenant(default_name("sk-secret-value"))
    assert tenant.name.startswith("key-") and "secret" not in tenant.name and len(tenant.name) == 12
    assert tenant.requests is None and tenant.tokens is None and tenant.priority is Priority.INTERACTIVE


@pytest.mark.parametrize("entry, names", [
    ("k colour=red", "unknown field"), ("k weight=0", "weight"), ("k weight=heavy", "weight"),
    ("k priority=urgent", "priority"), ("k requests=60", "60"), ("k tokens=10/fortnight", "fortnight"),
    ("k requests=0/min", "0/min"), ("k name=has/slash", "has/slash"), ("k name=a name=b", "twice"),
    ("k name=", "name="),
])
def test_a_bad_entry_is_refused_naming_what_is_wrong(entry, names):
    with pytest.raises(ValueError, match=names):
        parse_entry(entry)


def test_a_forgotten_comma_never_puts_the_next_key_in_the_message():
    with pytest.raises(ValueError) as refused:
        parse_entry("sk-live-aaa sk-live-bbb")
    assert "sk-live" not in str(refused.value) and "comma" in str(refused.value)
    with pytest.raises(ValueError) as refused:
        parse_entry("sk-live-aaa sk-live-bbb=x")
    assert "sk-live" not in str(refused.value)


def test_a_key_listed_twice_must_not_change_its_fields():
    assert KeyTable(["k1 name=a", "k1 name=a"]).lookup(b"k1").name == "a"
    with pytest.raises(ValueError, match="twice") as refused:
        KeyTable(["k1 name=a", "k1 name=b"])
    assert "k1" not in str(refused.value)


def test_keys_sharing_a_name_are_one_tenant_and_must_agree():
    table = KeyTable(["old-key name=team requests=5/min", "new-key name=team requests=5/min", "other"])
    assert table.lookup(b"old-key") == table.lookup(b"new-key") == table.tenants["team"]
    assert table.lookup(b"other").name == default_name("other")
    assert table.lookup(b"") is None and table.lookup(b"old-ke") is None
    with pytest.raises(ValueError, match="team"):
        KeyTable(["a name=team weight=1", "b name=team weight=2"])


def test_the_request_bucket_refills_continuously_and_says_when_to_retry():
    clock = FakeClock()
    limits = RateLimits(clock)
    tenant = Tenant("chat", requests=Rate(2, 60.0, "min"))
    first = limits.admit(tenant)
    assert first["x-ratelimit-limit-requests"] == "2" and first["x-ratelimit-remaining-requests"] == "1"
    assert first["x-ratelimit-reset-requests"] == "30s"
    limits.admit(tenant)
    with pytest.raises(RateLimited) as refused:
        limits.admit(tenant)
    assert refused.value.retry_after_s == 30 and "chat" in str(refused.value) and "requests" in str(refused.value)
    clock.now += 29
    with pytest.raises(RateLimited) as refused:
        limits.admit(tenant)  # a refusal takes nothing
    assert refused.value.retry_after_s == 1
    clock.now += 1
    limits.admit(tenant)


def test_tokens_are_charged_after_the_fact_and_a_debt_is_paid_back_first():
    clock = FakeClock()
    limits = RateLimits(clock)
    tenant = Tenant("batch", tokens=Rate(100, 10.0, "s"))
    limits.admit(tenant)
    limits.admit(tenant)  # two requests in flight: both admitted while the bucket is full
    limits.charge("batch", 120)
    limits.charge("batch", 80)  # level -100: 101 tokens of refill (10.1 s) before the next
    with pytest.raises(RateLimited) as refused:
        limits.admit(tenant)
    assert refused.value.retry_after_s == 11 and "tokens" in str(refused.value)
    clock.now += 11
    assert limits.admit(tenant)["x-ratelimit-remaining-tokens"] == "10"
    limits.charge(None, 1000)  # the open API has no buckets
    limits.charge("unknown", 1000)


def test_a_tenant_without_limits_is_never_refused():
    limits = RateLimits(FakeClock())
    for _ in range(1000):
        assert limits.admit(Tenant("free")) == {}
    assert limits.admit(None) == {}


@pytest.mark.parametrize("seconds, text", [(0.0201, "21ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"),
                                           (3723, "1h2m3s")])
def test_reset_durations_are_written_as_openai_does(seconds, text):
    assert duration(seconds) == text
