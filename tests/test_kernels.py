"""The vectorized quant kernels on every ISA this machine has, against independent references.

References: the `gguf` package (llama.cpp's gguf-py) - gguf.quants dequantizes every weight
format and quantizes Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 with ggml's reference rounding; a numpy
transcription of ggml-quants.c quantize_row_q8_K_ref for Q8_K (gguf-py has none); float64
numpy matrix products for the sums. The C tests (tests/c/test_kernels.c, also run on AArch64
under qemu by `make test-arm`) hold every kernel to its scalar reference with derived bounds.

Tolerances: the kernels' integer sums are exact; what differs from an exact float64 product of
the dequantized values is float32 rounding of at most nb + 64 scalings and additions per output
(nb = blocks per row), on terms whose magnitudes are at most twice sum_j |w_j x_j| (the offset
and min terms are applied separately), so |got - exact| <= 2 (nb + 64) 2^-24 * 2 sum_j |w_j x_j|
plus the error of quantizing x, which the reference shares (x is dequantized from the same
quantized bytes). The repacked kernels must equal the scalar reference bit for bit.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

import gemma4stack
from gemma4stack import _core

ISAS = [name for name, ok in _core.isas().items() if ok]
QTYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
# Q2_K, Q3_K and the i-quants (tests/test_quant_types.py checks their dequantizers exactly)
NEW_QTYPES = [T.Q2_K, T.Q3_K, T.IQ4_NL, T.IQ4_XS, T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S,
              T.IQ1_S, T.IQ1_M]
REPACKED = [T.Q4_0, T.Q8_0, T.Q4_K, T.Q6_K, T.Q5_0, T.Q5_K]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def isa(request):
    """Switch the kernels to one ISA for a test, restoring the previous one after."""
    before = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


def random_weights(rng: np.random.Generator, qtype: T, rows: int, cols: int, mag: float = 1.0) -> bytes:
    """Blocks of random payload bytes with finite fp16 scales of about 0.01 * mag (random bytes
    would make some of them inf/NaN)."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    nb = rows * cols // bs
    raw = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
    scale = lambda k: (rng.uniform(0.005, 0.02, (nb, k)) * mag * rng.choice([-1, 1], (nb, k))).astype(np.float16)
    if qtype == T.Q6_K:
        raw[:, 208:210] = scale(1).view(np.uint8)
    elif qtype == T.Q2_K:                              # d, dmin at the end
        raw[:, 80:84] = np.abs(scale(2)).view(np.uint8)
    elif qtype == T.Q3_K:
        raw[:, 108:110] = scale(1).view(np.uint8)
    elif qtype == T.IQ1_M:                             # d in the top nibbles of the 4 scale words
        h = scale(1).view(np.uint16)[:, 0]
        words = raw[:, 48:56].copy().view(np.uint16) & np.uint16(0x0FFF)
        for k in range(4):
            words[:, k] |= ((h >> np.uint16(4 * k)) & np.uint16(0xF)) << np.uint16(12)
        raw[:, 48:56] = words.view(np.uint8)
    elif qtype in (T.Q4_K, T.Q5_K):
        raw[:, 0:4] = np.abs(scale(2)).view(np.uint8)
    elif qtype in (T.Q4_1, T.Q5_1):
        raw[:, 0:4] = scale(2).view(np.uint8)
    else:
        raw[:, 0:2] = scale(1).view(np.uint8)
    return raw.tobytes()


def q8_K_reference(x: np.ndarray) -> bytes:
    """ggml-quants.c quantize_row_q8_K_ref in numpy: per 256 values, max = the value of largest
    magnitude (first of ties), iscale = -127 / max, q = min(127, round half to even of iscale * x),
    d = 1 / iscale, bsums = sums of each 16 q. An all-zero block is d = 0, q = 0, bsums = 0."""
    out = bytearray()
    for blk in x.reshape(-1, 256):
        amax_i = int(np.argmax(np.abs(blk)))
        mx = blk[amax_i]
        if mx == 0:
            out += np.zeros(1, np.float32).tobytes() + bytes(256) + bytes(32)
            continue
        iscale = np.float32(-127.0) / mx
        q = np.minimum(127, np.rint(iscale * blk)).astype(np.int8)
        bsums = q.reshape(16, 16).astype(np.int16).sum(axis=1).astype(np.int16)
        out += (np.float32(1.0) / iscale).astype(np.float32).tobytes() + q.tobytes() + bsums.tobytes()
    return bytes(out)


def dequantize_acts(vdt: int, data: bytes, cols: int) -> np.ndarray:
    """Activation rows back to float64, independently of our dequantizer."""
    if vdt == int(T.Q8_K):
        b = np.frombuffer(data, np.uint8).reshape(-1, 292)
        d = b[:, :4].copy().view(np.float32).astype(np.float64)
        return (d * b[:, 4:260].view(np.int8)).reshape(-1)
    if vdt == int(T.Q8_1):   # d, s, qs: gguf-py has no Q8_1 (its table still has a 40-byte layout)
        b = np.frombuffer(data, np.uint8).reshape(-1, 36)
        d = b[:, :2].copy().view(np.float16).astype(np.float64)
        return (d * b[:, 4:].view(np.int8)).reshape(-1)
    return dequantize(np.frombuffer(data, np.uint8), T(vdt)).astype(np.float64).reshape(-1)


# ---- activation quantizers: bit-identical on every ISA, as ggml rounds ------------------------

@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_quantizers_match_gguf_py(isa):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(256 * 24).astype(np.float32)
    x[:256] = 0                                        # all-zero blocks
    x[256:512] = np.where(np.arange(256) % 2, 2.0, -2.0)   # +-max ties: the first wins
    x[512:768] = np.round(x[512:768] * 4) / 4          # exact .5 products
    x[768:1024] *= 1e-6
    x[1024:1280] *= 1e4
    for qtype in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
        assert _core.quantize(int(qtype), x.tobytes()) == quantize(x.reshape(-1, 32), qtype).tobytes(), qtype.name
    assert _core.quantize(int(T.Q8_K), x.tobytes()) == q8_K_reference(x)
    f16 = np.frombuffer(_core.quantize(int(T.F16), x.tobytes()), np.uint16)
    assert np.array_equal(f16, x.astype(np.float16).view(np.uint16))


# ---- matmul on every ISA against gguf-py's dequantization in float64 --------------------------

@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("qtype", QTYPES + NEW_QTYPES, ids=lambda t: t.name)
def test_matmul_matches_dequantized_product(isa, qtype):
    rng = np.random.default_rng(int(qtype) * 7)
    bs = GGML_QUANT_SIZES[qtype][0]
    for cols in ((256, 4096 + 256) if bs == 256 else (32, 288, 4096 + 256)):
        rows, nt = 13, 5                               # remainders of every register tile
        w = random_weights(rng, qtype, rows, cols)
        x = rng.standard_normal((nt, cols)).astype(np.float32)
        got = np.frombuffer(_core.matmul(int(qtype), w, rows, cols, x.tobytes(), nt), np.float32).reshape(nt, rows)
        W = dequantize(np.frombuffer(w, np.uint8), qtype).astype(np.float64).reshape(rows, cols)
        vdt = _core.vec_dot_type(int(qtype))
        X = np.stack([dequantize_acts(vdt, _core.quantize(vdt, x[t].tobytes()), cols) for t in range(nt)])
        exact = X @ W.T
        if qtype in (T.Q4_1, T.Q5_1):
            # ggml (and we) use Q8_1's s = fp16(d * sum q) for the min term, not sum of dequantized x
            mins = np.frombuffer(w, np.uint8).reshape(-1, GGML_QUANT_SIZES[qtype][1])[:, 2:4].copy()
            m = mins.view(np.float16).astype(np.float64).reshape(rows, cols // 32)
            for t in range(nt):
                xq = np.frombuffer(_core.quantize(vdt, x[t].tobytes()), np.uint8).reshape(-1, 36)
                s = xq[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(-1)
                xs = (xq[:, :2].copy().view(np.float16).astype(np.float64).reshape(-1)
                      * xq[:, 4:].view(np.int8).astype(np.float64).sum(axis=1))
                exact[t] += m @ (s - xs)
        nb = cols // bs
        tol = 4 * (nb + 64) * 2.0**-24 * (np.abs(X) @ np.abs(W).T) + 1e-30
        err = np.abs(got - exact)
        assert (err <= tol).all(), f"{qtype.name} cols={cols}: max err {err.max():.3g}, tol {tol.min():.3g}"


@pytest.mark.parametrize("qtype", NEW_QTYPES, ids=lambda t: t.name)
def test_new_types_bit_identical_to_scalar_for_any_token_count(qtype):
    """Every ISA's kernel gives the scalar reference's floats bit for bit, for one token (the
    decode path, sums kept in registers), a partial pass and several passes of the token
    loop (1, 5, 8, 9, 17 activation rows)."""
    rng = np.random.default_rng(int(qtype) + 101)
    rows, cols = 7, 512
    w = random_weights(rng, qtype, rows, cols)
    before = _core.isa()
    try:
        for nt in (1, 5, 8, 9, 17):
            x = rng.standard_normal((nt, cols)).astype(np.float32).tobytes()
            _core.set_isa("scalar")
            want = _core.matmul(int(qtype), w, rows, cols, x, nt)
            for name in ISAS:
                _core.set_isa(name)
                assert _core.matmul(int(qtype), w, rows, cols, x, nt) == want, (name, nt)
    finally:
        _core.set_isa(before)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_matmul_float_weights(isa):
    rng = np.random.default_rng(5)
    rows, cols, nt = 9, 1000 + 3, 6
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((nt, cols)).astype(np.float32)
    for qtype, wb, W in ((T.F32, w.tobytes(), w.astype(np.float64)),
                         (T.F16, w.astype(np.float16).tobytes(), w.astype(np.float16).astype(np.float64))):
        got = np.frombuffer(_core.matmul(int(qtype), wb, rows, cols, x.tobytes(), nt), np.float32).reshape(nt, rows)
        exact = x.astype(np.float64) @ W.T
        tol = (cols + 32) * 2.0**-24 * (np.abs(x) @ np.abs(W).T)   # OpenBLAS sums in any order
        assert (np.abs(got - exact) <= tol).all(), qtype.name


# ---- repacked weights -------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", REPACKED, ids=lambda t: t.name)
def test_repacked_bit_identical_on_every_isa(qtype):
    rng = np.random.default_rng(21)
    rows, cols, nt = 32, (512 if GGML_QUANT_SIZES[qtype][0] == 256 else 320), 7
    w = random_weights(rng, qtype, rows, cols)
    wp = _core.repack(int(qtype), w, rows, cols)
    assert len(wp) == len(w) and wp != w
    assert _core.repack(int(qtype), wp, rows, cols, True) == w
    x = rng.standard_normal((nt, cols)).astype(np.float32)
    before = _core.isa()
    try:
        _core.set_isa("scalar")
        want = _core.matmul(int(qtype), w, rows, cols, x.tobytes(), nt)
        for name in ISAS:
            _core.set_isa(name)
            assert _core.matmul_x8(int(qtype), wp, rows, cols, x.tobytes(), nt) == want, name
    finally:
        _core.set_isa(before)
    with pytest.raises(ValueError):
        _core.repack(int(qtype), w[: len(w) // rows * 4], 4, cols)   # fewer than 8 rows
    with pytest.raises(ValueError):
        _core.repack(int(T.Q5_1), bytes(24 * 8), 8, 32)


# ---- choosing the ISA -------------------------------------------------------------------------

def _isa_in_subprocess(env_value: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("GEMMA4STACK_ISA", None)
    if env_value is not None:
        env["GEMMA4STACK_ISA"] = env_value
    return subprocess.run([sys.executable, "-c", "from gemma4stack import _core; print(_core.isa())"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_best_isa_is_the_default():
    best = _isa_in_subprocess(None)
    order = ["avx512vnni", "avx512", "avxvnni", "avx2", "neondot", "neon", "scalar"]
    assert best.stdout.strip() == next(name for name in order if name in ISAS)
    assert best.stderr == ""


@pytest.mark.parametrize("name", ISAS)
def test_env_forces_isa(name):
    r = _isa_in_subprocess(name)
    assert r.stdout.strip() == name and r.stderr == ""


def test_env_unknown_or_unavailable_isa_warns():
    r = _isa_in_subprocess("sse9")
    assert "GEMMA4STACK_ISA=sse9" in r.stderr and r.stdout.strip() in ISAS
    missing = [n for n, ok in _core.isas().items() if not ok]
    if missing:
        r = _isa_in_subprocess(missing[0])
        assert "not available" in r.stderr and r.stdout.strip() in ISAS


def test_set_isa_errors():
    with pytest.raises(ValueError, match="unknown ISA"):
        _core.set_isa("sse9")
    missing = [n for n, ok in _core.isas().items() if not ok]
    if missing:
        before = _core.isa()
        with pytest.raises(gemma4stack.UnsupportedError):
            _core.set_isa(missing[0])
        assert _core.isa() == before


# ---- the generation reference tests, once per ISA -----------------------------------------------

GENERATE_TESTS = ROOT / "tests" / "test_generate.py"


@pytest.mark.parametrize("name", ISAS)
def test_generation_reference_tests_pass_on_every_isa(name):
    """tests/test_generate.py (reference token ids of the main job) under GEMMA4STACK_ISA=name."""
    if not GENERATE_TESTS.exists():
        pytest.skip("tests/test_generate.py not written yet")
    env = dict(os.environ, GEMMA4STACK_ISA=name)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(GENERATE_TESTS)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"GEMMA4STACK_ISA={name}:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
