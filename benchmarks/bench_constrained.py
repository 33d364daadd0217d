"""Mask overhead of constrained decoding: decode tokens/s with a JSON schema vs without, on
the same model (issue 13's target: constrained >= 90% of unconstrained on a 262,144-token
vocabulary).

    python benchmarks/bench_constrained.py [--model PATH.gguf] [--variant e2b] [--layers 4]
                                           [--tokens 128] [--rounds 3] [--threads N]

Without --model, a synthetic Gemma 4 (gemma4stack.synth: the variant's real shapes and its
full 262,144-token vocabulary, random Q4_0 weights, `layers` layers) is written to a temp
directory. Each round runs, from the same prompt, `tokens` greedy-free (temperature 1,
top_k 40) decode steps unconstrained, then under a JSON schema that keeps the output open
for that long (an object with one string of at least 4 * tokens characters), then under a
regular expression, and reads decode tokens/s from Model.last_stats (forward + sampling;
the requests run in the batching engine, whose scheduler computes each step's masks between
steps in one llguidance call, see gemma4stack.model._Scheduler). Also: the one-time llguidance tokenizer build and the time of one
mask computation alone. Prints a Markdown table and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gemma4stack import Model  # noqa: E402
from gemma4stack.constrain import Constraint, tokenizer_for  # noqa: E402


def _run(m: Model, n: int, seed: int, **constraint) -> float:
    out = m.generate("Write the data as JSON:", max_tokens=n, temperature=1.0, top_k=40,
                     seed=seed, **constraint)
    s = m.last_stats
    if s.completion_tokens < n:
        print(f"  note: stopped after {s.completion_tokens} tokens ({s.finish_reason}); "
              f"{out[:60]!r}", file=sys.stderr)
    return s.decode_tokens_per_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a GGUF (default: a synthetic Gemma 4)")
    ap.add_argument("--variant", default="e2b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    tmp = None
    path = a.model
    if path is None:
        from gemma4stack.synth import synth
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, "g4.gguf")
        t = time.perf_counter()
        synth(path, variant=a.variant, type="q4_0", layers=a.layers, seed=1)
        print(f"synthetic {a.variant}, {a.layers} layers: {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
    schema = {"type": "object", "properties": {"text": {"type": "string",
                                                        "minLength": 4 * a.tokens}},
              "required": ["text"]}
    regex = f"[a-z ]{{{4 * a.tokens}}}"
    with Model(path, threads=a.threads, context=max(512, 2 * a.tokens)) as m:
        t = time.perf_counter()
        tokenizer_for(m)
        build_s = time.perf_counter() - t
        c = Constraint.for_request(m, json_schema=schema)
        c.overlap = False
        t = time.perf_counter()
        for _ in range(20):
            c.mask_fn()
        mask_us = (time.perf_counter() - t) / 20 * 1e6
        rows: dict[str, list[float]] = {"unconstrained": [], "json_schema": [], "regex": []}
        _run(m, min(a.tokens, 8), 99)                     # warm-up: page in the weights
        for r in range(a.rounds):
            rows["unconstrained"].append(_run(m, a.tokens, r))
            rows["json_schema"].append(_run(m, a.tokens, r, json_schema=schema))
            rows["regex"].append(_run(m, a.tokens, r, regex=regex))
        n_vocab = m.n_vocab
    med = {k: statistics.median(v) for k, v in rows.items()}
    base = med["unconstrained"]
    print(f"\n{Path(path).name if a.model else f'synthetic {a.variant} ({a.layers} layers)'}, "
          f"vocabulary {n_vocab:,}, {a.tokens} decode tokens, median of {a.rounds}\n")
    print("| mode | decode tokens/s | vs unconstrained |\n| --- | ---: | ---: |")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / base:.1%} |")
    print(f"\nllguidance tokenizer build: {build_s:.2f} s (once per model); one JSON-schema mask "
          f"alone: {mask_us:.0f} us")
    print(json.dumps({"n_vocab": n_vocab, "tokens": a.tokens, "rounds": a.rounds,
                      "decode_tps": med, "ratio": {k: v / base for k, v in med.items()},
                      "tokenizer_build_s": build_s, "mask_us": mask_us}))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
