"""Cost of one forward step by tokens in it, single sequence: n prompt tokens with only the
last token's logits (a prompt chunk) against n tokens with logits for all of them (what n
decode tokens of a batch, or n verified drafts, need: a k-draft speculative verification is
k + 1 tokens with all logits). Median of REPS runs, in ms of wall time and of the process's
CPU time (the second is less disturbed by other processes on a shared machine); the ratio
column is the cost against one token with its logits (one plain decode step).

    python benchmarks/step_cost.py MODEL.gguf THREADS [REPS] [N,N,...]
"""
import sys
import time

import numpy as np

from gemma4stack import Model


def main() -> None:
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    ns = [int(v) for v in sys.argv[4].split(",")] if len(sys.argv) > 4 else [1, 2, 4, 5, 8]
    m = Model(sys.argv[1], context=512, threads=int(sys.argv[2]))
    out = np.empty((max(ns), m.n_vocab), np.float32)
    ids = list(range(100, 100 + max(ns)))
    m._core.forward(ids[:max(ns)], 0, out[0], False)          # warm up (weights repacked)
    base = None
    for n in ns:
        for all_logits in (False, True):
            if n == 1 and not all_logits:
                continue
            wall, cpu = [], []
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.process_time()
                m._core.forward(ids[:n], 0, out[:n] if all_logits else out[0], all_logits)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            w, c = float(np.median(wall)) * 1e3, float(np.median(cpu)) * 1e3
            if base is None:
                base = (w, c)
            print(f"{n} tokens, logits for {'all' if all_logits else 'the last'}: "
                  f"{w:.1f} ms wall ({w / base[0]:.2f}x), {c:.1f} ms CPU ({c / base[1]:.2f}x)")


if __name__ == "__main__":
    main()
