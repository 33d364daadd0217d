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

# Third-party packages that only an extra installs (pyproject.toml), so a base install
# (`pip install gemma4stack`: numpy only) can say what to add instead of a traceback.
_EXTRA_OF = {
    "gguf": "convert", "fastapi": "gateway", "uvicorn": "gateway", "httpx": "gateway",
    "httpcore": "gateway", "limits": "gateway", "prometheus_client": "gateway",
    "pydantic": "gateway", "starlette": "gateway", "jinja2": "gateway",
    "huggingface_hub": "pull", "tqdm": "pull", "matplotlib": "notebooks",
}
# Command modules whose own imports need an extra: their commands stay listed.
_COMMANDS_OF = {"gemma4stack.convert": ("convert",), "gemma4stack.synth": ("synth",),
                "gemma4stack.gateway.cli": ("serve",)}


def _missing(e: ModuleNotFoundError) -> str:
    top = (e.name or "").split(".")[0]
    extra = _EXTRA_OF.get(top)
    how = f"pip install 'gemma4stack[{extra}]'" if extra else f"pip install {top}"
    return f"this needs the {top!r} package, which the base install leaves out: {how}"


def _placeholder(sub, command: str, e: ModuleNotFoundError) -> None:
    msg = _missing(e)
    p = sub.add_parser(command, help=f"(not installed: {msg})", description=msg)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def fail(args: argparse.Namespace) -> int:
        print(f"gemma4stack {command}: {msg}", file=sys.stderr)
        return 1
    p.set_defaults(func=fail)


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
            top = (e.name or "").split(".")[0]
            if name in _COMMANDS_OF and top in _EXTRA_OF:   # an optional dependency not installed
                for command in _COMMANDS_OF[name]:
                    _placeholder(sub, command, e)
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
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _EXTRA_OF:
            raise
        print(f"gemma4stack {args.command}: {_missing(e)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:   # GGUFError and LimitError are ValueErrors
        print(f"gemma4stack {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
