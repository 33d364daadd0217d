"""The cost of Gemma 4 MTP speculation (issue 15, benchmark b): one assistant draft step and a
k-token verification against one plain decode step, and the break-even acceptance rate.

    # full-size synthetic E4B (Q4_0, ~5 GB written once) and a synthetic assistant for it
    python benchmarks/bench_mtp.py --synth-dir /tmp/mtp --threads 2 --out benchmarks/results/mtp-cost.json
    # given files (any gemma4 target and a gemma4-assistant made for it)
    python benchmarks/bench_mtp.py --target e4b.gguf --assistant e4b-assistant.gguf
    # the full lm_head instead of the masked (centroid) one, as llama.cpp's converter leaves it
    python benchmarks/bench_mtp.py --synth-dir /tmp/mtp --asst-centroids 0

Random weights make acceptance rates meaningless, so this measures only the mechanism, with
the single-sequence API (gemma4stack._core.Model.forward / mtp_step) after a prefill of
--prompt tokens, medians over --reps:
- decode_ms: one target forward of 1 token (a plain decode step);
- draft_ms: one assistant step (g4_mtp_step: its 4 layers over the target's KV, the centroid
  or full lm_head, the post-projection);
- verify_ms[k]: one target forward of k + 1 tokens with all logits (a step with k drafts);
- break_even[k]: the per-token acceptance rate a at which a step with k drafts, costing
  verify_ms[k] + k * draft_ms and yielding (1 - a^(k+1)) / (1 - a) tokens on average
  (Leviathan et al. 2023, eq. 1, i.i.d. acceptance), breaks even with plain decoding.

The synthetic assistant (synth_assistant) follows the published Gemma 4 assistant layout
(transformers Gemma4AssistantConfig and the released configs seen: 4 layers, sliding x3 +
global, hidden 1024, FFN 8192, the target's head sizes and KV heads, 2048 centroids with top
32); its query head count defaults to 8 like E4B's. The E2B/E4B assistants' exact widths were
not available here: --asst-hidden / --asst-ff / --asst-heads change them.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

from gemma4stack import _core
from gemma4stack.synth import random_blocks, synth


def _field(r: gguf.GGUFReader, key: str, default=None):
    f = r.fields.get(key)
    return default if f is None else f.contents()


def synth_assistant(target: str | Path, out: str | Path, hidden: int = 1024, n_ff: int = 8192,
                    n_head: int = 8, n_layer: int = 4, n_centroids: int = 2048, top_k: int = 32,
                    type: str = "q4_0", seed: int = 0) -> Path:
    """Write a random-weight gemma4-assistant GGUF for the gemma4 GGUF `target` (its hidden
    size, head sizes, KV heads, window, RoPE, vocabulary and tokenizer), with llama.cpp's
    names and keys (gemma4stack.convert._meta_gemma4_assistant writes the same). Matrices
    Q4_0 (type="q4_0", rows a multiple of 32) or F32, std 1/sqrt(row length); norms ~1;
    masked_embd_ordering a random permutation. n_centroids = 0: no masked embedding."""
    r = gguf.GGUFReader(str(target))
    A = "gemma4-assistant"
    Hb = int(_field(r, "gemma4.embedding_length"))
    hd, hd_swa = int(_field(r, "gemma4.attention.key_length")), int(_field(r, "gemma4.attention.key_length_swa"))
    swa_t = list(_field(r, "gemma4.attention.sliding_window_pattern"))
    nkv_t = _field(r, "gemma4.attention.head_count_kv")
    nkv_t = list(nkv_t) if isinstance(nkv_t, list) else [nkv_t] * len(swa_t)
    n_shared = int(_field(r, "gemma4.attention.shared_kv_layers", 0))
    first_shared = len(swa_t) - n_shared
    kv_of = {bool(s): int(k) for s, k in zip(swa_t[:first_shared], nkv_t[:first_shared])}
    t_emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    V = int(t_emb.shape[1])
    swa = [True] * (n_layer - 1) + [False]
    w = gguf.GGUFWriter(str(out), A)
    for name, f in r.fields.items():     # tokenizer and general keys of the target
        if name.startswith("tokenizer.") or name in ("general.file_type", "general.quantization_version"):
            vt = f.types[0]
            if vt == gguf.GGUFValueType.ARRAY:
                w.add_key_value(name, f.contents(), vt, sub_type=f.types[-1])
            else:
                w.add_key_value(name, f.contents(), vt)
    w.add_name(f"synthetic gemma4-assistant for {Path(target).name} (random weights)")
    w.add_context_length(int(_field(r, "gemma4.context_length", 131072)))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv([kv_of[s] for s in swa])
    w.add_layer_norm_rms_eps(float(_field(r, "gemma4.attention.layer_norm_rms_epsilon", 1e-6)))
    w.add_rope_freq_base(float(_field(r, "gemma4.rope.freq_base", 1e6)))
    w.add_rope_freq_base_swa(float(_field(r, "gemma4.rope.freq_base_swa", 1e4)))
    w.add_sliding_window(int(_field(r, "gemma4.attention.sliding_window")))
    w.add_shared_kv_layers(n_layer)
    w.add_embedding_length_per_layer_input(0)
    w.add_sliding_window_pattern(swa)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_key_length_swa(hd_swa)
    w.add_value_length_swa(hd_swa)
    w.add_rope_dimension_count(int(_field(r, "gemma4.rope.dimension_count", hd)))
    w.add_rope_dimension_count_swa(int(_field(r, "gemma4.rope.dimension_count_swa", hd_swa)))
    w.add_embedding_length_out(Hb)
    w.add_nextn_predict_layers(n_layer)
    if n_centroids:
        w.add_uint32(f"{A}.centroid_intermediate_top_k", top_k)

    rng = np.random.Generator(np.random.SFC64(seed))
    qt = T.Q4_0 if type == "q4_0" else T.F32
    rope = next(t for t in r.tensors if t.name == "rope_freqs.weight")
    plan: list[tuple[str, tuple[int, ...], T, object]] = [
        ("rope_freqs.weight", (int(rope.shape[0]),), T.F32, np.asarray(rope.data, np.float32)),
        ("token_embd.weight", (V, hidden), qt, None),
        ("output_norm.weight", (hidden,), T.F32, "norm"),
        ("nextn.pre_projection.weight", (hidden, 2 * Hb), qt, None),
        ("nextn.post_projection.weight", (Hb, hidden), qt, None),
    ]
    if n_centroids:
        plan += [("masked_embd_centroids.weight", (n_centroids, hidden), T.F32, None),
                 ("masked_embd_ordering", (V,), T.I32, rng.permutation(V).astype(np.int32))]
    for il, s in enumerate(swa):
        h, b = (hd_swa if s else hd), f"blk.{il}."
        plan += [(b + "attn_norm.weight", (hidden,), T.F32, "norm"),
                 (b + "attn_q.weight", (n_head * h, hidden), qt, None),
                 (b + "attn_q_norm.weight", (h,), T.F32, "qnorm"),
                 (b + "attn_output.weight", (hidden, n_head * h), qt, None),
                 (b + "post_attention_norm.weight", (hidden,), T.F32, "norm"),
                 (b + "ffn_norm.weight", (hidden,), T.F32, "norm"),
                 (b + "ffn_gate.weight", (n_ff, hidden), qt, None),
                 (b + "ffn_up.weight", (n_ff, hidden), qt, None),
                 (b + "ffn_down.weight", (hidden, n_ff), qt, None),
                 (b + "post_ffw_norm.weight", (hidden,), T.F32, "norm"),
                 (b + "layer_output_scale.weight", (1,), T.F32, np.ones(1, np.float32))]

    def nbytes(shape, t):
        blk, size = gguf.GGML_QUANT_SIZES[t]
        return math.prod(shape) // blk * size
    for name, shape, t, _ in plan:
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(shape, t), raw_dtype=t)
    w.write_header_to_file(str(out))
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    for name, shape, t, val in plan:
        if isinstance(val, np.ndarray):
            data = val
        elif val in ("norm", "qnorm"):
            data = rng.uniform(0.9, 1.1, shape[0]).astype(np.float32)
            if val == "qnorm":
                data *= np.float32(shape[0] ** -0.25)
        elif t == T.Q4_0:
            data = random_blocks(rng, math.prod(shape) // 32, T.Q4_0, 1.0 / math.sqrt(shape[-1]))
        else:
            data = (rng.standard_normal(math.prod(shape), dtype=np.float32)
                    / np.float32(math.sqrt(shape[-1])))
        data.tofile(fout)
        w.write_padding(fout, data.nbytes)
    w.close()
    return Path(out)


def _median_ms(fn, reps: int) -> float:
    fn()   # warm-up (repacking, page faults)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def break_even(t_decode: float, t_verify: float, t_draft: float, k: int) -> float | None:
    """The acceptance rate a in [0, 1] where (1 - a^(k+1)) / (1 - a) tokens per step of
    t_verify + k t_draft ms equal 1 token per t_decode ms (bisection); None if even a = 1
    does not pay (the step costs more than k + 1 decode steps)."""
    cost = (t_verify + k * t_draft) / t_decode

    def gain(a: float) -> float:
        return (k + 1.0) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)
    if gain(1.0) < cost:
        return None
    if gain(0.0) >= cost:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gain(mid) < cost else (lo, mid)
    return hi


def mtp_cost(target: str | Path, assistant: str | Path, threads: int | None = None,
             prompt: int = 256, reps: int = 10, ks: tuple[int, ...] = (1, 2, 4, 8)) -> dict:
    """The figures of the module doc for a gemma4 target and its assistant (milliseconds)."""
    ctx = prompt + max(ks) + 16
    tm = _core.Model(str(target), n_ctx=ctx, n_threads=threads or 0)
    am = _core.Model(str(assistant), n_ctx=ctx, n_threads=threads or 0)
    try:
        V = tm.n_vocab
        hb = int(_field(gguf.GGUFReader(str(target)), "gemma4.embedding_length"))
        ids = [int(x) for x in np.random.default_rng(0).integers(3, V, prompt)]
        lg = np.zeros((max(ks) + 1, V), np.float32)
        h = np.zeros((1, hb), np.float32)
        tm.forward(ids, 0, lg, all_logits=False, hidden_out=h)   # the last prompt row's hidden
        out, h_out = np.zeros((1, V), np.float32), np.zeros((1, hb), np.float32)
        res = {"target": str(target), "assistant": str(assistant), "threads": tm.n_threads,
               "prompt": prompt, "reps": reps, "machine": platform.processor() or platform.machine()}
        res["draft_ms"] = _median_ms(lambda: am.mtp_step(tm, [ids[-1]], prompt, h, out, h_out), reps)
        # plain decode and verification write positions >= prompt (dropped again by the next call)
        res["decode_ms"] = _median_ms(lambda: tm.forward([ids[-1]], prompt, lg), reps)
        res["verify_ms"], res["break_even"], res["verify_over_decode"] = {}, {}, {}
        for k in ks:
            toks = ids[-1:] + ids[:k]
            res["verify_ms"][k] = _median_ms(lambda: tm.forward(toks, prompt, lg, all_logits=True), reps)
            res["verify_over_decode"][k] = res["verify_ms"][k] / res["decode_ms"]
            res["break_even"][k] = break_even(res["decode_ms"], res["verify_ms"][k], res["draft_ms"], k)
        res["draft_over_decode"] = res["draft_ms"] / res["decode_ms"]
        return res
    finally:
        am.close()
        tm.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=None, help="gemma4 GGUF (default: synthesize E4B Q4_0)")
    ap.add_argument("--assistant", default=None, help="its gemma4-assistant GGUF (default: synthesize)")
    ap.add_argument("--synth-dir", default="/tmp/gemma4stack-mtp", help="where synthetic files go")
    ap.add_argument("--variant", default="e4b", help="synthetic target variant (gemma4stack synth)")
    ap.add_argument("--asst-hidden", type=int, default=1024)
    ap.add_argument("--asst-ff", type=int, default=8192)
    ap.add_argument("--asst-heads", type=int, default=8)
    ap.add_argument("--asst-centroids", type=int, default=2048,
                    help="masked-embedding clusters (must divide the vocabulary; 0: full lm_head)")
    ap.add_argument("--asst-top-k", type=int, default=32, help="clusters scored per draft step")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens prefilled first")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    d = Path(args.synth_dir)
    target = args.target
    if target is None:
        d.mkdir(parents=True, exist_ok=True)
        target = d / f"{args.variant}-q4_0.gguf"
        if not target.exists():
            synth(target, variant=args.variant, type="q4_0", progress=True)
    asst = args.assistant
    if asst is None:
        asst = d / f"{Path(target).stem}-assistant-c{args.asst_centroids}.gguf"
        if not Path(asst).exists():
            d.mkdir(parents=True, exist_ok=True)
            synth_assistant(target, asst, hidden=args.asst_hidden, n_ff=args.asst_ff, n_head=args.asst_heads,
                            n_centroids=args.asst_centroids, top_k=args.asst_top_k)
    res = mtp_cost(target, asst, args.threads, args.prompt, args.reps)
    print(f"target {Path(target).name}, assistant {Path(asst).name}, {res['threads']} threads, "
          f"prompt {args.prompt}")
    print(f"decode step {res['decode_ms']:.2f} ms; MTP draft step {res['draft_ms']:.2f} ms "
          f"({res['draft_over_decode']:.3f} of a decode step)")
    print("| k | verify ms | verify / decode | break-even acceptance |")
    print("|---|---|---|---|")
    for k, v in res["verify_ms"].items():
        be = res["break_even"][k]
        print(f"| {k} | {v:.2f} | {res['verify_over_decode'][k]:.2f} | {'never' if be is None else f'{be:.3f}'} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
