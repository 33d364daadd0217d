"""One stream's inter-token latency through Model.generate(stream=True): the gaps between
pieces as the caller sees them (three greedy generations of 64 tokens of Google's Gemma 3
270M, 2 threads). Run with the tree to measure on PYTHONPATH:

    PYTHONPATH=<tree> python benchmarks/stream_itl.py

Prints P50 / P90 / P99 / min gap in ms (benchmarks/RESULTS.md, continuous batching)."""
import time

from gemma4stack import Model
from gemma4stack.testmodels import gemma3_270m

PROMPT = "The lighthouse keeper had not seen a ship in forty years. One stormy night,"


def main() -> None:
    m = Model(gemma3_270m(progress=False), threads=2, context=1024)
    m.generate("warm", max_tokens=4, temperature=0)
    gaps = []
    for _ in range(3):
        t = time.perf_counter()
        for _piece in m.generate(PROMPT, max_tokens=64, temperature=0, stream=True):
            now = time.perf_counter()
            gaps.append((now - t) * 1e3)
            t = now
    gaps.sort()
    print(f"ITL P50 {gaps[len(gaps) // 2]:.1f} ms  P90 {gaps[int(len(gaps) * 0.9)]:.1f}  "
          f"P99 {gaps[int(len(gaps) * 0.99)]:.1f}  min {gaps[0]:.2f}")


if __name__ == "__main__":
    main()
