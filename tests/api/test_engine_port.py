"""The engine the routes are written against (ServingEngine) is what Engine and FakeEngine provide:
every member, with the same kind (property, coroutine, method) and the same parameters."""

from __future__ import annotations

import inspect

import pytest

from app.api.engine_port import ServingEngine
from app.engine.engine import Engine
from tests.api.fake_engine import FakeEngine


def _members() -> list[str]:
    names = [n for n, _ in inspect.getmembers(ServingEngine) if not n.startswith("_")]
    return sorted(set(names) | set(ServingEngine.__annotations__))


def _shape(cls: type, name: str):
    attribute = inspect.getattr_static(cls, name, None)
    if isinstance(attribute, property):
        return "property", None
    if callable(attribute):
        parameters = [(p.name, p.kind, p.default) for p in inspect.signature(attribute).parameters.values()]
        return ("coroutine" if inspect.iscoroutinefunction(attribute) else "method"), parameters
    return "attribute", None


@pytest.mark.parametrize("implementation", [Engine, FakeEngine])
@pytest.mark.parametrize("name", _members())
def test_the_implementation_matches_the_protocol(implementation, name):
    if name in ServingEngine.__annotations__:  # a plain attribute: set in __init__ or a dataclass field
        assert name in implementation.__init__.__code__.co_names or name in getattr(implementation, "__dataclass_fields__", {})
        return
    expected = _shape(ServingEngine, name)
    found = _shape(implementation, name)
    assert found == expected, f"{implementation.__name__}.{name}: {found} != {expected}"


def test_the_routes_use_nothing_outside_the_protocol():
    import re
    from pathlib import Path

    used = set()
    for path in (Path(__file__).resolve().parents[2] / "app" / "api").glob("*.py"):
        used |= set(re.findall(r"(?<!app\.)\bengine\.([a-z_]+)", path.read_text()))  # not `app.engine.x` imports
    assert used and used - set(_members()) == set()
