"""gemma4stack._core.sample against numpy: argmax, softmax frequencies
(chi-square), top-k and top-p supports computed by full sort."""
import numpy as np
import pytest

from gemma4stack import _core


def softmax(x, t=1.0):
    z = (x.astype(np.float64) - x.max()) / t
    e = np.exp(z)
    return e / e.sum()


def chi_square(counts, p):
    keep = p > 0
    e = p[keep] * counts.sum()
    return float(((counts[keep] - e) ** 2 / e).sum()), int(keep.sum()) - 1


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=5000).astype(np.float32)
        assert _core.sample(x, temperature=0.0) == int(np.argmax(x))
        assert _core.sample(x, temperature=2.0, top_k=1, seed=3) == int(np.argmax(x))
    tie = np.array([0, 5, 1, 5], dtype=np.float32)
    assert _core.sample(tie, temperature=0.0) == 1       # lowest id on ties


def test_same_seed_same_draws():
    x = np.random.default_rng(1).normal(size=300).astype(np.float32)
    a = _core.sample(x, 1.0, 0, 1.0, 42, n=500)
    assert a == _core.sample(x, 1.0, 0, 1.0, 42, n=500)
    assert a != _core.sample(x, 1.0, 0, 1.0, 43, n=500)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_frequencies_match_softmax(temperature):
    x = np.array([1.0, 2.0, 0.5, -1.0, 3.0, 2.5, 0.0, 1.5], dtype=np.float32)
    draws = np.array(_core.sample(x, temperature, 0, 1.0, 5, n=100_000))
    counts = np.bincount(draws, minlength=len(x)).astype(np.float64)
    p = softmax(x, temperature)
    assert np.abs(counts / counts.sum() - p).max() < 0.008
    chi2, dof = chi_square(counts, p)
    assert chi2 < 24.3   # chi-square(7) 99.9% quantile


def test_top_k_and_top_p_supports():
    rng = np.random.default_rng(2)
    x = (rng.random(20_000) * 10).astype(np.float32)
    order = np.argsort(-x, kind="stable")
    top40 = set(order[:40].tolist())
    assert set(_core.sample(x, 1.0, 40, 1.0, 1, n=2000)) <= top40
    p = softmax(x)[order]
    nucleus = set(order[: int(np.searchsorted(np.cumsum(p), 0.5)) + 1].tolist())
    got = set(_core.sample(x, 1.0, 0, 0.5, 2, n=1000))
    assert got <= nucleus
    # the tail is excluded: with four tokens of mass .5 .3 .15 .05, top_p=.75 keeps two
    y = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    draws = _core.sample(y, 1.0, 0, 0.75, 3, n=20_000)
    assert set(draws) == {0, 1}
    assert abs(draws.count(0) / len(draws) - 0.5 / 0.8) < 0.02


def test_bad_logits():
    with pytest.raises(ValueError):
        _core.sample(np.zeros(4, dtype=np.float64))
    with pytest.raises(ValueError):
        _core.sample(np.zeros(0, dtype=np.float32))


# ---- the extended chain (_core.sample_ex) against the formulas in numpy ----

def log_softmax(x):
    x = x.astype(np.float64)
    keep = np.isfinite(x)
    m = x[keep].max()
    return x - m - np.log(np.exp(x[keep] - m).sum())


def penalized(x, history, last_n, repeat, presence, frequency):
    """llama.cpp llama_sampler_penalties_apply (src/llama-sampling.cpp) with OpenAI's
    presence/frequency definition (API guide, 'Frequency and presence penalties')."""
    y = x.astype(np.float64).copy()
    window = history if last_n < 0 else history[len(history) - last_n:] if last_n else []
    ids, counts = np.unique(np.array(window, dtype=np.int64), return_counts=True)
    for i, c in zip(ids, counts):
        y[i] = y[i] * repeat if y[i] <= 0 else y[i] / repeat
        y[i] -= c * frequency + (c > 0) * presence
    return y


def test_penalties_and_bias_reference():
    rng = np.random.default_rng(7)
    x = rng.normal(size=500).astype(np.float32)
    hist = rng.integers(0, 500, size=80).tolist()
    bias = {3: 2.5, 11: -1.0}
    kw = dict(repeat_penalty=1.3, repeat_last_n=50, presence_penalty=0.4, frequency_penalty=0.3)
    ref = x.astype(np.float64)
    for k, v in bias.items():
        ref[k] += v                                   # logit bias first (common/sampling.cpp)
    ref = penalized(ref, hist, 50, 1.3, 0.4, 0.3)
    tok, chosen, top = _core.sample_ex(x, temperature=0.0, logit_bias=bias, history=hist, n_top=5, **kw)
    assert tok == int(np.argmax(ref))
    lp = log_softmax(ref)
    assert abs(chosen - lp[tok]) < 1e-4
    order = np.argsort(-ref, kind="stable")[:5]
    assert [i for i, _ in top] == order.tolist()
    assert np.allclose([v for _, v in top], lp[order], atol=1e-4)


def test_logprobs_ignore_temperature_and_truncation():
    x = np.array([2.0, 1.0, 0.5, -1.0], dtype=np.float32)
    lp = log_softmax(x)
    for t, k, p in [(1.0, 0, 1.0), (0.3, 2, 0.5), (2.0, 1, 1.0)]:
        tok, chosen, top = _core.sample_ex(x, temperature=t, top_k=k, top_p=p, n_top=4, seed=1)
        assert abs(chosen - lp[tok]) < 1e-5
        assert np.allclose([v for _, v in top], lp, atol=1e-5)


def test_mask_restricts_and_logprobs_renormalize():
    n = 1000
    x = np.random.default_rng(3).normal(size=n).astype(np.float32)
    allowed = [5, 77, 640, 999]
    mask = np.zeros((n + 31) // 32, dtype=np.uint32)
    for i in allowed:
        mask[i // 32] |= np.uint32(1 << (i % 32))
    draws = _core.sample_ex(x, mask=mask, seed=4, n=3000)
    assert set(draws) <= set(allowed) and len(set(draws)) == 4
    masked = np.full(n, -np.inf)
    masked[allowed] = x[allowed]
    p = softmax(masked[allowed])
    freq = np.bincount(draws, minlength=n)[allowed] / len(draws)
    assert np.abs(freq - p).max() < 0.04
    tok, chosen, top = _core.sample_ex(x, mask=mask, temperature=0, n_top=10)
    assert len(top) == 4 and {i for i, _ in top} == set(allowed)
    assert abs(sum(np.exp(v) for _, v in top) - 1.0) < 1e-5
    with pytest.raises(ValueError, match="allows no token"):
        _core.sample_ex(x, mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="words"):
        _core.sample_ex(x, mask=mask[:3])


def test_min_p_support():
    x = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05], dtype=np.float32))
    draws = _core.sample_ex(x, min_p=0.3, seed=9, n=20_000)
    assert set(draws) == {0, 1, 2}                  # p >= 0.3 * 0.4 = 0.12
    assert abs(draws.count(0) / len(draws) - 0.4 / 0.85) < 0.02
