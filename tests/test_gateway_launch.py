"""launch(): the gateway as a subprocess, used through the official openai client.

Everything on 127.0.0.1. The local-tier tests run the real C core on
../shared/models/TinyStories-656K-Q8_0.gguf and compare the gateway's text with
Model.generate called directly (same prompt, seed, greedy sampling).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway_fakes import FakeUpstream
from gemma4stack.gateway import GatewayError, launch

TESTS = Path(__file__).resolve().parent


def _has_model() -> bool:
    try:
        from gemma4stack.model import Model  # noqa: F401
        return True
    except ImportError:
        return False


needs_model = pytest.mark.skipif(not _has_model(), reason="gemma4stack.model.Model not built yet")


@pytest.fixture
def up():
    with FakeUpstream(tokens=4, name="remote-m") as u:
        yield u


def _remote_cfg(url: str, **extra) -> dict:
    return {"auth": {"api_keys": ["sk-launch-secret-123"]},
            "limits": {"requests_per_minute": 0},
            "tiers": {"heavy": {"backend": "openai", "url": url, "model": "remote-m"}}, **extra}


def test_launch_remote_tier_with_openai_client(up):
    with launch(_remote_cfg(up.url), timeout=30) as gw:
        assert gw.url.startswith("http://127.0.0.1:") and gw.port > 0
        assert gw.base_url == gw.url + "/v1"
        client = gw.client(max_retries=0)
        r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == " t0 t1 t2 t3" and r.model == "remote-m"
        rt = r.model_extra["_routing"]
        assert rt["tier"] == "heavy" and rt["fallback_chain"] == "heavy" and rt["completion_tokens"] == 4
        chunks = list(client.chat.completions.create(
            model="heavy", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == " t0 t1 t2 t3" and chunks[-1].usage.completion_tokens == 4
        assert chunks[-1].model_extra["_routing"]["tier"] == "heavy"
        raw = client.completions.with_raw_response.create(model="remote-m", prompt="x", max_tokens=2)
        assert raw.headers["x-gemma4stack-tier"] == "heavy"
        assert raw.parse().choices[0].text == " t0 t1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).models.list()
        assert httpx.get(gw.url + "/health").json()["tiers"]["heavy"]["up"] is True
        assert "sk-launch-secret-123" not in gw.logs()
        # the config copy with the key is gone once the child has read it
        assert not any("sk-launch-secret-123" in f.read_text(errors="replace")
                       for f in gw.log_path.parent.iterdir() if f.is_file())
        assert "gateway on http://127.0.0.1:" in gw.logs()
        pid = gw.pid
    assert gw.proc.returncode is not None          # stopped by the context manager
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_launch_failure_reports_log_tail(up):
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(GatewayError, match=r"(?s)exited with code 1.*log tail.*in use"):
            launch(_remote_cfg(up.url), port=busy.getsockname()[1], timeout=30)
    finally:
        busy.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"    # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("in_thread", [False, True], ids=["pdeathsig", "parent-poll"])
def test_no_orphan_when_parent_is_killed(up, in_thread):
    """SIGKILL the process that called launch(): the gateway must exit by itself.

    From the main thread both PR_SET_PDEATHSIG and the parent-pid poll are armed; from
    a worker thread only the poll (PDEATHSIG would fire when that thread ends)."""
    script = textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(TESTS)!r})
        from gemma4stack.gateway import launch
        cfg = {_remote_cfg(up.url)!r}
        def go():
            gw = launch(cfg, timeout=30)
            print(gw.pid, gw.port, gw.log_path.parent, flush=True)
        if {in_thread}:
            t = threading.Thread(target=go); t.start(); t.join()
        else:
            go()
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid, port, workdir = parent.stdout.readline().split()
        pid, port = int(pid), int(port)
        assert _alive(pid)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        t0 = time.monotonic()
        while _alive(pid) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert not _alive(pid), "gateway outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if "workdir" in locals():
            shutil.rmtree(workdir, ignore_errors=True)   # its launcher died before cleanup


# ----------------------------------------------------------------------------- real model

@needs_model
def test_local_tier_tinystories_matches_model(models):
    from gemma4stack.model import Model

    gguf = models / "TinyStories-656K-Q8_0.gguf"
    prompt = "Once upon a time"
    m = Model(str(gguf))
    want = m.generate(prompt, max_tokens=24, temperature=0.0, seed=1)
    assert want                                   # the reference is not empty
    with launch(model=gguf, timeout=60) as gw:
        client = gw.client(max_retries=0)
        r = client.completions.create(model="auto", prompt=prompt, max_tokens=24,
                                      temperature=0.0, seed=1)
        assert r.choices[0].text == want
        rt = r.model_extra["_routing"]
        assert rt["tier"] == "primary" and rt["model"] == "TinyStories-656K-Q8_0"
        assert rt["completion_tokens"] == r.usage.completion_tokens == m.last_stats.completion_tokens
        assert rt["prompt_tokens"] == m.last_stats.prompt_tokens
        assert r.choices[0].finish_reason == m.last_stats.finish_reason
        pieces = list(client.completions.create(model="primary", prompt=prompt, max_tokens=24,
                                                temperature=0.0, seed=1, stream=True))
        assert "".join(p.choices[0].text for p in pieces) == want
        assert pieces[-1].model_extra["_routing"]["tier"] == "primary"
        # chat: rendered as a plain transcript (TinyStories has no chat template)
        c = client.chat.completions.create(model="primary", max_tokens=8, temperature=0.0,
                                           messages=[{"role": "user", "content": prompt}])
        ref = m.generate(f"User: {prompt}\nAssistant:", max_tokens=8, temperature=0.0)
        assert c.choices[0].message.content == ref
        stream = client.chat.completions.create(
            model="primary", max_tokens=8, temperature=0.0, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": prompt}])
        chunks = list(stream)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ref
        assert chunks[-1].model_extra["_routing"]["completion_tokens"] == chunks[-1].usage.completion_tokens
