"""`gemma4stack bench`: llama-bench compatible prefill (pp) and decode (tg) throughput.

    $ gemma4stack bench --model model.gguf -p 512 -n 128 -r 5 -o md
    >>> r = gemma4stack.bench("model.gguf", n_prompt=512, n_gen=128)   # BenchResult; a table in Jupyter

What is measured follows llama.cpp's tools/llama-bench/llama-bench.cpp, so numbers are
comparable with it side by side:

- ppN: N tokens forwarded as ONE batch from position 0 into an empty KV cache (the first token
  is BOS when the vocab adds one, the rest random ids, as llama-bench's test_prompt does).
- tgN: N single-token forwards at positions 0..N-1, each token a random id (llama-bench's
  test_gen: no sampling, so the sampler's cost is not in the figure).
- one warm-up run of each first (llama-bench warms up with one pp batch and one tg token; we
  run the full test once so page faults of the mmap'd weights are out of the samples),
  then `repetitions` timed samples. The KV cache is cleared before each sample.
- avg_ts / stddev_ts are the mean and Bessel-corrected standard deviation of the per-sample
  tokens/s (samples_ts[i] = n * 1e9 / samples_ns[i]); avg_ns / stddev_ns the same for the
  sample times, truncated to integers as llama-bench prints them.

Beyond llama-bench each row carries:
- ttft_ms (pp rows): the pp forward plus picking the first token (argmax of the last logits),
  i.e. time to first token for an n_prompt-token prompt, averaged over the samples;
- latency_p50_ms / latency_p99_ms (tg rows): per-token decode latency percentiles over all
  n_gen x repetitions single-token forwards;
- peak_rss_bytes: the peak resident set while benchmarking: VmHWM in /proc/self/status, reset
  before the model is loaded by writing 5 to /proc/self/clear_refs (Linux >= 4.0), so an
  earlier allocation in the same process (a notebook, the bandwidth probe) does not count.
  Where the reset is not allowed it is the process's lifetime peak (getrusage ru_maxrss off
  Linux). It includes the interpreter and the touched pages of the mmap'd model file;
- bytes_per_token: weight bytes a decode step reads = every tensor's bytes except the token
  embedding tables, of which one row per token is gathered (token_embd.weight when a separate
  output.weight exists - when tied, it is also the output matrix and read in full - and
  per_layer_token_embd.weight, Gemma's per-layer embeddings); the KV cache is not counted;
- roofline_efficiency (tg rows) = bytes_per_token * avg_ts / measured read bandwidth
  (gemma4stack.hardware, GB/s). Above 1.0 means the weights were served from cache, not DRAM
  (weights_fit_in_llc tells when that is expected).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# llama-bench's field list (test::get_fields() in tools/llama-bench/llama-bench.cpp), in its
# order; JSON and CSV rows carry them with the same names and types, then samples_ns and
# samples_ts (JSON only, as llama-bench), then our extras.
LLAMA_BENCH_FIELDS = (
    "build_commit", "build_number", "cpu_info", "gpu_info", "backends",
    "model_filename", "model_type", "model_size", "model_n_params", "n_batch",
    "n_ubatch", "n_threads", "cpu_mask", "cpu_strict", "poll",
    "type_k", "type_v", "n_gpu_layers", "n_cpu_moe", "split_mode",
    "main_gpu", "no_kv_offload", "flash_attn", "devices", "tensor_split",
    "tensor_buft_overrides", "load_mode", "embeddings",
    "no_op_offload", "no_host", "fit_target", "fit_min_ctx",
    "n_prompt", "n_gen", "n_depth",
    "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
)
EXTRA_FIELDS = (
    "ttft_ms", "latency_p50_ms", "latency_p99_ms", "peak_rss_bytes", "bytes_per_token",
    "bandwidth_read_gbs", "roofline_efficiency", "weights_fit_in_llc",
    "draft", "draft_tokens", "accepted_tokens", "draft_speedup",
)

# llama.cpp's llama_ftype -> llama_model_ftype_name() spelling (src/llama-model-loader.cpp)
_FTYPE_NAMES = {
    0: "all F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K - Medium", 11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large",
    14: "Q4_K - Small", 15: "Q4_K - Medium", 16: "Q5_K - Small", 17: "Q5_K - Medium",
    18: "Q6_K", 32: "BF16",
}

# Tables of which a decode step gathers one row per token (see the module docstring).
_GATHERED = ("per_layer_token_embd.weight",)


# ----------------------------------------------------------------------------------------------
# Results

@dataclass
class BenchTest:
    """One llama-bench row: a ppN or tgN test. Units: ns, tokens/s, bytes, ms, GB/s."""
    build_commit: str
    build_number: int
    cpu_info: str
    gpu_info: str
    backends: str
    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    cpu_mask: str
    cpu_strict: bool
    poll: int
    type_k: str
    type_v: str
    n_gpu_layers: int
    n_cpu_moe: int
    split_mode: str
    main_gpu: int
    no_kv_offload: bool
    flash_attn: int
    devices: str
    tensor_split: str
    tensor_buft_overrides: str
    load_mode: str
    embeddings: bool
    no_op_offload: int
    no_host: bool
    fit_target: int
    fit_min_ctx: int
    n_prompt: int
    n_gen: int
    n_depth: int
    test_time: str
    avg_ns: int
    stddev_ns: int
    avg_ts: float
    stddev_ts: float
    samples_ns: list[int]
    samples_ts: list[float]
    ttft_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    peak_rss_bytes: int | None = None
    bytes_per_token: int | None = None
    bandwidth_read_gbs: float | None = None
    roofline_efficiency: float | None = None
    weights_fit_in_llc: bool | None = None
    # speculative decoding rows (bench(draft=...)): the drafter, draft tokens proposed and
    # accepted over the timed runs, tokens/s with drafts / tokens/s without (same engine)
    draft: str | None = None
    draft_tokens: int | None = None
    accepted_tokens: int | None = None
    draft_speedup: float | None = None
    token_latencies_ns: list[int] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        """llama-bench's test column: pp512, tg128 or pp512+tg128."""
        if self.n_prompt and not self.n_gen:
            return f"pp{self.n_prompt}"
        if self.n_gen and not self.n_prompt:
            return f"tg{self.n_gen}" + (f" draft={self.draft}" if self.draft else "")
        return f"pp{self.n_prompt}+tg{self.n_gen}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in (*LLAMA_BENCH_FIELDS, "samples_ns", "samples_ts",
                                  *EXTRA_FIELDS, "token_latencies_ns")}


@dataclass
class BenchResult:
    """The rows of one `bench()` run (pp first, then tg), as llama-bench prints them."""
    tests: list[BenchTest]

    def __getitem__(self, name: str) -> BenchTest:
        """result["pp512"], result["tg128"]."""
        for t in self.tests:
            if t.name == name:
                return t
        raise KeyError(f"no test {name!r}; have {[t.name for t in self.tests]}")

    @property
    def pp(self) -> BenchTest | None:
        return next((t for t in self.tests if t.n_prompt and not t.n_gen), None)

    @property
    def tg(self) -> BenchTest | None:
        return next((t for t in self.tests if t.n_gen and not t.n_prompt), None)

    def to_dict(self) -> list[dict[str, Any]]:
        """llama-bench's -o json shape: a list of row objects (plus our extra keys)."""
        return [t.to_dict() for t in self.tests]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """llama-bench's -o csv columns, then the extras (no per-sample lists, as llama-bench)."""
        buf = io.StringIO()
        cols = (*LLAMA_BENCH_FIELDS, *EXTRA_FIELDS)
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for t in self.tests:
            d = t.to_dict()
            w.writerow(["" if d[c] is None else _csv_value(d[c]) for c in cols])
        return buf.getvalue()

    def _rows(self) -> list[list[str]]:
        rows = []
        for t in self.tests:
            rows.append([t.model_type, _fmt_size(t.model_size), _fmt_params(t.model_n_params),
                         t.backends, str(t.n_threads), t.name,
                         f"{t.avg_ts:.2f} ± {t.stddev_ts:.2f}"])
        return rows

    def _extra_rows(self) -> list[list[str]]:
        rows = []
        for t in self.tests:
            f = lambda v, p=2: "" if v is None else f"{v:.{p}f}"
            rows.append([t.name, f(t.ttft_ms), f(t.latency_p50_ms, 3), f(t.latency_p99_ms, 3),
                         "" if t.peak_rss_bytes is None else _fmt_size(t.peak_rss_bytes),
                         "" if t.bytes_per_token is None else _fmt_size(t.bytes_per_token),
                         f(t.bandwidth_read_gbs, 1),
                         "" if t.roofline_efficiency is None else
                         f"{100 * t.roofline_efficiency:.1f}%"
                         + (" (in cache)" if t.weights_fit_in_llc else "")])
            if any(u.draft for u in self.tests):
                rows[-1].append("" if not t.draft else
                                f"{t.accepted_tokens}/{t.draft_tokens} accepted, "
                                + ("" if t.draft_speedup is None else f"{t.draft_speedup:.2f}x"))
        return rows

    _HEAD = ["model", "size", "params", "backend", "threads", "test", "t/s"]
    _EXTRA_HEAD = ["test", "TTFT ms", "P50 ms/tok", "P99 ms/tok", "peak RSS", "bytes/token",
                   "read GB/s", "roofline"]

    def to_markdown(self) -> str:
        """llama-bench's -o md table, then a table of the extra measurements, then the build."""
        widths = [-30, 10, 10, 7, 7, 15, 20]   # llama-bench's get_field_width (negative: left)
        out = ["| " + " | ".join(_pad(h, w) for h, w in zip(self._HEAD, widths)) + " |",
               "| " + " | ".join("-" * (abs(w) - 1) + (":" if w > 0 else "-") for w in widths)
               + " |"]
        for r in self._rows():
            out.append("| " + " | ".join(_pad(v, w) for v, w in zip(r, widths)) + " |")
        out.append("")
        head = self._EXTRA_HEAD + (["drafts, speedup"] if any(t.draft for t in self.tests) else [])
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for r in self._extra_rows():
            out.append("| " + " | ".join(r) + " |")
        if self.tests:
            out.append("")
            out.append(f"build: {self.tests[0].build_commit} ({self.tests[0].build_number})")
        return "\n".join(out) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        e = html.escape
        t1 = "".join(f"<th>{e(h)}</th>" for h in self._HEAD)
        r1 = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in self._rows())
        t2 = "".join(f"<th>{e(h)}</th>" for h in self._EXTRA_HEAD)
        r2 = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>"
                     for r in self._extra_rows())
        build = (f"<small>build: {e(self.tests[0].build_commit)}; {e(self.tests[0].cpu_info)}"
                 f"</small>" if self.tests else "")
        return f"<table><tr>{t1}</tr>{r1}</table><table><tr>{t2}</tr>{r2}</table>{build}"


def _csv_value(v):
    if isinstance(v, bool):
        return int(v)
    return v


def _pad(s: str, w: int) -> str:
    # printf("%*s"): negative width left-aligns. llama-bench widens t/s by one for the two
    # UTF-8 bytes of "±"; Python pads by characters, so no correction here.
    return s.ljust(-w) if w < 0 else s.rjust(w)


def _fmt_size(n: int) -> str:
    # llama-bench: MiB below 1 GiB, else GiB
    return f"{n / 2**20:.2f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


# ----------------------------------------------------------------------------------------------
# Facts about the model file and the machine

def bytes_per_token(gguf) -> int:
    """Weight bytes one decode step reads from a parsed GGUF (gemma4stack.gguf.GGUFFile):
    all tensor bytes minus the gathered embedding tables (see the module docstring), with a
    mixture of experts' stacked expert matrices (llama.cpp's `blk.N.ffn_*_exps.weight`, one
    slice per expert along the last dimension) counted for the `{arch}.expert_used_count` of
    `{arch}.expert_count` experts a token is routed to: one token reads exactly its top-k
    experts' slices (the router and any shared FFN are read whole). Bytes (int)."""
    names = {t.name for t in gguf.tensors}
    skip = set(_GATHERED)
    if "output.weight" in names:          # untied: token_embd is only gathered
        skip.add("token_embd.weight")
    arch = gguf.architecture or ""
    n_exp = int(gguf.metadata.get(f"{arch}.expert_count") or 0)
    n_used = int(gguf.metadata.get(f"{arch}.expert_used_count") or 0)
    total = 0
    for t in gguf.tensors:
        if t.name in skip:
            continue
        if n_exp > 0 and 0 < n_used <= n_exp and "_exps." in t.name and t.name.endswith(".weight"):
            total += t.nbytes * n_used // n_exp
        else:
            total += t.nbytes
    return total


def model_type(gguf) -> str:
    """llama_model_desc()'s "<arch> <size> <ftype>", e.g. "llama 656K Q8_0"."""
    md = gguf.metadata
    arch = gguf.architecture or "?"
    size = md.get("general.size_label") or _size_label(gguf.n_parameters)
    ft = md.get("general.file_type")
    ftype = _FTYPE_NAMES.get(ft, f"ftype {ft}") if ft is not None else _guess_ftype(gguf)
    return f"{arch} {size} {ftype}"


def _size_label(n: int) -> str:
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            v = n / div
            return f"{v:.0f}{suf}" if v >= 10 else f"{v:.1f}{suf}"
    return str(n)


def _guess_ftype(gguf) -> str:
    # llama-model-loader without general.file_type: the most frequent tensor type decides,
    # and the name gets " (guessed)".
    names = {"F32": "all F32", "Q2_K": "Q2_K - Medium", "Q3_K": "Q3_K - Medium",
             "Q4_K": "Q4_K - Medium", "Q5_K": "Q5_K - Medium"}
    counts = gguf.type_counts()
    top = max(counts, key=counts.get) if counts else "F32"
    return f"{names.get(top, top)} (guessed)"


def cpu_info() -> str:
    """/proc/cpuinfo's "model name", as llama-bench's get_cpu_info() reports it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (VmHWM; getrusage as a fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024        # the kernel prints kB
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024      # bytes on macOS, KiB on Linux


def kv_type(model, md: dict) -> str:
    """The KV cache's element type, from its size: kv_bytes / (n_ctx x layers x 2 x kv width).
    "f32" / "f16" when the ratio is 4 / 2 bytes, else "unknown" (e.g. sliding-window layers)."""
    try:
        arch = md["general.architecture"]
        n_layer = md[f"{arch}.block_count"]
        n_embd = md[f"{arch}.embedding_length"]
        n_head = md[f"{arch}.attention.head_count"]
        n_kv = md.get(f"{arch}.attention.head_count_kv", n_head)
        head_dim = md.get(f"{arch}.attention.key_length", n_embd // n_head)
        if not isinstance(n_kv, int) or not isinstance(head_dim, int):
            return "unknown"
        elems = model.n_ctx * n_layer * 2 * n_kv * head_dim
        ratio = model.memory()["kv_bytes"] / elems
    except (KeyError, TypeError, AttributeError, ZeroDivisionError):
        return "unknown"
    return {4.0: "f32", 2.0: "f16"}.get(round(ratio, 3), "unknown")


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs "5"); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build() -> tuple[str, int]:
    """(short git commit, commit count) of the source tree, else (package version, 0)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        count = subprocess.run(["git", "-C", str(root), "rev-list", "--count", "HEAD"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return commit, int(count)
    except (OSError, subprocess.SubprocessError, ValueError):
        from gemma4stack import __version__
        return __version__, 0


def _bandwidth(bandwidth) -> tuple[float | None, int]:
    """(read GB/s or None, last-level cache bytes) per the `bandwidth` argument of bench()."""
    llc = 0
    if bandwidth is False:
        return None, llc
    try:
        from gemma4stack.hardware import detect
        hw = detect(bandwidth=bandwidth is None or bandwidth is True)
        llc = hw.cpu.llc_bytes
        if isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
            return float(bandwidth), llc
        return (hw.bandwidth_gbs.read if hw.bandwidth_gbs else None), llc
    except ImportError:
        if isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
            return float(bandwidth), llc
        return None, llc


# ----------------------------------------------------------------------------------------------
# Measurement

def _stats(samples_ns: list[int], n_tokens: int) -> tuple[int, int, float, float, list[float]]:
    """llama-bench's avg/stdev over samples: ns as integers, tokens/s per sample."""
    ts = [1e9 * n_tokens / s for s in samples_ns]
    return (int(sum(samples_ns) // len(samples_ns)), int(_stdev(samples_ns)),
            sum(ts) / len(ts), _stdev(ts), ts)


def _stdev(v) -> float:
    if len(v) <= 1:
        return 0.0
    m = sum(v) / len(v)
    return math.sqrt(max(sum((x - m) ** 2 for x in v) / (len(v) - 1), 0.0))


def _percentile(v: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(v, dtype=np.float64), q)) if v else float("nan")


def bench(model_path: str | os.PathLike, n_prompt: int = 512, n_gen: int = 128,
          repetitions: int = 5, threads: int | None = None, *, seed: int = 1234,
          bandwidth: bool | float | None = None, warmup: bool = True,
          draft: str | os.PathLike | None = None) -> BenchResult:
    """Benchmark prefill (pp<n_prompt>) and decode (tg<n_gen>) of a GGUF model, llama-bench style.

    n_prompt / n_gen: tokens (0 skips that test). repetitions: timed samples per test.
    threads: worker threads (None: the engine's default, one per physical core).
    seed: for the random token ids. bandwidth: None/True measure the read bandwidth with
    gemma4stack.hardware (cached per process), a float gives it in GB/s, False skips the
    roofline. draft (Model's draft: "ngram", "model:PATH" or a path): a third row,
    "tg<n_gen> draft=...", decodes n_gen greedy tokens through the batching engine after a
    prompt that repeats a random 64-token passage twice (what prompt lookup and a drafter can
    predict), with the drafter; draft_speedup is its tokens/s over the same engine's without
    drafts on the same prompt (interleaved runs). Returns a BenchResult (rows pp, tg, draft).
    Raises FileNotFoundError, GGUFError/UnsupportedError (the model), ValueError (bad sizes).
    """
    from gemma4stack.gguf import read_gguf
    from gemma4stack.model import Model

    if n_prompt < 0 or n_gen < 0 or (n_prompt == 0 and n_gen == 0):
        raise ValueError("need n_prompt > 0 or n_gen > 0 (both >= 0)")
    if repetitions < 1:
        raise ValueError("repetitions must be >= 1")
    path = os.fspath(model_path)
    g = read_gguf(path)
    md = g.metadata
    reset_peak_rss()
    model = Model(path, threads=threads, context=max(n_prompt, n_gen, 1))
    core = model._core
    n_vocab = _n_vocab(model, g)
    bos = getattr(core, "bos_id", md.get("tokenizer.ggml.bos_token_id"))
    add_bos = bool(getattr(core, "add_bos", md.get("tokenizer.ggml.add_bos_token", True)))
    add_bos = add_bos and bos is not None and 0 <= bos < n_vocab
    rng = np.random.default_rng(seed)
    logits = np.empty(n_vocab, dtype=np.float32)

    def tokens(n: int) -> np.ndarray:
        t = rng.integers(0, n_vocab, size=n, dtype=np.int32)
        if add_bos and n:
            t[0] = bos
        return t

    def run_pp() -> tuple[int, int]:
        """ns of the batched forward, ns until the first token is picked."""
        toks = tokens(n_prompt)
        core.reset()
        t0 = time.perf_counter_ns()
        core.forward(toks, 0, logits, False)
        t1 = time.perf_counter_ns()
        int(np.argmax(logits))        # the first generated token (greedy)
        t2 = time.perf_counter_ns()
        return t1 - t0, t2 - t0

    def run_tg(lat: list[int]) -> int:
        toks = tokens(n_gen)
        one = np.empty(1, dtype=np.int32)
        core.reset()
        start = time.perf_counter_ns()
        for i in range(n_gen):
            one[0] = toks[i]
            t0 = time.perf_counter_ns()
            core.forward(one, i, logits, False)
            lat.append(time.perf_counter_ns() - t0)
        return time.perf_counter_ns() - start

    bpt = bytes_per_token(g)
    commit, number = _build()
    kvt = kv_type(model, md)
    n_threads = int(getattr(model, "threads", None) or getattr(core, "n_threads", None)
                    or threads or os.cpu_count() or 1)
    common = dict(
        build_commit=commit, build_number=number, cpu_info=cpu_info(), gpu_info="",
        backends="CPU", model_filename=path, model_type=model_type(g),
        model_size=g.tensor_bytes, model_n_params=g.n_parameters,
        n_batch=max(n_prompt, 1), n_ubatch=max(n_prompt, 1), n_threads=n_threads,
        cpu_mask="0x0", cpu_strict=False, poll=50, type_k=kvt, type_v=kvt,
        n_gpu_layers=0, n_cpu_moe=0, split_mode="layer", main_gpu=0, no_kv_offload=False,
        flash_attn=0, devices="auto", tensor_split="0.00", tensor_buft_overrides="none",
        load_mode="mmap", embeddings=False, no_op_offload=0, no_host=False, fit_target=0,
        fit_min_ctx=0, n_depth=0,
    )

    rows: list[BenchTest] = []
    if n_prompt:
        if warmup:
            run_pp()
        test_time = _now()
        fwd, ttft = zip(*(run_pp() for _ in range(repetitions)))
        avg_ns, sd_ns, avg_ts, sd_ts, ts = _stats(list(fwd), n_prompt)
        rows.append(BenchTest(**common, n_prompt=n_prompt, n_gen=0, test_time=test_time,
                              avg_ns=avg_ns, stddev_ns=sd_ns, avg_ts=avg_ts, stddev_ts=sd_ts,
                              samples_ns=list(fwd), samples_ts=ts,
                              ttft_ms=sum(ttft) / len(ttft) / 1e6, bytes_per_token=bpt))
    if n_gen:
        if warmup:
            run_tg([])
        test_time = _now()
        lat: list[int] = []
        samples = [run_tg(lat) for _ in range(repetitions)]
        avg_ns, sd_ns, avg_ts, sd_ts, ts = _stats(samples, n_gen)
        rows.append(BenchTest(**common, n_prompt=0, n_gen=n_gen, test_time=test_time,
                              avg_ns=avg_ns, stddev_ns=sd_ns, avg_ts=avg_ts, stddev_ts=sd_ts,
                              samples_ns=samples, samples_ts=ts,
                              latency_p50_ms=_percentile(lat, 50) / 1e6,
                              latency_p99_ms=_percentile(lat, 99) / 1e6,
                              bytes_per_token=bpt, token_latencies_ns=lat))
    if draft is not None and n_gen:
        rows.append(_bench_draft(path, draft, n_gen, repetitions, threads, tokens, common, bpt))
    rss = peak_rss_bytes()
    if hasattr(model, "close"):
        model.close()
    # after the peak RSS is read: the probe's arrays (3 x 128 MiB) must not count in it
    bw, llc = _bandwidth(bandwidth)
    for r in rows:
        r.peak_rss_bytes = rss
        r.bandwidth_read_gbs = bw
        if r.n_gen:
            r.roofline_efficiency = bpt * r.avg_ts / (bw * 1e9) if bw else None
            r.weights_fit_in_llc = bool(llc) and bpt <= llc
    return BenchResult(rows)


def _bench_draft(path: str, draft, n_gen: int, repetitions: int, threads: int | None,
                 tokens, common: dict, bpt: int) -> BenchTest:
    """The draft row of bench(): decode tokens/s (after the first token) of greedy requests
    with drafts, and of the same requests without, alternating, in one engine."""
    from gemma4stack.model import Model

    passage = [int(t) for t in tokens(64)]
    prompt = passage + passage[1:]
    m = Model(path, threads=threads, context=len(prompt) + n_gen + 1, draft=draft)
    try:
        spec = m._draft
        rate = {"spec": [], "plain": []}
        drafted = accepted = 0
        test_time = _now()
        for rep in range(repetitions + 1):          # the first pair warms up
            for kind, d in (("plain", (0, 3, False)), ("spec", spec)):
                req = m._sched.submit(prompt, n_gen, 0.0, 0, 1.0, 0, d)
                n = sum(1 for _ in req.tokens())
                ev = req.last
                if rep and n > 1:
                    rate[kind].append(ev[5] / (ev[8] / 1e3) if ev[8] > 0 else 0.0)
                    if kind == "spec":
                        drafted, accepted = drafted + ev[9], accepted + ev[10]
    finally:
        m.close()
    ts = rate["spec"] or [0.0]
    ns = [int(n_gen / t * 1e9) if t else 0 for t in ts]
    avg_ts = sum(ts) / len(ts)
    plain = sum(rate["plain"]) / len(rate["plain"]) if rate["plain"] else 0.0
    return BenchTest(**common, n_prompt=0, n_gen=n_gen, test_time=test_time,
                     avg_ns=int(sum(ns) / len(ns)), stddev_ns=int(_stdev(ns)), avg_ts=avg_ts,
                     stddev_ts=_stdev(ts), samples_ns=ns, samples_ts=ts, bytes_per_token=bpt,
                     draft=str(draft), draft_tokens=drafted, accepted_tokens=accepted,
                     draft_speedup=avg_ts / plain if plain else None)


def _n_vocab(model, g) -> int:
    for get in (lambda: model.n_vocab, lambda: model._core.n_vocab,
                lambda: len(g.metadata["tokenizer.ggml.tokens"])):
        try:
            v = get()
            v = v() if callable(v) else v
            if v:
                return int(v)
        except (AttributeError, KeyError, TypeError):
            continue
    raise ValueError("cannot tell the vocabulary size of the model")


def _now() -> str:
    # RFC 3339, as llama-bench's test_time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ----------------------------------------------------------------------------------------------
# CLI

def register_cli(sub) -> None:
    p = sub.add_parser("bench", help="llama-bench compatible pp/tg throughput of a GGUF model",
                       description="Prefill (pp) and decode (tg) tokens/s like llama.cpp's "
                                   "llama-bench, plus TTFT, per-token latency P50/P99, peak "
                                   "RSS and roofline efficiency.")
    p.add_argument("-m", "--model", required=True, help="GGUF file")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (0: skip pp)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (0: skip tg)")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-o", "--output", choices=("md", "json", "csv"), default="md")
    p.add_argument("--no-bandwidth", action="store_true",
                   help="skip the bandwidth probe (no roofline efficiency)")
    p.add_argument("--draft", default=None, metavar="ngram|model:PATH|mtp:PATH",
                   help="add a row decoding with speculative decoding (prompt lookup, a draft "
                        "model with the same vocabulary, or Gemma 4's MTP assistant) and its "
                        "speedup over the same engine")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    r = bench(args.model, n_prompt=args.n_prompt, n_gen=args.n_gen,
              repetitions=args.repetitions, threads=args.threads,
              bandwidth=False if args.no_bandwidth else None, draft=args.draft)
    if args.output == "json":
        d = r.to_dict()
        for row in d:
            row.pop("token_latencies_ns", None)
        print(json.dumps(d, indent=2))
    elif args.output == "csv":
        sys.stdout.write(r.to_csv())
    else:
        sys.stdout.write(r.to_markdown())
    return 0


# g4.bench(...) works even after `import gemma4stack.bench` (see _callable.py)
from gemma4stack._callable import make_callable  # noqa: E402

make_callable(__name__)
