"""API keys, rate limits and daily quotas.

Keys: when [auth] has keys, every endpoint but /health needs `Authorization: Bearer KEY`.
The presented key is compared with every configured key using hmac.compare_digest (constant
time, and no early exit on the first match), so timing does not reveal how much of a key
was right. Keys are never logged or stored: a key from `api_keys` is known by the name
"key-" + the first 8 hex digits of its SHA-256, a key from [auth.keys.NAME] by NAME.
Admin keys ([auth] admin_keys) open the admin endpoints (GET /v1/usage) and nothing else.

Limits (quota.QuotaStore, SQLite): per API key and per client IP, requests and tokens per
minute (fixed UTC minutes) and text requests, media requests and tokens per UTC day.
Tokens (prompt + completion) are charged when a request finishes. Exceeding a limit ->
429 with the OpenAI error shape, Retry-After and X-RateLimit-Reset (Unix seconds).
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Callable

from .config import AuthConfig, LimitsConfig
from .errors import APIError
from .quota import Exceeded, QuotaLimits, QuotaStore, iso


def key_name(key: str) -> str:
    """The name an unnamed API key is reported under (not secret, not reversible)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _match(presented: bytes, keys: list[bytes]) -> int:
    """Index of `presented` in keys, -1 if absent; the same work whichever key matches."""
    found = -1
    for i, k in enumerate(keys):
        if hmac.compare_digest(presented, k):
            found = i
    return found


def _bearer(authorization: str | None) -> bytes:
    if not authorization or not authorization[:7].lower() == "bearer ":
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                       "authentication_error", "missing_api_key")
    return authorization[7:].strip().encode()


class Guard:
    """Authenticates requests and applies the per-key / per-IP limits and quotas.

    wall: Unix time (injectable for tests). The SQLite file is limits.db (":memory:"
    when None); sqlite3.Error if it cannot be opened. store: an open QuotaStore to use
    instead (a config reload keeps the one it has).
    """

    def __init__(self, auth: AuthConfig, limits: LimitsConfig, *,
                 wall: Callable[[], float] = time.time, store: QuotaStore | None = None):
        named = list(auth.keys.values())
        self._keys = [k.encode() for k in auth.api_keys] + [k.key.encode() for k in named]
        self._names = [key_name(k) for k in auth.api_keys] + [k.name for k in named]
        self._admin = [k.encode() for k in auth.admin_keys]
        default = QuotaLimits(**limits.for_key())
        self._key_limits = {key_name(k): default for k in auth.api_keys}
        self._key_limits.update({k.name: QuotaLimits(**limits.for_key(k)) for k in named})
        self._key_limits[None] = default
        self._ip_limits = QuotaLimits(**limits.for_ip())
        self.store = store or QuotaStore(limits.db or ":memory:", wall=wall,
                                         keep_days=limits.keep_days)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's key name, or None when auth is off. Raises APIError 401."""
        if not self._keys:
            return None
        i = _match(_bearer(authorization), self._keys)
        if i < 0:
            raise APIError(401, "Incorrect API key provided.", "authentication_error",
                           "invalid_api_key")
        return self._names[i]

    def authenticate_admin(self, authorization: str | None):
        """Let an admin key through; APIError 403 when none is configured, 401 otherwise."""
        if not self._admin:
            raise APIError(403, "No admin key is configured ([auth] admin_keys).",
                           "permission_error", "admin_disabled")
        if _match(_bearer(authorization), self._admin) < 0:
            raise APIError(401, "Incorrect admin key provided.", "authentication_error",
                           "invalid_api_key")

    def _idents(self, key: str | None, ip: str | None) -> list[tuple[str, QuotaLimits]]:
        out = [(f"key:{key}", self._key_limits.get(key, self._key_limits[None]))] if key else []
        if ip:
            out.append((f"ip:{ip}", self._ip_limits))
        return out

    def admit(self, key: str | None, ip: str | None, *, media: bool = False):
        """Count one request; raise APIError 429 (Retry-After, reset time) over a limit."""
        ex = self.store.admit(self._idents(key, ip), media=media)
        if ex is not None:
            raise self._limited(ex)

    def charge(self, key: str | None, ip: str | None, tokens: int):
        """Charge a finished request's tokens to the key's and the IP's budgets."""
        if tokens > 0:
            self.store.charge([w for w, _ in self._idents(key, ip)], tokens)

    @staticmethod
    def _limited(ex: Exceeded) -> APIError:
        kind, _, name = ex.who.partition(":")
        who = f"API key '{name}'" if kind == "key" else "client IP"
        daily = ex.what.endswith("per day")
        per = ex.what.rsplit(" per ", 1)
        return APIError(429, f"{'Quota' if daily else 'Rate limit'} reached: {ex.limit} "
                        f"{per[0]} per {per[1]} per {who}; resets at {iso(ex.reset_at)}.",
                        "rate_limit_error", "quota_exceeded" if daily else "rate_limit_exceeded",
                        retry_after=ex.retry_after,
                        headers={"X-RateLimit-Limit": str(ex.limit),
                                 "X-RateLimit-Remaining": "0",
                                 "X-RateLimit-Reset": str(int(ex.reset_at))})
