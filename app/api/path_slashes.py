"""CollapseSlashes (pure ASGI, outermost): `//v1/models` is served as `/v1/models`.

Front-ends often join a base URL ending in `/` with a path starting with one; every later layer
(routing, auth's open paths, metrics labels) then sees the one canonical path.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

_REPEATED = re.compile(r"/{2,}")
_REPEATED_BYTES = re.compile(rb"/{2,}")


class CollapseSlashes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "//" in scope["path"]:
            scope = dict(scope)
            scope["path"] = _REPEATED.sub("/", scope["path"])
            if scope.get("raw_path"):
                scope["raw_path"] = _REPEATED_BYTES.sub(b"/", scope["raw_path"])
        await self.app(scope, receive, send)
