"""The gateway's FastAPI app, built by create_app(config) with its dependencies injected.

A request flows one way:

    HTTP -> admit (auth, rate limit, body cap, JSON) -> schemas.parse -> routing.plan
         -> Dispatch: for each tier in the plan: memory check, breaker, backend.stream(),
            wait for the first piece (fallback allowed until here) -> answer or stream

Dispatch's __call__ (an ASGI app) does the routing, so the whole exchange runs in one task
that also watches for the client disconnecting (and then cancels the backend: a local
generation stops at its next token, an upstream connection is closed).

The two generation endpoints are plain ASGI handlers that GatewayApp.__call__ runs before
FastAPI's middleware stack; every other endpoint is an ordinary FastAPI route. Measured with
benchmarks/bench_gateway.py, FastAPI's request path (ServerErrorMiddleware, telemetry and
body-limit middleware, ExceptionMiddleware, AsyncExitStack, router, request_response and its
exception wrapper around every send) took ~0.25 ms before a request's body was read and
several wrapper frames per streamed piece: a quarter of what the gateway added to the time
to the first token. The handlers give the same answers and OpenAI error objects.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from . import routing
from .auth import Guard
from .backends import BackendError, Delta, Final, GenRequest, OpenAIBackend, text_of
from .breaker import CircuitBreaker, State
from .config import ConfigError, GatewayConfig, TierConfig, load_config
from .errors import APIError
from .metrics import Metrics
from .lifecycle import LazyLocal, ModelManager, parse_keep_alive
from .pool import Member, Pool
from .schemas import parse

log = logging.getLogger("gemma4stack.gateway")


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _sse(obj) -> bytes:
    """One server-sent event carrying a JSON object (the OpenAI streaming format)."""
    return b"data: " + _json(obj) + b"\n\n"


@functools.lru_cache(maxsize=1)
def _chat_html() -> str:
    """The chat page shipped as package data (pyproject: gateway/static/*.html)."""
    return (resources.files("gemma4stack.gateway") / "static" / "chat.html").read_text("utf-8")


def has_media(messages: list[dict] | None) -> bool:
    """Does a chat request carry non-text content parts (image_url, input_audio, file)?
    Such requests count against media_requests_per_day instead of requests_per_day."""
    for m in messages or ():
        c = m.get("content")
        if isinstance(c, list) and any(isinstance(p, dict) and p.get("type") != "text"
                                       for p in c):
            return True
    return False


def load_model(tier: TierConfig):
    """Open a local tier's GGUF with gemma4stack.model.Model (the default model_loader)."""
    from gemma4stack.model import Model
    return Model(tier.model, threads=tier.threads, context=tier.context, parallel=tier.parallel,
                 kv_cache=tier.kv_cache, kv_bytes=tier.kv_bytes, batch_tokens=tier.batch_tokens,
                 queue_max=max(tier.queue_size, 1), draft=getattr(tier, "draft", None))


@dataclass
class TierRuntime:
    """A tier while the gateway runs: its pool of backends (pool.py) and recent history."""
    tier: TierConfig
    pool: Pool
    last_latency_ms: float | None = None
    last_ttft_ms: float | None = None
    last_error: str | None = None
    served: int = 0
    failed: int = 0
    key: str = ""                    # what it was built from; a reload keeps it if unchanged

    @property
    def busy(self) -> bool:
        """Requests still running on one of its backends."""
        return any(m.outstanding or getattr(m.backend, "active", 0) for m in self.pool.members)

    @property
    def breaker(self) -> CircuitBreaker:
        """The first backend's breaker: the tier's breaker for a single-engine tier."""
        return self.pool.members[0].breaker

    @property
    def state(self) -> State:
        """The best state among the tier's backends (closed if any is closed)."""
        return min((m.breaker.state for m in self.pool.members), key=lambda s: s.gauge)

    def to_dict(self, pressure: bool) -> dict:
        members = [m.to_dict(pressure) for m in self.pool.members]
        d = {"up": any(m["up"] for m in members), "backend": self.tier.backend,
             "model": self.tier.id, "breaker": self.state.value,
             "retry_after_s": min(m["retry_after_s"] for m in members),
             "last_latency_ms": self.last_latency_ms, "last_ttft_ms": self.last_ttft_ms,
             "last_error": self.last_error, "served": self.served, "failed": self.failed}
        if all(m.get("skipped") == "memory_pressure" for m in members):
            d["skipped"] = "memory_pressure"
        if len(members) == 1:
            d.update(self.pool.members[0].backend.status())
        else:
            d["backends"] = members
        return d


class GatewayState:
    """Everything the endpoints share; built once per app."""

    def __init__(self, config: GatewayConfig, *, model_loader: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 meminfo: Callable[[], tuple[int, int]] = routing.read_memory,
                 transport=None, wall_clock: Callable[[], float] = time.time):
        self.config, self.clock = config, clock
        self.transport = transport
        self.metrics = Metrics()
        self.guard = Guard(config.auth, config.limits, wall=wall_clock)
        self.memory = routing.MemoryGauge(config.routing.max_memory_used, meminfo, clock)
        self.tiers: dict[str, TierRuntime] = {}
        self._health_tasks: list[asyncio.Task] = []
        self._health_client: httpx.AsyncClient | None = None
        self.models = ModelManager(model_loader or load_model, max_tokens=config.server.max_tokens,
                                   meminfo=self.memory.meminfo,
                                   max_used=config.routing.max_memory_used,
                                   budget_bytes=config.models.memory_budget_bytes, clock=clock)
        self._tasks: list[asyncio.Task] = []
        self.reloads = 0
        for name, tier in config.tiers.items():
            self.tiers[name] = self._build_tier(tier, config)
            self.metrics.breaker.labels(name).set(0)

    @staticmethod
    def _tier_key(tier: TierConfig, config: GatewayConfig) -> str:
        """Everything a TierRuntime is built from (a reload reuses it when this is equal)."""
        return json.dumps([tier.to_dict(), tier.api_key, [b.api_key for b in tier.backends],
                           asdict(config.breaker), config.models.keep_alive,
                           config.server.max_tokens], sort_keys=True, default=str)

    def _build_tier(self, tier: TierConfig, config: GatewayConfig) -> TierRuntime:
        name, b = tier.name, config.breaker
        default_ka = config.models.keep_alive_s
        members = []
        for spec in tier.backends:
            sub = tier.member(spec)
            if spec.is_local:
                ka = default_ka if tier.keep_alive is None else parse_keep_alive(tier.keep_alive)
                backend = LazyLocal(sub, self.models, ka)
                if config.models.preload:
                    self.models.load_now(backend)
            else:
                backend = OpenAIBackend(sub, transport=self.transport)
            label = name if len(tier.backends) == 1 else f"{name}/{spec.name}"
            breaker = CircuitBreaker(b.failures, b.window_s, b.cooldown_s, clock=self.clock,
                                     on_change=self._breaker_changed(name, label))
            members.append(Member(spec, backend, breaker))
        return TierRuntime(tier, Pool(tier, members), key=self._tier_key(tier, config))

    async def reload(self, config: GatewayConfig) -> dict:
        """Switch to `config` without dropping requests in flight.

        Tiers whose settings did not change keep their backends (loaded models, breakers,
        connections); new or changed tiers get new ones; the old ones finish the requests
        they hold and are closed afterwards. Keys and limits apply to the next request
        (the quota counters stay in the same database). [server] host and port need a
        restart. Returns {"kept", "added", "replaced", "removed"} tier names.
        """
        old, tiers = self.tiers, {}
        report = {"kept": [], "added": [], "replaced": [], "removed": []}
        for name, tier in config.tiers.items():
            rt = old.get(name)
            if rt is not None and rt.key == self._tier_key(tier, config):
                tiers[name] = rt
                report["kept"].append(name)
            else:
                tiers[name] = self._build_tier(tier, config)
                report["replaced" if rt is not None else "added"].append(name)
        retired = [rt for n, rt in old.items() if tiers.get(n) is not rt]
        report["removed"] = [n for n in old if n not in tiers]
        if (config.server.host, config.server.port) != (self.config.server.host,
                                                        self.config.server.port):
            log.warning("reload: [server] host/port changes need a restart; still on %s:%d",
                        self.config.server.host, self.config.server.port)
        store = self.guard.store
        same_db = (config.limits.db or ":memory:") == (self.config.limits.db or ":memory:")
        guard = Guard(config.auth, config.limits, wall=self.guard.store.wall,
                      store=store if same_db else None)
        # the swap: requests admitted from here on see only the new state
        self.config, self.tiers, self.guard = config, tiers, guard
        self.memory.max_used = self.models.max_used = config.routing.max_memory_used
        self.models.budget_bytes = config.models.memory_budget_bytes
        self.models.max_tokens = config.server.max_tokens
        for name, rt in tiers.items():
            self.metrics.breaker.labels(name).set(rt.state.gauge)
        if not same_db:
            store.close()
        self._restart_health_checks()
        if retired:
            self._tasks.append(asyncio.create_task(self._retire(retired), name="g4gw-retire"))
        self.reloads += 1
        log.info("reloaded config: %s", report)
        return report

    async def _retire(self, retired: list[TierRuntime]):
        """Close replaced tiers' backends once their requests are done."""
        while any(rt.busy for rt in retired):
            await asyncio.sleep(0.05)
        for rt in retired:
            for m in rt.pool.members:
                with contextlib.suppress(Exception):
                    await m.backend.aclose()
                if m.backend in self.models.slots:
                    self.models.slots.remove(m.backend)

    def _restart_health_checks(self):
        for t in self._health_tasks:
            t.cancel()
        self._health_tasks = []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return                    # not serving yet: start_tasks() will start them
        self.start_health_checks()

    def start_tasks(self):
        """The background tasks, on the running loop: the idle-model reaper, then one
        health-check task per tier with URL backends."""
        self._tasks.append(asyncio.create_task(self.models.reap_loop(), name="g4gw-model-reaper"))
        self.start_health_checks()

    def start_health_checks(self):
        """Start one health-check task per tier with URL backends (on the running loop)."""
        tiers = [rt for rt in self.tiers.values()
                 if rt.tier.health_interval_s > 0 and any(not m.is_local for m in rt.pool.members)]
        if not tiers:
            return
        if self._health_client is None:
            self._health_client = httpx.AsyncClient(transport=self.transport)
        for rt in tiers:
            self._health_tasks.append(asyncio.create_task(
                rt.pool.health_loop(self._health_client), name=f"g4gw-health-{rt.tier.name}"))

    def _breaker_changed(self, name: str, label: str):
        def changed(old: State, new: State):
            log.warning("%s: circuit breaker %s -> %s", label, old.value, new.value)
            rt = self.tiers.get(name)
            self.metrics.breaker.labels(name).set(rt.state.gauge if rt else new.gauge)
        return changed

    def health(self) -> tuple[int, dict]:
        pressure = self.memory.under_pressure()
        tiers = {n: rt.to_dict(pressure) for n, rt in self.tiers.items()}
        ok = any(t["up"] for t in tiers.values())
        return (200 if ok else 503), {"status": "ok" if ok else "unavailable", "tiers": tiers,
                                      "memory": self.memory.to_dict()}

    async def aclose(self):
        tasks = self._health_tasks + self._tasks
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        if self._health_client is not None:
            await self._health_client.aclose()
        for rt in self.tiers.values():
            for m in rt.pool.members:
                with contextlib.suppress(Exception):
                    await m.backend.aclose()
        self.guard.store.close()

    def reload_from_source(self) -> GatewayConfig:
        """The config re-read from the file it came from (ConfigError if it cannot be)."""
        src = self.config.source
        if not src or not os.path.isfile(src):
            raise ConfigError(f"cannot reload: the config did not come from a file that still "
                              f"exists ({src or 'a dict'})")
        return load_config(src)


# ----------------------------------------------------------------------------- admission

def _internal_error(e: Exception) -> APIError:
    """The 500 answer to a bug: the exception's type, never its message (which may hold
    request data); the traceback goes to the log."""
    return APIError(500, f"Internal gateway error: {type(e).__name__}", "server_error")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def _header(scope, name: bytes) -> str | None:
    """A request header's value from an ASGI scope (names are lower-case bytes there)."""
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def _read_body(scope, receive, cap: int) -> bytes:
    """The request body from ASGI `receive`, at most `cap` bytes.

    Raises APIError 413 (request_too_large) when Content-Length or the bytes received pass
    the cap, ClientGone when the client disconnects first.
    """
    cl = _header(scope, b"content-length")
    if cl is not None and cl.isdigit() and int(cl) > cap:
        raise APIError(413, f"Request body is {cl} bytes; the limit is {cap} bytes.",
                       code="request_too_large")
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise ClientGone()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise APIError(413, f"Request body exceeds the limit of {cap} bytes.",
                           code="request_too_large")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_MAX_DEPTH = 64   # JSON nesting a request may have (tool schemas included); deeper: 400


def _check_depth(obj, limit: int):
    """ValueError when obj (parsed JSON) nests containers deeper than limit; walks only
    containers. Deeper bodies would make later encoders and validators recurse."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            raise ValueError(f"nested more than {limit} levels deep")
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))


async def _send_json(send, status: int, body: dict, headers: dict):
    """A whole JSON response through ASGI `send`; headers: name -> value (any case)."""
    raw = _json(body)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), str(v).encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


@dataclass
class Caller:
    key_id: str | None
    ip: str | None
    t0: float


# ----------------------------------------------------------------------------- dispatch

class Dispatch:
    """Routes one generation through the plan and writes the answer (JSON or SSE); an ASGI
    app for one request. `started` is True once the response has begun."""

    def __init__(self, st: GatewayState, caller: Caller, endpoint: str, req: GenRequest,
                 chain: list[str], stream: bool, include_usage: bool,
                 auto: routing.Classification | None):
        self.st, self.caller, self.endpoint, self.req = st, caller, endpoint, req
        self.tiers = st.tiers      # a reload swaps st.tiers; this request keeps its own
        self.chain, self.stream, self.include_usage, self.auto = chain, stream, include_usage, auto
        self.disconnected = False
        self.finished = False
        self.started = False
        self.tried: list[str] = []
        self.member: Member | None = None    # the backend being tried / that answered
        self.memory: dict | None = None      # the memory figure, once a local backend was considered
        self.reasons: dict[str, str] = {}
        # unique, not secret
        self.rid = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + f"{random.getrandbits(96):024x}"
        self.created = int(time.time())
        self.obj = "chat.completion" if req.kind == "chat" else "text_completion"

    # -- the ASGI call: one task does everything; a watcher cancels it on disconnect
    async def __call__(self, scope, receive, send):
        task = asyncio.current_task()

        async def watch():
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    if not self.finished:
                        self.disconnected = True
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await self._route(send)
        except asyncio.CancelledError:
            if not self.disconnected:
                raise
            if hasattr(task, "uncancel"):        # Python >= 3.11
                task.uncancel()
            self.st.metrics.requests.labels(self.tried[-1] if self.tried else "none",
                                            self.endpoint, "499").inc()
            log.info("client went away; generation cancelled (tier %s)",
                     self.tried[-1] if self.tried else "-")
        finally:
            watcher.cancel()

    def _routing(self, rt: TierRuntime | None, ttft: float | None, final: Final | None) -> dict:
        now = self.st.clock()
        d = {"tier": rt.tier.name if rt else None, "model": rt.tier.id if rt else None,
             "backend": self.member.name if rt and self.member else None,
             "latency_ms": round((now - self.caller.t0) * 1000, 3),
             "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
             "prompt_tokens": final.prompt_tokens if final else None,
             "completion_tokens": final.completion_tokens if final else None,
             "fallback_chain": "->".join(self.tried)}
        if final is not None and final.queue_ms is not None:
            d["queue_ms"] = round(final.queue_ms, 3)
        if self.reasons:
            d["fallback_reasons"] = dict(self.reasons)
        if self.auto is not None:
            d["auto"] = self.auto.to_dict()
        if self.memory is not None:
            d["memory"] = self.memory
        return d

    async def _send_json(self, send, status: int, body: dict, headers: dict):
        self.finished = self.started = True
        await _send_json(send, status, body, headers)

    async def _send_error(self, send, err: APIError, tier: str):
        self.st.metrics.requests.labels(tier, self.endpoint, str(err.status)).inc()
        h = err.headers()
        if err.routing:
            h.update(_routing_headers(err.routing))
        await self._send_json(send, err.status, err.body(), h)

    async def _route(self, send):
        st = self.st
        pressure = None
        retry: list[float] = []
        last: BackendError | None = None
        for name in self.chain:
            rt = self.tiers[name]
            pool = rt.pool
            self.tried.append(name)
            if pressure is None and pool.has_local:
                pressure = st.memory.under_pressure()
                self.memory = st.memory.to_dict()
            members, why = pool.order(bool(pressure))
            if not members:
                self.reasons[name] = why
                retry.append(5.0 if why == "memory_pressure" else
                             min(m.breaker.retry_after() for m in pool.members))
                continue
            multi = len(pool.members) > 1
            for m in members:
                ticket = m.breaker.allow()
                key = f"{name}/{m.name}" if multi else name
                if ticket is None:           # its half-open probe went to another request
                    self.reasons[key] = "breaker_open"
                    retry.append(m.breaker.retry_after())
                    continue
                m.outstanding += 1
                try:
                    e = await self._try(send, rt, m, ticket)
                finally:
                    m.outstanding -= 1
                if e is None:
                    return                   # answered (or streamed)
                last = e
                if e.retry_after is not None:
                    retry.append(e.retry_after)
                if not e.fallback:
                    await self._send_error(send, APIError(
                        e.status, e.message, e.etype, e.code, e.param,
                        routing=self._routing(rt, None, None)), name)
                    return
                self.reasons[key] = e.kind
                st.metrics.fallbacks.labels(name).inc()
                log.info("%s failed before the first byte (%s); trying the next %s", key,
                         e.message, "backend" if multi else "tier")
        await self._all_down(send, retry, last)

    def _failed(self, rt: TierRuntime, m: Member, ticket, e: BackendError):
        """Book-keeping of a backend error: breaker, counters, metrics."""
        (ticket.failure if e.counts else ticket.release)()
        rt.last_error = m.last_error = f"{e.kind}: {e.message}"
        rt.failed, m.failed = rt.failed + 1, m.failed + 1
        self.st.metrics.errors.labels(rt.tier.name, e.kind).inc()

    async def _try(self, send, rt: TierRuntime, m: Member, ticket) -> BackendError | None:
        """Send the request to member `m`: None once answered, the error when it failed
        before the first byte (the caller may try another backend or tier)."""
        self.member = m
        agen = m.backend.stream(self.req)
        try:
            first = await agen.__anext__()
            ttft = self.st.clock() - self.caller.t0
            if self.stream:
                await self._stream(send, rt, ticket, agen, first, ttft)
                return None
            pieces, final = [], first
            if type(first) is str or type(first) is Delta:
                pieces.append(first)
                async for item in agen:
                    if type(item) is str or type(item) is Delta:
                        pieces.append(item)
                    else:
                        final = item
            if not isinstance(final, Final):
                final = Final()
        except BackendError as e:
            await agen.aclose()
            self._failed(rt, m, ticket, e)
            return e
        except BaseException:
            ticket.release()
            await agen.aclose()
            raise
        ticket.success()
        await self._answer(send, rt, pieces, final, ttft)
        return None

    async def _all_down(self, send, retry: list[float], last: BackendError | None):
        why = ", ".join(f"{t}: {r}" for t, r in self.reasons.items()) or "no tier"
        msg = f"No tier could serve the request ({why})."
        if last is not None and len(self.reasons) == 1:
            msg += f" {last.message}"
        err = APIError(503, msg, "server_error", "no_tier_available",
                       retry_after=min(retry) if retry else 1.0,
                       routing=self._routing(None, None, None))
        log.warning("503: %s", msg)
        await self._send_error(send, err, "none")

    def _done(self, rt: TierRuntime, final: Final, ttft: float | None, status: str) -> dict:
        """Book-keeping when a tier finished a request; returns its _routing."""
        st, r = self.st, self._routing(rt, ttft, final)
        rt.last_latency_ms, rt.served, rt.last_error = r["latency_ms"], rt.served + 1, None
        if self.member is not None:
            self.member.served += 1
        rt.last_ttft_ms = r["ttft_ms"]
        m, name = st.metrics, rt.tier.name
        m.requests.labels(name, self.endpoint, status).inc()
        m.latency.labels(name).observe(r["latency_ms"] / 1000)
        if ttft is not None:
            m.ttft.labels(name).observe(ttft)
        pt, ct = final.prompt_tokens or 0, final.completion_tokens or 0
        if pt:
            m.tokens.labels(name, "prompt").inc(pt)
        if ct:
            m.tokens.labels(name, "completion").inc(ct)
        return r

    def _charge(self, final: Final):
        """Charge the tokens to the caller's quotas, after the last byte went out (a
        SQLite transaction is not worth making the client wait for)."""
        self.st.guard.charge(self.caller.key_id, self.caller.ip,
                             (final.prompt_tokens or 0) + (final.completion_tokens or 0))

    def _usage(self, final: Final) -> dict | None:
        if final.prompt_tokens is None and final.completion_tokens is None:
            return None
        pt, ct = final.prompt_tokens or 0, final.completion_tokens or 0
        return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}

    async def _answer(self, send, rt: TierRuntime, pieces: list, final: Final, ttft: float):
        r = self._done(rt, final, ttft, "200")
        if all(type(p) is str for p in pieces):
            text = "".join(pieces)
            if self.req.kind == "chat":
                choices = [{"index": 0, "message": {"role": "assistant", "content": text},
                            "logprobs": None, "finish_reason": final.finish_reason}]
            else:
                choices = [{"index": 0, "text": text, "logprobs": None,
                            "finish_reason": final.finish_reason}]
        else:
            choices = merge_pieces(pieces, self.req.kind == "chat", final.finish_reason)
        body = {"id": self.rid, "object": self.obj, "created": self.created,
                "model": rt.tier.id, "choices": choices, "usage": self._usage(final),
                "_routing": r}
        await self._send_json(send, 200, body, _routing_headers(r))
        self._charge(final)

    # -- streaming
    def _chunk(self, model: str, text: str | None, finish: str | None, first: bool = False) -> dict:
        if self.req.kind == "chat":
            delta = {"role": "assistant", "content": text or ""} if first else \
                ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {"id": self.rid, "object": obj, "created": self.created, "model": model,
                "choices": [choice]}

    def _delta_chunk(self, model: str, d: Delta, first: bool) -> dict:
        """A chunk for a structured piece: its content and other delta fields, logprobs and
        choice index as the backend gave them (an upstream's, unchanged)."""
        if self.req.kind == "chat":
            delta = {"role": "assistant"} if first else {}
            if d.content is not None or first:
                delta["content"] = d.content if d.content is not None else ""
            if d.fields:
                delta.update(d.fields)
            choice = {"index": d.index, "delta": delta, "logprobs": d.logprobs,
                      "finish_reason": d.finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": d.index, "text": d.content or "", "logprobs": d.logprobs,
                      "finish_reason": d.finish_reason}
            obj = "text_completion"
        return {"id": self.rid, "object": obj, "created": self.created, "model": model,
                "choices": [choice]}

    def _chunk_template(self, model: str) -> tuple[bytes, bytes]:
        """(prefix, suffix) of an SSE content chunk around the JSON string of its text;
        the same bytes _sse(self._chunk(model, text, None)) gives."""
        mark = "\x00TEXT\x00"
        whole = _sse(self._chunk(model, mark, None))
        pre, suf = whole.split(json.dumps(mark).encode())
        return pre, suf

    async def _stream(self, send, rt: TierRuntime, ticket, agen, first, ttft: float):
        model = rt.tier.id
        r0 = self._routing(rt, ttft, None)
        hdrs = [(b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        # what is known before the first byte; the rest comes in the last chunk's _routing
        hdrs += [(k.encode(), str(v).encode()) for k, v in _routing_headers(r0).items()
                 if k in _STREAM_HEADERS]
        self.started = True
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        # content chunks differ only in the text: build them from a prefix and a suffix
        pre, suf = self._chunk_template(model)
        dumps = json.dumps
        final = None
        try:
            if type(first) is str or type(first) is Delta:
                chunk = (self._chunk(model, first, None, first=True) if type(first) is str
                         else self._delta_chunk(model, first, True))
                await send({"type": "http.response.body", "more_body": True,
                            "body": _sse(chunk)})
                async for item in agen:
                    if type(item) is str:
                        await send({"type": "http.response.body", "more_body": True,
                                    "body": pre + dumps(item, ensure_ascii=False).encode() + suf})
                    elif type(item) is Delta:
                        await send({"type": "http.response.body", "more_body": True,
                                    "body": _sse(self._delta_chunk(model, item, False))})
                    else:
                        final = item
            else:
                final = first
                await send({"type": "http.response.body", "more_body": True,
                            "body": _sse(self._chunk(model, "", None, first=True))})
        except BackendError as e:
            # too late to fall back: end the stream with an error event and no [DONE]
            await agen.aclose()
            self._failed(rt, self.member, ticket, e)
            self.st.metrics.requests.labels(rt.tier.name, self.endpoint, "stream_error").inc()
            log.warning("tier %s failed mid-stream: %s", rt.tier.name, e.message)
            err = APIError(e.status, e.message, e.etype, e.code, routing=self._routing(rt, ttft, None))
            self.finished = True
            await send({"type": "http.response.body", "more_body": True,
                        "body": _sse(err.body())})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        except BaseException:
            ticket.release()
            await agen.aclose()
            raise
        final = final or Final()
        ticket.success()
        r = self._done(rt, final, ttft, "200")
        last = self._chunk(model, None, final.finish_reason)
        tail = []
        if self.include_usage:
            tail.append(last)
            last = {"id": self.rid, "object": last["object"], "created": self.created,
                    "model": model, "choices": [], "usage": self._usage(final) or
                    {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
        last["_routing"] = r
        tail.append(last)
        out = b"".join(_sse(c) for c in tail) + b"data: [DONE]\n\n"
        self.finished = True
        await send({"type": "http.response.body", "body": out, "more_body": False})
        self._charge(final)


def merge_pieces(pieces: list, chat: bool, finish_reason: str) -> list[dict]:
    """The choices of a whole response from its streamed pieces (str and Delta), merged as
    the official clients merge stream deltas: strings concatenated (content,
    reasoning_content, refusal, ...), tool_calls by their index (id/type kept, function
    name and arguments concatenated), logprobs' token lists appended; other values: the
    last one. Choice 0 ends with finish_reason; the others with their Delta's."""
    out: dict[int, dict] = {}
    for p in pieces:
        d = Delta(p) if type(p) is str else p
        c = out.setdefault(d.index, {"msg": {}, "lp": None, "finish": None})
        msg = c["msg"]
        if d.content is not None:
            msg["content"] = msg.get("content", "") + d.content
        for k, v in (d.fields or {}).items():
            if k == "tool_calls" and isinstance(v, list):
                calls = msg.setdefault("tool_calls", [])
                for tc in v:
                    i = tc.get("index", len(calls))
                    while len(calls) <= i:
                        calls.append({})
                    _merge_into(calls[i], tc)
            elif isinstance(v, str) and isinstance(msg.get(k), str):
                msg[k] += v
            else:
                msg[k] = v
        if d.logprobs:
            if c["lp"] is None:
                c["lp"] = {}
            for k, v in d.logprobs.items():
                if isinstance(v, list):
                    c["lp"].setdefault(k, []).extend(v)
                else:
                    c["lp"][k] = v
        if d.finish_reason:
            c["finish"] = d.finish_reason
    out.setdefault(0, {"msg": {}, "lp": None, "finish": None})["finish"] = finish_reason
    choices = []
    for i in sorted(out):
        c, msg = out[i], out[i]["msg"]
        for tc in msg.get("tool_calls", ()):
            tc.pop("index", None)
        if chat:
            m = {"role": "assistant", "content": msg.pop("content", None)}
            if m["content"] is None and not msg.get("tool_calls"):
                m["content"] = ""
            m.update(msg)
            choices.append({"index": i, "message": m, "logprobs": c["lp"],
                            "finish_reason": c["finish"] or "stop"})
        else:
            choices.append({"index": i, "text": msg.get("content", ""), "logprobs": c["lp"],
                            "finish_reason": c["finish"] or "stop"})
    return choices


def _merge_into(dst: dict, src: dict):
    """One tool-call delta into the call built so far (strings appended, dicts merged)."""
    for k, v in src.items():
        if isinstance(v, dict):
            _merge_into(dst.setdefault(k, {}), v)
        elif isinstance(v, str) and isinstance(dst.get(k), str) and k in ("arguments", "name"):
            dst[k] += v
        elif k not in dst or dst[k] is None:
            dst[k] = v


_STREAM_HEADERS = {"x-gemma4stack-tier", "x-gemma4stack-model", "x-gemma4stack-ttft-ms",
                   "x-gemma4stack-fallback-chain"}


def _routing_headers(r: dict) -> dict:
    keys = ("tier", "model", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
            "fallback_chain")
    return {"x-gemma4stack-" + k.replace("_", "-"): ("" if r.get(k) is None else r[k])
            for k in keys if k in r}


# ----------------------------------------------------------------------------- the app

class GatewayApp(FastAPI):
    """A FastAPI app that serves POST on the paths in `generation_routes` (path -> ASGI
    handler) straight from __call__, ahead of FastAPI's middleware stack; see the module
    docstring for why. The same handlers are also registered as Starlette routes, so other
    methods on those paths get FastAPI's 405 and the router lists them."""

    generation_routes: dict[str, Callable] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.generation_routes.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _ASGIEndpoint:
    def __init__(self, handler: Callable):
        self.handler = handler

    async def __call__(self, scope, receive, send):
        await self.handler(scope, receive, send)


def create_app(config: GatewayConfig, *, model_loader: Callable[[TierConfig], Any] | None = None,
               clock: Callable[[], float] = time.monotonic,
               meminfo: Callable[[], tuple[int, int]] = routing.read_memory,
               transport=None, wall_clock: Callable[[], float] = time.time) -> FastAPI:
    """Build the gateway app (a FastAPI subclass, GatewayApp).

    model_loader(tier) -> Model-like object for local tiers (default: gemma4stack.model.Model);
    clock: seconds, used by breakers, latencies and the memory gauge;
    meminfo() -> (available, total) bytes (default routing.read_memory, cgroup-aware); transport: httpx transport for openai tiers;
    wall_clock: Unix seconds, for the quota windows (minutes and UTC days).
    Local models load on their first request ([models] preload = true: here, so a bad
    GGUF fails the call with OSError / ValueError) and unload per keep_alive (lifecycle.py).
    """
    st = GatewayState(config, model_loader=model_loader, clock=clock, meminfo=meminfo,
                      transport=transport, wall_clock=wall_clock)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        st.start_tasks()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # SIGHUP re-reads the config file (only possible on the main thread)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
        yield
        await st.aclose()

    kw = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI's own OpenTelemetry wrapper costs ~10 % of a streamed request here;
        # the gateway has its Prometheus metrics
        kw["telemetry"] = {"tracing": False, "metrics": False, "logs": False,
                           "operation_spans": False}
    app = GatewayApp(title="gemma4stack gateway", lifespan=lifespan, docs_url=None,
                     redoc_url=None, openapi_url=None, **kw)
    app.state.gateway = st

    def _reject(reason: str, e: APIError):
        st.metrics.rejections.labels(reason).inc()
        raise e

    def authenticate(authorization: str | None) -> str | None:
        try:
            return st.guard.authenticate(authorization)
        except APIError as e:
            _reject("auth", e)

    async def admit(scope, receive) -> tuple[Caller, dict]:
        """Auth, body cap, JSON: the caller and the body (a dict) or APIError."""
        t0 = st.clock()
        key_id = authenticate(_header(scope, b"authorization"))
        client = scope.get("client")
        ip = client[0] if client else None
        try:
            raw = await _read_body(scope, receive, st.config.server.max_body_bytes)
        except APIError as e:
            _reject("body_too_large", e)
        try:
            body = json.loads(raw)
            if raw.count(b"[") + raw.count(b"{") > _MAX_DEPTH:
                _check_depth(body, _MAX_DEPTH)
        except (ValueError, UnicodeDecodeError) as e:
            _reject("invalid", APIError(400, f"Malformed JSON body: {e}", code="invalid_json"))
        except RecursionError:
            _reject("invalid", APIError(400, "Malformed JSON body: nested too deeply",
                                        code="invalid_json"))
        if not isinstance(body, dict):
            _reject("invalid", APIError(400, "The request body must be a JSON object.",
                                        code="invalid_json"))
        return Caller(key_id, ip, t0), body

    async def plan(scope, receive, kind: str, endpoint: str) -> Dispatch:
        caller, body = await admit(scope, receive)
        try:
            model, req, stream, include_usage = parse(body, kind, st.config.server)
            tier = routing.resolve_model(model, st.config)
        except APIError as e:
            _reject("invalid", e)
        except routing.UnknownModel:
            _reject("unknown_model", APIError(
                404, f"The model '{model}' does not exist; use 'auto', a tier "
                f"({', '.join(st.config.tiers)}) or a model id from /v1/models.",
                param="model", code="model_not_found"))
        try:                               # a valid request: count it against the quotas
            st.guard.admit(caller.key_id, caller.ip, media=has_media(req.messages))
        except APIError as e:
            _reject("rate_limit", e)
        auto = None
        if tier is None:
            msgs = req.messages or []
            last_user = next((m for m in reversed(msgs) if m.get("role") == "user"), None)
            text = text_of(last_user.get("content")) if last_user else (req.prompt or "")
            total = sum(len(text_of(m.get("content"))) for m in msgs) if msgs else len(text)
            auto = routing.classify(text, total, st.config.routing)
        chain = routing.plan(tier, auto, st.config)
        return Dispatch(st, caller, endpoint, req, chain, stream, include_usage, auto)

    def generation(kind: str, endpoint: str):
        """The ASGI handler of POST /v1/chat/completions (kind "chat") or /v1/completions."""
        async def handler(scope, receive, send):
            dispatch = None
            try:
                dispatch = await plan(scope, receive, kind, endpoint)
                await dispatch(scope, receive, send)
            except ClientGone:
                log.info("client went away before its request body arrived")
            except Exception as e:
                if dispatch is not None and dispatch.started:
                    raise                  # mid-response: uvicorn logs it and closes
                if not isinstance(e, APIError):
                    log.exception("unhandled error on %s", scope["path"])
                    e = _internal_error(e)
                await _send_json(send, e.status, e.body(), e.headers())
        return handler

    for path, kind, endpoint in (("/v1/chat/completions", "chat", "chat"),
                                 ("/v1/completions", "completion", "completions")):
        h = generation(kind, endpoint)
        app.generation_routes = {**app.generation_routes, path: h}
        # a callable object, not a function: Starlette then calls it as an ASGI app
        app.router.routes.append(Route(path, _ASGIEndpoint(h), methods=["POST"]))

    @app.get("/v1/models")
    async def models(request: Request):
        authenticate(request.headers.get("authorization"))
        created = int(time.time())
        data = [{"id": "auto", "object": "model", "created": created, "owned_by": "gemma4stack",
                 "tier": None, "backend": "router"}]
        seen = {"auto"}
        for name, rt in st.tiers.items():
            t = rt.tier
            local = [m for m in rt.pool.members if m.is_local]
            extra = {}
            if local:                      # which local models are loaded, and their memory
                stats = [dict(m.backend.status(), name=m.name) for m in local]
                extra = {"loaded": any(x["loaded"] for x in stats),
                         "memory_bytes": sum(x["memory_bytes"] or 0 for x in stats),
                         "local_backends": [{k: x[k] for k in (
                             "name", "loaded", "memory_bytes", "keep_alive_s", "expires_in_s")}
                             for x in stats]}
            for mid in (name, t.id):
                if mid not in seen:
                    seen.add(mid)
                    data.append({"id": mid, "object": "model", "created": created,
                                 "owned_by": "gemma4stack", "tier": name, "backend": t.backend,
                                 **extra})
        return {"object": "list", "data": data}

    @app.get("/")
    async def chat_page():
        """The chat page (static/chat.html); the API key is entered in the page."""
        return HTMLResponse(_chat_html(), headers={
            # its own inline script and style, requests to this origin only
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    def on_sighup():
        async def run():
            try:
                await st.reload(st.reload_from_source())
            except (ConfigError, OSError, ValueError) as e:
                log.error("SIGHUP: config not reloaded, the old one stays: %s", e)
        st._tasks.append(asyncio.create_task(run(), name="g4gw-sighup-reload"))

    @app.post("/admin/reload")
    async def admin_reload(request: Request):
        """Re-read the config file (admin keys only); requests in flight are not dropped.
        400 with the config error (the old config stays) when the file is bad."""
        st.guard.authenticate_admin(request.headers.get("authorization"))
        try:
            report = await st.reload(st.reload_from_source())
        except (ConfigError, OSError, ValueError) as e:
            raise APIError(400, f"Config not reloaded (the old one stays): {e}",
                           code="invalid_config") from None
        return {"object": "reload", "reloads": st.reloads, **report}

    @app.get("/v1/usage")
    async def usage(request: Request, days: int = 7, key: str | None = None,
                    ip: str | None = None):
        """Requests, text / media requests and tokens per key (and client IP) and UTC day,
        newest first; admin keys only. ?days=N (1..366), ?key=NAME or ?ip=ADDR to filter."""
        st.guard.authenticate_admin(request.headers.get("authorization"))
        if not 1 <= days <= 366:
            raise APIError(400, "days must be in 1..366", param="days", code="invalid_value")
        who = f"key:{key}" if key is not None else f"ip:{ip}" if ip is not None else None
        rows = st.guard.store.usage(days=days, who=who)
        data = []
        for r in rows:
            kind, _, name = r.pop("who").partition(":")
            data.append({"object": "usage", "kind": kind, "name": name, **r})
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        status, body = st.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request):
        authenticate(request.headers.get("authorization"))
        for name, rt in st.tiers.items():
            st.metrics.breaker.labels(name).set(rt.state.gauge)
            local = [m.backend.status() for m in rt.pool.members if m.is_local]
            if local:
                st.metrics.queue.labels(name).set(sum(x["queue_depth"] for x in local))
                engines = [x["engine"] for x in local if x.get("engine")]
                # the tier's engine gauges: one loaded model's stats, or their sum
                st.metrics.engine(name, engines[0] if len(engines) == 1 else {
                    k: sum(e.get(k, 0) for e in engines) for k in engines[0]} if engines else None)
            if len(rt.pool.members) > 1:
                for m in rt.pool.members:
                    st.metrics.backend_up.labels(name, m.name).set(int(m.up(False)))
                    st.metrics.outstanding.labels(name, m.name).set(m.outstanding)
        return Response(st.metrics.render(), media_type=st.metrics.content_type)

    # -- every error as an OpenAI error object
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers())

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        errs = e.errors()
        loc = ".".join(str(p) for p in errs[0]["loc"][1:]) if errs else None
        msg = errs[0]["msg"] if errs else "Invalid request"
        st.metrics.rejections.labels("invalid").inc()
        return JSONResponse(APIError(400, f"Invalid value for '{loc}': {msg}", param=loc,
                                     code="invalid_value").body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        msg = {404: f"Unknown path {request.url.path}", 405: f"Method {request.method} not "
               f"allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, msg, code=None).body(),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(_internal_error(e).body(), status_code=500)

    return app
