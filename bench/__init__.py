"""Benchmarks for tokenwire: an HTTP load generator, an in-process baseline, and `make bench`.

In-process benchmarks run with the server's OpenMP setting (app/openmp.py).
"""

import compileall
from pathlib import Path

from app.openmp import limit_spinning

limit_spinning()  # before any benchmark imports torch, as `python -m app` does (app/openmp.py)


def compile_app() -> None:
    """app/'s bytecode, as `make serve` writes it first: with PYTHONDONTWRITEBYTECODE set, a server
    the benchmark starts would otherwise compile app/ at every start and count that as start-up."""
    compileall.compile_dir(str(Path(__file__).resolve().parents[1] / "app"), quiet=1)
