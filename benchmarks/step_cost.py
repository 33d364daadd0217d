"""Cost of one forward step by tokens in it, single sequence: n prompt tokens with only the
last token's logits (a prompt chunk) against n tokens with logits for all of them (what n
decode tokens of a batch, or n verified drafts, need). Median of 3, ms.

    python benchmarks/step_cost.py MODEL.gguf THREADS
"""
import sys
import time

import numpy as np

from gemma4stack import Model


def main() -> None:
    m = Model(sys.argv[1], context=512, threads=int(sys.argv[2]))
    out = np.empty((64, m.n_vocab), np.float32)
    ids = list(range(100, 164))
    m._core.forward(ids[:8], 0, out[0], False)          # warm up (weights repacked)
    for n in (1, 2, 4, 8):
        for all_logits in (False, True):
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                m._core.forward(ids[:n], 0, out[:n] if all_logits else out[0], all_logits)
                ts.append(time.perf_counter() - t0)
            print(f"{n} tokens, logits for {'all' if all_logits else 'the last'}: "
                  f"{sorted(ts)[1] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
