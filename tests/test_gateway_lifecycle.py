"""Local models as a resource (gateway/lifecycle.py): loaded on first request, kept for
keep_alive (per [models], tier and request, with Ollama's semantics), unloaded when idle,
unloaded least-recently-used first to make room within the memory budget or the request
refused, and GET /v1/models saying which are loaded - over real HTTP with FakeModels.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from gateway_fixtures import gguf, stack  # noqa: F401 (fixtures)
from gateway_fakes import GW, HI, FakeModel
from gemma4stack.gateway.config import ConfigError, parse_config
from gemma4stack.gateway.lifecycle import parse_keep_alive

MiB = 1 << 20


@pytest.mark.parametrize("v, secs", [("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("10", 10),
                                     (0, 0), (2.5, 2.5), ("-1", -1), (-1, -1), ("-5m", -1),
                                     ("1.5h", 5400)])
def test_parse_keep_alive(v, secs):
    assert parse_keep_alive(v) == secs


@pytest.mark.parametrize("v", ["5 minutes", "m", "", "5d", True, None, [1], "nan"])
def test_parse_keep_alive_rejects(v):
    with pytest.raises(ValueError):
        parse_keep_alive(v)


class Loader:
    """model_loader that makes a FakeModel per load and remembers them."""

    def __init__(self, **kw):
        self.kw, self.loaded = kw, []

    def __call__(self, tier):
        self.loaded.append((tier.name, FakeModel(path=tier.model, **self.kw.get(tier.name, {}))))
        return self.loaded[-1][1]

    def count(self, name):
        return sum(1 for n, _ in self.loaded if n == name)


def wait(cond, what, timeout=5.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, what
        time.sleep(0.02)


def model_info(gw, tier):
    return next(m for m in gw.http.get("/v1/models").json()["data"] if m["id"] == tier)


def test_load_on_first_request_keep_alive_and_idle_unload(stack, gguf):
    loader = Loader(fast={"memory_bytes": 3 * MiB})
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf, "keep_alive": "10s"}}},
            model_loader=loader)
    info = model_info(gw, "fast")
    assert info["loaded"] is False and info["memory_bytes"] == 0 and loader.loaded == []
    assert gw.chat().status_code == 200
    info = model_info(gw, "fast")
    assert info["loaded"] is True and info["memory_bytes"] == 3 * MiB
    assert info["local_backends"][0]["keep_alive_s"] == 10
    assert 9 < info["local_backends"][0]["expires_in_s"] <= 10
    gw.clock.advance(9)
    time.sleep(0.4)                                   # the reaper runs every 0.25 s
    assert model_info(gw, "fast")["loaded"] is True
    gw.clock.advance(1.5)
    wait(lambda: not model_info(gw, "fast")["loaded"], "not unloaded after keep_alive")
    assert loader.loaded[0][1].closed                  # Model.close(): memory freed now
    assert gw.chat().status_code == 200 and loader.count("fast") == 2


def test_keep_alive_per_request_zero_and_forever(stack, gguf):
    loader = Loader()
    gw = GW(stack, {"models": {"keep_alive": "1m"},
                    "tiers": {"fast": {"backend": "local", "model": gguf}}},
            model_loader=loader)
    assert gw.chat(keep_alive=0).status_code == 200       # Ollama: unload right after
    assert model_info(gw, "fast")["loaded"] is False and loader.loaded[0][1].closed
    assert gw.chat(keep_alive=-1).status_code == 200      # keep until told otherwise
    gw.clock.advance(86400)
    time.sleep(0.4)
    assert model_info(gw, "fast")["loaded"] is True
    assert model_info(gw, "fast")["local_backends"][0]["expires_in_s"] is None
    assert gw.chat(keep_alive="2s").status_code == 200    # the latest request sets the timer
    gw.clock.advance(3)
    wait(lambda: not model_info(gw, "fast")["loaded"], "not unloaded after 2 s")
    r = gw.chat(keep_alive="soon")
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"
    assert loader.count("fast") == 2


def test_lru_unload_to_make_room_or_refuse(stack, gguf):
    size = 4 * MiB
    loader = Loader(a={"memory_bytes": size}, b={"memory_bytes": size, "delay_s": 0.15},
                    c={"memory_bytes": size})
    tiers = {n: {"backend": "local", "model": gguf} for n in "abc"}
    gw = GW(stack, {"models": {"memory_budget_bytes": size + size // 2}, "tiers": tiers},
            model_loader=loader)
    assert gw.chat("a").status_code == 200
    assert gw.chat("b").status_code == 200              # a (idle, least recent) makes room
    loaded = {t: model_info(gw, t)["loaded"] for t in "abc"}
    assert loaded == {"a": False, "b": True, "c": False}
    # b busy: nothing idle to unload, so c is refused with a clear error
    def busy_b():
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            c.post("/v1/chat/completions", json={"model": "b", "messages": HI})
    t = threading.Thread(target=busy_b)
    t.start()
    wait(lambda: gw.state.tiers["b"].pool.members[0].backend.active == 1, "b not busy")
    r = gw.chat("c")
    err = r.json()["error"]
    assert r.status_code == 503 and r.json()["_routing"]["fallback_reasons"] == {
        "c": "insufficient_memory"}
    assert "No tier could serve" in err["message"] and "models in use: b" in err["message"]
    assert "memory_budget_bytes" in err["message"]
    # c was loaded (its file looked small), measured at 4 MiB, and unloaded again
    assert loader.loaded[-1][0] == "c" and loader.loaded[-1][1].closed
    t.join(10)
    assert gw.chat("c").status_code == 200              # b idle again: unloaded for c
    assert [n for n, _ in loader.loaded] == ["a", "b", "c", "c"]
    assert {t: model_info(gw, t)["loaded"] for t in "abc"} == {"a": False, "b": False, "c": True}


def test_memory_room_from_the_cgroup_aware_figure(stack, gguf):
    """Without a byte budget, a load must keep the used share under max_memory_used."""
    loader = Loader(a={"memory_bytes": 2 << 30}, b={"memory_bytes": 2 << 30})
    tiers = {n: {"backend": "local", "model": gguf} for n in "ab"}
    gw = GW(stack, {"tiers": tiers}, model_loader=loader)
    slot = {n: gw.state.tiers[n].pool.members[0].backend for n in "ab"}
    gw.mem["avail"] = (4 << 30) + (1 << 29)           # 24 GiB total: 0.5 GiB of room at 85 %
    assert gw.chat("a").status_code == 200             # the file (~1 MiB) fits: loaded
    assert slot["a"].size_bytes == 2 << 30             # measured: Model.memory()
    slot["b"].size_bytes = 2 << 30                     # as measured on an earlier load
    r = gw.chat("b")                                   # 0.5 GiB of room: a (idle) goes
    assert r.status_code == 200 and model_info(gw, "a")["loaded"] is False
    slot["a"].size_bytes = 8 << 30
    r = gw.chat("a")                                   # 8 GiB cannot fit even with b gone
    assert r.status_code == 503 and "max_memory_used 0.85" in r.json()["error"]["message"]
    assert model_info(gw, "b")["loaded"] is False      # b was unloaded trying (LRU, idle)


def test_preload_and_load_failure(stack, gguf):
    loader = Loader()
    GW(stack, {"models": {"preload": True}, "tiers": {"fast": {"backend": "local",
                                                                "model": gguf}}},
       model_loader=loader)
    assert loader.count("fast") == 1                   # loaded by create_app

    def broken(tier):
        raise ValueError("not a GGUF")
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}}, model_loader=broken)
    r = gw.chat()
    assert r.status_code == 503
    assert r.json()["_routing"]["fallback_reasons"] == {"fast": "load_failed"}
    assert "cannot load" in r.json()["error"]["message"]


def test_models_config_errors(gguf):
    with pytest.raises(ConfigError, match=r"\[models\] keep_alive must be a duration"):
        parse_config({"models": {"keep_alive": "forever"},
                      "tiers": {"f": {"backend": "local", "model": gguf}}})
    with pytest.raises(ConfigError, match=r"\[tiers.f\] keep_alive"):
        parse_config({"tiers": {"f": {"backend": "local", "model": gguf, "keep_alive": "1y"}}})
    cfg = parse_config({"models": {"keep_alive": -1, "memory_budget_bytes": 1 << 30},
                        "tiers": {"f": {"backend": "local", "model": gguf, "keep_alive": "0"}}})
    again = parse_config({**cfg.to_dict(), "auth": {}})
    assert again.models == cfg.models and again.tiers["f"].keep_alive == "0"
