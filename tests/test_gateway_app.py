"""The gateway app over real HTTP on loopback: uvicorn in a thread, FakeModel for local
tiers, FakeUpstream servers for openai tiers that fail, hang, return 500 or cut streams.

Checks response shapes against the OpenAI API (and the official client's parser in
test_gateway_launch.py), routing metadata, fallback order, circuit breaker transitions on
an injected clock, the mid-stream error event, 503 when all tiers are down, auth, rate
limits, caps and malformed input.
"""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_fixtures import gguf, stack  # noqa: F401 (fixtures)
from gateway_fakes import GW, HI, FakeModel, FakeUpstream, free_port


def upstream(stack, mode="ok", **kw) -> FakeUpstream:
    return stack.enter_context(FakeUpstream(mode, **kw))


def three_tiers(stack, gguf, heavy="ok", primary="ok", **kw):
    h, p = upstream(stack, heavy, name="H"), upstream(stack, primary, name="P")
    tiers = {"heavy": {"backend": "openai", "url": h.url, "model": "big", "first_byte_timeout_s": 0.3},
             "primary": {"backend": "openai", "url": p.url, "model": "mid", "first_byte_timeout_s": 0.3},
             "fast": {"backend": "local", "model": gguf}}
    return GW(stack, {"tiers": tiers, **kw}), h, p


# ----------------------------------------------------------------------------- shapes

def test_chat_nonstream_local_shape_and_params(stack, gguf):
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}})
    r = gw.chat(temperature=0.5, top_p=0.9, seed=7, stop=["\n"], max_tokens=4)
    assert r.status_code == 200
    d = r.json()
    assert d["object"] == "chat.completion" and d["id"].startswith("chatcmpl-")
    assert d["model"] == "TinyStories-656K-Q8_0"
    assert d["choices"] == [{"index": 0, "message": {"role": "assistant", "content": " w0 w1 w2 w3"},
                             "logprobs": None, "finish_reason": "length"}]
    # FakeModel: one token per word + BOS; "User: hi\nAssistant:" is 3 words
    assert d["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    call = gw.model.calls[-1]
    assert call["prompt"] == "User: hi\nAssistant:"
    # the plain transcript adds the next turn's markers to the client's stop strings
    assert (call["temperature"], call["top_p"], call["seed"], call["stop"], call["max_tokens"]) \
        == (0.5, 0.9, 7, ["\n", "\nUser:", "\nSystem:", "\nAssistant:"], 4)
    rt = d["_routing"]
    assert rt["tier"] == "fast" and rt["model"] == d["model"] and rt["fallback_chain"] == "fast"
    assert (rt["prompt_tokens"], rt["completion_tokens"]) == (4, 4)
    assert 0 <= rt["ttft_ms"] <= rt["latency_ms"]
    h = r.headers
    assert h["x-gemma4stack-tier"] == "fast" and h["x-gemma4stack-fallback-chain"] == "fast"
    assert h["x-gemma4stack-completion-tokens"] == "4"
    assert float(h["x-gemma4stack-latency-ms"]) == rt["latency_ms"]


def test_chat_stream_format_usage_and_routing(stack, gguf):
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}})
    status, ev, done, headers = gw.stream(model="fast", messages=HI,
                                          stream_options={"include_usage": True})
    assert status == 200 and done
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-gemma4stack-tier"] == "fast" and float(headers["x-gemma4stack-ttft-ms"]) >= 0
    assert "x-gemma4stack-completion-tokens" not in headers     # not known when headers go
    assert {e["object"] for e in ev} == {"chat.completion.chunk"} and len({e["id"] for e in ev}) == 1
    assert ev[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in ev if e["choices"])
    assert text == " w0 w1 w2 w3 w4 w5"
    fin = ev[-2]
    assert fin["choices"][0]["finish_reason"] == "stop" and fin["choices"][0]["delta"] == {}
    last = ev[-1]
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 4, "completion_tokens": 6,
                                                        "total_tokens": 10}
    assert last["_routing"]["tier"] == "fast" and last["_routing"]["completion_tokens"] == 6
    assert all("_routing" not in e for e in ev[:-1])
    # without include_usage the finish chunk carries _routing and there is no usage chunk
    _, ev, done, _ = gw.stream(model="fast", messages=HI)
    assert done and ev[-1]["choices"][0]["finish_reason"] == "stop" and "_routing" in ev[-1]
    assert all("usage" not in e for e in ev)


def test_completions_endpoint(stack, gguf):
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}})
    r = gw.http.post("/v1/completions", json={"model": "TinyStories-656K-Q8_0",
                                              "prompt": "Once upon a time", "max_tokens": 3})
    d = r.json()
    assert r.status_code == 200 and d["object"] == "text_completion"
    assert d["choices"][0]["text"] == " w0 w1 w2" and d["choices"][0]["finish_reason"] == "length"
    assert gw.model.calls[-1]["prompt"] == "Once upon a time"      # no template for completions
    _, ev, done, _ = gw.stream("/v1/completions", model="fast", prompt="Once")
    assert done and "".join(e["choices"][0]["text"] for e in ev) == " w0 w1 w2 w3 w4 w5"
    assert ev[-1]["_routing"]["tier"] == "fast"
    models = gw.http.get("/v1/models").json()
    assert {m["id"] for m in models["data"]} == {"auto", "fast", "TinyStories-656K-Q8_0"}


def test_openai_tier_forwards_request_and_key(stack, monkeypatch):
    monkeypatch.setenv("G4_TEST_UPSTREAM_KEY", "upstream-secret")
    up = upstream(stack)
    gw = GW(stack, {"tiers": {"heavy": {"backend": "openai", "url": up.url, "model": "big",
                                        "api_key_env": "G4_TEST_UPSTREAM_KEY"}}})
    r = gw.chat("big", temperature=0.2, top_p=0.5, seed=3, stop="x", max_tokens=3,
                presence_penalty=0.5)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == " t0 t1 t2"
    assert r.json()["usage"]["completion_tokens"] == 3
    sent = up.requests[-1]
    assert sent["model"] == "big" and sent["messages"] == HI and sent["stream"] is True
    assert (sent["temperature"], sent["top_p"], sent["seed"], sent["stop"], sent["max_tokens"],
            sent["presence_penalty"]) == (0.2, 0.5, 3, ["x"], 3, 0.5)
    assert up.headers[-1]["authorization"] == "Bearer upstream-secret"
    # an upstream that ignores stream=true and answers JSON still works
    up.mode = "json"
    assert gw.chat("heavy").json()["choices"][0]["message"]["content"] == " t0 t1 t2 t3 t4"


# ----------------------------------------------------------------------------- faults

def test_fallback_order_heavy_500_primary_hang_to_fast(stack, gguf):
    gw, h, p = three_tiers(stack, gguf, heavy="500", primary="hang")
    t0 = time.monotonic()
    r = gw.chat("heavy")
    assert time.monotonic() - t0 < 3
    d = r.json()
    assert r.status_code == 200 and d["_routing"]["tier"] == "fast"
    assert d["_routing"]["fallback_chain"] == "heavy->primary->fast"
    assert d["_routing"]["fallback_reasons"] == {"heavy": "http_500", "primary": "timeout"}
    assert r.headers["x-gemma4stack-fallback-chain"] == "heavy->primary->fast"
    assert len(h.requests) == 1 and len(p.requests) == 1
    # streams fall back the same way before the first byte
    _, ev, done, headers = gw.stream(model="heavy", messages=HI)
    assert done and ev[-1]["_routing"]["fallback_chain"] == "heavy->primary->fast"
    assert headers["x-gemma4stack-fallback-chain"] == "heavy->primary->fast"


def test_breaker_opens_skips_then_half_open_probe_closes(stack, gguf):
    gw, h, p = three_tiers(stack, gguf, heavy="500")
    for i in range(3):
        assert gw.chat("heavy").json()["_routing"]["tier"] == "primary"
    assert gw.breaker("heavy") == "open" and len(h.requests) == 3
    d = gw.chat("heavy").json()                       # skipped without calling upstream
    assert d["_routing"]["fallback_reasons"] == {"heavy": "breaker_open"}
    assert len(h.requests) == 3
    health = gw.http.get("/health").json()
    assert health["tiers"]["heavy"]["up"] is False and health["tiers"]["heavy"]["breaker"] == "open"
    assert health["status"] == "ok"                   # other tiers can serve
    gw.clock.advance(29)
    assert gw.breaker("heavy") == "open"
    gw.clock.advance(1)
    assert gw.breaker("heavy") == "half_open"
    gw.clock.advance(1)                               # probe fails -> open again
    assert gw.chat("heavy").json()["_routing"]["fallback_chain"] == "heavy->primary"
    assert gw.breaker("heavy") == "open" and len(h.requests) == 4
    gw.clock.advance(30)
    h.mode = "ok"                                     # probe succeeds -> closed
    d = gw.chat("heavy").json()
    assert d["_routing"]["tier"] == "heavy" and gw.breaker("heavy") == "closed"
    m = {s.labels["tier"]: s.value for f in text_string_to_metric_families(
        gw.http.get("/metrics").text) for s in f.samples if s.name == "gemma4stack_breaker_state"}
    assert m == {"heavy": 0, "primary": 0, "fast": 0}


def test_4xx_neither_counts_nor_falls_back(stack, gguf):
    gw, h, p = three_tiers(stack, gguf, heavy="400ctx")
    for _ in range(4):
        r = gw.chat("heavy")
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert gw.breaker("heavy") == "closed" and len(p.requests) == 0
    # 429 upstream: try the next tier, but no breaker count
    h.mode = "429"
    for _ in range(4):
        assert gw.chat("heavy").json()["_routing"]["fallback_reasons"] == {"heavy": "http_429"}
    assert gw.breaker("heavy") == "closed"


def test_midstream_cut_ends_with_error_event_no_done(stack, gguf):
    gw, h, p = three_tiers(stack, gguf, heavy="cut")
    status, ev, done, _ = gw.stream(model="heavy", messages=HI)
    assert status == 200 and not done
    assert [e["choices"][0]["delta"].get("content") for e in ev[:-1]] == [" t0", " t1"]
    err = ev[-1]["error"]
    assert err["type"] == "server_error" and "heavy" in err["message"]
    assert ev[-1]["_routing"]["tier"] == "heavy"
    assert len(p.requests) == 0                       # no fallback once bytes went out
    assert gw.state.tiers["heavy"].breaker.to_dict()["recent_failures"] == 1
    h.mode = "error_event"                            # an upstream error event mid-stream
    _, ev, done, _ = gw.stream(model="heavy", messages=HI)
    assert not done and "upstream fell over" in ev[-1]["error"]["message"]
    # the same cut before anything was sent to the client (non-stream) falls back
    h.mode = "cut"
    d = gw.chat("heavy").json()
    assert d["_routing"]["fallback_chain"] == "heavy->primary"
    assert d["_routing"]["fallback_reasons"] == {"heavy": "connection"}


def test_local_model_failing_mid_stream(stack, gguf):
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}},
            model=FakeModel(fail_after=2))
    _, ev, done, _ = gw.stream(model="fast", messages=HI)
    assert not done and "fake model exploded" in ev[-1]["error"]["message"]
    assert [e["choices"][0]["delta"]["content"] for e in ev[:-1]] == [" w0", " w1"]


def test_all_down_503_with_retry_after(stack, gguf):
    dead = f"http://127.0.0.1:{free_port()}/v1"        # connection refused
    gw = GW(stack, {"tiers": {"heavy": {"backend": "openai", "url": dead, "model": "big"},
                              "fast": {"backend": "local", "model": gguf}}})
    gw.mem["avail"] = 1 << 30                          # 23/24 used > 85 %: local tiers skipped
    r = gw.chat("heavy")
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "no_tier_available"
    assert body["_routing"]["fallback_chain"] == "heavy->fast"
    assert body["_routing"]["fallback_reasons"] == {"heavy": "connect", "fast": "memory_pressure"}
    for _ in range(2):
        gw.chat("heavy")
    assert gw.breaker("heavy") == "open"
    r = gw.http.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert r.json()["tiers"]["fast"]["skipped"] == "memory_pressure"
    r = gw.chat("auto")
    assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= 30
    gw.mem["avail"] = 10 << 30                        # pressure gone: local serves again
    gw.clock.advance(1)
    assert gw.chat("auto").json()["_routing"]["tier"] == "fast"


def test_memory_pressure_routes_auto_past_local(stack, gguf):
    up = upstream(stack)
    gw = GW(stack, {"tiers": {"primary": {"backend": "openai", "url": up.url, "model": "mid"},
                              "fast": {"backend": "local", "model": gguf}},
                    "routing": {"order": ["primary", "fast"]}})
    assert gw.chat("auto").json()["_routing"]["tier"] == "fast"
    gw.mem["avail"] = 2 << 30                          # 22/24 = 92 % used > 85 %
    gw.clock.advance(1)
    d = gw.chat("auto").json()["_routing"]
    # "hi" is short -> fast, which is local and skipped; auto then tries bigger tiers
    assert d["tier"] == "primary" and d["fallback_chain"] == "fast->primary"
    assert d["fallback_reasons"] == {"fast": "memory_pressure"}
    # a request naming the local tier only falls back downwards: nothing left -> 503
    r = gw.chat("fast")
    assert r.status_code == 503 and r.json()["_routing"]["fallback_reasons"] == {"fast": "memory_pressure"}


def test_memory_threshold_default_85_percent_used_in_routing(stack, gguf):
    up = upstream(stack)
    gw = GW(stack, {"tiers": {"primary": {"backend": "openai", "url": up.url, "model": "mid"},
                              "fast": {"backend": "local", "model": gguf}},
                    "routing": {"order": ["primary", "fast"]}})
    gw.mem["avail"] = 4 << 30                          # 20/24 = 83.3 % used: under 85 %
    d = gw.chat("auto").json()["_routing"]
    assert d["tier"] == "fast"
    assert d["memory"] == {"available_bytes": 4 << 30, "total_bytes": 24 << 30,
                           "used_share": 0.8333, "max_used": 0.85, "pressure": False}
    gw.mem["avail"] = (7 << 30) // 2                   # 20.5/24 = 85.4 % used: over
    gw.clock.advance(1)
    d = gw.chat("auto").json()["_routing"]
    assert d["tier"] == "primary" and d["fallback_reasons"] == {"fast": "memory_pressure"}
    assert d["memory"]["pressure"] is True and d["memory"]["used_share"] == 0.8542
    assert "memory" not in gw.chat("primary").json()["_routing"]   # no local tier considered
    # the threshold is configurable; the older min_available_memory still reads
    gw2 = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}},
                     "routing": {"max_memory_used": 0.9}})
    gw2.mem["avail"] = (7 << 30) // 2
    assert gw2.chat("fast").json()["_routing"]["memory"]["pressure"] is False
    from gemma4stack.gateway.config import parse_config
    old = parse_config({"tiers": {"f": {"backend": "local", "model": gguf}},
                        "routing": {"min_available_memory": 0.2}})
    assert old.routing.max_memory_used == 0.8


def test_local_queue_full_503_and_parallel_bound(stack, gguf):
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf, "queue_size": 1}}},
            model=FakeModel(delay_s=0.1, story=8))   # 0.8 s each
    results = []

    def call():
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post("/v1/chat/completions", json={"model": "fast", "messages": HI})
            results.append((r.status_code, r.headers.get("retry-after"), r.json()))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    codes = sorted(c for c, _, _ in results)
    assert codes == [200, 200, 503, 503]                 # parallel 1 running + 1 queued
    for code, ra, body in results:
        if code == 503:
            assert int(ra) >= 1 and body["_routing"]["fallback_reasons"] == {"fast": "queue_full"}
    assert gw.model.finished == 2 and gw.model.max_active == 1


def test_local_tier_parallel_runs_requests_together(stack, gguf):
    """parallel = 3: three requests generate at once (the engine batches them), a fourth
    waits in the queue and is served after; the tier's engine keys are parsed."""
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf, "queue_size": 1,
                                       "parallel": 3, "kv_cache": "q8_0", "batch_tokens": 64}}},
            model=FakeModel(delay_s=0.05, story=8, parallel=3))
    results = []

    def call():
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post("/v1/chat/completions", json={"model": "fast", "messages": HI})
            results.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    assert sorted(results) == [200, 200, 200, 200, 503]
    assert gw.model.max_active == 3 and gw.model.finished == 4
    t = gw.cfg.tiers["fast"]
    assert (t.parallel, t.kv_cache, t.batch_tokens, t.kv_bytes) == (3, "q8_0", 64, None)
    assert t.to_dict()["parallel"] == 3


def test_client_disconnect_cancels_local_generation(stack, gguf):
    model = FakeModel(delay_s=0.02, story=500)
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}}, model=model)
    with gw.http.stream("POST", "/v1/chat/completions",
                        json={"model": "fast", "messages": HI, "stream": True}) as r:
        lines = r.iter_lines()
        got = [ln for ln, _ in zip(lines, range(6))]
    assert any(ln.startswith("data: ") for ln in got)
    t0 = time.monotonic()
    while model.closed_early < 1 and time.monotonic() - t0 < 3:
        time.sleep(0.01)
    assert model.closed_early == 1 and model.finished == 0
    # a non-stream request whose client gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", json={"model": "fast", "messages": HI},
                   timeout=0.3)
    t0 = time.monotonic()
    while model.closed_early < 2 and time.monotonic() - t0 < 3:
        time.sleep(0.01)
    assert model.closed_early == 2
    assert gw.state.tiers["fast"].breaker.state.value == "closed"   # not a failure
    model.story = 3
    assert gw.chat("fast").status_code == 200          # the worker is free again


def test_local_context_length_is_a_client_error(stack, gguf):
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}},
            model=FakeModel(n_ctx=8))
    r = gw.chat("fast", messages=[{"role": "user", "content": "word " * 20}])
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert gw.breaker("fast") == "closed"
    r = gw.chat("fast", max_tokens=100)                # clipped to the room left: 8 - 4 - 1
    assert r.json()["usage"]["completion_tokens"] == 3 and gw.model.calls[-1]["max_tokens"] == 3


# ----------------------------------------------------------------------------- security

def test_auth_required_everywhere_but_health(stack, gguf, caplog):
    key = "sk-test-9f8e7d6c5b4a"
    gw = GW(stack, {"auth": {"api_keys": ["sk-other-key", key]},
                    "tiers": {"fast": {"backend": "local", "model": gguf}}})
    caplog.set_level("DEBUG")
    r = gw.chat()
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert r.json()["error"]["type"] == "authentication_error"
    r = gw.chat(headers={"Authorization": "Bearer sk-test-9f8e7d6c5b4b"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for path in ("/v1/models", "/metrics"):
        assert gw.http.get(path).status_code == 401
        assert gw.http.get(path, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert gw.http.get("/health").status_code == 200
    ok = gw.chat(headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    assert key not in caplog.text and "sk-test-9f8e7d6c5b4b" not in caplog.text


def test_rate_limits_per_key_per_ip_and_tokens(stack, gguf):
    gw = GW(stack, {"auth": {"api_keys": ["ka", "kb"]},
                    "limits": {"requests_per_minute": 2, "tokens_per_minute": 0},
                    "tiers": {"fast": {"backend": "local", "model": gguf}}})
    A, B = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kb"}
    assert gw.chat(headers=A).status_code == 200
    assert gw.chat(headers=B).status_code == 200
    r = gw.chat(headers=B)                             # B's 2nd, but the IP's 3rd
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert "client IP" in r.json()["error"]["message"]
    # tokens per minute: FakeModel spends 4 prompt + 6 completion = 10 per request
    gw2 = GW(stack, {"limits": {"requests_per_minute": 0, "tokens_per_minute": 15},
                     "tiers": {"fast": {"backend": "local", "model": gguf}}})
    assert gw2.chat().status_code == 200               # 10 charged after it finishes
    assert gw2.chat().status_code == 200               # 20 charged: over the budget
    r = gw2.chat()
    assert r.status_code == 429 and "tokens per minute" in r.json()["error"]["message"]


def test_default_limit_is_30_requests_per_minute(stack, gguf):
    gw = GW(stack, {"limits": {}, "tiers": {"fast": {"backend": "local", "model": gguf}}})
    codes = [gw.http.post("/v1/completions", json={"model": "fast", "prompt": "a",
                                                   "max_tokens": 1}).status_code
             for _ in range(31)]
    assert codes == [200] * 30 + [429]


def test_oversized_and_malformed_bodies(stack, gguf):
    gw = GW(stack, {"server": {"max_body_bytes": 1000, "max_messages": 3, "max_tokens": 64},
                    "tiers": {"fast": {"backend": "local", "model": gguf}}})

    def err(r, status):
        assert r.status_code == status, r.text
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"}
        return e

    big = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "x" * 2000}]})
    assert err(gw.http.post("/v1/chat/completions", content=big,
                            headers={"content-type": "application/json"}), 413)["code"] \
        == "request_too_large"

    def chunked():                                     # no Content-Length: counted while read
        for i in range(0, len(big), 100):
            yield big[i:i + 100].encode()
    assert err(gw.http.post("/v1/chat/completions", content=chunked()), 413)["code"] \
        == "request_too_large"
    assert err(gw.http.post("/v1/chat/completions", content=b"{nope"), 400)["code"] == "invalid_json"
    assert err(gw.http.post("/v1/chat/completions", json=[1, 2]), 400)["code"] == "invalid_json"
    e = err(gw.http.post("/v1/chat/completions", json={"model": "fast"}), 400)
    assert e["param"] == "messages" and e["code"] == "missing_required_parameter"
    assert err(gw.chat(temperature=5), 400)["param"] == "temperature"
    assert err(gw.chat(max_tokens="12"), 400)["param"] == "max_tokens"
    assert err(gw.chat(max_tokens=65), 400)["param"] == "max_tokens"
    assert err(gw.chat(messages=HI * 4), 400)["param"] == "messages"
    assert err(gw.chat(messages=[{"role": "wizard", "content": "x"}]), 400)["param"] == "messages[0].role"
    assert err(gw.chat(n=17), 400)["param"] == "n"            # n <= 16 (local tiers run n > 1)
    assert err(gw.chat(stream="yes"), 400)["param"] == "stream"
    e = err(gw.chat("gpt-4"), 404)
    assert e["code"] == "model_not_found" and e["param"] == "model"
    assert err(gw.http.get("/v1/nothing"), 404)["type"] == "invalid_request_error"
    assert err(gw.http.get("/v1/chat/completions"), 405)
    m = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(
        gw.http.get("/metrics").text) for s in f.samples if s.name == "gemma4stack_rejections_total"}
    assert m[(("reason", "body_too_large"),)] == 2 and m[(("reason", "invalid"),)] >= 9


def test_metrics_count_requests_tokens_latency(stack, gguf):
    gw, h, p = three_tiers(stack, gguf, heavy="500")
    gw.chat("heavy")
    gw.chat("fast")
    fams = {f.name: f for f in text_string_to_metric_families(gw.http.get("/metrics").text)}
    val = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert val[("gemma4stack_requests_total", (("endpoint", "chat"), ("status", "200"), ("tier", "primary")))] == 1
    assert val[("gemma4stack_requests_total", (("endpoint", "chat"), ("status", "200"), ("tier", "fast")))] == 1
    assert val[("gemma4stack_errors_total", (("kind", "http_500"), ("tier", "heavy")))] == 1
    assert val[("gemma4stack_tokens_total", (("kind", "completion"), ("tier", "fast")))] == 6
    assert val[("gemma4stack_tokens_total", (("kind", "prompt"), ("tier", "primary")))] == 3
    assert val[("gemma4stack_request_latency_seconds_count", (("tier", "fast"),))] == 1
    assert val[("gemma4stack_ttft_seconds_count", (("tier", "primary"),))] == 1
    assert val[("gemma4stack_breaker_state", (("tier", "heavy"),))] == 0


def test_fastapi_validation_errors_become_openai_400(stack, gguf):
    """FastAPI's own RequestValidationError (422 by default) is answered as a 400 error object."""
    import asyncio
    from fastapi.exceptions import RequestValidationError
    from starlette.requests import Request

    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}})
    handler = gw.app.exception_handlers[RequestValidationError]
    exc = RequestValidationError([{"type": "int_parsing", "loc": ("query", "limit"),
                                   "msg": "Input should be a valid integer", "input": "x"}])
    req = Request({"type": "http", "method": "GET", "path": "/v1/models", "headers": [],
                   "query_string": b"limit=x"})
    resp = asyncio.run(handler(req, exc))
    assert resp.status_code == 400
    err = json.loads(resp.body)["error"]
    assert err == {"message": "Invalid value for 'limit': Input should be a valid integer",
                   "type": "invalid_request_error", "param": "limit", "code": "invalid_value"}


def test_upstream_restart_does_not_fail_on_stale_keepalive(stack, gguf):
    """A pooled keep-alive connection to an upstream that restarted is dropped, not used."""
    up = FakeUpstream(name="A").start()
    port = up.port
    gw = GW(stack, {"tiers": {"heavy": {"backend": "openai", "url": up.url, "model": "big"},
                              "fast": {"backend": "local", "model": gguf}}})
    assert gw.chat("heavy").json()["_routing"]["tier"] == "heavy"
    up.stop()                                          # closes its end of the idle connection
    up2 = stack.enter_context(FakeUpstream(name="B", port=port))
    time.sleep(0.05)
    for _ in range(3):
        d = gw.chat("heavy").json()
        assert d["_routing"]["fallback_chain"] == "heavy" and d["model"] == "big"
    assert len(up2.requests) == 3


class ChatModel(FakeModel):
    """A FakeModel with a chat template: the gateway must hand it the messages."""
    chat_template = "{% for m in messages %}...{% endfor %}"

    def chat(self, messages, stream=False, **kw):
        self.calls.append(dict(messages=messages, **kw))
        gen = self._gen("chat", kw.get("max_tokens", 128))
        return gen if stream else "".join(gen)


def test_local_chat_template_used_when_the_model_has_one(stack, gguf):
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf},
                              "raw": {"backend": "local", "model": gguf,
                                      "chat_template": "raw", "id": "tiny-raw"}}},
            model=ChatModel())
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    r = gw.chat("fast", messages=msgs, max_tokens=3, seed=5)
    assert r.json()["choices"][0]["message"]["content"] == " w0 w1 w2"
    assert gw.model.calls[-1] == {"messages": msgs, "max_tokens": 3, "seed": 5}
    # chat_template = "raw": the contents joined, through generate(), no template
    gw.chat("raw", messages=msgs)
    assert gw.model.calls[-1]["prompt"] == "Be brief.\nhi"


def test_unexpected_error_is_a_500_error_object_and_the_gateway_lives_on(stack, gguf, monkeypatch):
    """A bug in the generation path (here: routing.plan raising) is answered with an OpenAI
    error object, not a dropped connection; the next request is served."""
    from gemma4stack.gateway import routing
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}})
    real = routing.plan
    monkeypatch.setattr(routing, "plan", lambda *a: 1 / 0)
    r = gw.chat("fast")
    assert r.status_code == 500
    assert r.json()["error"] == {"message": "Internal gateway error: ZeroDivisionError",
                                 "type": "server_error", "param": None, "code": None}
    monkeypatch.setattr(routing, "plan", real)
    assert gw.chat("fast").status_code == 200


def test_client_gone_before_its_body_arrived(stack, gguf):
    """A client that sends headers, half a body and hangs up costs nothing: no answer is
    attempted and the next request is served."""
    import socket
    gw = GW(stack, {"tiers": {"fast": {"backend": "local", "model": gguf}}})
    host, port = gw.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-type: application/json\r\ncontent-length: 500\r\n\r\n{\"model\":")
        time.sleep(0.1)
    time.sleep(0.1)
    assert gw.chat("fast").status_code == 200
    assert gw.model.calls == [gw.model.calls[0]]       # only the second request generated
