"""benchmarks/bench_serving.py's pure parts (statistics, prompt building, report) and its client
against tests/gateway_fakes.py's FakeUpstream; no model server, a few seconds in all.

References: numpy.percentile (default 'linear' method) for the percentiles; the TinyStories
tokenizer of the shared models for token counts; hand-computed timelines for the statistics.
"""
from __future__ import annotations

import asyncio
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
_spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "benchmarks" / "bench_serving.py")
B = importlib.util.module_from_spec(_spec)
sys.modules["bench_serving"] = B          # dataclasses look their module up there
_spec.loader.exec_module(B)


@pytest.fixture(scope="module")
def tok(models):
    from gemma4stack import _core
    t = _core.Tokenizer(str(models / "TinyStories-656K-Q8_0.gguf"))
    return (lambda s: t.encode(s, add_bos=False)), t.decode


# ---- statistics ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy(n):
    xs = np.random.default_rng(n).exponential(size=n).tolist()
    for q in (0, 1, 50, 90, 99, 100):
        assert B.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert B.percentile([], 50) is None


def _r(sent, chunks, tokens=None, error=None):
    return B.RequestResult(t_sent=sent, chunk_times=list(chunks), t_end=chunks[-1] if chunks else sent,
                           completion_tokens=tokens, error=error)


def test_summary_of_a_hand_made_timeline():
    # A decodes 1..4, B 2.5..4.5: both decode during (2.5, 4]; there A's chunks at 3, 4 and
    # B's at 3.5 arrive: 3 tokens in 1.5 s
    a = _r(0.5, [1, 2, 3, 4], tokens=4)
    b = _r(2.0, [2.5, 3.5, 4.5], tokens=3)
    failed = _r(0.0, [], error="APIError: boom")
    assert B.steady_decode([a, b], 2) == (3, pytest.approx(1.5))
    s = B.summarize([a, b, failed], wall_s=5.0, concurrency=2)
    assert s["requests"] == 3 and s["errors"] == 1 and s["error_samples"] == ["APIError: boom"]
    assert s["output_tokens"] == 7 and s["output_tps"] == pytest.approx(7 / 5)
    assert s["steady_decode_tps"] == pytest.approx(2.0)
    assert s["ttft_p50_ms"] == pytest.approx(500.0)              # both waited 0.5 s
    assert s["itl_p50_ms"] == pytest.approx(1000.0) and s["itl_p99_ms"] == pytest.approx(1000.0)
    assert s["tpot_p50_ms"] == pytest.approx(1000.0)


def test_steady_decode_is_none_when_streams_never_overlap():
    rs = [_r(0, [1, 2]), _r(2, [3, 4])]
    assert B.steady_decode(rs, 2) == (0, 0)
    assert B.summarize(rs, 4.0, 2)["steady_decode_tps"] is None
    assert B.steady_decode(rs, 1)[0] == 2                      # one stream at a time: all count


def test_token_count_falls_back_to_chunks():
    r = _r(0, [1, 2, 3])
    assert r.n_tokens == 3 and r.tpot() == pytest.approx(1.0)


# ---- prompts ------------------------------------------------------------------------------

def test_log_uniform_lengths_cover_the_range_evenly():
    ls = B.log_uniform_lengths(16, 64, 1024, seed=3)
    assert len(ls) == 16 and min(ls) >= 64 and max(ls) <= 1024
    assert ls == B.log_uniform_lengths(16, 64, 1024, seed=3) != sorted(ls)   # seeded shuffle
    # log-uniform: the geometric mean is sqrt(64 * 1024) = 256, and half are below it
    assert math.exp(np.mean(np.log(ls))) == pytest.approx(256, rel=0.02)
    assert sum(x < 256 for x in ls) == 8
    with pytest.raises(ValueError):
        B.log_uniform_lengths(4, 100, 50)


def test_prompts_have_the_asked_token_counts_and_differ(tok):
    encode, decode = tok
    lengths = [64, 100, 300, 1024]
    ps = B.make_prompts(encode, decode, lengths, seed=1)
    for p, n in zip(ps, lengths):
        assert p.tokens == len(encode(p.text))
        assert abs(p.tokens - n) <= 2, (p.tokens, n)
    firsts = {p.text.split()[0] + p.text.split()[1] for p in ps}
    assert len(firsts) == len(ps)                              # no shared opening
    assert B.make_prompts(encode, decode, lengths, seed=1) == ps


def test_shared_prefix_prompts_share_exactly_the_system_prompt(tok):
    encode, decode = tok
    prefix, ps = B.shared_prefix_prompts(encode, decode, 1000, 8, seed=0)
    assert len(ps) == 8 and len({p.text for p in ps}) == 8
    assert all(p.text.startswith(prefix) for p in ps)
    n_prefix = len(encode(prefix))
    assert 995 <= n_prefix <= 1005
    ids = [encode(p.text) for p in ps]
    common = next(i for i, (x, y) in enumerate(zip(ids[0], ids[1])) if x != y)
    assert n_prefix - 2 <= common < n_prefix + 8               # "Question 1" vs "Question 2"
    assert all(p.tokens - n_prefix < 70 for p in ps)


# ---- the client against a fake OpenAI-compatible server -----------------------------------

def test_run_streams_times_every_chunk_and_reads_usage():
    from gateway_fakes import FakeUpstream
    prompts = [B.Prompt(f"p{i}", 1) for i in range(6)]
    with FakeUpstream(tokens=5, delay_s=0.02) as up:
        results, wall = asyncio.run(B.run_streams(up.url, "k", "m", prompts, 3, 4))
        assert len(up.requests) == 6
        assert all(r["stream"] and r["max_tokens"] == 4 and r["temperature"] == 0
                   and r["stream_options"] == {"include_usage": True} for r in up.requests)
    assert [r.error for r in results] == [None] * 6
    assert all(len(r.chunk_times) == 4 and r.completion_tokens == 4 for r in results)
    s = B.summarize(results, wall, 3)
    assert s["output_tokens"] == 24
    assert 15 <= s["itl_p50_ms"] < 200 and s["ttft_p50_ms"] >= 15
    # 3 streams x 2 rounds of ~4 x 20 ms: about 2 rounds long, not 6
    assert wall < 6 * 4 * 0.02


def test_failed_requests_are_recorded_not_raised():
    from gateway_fakes import FakeUpstream
    with FakeUpstream(mode="500") as up:
        results, _ = asyncio.run(B.run_streams(up.url, "k", "m", [B.Prompt("x", 1)] * 2, 2, 4))
    assert all(r.error and "500" in r.error for r in results)


# ---- report -------------------------------------------------------------------------------

def test_markdown_and_plot(tmp_path):
    row = B.summarize([_r(0.5, [1, 2, 3, 4], tokens=4)], 4.0, 1)
    row["parallel"] = 1
    report = {"meta": {"model": "/x/m.gguf", "threads": 2, "cpu": "AMD EPYC", "command": "cmd",
                       "date": "d", "commit": "c", "min_prompt": 64, "max_prompt": 1024,
                       "max_tokens": 128, "prefix_tokens": 1000, "prefix_requests": 8},
              "levels": {"gemma4stack-p1": [row],
                         "llama-server": [{"concurrency": 1, "skipped": "no binary"}]},
              "shared_prefix": {"gemma4stack-p1": {"first_ttft_ms": 900.0, "later_ttft_ms": [50.0, 60.0],
                                                   "later_ttft_p50_ms": 55.0,
                                                   "cached_tokens": [None, 1000, 1000]}}}
    md = B.to_markdown(report)
    assert "| gemma4stack-p1 | 1 | 1 | 1.0 |" in md and "skipped: no binary" in md
    assert "| gemma4stack-p1 | 900 | 55 | 50, 60 | -, 1000, 1000 |" in md
    B.plot(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        B.parse_args(["--concurrency", "0,2"])
    with pytest.raises(SystemExit):
        B.parse_args(["--targets", "vllm"])
    a = B.parse_args(["--concurrency", "1,2", "--parallel", "4"])
    assert a.concurrency == [1, 2] and a.parallel == 4 and a.targets == list(B.TARGETS)
