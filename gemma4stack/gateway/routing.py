"""Which tier serves a request: named tiers, the "auto" classifier, fallback order, memory.

    request.model            -> plan(): the ordered list of tiers to try
      "fast" (a tier name)   -> [fast] + the tiers after it in routing.order (if fallback)
      "gemma-4-26b" (an id)  -> the first tier with that id, same as above
      "auto"                 -> classify() picks fast / primary / heavy, then as above

classify() looks at the prompt only (no model call): total length in characters, code
markers, reasoning markers, and configurable keywords, in this order of precedence:
heavy_keywords > primary_keywords > fast_keywords > length >= heavy_min_chars >
reasoning markers > code markers > length > fast_max_chars (-> primary) > fast.

Memory pressure: the memory this process may still use, as the C core's hardware
detection sees it (g4_hw_read_memory, csrc/hw/meminfo.c): MemAvailable capped by the room
left under the cgroup's memory limit (cgroup v2 memory.max - working set, or v1), against
MemTotal capped by that limit. When the used share 1 - available / total passes
routing.max_memory_used (default 0.85, the seed stack's hybrid threshold), local backends
are skipped for new requests; the figure and the decision go into `_routing.memory`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .config import GatewayConfig, RoutingConfig


class UnknownModel(LookupError):
    """The request names neither a tier, a tier's model id, nor "auto"."""


@dataclass
class Classification:
    tier_class: str      # "fast" | "primary" | "heavy" (or the configured code/reasoning tier)
    reason: str          # e.g. "reasoning marker 'step by step'"

    def to_dict(self) -> dict:
        return {"tier_class": self.tier_class, "reason": self.reason}


def classify(text: str, total_chars: int, cfg: RoutingConfig) -> Classification:
    """Classify a request for model="auto".

    text: the part searched for markers and keywords (the last user message);
    total_chars: the length of the whole prompt in characters (all messages).
    """
    low = text.lower()
    for cls, words in (("heavy", cfg.heavy_keywords), ("primary", cfg.primary_keywords),
                       ("fast", cfg.fast_keywords)):
        for w in words:
            if w.lower() in low:
                return Classification(cls, f"keyword {w!r}")
    if total_chars >= cfg.heavy_min_chars:
        return Classification("heavy", f"{total_chars} chars >= heavy_min_chars")
    for m in cfg.reasoning_markers:
        if m.lower() in low:
            return Classification(cfg.reasoning_tier, f"reasoning marker {m!r}")
    for m in cfg.code_markers:
        if m.lower() in low:
            return Classification(cfg.code_tier, f"code marker {m!r}")
    if total_chars > cfg.fast_max_chars:
        return Classification("primary", f"{total_chars} chars > fast_max_chars")
    return Classification("fast", "short, no markers")


def resolve_model(name: str, cfg: GatewayConfig) -> str | None:
    """The tier a request's `model` names (tier name first, then model id), None for auto.

    Raises UnknownModel.
    """
    if name == "auto":
        return None
    if name in cfg.tiers:
        return name
    for t in cfg.tiers.values():
        if t.id == name:
            return t.name
    raise UnknownModel(name)


def plan(tier: str | None, cls: Classification | None, cfg: GatewayConfig) -> list[str]:
    """Tiers to try, in order.

    tier: a tier name -> it, then (with fallback on) the smaller tiers after it in
    routing.order. None means "auto" with classification `cls`: its class's tier (a class
    with no configured tier starts at the next smaller one, else the next bigger one,
    else routing.default / the first tier), then the smaller tiers, then - as a last
    resort, e.g. when local tiers are skipped under memory pressure - the bigger ones.
    """
    order = [t for t in cfg.routing.order if t in cfg.tiers]
    if tier is not None:
        chain = [tier]
        if cfg.routing.fallback and tier in order:
            chain += order[order.index(tier) + 1:]
        return chain
    want = cls.tier_class if cls else "fast"
    if want in order:
        start = want
    elif want in cfg.routing.order:
        i = cfg.routing.order.index(want)
        smaller = [t for t in cfg.routing.order[i + 1:] if t in cfg.tiers]
        bigger = [t for t in reversed(cfg.routing.order[:i]) if t in cfg.tiers]
        start = (smaller or bigger or [cfg.routing.default or next(iter(cfg.tiers))])[0]
    else:
        start = cfg.routing.default or (order[0] if order else next(iter(cfg.tiers)))
    if start not in order or not cfg.routing.fallback:
        return [start]
    i = order.index(start)
    return [start] + order[i + 1:] + list(reversed(order[:i]))


# ----------------------------------------------------------------------------- memory

def read_memory(sysroot: str | None = None) -> tuple[int, int]:
    """(available, total) bytes for this process, cgroup-aware (see the module docstring):
    available = MemAvailable capped by the cgroup limit minus its working set, total =
    MemTotal capped by the cgroup limit. sysroot: a fake /proc + /sys tree for tests.
    Raises OSError when /proc/meminfo cannot be read."""
    from gemma4stack import _core
    m = _core.hw_memory(sysroot)
    total, limit = m["total_bytes"], m["cgroup_limit_bytes"]
    if limit and limit < total:
        total = limit
    return min(m["available_bytes"], total), total


class MemoryGauge:
    """Is the host under memory pressure? Reads at most every `ttl_s` seconds.

    max_used: share of memory in use (0..1] above which there is pressure; 1 = never.
    meminfo: callable -> (available_bytes, total_bytes); injectable for tests.
    """

    def __init__(self, max_used: float, meminfo: Callable[[], tuple[int, int]] = read_memory,
                 clock: Callable[[], float] = time.monotonic, ttl_s: float = 0.5):
        self.max_used, self.meminfo, self.clock, self.ttl_s = max_used, meminfo, clock, ttl_s
        self._at = float("-inf")
        self._avail, self._total = 1, 1

    def sample(self) -> tuple[int, int]:
        now = self.clock()
        if now - self._at >= self.ttl_s:
            self._avail, self._total = self.meminfo()
            self._at = now
        return self._avail, self._total

    @property
    def used_share(self) -> float:
        avail, total = self.sample()
        return 1.0 - avail / total if total else 0.0

    def under_pressure(self) -> bool:
        return self.max_used < 1 and self.used_share > self.max_used

    def to_dict(self) -> dict:
        """The figure and the decision, as /health and `_routing.memory` show them."""
        avail, total = self.sample()
        return {"available_bytes": avail, "total_bytes": total,
                "used_share": round(1.0 - avail / total, 4) if total else None,
                "max_used": self.max_used, "pressure": self.under_pressure()}
