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


def _ours(tgt_gguf: Path, asst_gguf: Path, token0: int, n_steps: int):
    tm = _core.Model(str(tgt_gguf), n_ctx=64)
    am = _core.Model(str(asst_gguf), n_ctx=64)
    V = tm.n_vocab
    lg = np.zeros((len(IDS), V), np.float32)
    hid = np.zeros((len(IDS), 64), np.float32)
    tm.forward(IDS, 0, lg, all_logits=True, hidden_out=hid)
    h = hid[-1:].copy()
    tok = token0
    steps = []
    for _ in range(n_steps):
        out = np.zeros((1, V), np.float32)
        h_out = np.zeros((1, 64), np.float32)
        am.mtp_step(tm, [tok], len(IDS), h, out, h_out)
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
