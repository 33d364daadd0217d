"""`gemma4stack serve`: run the gateway in the foreground.

    gemma4stack serve --config gateway.toml
    gemma4stack serve --model model.gguf [--chat-template raw] [--host 127.0.0.1] [--port 8080]
"""
from __future__ import annotations

import argparse


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


def register_cli(subparsers):
    p = subparsers.add_parser(
        "serve", help="run the OpenAI-compatible gateway",
        description="Serve an OpenAI-compatible API over local GGUF tiers and remote "
                    "OpenAI-compatible servers, with routing, circuit breakers and fallbacks.")
    add_arguments(p)
    p.set_defaults(func=run)
