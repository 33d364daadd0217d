"""The `gemma4` architecture in the C core against HF transformers 5.23 (Gemma4 modeling code).

Tiny random checkpoints (tests/gemma4_ref.py CONFIGS), saved with save_pretrained, converted
with `gemma4stack convert`, run by gemma4stack.Model:
  ple_shared     E2B/E4B: per-layer embeddings, 5 KV-shared layers (one of them global),
                 double-wide MLP in the shared layers, 4:1 sliding pattern
  moe            26B-A4B: 8 experts top-2 plus the dense MLP, K=V global layers, per-layer KV heads
  dense_kv_eq_v  31B/12B: K=V global layer with 1 KV head vs 2 on sliding layers
All: proportional RoPE on global layers (4 of 16 frequency pairs rotated), sliding window 8
over 120-token sequences (+32 generated; the sliding layers' ring buffer of window + 63
positions wraps), final softcap 30, random norm weights and layer scalars.

Checks: F32 logits within 1e-3 x max |logit| at every position (measured ~4e-7); greedy
32-token continuations identical to HF's generate (its own KV cache path; on the same toys
with a 10x smaller embedding, where greedy decoding does not just repeat one token); the decode path
(any chunking, ring buffers) gives HF's logits too; Q8_0/Q4_0 within tolerances derived from
the measured effect of quantizing the weights alone (numpy over the same file); KV cache sized
per layer type; load errors that name the missing key or the misshapen tensor.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import gemma4_ref as R  # noqa: E402
from gguf_rewrite import rewrite  # noqa: E402

import gguf  # noqa: E402

from gemma4stack import GGUFError, Model  # noqa: E402
from gemma4stack.convert import convert  # noqa: E402

SEQ = 120           # prompt length: 15x the toy sliding window (8)
N_GEN = 32
BATCH = 64          # GEMMA4_BATCH in csrc/model/gemma4.c (prompt chunk)


def _ids(n: int = SEQ, vocab: int = 512, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [2] + [int(x) for x in rng.integers(9, vocab, size=n - 1)]


def _rms_rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(((a - ref) ** 2).mean() / (ref ** 2).mean()))


def scale_embedding(d: Path, factor: float) -> None:
    """Scale the (tied) token embedding of a saved HF checkpoint. gemma4_ref draws it with std
    0.5, which times sqrt(H) makes the current token dominate the residual stream: with the
    tied output, greedy decoding then repeats one token forever (every toy emitted the same
    token 32 times), and a 32-token comparison would check little. At 0.1 x the greedy
    continuations wander (4-24 distinct tokens of 32)."""
    from safetensors.numpy import load_file, save_file
    st = load_file(d / "model.safetensors")
    key = next(k for k in st if k.endswith("embed_tokens.weight") and "per_layer" not in k)
    st[key] = (st[key] * np.float32(factor)).astype(st[key].dtype)
    save_file(st, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").touch()        # gemma4_ref caches loaded models per config.json mtime


@pytest.fixture(scope="module")
def g4(tmp_path_factory):
    """name -> (hf_dir, {type: gguf path})."""
    root = tmp_path_factory.mktemp("gemma4")
    out = {}
    for name in R.CONFIGS:
        d = R.build_gemma4(root / name, name, seed=1)
        files = {}
        for t in ("f32", "q8_0", "q4_0"):
            files[t] = root / f"{name}-{t}.gguf"
            convert(d, files[t], type=t)
        out[name] = (d, files)
    return out


@pytest.fixture(scope="module")
def g4_wander(tmp_path_factory):
    """name -> (hf_dir, F32 gguf) of the same toys with the embedding scaled by 0.1, so that
    greedy continuations do not repeat one token (scale_embedding). Kept apart from g4: with
    smaller logits, the MoE router meets a near-tie at a position or two, where any float
    difference flips a top-k choice, and the quantized files flip many."""
    root = tmp_path_factory.mktemp("gemma4_wander")
    out = {}
    for name in R.CONFIGS:
        d = R.build_gemma4(root / name, name, seed=1)
        scale_embedding(d, 0.1)
        convert(d, root / f"{name}.gguf", type="f32")
        out[name] = (d, root / f"{name}.gguf")
    return out


def _text_config(d: Path) -> dict:
    cfg = json.loads((d / "config.json").read_text())
    return cfg.get("text_config", cfg)


def _hf_greedy(d: Path, ids: list[int], n: int, eog: list[int]) -> list[int]:
    """HF transformers' generate (greedy, with its KV cache), stopping at our EOG ids."""
    import torch
    model = R._hf_model(str(Path(d).resolve()), (Path(d) / "config.json").stat().st_mtime)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=eog, pad_token_id=0)
    new = [int(x) for x in out[0, len(ids):]]
    for i, t in enumerate(new):
        if t in eog:
            return new[:i]
    return new


def _eog_ids(m: Model) -> list[int]:
    return [i for i in range(m.n_vocab) if m._core.is_eog(i)]


# ---------------------------------------------------------------------------------------------
# F32 against transformers


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_f32_logits_match_hf_at_every_position(g4, name):
    d, files = g4[name]
    ids = _ids()
    ref = R.reference_logits(d, ids)
    with Model(files["f32"], threads=2) as m:
        got = m.logits(ids)
    assert got.shape == ref.shape
    # issue 3: max |diff| <= 1e-3 x max |logit|, here at every position separately
    per_pos = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert per_pos.max() <= 1e-3, f"worst position {per_pos.argmax()}: {per_pos.max():.2e}"
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_greedy_continuation_matches_hf_generate(g4_wander, name):
    d, path = g4_wander[name]
    ids = _ids()
    with Model(path, threads=2) as m:
        eog = _eog_ids(m)
        ours = list(m._core.generate_iter(ids, N_GEN, 0.0, 0, 1.0, 0))
    ref = _hf_greedy(d, ids, N_GEN, eog)
    assert len(ref) == N_GEN          # no end-of-generation token in these continuations
    assert len(set(ref)) >= 4         # not one token repeated (see scale_embedding)
    assert ours == ref


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_decode_path_matches_hf(g4, name):
    """Logits computed incrementally (chunks of 1..70 tokens: single-token decode, prompt
    chunks, a chunk split at BATCH) over 160 positions, with the ring buffers of the sliding
    layers wrapping twice, equal HF's; the context is 200 so global layers keep everything."""
    d, files = g4[name]
    ids = _ids(160, seed=5)
    ref = R.reference_logits(d, ids)
    with Model(files["f32"], threads=2, context=200) as m:
        V = m.n_vocab
        got = np.empty((len(ids), V), np.float32)
        pos, sizes = 0, [1, 3, 70, 1, 1, 17, 5, 50, 1]
        for k in sizes:
            out = np.empty((k, V), np.float32)
            m._core.forward(ids[pos:pos + k], pos, out, True)
            got[pos:pos + k] = out
            pos += k
        while pos < len(ids):
            m._core.forward(ids[pos:pos + 1], pos, got[pos], False)
            pos += 1
        # the last-token-only path (KV-shared layers run for one token) gives the same row
        last = np.empty(V, np.float32)
        m._core.forward(ids, 0, last, False)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    assert np.abs(last - ref[-1]).max() <= 1e-3 * np.abs(ref).max()


def test_single_sequence_cache_rewinds_anywhere(g4):
    """The single-sequence API keeps every position (sliding layers included), so a forward
    may resume at any earlier position and gives HF's logits there; a position past the end
    of what the cache holds is refused."""
    d, files = g4["ple_shared"]
    ids = _ids(150, seed=7)
    ref = R.reference_logits(d, ids)
    with Model(files["f32"], threads=2, context=512) as m:
        V = m.n_vocab
        full = np.empty((len(ids), V), np.float32)
        m._core.forward(ids, 0, full, True)
        for start in (140, 20):                                 # inside and far before the window
            out = np.empty((len(ids) - start, V), np.float32)
            m._core.forward(ids[start:], start, out, True)
            assert np.abs(out - ref[start:]).max() <= 1e-3 * np.abs(ref).max()
        with pytest.raises(ValueError, match="past the"):
            m._core.forward(ids[:2], 151, np.empty(V, np.float32), False)


# ---------------------------------------------------------------------------------------------
# Quantized files


@pytest.fixture(scope="module")
def quant_errors(g4):
    """Relative rms errors (vs HF logits) over the 120-token sequence, per config and type:
    numpy_forward on the quantized file (weights quantized, float activations) and the C core
    on the same file (which, as llama.cpp, also quantizes activations to Q8_0 for the integer
    dot products)."""
    ids = _ids()
    out = {}
    for name, (d, files) in g4.items():
        ref = R.reference_logits(d, ids)
        for t in ("q8_0", "q4_0"):
            npq = R.numpy_forward(files[t], ids)
            with Model(files[t], threads=2) as m:
                c = m.logits(ids)
            out[name, t] = dict(weights=_rms_rel(npq, ref), core_vs_numpy=_rms_rel(c, npq),
                                core=_rms_rel(c, ref), argmax=float((c.argmax(1) == npq.argmax(1)).mean()))
    return out


@pytest.mark.parametrize("name", list(R.CONFIGS))
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_quantized_logits_within_derived_tolerance(quant_errors, name, qtype):
    """Tolerances, derived rather than picked:
    - e_w(T) = rms error of the logits from quantizing the weights alone (numpy_forward over
      the T file vs HF; measured Q8_0 0.010-0.057, Q4_0 0.16-0.30 on these random toys).
    - The core also rounds activations to Q8_0 blocks: the same 8-bit block rounding as Q8_0
      weights, so its own error vs numpy on the same file is bounded by 1.5 x e_w(Q8_0)
      (measured 0.9-1.1 x for dense models; MoE 0.6-1.2 x, a router top-k flip or two).
    - Independent errors add in quadrature: core vs HF <= 1.25 x sqrt(e_w(T)^2 + e_a^2)."""
    e = quant_errors[name, qtype]
    e_a = 1.5 * quant_errors[name, "q8_0"]["weights"]
    assert e["core_vs_numpy"] <= e_a, e
    assert e["core"] <= 1.25 * math.sqrt(e["weights"] ** 2 + e_a ** 2), e
    assert e["argmax"] >= 0.95, e


# ---------------------------------------------------------------------------------------------
# KV cache and memory


def test_kv_cache_is_shaped_per_layer_type(g4):
    """Bytes of KV per sequence: full context on global layers, about the window on sliding
    layers (independent of the context: ceil((window + 128 batch tokens - 1) / 32) + 1 blocks
    of 32 positions), nothing on the KV-shared layers. Shapes from the HF config, not from
    our reader."""
    d, files = g4["ple_shared"]
    c = _text_config(d)
    L, shared = c["num_hidden_layers"], c["num_kv_shared_layers"]
    own = range(L - shared)
    types = c["layer_types"]
    kv_heads, hd, hd_g, W = c["num_key_value_heads"], c["head_dim"], c["global_head_dim"], c["sliding_window"]
    glob = sum(2 * kv_heads * hd_g * 4 for i in own if types[i] == "full_attention")
    slid = sum(2 * kv_heads * hd * 4 for i in own if types[i] == "sliding_attention")
    sizes = {}
    for ctx in (256, 2048):
        with Model(files["f32"], threads=1, context=ctx) as m:
            mem = m.memory()
            sizes[ctx] = {"kv_bytes": mem["kv_bytes_per_sequence"]}
            # the pool of parallel=1 also keeps one window of sliding blocks for prefix reuse
            assert mem["kv_bytes"] >= mem["kv_bytes_per_sequence"]
    grow = sizes[2048]["kv_bytes"] - sizes[256]["kv_bytes"]
    assert grow == (2048 - 256) * glob                      # only global layers grow
    ring = (sizes[256]["kv_bytes"] - 256 * glob) / slid     # positions per sliding layer
    assert ring == (-(-(W + 128 - 1) // 32) + 1) * 32
    full = 2048 * sum(2 * kv_heads * (hd if types[i] == "sliding_attention" else hd_g) * 4
                      for i in range(L))
    assert sizes[2048]["kv_bytes"] < full / 2               # vs a whole-context cache per layer


def test_memory_weights_are_the_files_tensor_bytes(g4):
    for name, (d, files) in g4.items():
        for t in ("f32", "q4_0"):
            r = gguf.GGUFReader(str(files[t]))
            with Model(files[t], threads=1) as m:
                mem = m.memory()
            assert mem["weights_bytes"] == sum(int(x.n_bytes) for x in r.tensors)
            assert mem["scratch_bytes"] > 0


# ---------------------------------------------------------------------------------------------
# Tensor layouts and bad input


def test_separate_gate_and_up_expert_stacks_give_the_same_logits(g4, tmp_path):
    """Older files store ffn_gate_exps + ffn_up_exps instead of ffn_gate_up_exps (llama.cpp
    accepts both): split the fused stack (rows 0..I-1 gate, I..2I-1 up) and compare."""
    d, files = g4["moe"]

    def split(name, a):
        if not name.endswith("ffn_gate_up_exps.weight"):
            return a
        I = a.shape[1] // 2
        base = name.replace("ffn_gate_up_exps", "{}")
        return [(base.format("ffn_gate_exps"), a[:, :I]), (base.format("ffn_up_exps"), a[:, I:])]

    p = rewrite(files["f32"], tmp_path / "split.gguf", tensors=split)
    assert "blk.0.ffn_gate_exps.weight" in {t.name for t in gguf.GGUFReader(str(p)).tensors}
    ids = _ids(40)
    with Model(files["f32"], threads=1) as a, Model(p, threads=1) as b:
        assert np.array_equal(a.logits(ids), b.logits(ids))


@pytest.mark.parametrize("key", ["gemma4.attention.sliding_window_pattern",
                                 "gemma4.attention.key_length_swa",
                                 "gemma4.embedding_length_per_layer_input",
                                 "gemma4.attention.layer_norm_rms_epsilon"])
def test_missing_key_is_named(g4, tmp_path, key):
    d, files = g4["ple_shared"]
    p = rewrite(files["f32"], tmp_path / "bad.gguf", drop_keys={key})
    with pytest.raises(GGUFError, match=key.replace(".", r"\.")):
        Model(p, threads=1)


@pytest.mark.parametrize("config,tensor", [
    ("ple_shared", "blk.1.attn_k.weight"),          # KV heads x head dim
    ("ple_shared", "per_layer_model_proj.weight"),  # PLE
    ("ple_shared", "blk.7.ffn_gate.weight"),        # double-wide MLP of a shared layer
    ("moe", "blk.2.ffn_down_exps.weight"),          # 3-D expert stack
    ("dense_kv_eq_v", "blk.5.attn_q_norm.weight"),  # global head dim
])
def test_tensor_of_wrong_shape_is_named(g4, tmp_path, config, tensor):
    d, files = g4[config]

    def shrink(name, a):   # drop the last row (outer dim): a plausible but wrong shape
        return a[:-1] if name == tensor else a

    p = rewrite(files["f32"], tmp_path / "bad.gguf", tensors=shrink)
    with pytest.raises(GGUFError, match=rf"'{tensor}' has shape"):
        Model(p, threads=1)


def test_missing_tensor_is_named(g4, tmp_path):
    d, files = g4["moe"]
    p = rewrite(files["f32"], tmp_path / "bad.gguf",
                tensors=lambda n, a: None if n in ("blk.3.attn_k.weight",) else a)
    with pytest.raises(GGUFError, match=r"'blk\.3\.attn_k\.weight' is missing"):
        Model(p, threads=1)
    p = rewrite(files["f32"], tmp_path / "bad2.gguf",
                tensors=lambda n, a: None if n == "blk.1.ffn_gate_up_exps.weight" else a)
    with pytest.raises(GGUFError, match=r"blk\.1\.ffn_gate_up_exps\.weight"):
        Model(p, threads=1)


def test_batched_decode_matches_decoding_alone(g4_wander, g4):
    """Eight prompts decoded together give the tokens each gives alone, for every toy
    configuration (per-layer embeddings, KV-shared layers, mixture of experts: the batch's
    tokens grouped by expert) and a Q4_0 file (the quantized kernels' token tiles)."""
    from batch_check import check_batch_matches_alone, random_prompts
    cases = [(name, path) for name, (d, path) in g4_wander.items()]
    cases.append(("ple_shared q4_0", g4["ple_shared"][1]["q4_0"]))
    for name, path in cases:
        ties = check_batch_matches_alone(path, random_prompts(512, seed=11), max_tokens=20, threads=2)
        print(name, ties)
