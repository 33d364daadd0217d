"""Serving benchmark: many concurrent streams through the official `openai` client.

    python benchmarks/bench_serving.py                          # Gemma 3 270M, all targets
    python benchmarks/bench_serving.py --synth-e2b              # full-size synthetic Gemma 4 E2B Q4_0
    python benchmarks/bench_serving.py --model m.gguf --concurrency 1,2,4,8,16 --max-tokens 128 \\
        --targets gemma4stack,llama-server,gemma4stack-p1 --out benchmarks/results/serving-270m
    python benchmarks/bench_serving.py --shared-prefix          # 1,000-token system prompt, 8 requests

Targets, each started fresh for every concurrency level N and stopped after it, on the same GGUF,
the same thread count (--threads, default one per physical core) and the same context per
sequence (--context):

- `gemma4stack`: the gateway (gemma4stack.gateway.launch, what `gemma4stack serve --config`
  runs) with one local tier whose config key `parallel` is N (or --parallel). A gateway whose
  config does not know `parallel` yet (before issue 12's batching) is run without it, and the
  report says "parallel unsupported": its requests then run one at a time.
- `llama-server`: llama.cpp's server with `--parallel N` slots, continuous batching (`-cb`),
  `-c N x context` (llama.cpp splits the context among the slots), `-t/-tb threads`. The binary
  is benchmarks/build_llama_server.sh's build of the llama.cpp that llama-cpp-python vendors
  (default /work/build-llama/build/bin/llama-server, or --llama-server / $LLAMA_SERVER).
- `gemma4stack-p1`: the gateway with `parallel = 1`: one request at a time, queued (what Ollama
  does by default).

Workload per level: max(--requests, 2N) requests from N closed-loop streams (each stream sends
its next request when the previous one ends). Prompt lengths are spread log-uniformly over
[--min-prompt, --max-prompt] tokens (64-1,024; the same lengths, shuffled, at every level), each
prompt random common English words, distinct from the first word on (no accidental prefix-cache
hits); counted with the model's own tokenizer (gemma4stack._core.Tokenizer). Each asks for
--max-tokens (128) tokens at temperature 0 through /v1/completions, streamed, with
`stream_options.include_usage` so the servers report the token counts. One short warm-up
request before each level is not counted.

Reported per target and level (JSON, a Markdown table, a PNG plot):
- output tokens/s: all completion tokens / wall time of the level (prefill included: the
  end-to-end throughput of the mixed workload);
- steady decode tokens/s: tokens that arrived while all N streams were past their first token,
  / the time all N were (the aggregate decode rate of N streams; None when that never happened);
- TTFT P50/P99: request sent -> first non-empty text chunk, ms;
- ITL P50/P99: the gaps between consecutive text chunks of a stream, ms (one chunk = one token
  for both servers, except where a multi-byte character spans tokens);
- TPOT P50/P99: per request (last chunk - first chunk) / (completion tokens - 1), ms.
Percentiles interpolate linearly between order statistics (numpy's default method).

--shared-prefix: one stream sends 8 requests (--prefix-requests) that share a 1,000-token
system prompt (--prefix-tokens) and differ in a ~48-token suffix, one after the other; reported:
the 1st request's TTFT (the whole prompt computed) and the 2nd..8th's (only the suffix, when the
server reuses the cached prefix), per target.

The client runs on the same machine and takes some CPU (the openai client's SSE parsing; small
against a decode step, but not zero on 2 cores). Run it on a quiet machine: ggml's worker
threads poll (spin) between graph nodes (`--poll`, default 50), so on a machine loaded by other
work llama-server slows down far more than an engine whose threads sleep (on this 2-core machine
at load ~10, a smoke run saw llama-server's inter-token latency at 300 ms against ~60 ms for the
gateway; a quiet run is expected near parity, benchmarks/RESULTS.md). `--llama-args "--poll 0"`
makes its threads sleep instead. `--concurrency 1,2 --max-tokens 8 --requests 2` is a quick
smoke run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_LLAMA_SERVER = "/work/build-llama/build/bin/llama-server"
TARGETS = ("gemma4stack", "llama-server", "gemma4stack-p1")

# Common English words (prompt filler): whole words tokenize to one or two tokens in the Gemma
# and Llama vocabularies, so a prompt's token count follows its word count closely.
WORDS = """the of and to in is was for on that with as by at from his her they this which but be
are have had not were he she it we you one all their there been when who will more would about
out up what so some can time into its only them other new than first then also after any may
over these like could people two such world year work most way even back made day great through
where much before good how between many those life state own under both last long while might
city house water place name small part country high old school every still number being war
found never great without again often small river light little story sea night ship storm wind
island harbour keeper lamp tower rock wave boat sail coast morning evening winter summer garden
road village market bread letter window door table book music paper field stone forest mountain
""".split()


# ---- workload (pure) --------------------------------------------------------------------------

def log_uniform_lengths(n: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    """n prompt lengths spread log-uniformly over [lo, hi] tokens: the quantiles (i + 0.5) / n
    of that distribution, rounded, in a seeded shuffled order (so any n covers the range
    evenly and two runs with the same n and seed get the same lengths)."""
    if n < 1 or not 1 <= lo <= hi:
        raise ValueError(f"need n >= 1 and 1 <= lo <= hi (got n={n}, lo={lo}, hi={hi})")
    a, b = math.log(lo), math.log(hi)
    out = [int(round(math.exp(a + (b - a) * (i + 0.5) / n))) for i in range(n)]
    random.Random(seed).shuffle(out)
    return out


def text_of_tokens(encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                   n_tokens: int, rng: random.Random) -> tuple[str, int]:
    """Random-word text of about n_tokens tokens (without BOS) as the tokenizer counts them.

    Words are drawn until the text has >= n_tokens tokens; the ids are cut to n_tokens and
    decoded. Returns (text, its token count when encoded again), which can differ from
    n_tokens by a token where the cut splits a word."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1 (got {n_tokens})")
    words: list[str] = []
    ids: list[int] = []
    while len(ids) < n_tokens:
        words += rng.choices(WORDS, k=max(8, n_tokens - len(ids)))
        ids = encode(" ".join(words))
    text = decode(ids[:n_tokens]).strip()
    return text, len(encode(text))


@dataclass
class Prompt:
    text: str
    tokens: int                 # without BOS, as the model's tokenizer encodes `text`


def make_prompts(encode, decode, lengths: Sequence[int], seed: int = 0) -> list[Prompt]:
    """One random-word prompt per length; distinct from their first word on."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        text, got = text_of_tokens(encode, decode, n, rng)
        out.append(Prompt(text, got))
    return out


def shared_prefix_prompts(encode, decode, prefix_tokens: int, n: int, suffix_tokens: int = 48,
                          seed: int = 0) -> tuple[str, list[Prompt]]:
    """(system prompt, n prompts that start with it): a prefix_tokens-token 'system prompt'
    followed by a distinct suffix_tokens-token question each."""
    rng = random.Random(seed)
    head, tail = "You are a helpful assistant. Background notes: ", "\n\n"
    body_tokens = max(1, prefix_tokens - len(encode(head)) - len(encode(tail)))
    body, _ = text_of_tokens(encode, decode, body_tokens, rng)
    prefix = head + body + tail
    out = []
    for i in range(n):
        suffix, _ = text_of_tokens(encode, decode, suffix_tokens, rng)
        text = prefix + f"Question {i + 1}: " + suffix
        out.append(Prompt(text, len(encode(text))))
    return prefix, out


# ---- statistics (pure) ------------------------------------------------------------------------

def percentile(xs: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order statistics
    (numpy.percentile's default 'linear' method); None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class RequestResult:
    """One streamed request; times are time.perf_counter() seconds."""
    t_sent: float
    chunk_times: list[float] = field(default_factory=list)   # arrivals of non-empty text chunks
    t_end: float = 0.0
    prompt_tokens: int | None = None          # from usage (None: the server sent none)
    completion_tokens: int | None = None
    cached_tokens: int | None = None          # usage.prompt_tokens_details.cached_tokens
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.t_sent if self.chunk_times else None

    @property
    def n_tokens(self) -> int:
        """Completion tokens: the server's count, else the number of text chunks."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)

    def itls(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]

    def tpot(self) -> float | None:
        if len(self.chunk_times) < 2 or self.n_tokens < 2:
            return None
        return (self.chunk_times[-1] - self.chunk_times[0]) / (self.n_tokens - 1)


def steady_decode(results: Sequence[RequestResult], n_streams: int) -> tuple[int, float]:
    """(tokens, seconds) of the time when n_streams requests were decoding at once: a request
    decodes from its first text chunk to its last; counted are its chunks after the first that
    arrived while the number of decoding requests was n_streams."""
    spans = [(r.chunk_times[0], r.chunk_times[-1]) for r in results
             if not r.error and len(r.chunk_times) >= 2]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans],
                    key=lambda e: (e[0], e[1]))     # at equal times, ends first
    windows, active, start = [], 0, None
    for t, d in events:
        if d > 0:
            active += 1
            if active == n_streams:
                start = t
        else:
            if active == n_streams and start is not None:
                windows.append((start, t))
                start = None
            active -= 1
    seconds = sum(b - a for a, b in windows)
    tokens = 0
    for r in results:
        if r.error:
            continue
        for t in r.chunk_times[1:]:
            tokens += any(a < t <= b for a, b in windows)
    return tokens, seconds


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 3)


def summarize(results: Sequence[RequestResult], wall_s: float, concurrency: int) -> dict:
    """The level's figures (see the module docstring); times in ms, rates in tokens/s."""
    ok = [r for r in results if not r.error]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [g for r in ok for g in r.itls()]
    tpots = [t for r in ok if (t := r.tpot()) is not None]
    out_tokens = sum(r.n_tokens for r in ok)
    st_tokens, st_s = steady_decode(ok, concurrency)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r.error for r in results if r.error})[:3],
        "wall_s": round(wall_s, 3),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "output_tokens": out_tokens,
        "output_tps": round(out_tokens / wall_s, 2) if wall_s > 0 else None,
        "steady_decode_tps": round(st_tokens / st_s, 2) if st_s > 0 else None,
        "steady_decode_s": round(st_s, 3),
        "ttft_p50_ms": _ms(percentile(ttfts, 50)), "ttft_p99_ms": _ms(percentile(ttfts, 99)),
        "itl_p50_ms": _ms(percentile(itls, 50)), "itl_p99_ms": _ms(percentile(itls, 99)),
        "tpot_p50_ms": _ms(percentile(tpots, 50)), "tpot_p99_ms": _ms(percentile(tpots, 99)),
    }


# ---- the client -------------------------------------------------------------------------------

async def one_request(client, model: str, prompt: str, max_tokens: int, extra_body: dict
                      ) -> RequestResult:
    """Stream one /v1/completions request; errors are recorded, not raised."""
    r = RequestResult(t_sent=time.perf_counter())
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra_body or None)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                r.chunk_times.append(now)
            if chunk.usage is not None:
                r.prompt_tokens = chunk.usage.prompt_tokens
                r.completion_tokens = chunk.usage.completion_tokens
                details = getattr(chunk.usage, "prompt_tokens_details", None)
                r.cached_tokens = getattr(details, "cached_tokens", None) if details else None
    except Exception as e:          # noqa: BLE001 - a failed request is a result
        r.error = f"{type(e).__name__}: {str(e)[:200]}"
    r.t_end = time.perf_counter()
    return r


async def run_streams(base_url: str, api_key: str, model: str, prompts: Sequence[Prompt],
                      concurrency: int, max_tokens: int, extra_body: dict | None = None
                      ) -> tuple[list[RequestResult], float]:
    """`concurrency` closed-loop streams over `prompts` (in order). Returns (results in
    prompt order, wall seconds from the first send to the last end)."""
    import httpx
    import openai

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                  timeout=httpx.Timeout(1800.0, connect=10.0),
                                  http_client=openai.DefaultAsyncHttpxClient(limits=limits)) as client:
        queue: asyncio.Queue = asyncio.Queue()
        for i, p in enumerate(prompts):
            queue.put_nowait((i, p))
        results: list[RequestResult | None] = [None] * len(prompts)

        async def stream():
            while True:
                try:
                    i, p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[i] = await one_request(client, model, p.text, max_tokens, extra_body or {})

        t0 = time.perf_counter()
        await asyncio.gather(*(stream() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return [r for r in results if r is not None], wall


# ---- the servers ------------------------------------------------------------------------------

class TargetUnavailable(RuntimeError):
    """A target cannot run here (no llama-server binary, model not loadable, ...)."""


@dataclass
class Running:
    base_url: str
    api_key: str
    model: str                      # the `model` field requests send
    stop: Callable[[], None]
    info: dict                      # what was started (parallel, command line, notes)
    extra_body: dict = field(default_factory=dict)


def start_gemma4stack(model: Path, threads: int, context: int, parallel: int,
                      config_file: Path | None = None) -> Running:
    """The gateway with one local tier serving `model` (the first local tier of config_file,
    when given, with its other settings); tier key `parallel` set, or dropped with a note when
    this gateway's config does not know it."""
    from gemma4stack.gateway import launch
    from gemma4stack.gateway.config import ConfigError

    if config_file is not None:
        import tomllib
        data = tomllib.loads(Path(config_file).read_text())
        base = Path(config_file).resolve().parent
        local = [n for n, t in data.get("tiers", {}).items() if t.get("backend") == "local"]
        if not local:
            raise TargetUnavailable(f"{config_file}: no local tier")
        data["tiers"] = {local[0]: data["tiers"][local[0]]}
        tier = data["tiers"][local[0]]
        if not Path(tier["model"]).is_absolute():
            tier["model"] = str((base / tier["model"]).resolve())
    else:
        data = {"tiers": {"primary": {"backend": "local", "model": str(model)}}}
        tier = data["tiers"]["primary"]
        tier.update(threads=threads, context=context)
    data.setdefault("server", {}).update(host="127.0.0.1", port=0)
    data["server"].setdefault("log_level", "warning")
    data["limits"] = {**data.get("limits", {}), "requests_per_minute": 0, "tokens_per_minute": 0}
    tier["queue_size"] = max(tier.get("queue_size", 0), 256)
    tier["parallel"] = parallel
    name = next(iter(data["tiers"]))
    info = {"parallel": parallel, "tier": dict(tier)}
    try:
        gw = launch(config=data, timeout=600)
    except ConfigError as e:
        if "parallel" not in str(e):
            raise
        del tier["parallel"]
        info["parallel"] = 1
        info["note"] = "parallel unsupported by this gateway: requests run one at a time"
        gw = launch(config=data, timeout=600)
    # stop() also removes the log directory in newer gateways; older ones had cleanup() for it
    return Running(gw.base_url, gw.api_key, name, getattr(gw, "cleanup", gw.stop), info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(binary: str, model: Path, threads: int, context: int, parallel: int,
                       extra_args: Sequence[str] = (), timeout: float = 600.0) -> Running:
    """llama-server on 127.0.0.1 with `parallel` slots, continuous batching and
    parallel x context positions of KV; waits until GET /health answers 200."""
    import httpx

    if not (binary and os.access(binary, os.X_OK)):
        raise TargetUnavailable(f"no llama-server binary at {binary!r} (build one with "
                                "benchmarks/build_llama_server.sh, or pass --llama-server)")
    port = _free_port()
    cmd = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
           "-t", str(threads), "-tb", str(threads), "-np", str(parallel), "-cb",
           "-c", str(context * parallel), "--no-webui", *extra_args]
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def stop():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        os.unlink(log.name)

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = Path(log.name).read_text(errors="replace").splitlines()[-15:]
            stop()
            raise TargetUnavailable("llama-server exited with code "
                                    f"{proc.returncode}:\n    " + "\n    ".join(tail))
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop()
            raise TargetUnavailable(f"llama-server not ready after {timeout:g} s")
        time.sleep(0.1)
    return Running(url + "/v1", "none", "model", stop,
                   {"parallel": parallel, "command": " ".join(cmd)})


# ---- orchestration ----------------------------------------------------------------------------

def start_target(name: str, args, parallel: int) -> Running:
    if name == "gemma4stack":
        return start_gemma4stack(args.model, args.threads, args.context, parallel, args.config)
    if name == "gemma4stack-p1":
        return start_gemma4stack(args.model, args.threads, args.context, 1, args.config)
    if name == "llama-server":
        return start_llama_server(args.llama_server, args.model, args.threads, args.context,
                                  parallel, args.llama_args.split())
    raise ValueError(f"unknown target {name!r} (known: {', '.join(TARGETS)})")


def warm_up(run: Running) -> None:
    asyncio.run(run_streams(run.base_url, run.api_key, run.model,
                            [Prompt("The lighthouse keeper", 4)], 1, 4, run.extra_body))


def bench_levels(args, prompts_for: Callable[[int], list[Prompt]]) -> dict:
    out: dict = {}
    for name in args.targets:
        rows = []
        for n in args.concurrency:
            parallel = 1 if name == "gemma4stack-p1" else args.parallel or n
            print(f"[{name}] concurrency {n}: starting (parallel {parallel}) ...", file=sys.stderr,
                  flush=True)
            try:
                run = start_target(name, args, parallel)
            except TargetUnavailable as e:
                print(f"[{name}] unavailable: {e}", file=sys.stderr)
                rows.append({"concurrency": n, "skipped": str(e)})
                break
            try:
                if name == "gemma4stack" and run.info.get("note"):
                    # identical to gemma4stack-p1: do not run it twice
                    if "gemma4stack-p1" in args.targets:
                        rows.append({"concurrency": n, "skipped": run.info["note"]})
                        break
                warm_up(run)
                prompts = prompts_for(n)
                results, wall = asyncio.run(run_streams(run.base_url, run.api_key, run.model,
                                                        prompts, n, args.max_tokens,
                                                        run.extra_body))
            finally:
                run.stop()
            row = summarize(results, wall, n)
            row.update(parallel=run.info["parallel"], **({"note": run.info["note"]}
                                                         if run.info.get("note") else {}))
            print(f"[{name}] N={n}: {row['output_tps']} tok/s out, steady decode "
                  f"{row['steady_decode_tps']}, TTFT P50 {row['ttft_p50_ms']} ms, ITL P50 "
                  f"{row['itl_p50_ms']} P99 {row['itl_p99_ms']} ms, errors {row['errors']}",
                  file=sys.stderr, flush=True)
            rows.append(row)
        out[name] = rows
    return out


def bench_shared_prefix(args, prompts: list[Prompt]) -> dict:
    out = {}
    for name in args.targets:
        try:
            run = start_target(name, args, 1)
        except TargetUnavailable as e:
            out[name] = {"skipped": str(e)}
            continue
        try:
            warm_up(run)
            results = []
            for p in prompts:          # one after the other: request k can reuse 1..k-1
                rs, _ = asyncio.run(run_streams(run.base_url, run.api_key, run.model, [p], 1,
                                                args.max_tokens, run.extra_body))
                results += rs
        finally:
            run.stop()
        later = [r.ttft for r in results[1:] if r.ttft is not None]
        out[name] = {
            "prompt_tokens": [r.prompt_tokens for r in results],
            "cached_tokens": [r.cached_tokens for r in results],
            "errors": [r.error for r in results if r.error],
            "first_ttft_ms": _ms(results[0].ttft) if results else None,
            "later_ttft_ms": [_ms(t) for t in later],
            "later_ttft_p50_ms": _ms(percentile(later, 50)),
            "parallel": run.info["parallel"],
        }
        print(f"[{name}] shared prefix: 1st TTFT {out[name]['first_ttft_ms']} ms, 2nd..: "
              f"P50 {out[name]['later_ttft_p50_ms']} ms", file=sys.stderr, flush=True)
    return out


# ---- output -----------------------------------------------------------------------------------

def _f(v, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def to_markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"### Serving: {Path(m['model']).name}, {m['threads']} threads, {m['cpu']}",
             "",
             f"`{m['command']}` ({m['date']}, commit {m['commit']}); prompts {m['min_prompt']}-"
             f"{m['max_prompt']} tokens (log-uniform), {m['max_tokens']} output tokens, "
             "temperature 0.", ""]
    if report.get("levels"):
        lines += ["| target | N | parallel | out tok/s | steady decode tok/s | TTFT P50 / P99 ms | "
                  "ITL P50 / P99 ms | TPOT P50 ms | requests (errors) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, rows in report["levels"].items():
            for r in rows:
                if r.get("skipped"):
                    lines.append(f"| {name} | {r['concurrency']} | | skipped: {r['skipped'][:80]} "
                                 "| | | | | |")
                    continue
                lines.append(
                    f"| {name} | {r['concurrency']} | {r['parallel']} | {_f(r['output_tps'])} | "
                    f"{_f(r['steady_decode_tps'])} | {_f(r['ttft_p50_ms'], 0)} / "
                    f"{_f(r['ttft_p99_ms'], 0)} | {_f(r['itl_p50_ms'])} / {_f(r['itl_p99_ms'])} | "
                    f"{_f(r['tpot_p50_ms'])} | {r['requests']} ({r['errors']}) |")
    if report.get("shared_prefix"):
        sp = report["shared_prefix"]
        lines += ["", f"Shared {m['prefix_tokens']}-token system prompt, "
                  f"{m['prefix_requests']} requests one after the other:", "",
                  "| target | 1st TTFT ms | 2nd..last TTFT P50 ms | each later TTFT ms | cached tokens |",
                  "|---|---:|---:|---|---|"]
        for name, r in sp.items():
            if r.get("skipped"):
                lines.append(f"| {name} | skipped: {r['skipped'][:80]} | | | |")
                continue
            lines.append(f"| {name} | {_f(r['first_ttft_ms'], 0)} | {_f(r['later_ttft_p50_ms'], 0)} | "
                         f"{', '.join(_f(t, 0) for t in r['later_ttft_ms'])} | "
                         f"{', '.join(_f(c) for c in r['cached_tokens'])} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Throughput, TTFT and ITL against concurrency, one colour per target (P50 solid, P99
    dashed), saved to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for k, (name, rows) in enumerate(report["levels"].items()):
        rows = [r for r in rows if not r.get("skipped")]
        if not rows:
            continue
        c = f"C{k}"
        n = [r["concurrency"] for r in rows]
        axes[0].plot(n, [r["output_tps"] for r in rows], "o-", color=c, label=f"{name} end-to-end")
        if any(r["steady_decode_tps"] for r in rows):
            axes[0].plot(n, [r["steady_decode_tps"] for r in rows], "s:", color=c,
                         label=f"{name} steady decode")
        for ax, key in ((axes[1], "ttft"), (axes[2], "itl")):
            ax.plot(n, [r[f"{key}_p50_ms"] for r in rows], "o-", color=c, label=f"{name} P50")
            ax.plot(n, [r[f"{key}_p99_ms"] for r in rows], "o--", color=c, label=f"{name} P99")
    titles = ("aggregate output tokens/s", "time to first token (ms)", "inter-token latency (ms)")
    for ax, t in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(t)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    m = report["meta"]
    fig.suptitle(f"{Path(m['model']).name}, {m['threads']} threads, {m['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main -------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _ints(s: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {s!r}")
    return v


def _targets(s: str) -> list[str]:
    v = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in v if x not in TARGETS]
    if bad or not v:
        raise argparse.ArgumentTypeError(f"unknown target(s) {bad}; known: {', '.join(TARGETS)}")
    return v


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="GGUF (default: Gemma 3 270M Q4_K_M, fetched "
                     "by gemma4stack.testmodels)")
    src.add_argument("--synth-e2b", action="store_true",
                     help="a full-size synthetic Gemma 4 E2B Q4_0 (`gemma4stack synth`, ~3 GB, "
                          "written to $G4_BENCH_DIR or /tmp/g4bench when missing)")
    p.add_argument("--config", type=Path,
                   help="gateway TOML: its first local tier serves (key `parallel` overridden)")
    p.add_argument("--targets", type=_targets, default=list(TARGETS),
                   help=f"comma-separated, default {','.join(TARGETS)}")
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8, 16])
    p.add_argument("--parallel", type=int, default=None,
                   help="sequences a server runs at once (gateway tier key `parallel`, "
                        "llama-server --parallel); default: the level's concurrency")
    p.add_argument("--requests", type=int, default=16,
                   help="requests per level (at least 2 per stream; default 16)")
    p.add_argument("--min-prompt", type=int, default=64)
    p.add_argument("--max-prompt", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--context", type=int, default=2048, help="KV positions per sequence")
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")
    p.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", DEFAULT_LLAMA_SERVER))
    p.add_argument("--llama-args", default="", help="extra llama-server arguments")
    p.add_argument("--shared-prefix", action="store_true",
                   help="run the shared-system-prompt test instead of the concurrency levels")
    p.add_argument("--prefix-tokens", type=int, default=1000)
    p.add_argument("--prefix-requests", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="directory for serving.json, serving.md, serving.png "
                        "(default benchmarks/results/serving-<time>)")
    a = p.parse_args(argv)
    if a.min_prompt < 1 or a.max_prompt < a.min_prompt:
        p.error("need 1 <= --min-prompt <= --max-prompt")
    if a.max_tokens < 1 or a.requests < 1 or (a.parallel is not None and a.parallel < 1):
        p.error("--max-tokens, --requests and --parallel must be >= 1")
    return a


def resolve_model(a: argparse.Namespace) -> Path:
    if a.synth_e2b:
        d = Path(os.environ.get("G4_BENCH_DIR", "/tmp/g4bench"))
        path = d / "gemma4-e2b-q4_0.gguf"
        if not path.exists():
            d.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "gemma4stack", "synth", str(path), "--arch",
                            "gemma4", "--variant", "e2b", "--type", "q4_0"], check=True)
        return path
    if a.model is not None:
        if not a.model.is_file():
            raise SystemExit(f"bench_serving: model not found: {a.model}")
        return a.model
    from gemma4stack.testmodels import gemma3_270m
    return gemma3_270m()


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    a.model = resolve_model(a)
    if a.threads is None:
        from gemma4stack.hardware import detect
        a.threads = detect(bandwidth=False).cpu.cores
    from gemma4stack import _core
    tok = _core.Tokenizer(str(a.model))
    encode = lambda s: tok.encode(s, add_bos=False)          # noqa: E731
    decode = tok.decode
    out_dir = a.out or ROOT / "benchmarks" / "results" / time.strftime("serving-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"meta": {
        "model": str(a.model), "threads": a.threads, "cpu": _cpu_model(), "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bench_serving.py " + " ".join(argv if argv is not None
                                                                  else sys.argv[1:]),
        "min_prompt": a.min_prompt, "max_prompt": a.max_prompt, "max_tokens": a.max_tokens,
        "context": a.context, "requests": a.requests, "targets": a.targets,
        "concurrency": a.concurrency, "llama_server": a.llama_server,
        "prefix_tokens": a.prefix_tokens, "prefix_requests": a.prefix_requests}}
    if a.max_prompt + a.max_tokens + 8 > a.context or a.prefix_tokens + 80 + a.max_tokens > a.context:
        raise SystemExit(f"bench_serving: --context {a.context} is too small for "
                         f"{a.max_prompt}/{a.prefix_tokens}-token prompts + {a.max_tokens} tokens")

    if a.shared_prefix:
        _, prompts = shared_prefix_prompts(encode, decode, a.prefix_tokens, a.prefix_requests,
                                           seed=a.seed)
        report["shared_prefix"] = bench_shared_prefix(a, prompts)
    else:
        cache: dict[int, list[Prompt]] = {}

        def prompts_for(n: int) -> list[Prompt]:
            """max(--requests, 2N) prompts: the same spread of lengths at every level, and the
            same prompts for every target at a level."""
            k = max(a.requests, 2 * n)
            if k not in cache:
                lengths = log_uniform_lengths(k, a.min_prompt, a.max_prompt, a.seed)
                cache[k] = make_prompts(encode, decode, lengths, seed=a.seed)
            return cache[k]

        report["levels"] = bench_levels(a, prompts_for)
    (out_dir / "serving.json").write_text(json.dumps(report, indent=2))
    md = to_markdown(report)
    (out_dir / "serving.md").write_text(md)
    if report.get("levels"):
        plot(report, out_dir / "serving.png")
    print(md)
    print(f"results in {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
