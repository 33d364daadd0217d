"""benchmarks/compare_llamacpp.py --cmake-args: llama.cpp built for exactly this CPU's ISA."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "compare_llamacpp", Path(__file__).resolve().parent.parent / "benchmarks" / "compare_llamacpp.py")
cmp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cmp)


def opts(flags: str) -> dict[str, str]:
    return dict(o[2:].split("=") for o in cmp.cmake_args(set(flags.split())).split())


def test_zen4_gets_avx512_vnni_but_not_avx_vnni():
    # AMD EPYC Zen 4 (/proc/cpuinfo): a build with GGML_AVX_VNNI=ON died there with SIGILL
    o = opts("avx avx2 fma f16c bmi2 avx512f avx512dq avx512_vnni avx512vbmi avx512_bf16")
    assert o["GGML_AVX_VNNI"] == "OFF"
    assert o["GGML_AVX512"] == o["GGML_AVX512_VNNI"] == o["GGML_AVX512_BF16"] == "ON"
    assert o["GGML_NATIVE"] == "OFF" and o["GGML_AMX_INT8"] == "OFF"


def test_avx2_only_machine_and_intel_avx_vnni():
    o = opts("avx avx2 fma f16c bmi2")
    assert o["GGML_AVX2"] == "ON" and o["GGML_AVX512"] == "OFF" and o["GGML_AVX_VNNI"] == "OFF"
    assert opts("avx avx2 avx_vnni")["GGML_AVX_VNNI"] == "ON"
