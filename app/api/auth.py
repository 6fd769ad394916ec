"""ApiKeyAuth: a pure ASGI middleware; every path except the open ones needs `Authorization: Bearer <key>`.

It wraps the whole app, so a route added later is protected by default. Keys are compared in
constant time against every configured key (no early exit) and are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import Unauthorized, error_response

# Probes must work without a key (load balancers, orchestrators).
OPEN_PATHS = frozenset({"/health", "/ready"})
# The playground's page and assets load without a key (the page asks for one); its API calls need it.
PLAYGROUND_PATHS = frozenset({"/"})
PLAYGROUND_PREFIX = "/playground/"


def _digest(key: bytes) -> bytes:
    # Equal-length digests: compare_digest's time then reveals neither a key nor its length.
    return hashlib.sha256(key).digest()


def bearer_token(scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, keys: Iterable[str], open_paths: Iterable[str] = OPEN_PATHS,
                 open_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self._digests = tuple(_digest(key.encode("utf-8")) for key in keys)
        if not self._digests:
            raise ValueError("ApiKeyAuth needs at least one key")
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def is_authorized(self, scope: Scope) -> bool:
        token = bearer_token(scope)
        presented = _digest(token)
        matched = False
        for digest in self._digests:  # every key, always: no early exit
            matched |= hmac.compare_digest(presented, digest)
        return matched and bool(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.is_open(scope["path"]) or self.is_authorized(scope):
            await self.app(scope, receive, send)
            return
        await error_response(Unauthorized(), headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
