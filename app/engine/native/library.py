"""The native kernels through ctypes: which build this CPU runs, and csrc/forward.c's structures mirrored.

ctypes releases the GIL for the length of a call, so the event loop keeps serving while a forward
pass runs. The kernels run on threads of their own (csrc/pool.h), as many as torch.get_num_threads()
says at each call.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from ctypes import c_float, c_int32, c_int64, c_void_p

import torch

from app.engine.native.build import build

log = logging.getLogger(__name__)

ABI_VERSION = 6  # tw_abi_version() of the csrc/forward.c these structures mirror

# Weight formats (csrc/matmul.h: TW_F32 ...), KV-cache formats, and the arithmetic of Q4/Q8 matmuls.
F32, BF16, Q4, Q8 = 0, 1, 2, 3
KV_F32, KV_BF16 = 0, 1
FLOAT_ARITHMETIC, INT8_ACTIVATIONS = 0, 1
SILU, GELU_TANH = 0, 1  # the MLP's activation (csrc/forward.c: TW_SILU ...)

# What each x86-64 build needs from the CPU (CpuFeatures' names), best first.
ISA_NEEDS = {
    "avx512": frozenset({"avx512", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx2", "fma", "f16c"}),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
}


class Matrix(ctypes.Structure):
    _fields_ = [("format", c_int32), ("n", c_int32), ("k", c_int32), ("reserved", c_int32),
                ("data", c_void_p), ("bias", c_void_p)]


class Layer(ctypes.Structure):
    _fields_ = [("input_norm", c_void_p), ("post_norm", c_void_p), ("q_norm", c_void_p), ("k_norm", c_void_p),
                ("pre_mlp_norm", c_void_p), ("post_mlp_norm", c_void_p), ("rope_cos", c_void_p), ("rope_sin", c_void_p),
                ("window", c_int32), ("reserved", c_int32),
                ("qkv", Matrix), ("o", Matrix), ("gate_up", Matrix), ("down", Matrix)]


class Model(ctypes.Structure):
    _fields_ = [("n_layers", c_int32), ("hidden", c_int32), ("n_heads", c_int32), ("n_kv_heads", c_int32),
                ("head_dim", c_int32), ("intermediate", c_int32), ("vocab", c_int32), ("kv_format", c_int32),
                ("eps", c_float), ("attention_scale", c_float), ("rope_positions", c_int32), ("arithmetic", c_int32),
                ("activation", c_int32), ("reserved", c_int32), ("embed_scale", c_float), ("attention_cap", c_float),
                ("final_cap", c_float), ("final_norm", c_void_p),
                ("embed", Matrix), ("lm_head", Matrix), ("layers", c_void_p)]


class Batch(ctypes.Structure):
    _fields_ = [("n_tokens", c_int32), ("n_rows", c_int32), ("n_logits", c_int32), ("n_threads", c_int32),
                ("token_ids", c_void_p), ("positions", c_void_p), ("token_rows", c_void_p),
                ("first_columns", c_void_p), ("logit_tokens", c_void_p), ("layer_offsets", c_void_p),
                ("keys", c_void_p), ("values", c_void_p),
                ("kv_row_strides", c_void_p), ("kv_head_strides", c_void_p), ("logits", c_void_p)]


def choose_isa(cpu_flags: frozenset[str], requested: str = "auto") -> str:
    """The best build this CPU runs (or the one asked for: a CPU may run a narrower build)."""
    if requested != "auto":
        if requested in ISA_NEEDS and not ISA_NEEDS[requested] <= cpu_flags:
            raise ValueError(f"native_isa {requested!r} needs CPU features this machine lacks: "
                             f"{sorted(ISA_NEEDS[requested] - cpu_flags)}")
        return requested
    return next((isa for isa, needs in ISA_NEEDS.items() if needs <= cpu_flags), "generic")


class NativeLibrary:
    """The loaded kernels: tw_forward, tw_matmul, tw_matrix_row."""

    def __init__(self, isa: str) -> None:
        self.isa = isa
        self._lib = ctypes.CDLL(str(build(isa)))
        self._lib.tw_abi_version.restype = c_int32
        if self._lib.tw_abi_version() != ABI_VERSION:
            raise RuntimeError("the native kernels and library.py disagree on their structures")
        self._lib.tw_isa.restype = ctypes.c_char_p
        self._lib.tw_forward.argtypes = [ctypes.POINTER(Model), ctypes.POINTER(Batch)]
        self._lib.tw_forward.restype = c_int32
        self._lib.tw_matmul.argtypes = [ctypes.POINTER(Matrix), c_void_p, c_int32, c_void_p, c_int32, c_int32]
        self._lib.tw_matmul.restype = c_int32
        self._lib.tw_matrix_row.argtypes = [ctypes.POINTER(Matrix), c_int64, c_void_p]
        self._lib.tw_pack_grid.argtypes = [c_void_p, c_int32, c_int32, c_int32, c_int32, c_void_p, c_int32]
        self._lib.tw_pack_grid.restype = c_int32

    @property
    def compiled_isa(self) -> str:
        return self._lib.tw_isa().decode()

    def forward(self, model: Model, batch: Batch) -> None:
        status = self._lib.tw_forward(ctypes.byref(model), ctypes.byref(batch))
        if status:
            raise RuntimeError(f"native forward failed (status {status}: 1 bad batch, 2 bad token or "
                               "position, 3 out of memory)")

    def matmul(self, matrix: Matrix, x: torch.Tensor, arithmetic: int = FLOAT_ARITHMETIC) -> torch.Tensor:
        """x [m, k] float32 contiguous -> [m, n] float32 (8-bit activations for Q4/Q8 if asked)."""
        assert x.dtype == torch.float32 and x.is_contiguous() and x.shape[1] == matrix.k
        y = torch.empty((x.shape[0], matrix.n), dtype=torch.float32)
        if self._lib.tw_matmul(ctypes.byref(matrix), x.data_ptr(), x.shape[0], y.data_ptr(), torch.get_num_threads(),
                               arithmetic):
            raise RuntimeError("native matmul: out of memory or threads")
        return y

    def pack_grid(self, weight: torch.Tensor, fmt: int, exact: bool, out: torch.Tensor) -> bool:
        """weight [n, k] float32 contiguous into `out` (uint8, the packed size) as Q4 or Q8; False when
        `exact` and some weight is off that grid."""
        assert weight.dtype == torch.float32 and weight.is_contiguous() and out.dtype == torch.uint8
        status = self._lib.tw_pack_grid(weight.data_ptr(), weight.shape[0], weight.shape[1], fmt, int(exact),
                                        out.data_ptr(), torch.get_num_threads())
        if status < 0:
            raise RuntimeError("native packing: no threads")
        return bool(status)

    def matrix_row(self, matrix: Matrix, n: int) -> torch.Tensor:
        out = torch.empty(matrix.k, dtype=torch.float32)
        self._lib.tw_matrix_row(ctypes.byref(matrix), n, out.data_ptr())
        return out


@functools.cache
def native_library(isa: str) -> NativeLibrary:
    """The `isa` build, compiled first if it is missing; one per process."""
    library = NativeLibrary(isa)
    log.info("native kernels: %s build", library.compiled_isa)
    return library
