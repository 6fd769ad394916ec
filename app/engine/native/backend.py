"""Whether a model runs on the native kernels, and turning a loaded FusedLlama into a NativeLlama.

The loader asks `open_library` first (before reading weights: an fp32 checkpoint is then read in
fp32, so exact Q4/Q8 grids can be found), then `attach` once the FusedLlama exists. Anything the
kernels cannot run keeps the torch forward, with the reason in RuntimeInfo.forward.
"""

from __future__ import annotations

import logging
import time

import torch

from app.engine.models.fused_llama import FusedLlama, LlamaDims
from app.engine.models.hardware import CpuFeatures
from app.engine.native.library import NativeLibrary, choose_isa, native_library
from app.engine.native.model import NativeLlama, native_from_fused, unsupported_reason

log = logging.getLogger(__name__)

# RoPE types whose angles depend on the position alone (a table serves them); "dynamic" and
# "longrope" change with the sequence length.
STATIC_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})


def open_library(enabled: bool, requested_isa: str, cpu: CpuFeatures, device: torch.device) -> NativeLibrary | str:
    """The native kernels for this CPU (compiled now if missing), or why none serve."""
    if not enabled:
        return "native kernels turned off"
    if device.type != "cpu":
        return f"native kernels are for CPUs (device {device})"
    try:
        return native_library(choose_isa(cpu.flags, requested_isa))
    except (OSError, RuntimeError) as exc:  # no compiler, a failed build, a library that will not load
        log.warning("native kernels unavailable, serving through torch: %s", exc)
        return f"native kernels unavailable ({exc})"


def rope_refusal(fused: FusedLlama) -> str | None:
    """Why a table cannot hold the model's RoPE (each layer type's, for Gemma 3), or None."""
    for rotary in [fused.rotary, *getattr(fused, "rotaries", {}).values()]:
        rope_type = getattr(rotary, "rope_type", "default")
        if isinstance(rope_type, dict):  # a module shared by layer types, each with its own
            rope_type = next((t for t in rope_type.values() if t not in STATIC_ROPE_TYPES), "default")
        if rope_type not in STATIC_ROPE_TYPES:
            return f"RoPE type {rope_type!r} varies with the sequence length"
    return None


def attach(fused: FusedLlama, library: NativeLibrary, dims: LlamaDims, dtype: torch.dtype, positions: int,
           quantization: str) -> NativeLlama | str:
    """The NativeLlama over `fused`'s weights, or why it cannot run this model."""
    reason = fused.native_refusal or unsupported_reason(dims, dtype, torch.device("cpu")) or rope_refusal(fused)
    if reason is not None:
        return reason
    started = time.perf_counter()
    native = native_from_fused(fused, library, dtype, positions, quantization)
    log.info("packed the weights for the native kernels in %.2fs: %s", time.perf_counter() - started,
             describe_weights(native, quantization))
    return native


def describe_weights(native: NativeLlama, quantization: str) -> str:
    """For /health and the log: how the matrices are held, and whether that is exact."""
    formats = ", ".join(f"{name} x{count}" for name, count in sorted(native.weight_formats.items()))
    how = {"auto": "exact", "none": "as loaded", "int8": "int8 asked for (lossy)", "int4": "int4 asked for (lossy)"}
    return f"{how.get(quantization, quantization)}: {formats} ({native.weight_bytes >> 20} MiB)"
