"""Many agents on one model: aggregate decode throughput of N concurrent JSON-schema
requests against N concurrent plain ones, and against the same N run one after another
(what tool/JSON requests did before they moved into the batching engine: they ran on the
single-sequence path under a per-model lock).

    python benchmarks/bench_agents.py [--model PATH.gguf] [--agents 8] [--tokens 64]
                                      [--threads N]

Without --model, the real Gemma 3 270M of gemma4stack.testmodels (a 262,144-token
vocabulary). Each agent asks for an object with one long string (so every answer runs the
full `tokens`), at temperature 1 with its own seed. Reports output tokens/s over the wall
time of each mode and the engine's forward steps (fewer steps than tokens: the agents
decoded in the same steps). Prints a Markdown table and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gemma4stack import Model  # noqa: E402


def _run(m: Model, agents: int, tokens: int, constrained: bool, together: bool) -> dict:
    schema = {"type": "object", "properties": {"text": {"type": "string", "minLength": 8 * tokens}},
              "required": ["text"]}

    def one(k: int) -> None:
        kw = {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}} \
            if constrained else {"logprobs": True}          # both through gemma4stack.tools
        m.chat([{"role": "user", "content": f"Record {k} as JSON."}], max_tokens=tokens,
               temperature=1.0, seed=k, **kw)

    before = m.stats()
    t0 = time.perf_counter()
    if together:
        th = [threading.Thread(target=one, args=(k,)) for k in range(agents)]
        for t in th:
            t.start()
        for t in th:
            t.join()
    else:
        for k in range(agents):
            one(k)
    wall = time.perf_counter() - t0
    after = m.stats()
    gen = after.generated_tokens - before.generated_tokens
    return {"tokens": gen, "wall_s": wall, "tokens_per_s": gen / wall,
            "steps": after.steps - before.steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    path = a.model
    if path is None:
        from gemma4stack.testmodels import gemma3_270m
        path = gemma3_270m(progress=False)
    with Model(path, threads=a.threads, context=1024, parallel=a.agents) as m:
        _run(m, 1, 4, True, False)                  # warm-up: the llguidance tokenizer
        res = {"json_schema_together": _run(m, a.agents, a.tokens, True, True),
               "plain_together": _run(m, a.agents, a.tokens, False, True),
               "json_schema_one_by_one": _run(m, a.agents, a.tokens, True, False)}
    print(f"\n{Path(path).name}, {a.agents} agents x {a.tokens} tokens\n")
    print("| mode | output tokens/s | wall s | engine steps | tokens |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k, r in res.items():
        print(f"| {k} | {r['tokens_per_s']:.1f} | {r['wall_s']:.1f} | {r['steps']} | {r['tokens']} |")
    print(json.dumps({"model": Path(path).name, "agents": a.agents, "tokens": a.tokens, **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
