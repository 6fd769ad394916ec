"""The playground page and its assets: served from the package, locked down, open without a key."""

from __future__ import annotations

import re

from app.api.playground import ASSETS
from tests.api.helpers import assert_error_shape
from tests.api.test_api_limits import client_for

ASSET_NAMES = ["playground.js", "markdown.js", "playground.css"]


async def test_the_page_and_its_assets_are_served(client):
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    referenced = re.findall(r'(?:src|href)="/playground/([^"]+)"', page.text)
    assert sorted(referenced) == sorted(ASSET_NAMES)
    for name in ASSET_NAMES:
        asset = await client.get(f"/playground/{name}")
        assert asset.status_code == 200 and asset.text == (ASSETS / name).read_text(encoding="utf-8")
        assert asset.headers["content-security-policy"] == csp
    copy = await client.get("/playground/index.html")
    assert copy.headers["content-security-policy"] == csp  # the page's own file is as locked down as /
    missing = await client.get("/playground/missing.js")
    assert missing.status_code == 404 and assert_error_shape(missing.json())


async def test_the_page_has_no_inline_script_and_loads_nothing_from_elsewhere():
    page = (ASSETS / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    for name in ["index.html", *ASSET_NAMES]:
        text = (ASSETS / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), f"{name} refers to another origin"
    for name in ASSET_NAMES[:2]:  # model text must never be parsed as HTML
        script = (ASSETS / name).read_text(encoding="utf-8")
        assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script


async def test_with_keys_the_page_loads_but_the_api_needs_the_key(fake):
    async with client_for(fake, api_keys="sk-1") as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/playground/playground.js")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/playground/../v1/models")).status_code == 401


async def test_a_setting_turns_it_off(fake):
    async with client_for(fake, playground=False) as client:
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/playground/playground.js")).status_code == 404
