"""CPU features and the auto dtype: on the native kernels bf16 (storage) on every CPU; on torch's
forwards bf16 only where the CPU does bf16 natively and nothing caps it."""

from __future__ import annotations

import pytest
import torch

from app.config import Settings
from app.engine.models.hardware import CpuFeatures, RuntimeInfo, detect_cpu_features, read_cpu_flags
from app.engine.models.loader import resolve_dtype

CPU = torch.device("cpu")
EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n"
SAPPHIRE_RAPIDS = ("processor\t: 0\nflags\t\t: fpu avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl avx512_vnni "
                   "avx512_bf16 amx_tile amx_bf16 amx_int8\n")


def test_flags_read_from_cpuinfo():
    assert read_cpu_flags(EPYC_AVX2) == {"avx2", "fma", "f16c"}
    assert CpuFeatures(read_cpu_flags(SAPPHIRE_RAPIDS)).names == (
        "avx2", "fma", "f16c", "avx512", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "amx_bf16")
    assert read_cpu_flags("no flags here") == frozenset()


def test_on_the_native_kernels_auto_is_bf16_storage_on_every_cpu():
    for cpuinfo in (EPYC_AVX2, SAPPHIRE_RAPIDS):
        dtype, why = resolve_dtype("auto", CPU, CpuFeatures(read_cpu_flags(cpuinfo)), native=True)
        assert dtype == torch.bfloat16 and "native" in why
    assert resolve_dtype("float32", CPU, CpuFeatures(read_cpu_flags(EPYC_AVX2)), native=True)[0] == torch.float32


@pytest.mark.parametrize("cpuinfo, cap, native", [
    (EPYC_AVX2, "", False),
    (SAPPHIRE_RAPIDS, "", True),
    (SAPPHIRE_RAPIDS, "AVX2", False),
    (SAPPHIRE_RAPIDS, "AVX512_CORE_VNNI", False),
    (SAPPHIRE_RAPIDS, "AVX512_CORE_BF16", True),
    (SAPPHIRE_RAPIDS, "AVX512_CORE_AMX", True),
])
def test_native_bf16_needs_the_flag_and_no_lower_cap(cpuinfo, cap, native):
    assert CpuFeatures(read_cpu_flags(cpuinfo), cap).native_bf16 is native


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "TOKENWIRE_ONEDNN_MAX_CPU_ISA"])
def test_the_settings_read_onednns_isa_cap_and_pass_it_to_the_loader(monkeypatch, variable):
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "TOKENWIRE_ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "avx2")
    assert Settings(_env_file=None).engine_config().load.onednn_max_cpu_isa == "avx2"


def test_the_isa_cap_is_given_not_read():
    assert detect_cpu_features(" avx2").isa_cap == "AVX2"
    assert detect_cpu_features().isa_cap == ""


def test_auto_dtype_on_cpu_follows_native_bf16_and_says_why():
    bf16, why_bf16 = resolve_dtype("auto", CPU, CpuFeatures(read_cpu_flags(SAPPHIRE_RAPIDS)))
    fp32, why_fp32 = resolve_dtype("auto", CPU, CpuFeatures(read_cpu_flags(EPYC_AVX2)))
    capped, why_capped = resolve_dtype("auto", CPU, CpuFeatures(read_cpu_flags(SAPPHIRE_RAPIDS), "AVX2"))
    assert (bf16, fp32, capped) == (torch.bfloat16, torch.float32, torch.float32)
    assert len({why_bf16, why_fp32, why_capped}) == 3 and "AVX2" in why_capped


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                         ("float16", torch.float16)])
def test_an_explicit_dtype_wins_whatever_the_cpu(name, dtype):
    assert resolve_dtype(name, CPU, CpuFeatures(read_cpu_flags(EPYC_AVX2)))[0] is dtype


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError):
        resolve_dtype("int3", CPU)


def test_runtime_summary_names_the_choice_and_its_reason():
    info = RuntimeInfo("cpu", "float32", "auto: no native bf16", 2, ("avx2",), "", "2.13.0")
    assert all(part in info.summary() for part in ("float32", "auto: no native bf16", "avx2", "torch_threads=2"))
    assert info.as_dict()["cpu_features"] == ("avx2",)
