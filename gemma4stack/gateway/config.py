"""Gateway configuration: a TOML file read with tomllib, validated into dataclasses.

The file has the shape below; every key except the tiers' `backend` and `model`
(and `url` for openai tiers) has a default. See the "## Gateway" section of README.md
for the full reference.

    [server]                 # host, port, caps on bodies / messages / max_tokens
    [auth]                   # api_keys = [...] and/or api_keys_env = "VAR" (comma-separated),
                             # admin_keys / admin_keys_env (GET /v1/usage)
    [auth.keys.NAME]         # a named key (key or key_env) with its own limits
    [limits]                 # per minute and per day, per key and per client IP; db (SQLite)
    [limits.per_key], [limits.per_ip]   # overrides of [limits] for each kind
    [breaker]                # failures, window_s, cooldown_s
    [routing]                # order, fallback, memory share, auto classifier thresholds/markers
    [models]                 # local models: keep_alive, preload, memory_budget_bytes
    [tiers.NAME]             # backend = "local" | "openai", model, ...

Errors: ConfigError (a ValueError) whose message names the file and the key at fault,
e.g. "gateway.toml: [tiers.heavy] backend must be 'local' or 'openai', got 'vllm'".
"""
from __future__ import annotations

import json
import os
import re
try:
    import tomllib
except ModuleNotFoundError:        # Python 3.10
    import tomli as tomllib        # type: ignore[no-redef]
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

LADDER = ("heavy", "primary", "fast")   # the default fallback order, biggest first
_TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """A gateway config that cannot be used; the message names the file and the key."""


# Values copied from an example without being filled in: "sk-...", "<your key>", "xxx",
# "…", "YOUR_API_KEY", "changeme". Accepting one would make a copied example a live setting
# (a routing marker "..." matches every prompt that contains three dots; "sk-..." would
# open the gateway to anyone who reads the README).
_PLACEHOLDER = re.compile(
    r"\.\.\.|\u2026|^<.*>$|^x{3,}$|^(your|my)[-_ ]?(api[-_ ]?)?key$|^changeme$|^replace[-_ ]?me$",
    re.IGNORECASE)


def _placeholder(value: str) -> bool:
    """True for a string that looks like an example placeholder rather than a real value."""
    v = value.strip()
    return bool(_PLACEHOLDER.search(v)) if v else False


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"          # loopback unless told otherwise
    port: int = 8080
    max_body_bytes: int = 1 << 20    # request bodies above this -> 413
    max_messages: int = 256          # chat messages per request
    max_tokens: int = 8192           # cap on a request's max_tokens -> 400 above it
    log_level: str = "info"
    access_log: bool = True


@dataclass
class NamedKey:
    """[auth.keys.NAME]: an API key with a name (shown in usage reports) and its own
    limits (any LIMIT_KEYS entry, overriding [limits] and [limits.per_key])."""
    name: str
    key: str = field(default="", repr=False)     # resolved (key, or $key_env)
    key_env: str | None = None
    limits: dict = field(default_factory=dict)


@dataclass
class AuthConfig:
    api_keys: list[str] = field(default_factory=list, repr=False)   # resolved (file + env)
    api_keys_env: str | None = None
    keys: dict[str, NamedKey] = field(default_factory=dict)
    admin_keys: list[str] = field(default_factory=list, repr=False)  # GET /v1/usage
    admin_keys_env: str | None = None

    def to_dict(self, *, secrets: bool = False) -> dict:
        """The [auth] table; keys are redacted unless `secrets` (keys never leave the
        process in a config dump)."""
        def named(k: NamedKey) -> dict:
            d = {"key": k.key if secrets else "<redacted>", **k.limits}
            return d
        if secrets:
            return {"api_keys": list(self.api_keys), "admin_keys": list(self.admin_keys),
                    "keys": {n: named(k) for n, k in self.keys.items()}}
        d = {"api_keys": [f"<{len(self.api_keys)} keys>"] if self.api_keys else [],
             "api_keys_env": self.api_keys_env,
             "admin_keys": [f"<{len(self.admin_keys)} keys>"] if self.admin_keys else [],
             "admin_keys_env": self.admin_keys_env}
        if self.keys:
            d["keys"] = {n: named(k) for n, k in self.keys.items()}
        return d


# the limits a key or an IP can have (quota.QuotaLimits); 0 = no limit
LIMIT_KEYS = ("requests_per_minute", "tokens_per_minute", "requests_per_day",
              "media_requests_per_day", "tokens_per_day")


@dataclass
class LimitsConfig:
    """[limits]: the defaults for API keys and client IPs, [limits.per_key] and
    [limits.per_ip] override them for each kind, [auth.keys.NAME] for one key."""
    requests_per_minute: int = 30    # per API key and per client IP; 0 = no limit
    tokens_per_minute: int = 60000   # prompt + completion tokens, per key and per IP; 0 = no limit
    requests_per_day: int = 0        # text requests (no image/audio/file parts) per UTC day
    media_requests_per_day: int = 0  # requests with image/audio/file parts per UTC day
    tokens_per_day: int = 0
    db: str | None = None            # SQLite file; default: <config stem>.usage.sqlite3
                                     # beside a TOML config, else in memory (":memory:")
    keep_days: int = 90              # days of usage kept for `gemma4stack usage`
    per_key: dict = field(default_factory=dict)
    per_ip: dict = field(default_factory=dict)

    def for_ip(self) -> dict:
        """The limits of a client IP (LIMIT_KEYS -> int)."""
        return {**{k: getattr(self, k) for k in LIMIT_KEYS}, **self.per_ip}

    def for_key(self, key: NamedKey | None = None) -> dict:
        """The limits of an API key (LIMIT_KEYS -> int)."""
        return {**{k: getattr(self, k) for k in LIMIT_KEYS}, **self.per_key,
                **(key.limits if key else {})}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["db"] = self.db or ":memory:"
        return d


@dataclass
class BreakerConfig:
    failures: int = 3                # failures inside window_s that open the breaker
    window_s: float = 30.0
    cooldown_s: float = 30.0         # OPEN -> HALF_OPEN after this long


@dataclass
class ModelsConfig:
    """[models]: the lifecycle of local models (lifecycle.py)."""
    keep_alive: str = "5m"           # Ollama's: a duration ("30s", "5m", "1h") or seconds;
                                     # 0 = unload after each request, negative = keep loaded
    preload: bool = False            # load every local model at start-up (else on first use)
    memory_budget_bytes: int = 0     # cap on the bytes of loaded local models; 0 = none
                                     # (the cgroup-aware room under max_memory_used decides)

    @property
    def keep_alive_s(self) -> float:
        from .lifecycle import parse_keep_alive
        return parse_keep_alive(self.keep_alive)


@dataclass
class RoutingConfig:
    order: list[str] = field(default_factory=lambda: list(LADDER))   # fallback order, biggest first
    fallback: bool = True            # try the next tier in `order` when one fails before streaming
    default: str | None = None       # tier for "auto" when no tier in `order` exists
    max_memory_used: float = 0.85    # used share (cgroup-aware) above which local backends are
                                     # skipped; 1 = never. Legacy: min_available_memory = 1 - it
    # the "auto" classifier (routing.classify)
    fast_max_chars: int = 1000       # prompts up to this long, without markers -> fast
    heavy_min_chars: int = 8000      # prompts at least this long -> heavy
    code_tier: str = "primary"
    reasoning_tier: str = "heavy"
    code_markers: list[str] = field(default_factory=lambda: [
        "```", "def ", "class ", "import ", "#include", "function ", "=>", "SELECT ", "{\n",
        "traceback", "stack trace", "compile", "regex"])
    reasoning_markers: list[str] = field(default_factory=lambda: [
        "step by step", "step-by-step", "prove", "proof", "derive", "reason about",
        "think through", "analyze", "analyse", "trade-off", "tradeoff", "why does", "why is"])
    heavy_keywords: list[str] = field(default_factory=list)
    primary_keywords: list[str] = field(default_factory=list)
    fast_keywords: list[str] = field(default_factory=list)


@dataclass
class BackendSpec:
    """One engine of a tier: an OpenAI-compatible server (`url`) or a local GGUF (`path`).

    weight: share of traffic relative to the tier's other backends (> 0); name: label in
    /health, metrics and `_routing` (default: host:port of the URL or the file's stem).
    model: openai only, the model id sent upstream (default: the tier's `model`).
    """
    kind: str                        # "openai" | "local"
    url: str | None = None           # base URL ending in /v1 (openai)
    path: str | None = None          # GGUF path, resolved (local)
    model: str | None = None
    weight: float = 1.0
    name: str = ""
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)   # resolved from api_key_env
    threads: int | None = None       # local: overrides the tier's
    context: int | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def to_dict(self) -> dict:
        keys = (("path", "weight", "name", "threads", "context") if self.is_local else
                ("url", "model", "weight", "name", "api_key_env"))
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class TierConfig:
    name: str
    backend: str                     # "local" | "openai" | "mixed" (backends of both kinds)
    model: str                       # local: GGUF path (resolved); openai: model id sent upstream
    id: str = ""                     # id shown in /v1/models and responses (default: file stem / model)
    # local
    threads: int | None = None
    context: int | None = None
    queue_size: int = 8              # waiting requests beyond the running ones; more -> 503
    chat_template: str = "auto"      # "auto" | "plain" | "raw" (see backends.render_messages)
    keep_alive: str | float | None = None   # None: [models] keep_alive
    parallel: int = 1                # requests decoded together (continuous batching)
    kv_cache: str | None = None      # "f16" | "q8_0" | "f32" (None: the Model's default)
    kv_bytes: int | None = None      # paged KV pool in bytes (None: parallel x context)
    batch_tokens: int | None = None  # tokens per engine step (None: the Model's default)
    draft: str | None = None         # "ngram" | "model:PATH" | "mtp:PATH" (PATH resolved): speculative decoding
    # openai
    url: str | None = None           # base URL ending in /v1
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)   # resolved from api_key_env
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0   # also the longest silence allowed mid-stream
    total_timeout_s: float = 600.0
    max_connections: int = 128       # per backend
    # several backends (pool.py): the single `url` / local `model` form is one backend
    backends: list[BackendSpec] = field(default_factory=list)
    pooled: bool = False             # written as `backends = [...]` (for to_dict)
    health_interval_s: float = 10.0  # active health checks of URL backends; 0 = off
    health_timeout_s: float = 2.0
    health_path: str = "auto"        # "auto": GET /health, on 404 GET /v1/models; or a path

    @property
    def is_local(self) -> bool:
        return self.backend == "local"

    def member(self, spec: BackendSpec) -> "TierConfig":
        """This tier as seen by one of its backends: the single-engine TierConfig that
        LocalBackend / OpenAIBackend take (url, model, key and threads of `spec`)."""
        if spec.is_local:
            return replace(self, backend="local", model=spec.path, backends=[spec],
                           threads=spec.threads or self.threads,
                           context=spec.context or self.context)
        return replace(self, backend="openai", url=spec.url, model=spec.model or self.model,
                       api_key=spec.api_key if spec.api_key_env else self.api_key,
                       backends=[spec])

    def to_dict(self) -> dict:
        """The [tiers.NAME] table (round-trips through parse_config; no resolved key)."""
        local = ("queue_size", "chat_template", "keep_alive", "threads", "context", "parallel",
                 "kv_cache", "kv_bytes", "batch_tokens", "draft")
        common = ("id",) + local + (
            "connect_timeout_s", "first_byte_timeout_s", "total_timeout_s", "max_connections",
            "health_interval_s", "health_timeout_s", "health_path", "api_key_env")
        if self.pooled:
            d = {"model": self.model} if any(not b.is_local for b in self.backends) else {}
            d.update({k: getattr(self, k) for k in common if getattr(self, k) is not None})
            d["backends"] = [b.to_dict() for b in self.backends]
            return d
        keys = (("backend", "model", "id") + local
                if self.is_local else
                ("backend", "model", "id", "url", "api_key_env", "connect_timeout_s",
                 "first_byte_timeout_s", "total_timeout_s", "max_connections",
                 "health_interval_s", "health_timeout_s", "health_path"))
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class GatewayConfig:
    tiers: dict[str, TierConfig]
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    source: str | None = None        # file it came from, for messages

    def to_dict(self, *, secrets: bool = False) -> dict:
        """The config as the TOML document's dict. API keys are redacted unless `secrets`
        (launch() writes them to a 0600 file for the child); parse_config reads it back."""
        routing = {k: v for k, v in asdict(self.routing).items() if v is not None}
        return {"server": asdict(self.server), "auth": self.auth.to_dict(secrets=secrets),
                "limits": self.limits.to_dict(), "breaker": asdict(self.breaker),
                "routing": routing, "models": asdict(self.models),
                "tiers": {n: t.to_dict() for n, t in self.tiers.items()}}

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{n}</td><td>{t.backend}</td><td>{t.id}</td>"
            f"<td>{t.model if t.is_local else t.url}</td></tr>" for n, t in self.tiers.items())
        auth = f"{len(self.auth.api_keys)} API key(s)" if self.auth.api_keys else "no auth"
        return (f"<b>gateway</b> {self.server.host}:{self.server.port}, {auth}, "
                f"{self.limits.requests_per_minute} req/min"
                f"<table><tr><th>tier</th><th>backend</th><th>id</th><th>model / url</th></tr>"
                f"{rows}</table>")


# ----------------------------------------------------------------------------- parsing

class _Table:
    """One TOML table being read: typed gets with defaults, unknown keys reported."""

    def __init__(self, data: Any, where: str, src: str):
        self.where, self.src = where, src
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(f"must be a table, got {type(data).__name__}")
        self.data, self.used = data, set()

    def fail(self, msg: str):
        raise ConfigError(f"{self.src}: [{self.where}] {msg}")

    def get(self, key: str, kind, default=None, *, required: bool = False):
        self.used.add(key)
        if key not in self.data:
            if required:
                self.fail(f"missing required key '{key}'")
            return default
        v = self.data[key]
        ok = (isinstance(v, bool) if kind is bool else
              isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
              isinstance(v, int) and not isinstance(v, bool) if kind is int else
              isinstance(v, list) and all(isinstance(s, str) for s in v) if kind is list else
              isinstance(v, kind))
        if not ok:
            want = {list: "a list of strings", float: "a number", int: "an integer",
                    bool: "true or false", str: "a string"}[kind]
            self.fail(f"{key} must be {want}, got {v!r}")
        return float(v) if kind is float else list(v) if kind is list else v

    def positive(self, key: str, kind, default, *, zero_ok: bool = False):
        v = self.get(key, kind, default)
        if v < 0 or (v == 0 and not zero_ok):
            self.fail(f"{key} must be {'>= 0' if zero_ok else '> 0'}, got {v!r}")
        return v

    def done(self):
        extra = sorted(set(self.data) - self.used)
        if extra:
            self.fail(f"unknown key '{extra[0]}' (known: {', '.join(sorted(self.used))})")


def _read_dataclass(cls, table: _Table, *, zero_ok: tuple = ()):
    """Fill a flat dataclass of defaults from a table, keeping each field's type."""
    obj = cls()
    for name, default in asdict(obj).items():
        kind = type(default) if default is not None else str
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            v = table.positive(name, kind, default, zero_ok=name in zero_ok)
        else:
            v = table.get(name, kind, default)
        setattr(obj, name, v)
    table.done()
    return obj


def _resolve_path(p: str, base: Path | None) -> Path:
    path = Path(os.path.expanduser(p))
    if path.is_absolute():
        return path
    if base is not None and (base / path).exists():
        return Path(os.path.abspath(base / path))
    return Path(os.path.abspath(path))   # relative to the working directory


def _url_name(url: str) -> str:
    """host:port of a URL, the default name of a URL backend."""
    m = re.match(r"^https?://([^/]+)", url)
    return m.group(1) if m else url


def _check_url(t: _Table, url: str) -> str:
    if not re.match(r"^https?://", url):
        t.fail(f"url must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def _resolve_key(t: _Table, env: str | None) -> str | None:
    if not env:
        return None
    key = os.environ.get(env)
    if not key:
        t.fail(f"api_key_env names ${env}, which is not set")
    if _placeholder(key):
        t.fail(f"${env} holds a placeholder key ({key[:3]}...), not the upstream server's key")
    return key


def _read_keep_alive(t: _Table, v: Any) -> Any:
    """A keep_alive value as written (a duration string or seconds), checked."""
    from .lifecycle import parse_keep_alive
    try:
        parse_keep_alive(v)
    except ValueError as e:
        t.fail(str(e))
    return v


def _read_draft(t: _Table, base: Path | None) -> str | None:
    """The draft key: "ngram" (prompt lookup), "model:PATH" / "PATH" of a GGUF draft model
    with the tier model's vocabulary, or "mtp:PATH" of a Gemma 4 MTP assistant GGUF (resolved
    like model; the pair is checked when the model loads). Returned as "ngram",
    "model:ABSOLUTE_PATH" or "mtp:ABSOLUTE_PATH"."""
    v = t.get("draft", str, None)
    if v is None or v == "ngram":
        return v
    kind = "mtp" if v.startswith("mtp:") else "model"
    path = _resolve_path(v.split(":", 1)[1] if v.startswith(("model:", "mtp:")) else v, base)
    if not path.is_file():
        t.fail(f"draft must be 'ngram', 'model:PATH' or 'mtp:PATH' of a GGUF file; not found: {path}")
    return f"{kind}:{path}"


def _read_local_opts(t: _Table, tier: TierConfig, base: Path | None = None):
    if "keep_alive" in t.data:
        t.used.add("keep_alive")
        tier.keep_alive = _read_keep_alive(t, t.data["keep_alive"])
    tier.threads = t.positive("threads", int, None) if "threads" in t.data else None
    tier.context = t.positive("context", int, None) if "context" in t.data else None
    tier.queue_size = t.positive("queue_size", int, tier.queue_size, zero_ok=True)
    tier.chat_template = t.get("chat_template", str, tier.chat_template)
    if tier.chat_template not in ("auto", "plain", "raw"):
        t.fail(f"chat_template must be 'auto', 'plain' or 'raw', got {tier.chat_template!r}")
    tier.parallel = t.positive("parallel", int, tier.parallel)
    if tier.parallel > 4096:
        t.fail(f"parallel must be at most 4096, got {tier.parallel}")
    tier.kv_cache = t.get("kv_cache", str, None)
    if tier.kv_cache not in (None, "f16", "q8_0", "f32"):
        t.fail(f"kv_cache must be 'f16', 'q8_0' or 'f32', got {tier.kv_cache!r}")
    tier.kv_bytes = t.positive("kv_bytes", int, None) if "kv_bytes" in t.data else None
    tier.batch_tokens = t.positive("batch_tokens", int, None) if "batch_tokens" in t.data else None
    tier.draft = _read_draft(t, base)


def _read_openai_opts(t: _Table, tier: TierConfig):
    tier.api_key_env = t.get("api_key_env", str, None)
    tier.api_key = _resolve_key(t, tier.api_key_env)
    for k in ("connect_timeout_s", "first_byte_timeout_s", "total_timeout_s", "health_timeout_s"):
        setattr(tier, k, t.positive(k, float, getattr(tier, k)))
    tier.health_interval_s = t.positive("health_interval_s", float, tier.health_interval_s,
                                        zero_ok=True)
    tier.health_path = t.get("health_path", str, tier.health_path)
    if tier.health_path != "auto" and not tier.health_path.startswith("/"):
        t.fail(f"health_path must be 'auto' or a path starting with '/', got {tier.health_path!r}")
    tier.max_connections = t.positive("max_connections", int, tier.max_connections)


def _read_backend(e: Any, where: str, src: str, base: Path | None, model: str | None
                  ) -> BackendSpec:
    """One entry of `backends`: "http(s)://..." (a URL), another string (a GGUF path),
    or a table with `url` or `path` and optional weight, name, model, api_key_env,
    threads, context."""
    if isinstance(e, str):
        e = {"url": e} if re.match(r"^[a-zA-Z]+://", e) else {"path": e}
    t = _Table(e, where, src)
    url, path = t.get("url", str), t.get("path", str)
    if (url is None) == (path is None):
        t.fail("needs exactly one of `url` (an OpenAI-compatible server) or `path` (a GGUF)")
    weight, name = t.positive("weight", float, 1.0), t.get("name", str, "")
    if url is not None:
        url = _check_url(t, url)
        spec = BackendSpec("openai", url=url, model=t.get("model", str), weight=weight,
                           name=name or _url_name(url), api_key_env=t.get("api_key_env", str))
        spec.api_key = _resolve_key(t, spec.api_key_env)
        if spec.model is None and model is None:
            t.fail("model: set the tier's `model` (the id sent upstream) or this backend's")
    else:
        p = _resolve_path(path, base)
        if not p.is_file():
            t.fail(f"path: GGUF file not found: {p}")
        spec = BackendSpec("local", path=str(p), weight=weight, name=name or p.stem)
        spec.threads = t.positive("threads", int, None) if "threads" in t.data else None
        spec.context = t.positive("context", int, None) if "context" in t.data else None
    t.done()
    return spec


def _read_pooled_tier(name: str, t: _Table, base: Path | None, src: str) -> TierConfig:
    """A tier with `backends = [...]` (see _read_backend); `model` is the id sent to URL
    backends that name none, `backend` (optional) the kind every entry must have."""
    t.used.add("backends")
    raw = t.data["backends"]
    if not isinstance(raw, list) or not raw:
        t.fail("backends must be a non-empty list of URLs, GGUF paths or tables")
    model = t.get("model", str)
    specs = [_read_backend(e, f"tiers.{name}.backends[{i}]", src, base, model)
             for i, e in enumerate(raw)]
    kinds = {s.kind for s in specs}
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    want = t.get("backend", str)
    if want is not None and want != kind:
        t.fail(f"backend = {want!r} but the backends are {kind}")
    if "url" in t.data:
        t.fail("use either `url` or `backends`, not both")
    seen: dict[str, int] = {}
    for s in specs:                       # names label metrics: make them unique
        n = seen[s.name] = seen.get(s.name, 0) + 1
        if n > 1:
            s.name = f"{s.name}#{n}"
    first_local = next((s.path for s in specs if s.is_local), None)
    tier = TierConfig(name=name, backend=kind, model=model or first_local, backends=specs,
                      pooled=True)
    tier.id = t.get("id", str, "") or model or Path(first_local).stem
    _read_local_opts(t, tier, base)
    _read_openai_opts(t, tier)
    t.done()
    return tier


def _read_tier(name: str, data: Any, base: Path | None, src: str) -> TierConfig:
    where = f"tiers.{name}"
    if not _TIER_NAME.match(name) or name == "auto":
        raise ConfigError(f"{src}: [{where}] tier names are letters, digits, '_', '.', '-' "
                          f"and not 'auto'")
    t = _Table(data, where, src)
    if "backends" in t.data:
        return _read_pooled_tier(name, t, base, src)
    backend = t.get("backend", str, required=True)
    if backend not in ("local", "openai"):
        t.fail(f"backend must be 'local' or 'openai', got {backend!r}")
    tier = TierConfig(name=name, backend=backend, model=t.get("model", str, required=True))
    tier.id = t.get("id", str, "")
    if backend == "local":
        path = _resolve_path(tier.model, base)
        if not path.is_file():
            t.fail(f"model: GGUF file not found: {path}")
        tier.model = str(path)
        tier.id = tier.id or path.stem
        _read_local_opts(t, tier, base)
        tier.backends = [BackendSpec("local", path=tier.model, name=path.stem)]
    else:
        tier.url = _check_url(t, t.get("url", str, required=True))
        tier.id = tier.id or tier.model
        _read_openai_opts(t, tier)
        tier.backends = [BackendSpec("openai", url=tier.url, model=tier.model,
                                     name=_url_name(tier.url))]
    t.done()
    return tier


def _env_keys(t: _Table, env: str | None, what: str) -> list[str]:
    """Comma-separated keys from $env (ConfigError when named but unset or empty)."""
    if not env:
        return []
    keys = [k.strip() for k in os.environ.get(env, "").split(",") if k.strip()]
    if not keys:
        t.fail(f"{what}_env names ${env}, which is not set or empty (refusing to start "
               f"without the keys)")
    return keys


def _read_limit_overrides(t: _Table) -> dict:
    return {k: t.positive(k, int, 0, zero_ok=True) for k in LIMIT_KEYS if k in t.data}


def _read_auth(at: _Table, source: str) -> AuthConfig:
    auth = AuthConfig(api_keys=at.get("api_keys", list, []), api_keys_env=at.get("api_keys_env", str),
                      admin_keys=at.get("admin_keys", list, []),
                      admin_keys_env=at.get("admin_keys_env", str))
    auth.api_keys = auth.api_keys + _env_keys(at, auth.api_keys_env, "api_keys")
    auth.admin_keys = auth.admin_keys + _env_keys(at, auth.admin_keys_env, "admin_keys")
    for name, data in at.get("keys", dict, {}).items():
        kt = _Table(data, f"auth.keys.{name}", source)
        k = NamedKey(name=name, key=kt.get("key", str, ""), key_env=kt.get("key_env", str))
        if k.key_env:
            k.key = os.environ.get(k.key_env, "")
            if not k.key:
                kt.fail(f"key_env names ${k.key_env}, which is not set or empty")
        if not k.key:
            kt.fail("needs `key` or `key_env`")
        k.limits = _read_limit_overrides(kt)
        kt.done()
        auth.keys[name] = k
    at.done()
    if any(not k for k in auth.api_keys + auth.admin_keys):
        at.fail("api_keys and admin_keys must not contain empty strings")
    literal = set(at.data.get("api_keys") or []) | set(at.data.get("admin_keys") or [])
    for name, keys, env in (("api_keys", auth.api_keys, auth.api_keys_env),
                            ("admin_keys", auth.admin_keys, auth.admin_keys_env),
                            ("keys", [k.key for k in auth.keys.values()], None)):
        for k in keys:
            if _placeholder(k):
                where = name if k in literal or env is None else "$" + env
                at.fail(f"{where} holds a placeholder key ({k[:3]}...), not a real one: "
                        "generate one, e.g. "
                        "`python -c \"import secrets; print(secrets.token_urlsafe(32))\"`")
    every = auth.api_keys + [k.key for k in auth.keys.values()]
    if len(set(every)) != len(every) or set(every) & set(auth.admin_keys):
        at.fail("the same key appears twice (api_keys, keys.NAME and admin_keys must differ)")
    return auth


def _read_limits(lt: _Table, base_dir: Path | None) -> LimitsConfig:
    limits = LimitsConfig()
    for k in LIMIT_KEYS:
        setattr(limits, k, lt.positive(k, int, getattr(limits, k), zero_ok=True))
    limits.keep_days = lt.positive("keep_days", int, limits.keep_days)
    db = lt.get("db", str)
    if db is not None and db != ":memory:":
        p = Path(os.path.expanduser(db))
        db = str(p if p.is_absolute() or base_dir is None else base_dir / p)
    limits.db = db
    for sub in ("per_key", "per_ip"):
        st = _Table(lt.get(sub, dict, {}), f"limits.{sub}", lt.src)
        setattr(limits, sub, _read_limit_overrides(st))
        st.done()
    lt.done()
    return limits


def parse_config(data: dict, *, source: str = "<config>", base_dir: Path | None = None
                 ) -> GatewayConfig:
    """Validate a config dict (the TOML document) into a GatewayConfig.

    base_dir: directory that relative local model paths are resolved against first
    (the config file's directory); the working directory is tried second.
    Raises ConfigError naming `source` and the key.
    """
    root = _Table(data, "top level", source)
    server = _read_dataclass(ServerConfig, _Table(root.get("server", dict, {}), "server", source),
                             zero_ok=("port",))
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"{source}: [server] port must be in 0..65535, got {server.port}")
    if server.log_level not in ("critical", "error", "warning", "info", "debug"):
        raise ConfigError(f"{source}: [server] log_level must be one of critical, error, "
                          f"warning, info, debug; got {server.log_level!r}")

    auth = _read_auth(_Table(root.get("auth", dict, {}), "auth", source), source)
    limits = _read_limits(_Table(root.get("limits", dict, {}), "limits", source), base_dir)
    mt = _Table(root.get("models", dict, {}), "models", source)
    models = ModelsConfig()
    if "keep_alive" in mt.data:
        mt.used.add("keep_alive")
        models.keep_alive = _read_keep_alive(mt, mt.data["keep_alive"])
    models.preload = mt.get("preload", bool, models.preload)
    models.memory_budget_bytes = mt.positive("memory_budget_bytes", int, 0, zero_ok=True)
    mt.done()
    breaker = _read_dataclass(BreakerConfig, _Table(root.get("breaker", dict, {}), "breaker", source))
    rt = _Table(root.get("routing", dict, {}), "routing", source)
    legacy = rt.positive("min_available_memory", float, None, zero_ok=True) \
        if "min_available_memory" in rt.data else None
    if legacy is not None and (legacy >= 1 or "max_memory_used" in rt.data):
        rt.fail("min_available_memory (the older spelling of 1 - max_memory_used) must be in "
                f"[0, 1) and not given with max_memory_used; got {legacy}")
    routing = _read_dataclass(RoutingConfig, rt, zero_ok=("fast_max_chars",))
    if legacy is not None:
        routing.max_memory_used = 1.0 - legacy
    if routing.max_memory_used > 1:
        raise ConfigError(f"{source}: [routing] max_memory_used is a share of memory in "
                          f"(0, 1] (1 = never skip local backends), got {routing.max_memory_used}")
    for key in ("code_markers", "reasoning_markers", "heavy_keywords", "primary_keywords",
                "fast_keywords"):
        for m in getattr(routing, key):
            if not m or _placeholder(m):
                raise ConfigError(
                    f"{source}: [routing] {key} contains {m!r}, which "
                    + ("matches every prompt" if not m else
                       "looks like a placeholder from an example (it would match every prompt "
                       "containing it)") + "; remove it or write the real marker")

    tiers_data = root.get("tiers", dict, {})
    root.done()
    if not tiers_data:
        raise ConfigError(f"{source}: no [tiers.NAME] table; at least one tier is needed")
    tiers = {n: _read_tier(n, d, base_dir, source) for n, d in tiers_data.items()}
    for t in tiers.values():
        if t.id == "auto":
            raise ConfigError(f"{source}: [tiers.{t.name}] model id 'auto' is reserved for "
                              f"the classifier; set another `id`")
    for key in ("default",):
        v = getattr(routing, key)
        if v is not None and v not in tiers:
            raise ConfigError(f"{source}: [routing] {key} = {v!r} is not a configured tier "
                              f"(tiers: {', '.join(tiers)})")
    return GatewayConfig(tiers=tiers, server=server, auth=auth, limits=limits, breaker=breaker,
                         routing=routing, models=models, source=source)


def load_config(path: str | os.PathLike) -> GatewayConfig:
    """Read a gateway config file: TOML (or JSON of the same shape, as launch() writes).

    Raises ConfigError for a missing file, bad syntax or bad values.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror or e}") from None
    try:
        data = json.loads(raw) if p.suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}") from None
    cfg = parse_config(data, source=str(p), base_dir=p.resolve().parent)
    if cfg.limits.db is None:          # usage counters live beside the config file
        cfg.limits.db = str(p.resolve().with_name(p.stem + ".usage.sqlite3"))
    return cfg


def default_config(model: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8080
                   ) -> GatewayConfig:
    """A one-tier config serving a local GGUF as tier "primary" (what `serve --model` uses)."""
    return parse_config({"server": {"host": host, "port": port},
                         "tiers": {"primary": {"backend": "local", "model": str(model)}}},
                        source="--model")
