"""What machine are we on: CPU, caches, memory, GPUs and memory bandwidth.

    >>> import gemma4stack as g4
    >>> hw = g4.detect()                                   # this machine, bandwidth measured once per process
    >>> hw.cpu.cores, hw.memory.available_bytes, hw.bandwidth_gbs.read
    >>> g4.detect(topology_xml="machine.xml")              # another machine, from `lstopo machine.xml`

Detection runs in the C core (csrc/hw/, hwloc 2.x); this module shapes its
result into small dataclasses with to_dict() (JSON), __str__ (terminal) and
_repr_html_ (Jupyter). The memory-bandwidth probe (csrc/bench/bandwidth.c) is
STREAM-style after McCalpin: "read" sums one array larger than every cache,
the access pattern of LLM decode, so its GB/s is the decode roofline.

Units: bytes for sizes, GB/s = 1e9 bytes per second for bandwidth.
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

from gemma4stack import _core

__all__ = [
    "Bandwidth", "CPUInfo", "CPUKind", "GPUInfo", "HardwareReport", "MemoryInfo",
    "clear_bandwidth_cache", "detect", "measure_bandwidth", "register_cli",
]

_GPU_CATALOG = Path(__file__).with_name("data") / "gpus.toml"

# SIMD flags from the C core -> the names llama.cpp's ggml-cpu prints in its
# system info (AVX2, AVX512, AVX512_VNNI, AVX_VNNI, F16C, FMA, NEON, DOTPROD).
_SIMD_NAMES = (
    ("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"), ("avx512f", "AVX512"),
    ("avx512bw", "AVX512BW"), ("avx512vnni", "AVX512_VNNI"), ("avx512bf16", "AVX512_BF16"),
    ("avxvnni", "AVX_VNNI"), ("neon", "NEON"), ("dotprod", "DOTPROD"),
)


def _norm_feature(name: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", name.upper())


# ---- report dataclasses ---------------------------------------------------------------


@dataclass
class CPUKind:
    """One kind of core (hwloc_cpukinds): P cores and E cores are two kinds.

    pus: hardware threads of this kind. efficiency: hwloc's rank, 0 = most
    power-efficient (E cores), higher = faster; None when hwloc cannot rank.
    core_type: "IntelCore", "IntelAtom", ... or None.
    """
    pus: int
    efficiency: int | None
    core_type: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CPUInfo:
    """The CPU. caches: bytes of ONE instance per level ("L1d", "L2", "L3");
    cache_counts: instances per level. simd: llama.cpp feature names of the
    running CPU (empty for an XML topology, whose SIMD hwloc does not record).
    kinds: always at least one; a homogeneous CPU has one kind with every PU."""
    model: str
    vendor: str
    arch: str
    packages: int
    cores: int
    threads: int
    simd: list[str]
    caches: dict[str, int]
    cache_counts: dict[str, int]
    kinds: list[CPUKind]

    def has(self, feature: str) -> bool:
        """True if `feature` is in simd; spelling-insensitive ("avx512_vnni", "AVX-512 VNNI")."""
        want = _norm_feature(feature)
        if want == "AVX512F":
            want = "AVX512"
        return any(_norm_feature(s) == want for s in self.simd)

    @property
    def llc_bytes(self) -> int:
        """Size of one instance of the last-level cache, 0 if none known."""
        return self.caches[max(self.caches, key=lambda k: int(k[1]))] if self.caches else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class MemoryInfo:
    """Main memory in bytes.

    total_bytes: MemTotal of this machine (hwloc's NUMA sum for an XML).
    available_bytes: MemAvailable capped by the cgroup limit; None for an XML.
    numa_nodes: bytes per NUMA node as hwloc reports them (in VMs these may
    not add up to total_bytes: hwloc_total_bytes keeps their sum).
    cgroup_limit_bytes: the memory limit of this process's cgroup, None if none.
    """
    total_bytes: int
    available_bytes: int | None
    numa_nodes: list[int]
    cgroup_limit_bytes: int | None
    hwloc_total_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GPUInfo:
    """One physical GPU (all hwloc OS devices of one PCI device merged).

    backend: the hwloc backend that gave the memory size, else the best one
    seen ("CUDA", "NVML", "RSMI", "LevelZero", "OpenCL"). memory_bytes: None
    when unknown. memory_source: "hwloc" (a backend reported it), "catalog"
    (gemma4stack/data/gpus.toml matched the name) or None.
    """
    name: str
    vendor: str
    backend: str
    memory_bytes: int | None
    memory_source: str | None
    pci_busid: str | None
    osdevs: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Bandwidth:
    """Measured memory bandwidth in GB/s (1e9 bytes/s), best of `reps` runs.

    read: one array summed (LLM decode's access pattern); triad: STREAM's
    a = b + s*c counted as 24 bytes per element."""
    read: float
    triad: float
    bytes_per_array: int | None = None
    threads: int | None = None
    reps: int | None = None
    kernel: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class HardwareReport:
    """Everything detect() found. source: "this machine" or the XML path."""
    cpu: CPUInfo
    memory: MemoryInfo
    gpus: list[GPUInfo]
    bandwidth_gbs: Bandwidth | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: cpu, memory, gpus, bandwidth_gbs ({read, triad, ...} or None), source."""
        return {
            "cpu": self.cpu.to_dict(),
            "memory": self.memory.to_dict(),
            "gpus": [g.to_dict() for g in self.gpus],
            "bandwidth_gbs": self.bandwidth_gbs.to_dict() if self.bandwidth_gbs else None,
            "source": self.source,
        }

    def _rows(self) -> list[tuple[str, str]]:
        c, m = self.cpu, self.memory
        rows = [
            ("CPU", f"{c.model or 'unknown model'}" + (f" ({c.vendor})" if c.vendor else "")
             + (f", {c.arch}" if c.arch else "")),
            ("Cores", f"{c.packages} package{'s' * (c.packages != 1)}, {c.cores} cores, {c.threads} threads"),
        ]
        if len(c.kinds) > 1 or c.kinds and c.kinds[0].core_type:
            rows.append(("CPU kinds", "; ".join(_fmt_kind(k) for k in c.kinds)))
        rows.append(("SIMD", " ".join(c.simd) if c.simd else "(not known for an XML topology)"
                     if self.source != "this machine" else "none detected"))
        rows.append(("Caches", ", ".join(f"{lvl} {_fmt_bytes(b)} x{c.cache_counts.get(lvl, 1)}"
                                         for lvl, b in c.caches.items()) or "unknown"))
        mem = f"{_fmt_bytes(m.total_bytes)} total" if m.total_bytes else "total unknown"
        if m.available_bytes is not None:
            mem += f", {_fmt_bytes(m.available_bytes)} available"
        if m.cgroup_limit_bytes:
            mem += f" (cgroup limit {_fmt_bytes(m.cgroup_limit_bytes)})"
        rows.append(("Memory", mem))
        numa = ", ".join(_fmt_bytes(b) for b in m.numa_nodes)
        note = ""
        if m.hwloc_total_bytes and abs(m.hwloc_total_bytes - m.total_bytes) > 0.05 * m.total_bytes:
            note = " (hwloc's per-node sizes; they disagree with MemTotal, as in some VMs)"
        rows.append(("NUMA", f"{len(m.numa_nodes)} node{'s' * (len(m.numa_nodes) != 1)}: {numa}{note}"))
        if not self.gpus:
            rows.append(("GPUs", "none with a compute backend"))
        # identical GPUs (a DGX's sixteen V100s) on one line; to_dict() keeps each
        groups: dict[tuple, list[GPUInfo]] = {}
        for g in self.gpus:
            groups.setdefault((g.name, g.vendor, g.memory_bytes, g.memory_source, g.backend), []).append(g)
        for i, same in enumerate(groups.values()):
            g = same[0]
            each = " each" if len(same) > 1 else ""
            mem = (f"{_fmt_bytes(g.memory_bytes)}{each} ({g.memory_source})" if g.memory_bytes is not None
                   else "memory unknown")
            where = f", PCI {g.pci_busid}" if len(same) == 1 and g.pci_busid else ""
            count = f"{len(same)} x " if len(same) > 1 else ""
            rows.append(("GPUs" if i == 0 else "", f"{count}{g.name} ({g.vendor}), {mem}, via {g.backend}{where}"))
        b = self.bandwidth_gbs
        if b is None:
            rows.append(("Bandwidth", "not measured"))
        else:
            how = []
            if b.threads:
                how.append(f"{b.threads} threads")
            if b.bytes_per_array:
                how.append(f"3 x {_fmt_bytes(b.bytes_per_array)}")
            if b.reps:
                how.append(f"best of {b.reps}")
            rows.append(("Bandwidth", f"read {b.read:.1f} GB/s, triad {b.triad:.1f} GB/s"
                         + (f" ({', '.join(how)})" if how else "")))
        return rows

    def format_text(self) -> str:
        """A readable table for the terminal (what `gemma4stack detect` prints)."""
        rows = self._rows()
        w = max(len(k) for k, _ in rows)
        lines = [f"Hardware: {self.source}"]
        lines += [f"  {k:<{w}}  {v}" for k, v in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_text()

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in self._rows())
        return (f"<table><caption style='text-align:left'>Hardware: {html.escape(self.source)}</caption>"
                f"{body}</table>")


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            v = f"{n / scale:.1f}"
            return f"{v[:-2] if v.endswith('.0') else v} {unit}"
    return f"{n} B"


def _fmt_kind(k: CPUKind) -> str:
    s = f"{k.pus} PU{'s' * (k.pus != 1)}"
    if k.core_type:
        s += f" {k.core_type}"
    if k.efficiency is not None:
        s += f" (efficiency {k.efficiency})"
    return s


# ---- GPU memory catalog -------------------------------------------------------------


@lru_cache(maxsize=1)
def _gpu_catalog() -> tuple[tuple[re.Pattern[str], int, str], ...]:
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10: the tomli backport, if installed
        try:
            import tomli as tomllib   # type: ignore[no-redef]
        except ModuleNotFoundError:
            warnings.warn("GPU memory catalog needs Python 3.11+ or the tomli package; "
                          "GPUs without a size from hwloc stay unknown", RuntimeWarning, stacklevel=3)
            return ()
    with open(_GPU_CATALOG, "rb") as f:
        data = tomllib.load(f)
    return tuple((re.compile(e["pattern"], re.IGNORECASE), int(e["bytes"]), e["source"])
                 for e in data.get("gpu", []))


def catalog_memory(name: str) -> int | None:
    """Memory in bytes of a GPU named `name` from gemma4stack/data/gpus.toml, None if unknown."""
    for pattern, nbytes, _source in _gpu_catalog():
        if pattern.search(name):
            return nbytes
    return None


# ---- bandwidth probe ----------------------------------------------------------------

_bw_lock = threading.Lock()
_bw_cached: Bandwidth | None = None


def measure_bandwidth(bytes_per_array: int = 0, threads: int = 0, reps: int = 5) -> Bandwidth:
    """Run the STREAM-style probe now (never cached).

    bytes_per_array: size of each of the three double arrays; 0 = 4 x all
    last-level caches, at least 64 MiB. threads: 0 = every CPU this process
    may use. reps: timed repetitions, the best is kept. Takes about a second
    at the defaults. Raises ValueError for bad sizes, MemoryError if the
    arrays cannot be allocated.
    """
    r = _core.bandwidth(bytes_per_array, threads, reps)
    return Bandwidth(read=r["read_gbs"], triad=r["triad_gbs"], bytes_per_array=r["bytes_per_array"],
                     threads=r["threads"], reps=r["reps"], kernel=r["kernel"])


def clear_bandwidth_cache() -> None:
    """Forget the measured bandwidth, so the next detect() measures again."""
    global _bw_cached
    with _bw_lock:
        _bw_cached = None


def _cached_bandwidth(refresh: bool) -> Bandwidth:
    global _bw_cached
    with _bw_lock:
        if _bw_cached is None or refresh:
            _bw_cached = measure_bandwidth()
        return _bw_cached


# ---- detect -------------------------------------------------------------------------


def _gpu(d: dict[str, Any]) -> GPUInfo:
    mem: int | None = d["memory_bytes"] if d["memory_bytes"] >= 0 else None
    source: str | None = "hwloc" if mem is not None else None
    if mem is None:
        mem = catalog_memory(d["name"])
        source = "catalog" if mem is not None else None
    return GPUInfo(name=d["name"], vendor=d["vendor"], backend=d["backend"], memory_bytes=mem,
                   memory_source=source, pci_busid=d["pci_busid"] or None,
                   osdevs=[s for s in d["osdevs"].split(",") if s],
                   backends=[s for s in d["backends"].split(",") if s])


def detect(bandwidth: Union[bool, str] = True,
           topology_xml: Union[str, os.PathLike[str], None] = None) -> HardwareReport:
    """Describe this machine, or the machine of an hwloc XML export.

    bandwidth: True measures memory bandwidth once per process and reuses it
    (about a second the first time); "refresh" measures again; False skips it.
    An XML topology is never measured (bandwidth_gbs is None), nor are its
    available memory (None) or SIMD features (empty) known.

    topology_xml: path of a topology exported by hwloc 2.x (`lstopo file.xml`). A relative
    path that does not exist here is looked up in the shared data ($GEMMA4STACK_SHARED or
    ../shared beside the repository; "../shared/hwloc-xml/x.xml" and "hwloc-xml/x.xml" both work).

    Raises FileNotFoundError if topology_xml does not exist, ValueError if it
    is not an hwloc XML topology, RuntimeError if hwloc fails.
    """
    if bandwidth not in (True, False, "refresh"):
        raise ValueError(f"bandwidth must be True, False or 'refresh', got {bandwidth!r}")
    if topology_xml is not None:     # a relative path may name a file of the shared data
        from gemma4stack._shared import resolve_shared_path
        topology_xml = resolve_shared_path(topology_xml)
    xml = os.fspath(topology_xml) if topology_xml is not None else None
    raw = _core.hw_detect(xml)
    from_xml = xml is not None

    def level_name(lvl: int) -> str:
        return "L1d" if lvl == 1 else f"L{lvl}"

    cpu = CPUInfo(
        model=raw["cpu_model"], vendor=raw["cpu_vendor"], arch=raw["arch"],
        packages=raw["packages"], cores=raw["cores"], threads=raw["pus"],
        simd=[name for flag, name in _SIMD_NAMES if raw["simd"].get(flag)],
        caches={level_name(lvl): b for lvl, b in sorted(raw["cache_bytes"].items())},
        cache_counts={level_name(lvl): n for lvl, n in sorted(raw["cache_count"].items())},
        kinds=[CPUKind(pus=k["pus"], efficiency=k["efficiency"] if k["efficiency"] >= 0 else None,
                       core_type=k["core_type"] or None) for k in raw["kinds"]],
    )
    memory = MemoryInfo(
        total_bytes=raw["total_ram_bytes"],
        available_bytes=None if from_xml else raw["available_ram_bytes"],
        numa_nodes=list(raw["numa_bytes"]),
        cgroup_limit_bytes=raw["cgroup_limit_bytes"] or None,
        hwloc_total_bytes=raw["hwloc_total_bytes"],
    )
    gpus = [_gpu(g) for g in raw["gpus"]]
    bw = None
    if bandwidth and not from_xml:
        bw = _cached_bandwidth(refresh=bandwidth == "refresh")
    return HardwareReport(cpu=cpu, memory=memory, gpus=gpus, bandwidth_gbs=bw,
                          source=xml if from_xml else "this machine")


# ---- CLI ----------------------------------------------------------------------------


def _cmd_detect(args: argparse.Namespace) -> int:
    report = detect(bandwidth=not args.no_bandwidth, topology_xml=args.topology_xml)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_text())
    return 0


def register_cli(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `gemma4stack detect [--json] [--topology-xml F] [--no-bandwidth]`."""
    p = sub.add_parser("detect", help="describe this machine (CPU, caches, memory, GPUs, bandwidth)",
                       description="Detect CPU, caches, memory, GPUs (hwloc) and measure memory bandwidth.")
    p.add_argument("--json", action="store_true", help="print one JSON object (HardwareReport.to_dict())")
    p.add_argument("--topology-xml", metavar="FILE",
                   help="describe the machine in an hwloc XML export instead of this one")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the memory-bandwidth probe (~1 s)")
    p.set_defaults(func=_cmd_detect)
