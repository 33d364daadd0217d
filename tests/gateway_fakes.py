"""Stand-ins for the gateway's tests and benchmark, all on loopback:

    FakeModel      gemma4stack.model.Model's interface, deterministic, with delays/failures
    FakeUpstream   a real HTTP/1.1 server (raw asyncio, own thread or process) speaking the
                   OpenAI API, that can fail: 500, 429, 400 context, hang, slow first byte,
                   close the connection mid-stream, send an error event mid-stream
    ServerThread   uvicorn serving an ASGI app in a thread on 127.0.0.1:<free port>
    GW             a gateway app (create_app) around these, served by a ServerThread
    sse_request    a streamed request read into its events
    gateway_process  `python -m gemma4stack.gateway` in a process of its own
    FakeClock      time.monotonic() plus a jump the test controls (breaker cooldowns)

Run `python tests/gateway_fakes.py --port-file F [--tokens N] [--delay S]` to serve a
FakeUpstream in its own process (the benchmark does).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import threading
import time
from types import SimpleNamespace

# ----------------------------------------------------------------------------- clock


class FakeClock:
    """Real monotonic time plus an offset; advance(s) jumps forward."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, s: float):
        self.offset += s


# ----------------------------------------------------------------------------- model


class FakeModel:
    """Model(path, threads, context) look-alike. One token per word; BOS counted.

    Output: " w0 w1 w2 ..." up to `story` tokens (then finish "stop") or max_tokens
    ("length"). delay_s: sleep per token (releases the GIL like the C core).
    fail_after: raise RuntimeError after that many tokens. Records calls and closes.
    memory_bytes: what memory() reports; close() sets `closed` (the gateway unloaded it).
    parallel: generations running at once at most, as the real Model's engine decodes
    `parallel` together and queues the rest (max_active records the most seen at once).
    """

    def __init__(self, path=None, threads=None, context=None, *, story: int = 6,
                 delay_s: float = 0.0, fail_after: int | None = None, n_ctx: int = 64,
                 memory_bytes: int = 0, parallel: int = 1):
        self.path, self.n_ctx = path, context or n_ctx
        self.story, self.delay_s, self.fail_after = story, delay_s, fail_after
        self.calls: list[dict] = []
        self.closed_early = 0
        self.finished = 0
        self.started = threading.Event()
        self.last_stats = None
        self.parallel = parallel
        self.active = self.max_active = 0
        self._busy = threading.Semaphore(parallel)
        self._count = threading.Lock()
        self.memory_bytes, self.closed = memory_bytes, False

    def memory(self) -> dict:
        """Model.memory()'s shape; memory_bytes as weights (0: unknown to the gateway)."""
        return {"weights_bytes": self.memory_bytes, "kv_bytes": 0, "scratch_bytes": 0}

    def close(self):
        self.closed = True

    def tokenize(self, text: str) -> list[int]:
        return [1] + [7] * len(text.split())

    def generate(self, prompt, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95,
                 seed=None, stream=False, stop=None):
        self.calls.append(dict(prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, seed=seed, stop=stop))
        gen = self._gen(prompt, max_tokens)
        return gen if stream else "".join(gen)

    def _gen(self, prompt, max_tokens):
        self._busy.acquire()              # queued behind the running ones, as in the engine
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        n = min(self.story, max_tokens)
        done = 0
        try:
            for i in range(n):
                if self.fail_after is not None and i >= self.fail_after:
                    raise RuntimeError("fake model exploded")
                if self.delay_s:
                    time.sleep(self.delay_s)
                done += 1
                yield f" w{i}"
            self.finished += 1
        except GeneratorExit:
            self.closed_early += 1
            raise
        finally:
            self.last_stats = SimpleNamespace(
                prompt_tokens=len(self.tokenize(prompt)), completion_tokens=done,
                finish_reason="stop" if n == self.story else "length",
                ttft_ms=0.0, prefill_tokens_per_s=0.0, decode_tokens_per_s=0.0)
            with self._count:
                self.active -= 1
            self._busy.release()


# ----------------------------------------------------------------------------- upstream


TOOL_CALL = {"id": "call_abc123", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 in a background thread.

    mode (settable any time): "ok", "500", "429", "400ctx", "hang", "slow" (first byte
    after `slow_s`), "cut" (close the socket after `cut_after` chunks), "error_event"
    (an SSE error object after `cut_after` chunks, no [DONE]), "json" (ignore stream=true),
    "tools" (a reply as a vLLM/OpenAI server sends one for a tool call: reasoning_content,
    content with logprobs, then TOOL_CALL's id/name and its arguments in pieces, finish
    "tool_calls"; "tools_json" the same as one JSON object).
    Streams `tokens` pieces " t0", " t1", ... (or the pieces of `script`, a list of
    strings, when set) with `delay_s` between them.
    requests: the JSON bodies received; headers: their headers (lower-case names).
    GET /health answers `health` (an HTTP status, 200 by default; None = 404, as Ollama),
    GET .../models the model list; gets: the GET paths received.
    """

    def __init__(self, mode: str = "ok", *, tokens: int = 5, delay_s: float = 0.0,
                 slow_s: float = 5.0, cut_after: int = 2, port: int = 0, name: str = "up"):
        self.mode, self.tokens, self.delay_s = mode, tokens, delay_s
        self.slow_s, self.cut_after, self.name = slow_s, cut_after, name
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.gets: list[str] = []
        self.script: list[str] | None = None
        self.health: int | None = 200
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = None
        self._ready = threading.Event()
        self._thread = None

    # -- lifecycle
    def start(self) -> "FakeUpstream":
        self._thread = threading.Thread(target=self._run, name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, sock=self._sock))
        self._ready.set()
        self._loop.run_forever()

    def stop(self):
        if self._loop:
            async def shutdown():
                self._server.close()
                for t in asyncio.all_tasks():
                    if t is not asyncio.current_task():
                        t.cancel()
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None             # stop() again (e.g. an ExitStack after a test) is a no-op

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                hdrs = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        hdrs[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(hdrs.get("content-length", "0")))
                if not await self._respond(method, path, hdrs, body, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    async def _respond(self, method, path, hdrs, body, writer) -> bool:
        """Answer one request; False to close the connection."""
        mode = self.mode
        if method == "GET":
            self.gets.append(path)
            if path.endswith("/models"):
                self._send_json(writer, 200, {"object": "list", "data": [{"id": self.name}]})
            elif path == "/health" and self.health is not None:
                self._send_json(writer, self.health, {"status": "ok" if self.health == 200
                                                      else "loading model"})
            else:
                self._send_json(writer, 404, {"error": {"message": "not found"}})
            return True
        req = json.loads(body or b"{}")
        self.requests.append(req)
        self.headers.append(hdrs)
        if mode == "500":
            self._send_json(writer, 500, {"error": {"message": "boom", "type": "server_error"}})
            return True
        if mode == "429":
            self._send_json(writer, 429, {"error": {"message": "slow down", "type": "rate_limit"}})
            return True
        if mode == "400ctx":
            self._send_json(writer, 400, {"error": {
                "message": "This model's maximum context length is 8 tokens",
                "type": "invalid_request_error", "param": "messages",
                "code": "context_length_exceeded"}})
            return True
        if mode == "hang":
            await asyncio.sleep(3600)
            return False
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        chat = path.endswith("/chat/completions")
        if mode in ("tools", "tools_json"):
            return await self._tools(writer, req, mode == "tools" and req.get("stream"))
        script = self.script or [f" t{i}" for i in range(self.tokens)]
        pieces = script[:req.get("max_tokens") or None]
        finish = "stop" if len(pieces) == len(script) else "length"
        usage = {"prompt_tokens": 3, "completion_tokens": len(pieces),
                 "total_tokens": 3 + len(pieces)}
        if mode == "json" or not req.get("stream"):
            text = "".join(pieces)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": finish} if chat else
                      {"index": 0, "text": text, "finish_reason": finish})
            self._send_json(writer, 200, {"id": "x", "object": "chat.completion" if chat else
                                          "text_completion", "model": self.name,
                                          "choices": [choice], "usage": usage})
            return True
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(d) -> bytes:
            data = b"data: " + json.dumps(d).encode() + b"\n\n"
            return b"%x\r\n%s\r\n" % (len(data), data)

        def chunk(text, fin=None):
            c = ({"index": 0, "delta": {"content": text} if text is not None else {},
                  "finish_reason": fin} if chat else
                 {"index": 0, "text": text or "", "finish_reason": fin})
            return {"id": "x", "object": obj, "model": self.name, "choices": [c]}

        for i, p in enumerate(pieces):
            if mode in ("cut", "error_event") and i == self.cut_after:
                if mode == "cut":
                    writer.transport.abort()        # no terminating chunk: a broken stream
                    return False
                writer.write(event({"error": {"message": "upstream fell over",
                                              "type": "server_error"}}))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return True
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            writer.write(event(chunk(p)))
            await writer.drain()
        writer.write(event(chunk(None, finish)))
        if (req.get("stream_options") or {}).get("include_usage"):
            writer.write(event({"id": "x", "object": obj, "model": self.name, "choices": [],
                                "usage": usage}))
        data = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        await writer.drain()
        return True

    async def _tools(self, writer, req: dict, stream: bool) -> bool:
        lp = {"content": [{"token": "Ok", "logprob": -0.25, "bytes": [79, 107],
                           "top_logprobs": [{"token": "Ok", "logprob": -0.25, "bytes": [79, 107]}]}]}
        usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
        if not stream:
            msg = {"role": "assistant", "content": "Ok", "refusal": None,
                   "reasoning_content": "think first", "tool_calls": [TOOL_CALL]}
            self._send_json(writer, 200, {"id": "x", "object": "chat.completion", "model": self.name,
                                          "choices": [{"index": 0, "message": msg, "logprobs": lp,
                                                       "finish_reason": "tool_calls"}],
                                          "usage": usage})
            return True
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        args = TOOL_CALL["function"]["arguments"]
        deltas = [({"role": "assistant", "reasoning_content": "think "}, None),
                  ({"reasoning_content": "first"}, None), ({"content": "Ok"}, lp),
                  ({"tool_calls": [{"index": 0, "id": TOOL_CALL["id"], "type": "function",
                                    "function": {"name": TOOL_CALL["function"]["name"],
                                                 "arguments": ""}}]}, None)]
        deltas += [({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 7]}}]}, None)
                   for i in range(0, len(args), 7)]
        for d, l in deltas + [({}, None)]:
            c = {"index": 0, "delta": d, "logprobs": l, "finish_reason": None if d else "tool_calls"}
            data = b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk",
                                           "model": self.name, "choices": [c]}).encode() + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        data = b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "model": self.name,
                                       "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        await writer.drain()
        return True

    @staticmethod
    def _send_json(writer, status: int, obj: dict):
        body = json.dumps(obj).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "X")
        writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode() + body)


def free_port() -> int:
    """A port nothing listens on (bound then released): connections to it are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ----------------------------------------------------------------------------- app server


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app, **uvicorn_kw):
        import uvicorn
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        kw = dict(log_level="warning", lifespan="on", access_log=False)
        kw.update(uvicorn_kw)
        self.server = uvicorn.Server(uvicorn.Config(app, **kw))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        daemon=True)

    def start(self) -> "ServerThread":
        self._thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t0 > 10 or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self):
        self.server.should_exit = True
        self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ----------------------------------------------------------------------------- gateway

HI = [{"role": "user", "content": "hi"}]


class GW:
    """A gateway app served on loopback (uvicorn in a thread, entered on `stack`, an
    ExitStack), plus what the test injected into it: a FakeClock, a FakeModel, meminfo."""

    def __init__(self, stack, cfg: dict, model=None, meminfo=None, model_loader=None, **app_kw):
        self.clock = FakeClock()
        self.model = model or FakeModel()
        self.mem = {"avail": 20 << 30, "total": 24 << 30}
        if isinstance(cfg, dict):
            cfg.setdefault("limits", {"requests_per_minute": 0, "tokens_per_minute": 0})
        import httpx

        from gemma4stack.gateway.app import create_app
        from gemma4stack.gateway.config import GatewayConfig, parse_config
        self.cfg = cfg if isinstance(cfg, GatewayConfig) else parse_config(cfg)
        # quota windows on a frozen wall clock (a whole UTC day), moved by clock.advance()
        app_kw.setdefault("wall_clock", lambda: 1_800_000_000.0 + self.clock.offset)
        self.app = create_app(self.cfg, model_loader=model_loader or (lambda t: self.model),
                              clock=self.clock, meminfo=meminfo or
                              (lambda: (self.mem["avail"], self.mem["total"])), **app_kw)
        self.state = self.app.state.gateway
        self.srv = stack.enter_context(ServerThread(self.app))
        self.url = self.srv.url
        self.http = stack.enter_context(httpx.Client(base_url=self.url, timeout=10))

    def chat(self, model="fast", messages=HI, headers=None, **kw):
        return self.http.post("/v1/chat/completions", headers=headers,
                              json={"model": model, "messages": messages, **kw})

    def stream(self, path="/v1/chat/completions", **body):
        """(status, [parsed data events], saw_done, headers) of a streamed request."""
        return sse_request(self.http, path, body)

    def breaker(self, tier):
        return self.state.tiers[tier].breaker.state.value


def sse_request(client, path: str = "/v1/chat/completions", body: dict | None = None):
    """POST body with stream=true on an httpx.Client: (status, [parsed data events],
    saw_done, headers); a non-200 answer gives its JSON body as the one event."""
    events, done = [], False
    with client.stream("POST", path, json={"stream": True, **(body or {})}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.json()], False, r.headers
        for line in r.iter_lines():
            if line.startswith("data: "):
                if line == "data: [DONE]":
                    done = True
                else:
                    events.append(json.loads(line[6:]))
    return 200, events, done, r.headers



def gateway_process(stack, config_path, port_file) -> tuple:
    """`python -m gemma4stack.gateway --config config_path --port 0` as a process of its
    own (this tree first on its path), killed when `stack` closes. Returns (Popen, url)
    once GET /health answers 200; RuntimeError with its log when it does not start."""
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + sys.path)}
    p = subprocess.Popen([sys.executable, "-m", "gemma4stack.gateway", "--config",
                          str(config_path), "--port", "0", "--port-file", str(port_file)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stack.callback(lambda: (p.kill(), p.wait()))
    t0 = time.monotonic()
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"gateway exited: {p.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > 30:
            raise RuntimeError("gateway did not start in 30 s")
        if os.path.exists(port_file):
            url = f"http://127.0.0.1:{int(open(port_file).read())}"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return p, url
            except httpx.HTTPError:
                pass
        time.sleep(0.05)

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="a fake OpenAI-compatible server on loopback")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--delay", type=float, default=0.0)
    a = ap.parse_args()
    up = FakeUpstream(tokens=a.tokens, delay_s=a.delay, port=a.port).start()
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(up.port))
        os.replace(a.port_file + ".tmp", a.port_file)
    print(f"listening {up.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
