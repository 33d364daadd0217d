"""Gateway overhead and resilience, all on 127.0.0.1.

    python benchmarks/bench_gateway.py [--concurrency 64] [--duration 20] [--rounds 4] [--tokens 16]
                                       [--delay 0.02] [--soak 600] [--chaos-every 20]
                                       [--backends 3]

    # issue 17's target: three backends in one tier, one killed every 20 s for 10 min
    python benchmarks/bench_gateway.py --backends 3 --concurrency 32 --soak 600 --chaos-every 20

1. Overhead: `concurrency` clients stream chat completions in a loop, straight to a fake
   OpenAI-compatible backend (tests/gateway_fakes.py in its own process: `tokens` pieces,
   `delay` s apart) and through the gateway (launch(), in its own process) to the same
   backend, in `rounds` alternating phases. Added latency = gateway percentile - direct
   percentile, for the time to the first token (TTFT) and for the whole stream; plus
   requests/s.
   With --backends N > 1 there are N fake backends: direct clients are spread over them
   round-robin, the gateway's tier has them as `backends = [...]` (gateway/pool.py).
2. Soak (--soak S): the same load through a gateway with two remote tiers (heavy ->
   primary), or with --backends N > 1 one tier of N backends, for S seconds while one
   backend at a time is SIGKILLed and restarted 2 s later every `chaos-every` s. Every
   request must end with [DONE], an SSE error event (a stream cut by the kill) or an HTTP
   error; "lost" = none of these (the stream or connection just ended), "hung" = no byte for
   --idle-timeout (30) s. The gateway's RSS is sampled throughout.

--engine llama_cpp: the backends are real llama.cpp engines, llama_cpp.server processes
(llama-cpp-python, `make peerdeps` or the `peers` extra) serving --gguf (default the shared
stories260K.gguf: tiny, so the engines do not swamp 2 cores), one model and one thread each,
--interrupt_requests False (its default cuts a stream short with [DONE] whenever another
request waits). A llama_cpp.server runs one request at a time and queues the rest, so with
32 clients on 3 engines the time to the first token is mostly queueing, on both paths alike.
TTFT is the first event with text in both paths (llama_cpp.server sends a role-only chunk
first, the gateway does not forward it).

Added latency on real engines: the overhead phase (same engines, no kills, before the soak)
with --overhead-concurrency 3, one client per engine, so that nothing queues and the TTFT
difference is the gateway's (at 32 clients it is mostly the engines' queueing noise).

    # issue 17's soak on real engines
    python benchmarks/bench_gateway.py --engine llama_cpp --backends 3 --concurrency 32 \
        --overhead-concurrency 3 --duration 60 --soak 600 --chaos-every 20

The client is a minimal asyncio HTTP/1.1 client (keep-alive, chunked, SSE) so that it
costs the same on both paths. Prints a JSON summary and a Markdown block for RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gemma4stack.gateway import launch  # noqa: E402

BODY = json.dumps({"model": "MODEL", "messages": [{"role": "user", "content": "Tell me a story"}],
                   "stream": True, "max_tokens": 64})


# ----------------------------------------------------------------------------- backends

ENGINE = {"kind": "fake", "gguf": None, "n_ctx": 256}   # set from --engine, --gguf, --n-ctx


def start_backend(tokens: int, delay: float, port: int = 0) -> tuple[subprocess.Popen, int]:
    """A backend process on 127.0.0.1:`port` (0: a free one): the fake of tests/gateway_fakes.py
    (`tokens` pieces `delay` s apart), or with --engine llama_cpp a llama_cpp.server.
    Returns (process, port) once it answers."""
    if ENGINE["kind"] == "llama_cpp":
        return start_llama_server(port)
    pf = tempfile.mktemp(prefix="g4fake-")
    p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gateway_fakes.py"), "--port-file", pf,
                          "--tokens", str(tokens), "--delay", str(delay), "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not os.path.exists(pf):
        if p.poll() is not None or time.monotonic() - t0 > 20:
            raise RuntimeError("fake backend did not start")
        time.sleep(0.02)
    port = int(open(pf).read())
    os.unlink(pf)
    return p, port


def start_llama_server(port: int = 0, timeout: float = 120) -> tuple[subprocess.Popen, int]:
    """llama_cpp.server (llama-cpp-python's OpenAI-compatible server) on 127.0.0.1:`port`
    serving ENGINE["gguf"] as model "fake", one thread; returns once GET /v1/models is 200.
    Raises RuntimeError if it exits or does not answer within `timeout` s."""
    import socket
    import urllib.request
    if not port:
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            port = so.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", ENGINE["gguf"],
                          "--model_alias", "fake", "--host", "127.0.0.1", "--port", str(port),
                          "--n_ctx", str(ENGINE["n_ctx"]), "--n_threads", "1",
                          "--n_threads_batch", "1", "--interrupt_requests", "False",
                          "--verbose", "False"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if p.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {p.returncode} (is llama-cpp-python "
                               f"installed? make peerdeps)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as r:
                if r.status == 200:
                    return p, port
        except OSError:
            time.sleep(0.1)
    p.kill()
    p.wait()
    raise RuntimeError(f"llama_cpp.server on port {port} did not answer within {timeout:g} s")


def engine_tier_keys() -> dict:
    """Tier keys the engine needs: llama_cpp.server has no /health, and its /v1/models waits
    for the model lock (behind every queued generation), so its liveness check is /docs."""
    return {"health_path": "/docs"} if ENGINE["kind"] == "llama_cpp" else {}


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds (/proc/PID/stat fields 14, 15; proc(5))."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def cpu_s(pid: int) -> float:
    return sum(cpu_times(pid))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ----------------------------------------------------------------------------- client

class Result:
    __slots__ = ("ok", "kind", "ttft", "total")

    def __init__(self, ok, kind, ttft, total):
        self.ok, self.kind, self.ttft, self.total = ok, kind, ttft, total


IDLE_TIMEOUT = 30.0   # seconds without a byte before a request counts as hung; --idle-timeout


class Hung(Exception):
    """No byte arrived for IDLE_TIMEOUT s."""


async def _idle(aw):
    try:
        return await asyncio.wait_for(aw, IDLE_TIMEOUT)
    except asyncio.TimeoutError:
        raise Hung from None


def _has_text(ev: bytes) -> bool:
    """Whether an SSE data event carries generated text (a role-only or empty first chunk,
    as llama_cpp.server sends before its first token, does not)."""
    try:
        choices = json.loads(ev[6:]).get("choices") or [{}]
    except ValueError:
        return False
    c = choices[0]
    return bool(c.get("text") or (c.get("delta") or {}).get("content"))


async def one_request(reader, writer, host: str, path: str, body: bytes) -> Result:
    t0 = time.perf_counter()
    writer.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (path.encode(), host.encode(), len(body), body))
    head = await _idle(reader.readuntil(b"\r\n\r\n"))
    status = int(head.split(b" ", 2)[1])
    hl = head.lower()
    if b"content-length:" in hl:
        n = int(hl.split(b"content-length:")[1].split(b"\r\n")[0])
        await _idle(reader.readexactly(n))
        return Result(False, f"http_{status}", None, time.perf_counter() - t0)
    ttft, buf, kind = None, b"", "broken"
    while True:
        size = int((await _idle(reader.readuntil(b"\r\n"))).strip(), 16)
        if size == 0:
            await _idle(reader.readuntil(b"\r\n"))
            break
        data = await _idle(reader.readexactly(size + 2))
        buf += data[:-2]
        if b"\r" in buf:                      # sse-starlette (llama_cpp.server) ends lines with CRLF
            buf = buf.replace(b"\r\n", b"\n")
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if ev == b"data: [DONE]":
                kind = "done"
            elif ev.startswith(b'data: {"error"'):
                kind = "stream_error"
            elif ttft is None and ev.startswith(b"data: ") and _has_text(ev):
                ttft = time.perf_counter() - t0
    return Result(kind == "done", kind, ttft, time.perf_counter() - t0)


async def worker(port: int, path: str, model: str, deadline: float, out: list,
                 stagger: float = 0.0):
    body = BODY.replace("MODEL", model).encode()
    reader = writer = None
    await asyncio.sleep(random.uniform(0, stagger))   # spread the streams' phases
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            r = await one_request(reader, writer, "127.0.0.1", path, body)
        except Hung:
            r = Result(False, "hung", None, IDLE_TIMEOUT)
            writer.close()
            writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            r = Result(False, "connection", None, 0.0)
            if writer:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
        out.append(r)
        if r.kind in ("broken", "stream_error") and writer is not None:
            writer.close()
            writer = None
    if writer:
        writer.close()


STAGGER = 0.0   # seconds; set from --stagger


async def run_load(port: int | list[int], path: str, model: str, conc: int,
                   seconds: float) -> tuple[list[Result], float]:
    """`conc` workers for `seconds`; with a list of ports, worker i uses port i mod len."""
    out: list[Result] = []
    ports = port if isinstance(port, list) else [port]
    t0 = time.monotonic()
    await asyncio.gather(*(worker(ports[i % len(ports)], path, model, t0 + seconds, out,
                                  STAGGER) for i in range(conc)))
    return out, time.monotonic() - t0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def summarize(res: list[Result], elapsed: float) -> dict:
    ok = [r for r in res if r.ok]
    ttft = [r.ttft for r in ok]
    tot = [r.total for r in ok]
    kinds: dict = {}
    for r in res:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    return {"requests": len(res), "ok": len(ok), "outcomes": kinds, "rps": len(ok) / elapsed,
            "ttft_p50_ms": pct(ttft, 50) * 1e3, "ttft_p99_ms": pct(ttft, 99) * 1e3,
            "total_p50_ms": pct(tot, 50) * 1e3, "total_p99_ms": pct(tot, 99) * 1e3,
            "total_mean_ms": statistics.fmean(tot) * 1e3 if tot else float("nan")}


# ----------------------------------------------------------------------------- phases

def overhead(args) -> dict:
    """Direct and gateway phases alternate (`rounds` pairs of duration/rounds s each, after a
    2 s warm-up of each path), so that drift in the machine's load lands on both paths;
    percentiles are taken over all requests of all rounds of a path."""
    started = [start_backend(args.tokens, args.delay) for _ in range(max(1, args.backends))]
    bes, port = [b for b, _ in started], [p for _, p in started]
    urls = [f"http://127.0.0.1:{p}/v1" for p in port]
    tier = ({"backend": "openai", "url": urls[0], "model": "fake"} if len(urls) == 1 else
            {"model": "fake", "backends": urls})
    tier.update(engine_tier_keys())
    cfg = {"server": {"access_log": args.access_log, "log_level": "warning"},
           "limits": {"requests_per_minute": 0, "tokens_per_minute": 0},
           "tiers": {"heavy": tier}}
    phase = args.duration / args.rounds
    conc = args.overhead_concurrency or args.concurrency
    try:
        with launch(cfg, timeout=60) as gw:
            asyncio.run(run_load(port, "/v1/chat/completions", "fake", conc, 2))
            asyncio.run(run_load(gw.port, "/v1/chat/completions", "heavy", conc, 2))
            d, g, de, ge = [], [], 0.0, 0.0
            cpu = {"gateway_user": 0.0, "gateway_sys": 0.0, "backend": 0.0, "client": 0.0}
            for _ in range(args.rounds):
                r, el = asyncio.run(run_load(port, "/v1/chat/completions", "fake", conc, phase))
                d += r
                de += el
                (u0, s0), b0, m0 = cpu_times(gw.pid), sum(map(cpu_s, (b.pid for b in bes))), os.times()
                r, el = asyncio.run(run_load(gw.port, "/v1/chat/completions", "heavy", conc,
                                             phase))
                (u1, s1), b1, m1 = cpu_times(gw.pid), sum(map(cpu_s, (b.pid for b in bes))), os.times()
                g += r
                ge += el
                cpu["gateway_user"] += u1 - u0
                cpu["gateway_sys"] += s1 - s0
                cpu["backend"] += b1 - b0
                cpu["client"] += m1.user + m1.system - m0.user - m0.system
            direct, via = summarize(d, de), summarize(g, ge)
            n = max(1, len(g))
            via["cpu_ms_per_request"] = {k: v * 1e3 / n for k, v in cpu.items()}
            via["gateway_cpu_share"] = (cpu["gateway_user"] + cpu["gateway_sys"]) / ge
    finally:
        for be in bes:
            be.kill()
            be.wait()
    added = {k: via[k] - direct[k] for k in ("ttft_p50_ms", "ttft_p99_ms", "total_p50_ms",
                                             "total_p99_ms")}
    return {"concurrency": conc, "direct": direct, "gateway": via, "added": added}


def soak(args) -> dict:
    pooled = args.backends > 1
    names = [f"b{i}" for i in range(args.backends)] if pooled else ["heavy", "primary"]
    procs = {n: list(start_backend(args.tokens, args.delay)) for n in names}
    # a llama_cpp.server sends its headers at once and then nothing while the request waits
    # for the engine (one at a time): allow that silence, under the clients' idle timeout
    timeouts = {"connect_timeout_s": 1,
                "first_byte_timeout_s": 5 if ENGINE["kind"] == "fake" else IDLE_TIMEOUT - 5}
    if pooled:       # one tier of N backends, checked every second
        tiers = {"heavy": {"model": "fake", "health_interval_s": 1, "health_timeout_s": 1,
                           **timeouts, **engine_tier_keys(), "backends": [
                               {"url": f"http://127.0.0.1:{p}/v1", "name": n}
                               for n, (_, p) in procs.items()]}}
    else:
        tiers = {n: {"backend": "openai", "url": f"http://127.0.0.1:{p}/v1", "model": "fake",
                     **timeouts, **engine_tier_keys()} for n, (_, p) in procs.items()}
    cfg = {"server": {"access_log": False, "log_level": "warning"},
           "limits": {"requests_per_minute": 0, "tokens_per_minute": 0},
           "breaker": {"failures": 3, "window_s": 10, "cooldown_s": 3},
           "tiers": tiers}
    rss, kills = [], 0
    with launch(cfg, timeout=60) as gw:
        asyncio.run(run_load(gw.port, "/v1/chat/completions", "heavy", args.concurrency, 5))
        rss.append((0.0, rss_kb(gw.pid)))

        async def chaos(t_end):
            nonlocal kills
            victim = 0
            t0 = time.monotonic()
            while time.monotonic() + args.chaos_every < t_end:
                await asyncio.sleep(args.chaos_every)
                rss.append((time.monotonic() - t0, rss_kb(gw.pid)))
                name = names[victim % len(names)]
                p, port = procs[name]
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
                await asyncio.sleep(2.0)               # down for 2 s, then back on its port
                procs[name] = [await asyncio.to_thread(
                    lambda: start_backend(args.tokens, args.delay, port)[0]), port]
                victim += 1

        async def main():
            t_end = time.monotonic() + args.soak
            load = asyncio.create_task(run_load(gw.port, "/v1/chat/completions", "heavy",
                                                args.concurrency, args.soak))
            await chaos(t_end)
            return await load

        res, el = asyncio.run(main())
        rss.append((args.soak, rss_kb(gw.pid)))
        health = gw.health()
    for p, _ in procs.values():
        p.kill()
        p.wait()
    s = summarize(res, el)
    lost = sum(1 for r in res if r.kind in ("broken", "connection"))
    hung = sum(1 for r in res if r.kind == "hung")
    out = {"summary": s, "kills": kills, "lost": lost, "hung": hung, "lost_or_hung": lost + hung,
           "error_events": sum(1 for r in res if r.kind == "stream_error"),
           "http_errors": sum(1 for r in res if r.kind.startswith("http_")),
           "rss_kb": rss, "rss_growth_kb": rss[-1][1] - rss[0][1],
           "breakers_at_end": {t: v["breaker"] for t, v in health["tiers"].items()}}
    if pooled:
        out["backends_at_end"] = {b["name"]: {k: b[k] for k in ("breaker", "healthy", "served",
                                                                "failed")}
                                  for b in health["tiers"]["heavy"]["backends"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--overhead-concurrency", type=int, default=0,
                    help="clients in the overhead phase (default --concurrency). With "
                         "--engine llama_cpp give the number of backends: a llama_cpp.server "
                         "runs one request at a time, so more clients queue and the TTFT "
                         "difference is queueing noise, not the gateway")
    ap.add_argument("--duration", type=float, default=20,
                    help="seconds of load on each path (direct, gateway)")
    ap.add_argument("--rounds", type=int, default=4,
                    help="alternate direct and gateway phases this many times (duration/rounds s each)")
    ap.add_argument("--tokens", type=int, default=16, help="pieces per streamed response")
    ap.add_argument("--delay", type=float, default=0.02, help="seconds between pieces")
    ap.add_argument("--soak", type=float, nargs="?", const=600.0, default=0,
                    help="soak seconds (--soak alone: 600; 0 = skip)")
    ap.add_argument("--chaos-every", type=float, default=20, help="kill a backend every S s")
    ap.add_argument("--backends", type=int, default=1,
                    help="backend processes; > 1: one tier with them all (backends = [...])")
    ap.add_argument("--engine", choices=["fake", "llama_cpp"], default="fake",
                    help="the backends: tests/gateway_fakes.py, or llama_cpp.server processes "
                         "(llama-cpp-python) serving --gguf")
    ap.add_argument("--gguf", default=str(Path(os.environ.get("GEMMA4STACK_SHARED",
                                                             ROOT.parent / "shared"))
                                          / "models" / "stories260K.gguf"),
                    help="with --engine llama_cpp: the model (default ../shared's stories260K)")
    ap.add_argument("--n-ctx", type=int, default=256, help="with --engine llama_cpp: context")
    ap.add_argument("--idle-timeout", type=float, default=30.0,
                    help="a request with no byte for this many seconds counts as hung")
    ap.add_argument("--stagger", type=float, default=None,
                    help="start each client at a random time in [0, S] s so the streams are "
                         "out of phase (default: one stream's duration, tokens x delay; "
                         "0 = all start together, a thundering herd)")
    ap.add_argument("--access-log", action="store_true", help="keep uvicorn's access log on")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()
    global STAGGER, IDLE_TIMEOUT
    STAGGER = args.tokens * args.delay if args.stagger is None else args.stagger
    IDLE_TIMEOUT = args.idle_timeout
    ENGINE.update(kind=args.engine, gguf=args.gguf, n_ctx=args.n_ctx)
    if args.engine == "llama_cpp" and not Path(args.gguf).is_file():
        ap.error(f"--gguf {args.gguf}: no such file")
    out = {"args": vars(args), "overhead": overhead(args)}
    if args.soak:
        out["soak"] = soak(args)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    o = out["overhead"]
    print(f"\n| path | req/s | TTFT P50 ms | TTFT P99 ms | stream P50 ms | stream P99 ms |\n"
          f"|---|---|---|---|---|---|")
    for k in ("direct", "gateway"):
        s = o[k]
        print(f"| {k} | {s['rps']:.1f} | {s['ttft_p50_ms']:.2f} | {s['ttft_p99_ms']:.2f} | "
              f"{s['total_p50_ms']:.2f} | {s['total_p99_ms']:.2f} |")
    a = o["added"]
    print(f"| added | | {a['ttft_p50_ms']:+.2f} | {a['ttft_p99_ms']:+.2f} | "
          f"{a['total_p50_ms']:+.2f} | {a['total_p99_ms']:+.2f} |")
    if args.soak:
        k = out["soak"]
        print(f"\nsoak {args.soak:g} s, {args.backends} {args.engine} backend(s), "
              f"{args.concurrency} streams, {k['kills']} kills: {k['summary']['requests']} "
              f"requests, outcomes {k['summary']['outcomes']}; lost {k['lost']}, hung "
              f"{k['hung']}, SSE error events {k['error_events']}, HTTP errors "
              f"{k['http_errors']}; gateway's added TTFT P50 {a['ttft_p50_ms']:+.2f} ms, "
              f"P99 {a['ttft_p99_ms']:+.2f} ms; RSS growth {k['rss_growth_kb']} kB")


if __name__ == "__main__":
    main()
