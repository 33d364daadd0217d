"""`gemma4stack serve`: run the gateway in the foreground; `gemma4stack usage`: what each
API key (and client IP) used per UTC day, from the gateway's SQLite counters.

    gemma4stack serve --config gateway.toml
    gemma4stack serve --model model.gguf [--chat-template raw] [--host 127.0.0.1] [--port 8080]
    gemma4stack usage --config gateway.toml [--days 7] [--key NAME] [--json]
"""
from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="gateway config (TOML)")
    src.add_argument("--model", metavar="PATH", help="serve one GGUF as local tier 'primary'")
    p.add_argument("--chat-template", choices=("auto", "plain", "raw"), default=None,
                   help="with --model: how chat messages become a prompt. auto (default): the "
                        "GGUF's chat template, else plain; plain: a 'User: ...' / 'Assistant:' "
                        "transcript, cut at the next turn; raw: the message texts joined by "
                        "newlines (base models such as TinyStories)")
    p.add_argument("--host", help="bind address (default: the config's, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the config's, else 8080; 0 = any free)")


def config_from_args(args):
    """The GatewayConfig that --config/--model plus --host/--port describe (ConfigError)."""
    from .config import ConfigError, default_config, load_config

    if args.config:
        if getattr(args, "chat_template", None):
            raise ConfigError("--chat-template goes with --model; in a config file, set "
                              "chat_template in the [tiers.NAME] table")
        cfg = load_config(args.config)
    else:
        cfg = default_config(args.model)
        if getattr(args, "chat_template", None):
            cfg.tiers["primary"].chat_template = args.chat_template
    if args.host is not None:
        cfg.server.host = args.host
    if args.port is not None:
        cfg.server.port = args.port
    return cfg


def run(args) -> int:
    from .server import serve

    return serve(config_from_args(args))


def usage(args) -> int:
    """Print the usage table (or JSON) of the config's [limits] db."""
    import json
    import sys

    from .config import ConfigError, load_config
    from .quota import QuotaStore

    if args.db:
        db = args.db
    else:
        try:
            db = load_config(args.config).limits.db
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not db or db == ":memory:" or not os.path.exists(db):
        print(f"error: no usage database at {db} (the gateway creates it on its first "
              f"request; [limits] db sets where)", file=sys.stderr)
        return 1
    store = QuotaStore(db)
    try:
        rows = store.usage(days=args.days, who=f"key:{args.key}" if args.key else None)
    finally:
        store.close()
    if not args.ip:
        rows = [r for r in rows if r["who"].startswith("key:")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no requests in the last {args.days} day(s)")
        return 0
    cols = ("day", "who", "requests", "text_requests", "media_requests", "tokens")
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(width[c]) for c in cols))
    return 0


def register_cli(subparsers):
    p = subparsers.add_parser(
        "serve", help="run the OpenAI-compatible gateway",
        description="Serve an OpenAI-compatible API over local GGUF tiers and remote "
                    "OpenAI-compatible servers, with routing, circuit breakers and fallbacks.")
    add_arguments(p)
    p.set_defaults(func=run)
    u = subparsers.add_parser(
        "usage", help="requests and tokens per API key and day (the gateway's quota counters)",
        description="Report what each API key used per UTC day: requests (text and media) "
                    "and tokens, read from the gateway's SQLite database ([limits] db).")
    src = u.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="gateway config (TOML); its [limits] db")
    src.add_argument("--db", metavar="FILE", help="the SQLite file itself")
    u.add_argument("--days", type=int, default=7, help="last N UTC days (default 7)")
    u.add_argument("--key", metavar="NAME", help="one key (its [auth.keys] name or key-xxxxxxxx)")
    u.add_argument("--ip", action="store_true", help="include per-client-IP rows")
    u.add_argument("--json", action="store_true", help="JSON instead of a table")
    u.set_defaults(func=usage)
