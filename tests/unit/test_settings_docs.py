"""Every setting is documented: a line in .env.example with its real default, a row in README's tables."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"


def variable(field: str) -> str:
    return f"TOKENWIRE_{field.upper()}"


def env_example_lines() -> dict[str, str]:
    found = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(TOKENWIRE_\w+)=(.*)$", line)
        if match:
            found[match[1]] = match[2]
    return found


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_has_a_line_in_env_example(field):
    assert variable(field) in env_example_lines(), f"{variable(field)} is missing from .env.example"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_has_a_readme_row(field):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"| `{variable(field)}` |" in readme, f"{variable(field)} has no row in README's settings tables"


def test_env_example_shows_the_defaults(monkeypatch):
    """Loading .env.example as the .env must give exactly the defaults."""
    for name in list(os.environ):
        if name.startswith("TOKENWIRE_"):
            monkeypatch.delenv(name)
    assert Settings(_env_file=ENV_EXAMPLE) == Settings(_env_file=None)


def test_env_example_names_only_real_settings():
    known = {variable(field) for field in Settings.model_fields}
    assert set(env_example_lines()) <= known
