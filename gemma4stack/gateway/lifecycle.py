"""Local models as a resource: loaded on first request, kept for `keep_alive`, unloaded
when idle, and unloaded least-recently-used first to make room for another (Ollama's
model scheduling, https://github.com/ollama/ollama/blob/main/docs/faq.md "How do I keep a
model loaded in memory or make it unload immediately?").

    ModelManager     the local models of one gateway: the memory budget, the LRU order,
                     one load at a time, the idle reaper (reap())
    LazyLocal        what a local backend of a tier is: a LocalBackend (backends.py) made on
                     first use and dropped on unload; stream() as LocalBackend's

keep_alive (per [models], per tier, per request as the body's `keep_alive`, as Ollama):
a duration - seconds as a number, or a Go-style string "30s", "5m", "1h30m", "250ms" -
after the last request ends; 0 unloads right after the request; a negative value keeps the
model loaded. The most recent request's value sets the timer.

Memory budget, checked before a load: room = available - (1 - max_memory_used) x total,
from the cgroup-aware figure (routing.read_memory: the C core's g4_hw_read_memory), so a
load never takes the host past the memory-pressure threshold; and, when [models]
memory_budget_bytes > 0, at most that many bytes of local models in all. A model's size is
its Model.memory() (weights + KV cache + scratch) once loaded, the GGUF file's size before.
When the room is short, idle models are unloaded least recently used first; if that is not
enough the request gets a 503 `insufficient_memory` (the gateway may route it elsewhere).
After a load the check runs again with the measured size (a first load is only estimated).

Not thread-safe: used from the gateway's event loop only (loads run in a worker thread).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Any, AsyncIterator, Callable

from .backends import BackendError, Final, GenRequest, LocalBackend
from .config import TierConfig

log = logging.getLogger("gemma4stack.gateway")

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(v: Any) -> float:
    """Seconds from an Ollama keep_alive: a number (seconds) or a Go duration string
    ("5m", "1h30m", "-1m", "0"); negative values mean "forever" and come back as -1.0.
    Raises ValueError for anything else."""
    if isinstance(v, bool):
        raise ValueError(f"keep_alive must be a duration, got {v!r}")
    if isinstance(v, (int, float)):
        secs = float(v)
    elif isinstance(v, str):
        s = v.strip()
        try:
            secs = float(s)
        except ValueError:
            neg = s.startswith("-")
            body = s.lstrip("+-")
            parts = _PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"keep_alive must be a duration such as 30s, 5m, 1h30m or "
                                 f"-1, got {v!r}") from None
            secs = sum(float(n) * _UNITS[u] for n, u in parts) * (-1 if neg else 1)
    else:
        raise ValueError(f"keep_alive must be a duration, got {v!r}")
    if secs != secs or secs in (float("inf"), float("-inf")):
        raise ValueError(f"keep_alive must be finite, got {v!r}")
    return -1.0 if secs < 0 else secs


def model_bytes(model: Any) -> int | None:
    """Bytes a loaded model holds (Model.memory(): weights + KV + scratch), None if unknown."""
    mem = getattr(model, "memory", None)
    if not callable(mem):
        return None
    try:
        m = mem()
    except Exception:  # noqa: BLE001 - an unknown size is not a reason to fail a request
        return None
    return sum(int(m.get(k, 0)) for k in ("weights_bytes", "kv_bytes", "scratch_bytes"))


class LazyLocal:
    """A local backend whose model is loaded by `manager` on first use.

    tier: the single-engine TierConfig of this backend (TierConfig.member); keep_alive_s:
    the tier's keep_alive in seconds (-1 = forever).
    """

    def __init__(self, tier: TierConfig, manager: "ModelManager", keep_alive_s: float):
        self.tier, self.manager, self.keep_alive_s = tier, manager, keep_alive_s
        self.backend: LocalBackend | None = None
        self.model: Any = None
        self.active = 0                  # requests holding the model (streaming or queued)
        self.loading = False
        self.closing = False             # unloaded, but Model.close() has not returned yet
        self.last_used = float("-inf")
        self.expires_at: float | None = None   # None = no timer (forever, or not loaded)
        self.size_bytes: int | None = None     # measured after a load
        self.loads = 0
        self.lock = asyncio.Lock()
        self.ready = True
        manager.slots.append(self)

    @property
    def loaded(self) -> bool:
        """True while the model holds memory: from its load until Model.close() returns."""
        return self.backend is not None or self.closing

    def estimate(self) -> int:
        """Bytes a load is expected to take: the last measured size, else the file's."""
        if self.size_bytes:
            return self.size_bytes
        try:
            return os.path.getsize(self.tier.model)
        except OSError:
            return 0

    def status(self) -> dict:
        d = {"loaded": self.loaded, "memory_bytes": self.size_bytes if self.loaded else None,
             "keep_alive_s": self.keep_alive_s, "loads": self.loads,
             "expires_in_s": (round(max(0.0, self.expires_at - self.manager.clock()), 3)
                              if self.loaded and self.expires_at is not None else None)}
        if self.backend is not None:
            d.update(self.backend.status())
        else:
            d.update({"queue_depth": 0, "queue_size": self.tier.queue_size})
        return d

    async def stream(self, req: GenRequest) -> AsyncIterator[str | Final]:
        backend = await self.manager.acquire(self)
        self.active += 1                 # no await since acquire(): cannot be evicted here
        self.expires_at = None
        try:
            async for item in backend.stream(req):
                yield item
        finally:
            self.active -= 1
            self.last_used = self.manager.clock()
            ka = self.keep_alive_s if req.keep_alive is None else req.keep_alive
            if ka < 0:
                self.expires_at = None
            else:
                self.expires_at = self.last_used + ka
                if ka == 0 and self.active == 0:
                    await self.manager.unload(self, "keep_alive 0")

    async def aclose(self):
        if self.loaded:
            await self.manager.unload(self, "shutdown")


class ModelManager:
    """The local models of one gateway.

    loader(tier) -> Model; meminfo() -> (available, total) bytes (cgroup-aware);
    max_used: the memory-pressure threshold (routing.max_memory_used); budget_bytes: cap
    on the sum of loaded models (0 = none); clock: seconds (monotonic).
    """

    def __init__(self, loader: Callable[[TierConfig], Any], *, max_tokens: int,
                 meminfo: Callable[[], tuple[int, int]], max_used: float,
                 budget_bytes: int = 0, clock: Callable[[], float] = time.monotonic):
        self.loader, self.max_tokens, self.meminfo = loader, max_tokens, meminfo
        self.max_used, self.budget_bytes, self.clock = max_used, budget_bytes, clock
        self.slots: list[LazyLocal] = []
        self._load_lock = asyncio.Lock()

    def loaded_bytes(self) -> int:
        return sum(s.size_bytes or s.estimate() for s in self.slots if s.loaded)

    def room(self) -> float:
        """Bytes a new model may take now (before unloading anything)."""
        avail, total = self.meminfo()
        room = avail - (1.0 - self.max_used) * total if self.max_used < 1 else float(avail)
        if self.budget_bytes:
            room = min(room, self.budget_bytes - self.loaded_bytes())
        return room

    def load_now(self, slot: LazyLocal):
        """Load synchronously (start-up preload); raises the loader's errors."""
        self._loaded(slot, self.loader(slot.tier))

    def _loaded(self, slot: LazyLocal, model: Any):
        slot.model = model
        slot.backend = LocalBackend(slot.tier, model, self.max_tokens)
        slot.size_bytes = model_bytes(model) or slot.estimate()
        slot.loads += 1
        slot.last_used = self.clock()
        slot.expires_at = None if slot.keep_alive_s < 0 else slot.last_used + slot.keep_alive_s
        log.info("tier %s: loaded %s (%.1f MiB)", slot.tier.name,
                 os.path.basename(slot.tier.model), slot.size_bytes / 2**20)

    async def acquire(self, slot: LazyLocal) -> LocalBackend:
        """The slot's LocalBackend, loading the model first if needed (one load at a time;
        idle models unloaded LRU-first to make room). Raises BackendError 503
        `insufficient_memory` when the room cannot be made, 500 `load_failed` when the
        loader fails."""
        if slot.backend is not None:
            return slot.backend
        async with self._load_lock:
            if slot.backend is not None:
                return slot.backend
            need = slot.estimate()
            room = self.room()
            idle = self._idle(slot)
            while need > room and idle:
                victim = idle.pop(0)
                if victim.active or victim.backend is None:   # taken since the list was made
                    continue
                room += victim.size_bytes or victim.estimate()
                await self.unload(victim, "least recently used, to make room")
            if need > room:
                raise self._no_room(slot, need, room)
            slot.loading = True
            try:
                model = await asyncio.to_thread(self.loader, slot.tier)
            except Exception as e:  # noqa: BLE001 - a bad file or a full disk: the backend fails
                raise BackendError("load_failed", f"tier '{slot.tier.name}': cannot load "
                                   f"{slot.tier.model}: {type(e).__name__}: {e}",
                                   counts=True, fallback=True, status=500,
                                   code="load_failed") from None
            finally:
                slot.loading = False
            self._loaded(slot, model)
            # a first load is estimated from the file; measured, it may need more room
            idle = self._idle(slot)
            while self.room() < 0 and idle:
                victim = idle.pop(0)
                if not victim.active and victim.backend is not None:
                    await self.unload(victim, "least recently used, over the budget after a load")
            if self.room() < 0:           # still over: this model does not fit next to the busy ones
                room = self.room() + (slot.size_bytes or 0)
                await self.unload(slot, "does not fit")
                raise self._no_room(slot, slot.size_bytes or 0, room)
            return slot.backend

    def _idle(self, slot: LazyLocal) -> list[LazyLocal]:
        """Loaded models other than `slot` with no request, least recently used first."""
        return sorted((s for s in self.slots
                       if s.backend is not None and s.active == 0 and s is not slot),
                      key=lambda s: s.last_used)

    def _no_room(self, slot: LazyLocal, need: float, room: float) -> BackendError:
        busy = [s.tier.name for s in self.slots if s.loaded and s is not slot]
        return BackendError(
            "insufficient_memory",
            f"tier '{slot.tier.name}': loading {os.path.basename(slot.tier.model)} needs "
            f"~{need / 2**20:.0f} MiB and only {max(0.0, room) / 2**20:.0f} MiB can be made "
            f"free (models in use: {', '.join(busy) or 'none'}; limit: max_memory_used "
            f"{self.max_used:g}"
            + (f", memory_budget_bytes {self.budget_bytes}" if self.budget_bytes else "") + ")",
            counts=False, fallback=True, status=503, code="insufficient_memory",
            retry_after=5.0)

    async def unload(self, slot: LazyLocal, why: str):
        """Drop a slot's model (it must have no active request)."""
        backend, model = slot.backend, slot.model
        if backend is None:
            return
        slot.backend = slot.model = None  # no new request gets it from here on
        slot.expires_at = None
        slot.closing = True               # still counted (status, memory) until closed
        try:
            await backend.aclose()
            close = getattr(model, "close", None)
            if callable(close):           # frees the mapping and KV cache now, not at GC;
                await asyncio.to_thread(close)   # joins the engine's scheduler thread
        finally:
            slot.closing = False
        log.info("tier %s: unloaded %s (%s)", slot.tier.name,
                 os.path.basename(slot.tier.model), why)

    async def reap(self):
        """Unload every loaded, idle model whose keep_alive has run out."""
        now = self.clock()
        for s in list(self.slots):
            if s.loaded and s.active == 0 and s.expires_at is not None and now >= s.expires_at:
                await self.unload(s, "idle past keep_alive")

    async def reap_loop(self, every_s: float = 0.25):
        while True:
            await asyncio.sleep(every_s)
            await self.reap()
