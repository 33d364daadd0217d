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
import inspect
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from . import routing
from .auth import Guard
from .backends import BackendError, Delta, Final, GenRequest, LocalBackend, OpenAIBackend, text_of
from .breaker import CircuitBreaker, State
from .config import GatewayConfig, TierConfig
from .errors import APIError
from .metrics import Metrics
from .schemas import parse

log = logging.getLogger("gemma4stack.gateway")


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _sse(obj) -> bytes:
    """One server-sent event carrying a JSON object (the OpenAI streaming format)."""
    return b"data: " + _json(obj) + b"\n\n"


def load_model(tier: TierConfig):
    """Open a local tier's GGUF with gemma4stack.model.Model (the default model_loader)."""
    from gemma4stack.model import Model
    return Model(tier.model, threads=tier.threads, context=tier.context)


@dataclass
class TierRuntime:
    """A tier while the gateway runs: its backend, breaker and recent history."""
    tier: TierConfig
    backend: Any
    breaker: CircuitBreaker
    last_latency_ms: float | None = None
    last_ttft_ms: float | None = None
    last_error: str | None = None
    served: int = 0
    failed: int = 0

    def to_dict(self, pressure: bool) -> dict:
        b = self.breaker
        up = b.state is not State.OPEN and getattr(self.backend, "ready", True) and \
            not (self.tier.is_local and pressure)
        d = {"up": bool(up), "backend": self.tier.backend, "model": self.tier.id,
             "breaker": b.state.value, "retry_after_s": round(b.retry_after(), 3),
             "last_latency_ms": self.last_latency_ms, "last_ttft_ms": self.last_ttft_ms,
             "last_error": self.last_error, "served": self.served, "failed": self.failed}
        if self.tier.is_local and pressure:
            d["skipped"] = "memory_pressure"
        d.update(self.backend.status())
        return d


class GatewayState:
    """Everything the endpoints share; built once per app."""

    def __init__(self, config: GatewayConfig, *, model_loader: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 meminfo: Callable[[], tuple[int, int]] = routing.read_meminfo,
                 transport=None):
        self.config, self.clock = config, clock
        self.metrics = Metrics()
        self.guard = Guard(config.auth, config.limits)
        self.memory = routing.MemoryGauge(config.routing.min_available_memory, meminfo, clock)
        self.tiers: dict[str, TierRuntime] = {}
        loader = model_loader or load_model
        b = config.breaker
        for name, tier in config.tiers.items():
            if tier.is_local:
                backend = LocalBackend(tier, loader(tier), config.server.max_tokens)
            else:
                backend = OpenAIBackend(tier, transport=transport)
            breaker = CircuitBreaker(b.failures, b.window_s, b.cooldown_s, clock=clock,
                                     on_change=self._breaker_changed(name))
            self.tiers[name] = TierRuntime(tier, backend, breaker)
            self.metrics.breaker.labels(name).set(0)

    def _breaker_changed(self, name: str):
        def changed(old: State, new: State):
            log.warning("tier %s: circuit breaker %s -> %s", name, old.value, new.value)
            self.metrics.breaker.labels(name).set(new.gauge)
        return changed

    def health(self) -> tuple[int, dict]:
        pressure = self.memory.under_pressure()
        tiers = {n: rt.to_dict(pressure) for n, rt in self.tiers.items()}
        ok = any(t["up"] for t in tiers.values())
        return (200 if ok else 503), {"status": "ok" if ok else "unavailable", "tiers": tiers,
                                      "memory": self.memory.to_dict()}

    async def aclose(self):
        for rt in self.tiers.values():
            with contextlib.suppress(Exception):
                await rt.backend.aclose()


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
        self.chain, self.stream, self.include_usage, self.auto = chain, stream, include_usage, auto
        self.disconnected = False
        self.finished = False
        self.started = False
        self.tried: list[str] = []
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
             "latency_ms": round((now - self.caller.t0) * 1000, 3),
             "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
             "prompt_tokens": final.prompt_tokens if final else None,
             "completion_tokens": final.completion_tokens if final else None,
             "fallback_chain": "->".join(self.tried)}
        if self.reasons:
            d["fallback_reasons"] = dict(self.reasons)
        if self.auto is not None:
            d["auto"] = self.auto.to_dict()
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
            rt = st.tiers[name]
            self.tried.append(name)
            if rt.tier.is_local:
                if pressure is None:
                    pressure = st.memory.under_pressure()
                if pressure:
                    self.reasons[name] = "memory_pressure"
                    retry.append(5.0)
                    continue
            ticket = rt.breaker.allow()
            if ticket is None:
                self.reasons[name] = "breaker_open"
                retry.append(rt.breaker.retry_after())
                continue
            agen = rt.backend.stream(self.req)
            try:
                first = await agen.__anext__()
                ttft = st.clock() - self.caller.t0
                if self.stream:
                    await self._stream(send, rt, ticket, agen, first, ttft)
                    return
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
                last = e
                (ticket.failure if e.counts else ticket.release)()
                rt.last_error, rt.failed = f"{e.kind}: {e.message}", rt.failed + 1
                st.metrics.errors.labels(name, e.kind).inc()
                if e.retry_after is not None:
                    retry.append(e.retry_after)
                if not e.fallback:
                    routing_ = self._routing(rt, None, None)
                    await self._send_error(send, APIError(e.status, e.message, e.etype, e.code,
                                                          e.param, routing=routing_), name)
                    return
                self.reasons[name] = e.kind
                st.metrics.fallbacks.labels(name).inc()
                log.info("tier %s failed before the first byte (%s); trying the next tier",
                         name, e.message)
                continue
            except BaseException:
                ticket.release()
                await agen.aclose()
                raise
            ticket.success()
            await self._answer(send, rt, pieces, final, ttft)
            return
        await self._all_down(send, retry, last)

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
        st.guard.charge(self.caller.key_id, self.caller.ip, pt + ct)
        return r

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
            (ticket.failure if e.counts else ticket.release)()
            rt.last_error, rt.failed = f"{e.kind}: {e.message}", rt.failed + 1
            self.st.metrics.errors.labels(rt.tier.name, e.kind).inc()
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
               meminfo: Callable[[], tuple[int, int]] = routing.read_meminfo,
               transport=None) -> FastAPI:
    """Build the gateway app (a FastAPI subclass, GatewayApp).

    model_loader(tier) -> Model-like object for local tiers (default: gemma4stack.model.Model);
    clock: seconds, used by breakers, latencies and the memory gauge;
    meminfo() -> (MemAvailable, MemTotal) bytes; transport: httpx transport for openai tiers.
    Local models are loaded here, so a bad GGUF fails the call (OSError / ValueError).
    """
    st = GatewayState(config, model_loader=model_loader, clock=clock, meminfo=meminfo,
                      transport=transport)

    @contextlib.asynccontextmanager
    async def lifespan(app):
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
    cfg = config

    def _reject(reason: str, e: APIError):
        st.metrics.rejections.labels(reason).inc()
        raise e

    def authenticate(authorization: str | None) -> str | None:
        try:
            return st.guard.authenticate(authorization)
        except APIError as e:
            _reject("auth", e)

    async def admit(scope, receive) -> tuple[Caller, dict]:
        """Auth, rate limit, body cap, JSON: the caller and the body (a dict) or APIError."""
        t0 = st.clock()
        key_id = authenticate(_header(scope, b"authorization"))
        client = scope.get("client")
        ip = client[0] if client else None
        try:
            st.guard.admit(key_id, ip)
        except APIError as e:
            _reject("rate_limit", e)
        try:
            raw = await _read_body(scope, receive, cfg.server.max_body_bytes)
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
            model, req, stream, include_usage = parse(body, kind, cfg.server)
            tier = routing.resolve_model(model, cfg)
        except APIError as e:
            _reject("invalid", e)
        except routing.UnknownModel:
            _reject("unknown_model", APIError(
                404, f"The model '{model}' does not exist; use 'auto', a tier "
                f"({', '.join(cfg.tiers)}) or a model id from /v1/models.",
                param="model", code="model_not_found"))
        auto = None
        if tier is None:
            msgs = req.messages or []
            last_user = next((m for m in reversed(msgs) if m.get("role") == "user"), None)
            text = text_of(last_user.get("content")) if last_user else (req.prompt or "")
            total = sum(len(text_of(m.get("content"))) for m in msgs) if msgs else len(text)
            auto = routing.classify(text, total, cfg.routing)
        chain = routing.plan(tier, auto, cfg)
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
        for name, t in cfg.tiers.items():
            for mid in (name, t.id):
                if mid not in seen:
                    seen.add(mid)
                    data.append({"id": mid, "object": "model", "created": created,
                                 "owned_by": "gemma4stack", "tier": name, "backend": t.backend})
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        status, body = st.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request):
        authenticate(request.headers.get("authorization"))
        for name, rt in st.tiers.items():
            st.metrics.breaker.labels(name).set(rt.breaker.state.gauge)
            if rt.tier.is_local:
                st.metrics.queue.labels(name).set(rt.backend.status()["queue_depth"])
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
