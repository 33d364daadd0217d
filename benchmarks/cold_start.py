"""Cold start: a fresh process's model load, then its first and second token (issue 14).

    python benchmarks/cold_start.py MODEL.gguf [-t THREADS] [-r RUNS] [--engine gemma4stack|llama.cpp|both]
    GEMMA4STACK_REPACK_AT_LOAD=0 python benchmarks/cold_start.py ...   # repack on first use instead

Each run is its own process (nothing warm but the page cache: run once before timing so the file
is cached, as it is on a machine that serves the model). Prints per run and engine, in seconds:
`load` (the Model / llama_cpp.Llama constructor), `first` (a one-token forward from an empty
context, logits included: the first token a user waits for after load), `second` (the next
one-token forward, the steady decode step), `load+first`, the figure the issue's cold-start
target compares with llama.cpp's, and `cpu_load+first`, the CPU seconds of all the process's
threads until then (what a busy shared machine does not inflate as it does wall time). llama.cpp repacks its weights for its CPU kernels inside the
constructor (CPU_REPACK buffers), gemma4stack at load across the pool's threads (or on first use
with GEMMA4STACK_REPACK_AT_LOAD=0), so only load+first compares like with like.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(engine: str, path: str, threads: int) -> dict:
    """Load `path` in this process and time load, the first and the second token."""
    c0, t0 = time.process_time(), time.perf_counter()
    if engine == "llama.cpp":
        import llama_cpp
        llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=threads, n_threads_batch=threads,
                              verbose=False)
        bos = llm.token_bos()

        def step(tok: int, pos: int) -> None:
            llm.eval([tok])
    else:
        import numpy as np
        from gemma4stack.model import Model
        model = Model(path, threads=threads, context=64)
        core = model._core
        logits = np.empty(core.n_vocab, dtype=np.float32)
        one = np.empty(1, dtype=np.int32)
        bos = max(core.bos_id, 0)

        def step(tok: int, pos: int) -> None:
            one[0] = tok
            core.forward(one, pos, logits, False)
    t1 = time.perf_counter()
    step(bos, 0)
    t2, c2 = time.perf_counter(), time.process_time()
    step(bos + 1, 1)
    t3 = time.perf_counter()
    return {"engine": engine, "load": t1 - t0, "first": t2 - t1, "second": t3 - t2, "load+first": t2 - t0,
            "cpu_load+first": c2 - c0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-r", "--runs", type=int, default=3)
    ap.add_argument("--engine", choices=("gemma4stack", "llama.cpp", "both"), default="gemma4stack")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.threads)))
        return
    engines = ["gemma4stack", "llama.cpp"] if args.engine == "both" else [args.engine]
    res: dict[str, list[dict]] = {e: [] for e in engines}
    for _ in range(args.runs):
        for e in engines:   # alternated, so a change in the machine's load hits both
            cmd = [sys.executable, os.path.abspath(__file__), args.model, "-t", str(args.threads), "--worker", e]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if r.returncode != 0:
                sys.exit(f"{e} failed:\n{r.stderr[-3000:]}")
            out = json.loads(r.stdout.strip().splitlines()[-1])
            res[e].append(out)
            print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()), flush=True)
    for e, runs in res.items():
        print(f"{e} medians over {len(runs)} runs: " +
              ", ".join(f"{k} {statistics.median(r[k] for r in runs):.3f} s"
                        for k in ("load", "first", "second", "load+first", "cpu_load+first")))


if __name__ == "__main__":
    main()
