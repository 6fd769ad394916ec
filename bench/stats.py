"""Small statistics helpers shared by the load generator, the in-process bench and the report."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float | None) -> float | None:
    """Seconds -> milliseconds, rounded to 0.1 ms; None stays None."""
    return None if seconds is None else round(seconds * 1000.0, 1)


def decode_rate(num_tokens: int, t_first: float | None, t_last: float | None) -> float | None:
    """Per-stream decode tokens/s: tokens after the first / (last content time - first content time).

    None when fewer than two tokens or no time passed (nothing to measure).
    """
    if t_first is None or t_last is None or num_tokens < 2 or t_last <= t_first:
        return None
    return (num_tokens - 1) / (t_last - t_first)


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: '-' for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator
