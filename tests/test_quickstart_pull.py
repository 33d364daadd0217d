"""quickstart's first download: interactive on this machine (>= 5 tokens/s predicted from the
measured bandwidth, derated on few cores), said what it assumed without one, and fitting the disk.

Speeds are checked against the roofline written out here (bandwidth x efficiency / bytes per
token, recommend.py's formula; the fixture's CPU is of an unknown kind, which gets the catalog's
lowest measured RAM efficiency, UNKNOWN_EFF), sizes against the catalog's weights_bytes, and
free space against os.statvfs, not against the code under test. The scenarios were written for
an efficiency of 0.80; bw() scales their bandwidths so the predicted speeds stay the same.
"""
from __future__ import annotations

import os

import pytest

import importlib

from gemma4stack.hardware import Bandwidth, CPUInfo, CPUKind, HardwareReport, MemoryInfo

rec = importlib.import_module("gemma4stack.recommend")
qs = importlib.import_module("gemma4stack.quickstart")

GIB = 1 << 30
TB = 10 ** 12


def report(ram_gib: float, read_gbs: float | None, cores: int = 8) -> HardwareReport:
    cpu = CPUInfo(model="Test CPU", vendor="Test", arch="x86_64", packages=1, cores=cores,
                  threads=cores, simd=["AVX2"], caches={"L3": 32 << 20}, cache_counts={"L3": 1},
                  kinds=[CPUKind(pus=cores, efficiency=None, core_type=None)])
    mem = MemoryInfo(total_bytes=int(ram_gib * GIB), available_bytes=int(ram_gib * GIB) // 2,
                     numa_nodes=[int(ram_gib * GIB)], cgroup_limit_bytes=None)
    bw = Bandwidth(read=read_gbs, triad=read_gbs * 0.8) if read_gbs else None
    return HardwareReport(cpu=cpu, memory=mem, gpus=[], bandwidth_gbs=bw, source="fixture")


UNKNOWN_EFF = 0.638     # gemma4_catalog.toml: an unknown CPU kind's RAM efficiency


def bw(gbs: float) -> float:
    """A read bandwidth giving at UNKNOWN_EFF the speeds `gbs` gave at 0.80."""
    return gbs * 0.80 / UNKNOWN_EFF


def roofline(row, read_gbs: float) -> float:
    return read_gbs * 1e9 * UNKNOWN_EFF / row.bytes_per_token


def rank(row):
    return (rec.get_variant(row.variant).rank, rec.get_quant(row.quant).rank)


def test_largest_interactive_row_when_disk_is_plenty():
    r = report(64, read_gbs=bw(60))
    s = qs.suggest_pull(r, free_bytes=10 * TB)
    assert s.row is not None and s.assumptions == []
    assert roofline(s.row, bw(60)) >= 5 and s.tps == pytest.approx(roofline(s.row, bw(60)))
    assert s.command == f"gemma4stack pull gemma4:{rec.get_variant(s.row.variant).key}:" \
                        f"{s.row.quant.lower()}"
    # nothing larger that fits and is pullable reaches 5 tokens/s
    for row in rec.recommend(r).rows:
        if row.fits and rank(row) > rank(s.row) and \
                (rec.get_variant(row.variant).key, row.quant) in rec._pullable():
            assert roofline(row, bw(60)) < 5
    assert s.row.variant == rec.recommend(r).best.variant   # the same answer as rec.best here


def test_the_download_fits_the_free_disk():
    r = report(64, read_gbs=bw(60))
    big = qs.suggest_pull(r, free_bytes=10 * TB).row
    free = int(big.weights_bytes * 1.02) + 2 * GIB - 1        # one byte short for that row
    s = qs.suggest_pull(r, free_bytes=free)
    assert s.row is not None and rank(s.row) < rank(big)
    assert s.download_bytes + 2 * GIB <= free
    assert any("left out" in a and "GiB" in a for a in s.assumptions)
    none = qs.suggest_pull(r, free_bytes=GIB)                 # no room for any download
    assert none.row is None and none.fastest is None


def test_without_bandwidth_it_says_what_it_assumes():
    assumed = bw(qs.ASSUMED_READ_GBS)
    s = qs.suggest_pull(report(64, read_gbs=None), free_bytes=10 * TB, assumed_read_gbs=assumed)
    assert any(f"assumed {assumed:g} GB/s" in a for a in s.assumptions)
    assert s.row is not None and s.tps == pytest.approx(roofline(s.row, assumed))
    assert s.tps >= 5


def test_few_cores_need_margin_and_the_bigger_row_is_named():
    """A 2-core box measuring 18.3 GB/s (this CI machine): 26B-A4B Q4_K_M is predicted at
    ~5.1 tokens/s, an upper bound there, so the suggestion is a smaller model and 26B-A4B is
    offered as the bigger option."""
    r = report(24, read_gbs=bw(18.3), cores=2)
    s = qs.suggest_pull(r, free_bytes=10 * TB)
    assert any("only 2 cores" in a for a in s.assumptions)
    assert s.row is not None and 0.8 * roofline(s.row, bw(18.3)) >= 5
    assert s.tps == pytest.approx(0.8 * roofline(s.row, bw(18.3)))
    assert s.bigger is not None and rank(s.bigger) > rank(s.row)
    assert roofline(s.bigger, bw(18.3)) >= 5 > 0.8 * roofline(s.bigger, bw(18.3))
    assert qs.suggest_pull(report(24, read_gbs=bw(18.3), cores=8), free_bytes=10 * TB).row.variant \
        == s.bigger.variant                                   # 8 cores: no derating


def test_free_disk_bytes_of_a_path_not_yet_created(tmp_path):
    st = os.statvfs(tmp_path)
    got = qs.free_disk_bytes(tmp_path / "not" / "yet" / "hub")
    assert abs(got - st.f_bavail * st.f_frsize) < 256 << 20   # other writers in between


def test_next_steps_text(monkeypatch):
    import io
    out = io.StringIO()
    monkeypatch.setattr(qs, "free_disk_bytes", lambda p: 10 * TB)
    qs._next_steps(out, report(24, read_gbs=bw(18.3), cores=2), 8192)
    text = out.getvalue()
    assert "1. Get a real Gemma 4 GGUF: " in text and "Bigger, at most" in text
    assert "gemma4stack pull gemma4:" in text and "10000 GB free" in text
