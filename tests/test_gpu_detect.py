"""GPUs found without hwloc's non-free plugins (csrc/hw/gpu_probe.c).

A fake libnvidia-ml.so.1 (tests/data/fake_nvml.c, compiled here with cc) is loaded through the
real dlopen("libnvidia-ml.so.1") path by putting its directory on LD_LIBRARY_PATH of a child
process (ld.so reads it at start-up only); a fake sysfs tree stands in for amdgpu's files
through GEMMA4STACK_SYSFS_ROOT. The expected values are the ones those fakes declare.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gemma4stack._shared import shared_dir

ROOT = Path(__file__).resolve().parents[1]
FAKE_NVML_C = ROOT / "tests" / "data" / "fake_nvml.c"
DGX2 = shared_dir() / "hwloc-xml" / "nvidiaDGX2.xml"
V100_NVML_BYTES = 32510 << 20          # fake_nvml.c: nvmlMemory_t.total
V100_FREE = (30000 << 20, 12000 << 20)
NVML_BUSIDS = ("0000:34:00.0", "0000:36:00.0")
AMD = {  # card -> (bus id, vram total, vram used), as amdgpu writes them
    "card1": ("0000:03:00.0", 25753026560, 1073741824),
    "card2": ("0000:43:00.0", 68702699520, 0),
}


@pytest.fixture(scope="module")
def fake_nvml_dir(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake libnvidia-ml.so.1")
    d = tmp_path_factory.mktemp("nvml")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / "libnvidia-ml.so.1"), str(FAKE_NVML_C)],
                   check=True)
    return d


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.fixture
def fake_sysfs(tmp_path) -> Path:
    root = tmp_path / "sys"
    for card, (busid, total, used) in AMD.items():
        dev = f"class/drm/{card}/device"
        _write(root, f"{dev}/vendor", "0x1002\n")
        _write(root, f"{dev}/mem_info_vram_total", f"{total}\n")
        _write(root, f"{dev}/mem_info_vram_used", f"{used}\n")
        _write(root, f"{dev}/uevent", f"DRIVER=amdgpu\nPCI_SLOT_NAME={busid}\n")
        _write(root, f"class/drm/{card}-DP-1/status", "connected\n")
    # the NVIDIA card of nvml0 as the kernel's DRM sees it: the same GPU, not a new one
    _write(root, "class/drm/card0/device/vendor", "0x10de\n")
    _write(root, "class/drm/card0/device/uevent", f"PCI_SLOT_NAME={NVML_BUSIDS[0]}\n")
    (root / "class/drm/renderD128").mkdir(parents=True)
    return root


def _run(code: str, *, nvml_dir: Path | None, sysfs: Path, extra_env: dict | None = None) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["GEMMA4STACK_SYSFS_ROOT"] = str(sysfs)
    # the fake first, then whatever the caller had (e.g. the ASan run's libraries); without
    # nvml_dir the search path is the caller's, which on a CI box holds no libnvidia-ml
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(nvml_dir) if nvml_dir else "",
                                                         os.environ.get("LD_LIBRARY_PATH", "")) if p)
    env.update(extra_env or {})
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _detect_json(nvml_dir, sysfs, extra_env=None) -> dict:
    out = _run("from gemma4stack.cli import main; main(['detect', '--json', '--no-bandwidth'])",
               nvml_dir=nvml_dir, sysfs=sysfs, extra_env=extra_env)
    return json.loads(out)


def test_two_nvidia_two_amd_each_listed_once(fake_nvml_dir, fake_sysfs):
    d = _detect_json(fake_nvml_dir, fake_sysfs)
    gpus = {g["pci_busid"]: g for g in d["gpus"]}
    assert len(d["gpus"]) == 4 == len(gpus), d["gpus"]   # DRM card0 = nvml0: merged, not listed twice
    for busid, free in zip(NVML_BUSIDS, V100_FREE):
        g = gpus[busid]
        assert g["name"] == "Tesla V100-SXM3-32GB"
        assert (g["memory_bytes"], g["memory_free_bytes"]) == (V100_NVML_BYTES, free)
        assert g["memory_source"] == "driver" and g["backend"] == "NVML"
        assert g["compute_capability"] == "7.0"
        assert (g["memory_bus_width_bits"], g["memory_clock_mhz"]) == (4096, 958)
        assert g["peak_bandwidth_gbs"] == pytest.approx(2 * 958e6 * 4096 / 8 / 1e9, abs=0.01)
    for card, (busid, total, used) in AMD.items():
        g = gpus[busid]
        assert (g["memory_bytes"], g["memory_free_bytes"]) == (total, total - used)
        assert g["backend"] == "sysfs" and g["osdevs"] == [card] and g["memory_source"] == "driver"
        assert g["name"]              # hwloc's PCI name, or the card's name off this machine
    assert d["gpu_notes"] == []


def test_nvml_merges_into_hwloc_gpus_of_a_topology(fake_nvml_dir, tmp_path):
    """The DGX-2 export has 16 V100s seen through hwloc's NVML backend, without memory sizes;
    the fake NVML answers for two of their bus ids: still 16 GPUs, those two with the driver's
    memory, the others with the catalog's."""
    if not DGX2.exists():
        pytest.skip("../shared/hwloc-xml/nvidiaDGX2.xml missing")
    code = ("import json, gemma4stack.hardware as h; "
            f"r = h.detect(False, topology_xml={str(DGX2)!r}, probe_gpus=True); "
            "print(json.dumps(r.to_dict()['gpus']))")
    gpus = json.loads(_run(code, nvml_dir=fake_nvml_dir, sysfs=tmp_path))
    assert len(gpus) == 16 == len({g["pci_busid"] for g in gpus})
    probed = [g for g in gpus if g["memory_source"] == "driver"]
    assert sorted(g["pci_busid"] for g in probed) == list(NVML_BUSIDS)
    assert all(g["memory_bytes"] == V100_NVML_BYTES and g["osdevs"] == [f"nvml{i}"]
               for i, g in enumerate(probed))
    assert {g["memory_source"] for g in gpus} - {"driver"} == {"catalog"}


def test_no_gpu_nothing_changes(tmp_path):
    """No NVML library, an empty sysfs: the same GPUs as without probes (none on a CI box)."""
    import ctypes.util
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this machine has a real NVIDIA driver")
    empty = tmp_path / "sys"
    (empty / "class/drm").mkdir(parents=True)
    code = ("import json, gemma4stack.hardware as h; "
            "a = h.detect(False).to_dict(); b = h.detect(False, probe_gpus=False).to_dict(); "
            "print(json.dumps([a['gpus'], b['gpus'], a['gpu_notes']]))")
    probed, plain, notes = json.loads(_run(code, nvml_dir=None, sysfs=empty))
    assert probed == plain
    assert any("libnvidia-ml.so.1 not loadable" in n for n in notes)
    assert any("no AMD or Intel GPU" in n for n in notes)


def test_nvml_init_failure_is_no_gpu(fake_nvml_dir, tmp_path):
    d = _detect_json(fake_nvml_dir, tmp_path, {"FAKE_NVML_FAIL_INIT": "1"})
    assert all(g["backend"] != "NVML" or g["memory_source"] != "driver" for g in d["gpus"])
    assert any("nvmlInit failed" in n for n in d["gpu_notes"])


def test_recommend_places_tiers_on_probed_gpus_naming_the_engine(fake_nvml_dir, fake_sysfs):
    code = ("import json; from gemma4stack.hardware import detect; from gemma4stack.recommend import recommend; "
            "r = recommend(detect(False), context=8192); "
            "print(json.dumps({'targets': [t.placement for t in r.targets], 'rows': r.to_list()}))")
    d = json.loads(_run(code, nvml_dir=fake_nvml_dir, sysfs=fake_sysfs))
    gpu_targets = [t for t in d["targets"] if t.startswith("gpu:")]
    assert "gpu:Tesla V100-SXM3-32GB" in gpu_targets and len(gpu_targets) == 3   # 2 identical V100s: one
    on_gpu = [r for r in d["rows"] if r["fits"] and (r["placement"] or "").startswith("gpu:")]
    assert on_gpu
    for r in on_gpu:
        assert r["engine"] == "llama.cpp"
        assert r["engine_command"].startswith("llama-server ") and " -ngl 99" in r["engine_command"]
        assert r["gateway_tier"]["backend"] == "openai"
    v100 = [r for r in on_gpu if r["placement"] == "gpu:Tesla V100-SXM3-32GB"]
    assert v100 and all(r["predicted_decode_tps"] for r in v100)   # NVML's peak bandwidth was used
