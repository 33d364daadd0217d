"""Gemma 4's MTP assistant (`gemma4-assistant`, csrc/model/gemma4_assistant.c) against the
transformers 5.25 reference (Gemma4AssistantForCausalLM) on random weights: a tiny Gemma 4
target with KV-shared layers and a 4-layer assistant, both converted to GGUF by
gemma4stack.convert (llama.cpp's names and keys), one prompt longer than the sliding window.
Our target's final-normed hidden state, the assistant's logits and its projected hidden state
must match transformers' step after step (three draft steps at the same position), with the
masked (centroid) embedding head and with the full lm_head."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from gemma4_ref import build_gemma4  # noqa: E402
from mtp_ref import build_assistant, reference_draft  # noqa: E402

from gemma4stack import _core  # noqa: E402
from gemma4stack.convert import convert  # noqa: E402

IDS = [2, 17, 250, 31, 99, 100, 7, 300, 41, 42, 43, 44, 45, 120, 121, 5, 6, 77, 78, 79, 80, 81]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    d = build_gemma4(tmp_path_factory.mktemp("t") / "hf", "ple_shared", wrapper="causal")
    g = d.parent / "t.gguf"
    convert(d, g, type="f32")
    return d, g


def _assistant(tmp: Path, target_dir: Path, masked: bool):
    d = build_assistant(tmp / "hf", target_dir, masked=masked)
    g = tmp / "a.gguf"
    convert(d, g, type="f32")
    return d, g


def _ours(tgt_gguf: Path, asst_gguf: Path, token0: int, n_steps: int, ids: list[int] = IDS,
          hb: int = 64):
    tm = _core.Model(str(tgt_gguf), n_ctx=len(ids) + 8)
    am = _core.Model(str(asst_gguf), n_ctx=len(ids) + 8)
    V = tm.n_vocab
    lg = np.zeros((len(ids), V), np.float32)
    hid = np.zeros((len(ids), hb), np.float32)
    tm.forward(ids, 0, lg, all_logits=True, hidden_out=hid)
    h = hid[-1:].copy()
    tok = token0
    steps = []
    for _ in range(n_steps):
        out = np.zeros((1, V), np.float32)
        h_out = np.zeros((1, hb), np.float32)
        am.mtp_step(tm, [tok], len(ids), h, out, h_out)
        steps.append((out[0].copy(), h_out[0].copy()))
        tok = int(out[0].argmax())
        h = h_out
    return hid[-1], lg[-1], steps


@pytest.mark.parametrize("masked", [True, False], ids=["centroids", "lm_head"])
def test_assistant_matches_transformers(target, tmp_path, masked):
    tgt_dir, tgt_gguf = target
    asst_dir, asst_gguf = _assistant(tmp_path, tgt_dir, masked)
    ref = reference_draft(tgt_dir, asst_dir, IDS, n_steps=3)
    h0, last_logits, steps = _ours(tgt_gguf, asst_gguf, ref["token0"], 3)
    assert int(last_logits.argmax()) == ref["token0"]
    np.testing.assert_allclose(h0, ref["h0"], rtol=1e-4, atol=1e-4)
    for i, ((lg, h), (rlg, rh, rtok)) in enumerate(zip(steps, ref["steps"])):
        np.testing.assert_allclose(h, rh, rtol=1e-4, atol=2e-4, err_msg=f"h_out, step {i}")
        np.testing.assert_allclose(lg, rlg, rtol=1e-4, atol=2e-4, err_msg=f"logits, step {i}")
        assert int(lg.argmax()) == rtok
    if masked:   # the centroid head scores top_k * V / C tokens, the rest share min - 1
        lg = steps[0][0]
        assert (lg == lg.min()).sum() == lg.size - 4 * (lg.size // 16)


def test_assistant_real_shapes(tmp_path):
    """The same comparison at the published assistant layer shapes (hidden 1024, FFN 8192, 16
    heads of 256 / 512, 4 layers) over an E2B-width target (hidden 1536, 1 KV head), a prompt
    of 530 tokens past the 512-token window; only the vocabulary is small (mtp_ref)."""
    from mtp_ref import build_real_shapes
    t_dir, a_dir = build_real_shapes(tmp_path)
    convert(t_dir, tmp_path / "t.gguf", type="f32")
    convert(a_dir, tmp_path / "a.gguf", type="f32")
    ids = [2] + [int(x) for x in np.random.default_rng(3).integers(10, 500, 529)]
    ref = reference_draft(t_dir, a_dir, ids, n_steps=2)
    h0, _, steps = _ours(tmp_path / "t.gguf", tmp_path / "a.gguf", ref["token0"], 2, ids, 1536)
    np.testing.assert_allclose(h0, ref["h0"], rtol=1e-4, atol=1e-4)
    for i, ((lg, h), (rlg, rh, rtok)) in enumerate(zip(steps, ref["steps"])):
        np.testing.assert_allclose(h, rh, rtol=1e-4, atol=2e-4, err_msg=f"h_out, step {i}")
        np.testing.assert_allclose(lg, rlg, rtol=1e-4, atol=2e-4, err_msg=f"logits, step {i}")
        assert int(lg.argmax()) == rtok


# ---------------------------------------------------------------------------------------------
# the engine with the assistant as its drafter (Model(path, draft="mtp:PATH"))

DRAFT = (4, 3, True)      # (draft_max, draft_ngram, draft_model) of the drafting requests
PLAIN = (0, 3, False)
PROMPTS = [IDS, IDS[:5], [2, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 40, 41], list(range(2, 40))]


def _greedy(m, ids, n, draft):
    req = m._sched.submit(ids, n, 0.0, 0, 1.0, 0, draft)
    return list(req.tokens()), req.last


@pytest.fixture(scope="module")
def assistant(target, tmp_path_factory):
    return _assistant(tmp_path_factory.mktemp("a"), target[0], True)[1]


def _echo_assistant(target_gguf: Path, src: Path, dst: Path) -> Path:
    """src (an assistant without the masked head) rewritten to draft the token it is given:
    attention and FFN outputs zeroed, pre_projection keeps a random projection R of the
    target embedding only, token_embd rows = R e_v normalised, output_norm ones. The toy
    target's greedy output repeats its last prompt token, so these drafts get accepted and
    the engine's accept path (hidden state of the last accepted row, KV commit past the
    accepted drafts) is exercised, not only rejections."""
    import gguf
    from gguf_rewrite import rewrite
    r = gguf.GGUFReader(str(target_gguf))
    t = {x.name: x for x in r.tensors}["token_embd.weight"]
    emb = np.asarray(t.data, np.float32).reshape([int(x) for x in reversed(t.shape)])  # (V, Hb)
    Hb = emb.shape[1]
    R = np.random.default_rng(0).normal(size=(32, Hb)).astype(np.float32) / np.sqrt(Hb)

    def edit(name: str, a: np.ndarray) -> np.ndarray:
        if name.endswith(("attn_output.weight", "ffn_down.weight")):
            return np.zeros_like(a)
        if name == "nextn.pre_projection.weight":                    # (Ha, 2 Hb)
            return np.concatenate([R, np.zeros_like(R)], axis=1).astype(np.float32)
        if name == "token_embd.weight":                              # (V, Ha)
            rows = emb @ R.T
            return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
        if name == "output_norm.weight":
            return np.ones_like(a)
        return a
    return rewrite(src, dst, tensors=edit)


def test_mtp_drafts_accepted(target, tmp_path):
    """The echo assistant's drafts are accepted (most of them) and greedy output is still the
    plain one, alone and with two sequences batched."""
    from gemma4stack import Model
    src = _assistant(tmp_path, target[0], masked=False)[1]
    echo = _echo_assistant(target[1], src, tmp_path / "echo.gguf")
    with Model(target[1], draft=f"mtp:{echo}", parallel=2, context=128) as m:
        drafted = accepted = 0
        for ids in PROMPTS:
            plain, _ = _greedy(m, ids, 40, PLAIN)
            spec, ev = _greedy(m, ids, 40, DRAFT)
            assert spec == plain, (ids, spec, plain)
            drafted, accepted = drafted + ev[9], accepted + ev[10]
        assert drafted > 0 and accepted >= 0.8 * drafted, (drafted, accepted)
        with m._sched.cv:
            reqs = [m._sched.submit(ids, 40, 0.0, 0, 1.0, 0, DRAFT) for ids in PROMPTS]
        outs = [list(r.tokens()) for r in reqs]
        assert outs == [_greedy(m, ids, 40, PLAIN)[0] for ids in PROMPTS]


def test_mtp_greedy_equals_plain(target, assistant):
    """Greedy with the MTP drafter = plain greedy, alone and batched (2 sequences at once,
    prompts past the sliding window of 8 so the target's window blocks are released as it
    decodes while the assistant reads window + 1 keys); drafts were made; no KV left."""
    from gemma4stack import Model
    with Model(target[1], draft=f"mtp:{assistant}", parallel=2, context=128) as m:
        assert m.draft == f"mtp:{assistant}"
        alone, drafted = [], 0
        for ids in PROMPTS:
            plain, _ = _greedy(m, ids, 40, PLAIN)
            spec, ev = _greedy(m, ids, 40, DRAFT)
            assert spec == plain, (ids, spec, plain)
            drafted += ev[9]
            alone.append(plain)
        assert drafted > 0
        with m._sched.cv:
            reqs = [m._sched.submit(ids, 40, 0.0, 0, 1.0, 0, DRAFT if i % 2 else PLAIN)
                    for i, ids in enumerate(PROMPTS)]
        assert [list(r.tokens()) for r in reqs] == alone
        st = m.stats()
        assert st.running == 0 and st.kv_blocks_used == 0 and st.kv_blocks_reserved == 0, st


def test_bench_mtp_smoke(target, assistant, tmp_path):
    """benchmarks/bench_mtp.py on the toys: a synthetic assistant for the toy target loads and
    drafts for it (checked by the core's g4_mtp_check), and the cost figures come out."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import bench_mtp
    a = bench_mtp.synth_assistant(target[1], tmp_path / "s.gguf", hidden=32, n_ff=64, n_head=4,
                                  n_centroids=16, top_k=4, type="f32")
    for asst in (a, assistant):
        r = bench_mtp.mtp_cost(target[1], asst, threads=1, prompt=20, reps=2, ks=(1, 4))
        assert r["draft_ms"] > 0 and r["decode_ms"] > 0 and set(r["verify_ms"]) == {1, 4}
    assert bench_mtp.break_even(10.0, 10.0, 0.0, 4) == 0.0        # free drafts always pay
    assert bench_mtp.break_even(10.0, 60.0, 0.0, 4) is None       # dearer than 5 decode steps
    a = bench_mtp.break_even(10.0, 15.0, 1.0, 4)                  # (1 - a^5) / (1 - a) = 1.9
    assert abs((1 - a ** 5) / (1 - a) - 1.9) < 1e-6


# ---------------------------------------------------------------------------------------------
# bad files and bad pairs: clear errors


def test_bad_assistant_files(target, assistant, tmp_path):
    import gguf
    from gguf_rewrite import rewrite

    import gemma4stack
    from gemma4stack import Model
    no_post = rewrite(assistant, tmp_path / "np.gguf",
                      tensors=lambda n, a: None if n == "nextn.post_projection.weight" else a)
    with pytest.raises(gemma4stack.GGUFError, match="nextn.post_projection.weight"):
        _core.Model(str(no_post))
    half = rewrite(assistant, tmp_path / "half.gguf",
                   tensors=lambda n, a: None if n == "masked_embd_centroids.weight" else a)
    with pytest.raises(gemma4stack.GGUFError, match="masked_embd_centroids.weight is missing"):
        _core.Model(str(half))
    no_out = rewrite(assistant, tmp_path / "nk.gguf", drop_keys={"gemma4-assistant.embedding_length_out"})
    with pytest.raises(gemma4stack.GGUFError, match="embedding_length_out"):
        _core.Model(str(no_out))
    bad_k = rewrite(assistant, tmp_path / "k.gguf", set_keys={
        "gemma4-assistant.centroid_intermediate_top_k": (100, gguf.GGUFValueType.UINT32)})
    with pytest.raises(gemma4stack.GGUFError, match="centroid_intermediate_top_k 100"):
        _core.Model(str(bad_k))
    # an assistant cannot run alone, and "mtp:" wants an assistant
    with pytest.raises(gemma4stack.UnsupportedError, match="cannot run on its own"):
        Model(assistant)
    am = _core.Model(str(assistant))
    with pytest.raises(gemma4stack.UnsupportedError, match="cannot run on its own"):
        am.forward([2, 3], 0, np.zeros(am.n_vocab, np.float32))
    am.close()
    with pytest.raises(ValueError, match="not a Gemma 4 MTP assistant"):
        Model(target[1], draft=f"mtp:{target[1]}")


def test_assistant_for_another_model(assistant, tmp_path):
    """A Gemma 3 model with the same vocabulary cannot take a Gemma 4 assistant."""
    import gemma4stack
    from gemma4_ref import build_gemma3
    from gemma4stack import Model
    g3 = tmp_path / "g3.gguf"
    convert(build_gemma3(tmp_path / "g3"), g3, type="f32")
    with pytest.raises(gemma4stack.UnsupportedError, match="must be a gemma4 model"):
        Model(g3, draft=f"mtp:{assistant}")


@pytest.mark.parametrize("kind", ["random", "echo"])
def test_mtp_sampling_keeps_the_distribution(target, assistant, tmp_path, kind):
    """Sampled speculation with the MTP drafter (q = the assistant's distribution, drafts drawn
    from it, the min(1, p/q) rule, the residual norm(max(p - q, 0)) on rejection): the first
    two tokens are distributed as plain sampling's (chi-square homogeneity, test_spec_sample's
    arms and threshold). The random masked-head assistant is nearly always rejected; the echo
    one (it drafts the token it is given) is accepted often. Power, measured once by hand
    (engine.c spec_sample broken, rebuilt, restored): "always accept" gives p = 0 and "no
    residual (draw from p without d)" p = 1e-5 with the echo assistant; the correct rule
    p = 0.05 / 0.045 (fixed seeds)."""
    from test_spec_sample import P_MIN, homogeneity_p, sample_arms
    prompt = IDS[:12]
    if kind == "echo":
        src = _assistant(tmp_path, target[0], masked=False)[1]
        drafter = _echo_assistant(target[1], src, tmp_path / "echo.gguf")
    else:
        drafter = assistant
    plain, spec, drafted, accepted = sample_arms(target[1], prompt, DRAFT, drafter=drafter)
    assert drafted > 0
    if kind == "echo":
        assert accepted > 0.1 * drafted, (drafted, accepted)
    assert len(set(plain)) > 5      # a spread-out distribution, so the test has power
    p = homogeneity_p(plain, spec)
    print(f"drafted {drafted} accepted {accepted} p = {p:.3g}")
    assert p > P_MIN, p
