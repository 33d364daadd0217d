"""gemma4stack.detect(): this machine against /proc and /sys, other machines
against the numbers hwloc's own tools print for ../shared/hwloc-xml (SOURCES.md),
the bandwidth probe, the CLI and bad input."""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gemma4stack
from gemma4stack import hardware
from gemma4stack.hardware import (Bandwidth, CPUInfo, GPUInfo, HardwareReport, MemoryInfo,
                                  catalog_memory, detect, measure_bandwidth)

KIB = 1024
GIB = 1 << 30
REPO = Path(__file__).resolve().parent.parent


def meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# ---- this machine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def here() -> HardwareReport:
    return detect(bandwidth=False)


def test_memory_agrees_with_proc_meminfo(here):
    total = meminfo_kib("MemTotal") * KIB
    assert abs(here.memory.total_bytes - total) <= 0.02 * total
    avail = meminfo_kib("MemAvailable") * KIB
    if here.memory.cgroup_limit_bytes is None:
        # other processes (and the tests around us) move MemAvailable a little
        assert abs(here.memory.available_bytes - avail) <= max(0.05 * total, 512 << 20)
    else:
        assert here.memory.available_bytes <= min(avail, here.memory.cgroup_limit_bytes) + (512 << 20)
    assert 0 < here.memory.available_bytes <= here.memory.total_bytes
    assert len(here.memory.numa_nodes) >= 1
    assert here.source == "this machine"


def test_cpu_counts_agree_with_os(here):
    assert here.cpu.threads in (os.cpu_count(), len(os.sched_getaffinity(0)))
    assert 1 <= here.cpu.cores <= here.cpu.threads
    assert sum(k.pus for k in here.cpu.kinds) == here.cpu.threads
    assert here.cpu.arch == platform.machine()


def test_caches_agree_with_sysfs(here):
    idx = Path("/sys/devices/system/cpu/cpu0/cache")
    if not idx.is_dir():
        pytest.skip("no /sys cache information")
    sysfs = {}
    for d in idx.glob("index*"):
        level, kind = (d / "level").read_text().strip(), (d / "type").read_text().strip()
        if kind == "Instruction":
            continue
        size = (d / "size").read_text().strip()
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        sysfs["L1d" if level == "1" else f"L{level}"] = int(m[1]) * {"": 1, "K": KIB, "M": KIB**2, "G": KIB**3}[m[2]]
    for name, size in sysfs.items():
        assert here.cpu.caches.get(name) == size, (name, here.cpu.caches)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 flags")
def test_simd_agrees_with_proc_cpuinfo(here):
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    expected = {"AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "AVX512": "avx512f", "AVX512BW": "avx512bw",
                "AVX512_VNNI": "avx512_vnni", "AVX_VNNI": "avx_vnni", "AVX512_BF16": "avx512_bf16"}
    for ours, kernel in expected.items():
        assert (ours in here.cpu.simd) == (kernel in flags), ours
    assert here.cpu.has("avx-512 vnni") == ("avx512_vnni" in flags)
    assert here.cpu.has("avx512f") == ("avx512f" in flags)


# ---- other machines: ../shared/hwloc-xml ---------------------------------------------------


def test_32em64t_gpus_cuda_and_opencl_no_disks(hwloc_xml):
    r = detect(topology_xml=hwloc_xml / "32em64t-2n8c2t-pci-wholeio.xml")
    assert (r.cpu.packages, r.cpu.cores, r.cpu.threads) == (2, 16, 32)
    assert r.memory.numa_nodes == [33525560 * KIB, 33554432 * KIB]
    assert r.memory.total_bytes == 67079992 * KIB
    assert [(g.name, g.backend, g.memory_bytes, g.memory_source) for g in r.gpus] == [
        ("Tesla K40m", "CUDA", 11796032 * KIB, "hwloc"),
        ("AMD Radeon R9 200 / HD 7900 Series", "OpenCL", 3087360 * KIB, "hwloc"),
    ]
    osdevs = [o for g in r.gpus for o in g.osdevs]
    for not_a_gpu in ("sda", "eth0", "eth1", "ib0", "mlx5_0"):
        assert not_a_gpu not in osdevs
    assert r.gpus[0].osdevs == ["cuda0", "card0"]   # DRM card0 merged into the CUDA GPU
    # another machine: nothing of this one
    assert r.memory.available_bytes is None
    assert r.cpu.simd == []
    assert r.bandwidth_gbs is None
    assert r.source.endswith("32em64t-2n8c2t-pci-wholeio.xml")


def test_dgx2_sixteen_v100_once_each_memory_from_catalog(hwloc_xml):
    r = detect(topology_xml=hwloc_xml / "nvidiaDGX2.xml")
    assert (r.cpu.packages, r.cpu.cores, r.cpu.threads) == (2, 4, 4)
    assert len(r.memory.numa_nodes) == 2
    assert len(r.gpus) == 16
    assert len({g.pci_busid for g in r.gpus}) == 16
    assert sorted(o for g in r.gpus for o in g.osdevs) == sorted(f"nvml{i}" for i in range(16))
    for g in r.gpus:
        assert g.name == "Tesla V100-SXM3-32GB-H"
        assert g.backend == "NVML"
        assert g.memory_source == "catalog"
        assert g.memory_bytes == 32 * GIB


def test_fakecpukinds_three_kinds(hwloc_xml):
    r = detect(topology_xml=hwloc_xml / "fakecpukinds.xml")
    assert (r.cpu.cores, r.cpu.threads) == (2, 4)
    assert [(k.pus, k.efficiency, k.core_type) for k in r.cpu.kinds] == [
        (2, 0, "MySmallCore"), (1, 1, "YouBigcore"), (1, 2, "IntelCore")]


def test_96em64t_numa_and_display_only_card_not_a_gpu(hwloc_xml):
    r = detect(topology_xml=hwloc_xml / "96em64t-4n4d3ca2co-pci.xml")
    assert (r.cpu.packages, r.cpu.cores, r.cpu.threads) == (16, 96, 96)
    assert r.memory.numa_nodes == [50068292 * KIB] + [50069504 * KIB] * 3
    assert r.memory.total_bytes == 200276804 * KIB
    assert r.cpu.caches == {"L1d": 32 * KIB, "L2": 3072 * KIB, "L3": 16384 * KIB}
    assert r.cpu.cache_counts == {"L1d": 96, "L2": 48, "L3": 16}
    # decision (hw.c): the ES1000 "card0" has no compute backend -> not reported
    assert r.gpus == []


def test_memattrs_synthetic_topology(hwloc_xml):
    r = detect(topology_xml=hwloc_xml / "8intel64-4n2t-memattrs.xml")
    assert r.cpu.threads == 8
    assert r.memory.numa_nodes == [GIB] * 4
    assert r.bandwidth_gbs is None


def test_to_dict_has_the_documented_keys(hwloc_xml):
    d = detect(topology_xml=hwloc_xml / "32em64t-2n8c2t-pci-wholeio.xml").to_dict()
    json.dumps(d)
    for key in ("model", "cores", "threads", "simd", "caches"):
        assert key in d["cpu"]
    for key in ("total_bytes", "available_bytes", "numa_nodes"):
        assert key in d["memory"]
    for key in ("name", "vendor", "backend", "memory_bytes", "memory_source", "pci_busid"):
        assert key in d["gpus"][0]
    assert d["bandwidth_gbs"] is None
    assert d["cpu"]["caches"]["L3"] == 20480 * KIB


# ---- CLI ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemma4stack", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_detect_json_topology(hwloc_xml):
    p = run_cli("detect", "--json", "--topology-xml", str(hwloc_xml / "32em64t-2n8c2t-pci-wholeio.xml"))
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["cpu"]["cores"] == 16 and d["cpu"]["threads"] == 32
    k40 = [g for g in d["gpus"] if g["name"] == "Tesla K40m"]
    assert len(k40) == 1 and k40[0]["memory_bytes"] == 12079136768 == 11796032 * KIB


def test_cli_detect_text_and_missing_file(hwloc_xml, tmp_path):
    p = run_cli("detect", "--no-bandwidth")
    assert p.returncode == 0, p.stderr
    assert "Cores" in p.stdout and "Memory" in p.stdout and "not measured" in p.stdout
    missing = tmp_path / "no-such-topology.xml"
    p = run_cli("detect", "--topology-xml", str(missing))
    assert p.returncode == 1
    assert str(missing) in p.stderr


# ---- bad input ------------------------------------------------------------------------


def test_missing_xml_raises_file_not_found(tmp_path):
    missing = tmp_path / "nope.xml"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        detect(topology_xml=missing)


def test_non_xml_and_non_hwloc_xml_raise_value_error(tmp_path, models):
    gguf = next(models.glob("*.gguf"))
    with pytest.raises(ValueError, match="not an XML file"):
        detect(topology_xml=gguf)
    other = tmp_path / "page.xml"
    other.write_text("<?xml version='1.0'?><html><body/></html>")
    with pytest.raises(ValueError, match=re.escape(str(other))):
        detect(topology_xml=other)
    with pytest.raises(OSError):
        detect(topology_xml=tmp_path)          # a directory
    with pytest.raises(ValueError):
        detect(bandwidth="sometimes")


# ---- bandwidth --------------------------------------------------------------------------


def test_small_bandwidth_run_is_plausible():
    bw = measure_bandwidth(bytes_per_array=64 << 20, reps=2)
    assert 0.5 < bw.read < 5000 and 0.5 < bw.triad < 5000
    assert bw.bytes_per_array == 64 << 20 and bw.reps == 2
    assert bw.threads == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError):
        measure_bandwidth(bytes_per_array=1000)
    with pytest.raises(ValueError):
        measure_bandwidth(bytes_per_array=64 << 20, reps=0)


def test_bandwidth_measured_once_per_process(monkeypatch):
    calls = []

    def fake(bytes_per_array=0, threads=0, reps=5):
        calls.append(bytes_per_array)
        return {"read_gbs": 10.0 + len(calls), "triad_gbs": 8.0, "bytes_per_array": 1 << 26,
                "threads": 2, "reps": reps, "kernel": "scalar"}

    monkeypatch.setattr(hardware._core, "bandwidth", fake)
    hardware.clear_bandwidth_cache()
    try:
        a = detect()
        b = detect()
        assert len(calls) == 1 and a.bandwidth_gbs == b.bandwidth_gbs
        assert a.bandwidth_gbs.read == 11.0 and a.to_dict()["bandwidth_gbs"]["triad"] == 8.0
        c = detect(bandwidth="refresh")
        assert len(calls) == 2 and c.bandwidth_gbs.read == 12.0
        hardware.clear_bandwidth_cache()
        detect()
        assert len(calls) == 3
        assert detect(bandwidth=False).bandwidth_gbs is None and len(calls) == 3
    finally:
        hardware.clear_bandwidth_cache()


# ---- catalog and rendering ---------------------------------------------------------------


def test_gpu_catalog():
    assert catalog_memory("Tesla V100-SXM3-32GB-H") == 32 * GIB
    assert catalog_memory("Tesla V100-PCIE-16GB") == 16 * GIB
    assert catalog_memory("NVIDIA A100-SXM4-80GB") == 80 * GIB
    assert catalog_memory("NVIDIA A100-PCIE-40GB") == 40 * GIB
    assert catalog_memory("NVIDIA A10") == 24 * GIB
    assert catalog_memory("Some Unknown Accelerator") is None
    for pattern, nbytes, source in hardware._gpu_catalog():
        assert nbytes > GIB and source


def test_html_and_text_rendering_escape_and_show_values():
    r = HardwareReport(
        cpu=CPUInfo(model="<b>CPU</b>", vendor="V", arch="x86_64", packages=1, cores=2, threads=4,
                    simd=["AVX2"], caches={"L1d": 32 * KIB, "L3": 32 << 20}, cache_counts={"L1d": 2, "L3": 1},
                    kinds=[]),
        memory=MemoryInfo(total_bytes=16 * GIB, available_bytes=8 * GIB, numa_nodes=[16 * GIB],
                          cgroup_limit_bytes=None),
        gpus=[GPUInfo(name="GPU & <script>", vendor="X", backend="CUDA", memory_bytes=24 * GIB,
                      memory_source="hwloc", pci_busid="0000:01:00.0")],
        bandwidth_gbs=Bandwidth(read=21.5, triad=18.25), source="this machine")
    h = r._repr_html_()
    assert "&lt;script&gt;" in h and "<script>" not in h and "&lt;b&gt;CPU" in h
    t = str(r)
    assert "2 cores, 4 threads" in t and "16 GiB total" in t and "read 21.5 GB/s" in t and "24 GiB" in t


def test_package_exports_detect():
    assert gemma4stack.detect is detect
    assert gemma4stack.HardwareReport is HardwareReport
