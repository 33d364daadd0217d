"""Backends: where a tier's tokens come from.

Every backend turns a GenRequest into an async stream of text pieces (str, or a Delta when
a piece carries more than content: tool calls, reasoning, a refusal, logprobs, another
choice index) that ends with one Final (finish_reason, token counts), or raises a
BackendError before or during it:

    LocalBackend   a GGUF run by gemma4stack.model.Model in this process: one worker thread
                   per admitted request, whose generations the Model's engine decodes
                   together (continuous batching, `parallel` at once); a bounded queue;
                   cancelled between tokens when the consumer goes away.
    OpenAIBackend  any OpenAI-compatible server (llama.cpp's llama-server, vLLM, Ollama,
                   mlx_lm.server, a hosted API) through httpx, always streaming upstream so
                   the first-byte timeout and TTFT mean the same thing for every tier.

Errors say whether they count against the tier's circuit breaker (timeouts, connection
errors, 5xx, a stream cut short) and whether the gateway may try the next tier.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import httpcore
import httpx

from .config import TierConfig


# ----------------------------------------------------------------------------- data

@dataclass
class GenRequest:
    """One generation, independent of the endpoint it came from.

    kind: "chat" (messages) or "completion" (prompt). Sampling fields left None use the
    backend's defaults. max_tokens None: local tiers run to the end of the context,
    openai tiers leave it to the upstream server.
    """
    kind: str
    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    # every other field of the request body as the client sent it (tools, tool_choice,
    # response_format, logprobs, logit_bias, presence/frequency_penalty, n, user, metadata,
    # fields the gateway does not know...): forwarded to openai tiers unchanged; local
    # tiers use what they understand (gemma4stack.tools.local_options)
    extra: dict = field(default_factory=dict)
    keep_alive: float | None = None   # local models: seconds to stay loaded after it, -1 = forever


@dataclass
class Delta:
    """A streamed piece with more than text, as an OpenAI chunk's choice carries it.

    content: the text (None: none in this piece). fields: the delta's other fields as the
    upstream sent them (tool_calls with their index, reasoning_content, refusal, ...).
    logprobs: the choice's logprobs object for this piece ({"content": [...]} for chat,
    the legacy {tokens, token_logprobs, top_logprobs, text_offset} for completions).
    index: the choice index (n > 1). finish_reason: set on the last piece of a choice other
    than choice 0 (choice 0's comes in Final).
    """
    content: str | None = None
    fields: dict | None = None
    logprobs: dict | None = None
    index: int = 0
    finish_reason: str | None = None


@dataclass
class Final:
    """End of a generation: finish_reason "stop" | "length", token counts (None = unknown),
    queue_ms: time a local tier's request waited for a batch slot and KV blocks."""
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_ms: float | None = None


class BackendError(Exception):
    """A tier could not serve a request.

    kind: short machine name ("timeout", "connect", "http_503", "queue_full", ...);
    counts: counts as a failure for the circuit breaker; fallback: the next tier may be
    tried; status/etype/code: the HTTP status and OpenAI error fields if this error is
    the one returned to the client; retry_after: seconds (for 503/429).
    """

    def __init__(self, kind: str, message: str, *, counts: bool, fallback: bool,
                 status: int = 502, etype: str = "server_error", code: str | None = None,
                 retry_after: float | None = None, param: str | None = None):
        super().__init__(message)
        self.kind, self.message, self.counts, self.fallback = kind, message, counts, fallback
        self.status, self.etype, self.code, self.retry_after = status, etype, code, retry_after
        self.param = param


def failure(kind: str, message: str, status: int = 502) -> BackendError:
    """Timeouts, connection errors, 5xx, broken streams: count, and fall back."""
    return BackendError(kind, message, counts=True, fallback=True, status=status,
                        code=kind)


def client_error(message: str, status: int = 400, code: str | None = None,
                 etype: str = "invalid_request_error", param: str | None = None) -> BackendError:
    """The request itself is at fault (4xx, context too long): no count, no fallback."""
    return BackendError("client_error", message, counts=False, fallback=False, status=status,
                        etype=etype, code=code, param=param)


def text_of(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict)
                   and p.get("type") == "text")


def render_messages(messages: list[dict], mode: str = "plain") -> str:
    """Chat messages as one prompt for a model without a chat template.

    "plain": one line per message, "System: ...", "User: ...", "Assistant: ...", then
             "Assistant:" for the model to continue (a role-tagged transcript).
    "raw":   the message contents joined by newlines (for base models such as TinyStories,
             where a single user message is the text to continue).
    """
    if mode == "raw":
        return "\n".join(text_of(m.get("content")) for m in messages)
    lines = [f"{m.get('role', 'user').capitalize()}: {text_of(m.get('content'))}"
             for m in messages]
    return "\n".join(lines) + "\nAssistant:"


# Where a "plain" transcript's reply ends: a model continuing it (a base model has no
# end-of-turn token) writes the next turn itself, "\nUser: ..."; cut the reply there.
TRANSCRIPT_STOPS = ("\nUser:", "\nSystem:", "\nAssistant:")


def transcript_stops(stop: list[str] | None) -> list[str]:
    """A "plain" transcript's stop strings: the request's own, then the next turn's markers."""
    return list(stop or []) + [s for s in TRANSCRIPT_STOPS if s not in (stop or [])]


def _stat(stats: Any, name: str, default=None):
    if stats is None:
        return default
    if isinstance(stats, dict):
        return stats.get(name, default)
    return getattr(stats, name, default)


# ----------------------------------------------------------------------------- local

_END = object()


def _queue_full_error() -> type:
    from gemma4stack.model import QueueFullError
    return QueueFullError


class LocalBackend:
    """A GGUF in this process. model: a gemma4stack.model.Model (or anything with its API).

    At most tier.parallel + tier.queue_size requests are admitted (parallel decoded together
    by the Model's engine, the rest waiting); more raise BackendError("queue_full", 503,
    Retry-After), which the gateway may route elsewhere. Each admitted request streams in a
    thread of its own (the C core releases the GIL; the engine batches their steps).
    """

    def __init__(self, tier: TierConfig, model: Any, max_tokens: int = 8192):
        self.tier, self.model = tier, model
        self.max_tokens = max_tokens  # used when a request sets none ([server] max_tokens)
        self._slots = max(1, getattr(tier, "parallel", 1)) + tier.queue_size
        self._pool = ThreadPoolExecutor(self._slots, thread_name_prefix=f"g4gw-{tier.name}")
        self._pending = 0            # admitted and not finished (touched on the loop only)
        self._last_run_s = 1.0       # duration of the last generation, for Retry-After
        self.ready = True

    @property
    def n_ctx(self) -> int | None:
        return getattr(self.model, "n_ctx", None)

    def status(self) -> dict:
        d = {"queue_depth": self._pending, "queue_size": self.tier.queue_size}
        stats = getattr(self.model, "stats", None)
        if callable(stats):
            try:
                d["engine"] = stats().to_dict()
            except (ValueError, AttributeError):      # closed, or not a gemma4stack Model
                pass
        return d

    def _uses_chat(self) -> bool:
        return (self.tier.chat_template == "auto" and callable(getattr(self.model, "chat", None))
                and bool(getattr(self.model, "chat_template", None)))

    async def stream(self, req: GenRequest) -> AsyncIterator[str | Final]:
        if self._pending >= self._slots:
            raise BackendError("queue_full", f"tier '{self.tier.name}': local queue is full "
                               f"({self._pending} requests)", counts=False, fallback=True,
                               status=503, code="queue_full",
                               retry_after=max(1.0, self._last_run_s))
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        self._pending += 1
        fut = loop.run_in_executor(self._pool, self._work, req, loop, q, cancel)
        fut.add_done_callback(self._job_done)
        try:
            while True:
                item = await q.get()
                if type(item) is str or type(item) is Delta:
                    yield item
                elif isinstance(item, Final):
                    yield item
                    return
                elif isinstance(item, BaseException):
                    raise item
                else:                 # _END without Final: cancelled in the thread
                    return
        finally:
            cancel.set()              # stop the thread at the next token if still running

    def _job_done(self, fut):
        self._pending -= 1

    def _work(self, req: GenRequest, loop, q: asyncio.Queue, cancel: threading.Event):
        """Runs in the tier's worker thread: generate, posting pieces to the loop."""
        def put(x):
            try:
                loop.call_soon_threadsafe(q.put_nowait, x)
            except RuntimeError:      # the loop is closed: nobody is listening any more
                pass

        if cancel.is_set():           # the client left while this request was queued
            put(_END)
            return
        t0 = time.monotonic()
        try:
            kw = {k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p),
                                    ("top_k", req.top_k), ("seed", req.seed), ("stop", req.stop))
                  if v is not None}
            # tools and response_format go through Model.chat even without a chat template
            # (it then describes the tools in a raw prompt)
            chat = req.kind == "chat" and (self._uses_chat() or any(
                req.extra.get(k) for k in ("tools", "response_format")))
            if req.extra:
                from gemma4stack.tools import local_options
                kw.update(local_options(req.extra, "chat" if chat else "completion"))
            n = int(req.extra.get("n") or 1) if req.extra else 1
            others = [_Choice(self, req, {**kw, **({"seed": kw["seed"] + i} if "seed" in kw else {})},
                              chat, i, put, cancel) for i in range(1, n)]
            for c in others:          # choices 1..n-1 run beside choice 0 in the Model's engine
                c.start()
            try:
                st, gen = self._generate(req, kw, chat, 0, put, cancel)
            except BaseException:
                cancel.set()          # the request fails: stop the other choices too
                raise
            finally:
                for c in others:
                    c.join()
            if cancel.is_set():
                put(_END)
                return
            for c in others:
                if c.error is not None:
                    raise c.error
            extra = sum(_stat(c.stats, "completion_tokens") or 0 for c in others)
            put(Final(getattr(gen, "finish_reason", None) or _stat(st, "finish_reason", "stop") or "stop",
                      _stat(st, "prompt_tokens"), (_stat(st, "completion_tokens") or 0) + extra
                      if others else _stat(st, "completion_tokens"), _stat(st, "queue_ms")))
        except BackendError as e:
            put(e)
        except _queue_full_error() as e:   # the Model's own queue (another user of it)
            put(BackendError("queue_full", f"tier '{self.tier.name}': {e}", counts=False,
                             fallback=True, status=503, code="queue_full",
                             retry_after=max(1.0, self._last_run_s)))
        except ValueError as e:        # bad parameters, schemas, grammars, a template's
            msg = str(e)               # raise_exception, LimitError, GGUFError: the request
            put(client_error(f"tier '{self.tier.name}': {msg}",
                             code="context_length_exceeded" if "context" in msg.lower() else None,
                             param=getattr(e, "param", None)))
        except Exception as e:         # noqa: BLE001 - anything else is the backend failing
            put(failure("local_error", f"tier '{self.tier.name}': local model failed: "
                        f"{type(e).__name__}: {e}", status=500))
        finally:
            self._last_run_s = time.monotonic() - t0

    def _generate(self, req: GenRequest, kw: dict, chat: bool, index: int, put, cancel):
        """Run one choice of req on the Model, posting its pieces (choice index > 0: as Delta
        with that index, the last one with its finish_reason). Returns (its GenerationStats or
        None, the generator). Raises what the Model raises."""
        n_ctx = self.n_ctx
        if chat:
            kw["max_tokens"] = req.max_tokens or self.max_tokens
            gen = self.model.chat(req.messages, stream=True, **kw)
        else:
            mode = "raw" if self.tier.chat_template == "raw" else "plain"
            prompt = (req.prompt if req.kind == "completion" else
                      render_messages(req.messages, mode))
            if req.kind == "chat" and mode == "plain":
                kw["stop"] = transcript_stops(req.stop)
            max_tokens = req.max_tokens
            if n_ctx:
                n_prompt = len(self.model.tokenize(prompt))
                room = n_ctx - n_prompt - 1          # tokenize() counts BOS; 1 spare
                if room < 1:
                    raise client_error(
                        f"This model's maximum context length is {n_ctx} tokens; the "
                        f"prompt has {n_prompt} tokens.", code="context_length_exceeded",
                        param="messages" if req.kind == "chat" else "prompt")
                max_tokens = room if max_tokens is None else min(max_tokens, room)
            kw["max_tokens"] = min(max_tokens or self.max_tokens, self.max_tokens)
            gen = self.model.generate(prompt, stream=True, **kw)
        try:
            for piece in gen:
                if cancel.is_set():
                    break
                if type(piece) is not str:     # a tools.ChatDelta: structured piece
                    piece = Delta(piece.content, piece.fields() or None,
                                  piece.logprobs_dict(req.kind), index)
                elif index:
                    piece = Delta(piece, index=index)
                if piece:
                    put(piece)
        finally:
            close = getattr(gen, "close", None)
            if close:
                close()           # closing the generator cancels generation in the core
        st = getattr(gen, "stats", None)       # this generation's (TextStream)
        if st is None:
            st = getattr(self.model, "last_stats", None)
        if index and not cancel.is_set():
            put(Delta(index=index, finish_reason=getattr(gen, "finish_reason", None)
                      or _stat(st, "finish_reason", "stop") or "stop"))
        return st, gen

    async def aclose(self):
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Choice(threading.Thread):
    """Choice `index` (> 0) of a local request with n > 1, run in a thread of its own so the
    Model's engine decodes it in the same steps as the others (their common prompt is
    prefilled once: the prefix cache). .stats and .error once joined."""

    def __init__(self, backend: "LocalBackend", req: GenRequest, kw: dict, chat: bool,
                 index: int, put, cancel: threading.Event):
        super().__init__(name=f"g4gw-choice{index}", daemon=True)
        self.args = (req, kw, chat, index, put, cancel)
        self.backend = backend
        self.stats = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.stats, _ = self.backend._generate(*self.args)
        except BaseException as e:     # noqa: BLE001 - re-raised by the request's thread
            self.error = e


# ----------------------------------------------------------------------------- openai

def _upstream_error(status: int, body: bytes, tier: str) -> BackendError:
    """Map an upstream HTTP error to a BackendError (5xx count, 4xx do not)."""
    try:
        err = json.loads(body).get("error") or {}
        if isinstance(err, str):
            err = {"message": err}
    except (ValueError, AttributeError):
        err = {}
    msg = err.get("message") or body[:200].decode("utf-8", "replace") or f"HTTP {status}"
    msg = f"tier '{tier}' upstream HTTP {status}: {msg}"
    if status >= 500:
        return failure(f"http_{status}", msg)
    if status == 429:                # upstream is busy: try another tier, not a fault
        return BackendError("http_429", msg, counts=False, fallback=True, status=429,
                            etype="rate_limit_error", code="rate_limit_exceeded")
    if status in (401, 403):          # our key for the upstream is wrong: the gateway's fault
        return BackendError(f"http_{status}", msg, counts=False, fallback=True, status=502,
                            etype="server_error", code="upstream_auth_failed")
    code = err.get("code")
    if code is None and "context" in msg.lower():
        code = "context_length_exceeded"
    return client_error(msg, status=status, code=code, etype=err.get("type") or
                        "invalid_request_error", param=err.get("param"))


_PLAIN = frozenset(("content", "role"))   # a delta with only these is plain text


def _upstream_piece(c: dict, chat: bool, key: str, finish: str | None = None) -> str | Delta | None:
    """One upstream choice (a chunk's `delta` or a whole `message`) as a piece: the plain text
    when that is all it holds (the common case, kept cheap), else a Delta with every other
    field of it (tool_calls, reasoning_content, refusal, ...) and its logprobs, unchanged."""
    index, logprobs = c.get("index", 0), c.get("logprobs")
    if not chat:
        text = c.get("text")
        if logprobs is None and not index and finish is None:
            return text or None
        return Delta(text or None, None, logprobs, index, finish)
    d = c.get(key) or {}
    text = d.get("content")
    if logprobs is None and not index and finish is None and (
            d.keys() <= _PLAIN or all(v is None for k, v in d.items() if k not in _PLAIN)):
        return text or None
    fields = {k: v for k, v in d.items() if k not in ("content", "role") and v is not None}
    if key == "message" and fields.get("tool_calls"):     # a whole message: give them indexes
        fields["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(fields["tool_calls"])]
    return Delta(text, fields or None, logprobs, index, finish)


async def _read_all(resp: httpx.Response) -> bytes:
    return b"".join([c async for c in resp.stream])


def _sse_data(event: bytes) -> bytes | None:
    """The data of one server-sent event (its `data:` lines joined), None if it has none."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]                        # the usual one-line event, fast
    lines = [ln[5:].lstrip(b" ") if ln.startswith(b"data:") else None
             for ln in event.split(b"\n")]
    data = [ln for ln in lines if ln is not None]
    return b"\n".join(data) if data else None


_SSL = None


def _ssl_context():
    """One certifi/system SSL context for all clients (each costs ~30 ms to build)."""
    global _SSL
    if _SSL is None:
        _SSL = httpx.create_ssl_context()
    return _SSL


def _transport(url: str, ssl, connections: int) -> httpx.AsyncHTTPTransport:
    """httpx's transport; for http:// with netstream.TCPBackend under its connection pool
    (same httpcore pool and HTTP/1.1 code, about a third less CPU per streamed request)."""
    t = httpx.AsyncHTTPTransport(verify=ssl, limits=httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections))
    if url.startswith("http:") and hasattr(t, "_pool"):
        from .netstream import TCPBackend
        t._pool = httpcore.AsyncConnectionPool(
            max_connections=connections, max_keepalive_connections=connections,
            network_backend=TCPBackend())
    return t


class OpenAIBackend:
    """An OpenAI-compatible server at tier.url (which ends in /v1).

    Timeouts: connect_timeout_s to open a connection; first_byte_timeout_s for the response
    headers and for any silence between streamed bytes (httpx's read timeout);
    total_timeout_s for the whole exchange (checked between chunks).
    transport: an httpx transport for tests (default: real sockets).
    """

    def __init__(self, tier: TierConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.tier = tier
        headers = {"Authorization": f"Bearer {tier.api_key}"} if tier.api_key else {}
        c = tier.connect_timeout_s
        timeout = httpx.Timeout(connect=c, read=tier.first_byte_timeout_s,
                                write=tier.first_byte_timeout_s, pool=tier.total_timeout_s)
        # httpcore 1.0's pool rescans all its connections on every request and release,
        # asking each idle one whether its socket is readable (anyio builds a dict of socket
        # attributes and polls, per connection), so its cost grows with the pool: at 64
        # streams it took more CPU than everything else together (encode/httpcore#1035,
        # pydantic/httpx2#1169). One connection per pool, least-busy pool first, makes
        # every scan one check; up to max_connections pools, made as the concurrency
        # needs them (each costs ~0.7 ms to build: 128 up front made a tier of three
        # backends take a quarter of a second to start).
        self._ssl = _ssl_context() if tier.url.startswith("https:") else False
        # the transport (httpx's connection layer) directly: the client layer on top
        # (URL merging, auth, redirects, cookies, hooks) cost ~0.3 ms of CPU per request
        self._pools = [transport] if transport is not None else []
        self._max_pools = 1 if transport is not None else tier.max_connections
        self._busy = [0] * len(self._pools)
        self._timeout = timeout.as_dict()
        self._urls = {k: httpx.URL(tier.url + p) for k, p in
                      (("chat", "/chat/completions"), ("completion", "/completions"))}
        # identity: the raw bytes below are read as sent (no gzip on an SSE stream)
        self._headers = {"content-type": "application/json", "accept-encoding": "identity",
                         "user-agent": "gemma4stack-gateway", **headers}
        self.ready = True

    def status(self) -> dict:
        return {"url": self.tier.url}

    def _body(self, req: GenRequest) -> dict:
        body: dict = {"model": self.tier.model, "stream": True,
                      "stream_options": {"include_usage": True}}
        if req.kind == "chat":
            body["messages"] = req.messages
        else:
            body["prompt"] = req.prompt
        for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop"):
            v = getattr(req, k)
            if v is not None:
                body[k] = v
        if "max_completion_tokens" in req.extra:
            body.pop("max_tokens", None)      # the client's own name for it goes upstream
        body.update(req.extra)                # everything else exactly as the client sent it
        return body

    async def stream(self, req: GenRequest) -> AsyncIterator[str | Final]:
        name, url = self.tier.name, self.tier.url
        chat = req.kind == "chat"
        deadline = time.monotonic() + self.tier.total_timeout_s
        busy = self._busy
        if 0 in busy:
            i = busy.index(0)
        elif len(busy) < self._max_pools:          # all busy: one more connection
            self._pools.append(_transport(self.tier.url, self._ssl, 1))
            busy.append(0)
            i = len(busy) - 1
        else:
            i = min(range(len(busy)), key=busy.__getitem__)
        busy[i] += 1
        resp = None
        try:
            request = httpx.Request(
                "POST", self._urls[req.kind], headers=self._headers,
                content=json.dumps(self._body(req), ensure_ascii=False).encode(),
                extensions={"timeout": self._timeout})
            resp = await self._pools[i].handle_async_request(request)
            if resp.status_code >= 400:
                raise _upstream_error(resp.status_code, await _read_all(resp), name)
            if "text/event-stream" not in resp.headers.get("content-type", ""):
                # a server that ignored stream=true answers with one JSON object
                data = json.loads(await _read_all(resp))
                choices = data.get("choices") or [{}]
                for c in choices[1:]:
                    yield _upstream_piece(c, chat, "message", c.get("finish_reason") or "stop")
                c = choices[0]
                piece = _upstream_piece(c, chat, "message")
                if piece:
                    yield piece
                u = data.get("usage") or {}
                yield Final(c.get("finish_reason") or "stop", u.get("prompt_tokens"),
                            u.get("completion_tokens"))
                return
            finish, usage, done, buf = None, {}, False, b""
            async for raw in resp.stream:
                buf += raw
                if b"\r" in buf:                       # SSE allows CRLF line ends
                    buf = buf.replace(b"\r\n", b"\n")
                while True:
                    end = buf.find(b"\n\n")
                    if end < 0:
                        break
                    event, buf = buf[:end], buf[end + 2:]
                    payload = _sse_data(event)
                    if payload is None:
                        continue                       # comments, event:/id: only
                    if payload == b"[DONE]":
                        done = True       # read on to the end so the connection is reused
                        continue
                    obj = json.loads(payload)
                    if "error" in obj:
                        e = obj["error"]
                        raise failure("upstream_stream_error", f"tier '{name}' upstream error "
                                      f"mid-stream: "
                                      f"{e.get('message', e) if isinstance(e, dict) else e}")
                    for c in obj.get("choices") or ():
                        if c.get("index", 0):
                            yield _upstream_piece(c, chat, "delta", c.get("finish_reason"))
                            continue
                        piece = _upstream_piece(c, chat, "delta")
                        if piece:
                            yield piece
                        if c.get("finish_reason"):
                            finish = c["finish_reason"]
                    if obj.get("usage"):
                        usage = obj["usage"]
                if time.monotonic() > deadline:
                    raise failure("timeout", f"tier '{name}': total_timeout_s "
                                  f"({self.tier.total_timeout_s:g} s) exceeded", status=504)
            if not done and finish is None:
                raise failure("broken_stream", f"tier '{name}': upstream stream ended "
                              f"without a finish_reason or [DONE]")
            yield Final(finish or "stop", usage.get("prompt_tokens"), usage.get("completion_tokens"))
        except httpx.ConnectTimeout:
            raise failure("connect_timeout", f"tier '{name}': connecting to {url} timed out "
                          f"after {self.tier.connect_timeout_s:g} s", status=504) from None
        except httpx.ConnectError as e:
            raise failure("connect", f"tier '{name}': cannot connect to {url}: {e}") from None
        except httpx.TimeoutException:
            raise failure("timeout", f"tier '{name}': no bytes from {url} for "
                          f"{self.tier.first_byte_timeout_s:g} s", status=504) from None
        except (httpx.TransportError, httpx.StreamError) as e:
            raise failure("connection", f"tier '{name}': connection to {url} failed: "
                          f"{type(e).__name__}: {e}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:   # bad JSON / shapes
            raise failure("protocol", f"tier '{name}': malformed response from {url}: {e}") from None
        finally:
            self._busy[i] -= 1
            if resp is not None:
                await resp.aclose()          # back to the pool (or closed, if unfinished)

    async def aclose(self):
        for p in self._pools:
            await p.aclose()

