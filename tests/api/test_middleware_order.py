"""ARCHITECTURE.md's "Middleware, outermost first:" sentence is the order create_app really builds, so
the docs and the code cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from app.config import Settings
from app.main import create_app
from tests.api.fake_engine import FakeEngine

ARCHITECTURE = Path(__file__).resolve().parents[2] / "ARCHITECTURE.md"


def documented_order() -> list[str]:
    """The class names in backticks between "Middleware, outermost first:" and "then FastAPI",
    asides in parentheses left out."""
    text = " ".join(ARCHITECTURE.read_text(encoding="utf-8").split())
    sentence = re.search(r"Middleware, outermost first: (.*?), then FastAPI", text)
    assert sentence, "ARCHITECTURE.md lost its middleware sentence"
    listed = sentence[1]
    while re.search(r"\([^()]*\)", listed):
        listed = re.sub(r"\([^()]*\)", "", listed)
    return re.findall(r"`(\w+)`", listed)


def test_the_documented_middleware_order_is_the_apps():
    # Keys and origins set, so the middleware that are optional are in the stack too.
    settings = Settings(api_keys="sk-test", cors_origins="https://example.com")
    app = create_app(settings, engine=FakeEngine())  # type: ignore[arg-type]
    # Starlette makes the last added the outermost, and user_middleware lists it first.
    assert [m.cls.__name__ for m in app.user_middleware] == documented_order()
