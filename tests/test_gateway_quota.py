"""Rate limits and daily quotas in SQLite (gateway/quota.py, auth.Guard): windows and
their reset times, text vs media quotas, exact counts under 64 concurrent requests from
two processes, counts kept across a restart, 429 answers, GET /v1/usage and
`gemma4stack usage`.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway_fixtures import gguf, stack  # noqa: F401 (fixtures)
from gateway_fakes import GW, FakeUpstream, gateway_process
from gemma4stack.cli import main as cli_main
from gemma4stack.gateway.config import ConfigError, load_config, parse_config
from gemma4stack.gateway.quota import QuotaLimits, QuotaStore

T0 = 1_800_000_000.0          # 2027-01-15T08:00:00Z, a whole minute
IMG = [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                    {"type": "image_url", "image_url": {"url": "data:,"}}]}]


class Wall:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def test_windows_limits_and_reset_times(tmp_path):
    wall = Wall()
    q = QuotaStore(tmp_path / "u.sqlite3", wall=wall)
    lim = QuotaLimits(requests_per_minute=2, tokens_per_minute=100, requests_per_day=3,
                      media_requests_per_day=1, tokens_per_day=150)
    me = [("key:a", lim)]
    assert q.admit(me) is None and q.admit(me) is None
    ex = q.admit(me)
    assert (ex.what, ex.limit, ex.reset_at) == ("requests per minute", 2, T0 + 60)
    wall.t += 59.5
    assert q.admit(me).retry_after == 1.0               # at least a second
    wall.t = T0 + 60                                    # next minute
    assert q.admit(me) is None                          # 3rd text request of the day
    ex = q.admit(me)
    assert ex.what == "requests per day" and ex.reset_at == T0 // 86400 * 86400 + 86400
    assert q.admit(me, media=True) is None              # media is counted apart
    wall.t = T0 + 120
    assert q.admit(me, media=True).what == "media requests per day"
    q.charge(["key:a"], 120)                            # over tokens_per_minute after the fact
    assert q.admit(me, media=True).what == "tokens per minute"
    assert q.admit([("key:b", lim)]) is None             # another identity is unaffected
    wall.t = T0 + 180
    q.charge(["key:a"], 40)                             # 160 tokens today > 150
    assert q.admit(me, media=True).what == "tokens per day"
    wall.t = T0 + 86400                                 # a new UTC day: all reset
    assert q.admit(me) is None
    rows = q.usage(days=2)
    assert rows[0] == {"who": "key:a", "day": "2027-01-16", "requests": 1, "text_requests": 1,
                       "media_requests": 0, "tokens": 0}
    assert {(r["who"], r["day"]): (r["requests"], r["media_requests"], r["tokens"])
            for r in rows[1:]} == {("key:a", "2027-01-15"): (4, 1, 160),
                                   ("key:b", "2027-01-15"): (1, 0, 0)}
    q.close()
    with sqlite3.connect(tmp_path / "u.sqlite3") as db:       # WAL, as promised
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_refused_request_counts_for_nobody(tmp_path):
    q = QuotaStore(tmp_path / "u.sqlite3", wall=Wall())
    ip = ("ip:1.2.3.4", QuotaLimits(requests_per_minute=1))
    key = ("key:a", QuotaLimits())
    assert q.admit([key, ip]) is None
    ex = q.admit([key, ip])
    assert ex.who == "ip:1.2.3.4"
    assert {r["who"]: r["requests"] for r in q.usage()} == {"key:a": 1, "ip:1.2.3.4": 1}


_WORKER = textwrap.dedent("""
    import sys, threading, time
    from gemma4stack.gateway.quota import QuotaLimits, QuotaStore
    db, start = sys.argv[1], float(sys.argv[2])
    stores = [QuotaStore(db) for _ in range(32)]        # 32 connections in this process
    admitted = []
    def one(q):
        while time.time() < start:
            time.sleep(0.001)
        assert q.admit([("key:all", QuotaLimits())]) is None
        q.charge(["key:all"], 7)
        if q.admit([("key:capped", QuotaLimits(requests_per_day=50))]) is None:
            admitted.append(1)
    ts = [threading.Thread(target=one, args=(q,)) for q in stores]
    for t in ts: t.start()
    for t in ts: t.join()
    print(len(admitted))
""")


def test_exact_under_64_concurrent_requests_from_two_processes(tmp_path):
    db = tmp_path / "u.sqlite3"
    QuotaStore(db).close()                                 # schema made once, up front
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(db), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    admitted = sum(int(o[0]) for o in outs)
    rows = {r["who"]: r for r in QuotaStore(db).usage()}
    assert rows["key:all"]["requests"] == 64 and rows["key:all"]["tokens"] == 64 * 7
    assert admitted == 50 and rows["key:capped"]["requests"] == 50


def test_two_gateway_processes_share_exact_quotas(tmp_path, stack):
    """64 concurrent requests, half to each of two gateway processes on one database,
    against a daily quota of 50: exactly 50 are served, and the counters say so."""
    up = stack.enter_context(FakeUpstream())
    path = tmp_path / "gw.toml"
    path.write_text(textwrap.dedent(f"""
        [limits]
        requests_per_minute = 0
        tokens_per_minute = 0
        requests_per_day = 50

        [tiers.primary]
        backend = "openai"
        url = "{up.url}"
        model = "m"
        """))
    with ThreadPoolExecutor(2) as ex:                    # the two start-ups overlap
        urls = [u for _, u in ex.map(lambda i: gateway_process(stack, path, tmp_path / f"p{i}"),
                                     range(2))]
    start = threading.Barrier(64)

    client = stack.enter_context(httpx.Client(timeout=30, limits=httpx.Limits(
        max_connections=64, max_keepalive_connections=64)))

    def one(i):
        start.wait()
        return client.post(urls[i % 2] + "/v1/chat/completions", json={
            "model": "primary", "messages": [{"role": "user", "content": "hi"}]}).status_code

    with ThreadPoolExecutor(64) as ex:
        codes = Counter(ex.map(one, range(64)))
    assert codes == {200: 50, 429: 14}
    assert len(up.requests) == 50
    rows = QuotaStore(tmp_path / "gw.usage.sqlite3").usage()
    assert [(r["who"], r["requests"]) for r in rows] == [("ip:127.0.0.1", 50)]


def _cfg(tmp_path, gguf, **limits) -> Path:
    p = tmp_path / "gw.toml"
    lim = "\n".join(f"{k} = {v}" for k, v in limits.items())
    p.write_text(textwrap.dedent(f"""
        [auth]
        api_keys = ["sk-test-anon"]
        admin_keys = ["sk-test-admin"]

        [auth.keys.alice]
        key = "sk-test-alice"
        requests_per_day = 3

        [limits]
        requests_per_minute = 0
        tokens_per_minute = 0
        """) + lim + textwrap.dedent(f"""

        [limits.per_ip]
        requests_per_day = 0

        [tiers.fast]
        backend = "local"
        model = "{gguf}"
        """))
    return p


def test_quota_429_survives_restart_and_usage_reports(stack, tmp_path, gguf, capsys):
    path = _cfg(tmp_path, gguf, requests_per_day=2, media_requests_per_day=1)
    cfg = load_config(path)
    assert cfg.limits.db == str(tmp_path / "gw.usage.sqlite3")      # beside the config
    assert cfg.limits.for_key(cfg.auth.keys["alice"])["requests_per_day"] == 3
    assert cfg.limits.for_ip()["requests_per_day"] == 0
    A = {"Authorization": "Bearer sk-test-alice"}
    N = {"Authorization": "Bearer sk-test-anon"}
    with contextlib.ExitStack() as first:
        gw = GW(first, cfg.to_dict(secrets=True))
        assert [gw.chat(headers=A).status_code for _ in range(2)] == [200, 200]
        assert gw.chat(headers=A, messages=IMG).status_code == 200   # media, counted apart
        r = gw.chat(headers=A, messages=IMG)
        assert r.status_code == 429 and "1 media requests per day" in r.json()["error"]["message"]
        assert [gw.chat(headers=N).status_code for _ in range(3)] == [200, 200, 429]
    # a new gateway on the same file: the counts are still there
    gw = GW(stack, load_config(path).to_dict(secrets=True))
    assert gw.chat(headers=A).status_code == 200                     # alice's 3rd of 3
    r = gw.chat(headers=A)
    err = r.json()["error"]
    assert r.status_code == 429 and err["type"] == "rate_limit_error"
    assert err["code"] == "quota_exceeded" and set(err) == {"message", "type", "param", "code"}
    day_end = int(T0 // 86400 * 86400 + 86400)
    assert "API key 'alice'" in err["message"] and "resets at 2027-01-16T00:00:00Z" in err["message"]
    assert r.headers["x-ratelimit-reset"] == str(day_end)
    assert int(r.headers["retry-after"]) == day_end - int(T0)
    assert gw.chat(headers=N).status_code == 429
    # GET /v1/usage: admin key only
    assert gw.http.get("/v1/usage", headers=A).status_code == 401
    rows = gw.http.get("/v1/usage", headers={"Authorization": "Bearer sk-test-admin"}).json()
    keys = {r["name"]: r for r in rows["data"] if r["kind"] == "key"}
    assert keys["alice"]["requests"] == 4 and keys["alice"]["media_requests"] == 1
    # FakeModel: "User: hi\nAssistant:" 4 prompt + 6 completion tokens; the image request's
    # text part "User: what is this\nAssistant:" 6 + 6
    assert keys["alice"]["text_requests"] == 3 and keys["alice"]["tokens"] == 3 * 10 + 12
    anon = [n for n in keys if n.startswith("key-")]
    assert len(anon) == 1 and keys[anon[0]]["requests"] == 2
    assert rows["data"][0]["day"] == "2027-01-15"
    # `gemma4stack usage`
    assert cli_main(["usage", "--config", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["who"]: r["requests"] for r in out} == {"key:alice": 4, f"key:{anon[0]}": 2}
    assert cli_main(["usage", "--config", str(path), "--days", "400000"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["day", "who", "requests", "text_requests", "media_requests",
                                "tokens"]
    assert any(line.split()[1:3] == ["key:alice", "4"] for line in table[1:])


def test_per_minute_limit_resets_and_admin_disabled(stack, gguf):
    gw = GW(stack, {"limits": {"requests_per_minute": 2, "tokens_per_minute": 0},
                    "tiers": {"fast": {"backend": "local", "model": gguf}}})
    assert [gw.chat().status_code for _ in range(3)] == [200, 200, 429]
    r = gw.chat()
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["x-ratelimit-reset"] == str(int(T0) + 60)
    gw.clock.advance(60)                                 # the wall clock moves with it
    assert gw.chat().status_code == 200
    r = gw.http.get("/v1/usage")
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


@pytest.mark.parametrize("toml, msg", [
    ('[auth.keys.a]\nrequests_per_day = 1', r"\[auth.keys.a\] needs `key` or `key_env`"),
    ('[auth.keys.a]\nkey = "x"\nrpm = 1', r"unknown key 'rpm'"),
    ('[auth]\napi_keys = ["x"]\nadmin_keys = ["x"]', r"the same key appears twice"),
    ('[limits]\nrequests_per_day = -1', r"requests_per_day must be >= 0"),
    ('[limits.per_ip]\nrequests_per_hour = 1', r"\[limits.per_ip\] unknown key"),
    ('[auth]\nadmin_keys = ["sk-..."]', r"\[auth\] admin_keys holds a placeholder key"),
    ('[auth.keys.a]\nkey = "changeme"', r"\[auth\] keys holds a placeholder key"),
])
def test_quota_config_errors(tmp_path, gguf, toml, msg):
    p = tmp_path / "gw.toml"
    p.write_text(toml + f'\n[tiers.fast]\nbackend = "local"\nmodel = "{gguf}"\n')
    with pytest.raises(ConfigError, match=msg):
        load_config(p)


def test_config_round_trip_keeps_db_and_named_keys(tmp_path, gguf):
    cfg = load_config(_cfg(tmp_path, gguf, tokens_per_day=99))
    again = parse_config(json.loads(json.dumps(cfg.to_dict(secrets=True))))
    assert again.limits.db == cfg.limits.db and again.limits.tokens_per_day == 99
    assert again.auth.keys["alice"].key == "sk-test-alice"
    assert again.auth.keys["alice"].limits == {"requests_per_day": 3}
    assert "sk-test" not in json.dumps(cfg.to_dict())               # redacted dump
