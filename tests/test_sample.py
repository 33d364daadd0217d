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
