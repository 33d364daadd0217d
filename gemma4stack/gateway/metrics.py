"""Prometheus metrics, one registry per app (so several apps can live in one process).

    gemma4stack_requests_total{tier,endpoint,status}     requests answered (tier "none" if none served)
    gemma4stack_errors_total{tier,kind}                  backend errors (timeout, connect, http_500, ...)
    gemma4stack_fallbacks_total{tier}                    requests a tier passed down the chain
    gemma4stack_rejections_total{reason}                 auth, rate_limit, body_too_large, invalid, ...
    gemma4stack_tokens_total{tier,kind}                  kind = prompt | completion
    gemma4stack_request_latency_seconds{tier}            histogram: request start to last byte
    gemma4stack_ttft_seconds{tier}                       histogram: request start to first token
    gemma4stack_breaker_state{tier}                      0 closed, 1 half-open, 2 open
    gemma4stack_queue_depth{tier}                        local tiers: admitted, not finished
    gemma4stack_backend_up{tier,backend}                 tiers of several backends: 1 up, 0 down
    gemma4stack_backend_outstanding{tier,backend}        ... requests admitted, not finished
"""
from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, disable_created_metrics, generate_latest)

# the *_created timestamp series double the output and nobody graphs them
disable_created_metrics()

# seconds; local CPU tiers are slow, remote ones fast: cover 5 ms .. 2 min
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        p = "gemma4stack_"
        self.requests = Counter(p + "requests", "Requests answered", ["tier", "endpoint", "status"], registry=r)
        self.errors = Counter(p + "errors", "Backend errors", ["tier", "kind"], registry=r)
        self.fallbacks = Counter(p + "fallbacks", "Requests a tier passed on", ["tier"], registry=r)
        self.rejections = Counter(p + "rejections", "Requests rejected before routing", ["reason"], registry=r)
        self.tokens = Counter(p + "tokens", "Tokens processed", ["tier", "kind"], registry=r)
        self.latency = Histogram(p + "request_latency_seconds", "Request latency", ["tier"],
                                 buckets=_BUCKETS, registry=r)
        self.ttft = Histogram(p + "ttft_seconds", "Time to first token", ["tier"],
                              buckets=_BUCKETS, registry=r)
        self.breaker = Gauge(p + "breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                             ["tier"], registry=r)
        self.queue = Gauge(p + "queue_depth", "Local tier requests admitted and not finished",
                           ["tier"], registry=r)

        self.backend_up = Gauge(p + "backend_up", "Backend of a pooled tier up (health check "
                                "and breaker)", ["tier", "backend"], registry=r)
        self.outstanding = Gauge(p + "backend_outstanding", "Requests admitted to a backend, "
                                 "not finished", ["tier", "backend"], registry=r)
        self.running = Gauge(p + "sequences_running", "Local tier: sequences in the batch",
                             ["tier"], registry=r)
        self.waiting = Gauge(p + "sequences_waiting", "Local tier: requests queued for a slot or KV blocks",
                             ["tier"], registry=r)
        self.kv_blocks = Gauge(p + "kv_blocks", "Local tier: paged KV cache blocks by state "
                               "(used, free, shared, cached)", ["tier", "state"], registry=r)
        self.kv_usage = Gauge(p + "kv_cache_usage_ratio", "Local tier: KV blocks used / total",
                              ["tier"], registry=r)
        self.prefix = Gauge(p + "prefix_cache_tokens", "Local tier: prompt tokens looked up in the "
                            "prefix cache and reused from it (queried, hit)", ["tier", "kind"], registry=r)

    def engine(self, tier: str, s: dict | None) -> None:
        """Set the batching-engine gauges of a local tier from Model.stats().to_dict()."""
        if not s:
            return
        self.running.labels(tier).set(s["running"])
        self.waiting.labels(tier).set(s["waiting"])
        for state in ("used", "free", "shared", "cached"):
            self.kv_blocks.labels(tier, state).set(s[f"kv_blocks_{state}"])
        self.kv_usage.labels(tier).set(s["kv_blocks_used"] / s["kv_blocks_total"] if s["kv_blocks_total"] else 0)
        self.prefix.labels(tier, "queried").set(s["prefix_queried_tokens"])
        self.prefix.labels(tier, "hit").set(s["prefix_hit_tokens"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
