"""The layering rule, checked on the source with `ast` (nothing is imported):

    app.engine  knows nothing of HTTP, settings or the server: torch and transformers only;
    app.chat_formats  plain text <-> calls, for both: imports no other layer, nor torch;
    app.api     may import app.engine, never the app factory, settings or the server;
    app.config  may import app.engine (it builds EngineConfig), never the HTTP layer or the server,
                not even through what it imports (checked in a fresh interpreter);
    app.main    wires app.api + app.config + app.engine;
    app.lifecycle (uvicorn, signals) and app.logs are used by app.__main__ only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

WEB = ("fastapi", "starlette", "sse_starlette", "uvicorn", "prometheus_client")
PROCESS = ("app.lifecycle", "app.logs")  # what only `python -m app` runs
SETTINGS = ("pydantic_settings",)


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (also inside functions and TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from app import api`
    return found


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files:
        for name in sorted(imports_of(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(APP.parent)} imports {name}")
    return bad


def files_under(package: str) -> list[Path]:
    files = sorted((APP / package).rglob("*.py"))
    assert files, f"no modules found under app/{package}"
    return files


def test_engine_imports_no_web_settings_or_outer_layers():
    forbidden = (*WEB, *SETTINGS, *PROCESS, "app.api", "app.config", "app.main", "app.__main__")
    assert violations(files_under("engine"), forbidden) == []


def test_chat_formats_are_neutral():
    """Both the engine (prompts) and the API (parsing) use them: they can import neither, nor torch."""
    forbidden = (*WEB, *SETTINGS, *PROCESS, "torch", "transformers", "pydantic", "app.engine", "app.api",
                 "app.config", "app.main", "app.__main__")
    assert violations(files_under("chat_formats"), forbidden) == []


def test_engine_code_names_no_api_fields():
    """The engine speaks tokens and text; OpenAI's field names belong to app.api (chat templates' own
    message fields are read in app.chat_formats)."""
    found = [f"{path.relative_to(APP.parent)}: {name}" for path in files_under("engine")
             for name in ('"tool_calls"', '"delta"', '"choices"') if name in path.read_text(encoding="utf-8")]
    assert found == []


def test_api_imports_no_factory_settings_or_server():
    forbidden = (*SETTINGS, *PROCESS, "uvicorn", "app.config", "app.main", "app.__main__")
    assert violations(files_under("api"), forbidden) == []


def test_config_imports_no_web_layer():
    forbidden = (*WEB, *PROCESS, "app.api", "app.http_protocol", "app.main", "app.__main__")
    assert violations([APP / "config.py"], forbidden) == []


def test_importing_the_settings_loads_no_web_stack():
    """The scan above sees direct imports only; this catches the server arriving through any chain."""
    probe = ("import sys, app.config; "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {WEB!r} or m.startswith('app.api')))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=APP.parent, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_main_is_the_only_wiring():
    """app.main wires app.api and app.config; nothing but app.__main__ imports app.main."""
    main_imports = imports_of(APP / "main.py")
    assert any(name.startswith("app.api") for name in main_imports)
    assert "app.config" in main_imports
    importers = [p for p in APP.rglob("*.py") if p.name != "__main__.py" and p != APP / "main.py"]
    assert violations(importers, ("app.main",)) == []


@pytest.mark.parametrize(("source", "expected"), [
    ("from app.api import routes", {"app.api", "app.api.routes"}),
    ("from ..api.routes import router", {"app.api.routes", "app.api.routes.router"}),
    ("from . import types", {"app.engine", "app.engine.types"}),
    ("import fastapi.responses", {"fastapi.responses"}),
    ("def f():\n    import uvicorn", {"uvicorn"}),
])
def test_the_import_scanner_itself(tmp_path, monkeypatch, source, expected):
    """The checker must see relative and function-level imports, or the rules above prove nothing."""
    fake_app = tmp_path / "app"
    (fake_app / "engine").mkdir(parents=True)
    module = fake_app / "engine" / "mod.py"
    module.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "APP", fake_app)
    assert imports_of(module) == expected
