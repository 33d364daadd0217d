"""`gemma4stack convert` against independent references.

- Llama: the shared TinyStories-656K checkpoint converted to Q8_0 is bit-identical, tensor by
  tensor, to the Q8_0 GGUF that llama.cpp's own converter made (../shared/models/SOURCES.md),
  and its metadata/tokenizer arrays agree; the F32 file run by a numpy forward pass gives HF
  transformers' logits.
- Gemma 4 / Gemma 3: tiny random HF checkpoints (tests/gemma4_ref.py) that exercise PLE + KV
  sharing + double-wide MLP, MoE, K=V global layers, proportional RoPE and a context longer
  than the sliding window. The GGUF's keys, per-layer arrays, tensor list and shapes are
  checked against llama.cpp's loader rules; tensor values round-trip (exact in F32, within the
  block quantization error in Q8_0/Q4_0); and logits computed from the GGUF alone
  (gemma4_ref.numpy_forward) equal HF transformers' to 1e-4 of max |logit|.
- The C core (gemma4stack.Model), once it supports an architecture, must give HF's logits
  (max |diff| <= 1e-3 x max |logit| in F32) and the same 32-token greedy continuation;
  those tests skip until then.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf

sys.path.insert(0, str(Path(__file__).parent))
import gemma4_ref as R  # noqa: E402

from gemma4stack.convert import SafetensorsDir, convert, hf_vocab  # noqa: E402
from gemma4stack.gguf_arch import Gemma4Shape, gemma4_tensor_specs  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")

SEQ = 120            # > 100 tokens and 15x the toy sliding window (8)


def _ids(n: int = SEQ, vocab: int = 512, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [2] + [int(x) for x in rng.integers(9, vocab, size=n - 1)]


def _fields(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def _deq(t: gguf.ReaderTensor) -> np.ndarray:
    a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return a.reshape([int(x) for x in reversed(t.shape)])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------------------------
# Llama: TinyStories-656K


@pytest.fixture(scope="module")
def tinystories(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("ts")
    out = {t: d / f"ts-{t}.gguf" for t in ("f32", "q8_0")}
    for t, p in out.items():
        convert(models / "tinystories-656k-hf", p, type=t)
    return out


def test_llama_q8_0_is_bit_identical_to_llamacpp_conversion(tinystories, models):
    ours = _tensors(tinystories["q8_0"])
    ref = _tensors(models / "TinyStories-656K-Q8_0.gguf")
    assert sorted(ours) == sorted(ref)
    for name, t in ref.items():
        assert ours[name].tensor_type == t.tensor_type, name
        assert list(ours[name].shape) == list(t.shape), name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(t.data)), name


def test_llama_metadata_and_vocab_match_llamacpp_conversion(tinystories, models):
    ours = _fields(tinystories["q8_0"])
    ref = _fields(models / "TinyStories-656K-Q8_0.gguf")
    for k, v in ref.items():
        if k.startswith("general.") and k not in ("general.architecture", "general.file_type",
                                                  "general.quantization_version"):
            continue            # name/license/dataset come from a model card we do not have
        assert ours.get(k) == v, k


def test_llama_f32_gguf_gives_hf_logits(tinystories, models):
    ids = _ids(64, 2048)
    ref = R.reference_logits(models / "tinystories-656k-hf", ids)
    ours = R.numpy_forward(tinystories["f32"], ids)
    assert _rel(ours, ref) < 1e-4


def test_llama_q_k_rows_are_permuted_for_adjacent_pair_rope(tinystories, models):
    st = SafetensorsDir(models / "tinystories-656k-hf")
    t = _tensors(tinystories["f32"])
    q_hf = st.get("model.layers.0.self_attn.q_proj.weight")
    q_gg = _deq(t["blk.0.attn_q.weight"])
    hd = 16
    # row 2i of head 0 in GGUF is HF row i; row 2i+1 is HF row i + hd/2
    assert np.array_equal(q_gg[0::2][:hd // 2], q_hf[:hd // 2])
    assert np.array_equal(q_gg[1::2][:hd // 2], q_hf[hd // 2:hd])
    assert np.array_equal(_deq(t["blk.0.attn_v.weight"]),
                          st.get("model.layers.0.self_attn.v_proj.weight"))


def _core_model(path: Path):
    """gemma4stack.Model for path: the C core runs every architecture these files use."""
    from gemma4stack.model import Model
    return Model(str(path), threads=2)


def test_core_llama_logits_match_hf(tinystories, models):
    m = _core_model(tinystories["f32"])
    ids = _ids(64, 2048)
    ref = R.reference_logits(models / "tinystories-656k-hf", ids)
    got = np.asarray(m.logits(ids), dtype=np.float32)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------
# Gemma 4


@pytest.fixture(scope="module")
def g4(tmp_path_factory):
    """name -> (hf_dir, {type: gguf path}) for every toy config, F32 and Q8_0/Q4_0."""
    root = tmp_path_factory.mktemp("g4")
    out = {}
    for name in R.CONFIGS:
        d = R.build_gemma4(root / name, name, seed=1)
        files = {}
        for t in ("f32", "q8_0", "q4_0"):
            files[t] = root / f"{name}-{t}.gguf"
            convert(d, files[t], type=t)
        out[name] = (d, files)
    return out


def _shape_of(hf_dir: Path) -> Gemma4Shape:
    """llama.cpp's expectations built from the HF config (independently of the converter)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    c = cfg.get("text_config", cfg)
    lt = c["layer_types"]
    period = next(i + 1 for i, t in enumerate(lt) if t == "full_attention")
    assert all((t == "full_attention") == ((i + 1) % period == 0 or i == len(lt) - 1)
               for i, t in enumerate(lt))
    return Gemma4Shape(
        name="toy", n_layer=c["num_hidden_layers"], n_embd=c["hidden_size"],
        n_head=c["num_attention_heads"], n_head_kv=c["num_key_value_heads"],
        n_head_kv_global=(c.get("num_global_key_value_heads") or c["num_key_value_heads"])
        if c.get("attention_k_eq_v") else c["num_key_value_heads"],
        head_dim=c["head_dim"], head_dim_global=c["global_head_dim"], swa_period=period,
        sliding_window=c["sliding_window"], n_kv_shared=c.get("num_kv_shared_layers", 0),
        n_ff=c["intermediate_size"],
        n_ff_shared=2 * c["intermediate_size"] if c.get("use_double_wide_mlp") else 0,
        n_embd_per_layer=c.get("hidden_size_per_layer_input") or 0,
        k_eq_v_global=bool(c.get("attention_k_eq_v")), n_expert=c.get("num_experts") or 0,
        n_expert_used=c.get("top_k_experts") or 0, n_ff_exp=c.get("moe_intermediate_size") or 0,
        n_vocab=c["vocab_size"])


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_gemma4_tensor_list_and_shapes_match_llamacpp_loader(g4, name):
    d, files = g4[name]
    s = _shape_of(d)
    want = {t.name: t.shape for t in gemma4_tensor_specs(s)}
    got = {n: tuple(int(x) for x in t.shape) for n, t in _tensors(files["f32"]).items()}
    assert got == want


def test_gemma4_ple_shared_layers(g4):
    d, files = g4["ple_shared"]
    f, t = _fields(files["f32"]), _tensors(files["f32"])
    assert f["general.architecture"] == "gemma4"
    assert f["gemma4.attention.sliding_window_pattern"] == [True] * 4 + [False] + [True] * 4 + [False]
    assert f["gemma4.attention.shared_kv_layers"] == 5
    assert f["gemma4.feed_forward_length"] == [96] * 5 + [192] * 5     # double-wide MLP
    assert f["gemma4.attention.head_count_kv"] == 2                    # scalar: no global override
    assert f["gemma4.embedding_length_per_layer_input"] == 16
    assert f["gemma4.attention.key_length"] == 32 and f["gemma4.attention.key_length_swa"] == 16
    assert f["gemma4.rope.dimension_count"] == 32 and f["gemma4.rope.dimension_count_swa"] == 16
    assert f["gemma4.rope.freq_base"] == 1e6 and f["gemma4.rope.freq_base_swa"] == 1e4
    assert f["gemma4.attention.sliding_window"] == 8
    assert f["gemma4.final_logit_softcapping"] == 30.0
    assert "blk.4.attn_k.weight" in t and "blk.5.attn_k.weight" not in t
    assert "blk.5.attn_v.weight" not in t and "blk.5.attn_k_norm.weight" not in t
    assert [int(x) for x in t["blk.9.ffn_gate.weight"].shape] == [64, 192]
    assert [int(x) for x in t["per_layer_token_embd.weight"].shape] == [10 * 16, 512]
    # proportional RoPE: 32/2 = 16 pairs, 0.25 * 32 / 2 = 4 rotated
    want = np.array([1.0] * 4 + [1e30] * 12, np.float32)
    assert _deq(t["rope_freqs.weight"]).tolist() == want.tolist()


def test_gemma4_moe_and_k_eq_v(g4):
    d, files = g4["moe"]
    f, t = _fields(files["f32"]), _tensors(files["f32"])
    assert f["gemma4.attention.head_count_kv"] == [2, 2, 1, 2, 2, 1]
    assert f["gemma4.expert_count"] == 8 and f["gemma4.expert_used_count"] == 2
    assert f["gemma4.expert_feed_forward_length"] == 32
    assert f["gemma4.embedding_length_per_layer_input"] == 0
    assert "blk.2.attn_v.weight" not in t and "blk.1.attn_v.weight" in t   # K=V global layer
    assert [int(x) for x in t["blk.0.ffn_gate_up_exps.weight"].shape] == [64, 64, 8]
    assert [int(x) for x in t["blk.0.ffn_down_exps.weight"].shape] == [32, 64, 8]
    assert [int(x) for x in t["blk.0.ffn_down_exps.scale"].shape] == [8]
    assert [int(x) for x in t["blk.0.ffn_gate_inp.scale"].shape] == [64]
    for q in ("q8_0", "q4_0"):      # the router stays F32 (convert_hf_to_gguf, llama-quantize)
        tq = _tensors(files[q])
        assert tq["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_gemma4_tokenizer_metadata(g4):
    d, files = g4["ple_shared"]
    f = _fields(files["f32"])
    assert f["tokenizer.ggml.model"] == "gemma4"
    assert f["tokenizer.ggml.add_bos_token"] is True
    assert f["tokenizer.ggml.add_space_prefix"] is False
    assert f["tokenizer.ggml.bos_token_id"] == 2 and f["tokenizer.ggml.eos_token_id"] == 1
    assert f["tokenizer.ggml.padding_token_id"] == 0
    tj = json.loads((d / "tokenizer.json").read_text())
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    assert f["tokenizer.ggml.merges"] == merges
    assert f["tokenizer.chat_template"] == R.CHAT_TEMPLATE
    toks, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(toks) == 512
    assert toks[:3] == ["<pad>", "<eos>", "<bos>"] and types[2] == gguf.TokenType.CONTROL
    assert types[toks.index("<0x41>")] == gguf.TokenType.BYTE
    # Gemma4Model.set_vocab: channel markers are USER_DEFINED so they get rendered
    assert types[toks.index("<|channel>")] == gguf.TokenType.USER_DEFINED


@pytest.mark.parametrize("tok_dir", ["gemma4", "tinystories"])
def test_hf_vocab_equals_gguf_py_llamahfvocab(g4, models, tok_dir):
    """Our transformers-free vocab reader vs gguf-py's LlamaHfVocab (which llama.cpp's
    converter uses, through transformers' AutoTokenizer)."""
    d = g4["ple_shared"][0] if tok_dir == "gemma4" else models / "tinystories-656k-hf"
    ref = list(gguf.LlamaHfVocab(Path(d)).all_tokens())
    ours = hf_vocab(d)
    assert [t.decode() for t, _, _ in ref] == ours.tokens
    assert [float(s) for _, s, _ in ref] == ours.scores
    assert [int(ty) for _, _, ty in ref] == ours.types


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_gemma4_tensors_round_trip(g4, name):
    """F32 tensors equal the safetensors exactly; Q8_0/Q4_0 are within one quantization step
    of the block's largest value (Q8_0: amax/127, Q4_0: amax/8)."""
    d, files = g4[name]
    st = SafetensorsDir(d)
    hf = {n.replace("model.language_model.", "model."): n for n in st.names()}
    pairs = {"token_embd.weight": "model.embed_tokens.weight",
             "blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight",
             "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
             "blk.0.post_ffw_norm.weight": "model.layers.0.post_feedforward_layernorm.weight",
             "blk.0.layer_output_scale.weight": "model.layers.0.layer_scalar"}
    if name == "moe":
        pairs["blk.0.ffn_gate_up_exps.weight"] = "model.layers.0.experts.gate_up_proj"
        pairs["blk.0.ffn_down_exps.scale"] = "model.layers.0.router.per_expert_scale"
        pairs["blk.0.ffn_gate_inp.scale"] = "model.layers.0.router.scale"
    if name == "ple_shared":
        pairs["per_layer_token_embd.weight"] = "model.embed_tokens_per_layer.weight"
        pairs["blk.3.inp_gate.weight"] = "model.layers.3.per_layer_input_gate.weight"
    for q, step in (("f32", 0.0), ("q8_0", 1 / 127), ("q4_0", 1 / 8)):
        t = _tensors(files[q])
        for g_name, h_name in pairs.items():
            x = st.get(hf[h_name]).reshape(-1)
            y = _deq(t[g_name]).reshape(-1)
            assert x.shape == y.shape, g_name
            if t[g_name].tensor_type in (gguf.GGMLQuantizationType.F32,):
                assert np.array_equal(x, y), (q, g_name)
            elif t[g_name].tensor_type == gguf.GGMLQuantizationType.F16:
                assert np.allclose(x, y, rtol=1e-3, atol=1e-6), (q, g_name)
            else:
                amax = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
                err = np.abs((x - y).reshape(-1, 32))
                assert (err <= amax * step * 1.01 + 1e-7).all(), (q, g_name)


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_gemma4_gguf_semantics_give_hf_logits(g4, name):
    """numpy_forward reads only the GGUF and implements /work/notes/gemma4_semantics.md."""
    d, files = g4[name]
    ids = _ids()
    ref = R.reference_logits(d, ids)
    ours = R.numpy_forward(files["f32"], ids)
    assert _rel(ours, ref) < 1e-4
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_gemma4_quantized_logits_close_to_hf(g4, name):
    """Measured on these random toys (rms of the logit error / rms of the logits): Q8_0 <=
    0.04, Q4_0 <= 0.33 (random weights have no outliers to hide in; MoE adds top-k flips)."""
    d, files = g4[name]
    ids = _ids()
    ref = R.reference_logits(d, ids)
    for q, bound in (("q8_0", 0.08), ("q4_0", 0.5)):
        ours = R.numpy_forward(files[q], ids)
        rms = np.sqrt(((ours - ref) ** 2).mean() / (ref ** 2).mean())
        assert rms < bound, (q, rms)


def test_chunked_conversion_gives_the_same_file(g4, tmp_path, monkeypatch):
    """Big tensors are converted in row chunks; with tiny chunks the bytes are unchanged."""
    import gemma4stack.convert as C
    d, files = g4["ple_shared"]
    monkeypatch.setattr(C, "_CHUNK_ELEMENTS", 100)
    for q in ("f32", "q4_0"):
        p = tmp_path / f"chunked-{q}.gguf"
        convert(d, p, type=q, name=files[q].parent.name)
        a = {n: np.asarray(t.data).tobytes() for n, t in _tensors(p).items()}
        b = {n: np.asarray(t.data).tobytes() for n, t in _tensors(files[q]).items()}
        assert a == b


def test_gemma4_config_formats_and_wrappers_convert_alike(tmp_path):
    """Release config.json (global_head_dim) vs transformers 5.23's per_layer_config; and
    Gemma4ForConditionalGeneration (model.language_model.*) vs Gemma4ForCausalLM (model.*)."""
    outs = []
    for wrapper, fmt in (("conditional", "release"), ("conditional", "hf"), ("causal", "hf")):
        d = R.build_gemma4(tmp_path / f"{wrapper}-{fmt}", "moe", seed=3, wrapper=wrapper,
                           config_format=fmt)
        p = tmp_path / f"{wrapper}-{fmt}.gguf"
        convert(d, p, type="f32")
        f = {k: v for k, v in _fields(p).items() if k != "general.name"}
        t = {n: np.asarray(x.data).tobytes() for n, x in _tensors(p).items()}
        outs.append((f, t))
    for f, t in outs[1:]:
        assert f == outs[0][0]
        assert t == outs[0][1]


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_core_gemma4_logits_and_greedy_match_hf(g4, name):
    d, files = g4[name]
    m = _core_model(files["f32"])
    ids = _ids()
    ref = R.reference_logits(d, ids)
    got = np.asarray(m.logits(ids), dtype=np.float32)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    seq_c = list(ids)
    for _ in range(32):
        seq_c.append(int(np.asarray(m.logits(seq_c))[-1].argmax()))
    assert seq_c[len(ids):] == R.reference_greedy(d, ids, 32)


def _llamacpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    """All-position logits from llama.cpp itself (llama-cpp-python, the optional 'bench'
    dependency); skips when it is not installed or does not know the architecture."""
    llama_cpp = pytest.importorskip("llama_cpp")
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    except ValueError as e:
        # llama-cpp-python >= 0.3.36 (the `peers` pin, make peerdeps) knows gemma4: then a
        # file it cannot load is our converter's fault; older builds do not
        if [int(x) for x in re.findall(r"\d+", llama_cpp.__version__)[:3]] >= [0, 3, 36]:
            raise
        pytest.skip(f"llama.cpp {llama_cpp.__version__} cannot load {path.name}: {e}")
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


@pytest.mark.parametrize("name", list(R.CONFIGS))
def test_llamacpp_loads_our_gemma4_files_and_gives_hf_logits(g4, name):
    """Interop: llama.cpp runs our GGUF. F32: within 2e-3 of max |logit| of HF (measured
    2.9e-4..8.2e-4; llama.cpp keeps K/V in f16). Q8_0: llama.cpp vs numpy_forward on the same
    file, rms rel < 0.05 (measured 0.015-0.019: llama.cpp quantizes activations to Q8_0)."""
    d, files = g4[name]
    ids = _ids()
    ref = R.reference_logits(d, ids)
    lc = _llamacpp_logits(files["f32"], ids)
    assert _rel(lc, ref) < 2e-3
    lc8 = _llamacpp_logits(files["q8_0"], ids)
    np8 = R.numpy_forward(files["q8_0"], ids)
    assert np.sqrt(((lc8 - np8) ** 2).mean() / (np8 ** 2).mean()) < 0.05


# ---------------------------------------------------------------------------------------------
# Gemma 3


@pytest.fixture(scope="module")
def g3(tmp_path_factory):
    root = tmp_path_factory.mktemp("g3")
    d = R.build_gemma3(root / "hf")
    p = root / "g3-f32.gguf"
    convert(d, p, type="f32")
    return d, p


def test_gemma3_metadata_and_norm_offset(g3):
    d, p = g3
    f, t = _fields(p), _tensors(p)
    assert f["general.architecture"] == "gemma3"
    assert f["gemma3.attention.key_length"] == 16
    assert f["gemma3.attention.sliding_window"] == 8
    assert f["gemma3.rope.freq_base"] == 1e6
    assert f["gemma3.rope.scaling.type"] == "linear" and f["gemma3.rope.scaling.factor"] == 2.0
    assert "gemma3.attention.sliding_window_pattern" not in f   # llama.cpp: fixed 5:1
    assert "gemma3.final_logit_softcapping" not in f
    st = SafetensorsDir(d)
    for g_name, h_name in (("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
                           ("blk.2.attn_q_norm.weight", "model.layers.2.self_attn.q_norm.weight"),
                           ("output_norm.weight", "model.norm.weight")):
        assert np.array_equal(_deq(t[g_name]), st.get(h_name) + 1.0)   # Gemma3RMSNorm 1 + w
    assert np.array_equal(_deq(t["blk.0.attn_q.weight"]),
                          st.get("model.layers.0.self_attn.q_proj.weight"))   # no permutation


def test_gemma3_gguf_semantics_give_hf_logits(g3):
    d, p = g3
    ids = _ids()
    assert _rel(R.numpy_forward(p, ids), R.reference_logits(d, ids)) < 1e-4


def test_llamacpp_loads_our_gemma3_file_and_gives_hf_logits(g3):
    d, p = g3
    ids = _ids()
    assert _rel(_llamacpp_logits(p, ids), R.reference_logits(d, ids)) < 2e-3   # measured 1.4e-4


def test_core_gemma3_logits_match_hf(g3):
    d, p = g3
    m = _core_model(p)
    ids = _ids()
    ref = R.reference_logits(d, ids)
    got = np.asarray(m.logits(ids), dtype=np.float32)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------
# Errors and CLI


def test_convert_errors_name_the_problem(tmp_path, models):
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="--type"):
        convert(models / "tinystories-656k-hf", tmp_path / "x.gguf", type="q3_k")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        convert(bad, tmp_path / "x.gguf")


def test_cli_convert(tmp_path, models):
    out = tmp_path / "ts.gguf"
    r = subprocess.run([sys.executable, "-m", "gemma4stack", "convert",
                        str(models / "tinystories-656k-hf"), str(out), "--type", "q4_0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stderr
    t = _tensors(out)
    assert t["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert t["blk.0.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert _fields(out)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
