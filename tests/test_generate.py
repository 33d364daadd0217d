"""Model.generate and `gemma4stack run`: reference token ids, streaming, sampling, stops.

Reference ids: ../shared/models/SOURCES.md ("Reference outputs (greedy, starting from
BOS only)"), computed there by an independent fp32 forward pass and matching llama2.c's
README output for stories260K.
"""
from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import pytest

from gemma4stack import LimitError, Model
from gemma4stack.model import GenerationStats

REF_260K = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401,
            396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433]
REF_260K_TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside "
                 "in the park")
REF_TINY = [147, 201, 282, 215, 286, 598, 1662, 356, 499, 826, 1363, 1145, 1652, 615, 242, 1482,
            951, 628, 499, 826]


@pytest.fixture(scope="module")
def m260k(models):
    return Model(models / "stories260K.gguf")


@pytest.fixture(scope="module")
def tiny(models):
    return Model(models / "TinyStories-656K-Q8_0.gguf")


# --------------------------------------------------------- reference ids


def test_stories260k_greedy_reproduces_all_30_reference_ids(m260k):
    ids = list(m260k._core.generate_iter([m260k.bos_id], 30, temperature=0.0))
    assert ids == REF_260K
    # and as text, from an empty prompt (= BOS only)
    assert m260k.generate("", max_tokens=30, temperature=0) == REF_260K_TEXT
    s = m260k.last_stats
    assert (s.prompt_tokens, s.completion_tokens, s.finish_reason) == (1, 30, "length")


def test_tinystories_q8_0_greedy_reproduces_20_reference_ids(tiny):
    """The reference came from the F32 checkpoint; the Q8_0 file still agrees on all 20."""
    ids = list(tiny._core.generate_iter([tiny.bos_id], 20, temperature=0.0))
    assert ids == REF_TINY


def test_run_cli_streams_the_continuation(models):
    r = subprocess.run(
        [sys.executable, "-m", "gemma4stack", "run", "--model", str(models / "stories260K.gguf"),
         "--prompt", "Once upon a time", "--max-tokens", "30", "--temperature", "0"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(", there was a little girl named Lily. She loved to play outside "
                               "in the park")
    # speed figures on stderr only
    for word in ("prompt 5 tokens", "TTFT", "prefill", "decode", "tokens/s"):
        assert word in r.stderr
    assert "tokens/s" not in r.stdout


def test_run_cli_reports_errors(models, tmp_path):
    r = subprocess.run([sys.executable, "-m", "gemma4stack", "run", "--model",
                        str(tmp_path / "missing.gguf"), "--prompt", "x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "missing.gguf" in r.stderr


# -------------------------------------------------------------- streaming


def test_stream_yields_the_same_text(tiny):
    full = tiny.generate("Once upon a time", max_tokens=60, temperature=0)
    pieces = list(tiny.generate("Once upon a time", max_tokens=60, temperature=0, stream=True))
    assert len(pieces) > 10 and "".join(pieces) == full
    assert full.startswith(", a little girl named Lily lived in a small house.")


def test_each_call_starts_from_an_empty_context(tiny):
    a = tiny.generate("The cat", max_tokens=20, temperature=0)
    tiny.generate("Something else first", max_tokens=7, temperature=0)
    assert tiny.generate("The cat", max_tokens=20, temperature=0) == a


def test_utf8_split_across_byte_tokens_is_emitted_whole(m260k):
    """stories260K has byte tokens <0x00>.. at ids 3..258: 'é' is <0xC3><0xA9> and '€' is
    <0xE2><0x82><0xAC>. Feed those ids through the streaming decoder: only whole characters
    come out, never a replacement character or a half sequence."""
    byte = lambda b: 3 + b  # noqa: E731
    ids = [byte(0xC3), byte(0xA9), 403, byte(0xE2), byte(0x82), byte(0xAC), byte(0x21)]

    class FakeGen:            # an engine request's interface, replaying fixed ids
        last = (1, ids[-1], 2, 1, 0, len(ids) - 1, 0.0, 1.0, 1.0, 0, 0, 0)   # the last event: length

        def tokens(self):
            return iter(ids)

        def cancel(self):
            pass

    pieces = list(m260k._pieces(FakeGen(), [m260k.bos_id], [], 0.0))
    assert "".join(pieces) == "é Once€!"
    assert pieces[0] == "é" and "€" in pieces and all("\ufffd" not in p for p in pieces)
    assert m260k.detokenize(ids) == "é Once€!"


# --------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible(tiny):
    kw = dict(max_tokens=40, temperature=1.0, top_k=40, top_p=0.95)
    a = tiny.generate("Once upon a time", seed=123, **kw)
    assert tiny.generate("Once upon a time", seed=123, **kw) == a
    others = {tiny.generate("Once upon a time", seed=s, **kw) for s in (1, 2, 3, 4)}
    assert len(others | {a}) > 1          # different seeds do sample differently


def test_top_k_1_is_greedy(tiny):
    g = tiny.generate("Once upon a time", max_tokens=30, temperature=0)
    assert tiny.generate("Once upon a time", max_tokens=30, temperature=1.5, top_k=1, seed=9) == g


# ------------------------------------------------------------------ stops


def test_stop_strings_cut_before_the_first_match(tiny):
    full = tiny.generate("Once upon a time", max_tokens=80, temperature=0)
    for stop in ("Lily", "named L", ". ", "girl named Lily lived"):   # single- and multi-token
        i = full.index(stop)
        out = tiny.generate("Once upon a time", max_tokens=80, temperature=0, stop=stop)
        assert out == full[:i], stop
        assert tiny.last_stats.finish_reason == "stop"
        streamed = "".join(tiny.generate("Once upon a time", max_tokens=80, temperature=0,
                                         stop=[stop, "zzzz"], stream=True))
        assert streamed == full[:i]
    # a stop string that never occurs changes nothing
    assert tiny.generate("Once upon a time", max_tokens=80, temperature=0, stop="qqq") == full
    assert tiny.last_stats.finish_reason == "length"


def test_eos_finishes_with_stop(tiny):
    out = tiny.generate("Once upon a time", max_tokens=500, temperature=0)
    s = tiny.last_stats
    assert s.finish_reason == "stop" and s.completion_tokens < 500, s   # the story ends
    # the EOS id itself is not returned (this model also spells "<|end_story|>" out as
    # plain text pieces just before it, which is its own doing)
    ids = list(tiny._core.generate_iter(tiny.tokenize("Once upon a time"), 500, temperature=0.0))
    assert len(ids) == s.completion_tokens and tiny.eos_id not in ids
    assert tiny.detokenize(tiny.tokenize("Once upon a time") + ids).endswith(out)


def test_closing_the_stream_cancels_generation(tiny):
    it = tiny.generate("Once upon a time", max_tokens=200, temperature=0, stream=True)
    got = [next(it) for _ in range(3)]
    it.close()
    s = tiny.last_stats
    assert s.finish_reason == "cancelled" and s.completion_tokens <= 4 and len(got) == 3
    assert tiny.generate("Once upon a time", max_tokens=5, temperature=0)   # still usable


# ------------------------------------------------------------ prefix reuse


def test_prefix_reuse_gives_the_same_text_as_a_fresh_model(models):
    """A chat-like second turn (the first prompt + its answer + more) reuses the KV blocks
    of the cached prefix (whole blocks of 32 positions, the engine's prefix cache) and
    produces exactly what a fresh model produces."""
    path = models / "TinyStories-656K-Q8_0.gguf"
    m = Model(path)
    p1 = "Once upon a time"
    a1 = m.generate(p1, max_tokens=70, temperature=0)
    assert m.last_stats.cached_tokens == 0
    p2 = p1 + a1 + " Then"
    a2 = m.generate(p2, max_tokens=25, temperature=0)
    s = m.last_stats
    assert s.prompt_tokens == len(m.tokenize(p2))
    assert s.cached_tokens >= 64 and s.cached_tokens % 32 == 0 and s.cached_tokens < s.prompt_tokens
    assert m.stats().prefix_hit_tokens >= 64
    fresh = Model(path)
    assert fresh.generate(p2, max_tokens=25, temperature=0) == a2
    assert fresh.last_stats.cached_tokens == 0
    # the same prompt again: every whole block before the last prompt token is reused
    assert m.generate(p2, max_tokens=25, temperature=0) == a2
    assert m.last_stats.cached_tokens == (s.prompt_tokens - 1) // 32 * 32
    # sampling with a seed also agrees with a fresh model
    b = m.generate(p2, max_tokens=25, seed=7)
    assert m.last_stats.cached_tokens > 0 and fresh.generate(p2, max_tokens=25, seed=7) == b


def test_logits_between_generations_leave_them_unchanged(tiny):
    a = tiny.generate("Once upon a time", max_tokens=10, temperature=0)
    tiny.logits([1, 5, 6, 7, 8, 9])            # its own single-sequence cache
    assert tiny.generate("Once upon a time", max_tokens=10, temperature=0) == a
    assert a.startswith(", a little girl named Lily")
    # the C side refuses a stale epoch outright
    with pytest.raises(RuntimeError, match="KV cache changed"):
        tiny._core.generate_iter([1, 147, 201], 5, n_keep=2, epoch=tiny._core.epoch + 12345)


# ----------------------------------------------------------------- stats


def test_stats_fields(tiny):
    tiny.generate("Once upon a time", max_tokens=16, temperature=0)
    s = tiny.last_stats
    assert isinstance(s, GenerationStats)
    assert s.prompt_tokens == len(tiny.tokenize("Once upon a time")) and s.completion_tokens == 16
    assert s.ttft_ms > 0 and s.prefill_tokens_per_s > 0 and s.decode_tokens_per_s > 0
    assert s.ttft_ms >= s.prefill_ms
    d = s.to_dict()
    assert set(d) >= {"prompt_tokens", "completion_tokens", "ttft_ms", "prefill_tokens_per_s",
                      "decode_tokens_per_s", "finish_reason"}
    assert "<table>" in s._repr_html_()


# ----------------------------------------------------------------- errors


def test_prompt_longer_than_context(models):
    m = Model(models / "stories260K.gguf", context=8)
    prompt = "Once upon a time there was a big dog"
    n = len(m.tokenize(prompt))
    assert n > 8
    with pytest.raises(LimitError, match=f"{n} tokens.*8 tokens"):
        m.generate(prompt)
    with pytest.raises(LimitError):          # raised at the call, not at the first next()
        m.generate(prompt, stream=True)


def test_context_full_ends_with_length(models):
    m = Model(models / "stories260K.gguf", context=12)
    m.generate("Once upon a time", max_tokens=100, temperature=0)
    s = m.last_stats
    # 5 prompt tokens fill positions 0..4; the last sampled token is never fed back
    assert s.finish_reason == "length" and s.prompt_tokens + s.completion_tokens == 13


def test_bad_arguments(tiny):
    for kw in (dict(max_tokens=-1), dict(temperature=-0.5), dict(top_k=-2), dict(top_p=0.0),
               dict(top_p=1.5), dict(stop=[3])):
        with pytest.raises(ValueError):
            tiny.generate("x", **kw)
    assert tiny.generate("x", max_tokens=0) == ""
    with pytest.raises(ValueError):
        tiny._core.generate_iter([1, 5000], 5)           # id outside the vocab


def test_interleaved_streams_and_logits_do_not_disturb_each_other(tiny):
    """Two streams consumed in turn (the engine decodes both in each step) and a logits()
    call in between give what each gives alone."""
    alone_a = tiny.generate("Once upon a time", max_tokens=40, temperature=0)
    alone_b = tiny.generate("The little dog", max_tokens=40, temperature=0)
    a = tiny.generate("Once upon a time", max_tokens=40, temperature=0, stream=True)
    b = tiny.generate("The little dog", max_tokens=40, temperature=0, stream=True)
    got_a, got_b = [next(a)], [next(b)]
    tiny.logits([1, 2, 3])
    for pa, pb in zip(a, b):
        got_a.append(pa)
        got_b.append(pb)
    got_a += list(a)
    got_b += list(b)
    assert "".join(got_a) == alone_a and "".join(got_b) == alone_b


def _progress_ratio(call, seconds: float = 0.3) -> float:
    """How fast a Python thread advances while `call` runs in a loop on this thread,
    relative to how fast it advances while this thread sleeps (0: frozen, ~1: unhindered)."""
    state = {"on": False, "hits": 0, "stop": False}

    def spin():
        while not state["stop"]:
            if state["on"]:
                state["hits"] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        state["on"] = True
        t0 = time.perf_counter()
        time.sleep(seconds)
        free = state["hits"] / (time.perf_counter() - t0)
        state["on"], state["hits"] = False, 0
        state["on"] = True
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            call()
        busy = state["hits"] / (time.perf_counter() - t0)
        state["on"] = False
    finally:
        state["stop"] = True
        t.join()
    return busy / free


def test_forward_releases_the_gil(models):
    """Another Python thread keeps running during the forward pass (GIL released in C).
    Control: list.sort, a C call that holds the GIL, freezes that thread except for the
    switch interval after each call."""
    m = Model(models / "TinyStories-656K-Q8_0.gguf", threads=1)
    ids = list(range(1, 500))
    data = list(range(400_000))
    random.Random(0).shuffle(data)          # ~0.1 s per sort, all with the GIL held
    held = _progress_ratio(lambda: sorted(data))
    released = _progress_ratio(lambda: m.logits(ids))
    assert held < 0.25 < released, (held, released)
