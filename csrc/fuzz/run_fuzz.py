"""Run libFuzzer harnesses for a set time each and summarize what they reached.

    python csrc/fuzz/run_fuzz.py [--seconds N] [--jobs J] [--dir build/fuzz] HARNESS...

Each harness build/fuzz/fuzz_<h> (or csrc/fuzz/fuzz_<h>.py for the atheris ones) runs over build/fuzz/corpus/<h> (kept between runs, new
inputs are added there) and build/fuzz/seeds/<h>, for N seconds, `-jobs`-free (one process
each; --jobs runs up to J harnesses at once). Crashes land in build/fuzz/crashes/<h>/;
logs in build/fuzz/logs/<h>.log. Prints one line per harness with libFuzzer's own figures:
executions, exec/s, cov (edges) and ft (features) of the last status line, corpus size,
crashes found in this run. Exit status 1 when any harness crashed (or did not start). libFuzzer's
slow-unit-* files (an input slower than -report_slow_units, 10 s) are listed apart and are no
failure: they measure wall time, and a niced fuzzer on a busy machine writes them for inputs
that run in milliseconds alone (replay one with `build/fuzz/fuzz_<h> -runs=1 FILE`).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

# -max_len per harness: GGUF and XML seeds are tens of KiB; texts and message lists small.
MAX_LEN = {"gguf": 131072, "hwloc": 131072, "tokenizer": 4096, "vocab": 8192, "chat": 8192, "chat_py": 4096}
# Python harnesses (atheris) run as scripts; the others are build/fuzz/fuzz_<h> binaries.
PY_HARNESSES = {"chat_py": Path(__file__).with_name("fuzz_chat_py.py")}
STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def command(d: Path, h: str, seconds: int, timeout: int = 20) -> list[str]:
    for sub in ("corpus", "crashes", "logs"):
        (d / sub / h).mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, str(PY_HARNESSES[h])] if h in PY_HARNESSES else [str(d / f"fuzz_{h}")]
    return exe + [str(d / "corpus" / h), str(d / "seeds" / h),
            f"-max_total_time={seconds}", f"-max_len={MAX_LEN.get(h, 4096)}", f"-timeout={timeout}",
            "-rss_limit_mb=4096", "-print_final_stats=1", "-reload=0",
            f"-artifact_prefix={d / 'crashes' / h}/"]


def summarize(h: str, log: str, rc: int, d: Path, before: set[str]) -> dict:
    last = None
    for line in log.splitlines():
        m = STATUS.match(line)
        if m:
            last = m
    execs = re.search(r"stat::number_of_executed_units: (\d+)", log)
    rate = re.search(r"stat::average_exec_per_sec:\s+(\d+)", log)
    new = sorted(p.name for p in (d / "crashes" / h).iterdir() if p.name not in before)
    crashes = [n for n in new if not n.startswith("slow-unit-")]
    slow = [n for n in new if n.startswith("slow-unit-")]
    return {"harness": h, "rc": rc, "execs": int(execs.group(1)) if execs else (int(last.group(1)) if last else 0),
            "exec_s": int(rate.group(1)) if rate else 0,
            "cov": int(last.group(2)) if last else 0, "ft": int(last.group(3)) if last else 0,
            "corpus": int(last.group(4)) if last else 0, "crashes": crashes, "slow": slow}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("harness", nargs="+")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=Path("build/fuzz"))
    ap.add_argument("--nice", type=int, default=0, help="niceness of the fuzzers (0: none)")
    ap.add_argument("--timeout", type=int, default=20,
                    help="libFuzzer -timeout: seconds of wall time one input may take before it is reported as a "
                         "hang. Wall time, so a niced fuzzer on a busy machine needs more (a 1 s input took over "
                         "20 s at nice 19 beside a compiler on both cores)")
    a = ap.parse_args()
    pending, running, results, before = list(a.harness), [], [], {}
    while pending or running:
        while pending and len(running) < a.jobs:
            h = pending.pop(0)
            cmd = command(a.dir, h, a.seconds, a.timeout)
            before[h] = {p.name for p in (a.dir / "crashes" / h).iterdir()}
            if a.nice:
                cmd = ["nice", "-n", str(a.nice)] + cmd
            log = open(a.dir / "logs" / f"{h}.log", "w")
            print(f"fuzz_{h}: {a.seconds} s ...", flush=True)
            running.append((h, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(0.5)
        for item in list(running):
            h, p, log = item
            if p.poll() is None:
                continue
            log.close()
            running.remove(item)
            results.append(summarize(h, (a.dir / "logs" / f"{h}.log").read_text(errors="replace"), p.returncode, a.dir, before[h]))
    print(f"{'harness':<10} {'execs':>12} {'exec/s':>8} {'cov':>6} {'ft':>7} {'corpus':>7}  crashes")
    bad = 0
    for r in sorted(results, key=lambda r: a.harness.index(r["harness"])):
        print(f"{r['harness']:<10} {r['execs']:>12} {r['exec_s']:>8} {r['cov']:>6} {r['ft']:>7} {r['corpus']:>7}  "
              f"{len(r['crashes'])} {' '.join(r['crashes'][:3])}"
              + (f"  ({len(r['slow'])} slow units, not failures: {' '.join(r['slow'][:2])})" if r["slow"] else ""))
        if r["rc"] != 0 or r["crashes"]:
            bad = 1
            print(f"  see {a.dir / 'logs' / (r['harness'] + '.log')}", file=sys.stderr)
    return bad


if __name__ == "__main__":
    sys.exit(main())
