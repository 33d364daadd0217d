"""`python -m gemma4stack.gateway`: what launch() starts in a subprocess.

Same options as `gemma4stack serve`, plus --port-file (the bound port is written there)
and --parent-pid/--pdeathsig (exit when the launching process dies).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .cli import add_arguments, config_from_args
from .config import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma4stack.gateway")
    add_arguments(p)
    p.add_argument("--port-file", help="write the bound port to this file")
    p.add_argument("--parent-pid", type=int, help="exit when this process dies")
    p.add_argument("--pdeathsig", action="store_true",
                   help="also use prctl(PR_SET_PDEATHSIG) (parent's forking thread must live on)")
    p.add_argument("--delete-config", action="store_true",
                   help="remove the config file once read (launch() passes a copy with keys)")
    args = p.parse_args(argv)
    if args.parent_pid:
        from .server import watch_parent
        watch_parent(args.parent_pid, pdeathsig=args.pdeathsig)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"gateway: config error: {e}", file=sys.stderr)
        return 2
    finally:
        if args.delete_config and args.config:
            try:
                os.unlink(args.config)
            except OSError:
                pass
    from .server import serve
    try:
        return serve(cfg, port_file=args.port_file)
    except (OSError, ValueError) as e:        # model load, bind
        print(f"gateway: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # don't wait on a local model's worker thread still finishing a token
