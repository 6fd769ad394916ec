"""ApiKeyAuth: a pure ASGI middleware; every path except the open ones needs `Authorization: Bearer <key>`
(or `x-api-key: <key>`, as Anthropic's clients send it).

It wraps the whole app, so a route added later is protected by default. Keys are compared in
constant time against every configured key (no early exit) and are never logged. The key's tenant
(app/api/tenants.py) goes to `request.state.tenant`, and its name onto the request's record.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import Unauthorized, error_response
from app.api.tenants import KeyTable, Tenant

# Probes must work without a key (load balancers, orchestrators).
OPEN_PATHS = frozenset({"/health", "/ready"})
# The playground's page and assets load without a key (the page asks for one); its API calls need it.
PLAYGROUND_PATHS = frozenset({"/"})
PLAYGROUND_PREFIX = "/playground/"


def api_key(scope: Scope) -> bytes:
    """The Bearer token of `Authorization`, else the `x-api-key` header; b"" when neither is sent."""
    headers = dict(scope.get("headers", ()))
    if b"authorization" in headers:
        scheme, _, token = headers[b"authorization"].partition(b" ")
        return token.strip() if scheme.lower() == b"bearer" else b""
    return headers.get(b"x-api-key", b"").strip()


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, keys: KeyTable | Iterable[str], open_paths: Iterable[str] = OPEN_PATHS,
                 open_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.keys = keys if isinstance(keys, KeyTable) else KeyTable(keys)
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def tenant_of(self, scope: Scope) -> Tenant | None:
        return self.keys.lookup(api_key(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        tenant = self.tenant_of(scope)
        if tenant is not None:
            state = scope.setdefault("state", {})
            state["tenant"] = tenant
            if (record := state.get("record")) is not None:
                record.tenant = tenant.name
            await self.app(scope, receive, send)
            return
        await error_response(Unauthorized(), scope, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
