"""`gemma4stack synth` against the Gemma 4 catalog of issue 2 and llama.cpp's rules.

References: the catalog table of issue 2 (typed in CATALOG below, not imported from our code),
its parameter totals, published GGUF sizes (data/gemma4_catalog.toml sources), llama.cpp's
gemma4 loader shapes and llama-quant.cpp's Q4_K_M rules, gguf-py's reader and dequantizers.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as T

from gemma4stack.gguf import read_gguf
from gemma4stack.synth import plan, random_blocks, synth

sys.path.insert(0, str(Path(__file__).parent))

# issue 2, "Gemma 4 catalog numbers": layers, hidden, local:global, window, q heads,
# KV heads local/global, KV-shared layers, FFN (shared-layer FFN), PLE width, experts,
# total params (with embeddings; E2B/E4B include the vision+audio encoders).
CATALOG = {
    "e2b": dict(L=35, H=1536, period=5, W=512, nh=8, kv=1, kv_g=1, shared=20, ff=6144,
                ff_shared=12288, P=256, E=0, params=5.1e9),
    "e4b": dict(L=42, H=2560, period=6, W=512, nh=8, kv=2, kv_g=2, shared=18, ff=10240,
                ff_shared=10240, P=256, E=0, params=8.0e9),
    "26b-a4b": dict(L=30, H=2816, period=6, W=1024, nh=16, kv=8, kv_g=2, shared=0, ff=2112,
                    ff_shared=2112, P=0, E=128, used=8, ff_exp=704, params=25.2e9),
    "31b": dict(L=60, H=5376, period=6, W=1024, nh=32, kv=16, kv_g=4, shared=0, ff=21504,
                ff_shared=21504, P=0, E=0, params=30.7e9),
    "12b": dict(L=48, H=3840, period=6, W=1024, nh=16, kv=8, kv_g=1, shared=0, ff=15360,
                ff_shared=15360, P=0, E=0, params=11.9e9),
}
ENCODER_PARAMS = {"e2b": 472_189_216}    # HF Gemma4Audio+VisionConfig defaults (meta device)
V = 262144


def _shape(spec_list, name):
    return next(tuple(s.shape) for s, _ in spec_list if s.name == name)


@pytest.mark.parametrize("v", list(CATALOG))
def test_full_size_tensor_list_matches_catalog(v):
    c = CATALOG[v]
    p = plan(v, type="bf16")
    ts = p.tensors
    H, L = c["H"], c["L"]
    assert _shape(ts, "token_embd.weight") == (H, V)
    assert not any(s.name == "output.weight" for s, _ in ts)           # tied
    first_shared = L - c["shared"]
    for il in range(L):
        glob = (il + 1) % c["period"] == 0 or il == L - 1
        hd, kv = (512, c["kv_g"]) if glob else (256, c["kv"])
        assert _shape(ts, f"blk.{il}.attn_q.weight") == (H, c["nh"] * hd)
        assert _shape(ts, f"blk.{il}.attn_output.weight") == (c["nh"] * hd, H)
        names = {s.name for s, _ in ts if s.name.startswith(f"blk.{il}.")}
        if il < first_shared:
            assert _shape(ts, f"blk.{il}.attn_k.weight") == (H, kv * hd)
            # 26B/31B/12B global layers take V from the K projection
            assert (f"blk.{il}.attn_v.weight" in names) == (not glob or v in ("e2b", "e4b"))
        else:
            assert f"blk.{il}.attn_k.weight" not in names
            assert f"blk.{il}.attn_v.weight" not in names
        ff = c["ff"] if il < first_shared else c["ff_shared"]
        assert _shape(ts, f"blk.{il}.ffn_gate.weight") == (H, ff)
        assert _shape(ts, f"blk.{il}.ffn_down.weight") == (ff, H)
        if c["E"]:
            assert _shape(ts, f"blk.{il}.ffn_gate_up_exps.weight") == (H, 2 * c["ff_exp"], c["E"])
            assert _shape(ts, f"blk.{il}.ffn_down_exps.weight") == (c["ff_exp"], H, c["E"])
            assert _shape(ts, f"blk.{il}.ffn_gate_inp.weight") == (H, c["E"])
        if c["P"]:
            assert _shape(ts, f"blk.{il}.inp_gate.weight") == (H, c["P"])
    if c["P"]:
        assert _shape(ts, "per_layer_token_embd.weight") == (L * c["P"], V)
    n = sum(s.n_elements for s, _ in ts) + ENCODER_PARAMS.get(v, 0)
    if v != "e4b":      # the table's 8B for E4B includes encoders we have no count for
        assert abs(n - c["params"]) / c["params"] < 0.01, n


def test_e2b_sizes_match_published_files():
    """E2B effective params 2.3B (issue 2: total minus the PLE table); Q8_0 file 4,967,494,592
    bytes (ggml-org/gemma-4-E2B-it-GGUF) and Q4_K_M ~3.4 GB (issue 2) within 1% / 3%."""
    p = plan("e2b", type="bf16")
    n = sum(s.n_elements for s, _ in p.tensors if s.name != "per_layer_token_embd.weight")
    assert abs(n - 2.3e9) / 2.3e9 < 0.02
    assert abs(plan("e2b", type="q8_0").tensor_bytes - 4_967_494_592) / 4.967e9 < 0.01
    assert abs(plan("e2b", type="q4_k_m").tensor_bytes - 3.4e9) / 3.4e9 < 0.03


@pytest.mark.parametrize("v", list(CATALOG))
def test_full_size_metadata_matches_catalog(v, tmp_path):
    c = CATALOG[v]
    path = tmp_path / f"{v}.gguf"
    synth(path, variant=v, metadata_only=True)
    # our C reader (checked against gguf-py elsewhere): gguf-py's takes ~40 s on 262k tokens
    f = read_gguf(str(path)).metadata
    g = lambda k: f[f"gemma4.{k}"]
    L = c["L"]
    assert f["general.architecture"] == "gemma4"
    assert g("block_count") == L and g("embedding_length") == c["H"]
    assert g("attention.head_count") == c["nh"]
    swa = [not ((il + 1) % c["period"] == 0 or il == L - 1) for il in range(L)]
    assert g("attention.sliding_window_pattern") == swa
    assert g("attention.sliding_window") == c["W"]
    kv = g("attention.head_count_kv")
    kv = kv if isinstance(kv, list) else [kv] * L
    assert kv == [c["kv"] if s else c["kv_g"] for s in swa]
    ff = g("feed_forward_length")
    ff = ff if isinstance(ff, list) else [ff] * L
    assert ff == [c["ff"] if il < L - c["shared"] else c["ff_shared"] for il in range(L)]
    assert g("attention.shared_kv_layers") == c["shared"]
    assert g("embedding_length_per_layer_input") == c["P"]
    assert g("attention.key_length") == 512 and g("attention.key_length_swa") == 256
    assert g("rope.freq_base") == 1e6 and g("rope.freq_base_swa") == 1e4
    assert g("rope.dimension_count") == 512 and g("rope.dimension_count_swa") == 256
    assert g("final_logit_softcapping") == 30.0
    if c["E"]:
        assert g("expert_count") == c["E"] and g("expert_used_count") == c["used"]
        assert g("expert_feed_forward_length") == c["ff_exp"]
    assert f["tokenizer.ggml.model"] == "gemma4"
    toks = f["tokenizer.ggml.tokens"]
    assert len(toks) == V and len(set(toks)) == V
    assert toks[2] == "<bos>" and toks[1] == "<eos>" and toks[106] == "<turn|>"
    assert toks[238] == "<0x00>" and toks[493] == "<0xFF>"
    merges = f["tokenizer.ggml.merges"]
    vocab = set(toks)
    assert all(m.replace(" ", "", 1) in vocab and all(x in vocab for x in m.split(" ", 1))
               for m in merges[:2000] + merges[-2000:])


def test_q4_k_m_mix_follows_llama_quant():
    """llama-quant.cpp: tied token_embd and per_layer_token_embd -> Q6_K; attn_v / ffn_down
    Q6_K in use_more_bits layers; rows not a multiple of 256 fall back (Q4_K -> Q5_0,
    Q6_K -> Q8_0); router F32; per_layer_model_proj never quantized."""
    def more(i, n):
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2
    types = {s.name: t for s, t in plan("e2b", type="q4_k_m").tensors}
    assert types["token_embd.weight"] == T.Q6_K and types["per_layer_token_embd.weight"] == T.Q6_K
    assert types["per_layer_model_proj.weight"] == T.BF16
    assert types["blk.0.attn_norm.weight"] == T.F32
    for il in range(35):
        assert types[f"blk.{il}.ffn_down.weight"] == (T.Q6_K if more(il, 35) else T.Q4_K)
        assert types[f"blk.{il}.ffn_gate.weight"] == T.Q4_K
    v_layers = [il for il in range(15)]          # 15 layers own attn_v; counted in file order
    for i, il in enumerate(v_layers):
        assert types[f"blk.{il}.attn_v.weight"] == (T.Q6_K if more(i, 15) else T.Q4_K)
    moe = {s.name: t for s, t in plan("26b-a4b", type="q4_k_m").tensors}
    assert moe["blk.0.ffn_gate_inp.weight"] == T.F32
    assert moe["blk.0.ffn_gate_up_exps.weight"] == T.Q4_K
    assert moe["blk.0.ffn_down_exps.weight"] == T.Q8_0      # Q6_K (layer 0) -> Q8_0: 704 % 256
    assert moe["blk.4.ffn_down_exps.weight"] == T.Q5_0      # Q4_K -> Q5_0
    assert moe["blk.4.ffn_down.weight"] == T.Q5_0           # 2112 % 256 != 0
    assert moe["blk.5.ffn_down.weight"] == T.Q8_0           # use_more_bits(5, 30)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q8_0, T.Q5_0, T.Q4_K, T.Q6_K, T.Q2_K, T.Q3_K, T.Q5_K,
                                   T.IQ4_NL, T.IQ4_XS, T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS,
                                   T.IQ2_S, T.IQ1_S, T.IQ1_M])
def test_random_blocks_dequantize_to_requested_std(qtype):
    rng = np.random.Generator(np.random.SFC64(7))
    b = random_blocks(rng, 4096, qtype, 0.03)
    x = gguf.quants.dequantize(b, qtype)
    assert np.isfinite(x).all()
    assert abs(x.std() / 0.03 - 1) < 0.03
    assert abs(x.mean()) < 0.002


@pytest.fixture(scope="module")
def fast_dir(tmp_path_factory):
    """/dev/shm when there is room (writes at GB/s; files here are up to ~1 GB), else tmp."""
    import shutil
    import tempfile
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30:
        d = Path(tempfile.mkdtemp(prefix="g4synth-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def small_files(fast_dir):
    d = fast_dir
    out = {}
    for v in CATALOG:
        out[v] = d / f"{v}.gguf"
        synth(out[v], variant=v, type="q4_0", layers=2, n_vocab=4096, seed=1)
    return out


@pytest.mark.parametrize("v", list(CATALOG))
def test_layers2_file_loads_and_matches_plan(small_files, v):
    path = small_files[v]
    p = plan(v, type="q4_0", layers=2, n_vocab=4096)
    r = gguf.GGUFReader(str(path))
    got = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type) for t in r.tensors}
    assert got == {s.name: (s.shape, t) for s, t in p.tensors}
    ours = read_gguf(str(path))          # our C reader accepts the file
    assert ours.architecture == "gemma4"
    assert sum(t.nbytes for t in ours.tensors) == p.tensor_bytes
    for t in r.tensors:                  # every weight dequantizes to finite values
        blk, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)[:64 * size]
        x = gguf.quants.dequantize(raw.reshape(-1, size), t.tensor_type)
        assert np.isfinite(x).all(), t.name


E2B6_IDS = [2, 105, 600, 700, 800, 107]


@pytest.fixture(scope="module")
def e2b6(fast_dir):
    """E2B structure cut to 6 layers (the last one KV-shared and double-wide) at Q4_K_M, and
    its numpy_forward logits."""
    import gemma4_ref as R
    path = fast_dir / "e2b6.gguf"
    synth(path, variant="e2b", type="q4_k_m", layers=6, n_vocab=2048)
    return path, R.numpy_forward(path, E2B6_IDS)


def test_activations_stay_finite_through_shared_layers(e2b6):
    """Synth's scales keep activations finite: logits of std ~1 (the full 35-layer E2B at
    Q4_0 and Q4_K_M gave std 1.00 too, measured once; too slow for every run)."""
    path, logits = e2b6
    f = read_gguf(str(path)).metadata
    assert f["gemma4.attention.shared_kv_layers"] == 1
    assert f["gemma4.feed_forward_length"][-1] == 12288
    assert np.isfinite(logits).all()
    assert 0.3 < logits.std() < 3.0


@pytest.mark.parametrize("v,layers", [("e2b", 6), ("26b-a4b", 2)])
def test_llamacpp_runs_synth_files(fast_dir, e2b6, v, layers):
    """Interop: llama.cpp loads synth's Q4_K_M files (Q4_K, Q6_K, Q5_0/Q8_0 fallbacks, experts,
    KV-shared layers) and its logits are finite; for E2B they agree with the numpy forward pass
    (rms rel < 0.1; measured 0.031 for E2B and 0.016 for 2 layers of 26B-A4B, from llama.cpp's
    Q8_0 activations; the MoE numpy pass is skipped here because it takes a minute)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if v == "e2b":
        path, ref = e2b6
    else:
        path, ref = fast_dir / f"{v}-lc.gguf", None
        synth(path, variant=v, type="q4_k_m", layers=layers, n_vocab=4096)
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    except ValueError as e:
        # llama-cpp-python >= 0.3.36 (the `peers` pin, make peerdeps) knows gemma4: then a
        # file it cannot load is our converter's fault; older builds do not
        if [int(x) for x in re.findall(r"\d+", llama_cpp.__version__)[:3]] >= [0, 3, 36]:
            raise
        pytest.skip(f"llama.cpp {llama_cpp.__version__} cannot load gemma4: {e}")
    ids = E2B6_IDS
    llm.eval(ids)
    lc = np.array(llm.scores[:len(ids)], dtype=np.float32)
    assert np.isfinite(lc).all() and lc.std() > 0.1
    if ref is not None:
        assert np.sqrt(((lc - ref) ** 2).mean() / (ref ** 2).mean()) < 0.1
    del llm


def test_tinyllama_shape_and_forward(tmp_path):
    meta = tmp_path / "tl-meta.gguf"
    synth(meta, arch="llama", metadata_only=True)
    f = read_gguf(str(meta)).metadata
    assert f["llama.embedding_length"] == 2048 and f["llama.attention.head_count"] == 32
    assert f["llama.attention.head_count_kv"] == 4 and f["llama.feed_forward_length"] == 5632
    assert len(f["tokenizer.ggml.tokens"]) == 32000 and f["tokenizer.ggml.model"] == "llama"
    full = plan("tinyllama", arch="llama", type="bf16")
    assert full.shape.n_layer == 22
    n = sum(s.n_elements for s, _ in full.tensors)
    assert abs(n - 1.100e9) / 1.1e9 < 0.01          # TinyLlama-1.1B: 1,100,048,384 params
    import gemma4_ref as R
    path = tmp_path / "tl.gguf"
    r = synth(path, arch="llama", type="q8_0", layers=2, n_vocab=2048)
    assert r.n_layer == 2
    logits = R.numpy_forward(path, [1, 300, 400, 500])
    assert np.isfinite(logits).all() and 0.3 < logits.std() < 3.0


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (tmp_path / f"{x}.gguf" for x in "abc")
    synth(a, arch="llama", type="q4_0", layers=1, seed=5, n_vocab=512)
    synth(b, arch="llama", type="q4_0", layers=1, seed=5, n_vocab=512)
    synth(c, arch="llama", type="q4_0", layers=1, seed=6, n_vocab=512)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_cli_synth(tmp_path):
    out = tmp_path / "tl.gguf"
    r = subprocess.run([sys.executable, "-m", "gemma4stack", "synth", str(out), "--arch",
                        "llama", "--layers", "1", "--type", "q8_0", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stderr and out.stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "gemma4stack", "synth", str(out), "--variant",
                          "70b"], capture_output=True, text=True)
    assert bad.returncode != 0
    one = subprocess.run([sys.executable, "-m", "gemma4stack", "synth", str(out), "--layers",
                          "1"], capture_output=True, text=True)
    assert one.returncode == 1 and "at least 2" in one.stderr


def _core_model(path: Path):
    """gemma4stack.Model for path: the C core runs every architecture these files use."""
    from gemma4stack.model import Model
    return Model(str(path), threads=2)


@pytest.mark.parametrize("v", list(CATALOG))
def test_core_runs_synth_files(small_files, v):
    m = _core_model(small_files[v])
    logits = np.asarray(m.logits([2, 105, 600, 700]))
    assert np.isfinite(logits).all()
    mem = m.memory()
    weights = mem["weights_bytes"] if isinstance(mem, dict) else mem.weights_bytes
    assert weights == plan(v, type="q4_0", layers=2, n_vocab=4096).tensor_bytes


@pytest.mark.slow
def test_core_full_size_e2b_q4_0(small_files, fast_dir):
    """The issue's "done when": full-size E2B Q4_0 (2.6 GB) is written and runs;
    Model.memory()'s weights equal the file's tensor bytes."""
    _core_model(small_files["e2b"])     # skip before writing GBs if the core cannot run it
    path = fast_dir / "e2b-full.gguf"
    r = synth(path, variant="e2b", type="q4_0")
    m = _core_model(path)
    mem = m.memory()
    weights = mem["weights_bytes"] if isinstance(mem, dict) else mem.weights_bytes
    assert weights == r.tensor_bytes
    assert np.isfinite(np.asarray(m.logits([2, 105, 1000]))).all()
