"""`python -m app`: read settings, configure logging, serve (app/lifecycle.py). No other logic."""

from __future__ import annotations

import gc
import os
import sys

# An OpenMP thread that finishes its share of an op early spins before it sleeps (libgomp: 300,000
# turns by default, milliseconds). When another process holds a core (a second replica, a busy
# neighbour) each parallel op then waits out a scheduler time slice: measured here with two processes
# on 2 cores, 8 ms per small matmul instead of 10 us; with 1,000 turns, 46 us, and no slower alone.
# libgomp reads it when torch loads it, so it is set before anything imports torch.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# Start-up allocates millions of long-lived objects (torch, transformers, the web stack, the model):
# the cyclic collector would sweep them over and over, about 0.3 s of a 2 s import on 2 cores.
# app.lifecycle turns it back on, with everything alive by then frozen, once the server is up.
gc.disable()

from app.config import Settings  # noqa: E402
from app.lifecycle import serve  # noqa: E402
from app.logs import configure_logging  # noqa: E402
from app.main import create_app  # noqa: E402


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(serve(create_app(settings), settings))


if __name__ == "__main__":
    main()
