"""Benchmarks for tokenwire: an HTTP load generator, an in-process baseline, and `make bench`.

In-process benchmarks run with the server's OpenMP setting (app/openmp.py).
"""

from app.openmp import limit_spinning

limit_spinning()  # before any benchmark imports torch, as `python -m app` does (app/openmp.py)
