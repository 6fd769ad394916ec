"""Settings are the only reader of the environment: the engine gets what it needs through its configs.

Checked on the source with `ast`: any use of `os.environ` or `os.getenv` in app/engine that is not a
write (a variable set for a library before it loads) must be one of the reads listed here, with why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "app" / "engine"

# (file under app/engine, line's text) -> why it may read the environment itself.
ALLOWED_READS = {
    ("native/build.py", 'for candidate in (os.environ.get("CC"), "cc", "gcc"):'):
        "$CC is the build tools' convention; the build also runs on its own (`make native`, the image), "
        "without settings",
}
WRITES = {"setdefault", "update"}  # e.g. os.environ.setdefault(...): a default a library reads when it loads


def environment_uses(source: str) -> list[tuple[int, bool]]:
    """(line, is_write) for every `os.environ` / `os.getenv` / `from os import environ|getenv` in `source`."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            uses += [(node.lineno, False) for alias in node.names if alias.name in {"environ", "getenv", "environb"}]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
              and node.attr in {"environ", "getenv", "environb", "putenv"}):
            parent = parents.get(node)
            write = node.attr == "putenv" or (
                isinstance(parent, ast.Attribute) and parent.attr in WRITES
            ) or (isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store))
            uses.append((node.lineno, write))
    return uses


def engine_reads() -> set[tuple[str, str]]:
    reads = set()
    for path in sorted(ENGINE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for line, write in environment_uses("\n".join(lines)):
            if not write:
                reads.add((path.relative_to(ENGINE).as_posix(), lines[line - 1].strip()))
    return reads


def test_the_engine_reads_no_environment_but_the_listed_exceptions():
    assert engine_reads() == set(ALLOWED_READS)


@pytest.mark.parametrize(("source", "expected"), [
    ("import os\nos.environ.get('X')", [(2, False)]),
    ("import os\nx = os.getenv('X')", [(2, False)]),
    ("import os\nif 'X' in os.environ: pass", [(2, False)]),
    ("from os import environ", [(1, False)]),
    ("import os\nos.environ.setdefault('X', '1')", [(2, True)]),
    ("import os\nos.environ['X'] = '1'", [(2, True)]),
    ("import os\ny = os.environ['X']", [(2, False)]),
])
def test_the_scanner_tells_reads_from_writes(source, expected):
    assert environment_uses(source) == expected
