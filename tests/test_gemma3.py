"""The `gemma3` architecture in the C core against HF transformers 5.23 (Gemma3ForCausalLM).

A tiny random Gemma 3 (tests/gemma4_ref.py GEMMA3_CONFIG: 6 layers, 5:1 sliding pattern with
window 8, query_pre_attn_scalar = head_dim, linear RoPE scaling 2 on the global layer, random
norm weights stored by HF as w with (1 + w) applied), saved with save_pretrained, converted
with `gemma4stack convert` (which stores w + 1, as llama.cpp's converter does), run by the C
core. Plus a 62-layer toy: llama.cpp (and so this core) recognises the 27B by its 62 layers and
scales queries by (H / n_head)^-0.5 instead of head_dim^-0.5; HF does it through
query_pre_attn_scalar = H / n_head, set so in the 27B config.
"""
from __future__ import annotations

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
from test_gemma4 import scale_embedding  # noqa: E402

from gemma4stack import GGUFError, Model  # noqa: E402
from gemma4stack.convert import convert  # noqa: E402

SEQ = 120


def _ids(n: int = SEQ, vocab: int = 512, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [2] + [int(x) for x in rng.integers(9, vocab, size=n - 1)]


def _rms_rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(((a - ref) ** 2).mean() / (ref ** 2).mean()))


@pytest.fixture(scope="module")
def g3(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma3")
    d = R.build_gemma3(root / "hf", seed=2)
    scale_embedding(d, 0.1)           # greedy decoding would repeat one token otherwise
    files = {}
    for t in ("f32", "q8_0"):
        files[t] = root / f"g3-{t}.gguf"
        convert(d, files[t], type=t)
    return d, files


def test_f32_logits_match_hf_at_every_position(g3):
    d, files = g3
    ids = _ids()
    ref = R.reference_logits(d, ids)
    with Model(files["f32"], threads=2) as m:
        assert m.architecture == "gemma3"
        got = m.logits(ids)
    per_pos = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert per_pos.max() <= 1e-3, f"worst position {per_pos.argmax()}: {per_pos.max():.2e}"
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_greedy_continuation_matches_hf_generate(g3):
    import torch
    d, files = g3
    ids = _ids()
    with Model(files["f32"], threads=2) as m:
        eog = [i for i in range(m.n_vocab) if m._core.is_eog(i)]
        ours = list(m._core.generate_iter(ids, 32, 0.0, 0, 1.0, 0))
    model = R._hf_model(str(Path(d).resolve()), (Path(d) / "config.json").stat().st_mtime)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=32, do_sample=False, eos_token_id=eog, pad_token_id=0)
    ref = [int(x) for x in out[0, len(ids):]]
    assert len(ref) == 32 and not set(ref) & set(eog)
    assert len(set(ref)) >= 4
    assert ours == ref


def test_decode_path_matches_hf(g3):
    d, files = g3
    ids = _ids(150, seed=3)
    ref = R.reference_logits(d, ids)
    with Model(files["f32"], threads=2, context=160) as m:
        V = m.n_vocab
        got = np.empty((len(ids), V), np.float32)
        pos = 0
        for k in [5, 70, 1, 1, 30]:
            out = np.empty((k, V), np.float32)
            m._core.forward(ids[pos:pos + k], pos, out, True)
            got[pos:pos + k] = out
            pos += k
        while pos < len(ids):
            m._core.forward(ids[pos:pos + 1], pos, got[pos], False)
            pos += 1
        mem = m.memory()
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    # KV per sequence (paged, blocks of 32 positions): the one global layer (il 5) keeps the
    # 160-token context (5 blocks); each of the five sliding layers at most
    # ceil((window 8 + 128 batch tokens - 1) / 32) + 1 = 6 blocks, capped by the context's 5.
    # 2 KV heads x 16 dims x K and V x 4 bytes (F32 model: F32 cache) per position.
    per_pos = 2 * 16 * 2 * 4
    assert mem["kv_bytes_per_sequence"] == 160 * per_pos + 5 * 160 * per_pos


def test_q8_0_within_derived_tolerance(g3):
    """As test_gemma4: e_w = error of the Q8_0 weights alone (numpy on the same file vs HF);
    the core's Q8_0 activations add at most 1.5 x that; independent errors add in quadrature."""
    d, files = g3
    ids = _ids()
    ref = R.reference_logits(d, ids)
    npq = R.numpy_forward(files["q8_0"], ids)
    with Model(files["q8_0"], threads=2) as m:
        c = m.logits(ids)
    e_w = _rms_rel(npq, ref)
    e_a = 1.5 * e_w
    assert _rms_rel(c, npq) <= e_a
    assert _rms_rel(c, ref) <= 1.25 * math.sqrt(e_w ** 2 + e_a ** 2)
    assert (c.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_27b_query_scale_rule(tmp_path):
    """62 layers: queries scaled by (H / n_head)^-0.5 (llama.cpp's LLM_TYPE_27B rule), which
    HF gets from query_pre_attn_scalar = H / n_head; here H / n_head = 16 != head_dim = 32,
    so the wrong rule would be visible."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    d = tmp_path / "hf62"
    cfg = dict(R.GEMMA3_CONFIG, num_hidden_layers=62, head_dim=32, query_pre_attn_scalar=16,
               intermediate_size=32)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**cfg, bos_token_id=2, eos_token_id=1, pad_token_id=0))
    R._randomize(model, 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.sub_(1.0)
    model.save_pretrained(d)
    R.make_tokenizer(d, cfg["vocab_size"])
    p = tmp_path / "g62.gguf"
    convert(d, p, type="f32")
    ids = _ids(40)
    ref = R.reference_logits(d, ids)
    with Model(p, threads=2) as m:
        got = m.logits(ids)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


def test_missing_key_and_bad_tensor_are_named(g3, tmp_path):
    d, files = g3
    p = rewrite(files["f32"], tmp_path / "nokey.gguf", drop_keys={"gemma3.attention.head_count"})
    with pytest.raises(GGUFError, match=r"gemma3\.attention\.head_count"):
        Model(p, threads=1)
    p = rewrite(files["f32"], tmp_path / "shape.gguf",
                tensors=lambda n, a: a[:, :-1] if n == "blk.2.ffn_down.weight" else a)
    with pytest.raises(GGUFError, match=r"'blk\.2\.ffn_down\.weight' has shape"):
        Model(p, threads=1)


def test_batched_decode_matches_decoding_alone(g3):
    """Eight prompts decoded together (continuous batching, paged KV with sliding-window
    blocks freed as they leave the window) give the tokens each gives alone; F32 and Q8_0."""
    from batch_check import check_batch_matches_alone, random_prompts
    d, files = g3
    for t in ("f32", "q8_0"):
        ties = check_batch_matches_alone(files[t], random_prompts(512, seed=5), max_tokens=20, threads=2)
        print(t, ties)
