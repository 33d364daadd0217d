"""Run the gateway in this process with uvicorn (what `gemma4stack serve` and
`python -m gemma4stack.gateway` do), and the parent watch that keeps a launched gateway
from outliving the notebook kernel that started it.
"""
from __future__ import annotations

import ctypes
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time

from .config import GatewayConfig

log = logging.getLogger("gemma4stack.gateway")

PR_SET_PDEATHSIG = 1    # <linux/prctl.h>


def watch_parent(parent_pid: int, *, pdeathsig: bool, poll_s: float = 0.5, grace_s: float = 8.0):
    """Exit when `parent_pid` dies.

    Two mechanisms: prctl(PR_SET_PDEATHSIG, SIGTERM) makes the kernel signal us the moment
    the parent goes (Linux; but it fires when the parent *thread* that forked us exits, so
    the launcher asks for it only when it runs on its main thread), and a daemon thread that
    polls getppid() (re-parenting to init or a subreaper means the parent died). Either way
    we get SIGTERM (uvicorn shuts down gracefully); if still alive after grace_s, _exit.
    """
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:       # the parent died before we got here
        os._exit(1)

    def poll():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        log.warning("parent process %d is gone; shutting down", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=poll, name="g4gw-parent-watch", daemon=True).start()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only when it does,
    # and without it Nagle + delayed ACK add 40 ms to every keep-alive response
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(config: GatewayConfig, *, port_file: str | None = None, model_loader=None) -> int:
    """Serve `config` until SIGINT/SIGTERM. Returns an exit code.

    The socket is bound here (port 0 -> a free port) and, when port_file is given, the
    actual port is written to it atomically (write + rename) once bound, so a launcher
    never races another process for the port. Local models are loaded before binding.
    """
    import uvicorn

    from .app import create_app

    level = config.server.log_level.upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = config.server.host
    if not _is_loopback(host) and not config.auth.api_keys:
        log.warning("binding %s without API keys: anyone who can reach this host can use "
                    "the gateway; set [auth] api_keys or api_keys_env", host)
    app = create_app(config, model_loader=model_loader)
    sock = _bind(host, config.server.port)
    port = sock.getsockname()[1]
    if port_file:
        tmp = f"{port_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, port_file)
    log.info("gateway on http://%s:%d (tiers: %s)", host if ":" not in host else f"[{host}]",
             port, ", ".join(f"{n}={t.backend}:{t.id}" for n, t in config.tiers.items()))
    ucfg = uvicorn.Config(app, log_level=config.server.log_level,
                          access_log=config.server.access_log, timeout_graceful_shutdown=5,
                          lifespan="on", server_header=False)
    server = uvicorn.Server(ucfg)
    # Move everything allocated so far (modules, the app, loaded models: ~70k objects) out
    # of the cyclic GC's reach. Otherwise each full collection walks them all and stalls
    # every stream for ~40 ms (measured under bench_gateway.py's 64-stream load with
    # gc.callbacks); see the gc.freeze() docs.
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock])
    return 0
