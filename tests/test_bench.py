"""`gemma4stack bench`: llama-bench's schema, numbers consistent with each other and with
independent references (gguf-py's reader for tensor sizes, /proc/self/status for RSS, the
wall clock around the call)."""
from __future__ import annotations

import csv
import importlib
import io
import json
import statistics
import time

import pytest

B = importlib.import_module("gemma4stack.bench")   # the module (gemma4stack.bench is the function)

TINY = "TinyStories-656K-Q8_0.gguf"     # tied embeddings (no output.weight)
STORIES = "stories260K.gguf"            # has output.weight (a copy of token_embd)


def _vmhwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def run(models):
    """One small benchmark shared by the checks below: (result, wall ns, VmHWM before, after).
    A 320 MB array is touched and freed first, so the process peak is far above the bench's."""
    import numpy as np
    big = np.ones(40_000_000)
    del big
    before = _vmhwm()
    t0 = time.perf_counter_ns()
    r = B.bench(models / TINY, n_prompt=32, n_gen=16, repetitions=3, threads=1, bandwidth=20.0)
    wall = time.perf_counter_ns() - t0
    return r, wall, before, _vmhwm()


def test_bytes_per_token_matches_gguf_py_tensor_sizes(models):
    from gguf import GGUFReader        # llama.cpp's own Python reader, not our C parser
    from gemma4stack.gguf import read_gguf
    for name, skip in ((TINY, set()), (STORIES, {"token_embd.weight"})):
        ref = GGUFReader(str(models / name))
        names = {t.name for t in ref.tensors}
        assert ("output.weight" in names) == bool(skip)
        want = sum(int(t.n_bytes) for t in ref.tensors if t.name not in skip)
        assert B.bytes_per_token(read_gguf(models / name)) == want
    assert B.model_type(read_gguf(models / TINY)).startswith("llama ")
    assert B.model_type(read_gguf(models / TINY)).endswith(" Q8_0")      # general.file_type 7
    assert B.model_type(read_gguf(models / STORIES)).endswith(" all F32 (guessed)")


def test_rows_have_llama_bench_fields_in_order(run):
    r, *_ = run
    assert [t.name for t in r.tests] == ["pp32", "tg16"]
    rows = json.loads(r.to_json())
    for row in rows:
        keys = list(row)
        assert keys[:len(B.LLAMA_BENCH_FIELDS)] == list(B.LLAMA_BENCH_FIELDS)
        assert keys[len(B.LLAMA_BENCH_FIELDS):len(B.LLAMA_BENCH_FIELDS) + 2] == ["samples_ns",
                                                                             "samples_ts"]
        # llama-bench's JSON types: INT fields are integers, FLOAT floats, BOOL booleans
        for k in ("build_number", "model_size", "model_n_params", "n_threads", "n_prompt",
                  "n_gen", "avg_ns", "stddev_ns", "n_gpu_layers"):
            assert isinstance(row[k], int) and not isinstance(row[k], bool), k
        for k in ("avg_ts", "stddev_ts"):
            assert isinstance(row[k], float), k
        for k in ("no_kv_offload", "cpu_strict", "embeddings"):
            assert isinstance(row[k], bool), k
        assert row["n_threads"] == 1 and row["backends"] == "CPU"
        assert row["type_k"] == row["type_v"] and row["type_k"] in ("f16", "f32")
        assert row["model_filename"].endswith(TINY)
        from gguf import GGUFReader
        ref = GGUFReader(row["model_filename"]).tensors
        assert row["model_size"] == sum(int(t.n_bytes) for t in ref)          # llama_model_size
        assert row["model_n_params"] == sum(int(t.n_elements) for t in ref)   # llama_model_n_params
        assert len(row["test_time"]) == 20 and row["test_time"].endswith("Z")
    pp, tg = rows
    assert (pp["n_prompt"], pp["n_gen"], tg["n_prompt"], tg["n_gen"]) == (32, 0, 0, 16)


def test_throughput_numbers_agree_with_each_other_and_the_clock(run):
    r, wall, *_ = run
    for t, n in ((r.pp, 32), (r.tg, 16)):
        assert len(t.samples_ns) == len(t.samples_ts) == 3
        for ns, ts in zip(t.samples_ns, t.samples_ts):
            assert ts == pytest.approx(n * 1e9 / ns)
        assert t.avg_ts == pytest.approx(statistics.fmean(t.samples_ts))
        assert t.stddev_ts == pytest.approx(statistics.stdev(t.samples_ts))
        assert t.avg_ns == int(statistics.fmean(t.samples_ns))
        assert abs(t.stddev_ns - statistics.stdev(t.samples_ns)) <= 1
        # mean of rates vs rate of the mean: equal up to the spread of the samples
        rel = t.stddev_ts / t.avg_ts
        assert n * 1e9 / t.avg_ns == pytest.approx(t.avg_ts, rel=max(2 * rel * rel, 1e-6) + 1e-3)
    # every timed sample happened inside the call (plus warm-ups, loading, ...)
    assert sum(r.pp.samples_ns) + sum(r.tg.samples_ns) < wall


def test_latency_ttft_and_roofline(run, models):
    r, *_ = run
    tg, pp = r.tg, r.pp
    lat = tg.token_latencies_ns
    assert len(lat) == 16 * 3
    assert sum(lat) <= sum(tg.samples_ns)            # per-token times sit inside the samples
    assert min(lat) / 1e6 <= tg.latency_p50_ms <= tg.latency_p99_ms <= max(lat) / 1e6
    assert tg.latency_p50_ms == pytest.approx(statistics.median(lat) / 1e6)
    # TTFT = the prefill forward plus picking the first token
    assert pp.ttft_ms * 1e6 >= statistics.fmean(pp.samples_ns)
    assert pp.ttft_ms * 1e6 < statistics.fmean(pp.samples_ns) * 1.5 + 1e6
    # roofline = bytes/token * tokens/s / bandwidth, with the bandwidth we passed (20 GB/s)
    assert tg.bandwidth_read_gbs == 20.0
    assert tg.roofline_efficiency == pytest.approx(tg.bytes_per_token * tg.avg_ts / 20e9)
    assert tg.weights_fit_in_llc in (True, False)


def test_peak_rss_is_the_benchmark_high_water_mark(run, models):
    r, _, before, after = run
    rss = r.tg.peak_rss_bytes
    assert before > 320e6
    # the peak was reset before the model loaded: the freed 320 MB array is not in it
    assert rss < before - 250e6
    # the kernel batches per-thread RSS counters (SPLIT_RSS_COUNTING), so VmHWM read at two
    # moments can be off by a few pages; 1 MiB of slack still catches kB-vs-bytes mistakes
    assert rss <= after + (1 << 20)
    # the weights were read through the mmap, so the touched file pages are in the peak
    assert rss > r.tg.model_size


def test_outputs_md_json_csv(run, models, capsys):
    r, *_ = run
    md = r.to_markdown()
    head = md.splitlines()[0]
    assert [c.strip() for c in head.strip("|").split("|")] == \
        ["model", "size", "params", "backend", "threads", "test", "t/s"]
    assert "| pp32 |" in md.replace("  ", "") or " pp32 |" in md
    assert f"{r.tg.avg_ts:.2f} ± {r.tg.stddev_ts:.2f}" in md
    assert md.rstrip().splitlines()[-1].startswith("build: ")
    rows = list(csv.DictReader(io.StringIO(r.to_csv())))
    assert len(rows) == 2 and list(rows[0])[:3] == ["build_commit", "build_number", "cpu_info"]
    assert float(rows[1]["avg_ts"]) == pytest.approx(r.tg.avg_ts)
    html = r._repr_html_()
    assert "<table>" in html and "tg16" in html and "P99" in html

    from gemma4stack.cli import main
    assert main(["bench", "-m", str(models / TINY), "-p", "8", "-n", "4", "-r", "2",
                 "-t", "1", "-o", "json", "--no-bandwidth"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(x["n_prompt"], x["n_gen"], len(x["samples_ns"])) for x in rows] == \
        [(8, 0, 2), (0, 4, 2)]
    assert rows[1]["roofline_efficiency"] is None


def test_bad_arguments_raise(models):
    with pytest.raises(ValueError):
        B.bench(models / TINY, n_prompt=0, n_gen=0)
    with pytest.raises(ValueError):
        B.bench(models / TINY, repetitions=0)
    with pytest.raises(FileNotFoundError):
        B.bench(models / "no-such.gguf", n_prompt=4, n_gen=0, repetitions=1)


def test_bytes_per_token_counts_only_the_routed_experts():
    """A mixture of experts reads expert_used_count of expert_count slices of each stacked
    ffn_*_exps matrix per token; everything else (router, shared FFN, attention) whole."""
    from types import SimpleNamespace as NS
    tensors = [NS(name="token_embd.weight", nbytes=1000),
               NS(name="blk.0.attn_q.weight", nbytes=300),
               NS(name="blk.0.ffn_gate_inp.weight", nbytes=64),
               NS(name="blk.0.ffn_gate_up_exps.weight", nbytes=128 * 40),
               NS(name="blk.0.ffn_down_exps.weight", nbytes=128 * 20),
               NS(name="blk.0.ffn_down_exps.scale", nbytes=512)]
    moe = NS(tensors=tensors, architecture="gemma4",
             metadata={"gemma4.expert_count": 128, "gemma4.expert_used_count": 8})
    assert B.bytes_per_token(moe) == 1000 + 300 + 64 + 8 * 40 + 8 * 20 + 512
    dense = NS(tensors=tensors, architecture="gemma4", metadata={})
    assert B.bytes_per_token(dense) == sum(t.nbytes for t in tensors)
