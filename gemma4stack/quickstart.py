"""`gemma4stack quickstart`: the whole path once, in under a minute.

    $ gemma4stack quickstart [--model PATH] [--prompt TEXT] [--max-tokens N]

1. detect this machine (hwloc in the C core, plus the memory-bandwidth probe, ~1 s);
2. recommend Gemma 4 tiers for it (which variant x quantization fits, where, how fast);
3. generate a short story with the C core from a GGUF model, streamed, with its tokens/s
   (default: the 656K-parameter TinyStories model of the shared test data, so that this runs
   anywhere without a download; see gemma4stack._shared.default_model());
4. print next steps: the Gemma 4 GGUF to pull (suggest_pull: the largest predicted to decode at
   >= 5 tokens/s here whose download fits the free disk; without a measured bandwidth it says
   what it assumes), then run, benchmark, serve.

Python: `gemma4stack.quickstart.quickstart(model=None, prompt=..., max_tokens=...) -> int`.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

from gemma4stack._shared import default_model

DEFAULT_PROMPT = "Once upon a time"
DEFAULT_MAX_TOKENS = 96
DEFAULT_CONTEXT = 8192


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


# ---------------------------------------------------------------------------------------------
# Which Gemma 4 GGUF to pull first

# Without a measured bandwidth (--no-bandwidth) the suggestion assumes this read bandwidth:
# a low figure for one DDR4 channel, whose peak is 19.2 (DDR4-2400) to 25.6 GB/s (DDR4-3200)
# (8 bytes x transfer rate, JEDEC JESD79-4); most desktops and laptops have two channels.
ASSUMED_READ_GBS = 10.0
# With <= 4 cores, decode can be bound by the kernels' instructions rather than by DRAM
# (recommend()'s "upper bounds" note): on 2 threads of AMD Zen 4 our decode reached 64-84% of
# the measured read bandwidth against the 80% recommend() assumes (benchmarks/RESULTS.md,
# "The same comparison on AMD EPYC Zen 4"), so a suggestion there must reach the interactive
# speed at 64/80 = 0.8 of its prediction.
FEW_CORES = 4
FEW_CORES_DERATE = 0.8
# Space left on the disk after the download: the HF cache writes a temporary file first and the
# system needs room to breathe. A GGUF is its tensors plus a few MB of metadata (the tokenizer).
DISK_MARGIN_BYTES = 2 << 30
DOWNLOAD_OVERHEAD = 1.02


@dataclass
class PullSuggestion:
    """The first Gemma 4 GGUF to pull on a machine.

    row: the recommend() TierRow (None when nothing qualifies); command: the `gemma4stack pull`
    line (None with row); tps: predicted decode tokens/s used for the choice (after any derating);
    download_bytes: expected file size; free_bytes: free space where the HF cache lives
    (cache_dir); assumptions: what the choice took for granted, as sentences; bigger: a larger
    row that is predicted >= the interactive speed only before derating (or None); fastest:
    when row is None, the fitting row with the highest predicted speed whose download fits
    (what to try anyway), else None.
    """
    row: Any
    command: str | None
    tps: float | None
    download_bytes: int | None
    free_bytes: int
    cache_dir: str
    assumptions: list[str] = field(default_factory=list)
    bigger: Any = None
    fastest: Any = None


def hf_cache_dir() -> Path:
    """Where `gemma4stack pull` downloads to: huggingface_hub's cache ($HF_HUB_CACHE, else
    $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def free_disk_bytes(path: Path) -> int:
    """Free bytes (for this user) on the file system that holds `path`, or its nearest existing
    parent (shutil.disk_usage)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def suggest_pull(report: Any, context: int = DEFAULT_CONTEXT, free_bytes: int | None = None,
                 cache_dir: Path | None = None, assumed_read_gbs: float = ASSUMED_READ_GBS
                 ) -> PullSuggestion:
    """The largest Gemma 4 variant (then the highest precision) that `gemma4stack pull` knows,
    that fits this machine's memory at `context` tokens, is predicted to decode at >=
    recommend.USABLE_TPS tokens/s, and whose download leaves DISK_MARGIN_BYTES free.

    report: a HardwareReport (its measured read bandwidth is used; without one,
    assumed_read_gbs is, and said so). With <= FEW_CORES cores the prediction is derated by
    FEW_CORES_DERATE (see above). free_bytes: free disk space (default: measured where the HF
    cache lives). Returns a PullSuggestion whose row is None when nothing qualifies.
    """
    from gemma4stack.recommend import USABLE_TPS, _pullable, get_variant, pull_hint, quants, \
        recommend, variants

    notes: list[str] = []
    bw = getattr(report, "bandwidth_gbs", None)
    if getattr(bw, "read", None):
        rec_report = report
    else:
        rec_report = dataclasses.replace(report, bandwidth_gbs=SimpleNamespace(read=assumed_read_gbs))
        notes.append(f"no measured memory bandwidth: assumed {assumed_read_gbs:g} GB/s read (a "
                     "low figure for one DDR4 channel); run without --no-bandwidth to measure it")
    rec = recommend(rec_report, context=context)
    cores = getattr(getattr(report, "cpu", None), "cores", None) or 0
    derate = FEW_CORES_DERATE if 0 < cores <= FEW_CORES else 1.0
    if derate < 1:
        notes.append(f"only {cores} cores: decode may be compute-bound, so the choice needs "
                     f">= {USABLE_TPS:g} tokens/s at {derate:g} x the predicted speed "
                     "(the worst roofline share measured on 2 Zen 4 threads, benchmarks/RESULTS.md)")
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    free = free_disk_bytes(cache) if free_bytes is None else int(free_bytes)

    vr = {v.name: v.rank for v in variants()}
    qr = {q.name: q.rank for q in quants()}
    pullable = _pullable()

    def speed(r):
        if r.placement != "ram":           # GPU / unified predictions are not CPU-bound
            return r.predicted_decode_tps
        return r.predicted_decode_tps * derate

    def download(r):
        return int(r.weights_bytes * DOWNLOAD_OVERHEAD)

    ok = [r for r in rec.rows if r.fits and r.predicted_decode_tps is not None
          and (get_variant(r.variant).key, r.quant) in pullable]
    fast = [r for r in ok if speed(r) >= USABLE_TPS]
    on_disk = [r for r in fast if download(r) + DISK_MARGIN_BYTES <= free]
    if len(on_disk) < len(fast):
        notes.append(f"{len(fast) - len(on_disk)} faster-than-{USABLE_TPS:g}-tokens/s choices "
                     f"left out: their download would leave less than "
                     f"{DISK_MARGIN_BYTES / 2**30:g} GiB of the {free / 1e9:.1f} GB free in {cache}")
    key = lambda r: (vr[r.variant], qr[r.quant])
    pick = max(on_disk, key=key) if on_disk else None
    bigger = None
    if derate < 1:
        before_derate = [r for r in ok if r.predicted_decode_tps >= USABLE_TPS
                   and download(r) + DISK_MARGIN_BYTES <= free]
        top = max(before_derate, key=key) if before_derate else None
        if top is not None and (pick is None or key(top) > key(pick)):
            bigger = top
    fastest = None
    if pick is None:
        room = [r for r in ok if download(r) + DISK_MARGIN_BYTES <= free]
        fastest = max(room, key=speed) if room else None
    return PullSuggestion(row=pick, command=pull_hint(pick) if pick else None,
                          tps=speed(pick) if pick else None,
                          download_bytes=download(pick) if pick else None, free_bytes=free,
                          cache_dir=str(cache), assumptions=notes, bigger=bigger,
                          fastest=fastest)


def _next_steps(out: TextIO, report: Any, context: int) -> None:
    from gemma4stack.recommend import USABLE_TPS, pull_hint
    s = suggest_pull(report, context=context)
    gb = lambda r: f"{int(r.weights_bytes * DOWNLOAD_OVERHEAD) / 1e9:.1f} GB"
    disk = f"{s.free_bytes / 1e9:.0f} GB free in {s.cache_dir}"
    tags = "    (all tags: gemma4stack pull --list)"
    if s.row is not None:
        r = s.row
        out.write(f"1. Get a real Gemma 4 GGUF: {r.variant} {r.quant} is the largest this machine "
                  f"is predicted to decode at >= {USABLE_TPS:g} tokens/s (~{s.tps:.1f}), a "
                  f"{gb(r)} download ({disk}):\n     {s.command}{tags}\n")
        if s.bigger is not None:
            b = s.bigger
            out.write(f"   Bigger, at most ~{b.predicted_decode_tps:.1f} tokens/s here (the "
                      "roofline, an upper bound with this few cores): "
                      f"{b.variant} {b.quant} ({gb(b)}): {pull_hint(b)}\n")
    elif s.bigger is not None or s.fastest is not None:
        r = s.bigger or s.fastest
        out.write(f"1. No Gemma 4 GGUF clears {USABLE_TPS:g} tokens/s here with the margin below; "
                  "the closest is "
                  f"{r.variant} {r.quant}, at most ~{r.predicted_decode_tps:.1f} tokens/s, a "
                  f"{gb(r)} download ({disk}):\n     {pull_hint(r)}{tags}\n")
    else:
        out.write(f"1. No Gemma 4 GGUF fits this machine's memory with a download that leaves "
                  f"{DISK_MARGIN_BYTES / 2**30:g} GiB of the {disk}; see "
                  "`gemma4stack recommend` for what each needs\n")
    for a in s.assumptions:
        out.write(f"   ({a})\n")
    out.write(
        "2. Run it (the continuation on stdout, speed on stderr):\n"
        "     gemma4stack run --model PATH --prompt \"Why is the sky blue?\" --max-tokens 128\n"
        "3. Benchmark it (llama-bench style prefill / decode tokens/s):\n"
        "     gemma4stack bench --model PATH\n"
        "4. Serve it as an OpenAI-compatible API:\n"
        "     gemma4stack serve --model PATH --port 8080\n"
        "5. What would another machine run?  gemma4stack recommend --list-machines, then\n"
        "     gemma4stack recommend --machine mac-mini-m4-16gb\n"
        "   The guided notebook: notebooks/gemma4_local_inference.ipynb\n")


def quickstart(model: str | Path | None = None, prompt: str = DEFAULT_PROMPT,
               max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.8,
               seed: int | None = None, context: int = DEFAULT_CONTEXT, bandwidth: bool = True,
               out: TextIO | None = None) -> int:
    """Detect, recommend, generate a story, print next steps. Returns an exit code (0 = all
    four steps ran; 1 = no story, because the inference core is missing).

    model: GGUF path (default: TinyStories-656K-Q8_0.gguf in the shared data). Raises
    FileNotFoundError when the model file does not exist, before anything slow runs.
    """
    out = out or sys.stdout
    path = Path(model) if model is not None else default_model()
    if not path.is_file():
        raise FileNotFoundError(
            f"model not found: {path}" + ("" if model is not None else
            " (the demo model lives in the shared data: set GEMMA4STACK_SHARED, or pass --model)"))
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
    _next_steps(out, report, context)
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
                   help="GGUF model (default: the shared TinyStories-656K-Q8_0.gguf)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"default: {DEFAULT_PROMPT!r}")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"tokens to generate (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--context", type=int, default=DEFAULT_CONTEXT,
                   help=f"context for the tier table (default {DEFAULT_CONTEXT})")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the bandwidth probe")
    p.set_defaults(func=_cmd_quickstart)
