"""Stand-ins for the gateway's tests and benchmark, all on loopback:

    FakeModel      gemma4stack.model.Model's interface, deterministic, with delays/failures
    FakeUpstream   a real HTTP/1.1 server (raw asyncio, own thread or process) speaking the
                   OpenAI API, that can fail: 500, 429, 400 context, hang, slow first byte,
                   close the connection mid-stream, send an error event mid-stream
    ServerThread   uvicorn serving an ASGI app in a thread on 127.0.0.1:<free port>
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
    """

    def __init__(self, path=None, threads=None, context=None, *, story: int = 6,
                 delay_s: float = 0.0, fail_after: int | None = None, n_ctx: int = 64):
        self.path, self.n_ctx = path, context or n_ctx
        self.story, self.delay_s, self.fail_after = story, delay_s, fail_after
        self.calls: list[dict] = []
        self.closed_early = 0
        self.finished = 0
        self.started = threading.Event()
        self.last_stats = None
        self._busy = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        return [1] + [7] * len(text.split())

    def generate(self, prompt, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95,
                 seed=None, stream=False, stop=None):
        self.calls.append(dict(prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, seed=seed, stop=stop))
        gen = self._gen(prompt, max_tokens)
        return gen if stream else "".join(gen)

    def _gen(self, prompt, max_tokens):
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("FakeModel used from two threads at once")
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
    Streams `tokens` pieces " t0", " t1", ... with `delay_s` between them.
    requests: the JSON bodies received; headers: their headers (lower-case names).
    """

    def __init__(self, mode: str = "ok", *, tokens: int = 5, delay_s: float = 0.0,
                 slow_s: float = 5.0, cut_after: int = 2, port: int = 0, name: str = "up"):
        self.mode, self.tokens, self.delay_s = mode, tokens, delay_s
        self.slow_s, self.cut_after, self.name = slow_s, cut_after, name
        self.requests: list[dict] = []
        self.headers: list[dict] = []
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
        if method == "GET" and path.endswith("/models"):
            self._send_json(writer, 200, {"object": "list", "data": [{"id": self.name}]})
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
        pieces = [f" t{i}" for i in range(min(self.tokens, req.get("max_tokens") or 10**9))]
        finish = "stop" if len(pieces) == self.tokens else "length"
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
        reason = {200: "OK", 400: "Bad Request", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(status, "X")
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
