"""What the machine offers and what the loader chose from it: CPU features, device, dtype, threads.

The flags pick the native kernels' build (AVX-512, AVX2 or plain C: app/engine/native/) and, where
those kernels cannot run, torch's auto dtype: bf16 only where its matmuls run natively in bf16
(AVX512-BF16 or AMX); on an AVX2-only CPU torch's bf16 is emulated, fast for one row and several
times slower than fp32 for a batch. `ONEDNN_MAX_CPU_ISA` (oneDNN's own cap on the instructions it
uses) counts: capped below AVX512_CORE_BF16, the machine behaves as one without native bf16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) below which its kernels have no native bf16 dot products.
_NO_BF16_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                           "AVX512_CORE_VNNI"})
# /proc/cpuinfo flag -> the name we report, in the order we report them.
_FLAGS = {"avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512", "avx512bw": "avx512bw",
          "avx512vl": "avx512vl", "avx512dq": "avx512dq", "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16",
          "amx_bf16": "amx_bf16"}


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU flags that decide how fast each dtype runs, and any cap put on them."""

    flags: frozenset[str]
    isa_cap: str = ""  # ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA), upper-cased; "" = none

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in _FLAGS.values() if name in self.flags)

    @property
    def native_bf16(self) -> bool:
        has_bf16 = "avx512_bf16" in self.flags or "amx_bf16" in self.flags
        return has_bf16 and self.isa_cap not in _NO_BF16_ISAS


def read_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags we care about from /proc/cpuinfo text (first `flags` line; all cores agree)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.partition(":")[2].split())
            return frozenset(name for flag, name in _FLAGS.items() if flag in present)
    return frozenset()


def _flags_from_torch() -> frozenset[str]:
    """Off Linux (no /proc/cpuinfo): ask torch's cpuinfo-based checks, where this build has them
    (its AVX2 and AVX-512 levels imply the FMA/F16C and BW/VL/DQ extensions the kernels need)."""
    checks = {("avx2", "fma", "f16c"): "_is_avx2_supported",
              ("avx512", "avx512bw", "avx512vl", "avx512dq"): "_is_avx512_supported",
              ("avx512_vnni",): "_is_avx512_vnni_supported",
              ("avx512_bf16",): "_is_avx512_bf16_supported", ("amx_bf16",): "_is_amx_tile_supported"}
    return frozenset(name for names, check in checks.items() if getattr(torch.cpu, check, lambda: False)()
                     for name in names)


def detect_cpu_features(isa_cap: str = "") -> CpuFeatures:
    """This machine's flags (from /proc/cpuinfo, else torch), with oneDNN's ISA cap as the settings read it."""
    try:
        flags = read_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        flags = _flags_from_torch()
    return CpuFeatures(flags, isa_cap.strip().upper())


@dataclass(frozen=True)
class RuntimeInfo:
    """What the loader chose and why; logged at start-up and shown by /health and /metrics."""

    device: str
    dtype: str
    dtype_reason: str
    torch_threads: int
    cpu_features: tuple[str, ...]
    isa_cap: str
    torch_version: str
    forward: str = "transformers"  # "native (avx512 build)", "fused (why not native)" or "transformers (why)"
    quantization: str = "none"  # how the native kernels hold the weights ("exact: q4 x120 ..."), or "none (why)"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        features = ",".join(self.cpu_features) or "none detected"
        cap = f" (capped at {self.isa_cap})" if self.isa_cap else ""
        return (f"device={self.device} dtype={self.dtype} ({self.dtype_reason}) torch_threads={self.torch_threads} "
                f"cpu_features={features}{cap} torch={self.torch_version} forward={self.forward} "
                f"quantization={self.quantization}")
