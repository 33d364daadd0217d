"""Start the gateway as a subprocess from Python (a notebook) and talk to it.

    >>> from gemma4stack.gateway import launch
    >>> with launch(model="TinyStories-656K-Q8_0.gguf") as gw:
    ...     client = openai.OpenAI(base_url=gw.base_url, api_key=gw.api_key)
    ...     client.chat.completions.create(model="auto", messages=[...])

The child is `python -m gemma4stack.gateway` in its own session (a Ctrl-C in a terminal
does not reach it), logging to a file in a private temporary directory. It binds the port
itself and writes the actual port to a file (no race for port=0), and it exits when this
process dies (prctl PR_SET_PDEATHSIG plus a parent-pid watch; see server.watch_parent),
so a killed kernel leaves no orphan. Gateways still running at interpreter exit are stopped.
"""
from __future__ import annotations

import atexit
import html
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from .config import GatewayConfig, default_config, load_config, parse_config

_live: "weakref.WeakSet[Gateway]" = weakref.WeakSet()


class GatewayError(RuntimeError):
    """The gateway subprocess did not become ready (the message ends with its log tail)."""


class Gateway:
    """A running gateway subprocess.

    url: "http://127.0.0.1:PORT"; base_url: url + "/v1" (for openai.OpenAI(base_url=...));
    api_key: the first configured key (or "none" when auth is off; the openai client needs
    a non-empty string). Errors: GatewayError from launch() if it never becomes ready.
    """

    def __init__(self, proc: subprocess.Popen, host: str, port: int, workdir: Path,
                 config: GatewayConfig):
        self.proc, self.host, self.port, self._workdir = proc, host, port, workdir
        self.config = config
        h = f"[{host}]" if ":" in host else host
        self.url = f"http://{h}:{port}"
        self.base_url = self.url + "/v1"
        self.api_key = config.auth.api_keys[0] if config.auth.api_keys else "none"
        self.log_path = workdir / "gateway.log"
        self._final_log: str | None = None     # the log, kept in memory once stop() removed it
        self._lock = threading.Lock()
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def logs(self, tail: int | None = None) -> str:
        """The gateway's log (stdout + stderr); only the last `tail` lines if given. Still
        available after stop(), which deletes the file."""
        text = self._final_log
        if text is None:
            try:
                text = self.log_path.read_text(errors="replace")
            except OSError:
                return ""
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    def health(self, timeout: float = 5.0) -> dict:
        """GET /health as a dict (it has per-tier up/down, breaker state, last latency)."""
        import httpx
        return httpx.get(self.url + "/health", timeout=timeout).json()

    def client(self, **kw):
        """An openai.OpenAI client for this gateway (the `openai` package is needed)."""
        import openai
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, **kw)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL after `timeout` s; then remove the private
        temporary directory (the log, kept in memory for logs(); the config copy with the API
        keys was deleted by the child as soon as it had read it). Returns the exit code."""
        with self._lock:
            if self.proc.poll() is None:
                try:
                    self.proc.send_signal(signal.SIGTERM)
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            if self._final_log is None:
                try:
                    self._final_log = self.log_path.read_text(errors="replace")
                except OSError:
                    self._final_log = ""
                shutil.rmtree(self._workdir, ignore_errors=True)
            _live.discard(self)
            return self.proc.returncode

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc):
        self.stop()

    def to_dict(self) -> dict:
        return {"url": self.url, "base_url": self.base_url, "pid": self.pid,
                "running": self.running, "tiers": list(self.config.tiers),
                "log": str(self.log_path)}

    def __repr__(self) -> str:
        return f"Gateway({self.url}, pid={self.pid}, {'running' if self.running else 'stopped'})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.to_dict().items())
        return f"<b>gemma4stack gateway</b><table>{rows}</table>"


def launch(config: str | os.PathLike | dict | GatewayConfig | None = None,
           model: str | os.PathLike | None = None, port: int | None = 0, *,
           host: str | None = None, timeout: float = 120.0, env: dict | None = None,
           python: str = sys.executable) -> Gateway:
    """Start `python -m gemma4stack.gateway` and wait until GET /health answers 200.

    config: a TOML/JSON path, a dict of the same shape, or a GatewayConfig; or model: a
    GGUF path served as the single local tier "primary". port: 0 picks a free port (the
    child binds it and reports it back), None keeps the config's port. host: overrides
    the config's (default 127.0.0.1). timeout: seconds to wait for readiness (loading a
    large model takes a while). env: extra environment variables for the child.
    Raises ConfigError for a bad config (checked here first), GatewayError with the log
    tail when the child exits or is not ready in time.
    """
    if (config is None) == (model is None):
        raise ValueError("launch() needs exactly one of config= or model=")
    if model is not None:
        cfg = default_config(model)
    elif isinstance(config, GatewayConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = parse_config(config, source="launch(config=dict)", base_dir=Path.cwd())
    else:
        cfg = load_config(config)
    if host is not None:
        cfg.server.host = host
    if port is not None:
        cfg.server.port = port

    workdir = Path(tempfile.mkdtemp(prefix="g4gw-"))    # 0700; the config copy holds API keys
    cfg_path = workdir / "gateway.json"
    fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg.to_dict(secrets=True), f)
    port_file = workdir / "port"
    cmd = [python, "-m", "gemma4stack.gateway", "--config", str(cfg_path),
           "--port-file", str(port_file), "--parent-pid", str(os.getpid()), "--delete-config"]
    if threading.current_thread() is threading.main_thread():
        cmd.append("--pdeathsig")      # safe: this thread lives as long as the process
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(workdir / "gateway.log", "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, env=child_env,
                                start_new_session=True)
    gw = None
    try:
        gw = _wait_ready(proc, cfg, workdir, port_file, timeout)
        return gw
    finally:
        if gw is None:                # the error message carries the log tail
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(proc, cfg: GatewayConfig, workdir: Path, port_file: Path, timeout: float) -> Gateway:
    import httpx

    deadline = time.monotonic() + timeout
    gw, last = None, "no answer yet"

    def fail(why: str):
        log = (workdir / "gateway.log").read_text(errors="replace").splitlines()
        tail = "\n".join("    " + ln for ln in log[-30:])
        raise GatewayError(f"gateway did not start: {why}\n  log tail:\n{tail}")

    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            fail(f"the process exited with code {rc}")
        if gw is None and port_file.exists():
            gw = Gateway(proc, cfg.server.host, int(port_file.read_text()), workdir, cfg)
        if gw is not None:
            try:
                r = httpx.get(gw.url + "/health", timeout=2.0)
                if r.status_code == 200:
                    return gw
                last = f"/health answered {r.status_code}: {r.text[:300]}"
            except httpx.HTTPError as e:
                last = f"/health: {type(e).__name__}"
        time.sleep(0.05)
    fail(f"not ready after {timeout:g} s ({last})")


@atexit.register
def _stop_all():
    for gw in list(_live):
        try:
            gw.stop()
        except Exception:   # noqa: BLE001 - best effort at exit
            pass
