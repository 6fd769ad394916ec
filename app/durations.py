"""Durations as Ollama takes them (keep_alive): seconds as a number, or a Go duration string; read by
the settings (TOKENWIRE_MODEL_KEEP_ALIVE) and the request bodies alike, so it sits below both."""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: float | str) -> float:
    """Ollama's keep_alive: seconds as a number, or a Go duration ("5m", "1h30m", "-1s"); negative: forever."""
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return float(value)
    text = value.strip()
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", body):
        return sign * float(body)  # "300" as a string
    parts = _DURATION_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise ValueError("must be seconds or a duration such as \"5m\", \"1h\" or \"-1\" (keep loaded)")
    return sign * sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
