"""The playground: a chat page served at `/`, its assets under `/playground/`, all inside the package.

The page is plain HTML, CSS and JavaScript (no build step, no CDN, nothing fetched from elsewhere),
and its Content-Security-Policy allows only this server's own scripts and styles, so even a bug in
rendering could not run a script that came with model output.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS = Path(__file__).resolve().parent / "playground"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class PlaygroundAssets(StaticFiles):
    """The page's files, each with the page's headers (so /playground/index.html is as locked down as /)."""

    async def get_response(self, path: str, scope: Scope):
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def install_playground(app: FastAPI) -> None:
    page = (ASSETS / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, summary="The chat playground page",
             responses={200: {"description": "the playground's HTML", "content": {"text/html": {}}}})
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=HEADERS)

    app.mount("/playground", PlaygroundAssets(directory=ASSETS), name="playground")
