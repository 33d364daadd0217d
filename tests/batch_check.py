"""Batched decoding against decoding alone (issue: continuous batching, "Done when").

check_batch_matches_alone(path, prompts) decodes each prompt greedily on its own
(parallel=1), then all of them together in one engine (parallel=len(prompts)): half
submitted at once, before the first step, the other half joining the running batch after
a few steps (continuous batching), prompts prefilled in chunks beside the others' decode
tokens. Each sequence must give the same tokens. A divergence is allowed only where the
two best logits of the sequence alone are within 1e-3 of the logit scale (max |logit|),
where any float difference may pick either; the function returns those places.
"""
from __future__ import annotations

import numpy as np

from gemma4stack import Model


def _greedy(m: Model, ids: list[int], max_tokens: int) -> list[int]:
    req = m._submit(ids, (max_tokens, 0.0, 0, 1.0, 0, []))
    return list(req.tokens())


def check_batch_matches_alone(path, prompts: list[list[int]], max_tokens: int = 24,
                              batch_tokens: int = 48, **model_kw) -> list[str]:
    with Model(path, parallel=1, **model_kw) as m:
        alone = [_greedy(m, ids, max_tokens) for ids in prompts]
    n = len(prompts)
    first, later = list(range(0, n, 2)), list(range(1, n, 2))
    with Model(path, parallel=n, batch_tokens=batch_tokens, **model_kw) as m:
        args = (max_tokens, 0.0, 0, 1.0, 0, [])
        with m._sched.cv:                         # all of them queued before the first step
            reqs = {i: m._submit(prompts[i], args) for i in first}
        got: dict[int, list[int]] = {i: [] for i in range(n)}
        its = {i: reqs[i].tokens() for i in first}
        for _ in range(3):                        # a few steps, then the others join
            for i in first:
                tok = next(its[i], None)
                if tok is not None:
                    got[i].append(tok)
        for i in later:
            reqs[i] = m._submit(prompts[i], args)
            its[i] = reqs[i].tokens()
        for i in range(n):
            got[i] += list(its[i])
        st = m.stats()
        assert st.running == 0 and st.kv_blocks_used == 0 and st.kv_blocks_reserved == 0, st
        # the batch really was shared: fewer steps than tokens produced
        assert st.steps < sum(len(g) for g in got.values()), st
        ties = []
        for i in range(n):
            a, b = alone[i], got[i]
            if a == b:
                continue
            j = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
            lg = m.logits(prompts[i] + a[:j])[-1]
            top2 = np.sort(lg)[-2:]
            gap, scale = float(top2[1] - top2[0]), float(np.abs(lg).max())
            assert gap <= 1e-3 * scale, (
                f"prompt {i}: batched decode diverges at token {j} ({a[j:j + 3]} alone, "
                f"{b[j:j + 3]} batched) where the best two logits are {gap:.3g} apart "
                f"(scale {scale:.3g})")
            ties.append(f"prompt {i} token {j}: near-tie {gap:.2g} of {scale:.2g}")
        return ties


def random_prompts(n_vocab: int, lengths=(5, 9, 17, 33, 40, 63, 70, 100), seed: int = 0,
                   bos: int | None = None) -> list[list[int]]:
    """Eight prompts of different lengths (some past a 32-position KV block, some past a
    64-token prefill chunk) of random ids from 3..n_vocab-1 (no control tokens)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(3, n_vocab, size=n).tolist()
        out.append(([bos] if bos is not None else []) + ids)
    return out
