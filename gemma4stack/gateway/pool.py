"""A tier's backends: several engines behind one tier, each with its weight and breaker.

    Pool.order(pressure)  -> the members to try for one request, best first
    Pool.health_loop()    -> active health checks of the URL members (a task per pool)

Choosing a member (least outstanding requests, weighted): each member's score is
outstanding / weight (requests admitted to it and not finished); the lowest score goes
first, ties are broken by a weighted random draw (so with idle members traffic splits in
proportion to weight, as Envoy's LEAST_REQUEST and nginx's least_conn do), and the others
follow by score, so a member that fails before its first byte is retried on the next one.
Skipped: local members under memory pressure, members whose breaker refuses, members the
last health check found down - unless every member is down by health check, then those
are tried anyway (a health path the engine does not serve must not take a tier out).

Health check (health_interval_s > 0, URL members only): GET <server>/health (the URL
without its /v1; llama.cpp's llama-server and vLLM serve it, llama-server answers 503
while loading), and when that is 404, GET <url>/models (Ollama, mlx_lm.server and hosted
APIs). A 2xx marks the member up, anything else or no answer within health_timeout_s
marks it down. The breaker still decides after a restart: an OPEN breaker lets a probe
through only after its cooldown.

Not thread-safe: used from the gateway's event loop only.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from .breaker import CircuitBreaker, State
from .config import BackendSpec, TierConfig

log = logging.getLogger("gemma4stack.gateway")


@dataclass
class Member:
    """One backend of a tier while the gateway runs."""
    spec: BackendSpec
    backend: Any                    # LocalBackend | OpenAIBackend
    breaker: CircuitBreaker
    outstanding: int = 0            # admitted, not finished
    healthy: bool = True            # last health check (True until one says otherwise)
    health_error: str | None = None
    health_path: str | None = None  # the path that answered (auto mode)
    served: int = 0
    failed: int = 0
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_local(self) -> bool:
        return self.spec.is_local

    def up(self, pressure: bool) -> bool:
        return (self.healthy and self.breaker.state is not State.OPEN
                and getattr(self.backend, "ready", True) and not (self.is_local and pressure))

    def to_dict(self, pressure: bool) -> dict:
        d = {"name": self.name, "up": self.up(pressure), "kind": self.spec.kind,
             "weight": self.spec.weight, "outstanding": self.outstanding,
             "healthy": self.healthy, "health_error": self.health_error,
             "breaker": self.breaker.state.value,
             "retry_after_s": round(self.breaker.retry_after(), 3),
             "served": self.served, "failed": self.failed, "last_error": self.last_error}
        if self.is_local and pressure:
            d["skipped"] = "memory_pressure"
        d.update(self.backend.status())
        return d


@dataclass
class Pool:
    """The members of one tier. rng: the tie-breaking random source (injectable)."""
    tier: TierConfig
    members: list[Member]
    rng: random.Random = field(default_factory=random.Random)

    @property
    def has_local(self) -> bool:
        return any(m.is_local for m in self.members)

    def order(self, pressure: bool) -> tuple[list[Member], str | None]:
        """(members to try, best first; why none, when the list is empty).

        The reason is "memory_pressure" (only local members, all skipped),
        "breaker_open" or "unhealthy".
        """
        members = self.members
        if len(members) == 1:                     # the common single-engine tier, fast
            m = members[0]
            if m.is_local and pressure:
                return [], "memory_pressure"
            return ([m], None) if m.breaker.can_serve() else ([], "breaker_open")
        live = [m for m in members if not (m.is_local and pressure)]
        if not live:
            return [], "memory_pressure"
        live = [m for m in live if m.breaker.can_serve()]
        if not live:
            return [], "breaker_open"
        healthy = [m for m in live if m.healthy] or live
        if len(healthy) == 1:
            return healthy, None
        score = {id(m): m.outstanding / m.spec.weight for m in healthy}
        best = min(score.values())
        tied = [m for m in healthy if score[id(m)] == best]
        first = (tied[0] if len(tied) == 1 else
                 self.rng.choices(tied, weights=[m.spec.weight for m in tied])[0])
        rest = sorted((m for m in healthy if m is not first), key=lambda m: score[id(m)])
        return [first] + rest, None

    # -- health checks
    def _targets(self, m: Member) -> list[str]:
        url = m.spec.url
        if self.tier.health_path != "auto":
            root = url[:-3] if url.endswith("/v1") else url
            return [root + self.tier.health_path]
        if m.health_path:
            return [m.health_path]
        root = url[:-3] if url.endswith("/v1") else url
        return [root + "/health", url + "/models"]

    async def check(self, m: Member, client: httpx.AsyncClient) -> bool:
        """One health check of URL member `m`; updates m.healthy and returns it."""
        headers = {"authorization": f"Bearer {m.backend.tier.api_key}"} \
            if getattr(m.backend, "tier", None) is not None and m.backend.tier.api_key else {}
        err = None
        for target in self._targets(m):
            try:
                r = await client.get(target, headers=headers,
                                     timeout=self.tier.health_timeout_s)
            except httpx.HTTPError as e:
                err = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                break
            if r.status_code == 404 and target.endswith("/health"):
                continue                          # no /health: try /v1/models
            if 200 <= r.status_code < 300:
                if self.tier.health_path == "auto":
                    m.health_path = target
                err = None
            else:
                err = f"GET {target}: HTTP {r.status_code}"
            break
        was = m.healthy
        m.healthy, m.health_error = err is None, err
        if was != m.healthy:
            log.warning("tier %s backend %s: health check %s%s", self.tier.name, m.name,
                        "passed" if m.healthy else "failed", f" ({err})" if err else "")
        return m.healthy

    async def health_loop(self, client: httpx.AsyncClient,
                          sleep: Callable[[float], Any] = asyncio.sleep):
        """Check every URL member every health_interval_s, forever (cancel to stop)."""
        urls = [m for m in self.members if not m.is_local]
        if not urls or self.tier.health_interval_s <= 0:
            return
        while True:
            for m, r in zip(urls, await asyncio.gather(*(self.check(m, client) for m in urls),
                                                       return_exceptions=True)):
                if isinstance(r, Exception):       # a bug, not a down backend: keep checking
                    log.error("tier %s backend %s: health check raised %r", self.tier.name,
                              m.name, r)
            await sleep(self.tier.health_interval_s)
