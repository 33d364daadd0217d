"""Decode (tg) and prefill (pp) speed of gemma4stack against llama.cpp on the same GGUF.

    python benchmarks/compare_llamacpp.py --synth                 # the standard set, files under /tmp
    python benchmarks/compare_llamacpp.py --model a.gguf --model b.gguf -p 512 -n 128 -r 5 -t 2
    python benchmarks/compare_llamacpp.py --synth --llama-env OMP_WAIT_POLICY=passive
    python benchmarks/compare_llamacpp.py --types all -p 64 -n 64 -r 2 -t 2   # one file per type

llama.cpp runs through llama-cpp-python (the `bench` extra), built from source on this machine
with its kernels compiled for this CPU's ISA:

    CMAKE_ARGS="$(python benchmarks/compare_llamacpp.py --cmake-args)" \
        pip install --no-cache-dir 'llama-cpp-python==0.3.36'

(--cmake-args reads /proc/cpuinfo; the README, Benchmarks, has the same line). Not GGML_NATIVE=ON: on a CPU
with AMX, -march=native turns on ggml's AMX matmul (ggml-cpu/amx/), which segfaulted in
ggml_backend_amx_mul_mat on the first llama_decode in this KVM guest (llama-cpp-python 0.3.36;
gdb backtrace in benchmarks/RESULTS.md). Both engines get
the same file, the same thread count, the same random token ids, and llama-bench's tests:

- ppN: N tokens as one batch from position 0 into an empty KV cache (BOS first);
- tgN: N single-token forwards at positions 0..N-1 (no prompt, no sampling).

Every sample runs in a fresh process (so neither engine's idle threads, caches or allocator
state touch the other's numbers): the process loads the model, warms up with one full pp and
tg run (page faults, repacking, first-touch of the KV cache are out of the samples), then times
one pp and one tg. Samples alternate A B A B ... (gemma4stack first in each pair), and each
pair gives a ratio ours / llama.cpp, so machine-wide slowdowns (other processes, frequency)
hit both sides of a pair alike. Reported: the median tokens/s of each engine, the median of the
per-pair ratios with their range, and the roofline efficiency of decode:
bytes read per token (gemma4stack.bench.bytes_per_token) x tokens/s / the read bandwidth that
gemma4stack.hardware measures (GB/s = 1e9 B/s).

--synth writes (if missing) the models of the kernel issue's targets with `gemma4stack synth`:
TinyLlama-1.1B shape (llama) at Q4_0, Q4_K_M, Q8_0, and full-size Gemma 4 E2B at Q4_0 and Q4_K_M
when this llama.cpp knows `gemma4` and gemma4stack runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SYNTH_DIR = Path(os.environ.get("G4_BENCH_DIR", "/tmp/g4bench"))
SYNTH_SET = [  # (file name, synth arguments)
    ("tinyllama-q4_0.gguf", ["--arch", "llama", "--type", "q4_0"]),
    ("tinyllama-q4_k_m.gguf", ["--arch", "llama", "--type", "q4_k_m"]),
    ("tinyllama-q8_0.gguf", ["--arch", "llama", "--type", "q8_0"]),
    ("gemma4-e2b-q4_0.gguf", ["--arch", "gemma4", "--variant", "e2b", "--type", "q4_0"]),
    ("gemma4-e2b-q4_k_m.gguf", ["--arch", "gemma4", "--variant", "e2b", "--type", "q4_k_m"]),
]


# ---- one sample, in its own process ---------------------------------------------------------

def _tokens(n_vocab: int, n: int, bos: int | None, seed: int) -> list[int]:
    t = np.random.default_rng(seed).integers(0, n_vocab, size=n).tolist()
    if bos is not None and n:
        t[0] = bos
    return t


def _vocab_and_bos(path: str) -> tuple[int, int | None]:
    from gemma4stack.gguf import read_gguf
    md = read_gguf(path).metadata
    n_vocab = len(md.get("tokenizer.ggml.tokens", [])) or 32000
    bos = md.get("tokenizer.ggml.bos_token_id")
    add = md.get("tokenizer.ggml.add_bos_token", True)
    return n_vocab, (bos if add else None)


def worker(engine: str, path: str, n_prompt: int, n_gen: int, threads: int, seed: int) -> dict:
    """Load `path` with `engine`, warm up, time one pp and one tg. Returns tokens/s."""
    n_vocab, bos = _vocab_and_bos(path)
    prompt = _tokens(n_vocab, n_prompt, bos, seed)
    gen = _tokens(n_vocab, n_gen, None, seed + 1)
    n_ctx = max(n_prompt, n_gen) + 16
    t0 = time.perf_counter()
    if engine == "llama.cpp":
        import llama_cpp
        llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=max(n_prompt, 1), n_ubatch=max(n_prompt, 1),
                              n_threads=threads, n_threads_batch=threads, verbose=False)

        def pp():
            llm.reset()
            llm.eval(prompt)

        def tg():
            llm.reset()
            for tok in gen:
                llm.eval([tok])
    else:
        from gemma4stack.model import Model
        model = Model(path, threads=threads, context=n_ctx)
        core = model._core
        logits = np.empty(core.n_vocab if hasattr(core, "n_vocab") else n_vocab, dtype=np.float32)
        ptoks = np.asarray(prompt, dtype=np.int32)
        one = np.empty(1, dtype=np.int32)

        def pp():
            core.reset()
            core.forward(ptoks, 0, logits, False)

        def tg():
            core.reset()
            for i, tok in enumerate(gen):
                one[0] = tok
                core.forward(one, i, logits, False)
    load_s = time.perf_counter() - t0
    out = {"engine": engine, "load_s": load_s}
    for name, fn, n in (("pp", pp, n_prompt), ("tg", tg, n_gen)):
        if n:
            fn()                                   # warm-up
    for name, fn, n in (("pp", pp, n_prompt), ("tg", tg, n_gen)):
        if n:
            t = time.perf_counter()
            fn()
            out[f"{name}_ts"] = n / (time.perf_counter() - t)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_sample(engine: str, path: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--model", path,
           "-p", str(args.n_prompt), "-n", str(args.n_gen), "-t", str(args.threads), "--seed", str(args.seed)]
    env = dict(os.environ)
    if engine == "llama.cpp":
        env.update(kv.split("=", 1) for kv in args.llama_env)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{engine} on {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- models ---------------------------------------------------------------------------------------

def llama_cpp_knows(arch: str) -> bool:
    """Whether this llama.cpp build loads `arch` (its llama-arch.cpp name table)."""
    import llama_cpp
    lib = Path(llama_cpp.__file__).parent / "lib"
    for so in lib.glob("libllama*.so*"):
        if f"\0{arch}\0".encode() in so.read_bytes():
            return True
    return False


def ours_runs(arch: str) -> bool:
    """Whether gemma4stack's core has the architecture (a vocab-only load attempt would need a file,
    so ask the error message of a missing file is not enough: look at the registry in the build)."""
    from gemma4stack import _core
    so = Path(_core.__file__).read_bytes()
    return f"\0{arch}\0".encode() in so


# --types: a TinyLlama-shape file of each GGUF type of issue 14 (every matrix of that type,
# as llama-quantize --pure writes them), for the per-type target decode >= 1.0x llama.cpp
PURE_TYPES = ["q2_k", "q3_k", "q5_k", "iq4_nl", "iq4_xs", "iq3_xxs", "iq3_s", "iq2_xxs",
              "iq2_xs", "iq2_s", "iq1_s", "iq1_m"]


def synth_type_models(types: list[str]) -> list[str]:
    SYNTH_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in types:
        p = SYNTH_DIR / f"tinyllama-pure-{t}.gguf"
        if not p.exists():
            cmd = [sys.executable, "-m", "gemma4stack", "synth", str(p), "--quiet",
                   "--arch", "llama", "--type", t]
            print("$", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True)
        paths.append(str(p))
    return paths


def synth_models(include_gemma: bool) -> list[str]:
    SYNTH_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, sargs in SYNTH_SET:
        is_gemma = "gemma4" in sargs
        if is_gemma and not include_gemma:
            continue
        if is_gemma and not (llama_cpp_knows("gemma4") and ours_runs("gemma4")):
            print(f"skip {name}: llama.cpp or gemma4stack cannot run gemma4", file=sys.stderr)
            continue
        p = SYNTH_DIR / name
        if not p.exists():
            cmd = [sys.executable, "-m", "gemma4stack", "synth", str(p), "--quiet", *sargs]
            print("$", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True)
        paths.append(str(p))
    return paths


# ---- the comparison --------------------------------------------------------------------------------

def compare(path: str, args, read_gbs: float | None) -> dict:
    from gemma4stack.bench import bytes_per_token, model_type
    from gemma4stack.gguf import read_gguf
    g = read_gguf(path)
    samples = {"gemma4stack": [], "llama.cpp": []}
    for rep in range(args.repetitions):
        for engine in ("gemma4stack", "llama.cpp"):          # A B, A B, ...
            s = run_sample(engine, path, args)
            samples[engine].append(s)
            print(f"  {Path(path).name} #{rep + 1} {engine:12s} pp {s.get('pp_ts', 0):8.2f} t/s  "
                  f"tg {s.get('tg_ts', 0):7.2f} t/s", file=sys.stderr, flush=True)
    res = {"model": Path(path).name, "model_type": model_type(g), "size_mib": g.tensor_bytes / 2**20,
           "n_prompt": args.n_prompt, "n_gen": args.n_gen, "threads": args.threads,
           "samples": samples, "bytes_per_token": bytes_per_token(g), "read_gbs": read_gbs}
    for test in ("pp", "tg"):
        key = f"{test}_ts"
        if key not in samples["gemma4stack"][0]:
            continue
        ours = [s[key] for s in samples["gemma4stack"]]
        theirs = [s[key] for s in samples["llama.cpp"]]
        ratios = [a / b for a, b in zip(ours, theirs)]
        res[test] = {"ours_median": statistics.median(ours), "llama_median": statistics.median(theirs),
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                     "ratio_max": max(ratios), "ratios": ratios}
    if "tg" in res and read_gbs:
        bpt = res["bytes_per_token"]
        res["tg"]["roofline_ours"] = bpt * res["tg"]["ours_median"] / (read_gbs * 1e9)
        res["tg"]["roofline_llama"] = bpt * res["tg"]["llama_median"] / (read_gbs * 1e9)
    return res


def markdown(results: list[dict]) -> str:
    rows = ["| model | test | gemma4stack t/s | llama.cpp t/s | ratio (median) | ratio range | roofline ours | roofline llama.cpp |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for test in ("pp", "tg"):
            if test not in r:
                continue
            t = r[test]
            n = r["n_prompt"] if test == "pp" else r["n_gen"]
            roof = lambda k: f"{100 * t[k]:.1f}%" if k in t else ""
            rows.append(f"| {r['model']} ({r['model_type']}) | {test}{n} | {t['ours_median']:.2f} | "
                        f"{t['llama_median']:.2f} | {t['ratio_median']:.3f} | {t['ratio_min']:.3f}-{t['ratio_max']:.3f} | "
                        f"{roof('roofline_ours')} | {roof('roofline_llama')} |")
    return "\n".join(rows)


# /proc/cpuinfo flag -> the ggml CMake option that compiles for it (ggml/CMakeLists.txt, GGML_*)
_GGML_ISA = [("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"), ("f16c", "GGML_F16C"),
             ("bmi2", "GGML_BMI2"), ("avx_vnni", "GGML_AVX_VNNI"), ("avx512f", "GGML_AVX512"),
             ("avx512_vnni", "GGML_AVX512_VNNI"), ("avx512vbmi", "GGML_AVX512_VBMI"),
             ("avx512_bf16", "GGML_AVX512_BF16")]


def cmake_args(flags: set[str]) -> str:
    """CMAKE_ARGS that build llama.cpp's CPU kernels for exactly the x86 ISA in `flags`
    (/proc/cpuinfo names): GGML_NATIVE off (see the module docstring), each GGML_<ISA> on
    when the CPU has it and off otherwise, AMX off. A fixed list is wrong somewhere: AMD's
    Zen 4 has AVX512_VNNI but not the VEX-encoded AVX_VNNI, and a build with GGML_AVX_VNNI=ON
    dies there with SIGILL in its first matmul."""
    opts = ["-DGGML_NATIVE=OFF"] + [f"-D{opt}={'ON' if flag in flags else 'OFF'}"
                                    for flag, opt in _GGML_ISA]
    return " ".join(opts + ["-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_BF16=OFF"])


def cpu_flags() -> set[str]:
    """The x86 feature flags of this Linux machine's first CPU (/proc/cpuinfo); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=[], help="GGUF file (repeatable)")
    ap.add_argument("--synth", action="store_true", help="the standard synthetic set (files under $G4_BENCH_DIR or /tmp/g4bench)")
    ap.add_argument("--types", help="TinyLlama-shape files of one type each: 'all' (the k- and "
                    "i-quants of issue 14) or a comma list (q2_k,iq4_xs,...)")
    ap.add_argument("--no-gemma", action="store_true", help="with --synth: only the llama-shape models")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=5, help="A/B pairs per model")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--llama-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the llama.cpp samples only, e.g. OMP_WAIT_POLICY=passive "
                         "(llama.cpp's OpenMP threads spin at barriers; on a busy machine that costs it "
                         "far more than it gains)")
    ap.add_argument("--json", help="write all samples and summaries here")
    ap.add_argument("--cmake-args", action="store_true",
                    help="print the CMAKE_ARGS to build llama-cpp-python for this CPU, and exit")
    ap.add_argument("--worker", choices=["gemma4stack", "llama.cpp"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.cmake_args:
        flags = cpu_flags()
        if not flags:
            print("no /proc/cpuinfo flags here (not x86 Linux): build llama-cpp-python with its "
                  "defaults", file=sys.stderr)
            return 1
        print(cmake_args(flags))
        return 0

    if args.worker:
        print(json.dumps(worker(args.worker, args.model[0], args.n_prompt, args.n_gen, args.threads, args.seed)))
        return 0
    paths = list(args.model)
    if args.synth:
        paths += synth_models(include_gemma=not args.no_gemma)
    if args.types:
        types = PURE_TYPES if args.types == "all" else args.types.split(",")
        from gemma4stack.synth import TYPES as SYNTH_TYPES
        bad = [t for t in types if t not in SYNTH_TYPES]
        if bad:
            ap.error(f"--types: unknown {', '.join(bad)}; expected 'all' or some of "
                     f"{', '.join(SYNTH_TYPES)}")
        paths += synth_type_models(types)
    if not paths:
        ap.error("give --model PATH, --synth and/or --types")
    from gemma4stack import _core, hardware
    hw = hardware.detect()
    read_gbs = hw.bandwidth_gbs.read if hw.bandwidth_gbs else None
    print(f"gemma4stack ISA {_core.isa()}, {args.threads} threads, read bandwidth {read_gbs:.1f} GB/s, "
          f"{platform.processor() or platform.machine()}", file=sys.stderr)
    results = [compare(p, args, read_gbs) for p in paths]
    hw_after = hardware.measure_bandwidth()
    print(markdown(results))
    arrays = f"{hw.bandwidth_gbs.threads} threads, arrays of {hw.bandwidth_gbs.bytes_per_array / 2**20:.0f} MiB, best of {hw.bandwidth_gbs.reps}" \
        if hw.bandwidth_gbs else "not measured"
    print(f"\nread bandwidth (gemma4stack.hardware, {arrays}): {read_gbs:.1f} GB/s before, "
          f"{hw_after.read:.1f} GB/s after; ISA {_core.isa()}; threads {args.threads}; "
          f"llama.cpp environment: {' '.join(args.llama_env) or 'default'}; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "read_gbs_before": read_gbs,
                                               "read_gbs_after": hw_after.read, "isa": _core.isa(),
                                               "llama_env": args.llama_env, "loadavg_end": os.getloadavg()},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
