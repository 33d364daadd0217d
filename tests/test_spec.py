"""Speculative decoding by prompt lookup in the batching engine (issue 15; csrc/engine/engine.h).

Greedy speculative output must be token for token the plain greedy output: on TinyStories
(llama), on a Gemma 3 toy and on the Gemma 4 `ple_shared` toy (sliding window of 8 positions,
far shorter than the 60+ generated tokens, and 5 KV-shared layers), and on the real Gemma 3
270M with a prompt whose answer quotes a document (drafts are accepted there). Speculating
requests batched with plain ones give the tokens each gives alone, and every KV block comes
back afterwards.

Drafts are forced on the toys by prompts that repeat themselves (the toys' greedy output then
repeats too), so accepted drafts, rejected ones, and the KV rollback past them all happen; the
tests check that they did (draft/accept counts), so a drafter that never proposes cannot pass.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from gemma4stack import Model

sys.path.insert(0, str(Path(__file__).parent))

SPEC = (8, 3)           # (draft_max, draft_ngram) of the speculating requests
PLAIN = (0, 3)


def _run(m: Model, ids: list[int], n: int, draft=SPEC) -> tuple[list[int], tuple]:
    """Greedy tokens of one request and its last engine event (stats)."""
    req = m._sched.submit(ids, n, 0.0, 0, 1.0, 0, draft)
    toks = list(req.tokens())
    return toks, req.last


def _repetitive(n_vocab: int, seed: int, period: int = 13, reps: int = 5) -> list[int]:
    """A random phrase repeated: the n-gram lookup finds the prompt's continuation."""
    rng = np.random.default_rng(seed)
    phrase = rng.integers(9, n_vocab, size=period).tolist()
    return [2] + phrase * reps + phrase[:4]


def _check_same(path, prompts: list[list[int]], n: int, **kw) -> tuple[int, int]:
    """Each prompt greedy with and without drafts, one at a time: equal tokens, no KV leak.
    Returns (drafted, accepted) over all prompts."""
    drafted = accepted = 0
    with Model(path, **kw) as m:
        for ids in prompts:
            plain, _ = _run(m, ids, n, PLAIN)
            spec, ev = _run(m, ids, n, SPEC)
            assert spec == plain, f"prompt of {len(ids)} tokens: {spec} != {plain}"
            drafted += ev[9]
            accepted += ev[10]
            assert ev[10] <= ev[9]
        st = m.stats()
        assert st.running == 0 and st.kv_blocks_used == 0 and st.kv_blocks_reserved == 0, st
    return drafted, accepted


def test_tinystories_spec_equals_greedy(models):
    path = models / "TinyStories-656K-Q8_0.gguf"
    texts = ["Once upon a time there was a little dog named Max. Max liked to play with his red "
             "ball. One day Max lost his red ball in the park. " * 3,
             "Lily said: I like the cat. Tom said: I like the cat. Lily said: I like the dog. Tom said:",
             "The sun was hot"]
    with Model(path) as m:
        prompts = [m.tokenize(t) for t in texts] + [_repetitive(m.n_vocab, s) for s in range(3)]
    drafted, accepted = _check_same(path, prompts, 80, threads=2)
    assert drafted > 0 and accepted > 0, (drafted, accepted)


def test_generation_stats_and_api(models):
    path = models / "TinyStories-656K-Q8_0.gguf"
    text = "Tom said: the cat sat on the mat. " * 4 + "Tom said:"
    with Model(path, threads=2) as plain, Model(path, threads=2, draft="ngram", draft_max=4) as spec:
        a = plain.generate(text, max_tokens=40, temperature=0)
        b = spec.generate(text, max_tokens=40, temperature=0)
        assert a == b
        s = spec.last_stats
        assert s.draft_tokens > 0 and 0 <= s.accepted_tokens <= s.draft_tokens
        assert plain.last_stats.draft_tokens == 0
        assert s.completion_tokens == plain.last_stats.completion_tokens
        # sampled requests draft too (rejection sampling: tests/test_spec_sample.py)
        spec.generate(text, max_tokens=20, temperature=0.8, seed=3)
        assert spec.last_stats.draft_tokens > 0
        assert spec.stats().kv_blocks_used == 0
    for bad in (dict(draft="mtp"), dict(draft="ngram", draft_max=0), dict(draft="ngram", draft_max=33),
                dict(draft="ngram", draft_ngram=0)):
        with pytest.raises(ValueError):
            Model(path, **bad)


def test_max_tokens_and_context_stop_inside_a_draft(models):
    """max_tokens and the context end fall inside accepted runs: the same lengths as plain."""
    path = models / "TinyStories-656K-Q8_0.gguf"
    with Model(path, threads=2, context=96) as m:
        ids = _repetitive(m.n_vocab, 7, period=7, reps=8)      # 61 tokens
        for n in (1, 2, 5, 9, 200):                             # 200: the context (96) ends it
            plain, ev0 = _run(m, ids, n, PLAIN)
            spec, ev = _run(m, ids, n, SPEC)
            assert spec == plain and ev[2] == ev0[2], (n, spec, plain)
        assert m.stats().kv_blocks_used == 0


def test_batched_spec_with_plain_requests(models):
    """Speculating and plain requests in one engine, queued together: each gives the tokens
    it gives alone, several tokens per step for the speculating ones."""
    path = models / "TinyStories-656K-Q8_0.gguf"
    with Model(path) as m:
        prompts = [_repetitive(m.n_vocab, s, period=5 + s) for s in range(6)]
        prompts += [m.tokenize("Once upon a time"), m.tokenize("Lily had a red ball. Lily had a")]
    with Model(path, threads=2) as m:
        alone = [_run(m, ids, 48, PLAIN)[0] for ids in prompts]
    with Model(path, threads=2, parallel=4, batch_tokens=24) as m:
        with m._sched.cv:                   # all queued before the first step
            reqs = [m._sched.submit(ids, 48, 0.0, 0, 1.0, 0, SPEC if i % 2 == 0 else PLAIN)
                    for i, ids in enumerate(prompts)]
        got = [list(r.tokens()) for r in reqs]
        assert got == alone
        assert sum(r.last[10] for r in reqs[::2]) > 0
        st = m.stats()
        assert st.running == 0 and st.kv_blocks_used == 0 and st.kv_blocks_reserved == 0, st
        assert st.steps < sum(len(g) for g in got)


# ---------------------------------------------------------------------------- Gemma toys


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """{"gemma3": gguf, "gemma4": gguf}: F32 toys of gemma4_ref (sliding window 8; the
    Gemma 4 one ple_shared: 5 KV-shared layers), embedding scaled by 0.1 as in
    test_gemma4.py's g4_wander so greedy output wanders instead of repeating one token."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import gemma4_ref as R
    from test_gemma4 import scale_embedding

    from gemma4stack.convert import convert
    root = tmp_path_factory.mktemp("spec_toys")
    out = {}
    d = R.build_gemma3(root / "g3", seed=2)
    scale_embedding(d, 0.1)
    convert(d, root / "g3.gguf", type="f32")
    out["gemma3"] = root / "g3.gguf"
    d = R.build_gemma4(root / "g4", "ple_shared", seed=1)
    scale_embedding(d, 0.1)
    convert(d, root / "g4.gguf", type="f32")
    out["gemma4"] = root / "g4.gguf"
    return out


@pytest.mark.parametrize("arch", ["gemma3", "gemma4"])
def test_toy_spec_equals_greedy_across_sliding_window(toys, arch):
    """70 generated tokens past a window of 8 (the sliding layers' blocks are released as
    the sequence advances; a rejected draft must not have released what the accepted
    length still needs), plus batched with plain requests."""
    from batch_check import random_prompts
    prompts = [_repetitive(512, s, period=p) for s, p in ((0, 5), (1, 9), (2, 31))]
    prompts += random_prompts(512, lengths=(7, 40), seed=3, bos=2)
    drafted, accepted = _check_same(toys[arch], prompts, 70, threads=2)
    assert drafted > 0 and accepted > 0, (drafted, accepted)
    with Model(toys[arch], threads=2) as m:
        alone = [_run(m, ids, 40, PLAIN)[0] for ids in prompts]
    with Model(toys[arch], threads=2, parallel=3, batch_tokens=16) as m:
        with m._sched.cv:
            reqs = [m._sched.submit(ids, 40, 0.0, 0, 1.0, 0, PLAIN if i == 1 else SPEC)
                    for i, ids in enumerate(prompts)]
        assert [list(r.tokens()) for r in reqs] == alone
        assert m.stats().kv_blocks_used == 0


# ---------------------------------------------------------------------------- Gemma 3 270M

DOC = """Invoice 2024-117
Customer: Harbor Street Bakery, 14 Harbor Street, Portsmouth
Contact: Maria Delgado (maria.delgado@harborbakery.example)
Items: 40 kg rye flour at 2.10 per kg; 12 boxes of parchment paper at 6.50 per box
Due date: 30 June 2024
Payment: bank transfer to account GB29 NWBK 6016 1331 9268 19
"""


def extraction_prompt() -> str:
    """A document and a question whose answer quotes it (used by benchmarks/bench_spec.py)."""
    return (DOC + "\nCopy the customer, contact and payment lines of the invoice above exactly.\n\n"
            "Customer:")


def test_gemma3_270m_extraction_accepts_drafts(gemma3_270m_path):
    with Model(gemma3_270m_path, threads=2, context=512) as plain, \
            Model(gemma3_270m_path, threads=2, context=512, draft="ngram") as spec:
        a = plain.generate(extraction_prompt(), max_tokens=48, temperature=0)
        b = spec.generate(extraction_prompt(), max_tokens=48, temperature=0)
        assert a == b
        s = spec.last_stats
        print(repr(b), s)
        assert s.accepted_tokens > 0, s
        assert spec.stats().kv_blocks_used == 0
