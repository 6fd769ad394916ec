"""Who owns what a request stores: the tenant of its API key (keys sharing a name, a rotated key and its
successor, are one tenant), or "" when the API is open. Nothing stored is seen by another owner."""

from __future__ import annotations

from starlette.requests import Request


def owner_of(request: Request) -> str:
    tenant = getattr(request.state, "tenant", None)
    return "" if tenant is None else tenant.name
