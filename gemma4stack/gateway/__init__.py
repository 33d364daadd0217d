"""The OpenAI-compatible gateway: tiers from a TOML config, routing, circuit breakers,
fallbacks, metrics; run in-process (create_app / `gemma4stack serve`) or as a subprocess
from a notebook (launch()).

    >>> from gemma4stack.gateway import launch
    >>> gw = launch(model="../shared/models/TinyStories-656K-Q8_0.gguf")
    >>> gw.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hi"}])
    >>> gw.stop()

Modules: config (TOML -> dataclasses), routing (auto classifier, fallback plan, memory
pressure), breaker (circuit breaker), backends (local Model, OpenAI-compatible upstreams),
auth (API keys, rate limits), metrics (Prometheus), app (create_app), server (uvicorn),
launcher (launch/Gateway), cli (`serve`).
"""
from __future__ import annotations

from .config import ConfigError, GatewayConfig, default_config, load_config, parse_config
from .launcher import Gateway, GatewayError, launch


def create_app(config, **kw):
    """See gemma4stack.gateway.app.create_app (imported lazily: FastAPI is heavy)."""
    from .app import create_app as _create_app
    return _create_app(config, **kw)


__all__ = ["launch", "Gateway", "GatewayError", "create_app", "GatewayConfig", "ConfigError",
           "load_config", "parse_config", "default_config"]
