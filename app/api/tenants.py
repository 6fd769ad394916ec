"""Tenants: who each API key is (a name), its share of the engine (weight, priority) and its limits.

Keys come from TOKENWIRE_API_KEYS (comma-separated) and TOKENWIRE_API_KEY_FILE (one per line); an
entry is the key, then optional `field=value` words:

    sk-chat-7f3a name=chat weight=3 priority=interactive requests=60/min tokens=200000/hour

A key without fields is a tenant of its own, named `key-` + the first 8 hex digits of its SHA-256,
so logs and metrics can tell keys apart without holding them. Keys with the same name are one tenant
(a rotated key and its successor): they share limits and usage, so their fields must agree.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from app.engine.types import Priority, Share

WINDOW_SECONDS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
                  "d": 86400, "day": 86400}
_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,64}")  # safe in metric labels, logs and JSON
_FIELDS = ("name", "weight", "priority", "requests", "tokens")


@dataclass(frozen=True)
class Rate:
    """`limit` units per `window_s` seconds, refilled continuously (as OpenAI's limits are)."""

    limit: int
    window_s: float
    unit: str  # the window as configured ("min"), for messages

    @classmethod
    def parse(cls, text: str) -> Rate:
        count, _, window = text.partition("/")
        if not count.isdigit() or int(count) < 1 or window not in WINDOW_SECONDS:
            raise ValueError(f"{text!r} is not a rate: write N/WINDOW with N >= 1 and WINDOW one of "
                             f"{', '.join(sorted(set(WINDOW_SECONDS)))} (e.g. 60/min)")
        return cls(int(count), float(WINDOW_SECONDS[window]), window)

    def __str__(self) -> str:
        return f"{self.limit}/{self.unit}"


@dataclass(frozen=True)
class Tenant:
    name: str
    weight: float = 1.0
    priority: Priority = Priority.INTERACTIVE
    requests: Rate | None = None  # generation requests per window
    tokens: Rate | None = None  # prompt + completion tokens per window

    @property
    def share(self) -> Share:
        return Share(self.name, self.weight, self.priority)


def default_name(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def parse_entry(entry: str) -> tuple[str, Tenant]:
    """`KEY [field=value ...]` -> (key, tenant); ValueError naming the bad field otherwise. Messages
    never quote a word that could be a key (a forgotten comma makes the next key look like a field)."""
    key, *words = entry.split()
    fields: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise ValueError("an API key entry has a word without '=' after its key (separate keys with commas; "
                             "fields are name=, weight=, priority=, requests=, tokens=)")
        if name not in _FIELDS:
            raise ValueError(f"an API key entry has an unknown field; expected {', '.join(_FIELDS)} as field=value")
        if not value:
            raise ValueError(f"API key entry field {name}= has no value")
        if name in fields:
            raise ValueError(f"API key entry names {name!r} twice")
        fields[name] = value
    return key, Tenant(name=_checked_name(fields.get("name") or default_name(key)),
                       weight=_weight(fields.get("weight", "1")),
                       priority=_priority(fields.get("priority", "interactive")),
                       requests=Rate.parse(fields["requests"]) if "requests" in fields else None,
                       tokens=Rate.parse(fields["tokens"]) if "tokens" in fields else None)


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"tenant name {name!r}: use 1-64 letters, digits, '.', '_', ':' or '-'")
    return name


def _weight(text: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        weight = 0.0
    if not 0.01 <= weight <= 1000:
        raise ValueError(f"weight={text!r}: expected a number between 0.01 and 1000")
    return weight


def _priority(text: str) -> Priority:
    try:
        return Priority[text.upper()]
    except KeyError:
        raise ValueError(f"priority={text!r}: expected interactive or batch") from None


def _digest(key: bytes) -> bytes:
    # Equal-length digests: compare_digest's time then reveals neither a key nor its length.
    return hashlib.sha256(key).digest()


class KeyTable:
    """Every configured key (as a digest) and its tenant; a lookup compares against all of them."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._entries: list[tuple[bytes, Tenant]] = []
        tenants: dict[str, Tenant] = {}
        by_digest: dict[bytes, Tenant] = {}
        for entry in entries:
            key, tenant = parse_entry(entry)
            known = tenants.setdefault(tenant.name, tenant)
            if known != tenant:
                raise ValueError(f"keys named {tenant.name!r} disagree on their fields; keys sharing a name "
                                 "are one tenant")
            digest = _digest(key.encode("utf-8"))
            if by_digest.setdefault(digest, tenant) != tenant:
                raise ValueError(f"a key is listed twice with different fields (as {by_digest[digest].name!r} "
                                 f"and {tenant.name!r})")
            self._entries.append((digest, tenant))
        if not self._entries:
            raise ValueError("no API keys configured")
        self.tenants = tenants

    def lookup(self, token: bytes) -> Tenant | None:
        """The tenant whose key is `token`, or None; time does not depend on which key matched."""
        presented = _digest(token)
        found = None
        for digest, tenant in self._entries:  # every key, always: no early exit
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found if token else None
