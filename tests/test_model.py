"""gemma4stack.Model: logits against HF transformers, load-time validation, errors, memory.

References: transformers' LlamaForCausalLM (rotate-half RoPE, its own attention and MLP
code) on the F32 safetensors of TinyStories-656K and on stories260K's F32 tensors; the
`gguf` package (written by llama.cpp's authors) to read and dequantize GGUF tensors
independently of our C reader.
"""
from __future__ import annotations

import numpy as np
import pytest

import gemma4stack
from gemma4stack import GGUFError, LimitError, Model, UnsupportedError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize  # noqa: E402

# BOS + the first 20 reference ids of SOURCES.md (TinyStories-656K, greedy)
TINY_IDS = [1, 147, 201, 282, 215, 286, 598, 1662, 356, 499, 826, 1363, 1145, 1652, 615, 242,
            1482, 951, 628, 499, 826]


def gguf_tensors(path) -> dict[str, np.ndarray]:
    """name -> float32 array in (rows, cols) order, dequantized by the gguf package."""
    r = gguf.GGUFReader(str(path))
    return {t.name: dequantize(t.data, t.tensor_type).reshape([int(x) for x in t.shape[::-1]])
            for t in r.tensors}


def meta_to_hf(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo the q/k row order llama.cpp uses (adjacent rotary pairs, as Meta's and
    llama2.c's checkpoints) to HF's rotate-half order: the inverse of
    convert_hf_to_gguf.py's LlamaModel.permute (= HF's convert_llama_weights_to_hf permute)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def hf_state_from_gguf(W: dict, n_layer: int, n_head: int, n_head_kv: int) -> dict:
    sd = {"model.embed_tokens.weight": W["token_embd.weight"],
          "model.norm.weight": W["output_norm.weight"],
          "lm_head.weight": W.get("output.weight", W["token_embd.weight"])}
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        sd[p + "self_attn.q_proj.weight"] = meta_to_hf(W[b + "attn_q.weight"], n_head)
        sd[p + "self_attn.k_proj.weight"] = meta_to_hf(W[b + "attn_k.weight"], n_head_kv)
        sd[p + "self_attn.v_proj.weight"] = W[b + "attn_v.weight"]
        sd[p + "self_attn.o_proj.weight"] = W[b + "attn_output.weight"]
        sd[p + "mlp.gate_proj.weight"] = W[b + "ffn_gate.weight"]
        sd[p + "mlp.up_proj.weight"] = W[b + "ffn_up.weight"]
        sd[p + "mlp.down_proj.weight"] = W[b + "ffn_down.weight"]
        sd[p + "input_layernorm.weight"] = W[b + "attn_norm.weight"]
        sd[p + "post_attention_layernorm.weight"] = W[b + "ffn_norm.weight"]
    return {k: torch.tensor(np.ascontiguousarray(v)) for k, v in sd.items()}


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


# ------------------------------------------------------------ logits vs HF


@pytest.fixture(scope="module")
def tiny_hf(models):
    return transformers.LlamaForCausalLM.from_pretrained(
        models / "tinystories-656k-hf", torch_dtype=torch.float32).eval()


def test_tinystories_q8_0_logits_match_transformers(models, tiny_hf):
    """Our Q8_0 logits vs HF on the F32 checkpoint, with a tolerance derived from the
    quantization itself.

    Q8_0 rounds each block of 32 weights to 255 levels of its max |w| (error <= max/254),
    and, as in llama.cpp, we round the activations entering each Q8_0 matmul the same way.
    The weight rounding's effect on the logits is measured here with HF alone (HF on the
    GGUF's dequantized weights vs HF on F32). The activation rounding has the same
    relative size, so ours vs HF-on-dequantized-weights must stay within 2x that effect
    and ours vs HF-F32 within 3x; a forward-pass bug (RoPE layout, GQA mapping, norm eps)
    moves logits by whole units.
    """
    m = Model(models / "TinyStories-656K-Q8_0.gguf")
    ours = m.logits(TINY_IDS)
    ref = hf_logits(tiny_hf, TINY_IDS)

    W = gguf_tensors(models / "TinyStories-656K-Q8_0.gguf")
    sd = hf_state_from_gguf(W, n_layer=2, n_head=8, n_head_kv=4)
    # the un-permuted dequantized weights are the HF weights up to Q8_0 rounding:
    # half a step (amax/254) plus the fp16 rounding of the scale (127 steps x 2^-11 relative)
    hf_sd = tiny_hf.state_dict()
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"):
        amax = hf_sd[k].abs().max().item()
        assert (sd[k] - hf_sd[k]).abs().max().item() <= amax * (1 / 254 + 1 / 2048)
    hq = transformers.LlamaForCausalLM.from_pretrained(
        models / "tinystories-656k-hf", torch_dtype=torch.float32).eval()
    hq.load_state_dict(sd, strict=False)
    refq = hf_logits(hq, TINY_IDS)

    weight_effect = np.abs(refq - ref).max()
    assert 0 < weight_effect < 1.0            # sanity: quantization moved the logits a little
    assert np.abs(ours - refq).max() <= 2 * weight_effect
    assert np.abs(ours - ref).max() <= 3 * weight_effect
    assert np.abs(ours - ref).mean() <= 3 * np.abs(refq - ref).mean()
    # and the greedy choice agrees at every position
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_stories260k_f32_logits_match_transformers(models):
    """stories260K is all F32, so no quantization: our logits equal HF's to float rounding."""
    cfg = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=5,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    W = gguf_tensors(models / "stories260K.gguf")
    missing, unexpected = hf.load_state_dict(hf_state_from_gguf(W, 5, 8, 4), strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338]
    ids += list(range(3, 200, 7))     # also some byte tokens and unlikely ids
    ours = Model(models / "stories260K.gguf").logits(ids)
    ref = hf_logits(hf, ids)
    assert ours.shape == (len(ids), 512) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


def test_logits_start_from_an_empty_context(models):
    m = Model(models / "stories260K.gguf")
    a = m.logits([1, 403, 407])
    m.generate("Something else entirely", max_tokens=5, temperature=0)
    b = m.logits([1, 403, 407])
    np.testing.assert_array_equal(a, b)
    # row i depends only on ids[:i+1] (causal mask)
    c = m.logits([1, 403, 407, 261, 378])
    np.testing.assert_allclose(c[:3], a, atol=1e-5)


# -------------------------------------------------------------- metadata


def test_metadata_memory_and_repr(models):
    path = models / "TinyStories-656K-Q8_0.gguf"
    r = gguf.GGUFReader(str(path))
    with Model(path, threads=1, context=128) as m:
        assert m.n_ctx == 128 and m.threads == 1 and m.n_vocab == 2048
        assert m.bos_id == 1 and m.eos_id == 2
        md = m.metadata
        assert md["general.architecture"] == "llama"
        assert md["llama.embedding_length"] == 128
        assert md["general.name"] == r.fields["general.name"].contents()
        mem = m.memory()
        assert mem["weights_bytes"] == sum(int(t.n_bytes) for t in r.tensors)
        # K and V: 2 layers x 128 positions x (4 kv heads x 16) halves each (F16 cache, as llama.cpp)
        assert mem["kv_bytes"] == 2 * 2 * 128 * 64 * 2
        assert mem["scratch_bytes"] > 0
        text = repr(m)
        assert "llama" in text and "Q8_0: 15" in text and "F32: 5" in text and "n_ctx=128" in text
        assert "<table>" in m._repr_html_()
    assert "closed" in repr(m)
    with pytest.raises(ValueError, match="closed"):
        m.tokenize("x")


def test_default_context_is_trained_context_capped(models):
    assert Model(models / "TinyStories-656K-Q8_0.gguf").n_ctx == 512     # trained 512
    assert Model(models / "stories260K.gguf").n_ctx == 2048              # trained 2048 < 4096


def test_tokenize_detokenize_roundtrip(models):
    """Same ids as HF's tokenizer.json for the same vocab; text comes back unchanged."""
    hf_tok = transformers.AutoTokenizer.from_pretrained(models / "tinystories-656k-hf")
    m = Model(models / "TinyStories-656K-Q8_0.gguf")
    text = "Once upon a time, there was a little girl named Lily."
    ids = m.tokenize(text)
    assert ids == hf_tok(text).input_ids
    assert m.detokenize(ids) == text
    assert m.tokenize(text, add_bos=False) == ids[1:]
    # the model's own greedy story (SOURCES.md ids) reads as the reference text
    assert m.detokenize(TINY_IDS).startswith("Once upon a time, there was a little girl named Lily.")


# ------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Model(tmp_path / "nope.gguf")


def test_not_a_gguf(models):
    with pytest.raises(GGUFError):
        Model(models / "stories260K.bin")


def write_gguf(path, arch="llama", edit=None, n_vocab=16, n_ff=64, n_embd=32, n_head=4,
               n_head_kv=2, head_dim=None, n_layer=1, output=False, kv=None, seed=0):
    """A tiny random llama GGUF with a toy vocab (no byte tokens). head_dim: written as
    attention.key_length when given. kv(writer): extra metadata. edit(tensors): change
    tensors ((rows, cols) float32 arrays, or (raw uint8 bytes, ggml type) pairs)."""
    hd = head_dim or n_embd // n_head
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    if kv:
        kv(w)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(n_vocab - 3)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [1] * (n_vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    if output:
        shapes["output.weight"] = (n_vocab, n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (n_embd,), b + "ffn_norm.weight": (n_embd,),
                       b + "attn_q.weight": (n_head * hd, n_embd),
                       b + "attn_k.weight": (n_head_kv * hd, n_embd),
                       b + "attn_v.weight": (n_head_kv * hd, n_embd),
                       b + "attn_output.weight": (n_embd, n_head * hd),
                       b + "ffn_gate.weight": (n_ff, n_embd), b + "ffn_up.weight": (n_ff, n_embd),
                       b + "ffn_down.weight": (n_embd, n_ff)})
    tensors = {k: (rng.standard_normal(s) * (0.3 if len(s) == 2 else 1)).astype(np.float32)
               for k, s in shapes.items()}
    if edit:
        edit(tensors)
    for k, v in tensors.items():
        if isinstance(v, tuple):          # (raw bytes, ggml type)
            w.add_tensor(k, v[0], raw_dtype=v[1])
        else:
            w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("variant", ["gqa", "head_dim", "linear_rope", "freq_base", "untied_mha"])
def test_random_llama_variants_match_transformers(tmp_path, variant):
    """Hyperparameter paths the shared files do not exercise, each against HF's
    LlamaForCausalLM on the same random weights (F32, so to float rounding)."""
    kw = dict(n_layer=2, n_vocab=40, n_embd=64, n_head=4, n_head_kv=2, n_ff=96)
    hf_kw = {}
    if variant == "head_dim":                 # head size 32 != 64 / 4
        kw["head_dim"], hf_kw["head_dim"] = 32, 32
    elif variant == "linear_rope":
        kw["kv"] = lambda w: (w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR),
                              w.add_rope_scaling_factor(4.0))
        hf_kw["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    elif variant == "freq_base":
        kw["kv"] = lambda w: w.add_rope_freq_base(500000.0)
        hf_kw["rope_theta"] = 500000.0
    elif variant == "untied_mha":
        kw.update(n_head_kv=4, output=True)
    path = write_gguf(tmp_path / f"{variant}.gguf", **kw)
    cfg = transformers.LlamaConfig(
        vocab_size=kw["n_vocab"], hidden_size=kw["n_embd"], intermediate_size=kw["n_ff"],
        num_hidden_layers=kw["n_layer"], num_attention_heads=kw["n_head"],
        num_key_value_heads=kw["n_head_kv"], max_position_embeddings=64, rms_norm_eps=1e-5,
        tie_word_embeddings=False, **hf_kw)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    W = gguf_tensors(path)
    hf.load_state_dict(hf_state_from_gguf(W, kw["n_layer"], kw["n_head"], kw["n_head_kv"]),
                       strict=False)
    ids = [1] + [int(i) for i in np.random.default_rng(1).integers(3, kw["n_vocab"], 40)]
    ours = Model(path).logits(ids)
    np.testing.assert_allclose(ours, hf_logits(hf, ids), atol=1e-4, rtol=1e-4)


def test_yarn_rope_scaling_is_refused(tmp_path):
    path = write_gguf(tmp_path / "yarn.gguf", kv=lambda w: (
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN), w.add_rope_scaling_factor(4.0)))
    with pytest.raises(UnsupportedError, match="yarn"):
        Model(path)


def test_tiny_written_model_loads(tmp_path):
    m = Model(write_gguf(tmp_path / "ok.gguf"))
    assert m.n_vocab == 16 and m.n_ctx == 64
    assert m.logits([1, 5, 6]).shape == (3, 16)


def test_unknown_architecture(tmp_path):
    with pytest.raises(UnsupportedError, match="mamba9") as e:
        Model(write_gguf(tmp_path / "arch.gguf", arch="mamba9"))
    assert "llama" in str(e.value)          # the supported ones are listed


def test_wrong_shape_names_tensor(tmp_path):
    def edit(t):
        t["blk.0.attn_k.weight"] = np.zeros((8, 32), np.float32)
    with pytest.raises(GGUFError, match=r"blk\.0\.attn_k\.weight.*\[32, 8\].*expected \[32, 16\]"):
        Model(write_gguf(tmp_path / "shape.gguf", edit=edit))


def test_missing_tensor_named(tmp_path):
    def edit(t):
        del t["blk.0.ffn_up.weight"]
    with pytest.raises(GGUFError, match=r"blk\.0\.ffn_up\.weight.*missing"):
        Model(write_gguf(tmp_path / "missing.gguf", edit=edit))


def test_unsupported_tensor_type_named(tmp_path):
    """TQ1_0 is a valid ggml type (54 bytes per 256 elements) this build cannot compute with."""
    def edit(t):
        t["blk.0.ffn_down.weight"] = (np.zeros((32, 54), np.uint8), gguf.GGMLQuantizationType.TQ1_0)
    with pytest.raises(UnsupportedError, match=r"blk\.0\.ffn_down\.weight.*TQ1_0"):
        Model(write_gguf(tmp_path / "type.gguf", edit=edit, n_ff=256))


def test_bad_ids_and_lengths(models):
    m = Model(models / "stories260K.gguf", context=16)
    with pytest.raises(ValueError, match="512"):
        m.logits([1, 512])
    with pytest.raises(ValueError):
        m.logits([1, -1])
    with pytest.raises(ValueError):
        m.logits([])
    with pytest.raises(LimitError, match="16"):
        m.logits([1] * 17)
    with pytest.raises(ValueError):
        Model(models / "stories260K.gguf", threads=0)


def test_exports():
    assert gemma4stack.Model is Model
    assert issubclass(LimitError, ValueError) and issubclass(UnsupportedError, GGUFError)
