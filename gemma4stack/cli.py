"""The `gemma4stack` command line.

Each feature module registers its own subcommands through a function
`register_cli(subparsers)` that adds a parser and sets `func(args) -> int`.
This file only assembles them, so features stay in their own modules.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in --help order.
_COMMAND_MODULES = (
    "gemma4stack.hardware",     # detect
    "gemma4stack.recommend",    # recommend
    "gemma4stack.model",        # run
    "gemma4stack.quickstart",   # quickstart
    "gemma4stack.bench",        # bench
    "gemma4stack.gateway.cli",  # serve
    "gemma4stack.pull",         # pull
    "gemma4stack.convert",      # convert
    "gemma4stack.synth",        # synth
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma4stack",
        description="Run Gemma 4 on the hardware you own: detect, recommend, run, bench, serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:   # feature not built yet; any other missing import is a real error
                continue
            raise
        mod.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as e:   # GGUFError and LimitError are ValueErrors
        print(f"gemma4stack {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
