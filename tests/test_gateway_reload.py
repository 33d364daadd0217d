"""Config reload without dropping requests in flight: POST /admin/reload (admin key) on an
app over loopback, and SIGHUP to a gateway process started as `python -m
gemma4stack.gateway --config FILE`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import httpx

from gateway_fixtures import gguf  # noqa: F401 (a fixture)
from gateway_fakes import GW, HI, FakeModel, FakeUpstream, gateway_process, sse_request
from gemma4stack.gateway.config import load_config

ADMIN = {"Authorization": "Bearer sk-test-admin"}


def write(path: Path, primary_url: str, gguf: str, *, heavy_url: str | None = None,
          extra: str = ""):
    text = textwrap.dedent(f"""
        [auth]
        admin_keys = ["sk-test-admin"]

        [limits]
        requests_per_minute = 0
        tokens_per_minute = 0

        [tiers.primary]
        backend = "openai"
        url = "{primary_url}"
        model = "mid"

        [tiers.fast]
        backend = "local"
        model = "{gguf}"
        """)
    if heavy_url:
        text += f'\n[tiers.heavy]\nbackend = "openai"\nurl = "{heavy_url}"\nmodel = "big"\n'
    path.write_text(text + extra)


def test_admin_reload_keeps_streams_in_flight(tmp_path, gguf):
    loads = []

    def loader(tier):
        loads.append(tier.name)
        return FakeModel()

    with contextlib.ExitStack() as stack:
        a = stack.enter_context(FakeUpstream(name="A", tokens=20, delay_s=0.05))   # 1 s streams
        b = stack.enter_context(FakeUpstream(name="B"))
        h = stack.enter_context(FakeUpstream(name="H"))
        path = tmp_path / "gw.toml"
        write(path, a.url, gguf)
        gw = GW(stack, load_config(path), model_loader=loader)
        assert gw.chat("fast").status_code == 200 and loads == ["fast"]
        result = {}

        def long_stream():
            with httpx.Client(base_url=gw.url, timeout=10) as c:
                status, events, done, _ = sse_request(c, body={"model": "primary",
                                                                "messages": HI})
                result.update(status=status, events=events, done=done)

        t = threading.Thread(target=long_stream)
        t.start()
        t0 = time.monotonic()
        while not a.requests:
            assert time.monotonic() - t0 < 5
            time.sleep(0.01)
        assert gw.http.post("/admin/reload").status_code == 401
        write(path, b.url, gguf, heavy_url=h.url)          # primary moves to B, heavy is new
        r = gw.http.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 200, r.text
        rep = r.json()
        assert (rep["kept"], rep["replaced"], rep["added"], rep["removed"]) == \
            (["fast"], ["primary"], ["heavy"], [])
        # new requests see the new config at once; the old stream goes on on A
        assert gw.chat("primary").json()["choices"][0]["message"]["content"] == " t0 t1 t2 t3 t4"
        assert len(b.requests) == 1 and len(a.requests) == 1
        assert gw.chat("big").json()["_routing"]["tier"] == "heavy"
        assert gw.chat("fast").status_code == 200 and loads == ["fast"]   # kept: still loaded
        t.join(10)
        assert result["status"] == 200 and result["done"]
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in result["events"]
                       if e.get("choices"))
        assert text == "".join(f" t{i}" for i in range(20))
        # a broken file: 400, and the old config stays
        path.write_text("[tiers.primary]\nbackend = 'vllm'\n")
        r = gw.http.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_config"
        assert "backend must be 'local' or 'openai'" in r.json()["error"]["message"]
        assert gw.chat("heavy").status_code == 200
        # removing a tier
        write(path, b.url, gguf)
        assert gw.http.post("/admin/reload", headers=ADMIN).json()["removed"] == ["heavy"]
        assert gw.chat("heavy").status_code == 404


def test_sighup_reloads_a_running_gateway(tmp_path, gguf):
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(FakeUpstream(name="A"))
        b = stack.enter_context(FakeUpstream(name="B"))
        path = tmp_path / "gw.toml"
        write(path, a.url, gguf)
        p, url = gateway_process(stack, path, tmp_path / "port")
        chat = {"model": "primary", "messages": HI}
        assert httpx.post(url + "/v1/chat/completions", json=chat).status_code == 200
        assert len(a.requests) == 1
        write(path, b.url, gguf)
        os.kill(p.pid, signal.SIGHUP)
        t0 = time.monotonic()
        while not b.requests:
            assert time.monotonic() - t0 < 10, "SIGHUP did not reload"
            assert httpx.post(url + "/v1/chat/completions", json=chat).status_code == 200
            time.sleep(0.05)
        assert p.poll() is None                            # still serving
