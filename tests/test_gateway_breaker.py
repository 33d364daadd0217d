"""Circuit breaker transitions on an injected clock, and the routing decisions."""
from __future__ import annotations

import pytest

from gemma4stack.gateway.breaker import CircuitBreaker, State
from gemma4stack.gateway.config import parse_config
from gemma4stack.gateway.routing import (Classification, MemoryGauge, UnknownModel, classify,
                                         plan, read_memory, resolve_model)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def fail(b, n=1):
    for _ in range(n):
        b.allow().failure()


def test_opens_after_n_failures_inside_window():
    clk, changes = Clock(), []
    b = CircuitBreaker(3, 30, 30, clock=clk, on_change=lambda o, n: changes.append((o, n)))
    fail(b, 2)
    assert b.state is State.CLOSED
    clk.t += 29
    fail(b)
    assert b.state is State.OPEN and changes == [(State.CLOSED, State.OPEN)]
    assert b.allow() is None and b.retry_after() == pytest.approx(30)


def test_failures_outside_window_do_not_open():
    clk = Clock()
    b = CircuitBreaker(3, 30, 30, clock=clk)
    fail(b, 2)
    clk.t += 31                     # the first two slid out of the window
    fail(b, 2)
    assert b.state is State.CLOSED
    fail(b)
    assert b.state is State.OPEN


def test_half_open_admits_one_probe_success_closes():
    clk = Clock()
    b = CircuitBreaker(3, 30, 30, clock=clk)
    fail(b, 3)
    clk.t += 29.9
    assert b.state is State.OPEN and b.allow() is None
    clk.t += 0.1
    assert b.state is State.HALF_OPEN
    probe = b.allow()
    assert probe is not None and probe.probe
    assert b.allow() is None        # only one probe at a time
    probe.success()
    assert b.state is State.CLOSED
    t = b.allow()
    assert t is not None and not t.probe


def test_probe_failure_reopens_with_fresh_cooldown():
    clk = Clock()
    b = CircuitBreaker(3, 30, 30, clock=clk)
    fail(b, 3)
    clk.t += 30
    b.allow().failure()
    assert b.state is State.OPEN
    clk.t += 29
    assert b.state is State.OPEN
    clk.t += 1
    assert b.state is State.HALF_OPEN


def test_released_probe_frees_the_slot_and_stale_tickets_are_ignored():
    clk = Clock()
    b = CircuitBreaker(2, 30, 10, clock=clk)
    old = b.allow()                 # admitted while closed, finishes late
    fail(b, 2)
    clk.t += 10
    probe = b.allow()
    probe.release()                 # e.g. the client left: no verdict
    assert b.state is State.HALF_OPEN
    old.success()                   # a stale success must not close the breaker
    assert b.state is State.HALF_OPEN
    probe2 = b.allow()
    assert probe2 is not None and probe2.probe


# ----------------------------------------------------------------------------- routing

CFG = parse_config({"routing": {"heavy_keywords": ["contract"], "fast_keywords": ["quick"]},
                    "tiers": {n: {"backend": "openai", "url": "http://127.0.0.1:9/v1", "model": f"m-{n}"}
                              for n in ("fast", "primary", "heavy")}})


@pytest.mark.parametrize("text, total, want", [
    ("Hi, how are you?", 16, "fast"),
    ("Fix this:\n```python\ndef f(x): return x +\n```", 40, "primary"),
    ("Explain step by step why the sky is blue", 40, "heavy"),
    ("Prove that sqrt(2) is irrational", 32, "heavy"),
    ("a" * 2000, 2000, "primary"),                    # > fast_max_chars, no markers
    ("x", 9000, "heavy"),                             # whole conversation >= heavy_min_chars
    ("Review this CONTRACT clause", 27, "heavy"),      # configured keyword, case-insensitive
    ("quick: prove it step by step", 28, "fast"),      # fast keyword beats markers
])
def test_auto_classifier(text, total, want):
    assert classify(text, total, CFG.routing).tier_class == want


def test_plan_fallback_order_and_names():
    assert plan("heavy", None, CFG) == ["heavy", "primary", "fast"]
    assert plan("primary", None, CFG) == ["primary", "fast"]
    assert plan(None, Classification("heavy", ""), CFG) == ["heavy", "primary", "fast"]
    assert resolve_model("m-primary", CFG) == "primary"
    assert resolve_model("auto", CFG) is None
    with pytest.raises(UnknownModel):
        resolve_model("gpt-4", CFG)
    # missing classes go to the next smaller tier, then a bigger one
    two = parse_config({"tiers": {n: {"backend": "openai", "url": "http://h/v1", "model": n}
                                  for n in ("fast", "heavy")}})
    assert plan(None, Classification("primary", ""), two) == ["fast", "heavy"]
    assert plan(None, Classification("fast", ""), CFG) == ["fast", "primary", "heavy"]
    only_heavy = parse_config({"tiers": {"heavy": {"backend": "openai", "url": "http://h/v1", "model": "h"}}})
    assert plan(None, Classification("fast", ""), only_heavy) == ["heavy"]
    nofb = parse_config({"routing": {"fallback": False}, "tiers": CFG.to_dict()["tiers"]})
    assert plan("heavy", None, nofb) == ["heavy"]


def test_read_memory_is_cgroup_aware(tmp_path):
    """A fake /proc + /sys tree (as tests/c/test_hw.c builds): a 1 GiB cgroup v2 limit with
    512 MiB in use, 128 MiB of it inactive file cache, on a 16 GB host."""
    def put(rel, text):
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    put("proc/meminfo", "MemTotal:       16000000 kB\nMemFree:         9000000 kB\n"
                        "MemAvailable:   12000000 kB\n")
    put("proc/self/cgroup", "0::/app\n")
    put("proc/self/mountinfo", "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
                               "35 22 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n")
    put("sys/fs/cgroup/app/memory.max", "1073741824\n")
    put("sys/fs/cgroup/app/memory.current", "536870912\n")
    put("sys/fs/cgroup/app/memory.stat", "anon 100\ninactive_file 134217728\n")
    avail, total = read_memory(str(tmp_path))
    assert total == 1 << 30 and avail == (1 << 30) - (512 << 20) + (128 << 20)
    (tmp_path / "sys/fs/cgroup/app/memory.max").write_text("max\n")   # no limit: the host
    assert read_memory(str(tmp_path)) == (12000000 * 1024, 16000000 * 1024)
    # this machine: total is MemTotal (sysconf) or a smaller cgroup limit
    import os
    avail, total = read_memory()
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert total <= phys + 4096 * 16 and 0 < avail <= total


def test_memory_gauge_threshold_and_cache():
    clk, reads = Clock(), []

    def meminfo():
        reads.append(1)
        return state["avail"], 100

    state = {"avail": 50}
    g = MemoryGauge(0.90, meminfo, clk, ttl_s=0.5)
    assert not g.under_pressure()
    state["avail"] = 5
    assert not g.under_pressure()     # cached for ttl_s
    clk.t += 0.5
    assert g.under_pressure() and len(reads) == 2
    assert g.to_dict()["used_share"] == 0.95
    assert not MemoryGauge(1.0, meminfo, clk).under_pressure()   # 1 disables
