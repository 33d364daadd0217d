"""Speculative decoding with a draft model (issue 15; csrc/engine/engine.h "draft model";
Model(path, draft="model:PATH" | PATH)).

Greedy output with a drafter must be token for token the plain greedy output, whatever the
drafter proposes: checked with the model itself as its drafter (every draft accepted), a
perturbed copy (some accepted, some rejected: the drafter's KV rollback after a rejection
is exercised), on stories260K (llama), on the F32 Gemma 3 / Gemma 4 toys of test_spec.py
(sliding window 8, KV-shared layers; perturbed copies as drafters) and on a synthetic Gemma 4
of E2B shapes with a 2-layer synthetic drafter, batched with other requests. Sampled output with
a perturbed drafter (q != p: the general min(1, p/q) rule with residual norm(max(p - q, 0)))
keeps the plain sampler's distribution (chi-square test as in test_spec_sample.py). A
drafter with another vocabulary is a clear ValueError.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from gemma4stack import Model

sys.path.insert(0, str(Path(__file__).parent))

from gguf_rewrite import rewrite  # noqa: E402
from test_spec import _repetitive, toys  # noqa: E402,F401  (toys: the F32 Gemma toy fixture)
from test_spec_sample import N, P_MIN, homogeneity_p, sample_arms  # noqa: E402

DRAFT = (4, 3, True)      # (draft_max, draft_ngram, draft_model) of the drafting requests
PLAIN = (0, 3, False)


def _perturbed(src: Path, dst: Path, sigma: float, seed: int = 0) -> Path:
    """src with Gaussian noise of sigma x each weight matrix's standard deviation added
    (norms kept): a drafter that agrees with src often, not always."""
    rng = np.random.default_rng(seed)

    def edit(name: str, a: np.ndarray) -> np.ndarray:
        if a.ndim < 2:
            return a
        return (a + rng.normal(0.0, sigma * float(a.std()), a.shape)).astype(a.dtype)
    return rewrite(src, dst, tensors=edit)


@pytest.fixture(scope="module")
def stories_drafters(models, tmp_path_factory) -> dict[str, Path]:
    src = models / "stories260K.gguf"
    root = tmp_path_factory.mktemp("drafters")
    return {"same": src, "noisy": _perturbed(src, root / "noisy.gguf", 0.5),
            "mid": _perturbed(src, root / "mid.gguf", 0.22)}


def _greedy(m: Model, ids: list[int], n: int, draft) -> tuple[list[int], tuple]:
    req = m._sched.submit(ids, n, 0.0, 0, 1.0, 0, draft)
    toks = list(req.tokens())
    return toks, req.last


def _check_greedy(path: Path, drafter: Path, prompts: list[list[int]], n: int, **kw) -> tuple[int, int]:
    """Each prompt greedy without and with the drafter (one Model: both request kinds), then
    all of them batched: equal tokens; no KV blocks left. Returns (drafted, accepted)."""
    drafted = accepted = 0
    with Model(path, draft=drafter, **kw) as m:
        alone = []
        for ids in prompts:
            plain, _ = _greedy(m, ids, n, PLAIN)
            spec, ev = _greedy(m, ids, n, DRAFT)
            assert spec == plain, (ids, spec, plain)
            drafted, accepted = drafted + ev[9], accepted + ev[10]
            alone.append(plain)
        with m._sched.cv:                  # queued together: batched drafter forwards
            reqs = [m._sched.submit(ids, n, 0.0, 0, 1.0, 0, DRAFT if i % 3 else PLAIN)
                    for i, ids in enumerate(prompts)]
        assert [list(r.tokens()) for r in reqs] == alone
        st = m.stats()
        assert st.running == 0 and st.kv_blocks_used == 0 and st.kv_blocks_reserved == 0, st
    return drafted, accepted


def _stories_prompts(path: Path) -> list[list[int]]:
    with Model(path) as m:
        texts = ["Once upon a time", "Lily and Tom went to the park. Lily", "The dog was sad because",
                 "One day, a little bird"]
        return [m.tokenize(t) for t in texts]


def test_stories_drafter_itself_accepts_everything(models, stories_drafters):
    path = models / "stories260K.gguf"
    drafted, accepted = _check_greedy(path, stories_drafters["same"], _stories_prompts(path), 60,
                                      threads=2, parallel=3, batch_tokens=32)
    assert drafted > 0 and accepted == drafted, (drafted, accepted)


def test_stories_noisy_drafter_greedy_equal(models, stories_drafters):
    path = models / "stories260K.gguf"
    drafted, accepted = _check_greedy(path, stories_drafters["noisy"], _stories_prompts(path), 60,
                                      threads=2, parallel=3, batch_tokens=32)
    assert 0 < accepted < drafted, (drafted, accepted)


def test_stories_noisy_drafter_sampling_keeps_the_distribution(models, stories_drafters):
    """The first two generated tokens (the second one drafted by a drafter whose q differs
    from the target's p) against plain sampling: chi-square homogeneity p > P_MIN."""
    path = models / "stories260K.gguf"
    with Model(path) as m:
        prompt = m.tokenize("Once upon a time, there was a little girl named Lily. She")
    plain, spec, drafted, accepted = sample_arms(path, prompt, DRAFT, drafter=stories_drafters["mid"])
    assert drafted > N // 2 and 0.1 * drafted < accepted < 0.95 * drafted, (drafted, accepted)
    p = homogeneity_p(plain, spec)
    print(f"drafted {drafted} accepted {accepted} p = {p:.3g}")
    assert p > P_MIN, p


def test_synth_gemma4_drafter_greedy_equal(tmp_path):
    """A 3-layer synthetic Gemma 4 (E2B shapes, gemma4stack.synth) drafted by a 2-layer one
    of the same vocabulary (synth needs a sliding and a global layer)."""
    from batch_check import random_prompts

    from gemma4stack.synth import synth
    target, drafter = tmp_path / "t.gguf", tmp_path / "d.gguf"
    synth(target, variant="e2b", type="q4_0", layers=3, n_vocab=4096, seed=1)
    synth(drafter, variant="e2b", type="q4_0", layers=2, n_vocab=4096, seed=2)
    prompts = random_prompts(4096, lengths=(5, 40, 70), seed=3, bos=2)
    drafted, accepted = _check_greedy(target, drafter, prompts, 24,
                                      threads=2, parallel=2, context=256, batch_tokens=32)
    print(f"drafted {drafted} accepted {accepted}")
    assert drafted > 0, (drafted, accepted)


def test_vocabulary_mismatch_is_a_clear_error(models, tmp_path):
    path = models / "stories260K.gguf"
    with pytest.raises(ValueError, match="vocabulary of"):
        Model(path, draft=models / "TinyStories-656K-Q8_0.gguf")
    # same size, one token string changed
    import gguf
    r = gguf.GGUFReader(str(path))
    toks = [str(t) for t in r.fields["tokenizer.ggml.tokens"].contents()]
    toks[300] = toks[300] + "x"
    bad = rewrite(path, tmp_path / "bad.gguf",
                  set_keys={"tokenizer.ggml.tokens": (toks, gguf.GGUFValueType.ARRAY)})
    with pytest.raises(ValueError, match="token 300"):
        Model(path, draft=f"model:{bad}")
    with pytest.raises(ValueError, match="draft must be"):
        Model(path, draft="mtp")
    with pytest.raises(FileNotFoundError):
        Model(path, draft="mtp:/nonexistent.gguf")      # MTP assistants: tests/test_mtp.py
    with pytest.raises(FileNotFoundError):
        Model(path, draft="model:/nonexistent.gguf")


def test_cli_run_and_bench_with_a_drafter(models, capsys):
    """gemma4stack run --draft model:PATH and bench --draft ...: drafts reported."""
    from gemma4stack.bench import bench
    from gemma4stack.cli import main
    path = models / "stories260K.gguf"
    assert main(["run", "--model", str(path), "--prompt", "Once upon a time", "--max-tokens", "12",
                 "--temperature", "0", "--draft", f"model:{path}"]) == 0
    err = capsys.readouterr().err
    assert "drafts " in err and "accepted" in err, err
    r = bench(path, n_prompt=0, n_gen=16, repetitions=1, threads=1, bandwidth=False, draft=f"model:{path}")
    row = r["tg16 draft=model:" + str(path)]
    assert row.draft_tokens > 0 and row.accepted_tokens == row.draft_tokens and row.avg_ts > 0
    assert row.draft_speedup is not None and row.draft_speedup > 0
    assert "drafts, speedup" in r.to_markdown() and "draft_speedup" in r.to_csv()


@pytest.mark.parametrize("arch", ["gemma3", "gemma4"])
def test_toy_noisy_drafter_across_sliding_window(toys, arch, tmp_path):  # noqa: F811
    """The F32 Gemma 3 / Gemma 4 toys of test_spec.py (sliding window 8; the Gemma 4 one with
    5 KV-shared layers) drafted by a perturbed copy of themselves: 40 tokens, far past the
    window, with drafts both accepted and rejected, so the drafter's sequence is rewound
    again and again across its sliding-window blocks; greedy output equal to plain."""
    from batch_check import random_prompts
    drafter = _perturbed(toys[arch], tmp_path / "d.gguf", 0.3, seed=1)
    prompts = [_repetitive(512, s, period=p) for s, p in ((0, 5), (1, 9))]
    prompts += random_prompts(512, lengths=(7, 40), seed=3, bos=2)
    drafted, accepted = _check_greedy(toys[arch], drafter, prompts, 40, threads=2, parallel=2,
                                      batch_tokens=16)
    print(f"{arch}: drafted {drafted} accepted {accepted}")
    assert 0 < accepted < drafted, (drafted, accepted)



def test_requests_with_penalties_or_logprobs_do_not_draft(models):
    """Drafts are asked for, but a request with a repeat penalty or logprobs decodes without
    them (each verification row would need the penalty history / logprobs of its own accepted
    prefix); the same request without them does draft on this repetitive prompt."""
    with Model(models / "stories260K.gguf") as m:
        ids = m.tokenize("Once upon a time, the cat sat on the mat. Once upon a time, the cat sat")
        eng = m._sched.engine

        def drafted(**kw) -> int:
            rid = eng.submit(ids, 24, 0.0, 0, 1.0, 0, 8, 3, **kw)
            last = None
            while last is None or last[2] == 0:
                evs = [e for e in eng.step() if e[0] == rid]
                last = evs[-1] if evs else last
            return last[9]                                   # n_drafted
        assert drafted() > 0
        assert drafted(repeat_penalty=1.3) == 0
        assert drafted(logprobs=2) == 0
