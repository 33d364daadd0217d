"""A plain-TCP network backend for httpcore (under httpx) on asyncio, without anyio.

httpx's default backend goes through anyio, which wraps every socket read in a cancel
scope, an exception map and pause/resume-reading calls: for a streamed completion (one
read per token) that was a large share of the gateway's CPU per token. This backend keeps
a small asyncio.Protocol with a byte buffer and one waiter future; read timeouts are a
loop timer. It implements httpcore's public AsyncNetworkBackend / AsyncNetworkStream
interface (httpcore/_backends/base.py) for http:// upstreams; https:// ones keep httpx's
default (TLS needs anyio's stream wrapper).
"""
from __future__ import annotations

import asyncio
import select
import socket
from typing import Any, Iterable

import httpcore


class _Protocol(asyncio.Protocol):
    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport):
        self.transport = transport

    def _wake(self):
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes):
        self.buffer += data
        self._wake()

    def eof_received(self):
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc):
        self.eof = True
        self.error = exc
        self.can_write.set()
        self._wake()

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()


class TCPStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol):
        self._t, self._p = transport, protocol
        self._loop = asyncio.get_running_loop()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._p
        if not p.buffer and not p.eof:
            p.waiter = self._loop.create_future()
            timer = None
            if timeout is not None:
                timer = self._loop.call_later(timeout, _expire, p.waiter)
            try:
                await p.waiter
            except TimeoutError:
                raise httpcore.ReadTimeout(f"no data for {timeout} s") from None
            finally:
                p.waiter = None
                if timer is not None:
                    timer.cancel()
        if p.buffer:
            data = bytes(p.buffer[:max_bytes])
            del p.buffer[:max_bytes]
            return data
        if p.error is not None:
            raise httpcore.ReadError(str(p.error))
        return b""                                   # EOF

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        p = self._p
        if p.error is not None or self._t.is_closing():
            raise httpcore.WriteError("connection closed")
        self._t.write(buffer)
        if not p.can_write.is_set():                 # the kernel buffer is full: wait
            try:
                await asyncio.wait_for(p.can_write.wait(), timeout)
            except asyncio.TimeoutError:
                raise httpcore.WriteTimeout(f"could not write for {timeout} s") from None

    async def aclose(self) -> None:
        self._t.close()

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        raise httpcore.ConnectError("TLS is not supported by this backend")

    def get_extra_info(self, info: str) -> Any:
        sock = self._t.get_extra_info("socket")
        if info == "socket":
            return sock
        if info == "is_readable":                    # idle connection the server closed?
            if self._p.buffer or self._p.eof:
                return True
            if sock is None:
                return True
            r, _, _ = select.select([sock.fileno()], [], [], 0)
            return bool(r)
        if info == "client_addr":
            return self._t.get_extra_info("sockname")
        if info == "server_addr":
            return self._t.get_extra_info("peername")
        return None


def _expire(fut: asyncio.Future):
    if not fut.done():
        fut.set_exception(TimeoutError())


class TCPBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable | None = None) -> TCPStream:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, host, port,
                                       local_addr=(local_address, 0) if local_address else None),
                timeout)
        except asyncio.TimeoutError:
            raise httpcore.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for opt in socket_options or ():
                sock.setsockopt(*opt)
        return TCPStream(transport, protocol)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not supported by this backend")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
