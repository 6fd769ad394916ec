"""Which steps use int8 weight copies: measured on this machine at start-up, per batch size.

int8 weight-only matmuls read a quarter of fp32's bytes (half of bf16's) but their kernel does not
use AMX or big-GEMM blocking, so they win for a few rows and lose for many; where the line falls
depends on the CPU. `measure_copy_max_rows` times the model's own distinct matrices both ways at
growing row counts and returns the largest count up to which int8 stays faster (0: never).

Making the copies takes longer than loading the default model (about 1.2 s on 2 cores), so the
engine does it after start-up on the model thread, in slices between steps (`quantization_slices`, a
chore: app/engine/chores.py): a block of rows of one matrix per slice, then one slice per row count
measured; no step uses a copy until all are made and measured.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence

import torch

from app.engine.chores import Slices, run_to_end
from app.engine.fused_llama import FusedLlama
from app.engine.packed_linear import PackedLinear

CANDIDATE_ROWS = (1, 2, 4, 8, 16, 32)
_REPEATS = 3


def _median_seconds(fn: Callable[[], object]) -> float:
    fn()  # the first call builds the kernel for this shape
    times = []
    for _ in range(_REPEATS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def _step_seconds(linears: Sequence[PackedLinear], rows: int, low_bit: bool, dtype: torch.dtype,
                  device: torch.device) -> float:
    """Time of one step's matmuls at `rows` rows: each distinct shape timed once, times its count."""
    counts: dict[tuple[int, int], int] = {}
    samples: dict[tuple[int, int], PackedLinear] = {}
    for lin in linears:
        counts[lin.shape] = counts.get(lin.shape, 0) + 1
        samples.setdefault(lin.shape, lin)
    total = 0.0
    for shape, lin in samples.items():
        x = torch.zeros((rows, lin.in_features), dtype=dtype, device=device)
        forward = lin.forward_copy if low_bit else lin.forward_native
        total += counts[shape] * _median_seconds(lambda: forward(x))
    return total


def _measure_slices(linears: Sequence[PackedLinear], dtype: torch.dtype, device: torch.device,
                    candidates: Sequence[int]) -> Generator[None, None, int]:
    best = 0
    for rows in candidates:
        with torch.inference_mode():
            slower = (_step_seconds(linears, rows, True, dtype, device)
                      >= _step_seconds(linears, rows, False, dtype, device))
        if slower:
            break
        best = rows
        yield
    return best


def measure_copy_max_rows(linears: Sequence[PackedLinear], dtype: torch.dtype, device: torch.device,
                          candidates: Sequence[int] = CANDIDATE_ROWS) -> int:
    """The largest row count (of `candidates`, in order) up to which the low-bit copies are faster."""
    return int(run_to_end(_measure_slices(linears, dtype, device, candidates)))


# Below this relative error an int4 copy reproduces the weight: the checkpoint was 4-bit already
# (the default model comes from a Q4_1 GGUF: about 0.2% here, from bf16 scales). Genuine 16-bit
# weights land near 10%, too lossy to choose without being asked.
INT4_EXACT_ERROR = 0.01


def _copy_slices(linears: Sequence[PackedLinear], mode: str) -> Generator[None, None, Counter]:
    """Low-bit copies per `mode`, a block of rows per slice; auto: int4 where every block of the
    matrix is exact (see INT4_EXACT_ERROR), else int8. None serves a step yet (copy_max_rows is 0)."""
    kinds: Counter = Counter()
    exact_only = {"abandon_above": INT4_EXACT_ERROR} if mode == "auto" else {}
    for lin in linears:
        if mode in ("int4", "auto") and (yield from lin.copy_slices("int4", **exact_only)):
            kinds["int4"] += 1
        elif (yield from lin.copy_slices("int8")):
            kinds["int8"] += 1
    return kinds


def quantization_refusal(fused: FusedLlama | None, mode: str, device: torch.device) -> str | None:
    """The summary when `mode` makes no copies here, else None."""
    if mode == "none" or (mode == "auto" and device.type != "cpu"):
        return "none"
    if device.type != "cpu":
        return "none (low-bit copies are for CPUs)"
    if fused is None:
        return "none (low-bit copies need the fused forward)"
    return None


def quantization_slices(fused: FusedLlama | None, mode: str, max_rows: int, dtype: torch.dtype,
                        device: torch.device) -> Slices:
    """Make low-bit copies where `mode` asks (auto: on CPU), in slices; the result says which steps
    they serve. `max_rows` > 0 fixes the largest step that uses them; 0 measures it here."""
    refusal = quantization_refusal(fused, mode, device)
    if refusal is not None:
        return refusal
    linears = fused.linears()
    kinds = yield from _copy_slices(linears, mode)
    with_copy = [lin for lin in linears if lin.copy is not None]
    if not with_copy:
        return "none (no matrix the low-bit kernels can take)"
    rows = max_rows or (yield from _measure_slices(with_copy, dtype, device, CANDIDATE_ROWS))
    if rows == 0:
        for lin in with_copy:
            lin.copy = None  # never faster here: keep no copy
        return "none (low-bit copies measured slower at every batch size here)"
    size = sum(lin.copy.nbytes for lin in with_copy) >> 20
    counts = ", ".join(f"{kind} for {n} matrices" for kind, n in sorted(kinds.items()))
    how = "asked for" if max_rows else "measured faster"
    for lin in with_copy:
        lin.copy_max_rows = rows  # from here on, small decode steps use the copies
    return f"{counts} ({size} MiB) serve steps of up to {rows} rows ({how})"


def apply_quantization(fused: FusedLlama | None, mode: str, max_rows: int, dtype: torch.dtype,
                       device: torch.device) -> str:
    """quantization_slices, all at once."""
    return str(run_to_end(quantization_slices(fused, mode, max_rows, dtype, device)))
