"""libgomp's spin-before-sleep for torch's own threads: kept short, and set before torch loads.

An OpenMP thread that finishes its share of an op early spins before it sleeps (libgomp: 300,000
turns by default, milliseconds). While it spins it holds a core that the native kernels' threads,
the event loop or a neighbouring process need: with two processes on 2 cores each parallel op
waited out a scheduler time slice (8 ms per small matmul instead of 10 us; 46 us with 1,000 turns),
and in one process torch's worker spinning after the sampler's ops slowed the next native forward
pass by a third (46 vs 32 ms per 16-row step, measured). libgomp reads the variable when torch
loads it, so entry points (`python -m app`, the in-process benchmarks) call this before importing
torch; a value already in the environment wins.
"""

from __future__ import annotations

import os

SPIN_TURNS = "1000"


def limit_spinning() -> None:
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_TURNS)
