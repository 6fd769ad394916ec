"""CanonicalPath (pure ASGI, outermost): every later layer (routing, auth's open paths, metrics labels)
sees the one canonical path of a request.

- `//v1/models` is served as `/v1/models`: front-ends often join a base URL ending in `/` with a path
  starting with one.
- `/models`, `/chat/completions`, `/completions`, `/responses`: a base URL without `/v1` (several tools
  configure it so, and llama-server serves both) is served as `/v1/...`, so auth, limits and metrics are
  the same; OpenAPI lists only the `/v1` paths. A path with a route of its own is never rewritten.
"""

from __future__ import annotations

import re

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

_REPEATED = re.compile(r"/{2,}")
_REPEATED_BYTES = re.compile(rb"/{2,}")
V1 = "/v1"


class CanonicalPath:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # the app's, read at each request: routes added after start-up count too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = self._canonical(scope)
        await self.app(scope, receive, send)

    def _canonical(self, scope: Scope) -> Scope:
        path, raw = scope["path"], scope.get("raw_path")
        if "//" in path:
            path = _REPEATED.sub("/", path)
            raw = raw and _REPEATED_BYTES.sub(b"/", raw)
        if not path.startswith(V1 + "/") and self._only_under_v1(scope, path):
            path, raw = V1 + path, raw and V1.encode() + raw
        if path == scope["path"]:
            return scope
        return dict(scope, path=path, **({"raw_path": raw} if "raw_path" in scope else {}))

    def _only_under_v1(self, scope: Scope, path: str) -> bool:
        """Whether `path` has no route and `/v1` + path has one (any method: a 405 stays a 405)."""
        def routed(candidate: str) -> bool:
            probe = dict(scope, path=candidate)
            return any(route.matches(probe)[0] != Match.NONE for route in self.routes)
        return not routed(path) and routed(V1 + path)
