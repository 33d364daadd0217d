"""Speculative decoding (issue 15): tokens/s with and without drafts.

    python benchmarks/bench_spec.py                        # the real Gemma 3 270M, both tasks
    python benchmarks/bench_spec.py --model m.gguf --max-tokens 128 --reps 3 --draft-max 8 \\
        --draft-ngram 3 --out benchmarks/results/spec-270m.json
    python benchmarks/bench_spec.py --model big.gguf --drafts ngram,model:small.gguf   # a draft model
    python benchmarks/bench_spec.py --temperature 0.8 --seed 1                        # sampled
    python benchmarks/bench_spec.py --peer llama_cpp      # also llama.cpp's prompt lookup, same GGUF

Drafters (--drafts, comma-separated, default ngram): "ngram" (prompt lookup) and/or
"model:PATH" (a smaller GGUF with the same vocabulary). Tasks, each run by Model(path) and
Model(path, draft=D) for every drafter D, greedily (temperature 0) unless --temperature > 0
(speculative sampling; then the outputs differ from the plain ones by design, "identical" is
not checked and the exit status does not depend on it):
- extraction: an invoice-like document (~600 tokens) and an instruction to copy some of its
  lines: the answer quotes the prompt, where prompt lookup pays;
- free: a short story opening continued freely: drafts come only from the text's own
  repetitions, so this measures what drafts cost when they rarely match.

One warm-up run per task and mode is not counted; then --reps runs, prefix cache off (every
run prefills the whole prompt). Reported per task and mode (medians over the reps):
- decode tokens/s: GenerationStats.decode_tokens_per_s, the tokens after the first / the time
  of the decode steps (what speculation speeds up);
- end-to-end tokens/s: completion tokens / wall time of the generate() call (prefill included);
- acceptance rate: accepted / drafted tokens; mean draft length: drafted tokens / decode steps
  that carried drafts; tokens per decode step: (completion - 1) / decode steps;
- speed-up: drafted decode tokens/s / plain decode tokens/s, and whether the output is identical
  (it must be; a difference is reported, not hidden).

--peer llama_cpp adds the same tasks run by llama.cpp through llama-cpp-python (the pin in
pyproject's `peers` extra; `make peerdeps` builds it): plain, and with its prompt lookup
drafter (`llama_cpp.llama_speculative.LlamaPromptLookupDecoding(max_ngram_size=--draft-ngram,
num_pred_tokens=--draft-max)`: n-grams of the prompt, k drafts verified in one batch, greedy).
Greedy only (--temperature 0), same GGUF, same threads, a streamed create_completion: decode
tokens/s there is (streamed tokens - 1) / (time of the last token - time of the first), the
first token's time being TTFT. llama-cpp-python's speculative loop is Python around
llama_decode, and it evaluates every position's logits (logits_all) when a drafter is set; that
is what its users get, so it is what is compared. Rows "llama.cpp plain" / "llama.cpp ngram";
"identical" there compares llama.cpp's drafted text with llama.cpp's plain text.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from gemma4stack import Model

_ROWS = [("Harbor Street Bakery", "14 Harbor Street, Portsmouth", "Maria Delgado", "rye flour", 40, 2.10),
         ("Northgate Hardware", "2 Mill Lane, Leeds", "Owen Price", "steel hinges", 300, 0.45),
         ("Lakeside Clinic", "88 Shore Road, Keswick", "Dr. Anna Kerr", "nitrile gloves", 50, 7.80),
         ("Blue Fern Cafe", "5 Market Square, Bath", "Tom Hughes", "espresso beans", 25, 18.00),
         ("Riverside School", "1 College Way, Exeter", "Priya Shah", "A4 paper reams", 120, 3.25),
         ("Oak & Iron Joinery", "17 Forge Street, York", "Liam Walsh", "oak boards", 64, 12.40)]


def extraction_prompt() -> str:
    """Six invoices, then a request to copy two of them: an answer that quotes the prompt."""
    docs = []
    for i, (cust, addr, who, item, qty, price) in enumerate(_ROWS):
        mail = who.lower().replace("dr. ", "").replace(" ", ".") + "@example.com"
        docs.append(f"Invoice 2024-{117 + i}\nCustomer: {cust}, {addr}\nContact: {who} ({mail})\n"
                    f"Items: {qty} units of {item} at {price:.2f} each, total {qty * price:.2f}\n"
                    f"Due date: {10 + i} July 2024\nPayment: bank transfer, reference INV-2024-{117 + i}\n")
    return ("\n".join(docs) + "\nCopy invoices 2024-119 and 2024-121 above exactly, line by line.\n\n"
            "Invoice 2024-119\n")


FREE_PROMPT = "Once upon a time, in a small village at the edge of a great forest, there lived"


def run(path: str, prompt: str, draft: str | None, args) -> dict:
    gen = dict(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
               top_k=0, top_p=1.0)
    with Model(path, threads=args.threads, context=args.context, prefix_cache=False, draft=draft,
               draft_max=args.draft_max, draft_ngram=args.draft_ngram) as m:
        m.generate(prompt, **gen)     # warm-up
        runs = []
        text = None
        for _ in range(args.reps):
            t0 = time.perf_counter()
            text = m.generate(prompt, **gen)
            wall = time.perf_counter() - t0
            s = m.last_stats
            runs.append(dict(decode_tps=s.decode_tokens_per_s, e2e_tps=s.completion_tokens / wall,
                             completion=s.completion_tokens, drafted=s.draft_tokens,
                             accepted=s.accepted_tokens, draft_steps=s.draft_steps,
                             decode_ms=s.decode_ms, prompt_tokens=s.prompt_tokens))
    med = {k: statistics.median(r[k] for r in runs) for k in ("decode_tps", "e2e_tps")}
    last = runs[-1]
    drafted, accepted, dsteps = last["drafted"], last["accepted"], last["draft_steps"]
    # decode steps = tokens after the first - accepted drafts (each step yields 1 + its accepted)
    steps = last["completion"] - 1 - accepted
    return dict(mode=draft or "plain", prompt_tokens=last["prompt_tokens"], completion_tokens=last["completion"],
                decode_tokens_per_s=med["decode_tps"], e2e_tokens_per_s=med["e2e_tps"],
                drafted=drafted, accepted=accepted,
                acceptance_rate=accepted / drafted if drafted else None,
                mean_draft_length=drafted / dsteps if dsteps else None,
                tokens_per_decode_step=(last["completion"] - 1) / steps if steps > 0 else None,
                runs=runs, text=text)


def run_llamacpp(path: str, prompt: str, draft: bool, args) -> dict:
    """One task through llama-cpp-python: plain (draft False) or with LlamaPromptLookupDecoding."""
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    dm = LlamaPromptLookupDecoding(max_ngram_size=args.draft_ngram, num_pred_tokens=args.draft_max) if draft else None
    llm = Llama(model_path=path, n_ctx=args.context, n_threads=args.threads or os.cpu_count(),
                n_threads_batch=args.threads or os.cpu_count(), n_batch=512, verbose=False, draft_model=dm,
                # with a drafter, 0.3.36 evaluates all logits but sizes its score array from this
                # argument (n_batch rows when False) and fails past 512 tokens: say it explicitly
                logits_all=draft)
    try:
        def once():
            llm.reset()   # no reuse of the previous run's KV (as prefix_cache=False on our side)
            t0 = time.perf_counter()
            times, parts = [], []
            for ch in llm.create_completion(prompt, max_tokens=args.max_tokens, temperature=0.0, top_k=1,
                                            top_p=1.0, min_p=0.0, repeat_penalty=1.0, stream=True):
                times.append(time.perf_counter())
                parts.append(ch["choices"][0]["text"])
            n = len(times)
            dec = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else float("nan")
            return dict(decode_tps=dec, e2e_tps=n / (times[-1] - t0), completion=n,
                        ttft_ms=(times[0] - t0) * 1e3), "".join(parts)
        once()   # warm-up
        runs, text = [], None
        for _ in range(args.reps):
            r, text = once()
            runs.append(r)
    finally:
        llm.close() if hasattr(llm, "close") else None
    return dict(mode="llama.cpp ngram" if draft else "llama.cpp plain", completion_tokens=runs[-1]["completion"],
                decode_tokens_per_s=statistics.median(r["decode_tps"] for r in runs),
                e2e_tokens_per_s=statistics.median(r["e2e_tps"] for r in runs),
                drafted=None, accepted=None, acceptance_rate=None, mean_draft_length=None,
                tokens_per_decode_step=None, runs=runs, text=text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: the real Gemma 3 270M, from PyPI)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--draft-ngram", type=int, default=3)
    ap.add_argument("--tasks", default="extraction,free")
    ap.add_argument("--drafts", default="ngram", help="comma-separated: ngram, model:PATH")
    ap.add_argument("--temperature", type=float, default=0.0, help="> 0: speculative sampling")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--peer", default=None, choices=["llama_cpp"],
                    help="also run llama.cpp (llama-cpp-python) plain and with its prompt lookup")
    args = ap.parse_args(argv)
    if args.peer and args.temperature > 0:
        ap.error("--peer compares greedy decoding only (--temperature 0)")
    path = args.model
    if path is None:
        from gemma4stack.testmodels import gemma3_270m
        path = str(gemma3_270m(progress=False))
    prompts = {"extraction": extraction_prompt(), "free": FREE_PROMPT}
    results = {"model": os.path.basename(path), "machine": platform.processor() or platform.machine(),
               "threads": args.threads, "max_tokens": args.max_tokens, "draft_max": args.draft_max,
               "draft_ngram": args.draft_ngram, "temperature": args.temperature,
               "drafts": args.drafts.split(","), "tasks": {}}
    print("| task | mode | decode tok/s | end-to-end tok/s | drafted | accepted | acceptance | "
          "mean draft | tokens/step | speed-up | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        plain = run(path, prompts[task], None, args)
        results["tasks"][task] = {"plain": plain}
        specs = []
        for d in args.drafts.split(","):
            spec = run(path, prompts[task], d, args)
            spec["speedup"] = spec["decode_tokens_per_s"] / plain["decode_tokens_per_s"]
            spec["identical"] = spec["text"] == plain["text"] if args.temperature <= 0 else None
            results["tasks"][task][d] = spec
            specs.append(spec)
        if args.peer == "llama_cpp":
            lp = run_llamacpp(path, prompts[task], False, args)
            ld = run_llamacpp(path, prompts[task], True, args)
            ld["speedup"] = ld["decode_tokens_per_s"] / lp["decode_tokens_per_s"]
            ld["identical"] = ld["text"] == lp["text"]
            lp["vs_ours_plain"] = plain["decode_tokens_per_s"] / lp["decode_tokens_per_s"]
            results["tasks"][task]["llama.cpp plain"] = lp
            results["tasks"][task]["llama.cpp ngram"] = ld
            specs += [lp, ld]

        def f(x, fmt="{:.2f}"):
            return "-" if x is None else fmt.format(x)
        for r in (plain, *specs):
            print(f"| {task} | {r['mode']} | {r['decode_tokens_per_s']:.1f} | {r['e2e_tokens_per_s']:.1f} | "
                  f"{f(r['drafted'], '{}')} | {f(r['accepted'], '{}')} | {f(r['acceptance_rate'])} | "
                  f"{f(r['mean_draft_length'])} | {f(r['tokens_per_decode_step'])} | "
                  f"{f(r.get('speedup'), '{:.2f}x')} | "
                  f"{'-' if r.get('identical', '') is None else r.get('identical', '')} |")
        sys.stdout.flush()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if all(r.get("identical") is not False for t in results["tasks"].values()
                    for k, r in t.items() if k != "plain") else 1


if __name__ == "__main__":
    sys.exit(main())
