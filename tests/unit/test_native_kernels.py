"""The native kernels' matmul and packing, no model: right numbers, and the same numbers whatever the
row count, thread count or build (AVX-512, AVX2, plain C) computes them."""

from __future__ import annotations

import pytest
import torch

from app.engine.models.hardware import detect_cpu_features
from app.engine.native.library import (
    BF16,
    F32,
    FLOAT_ARITHMETIC,
    INT8_ACTIVATIONS,
    ISA_NEEDS,
    Q4,
    Q8,
    choose_isa,
    native_library,
)
from app.engine.native.weights import pack_dense, pack_exact, pack_grid

CPU_FLAGS = detect_cpu_features().flags
# Every build this machine can run: the best one, the narrower ones, and plain C.
BUILDS = [isa for isa in ("avx512", "avx2") if ISA_NEEDS[isa] <= CPU_FLAGS] + ["generic"]
ROW_COUNTS = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 64, 65, 130)


@pytest.fixture(scope="module")
def library():
    return native_library(choose_isa(CPU_FLAGS))


def _grid_weight(fmt: int, n: int, k: int, seed: int = 0) -> torch.Tensor:
    """fp32 weights lying exactly on a Q4_1 / Q8_0 grid, as a GGUF-converted checkpoint holds them."""
    g = torch.Generator().manual_seed(seed)
    groups = k // 32
    if fmt == Q4:
        levels = torch.randint(0, 16, (n, groups, 32), generator=g).float()
        levels[..., 0], levels[..., 1] = 0, 15  # GGUF's Q4_1 puts a group's min at 0 and max at 15
        scale = (torch.rand(n, groups, 1, generator=g) * 0.01 + 0.001).half().float()
        minimum = (torch.randn(n, groups, 1, generator=g) * 0.05).half().float()
        return (levels * scale + minimum).view(n, k)
    levels = torch.randint(-127, 128, (n, groups, 32), generator=g).float()
    levels[..., 0] = 127
    scale = (torch.rand(n, groups, 1, generator=g) * 0.001 + 0.0001).half().float()
    return (levels * scale).view(n, k)


def _packed(library, fmt: int, n: int, k: int):
    """(packed matrix, the float64 weights it stands for); the same for the same arguments."""
    torch.manual_seed(n * 1000 + k)
    if fmt in (Q4, Q8):
        weight = _grid_weight(fmt, n, k)
        packed = pack_grid(library, weight, fmt, exact=True, bias=torch.randn(n))
        assert packed is not None
        return packed, weight.double()
    dtype = torch.float32 if fmt == F32 else torch.bfloat16
    weight = torch.randn(n, k) * 0.05
    return pack_dense(weight, dtype, bias=torch.randn(n)), weight.to(dtype).double()


SHAPES = [(960, 576), (50, 96), (17, 64), (33, 40)]


@pytest.mark.parametrize("fmt", [F32, BF16, Q4, Q8], ids=["f32", "bf16", "q4", "q8"])
@pytest.mark.parametrize("n, k", SHAPES)
def test_matmul_computes_x_times_w_transposed_plus_bias(library, fmt, n, k):
    if fmt in (Q4, Q8) and k % 32:
        pytest.skip("the grids come in groups of 32 inputs")
    packed, weight = _packed(library, fmt, n, k)
    x = torch.randn(9, k)
    expected = x.double() @ weight.T + packed.bias.double()
    torch.testing.assert_close(library.matmul(packed.struct(), x).double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", [Q4, Q8], ids=["q4", "q8"])
def test_with_8_bit_activations_it_stays_within_their_rounding(library, fmt):
    packed, weight = _packed(library, fmt, 960, 576)
    x = torch.randn(9, 576)
    expected = x.double() @ weight.T + packed.bias.double()
    got = library.matmul(packed.struct(), x, INT8_ACTIVATIONS).double()
    assert (got - expected).norm() / expected.norm() < 0.01


CASES = [(F32, FLOAT_ARITHMETIC), (BF16, FLOAT_ARITHMETIC), (Q4, FLOAT_ARITHMETIC), (Q8, FLOAT_ARITHMETIC),
         (Q4, INT8_ACTIVATIONS), (Q8, INT8_ACTIVATIONS)]
CASE_IDS = ["f32", "bf16", "q4", "q8", "q4-int8", "q8-int8"]


@pytest.mark.parametrize("fmt, arithmetic", CASES, ids=CASE_IDS)
def test_a_rows_result_does_not_depend_on_the_other_rows(library, fmt, arithmetic):
    """The property the server's answers rest on: row i of a call with m rows equals row i alone."""
    packed, _ = _packed(library, fmt, 200, 96)
    x = torch.randn(max(ROW_COUNTS), 96)
    alone = torch.cat([library.matmul(packed.struct(), x[i:i + 1].contiguous(), arithmetic) for i in range(len(x))])
    for m in ROW_COUNTS:
        assert torch.equal(library.matmul(packed.struct(), x[:m].contiguous(), arithmetic), alone[:m]), m


@pytest.mark.parametrize("fmt, arithmetic", CASES, ids=CASE_IDS)
def test_every_build_and_thread_count_computes_the_same_numbers(fmt, arithmetic):
    results, packs = [], []
    for isa in BUILDS:
        library = native_library(isa)
        packed, _ = _packed(library, fmt, 130, 64)
        packs.append(packed.data)  # and packs the same bytes: a saved pack serves every build
        x = torch.randn(70, 64, generator=torch.Generator().manual_seed(1))
        for threads in (1, 2, 3):
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                results.append((isa, threads, library.matmul(packed.struct(), x, arithmetic)))
            finally:
                torch.set_num_threads(previous)
    for isa, threads, result in results[1:]:
        assert torch.equal(result, results[0][2]), (isa, threads)
    assert all(torch.equal(pack, packs[0]) for pack in packs)


@pytest.mark.parametrize("fmt", [Q4, Q8], ids=["q4", "q8"])
def test_exact_packing_finds_a_grid_and_rebuilds_every_weight(library, fmt):
    weight = _grid_weight(fmt, 48, 64)
    packed = pack_exact(library, weight, torch.bfloat16)
    assert packed.format == fmt  # found, and preferred over dense bf16 storage
    identity = torch.eye(64)
    assert torch.equal(library.matmul(packed.struct(), identity).T, weight)  # bit for bit


def test_weights_off_every_grid_stay_dense(library):
    weight = torch.randn(32, 64)
    assert pack_grid(library, weight, Q4, exact=True) is None and pack_grid(library, weight, Q8, exact=True) is None
    assert pack_exact(library, weight, torch.float32).format == F32
    assert pack_exact(library, weight.bfloat16(), torch.bfloat16).format == BF16  # only fp32 can be on a grid


@pytest.mark.parametrize("fmt, tolerance", [(Q8, 0.01), (Q4, 0.15)], ids=["q8", "q4"])
def test_lossy_quantization_stays_close(library, fmt, tolerance):
    weight = torch.randn(64, 128)
    packed = pack_grid(library, weight, fmt, exact=False)
    restored = library.matmul(packed.struct(), torch.eye(128)).T
    assert (restored - weight).norm() / weight.norm() < tolerance


def test_rows_of_a_matrix_are_its_weights(library):
    packed, weight = _packed(library, Q8, 40, 64)
    assert torch.equal(library.matrix_row(packed.struct(), 37).double(), weight[37])


def test_the_best_build_the_cpu_runs_is_chosen():
    avx512 = ISA_NEEDS["avx512"]
    assert choose_isa(avx512) == "avx512"
    assert choose_isa(avx512 - {"avx512_vnni"}) == "avx2"  # AVX-512 without VNNI: the AVX2 build
    assert choose_isa(frozenset({"avx2", "fma", "f16c"})) == "avx2"
    assert choose_isa(frozenset({"avx2"})) == "generic"  # AVX2 without FMA: plain C
    assert choose_isa(avx512, "generic") == "generic"
    with pytest.raises(ValueError, match="lacks"):
        choose_isa(frozenset({"avx2", "fma", "f16c"}), "avx512")
