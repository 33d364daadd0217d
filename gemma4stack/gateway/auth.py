"""API keys and rate limits.

Keys: when [auth] has keys, every endpoint but /health needs `Authorization: Bearer KEY`.
The presented key is compared with every configured key using hmac.compare_digest (constant
time, and no early exit on the first match), so timing does not reveal how much of a key
was right. Keys are never logged; rate-limit buckets use a short SHA-256 digest instead.

Rate limits (the `limits` library, in-memory): per API key and per client IP,
requests/minute on a moving window and tokens/minute (prompt + completion, charged when a
request finishes) on a fixed window. 0 disables a limit. Exceeding one -> 429 with
Retry-After.
"""
from __future__ import annotations

import hashlib
import hmac
import time

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from .config import AuthConfig, LimitsConfig
from .errors import APIError


class Guard:
    """Authenticates requests and applies the per-key / per-IP limits."""

    def __init__(self, auth: AuthConfig, limits: LimitsConfig):
        self._keys = [k.encode() for k in auth.api_keys]
        store = MemoryStorage()
        self._req = MovingWindowRateLimiter(store)
        self._tok = FixedWindowRateLimiter(store)
        self._req_item = (RateLimitItemPerMinute(limits.requests_per_minute, namespace="req")
                          if limits.requests_per_minute else None)
        self._tok_item = (RateLimitItemPerMinute(limits.tokens_per_minute, namespace="tok")
                          if limits.tokens_per_minute else None)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's key id (a digest) or None when auth is off. Raises APIError 401."""
        if not self._keys:
            return None
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                           "authentication_error", "missing_api_key")
        presented = authorization[7:].strip().encode()
        ok = False
        for k in self._keys:              # no short-circuit: same work whichever key matches
            ok |= hmac.compare_digest(presented, k)
        if not ok:
            raise APIError(401, "Incorrect API key provided.", "authentication_error",
                           "invalid_api_key")
        return hashlib.sha256(presented).hexdigest()[:16]

    def _idents(self, key_id: str | None, ip: str | None) -> list[str]:
        out = [f"key:{key_id}"] if key_id else []
        if ip:
            out.append(f"ip:{ip}")
        return out

    def admit(self, key_id: str | None, ip: str | None):
        """Count one request; raise APIError 429 (with retry_after) when over a limit."""
        idents = self._idents(key_id, ip)
        for ident in idents:
            if self._req_item and not self._req.test(self._req_item, ident):
                raise self._limited(self._req, self._req_item, ident, "requests")
            if self._tok_item and not self._tok.test(self._tok_item, ident):
                raise self._limited(self._tok, self._tok_item, ident, "tokens")
        if self._req_item:
            for ident in idents:
                self._req.hit(self._req_item, ident)

    def charge(self, key_id: str | None, ip: str | None, tokens: int):
        """Charge a finished request's tokens to the key's and the IP's token budgets."""
        if self._tok_item and tokens > 0:
            for ident in self._idents(key_id, ip):
                self._tok.hit(self._tok_item, ident, cost=tokens)

    def _limited(self, limiter, item, ident: str, what: str) -> APIError:
        stats = limiter.get_window_stats(item, ident)
        who = "API key" if ident.startswith("key:") else "client IP"
        return APIError(429, f"Rate limit reached: {item.amount} {what} per minute per {who}.",
                        "rate_limit_error", "rate_limit_exceeded",
                        retry_after=max(1.0, stats.reset_time - time.time()))
