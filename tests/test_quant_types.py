"""Q2_K, Q3_K and the i-quants against gguf-py, element for element.

Reference: the `gguf` package's numpy dequantizers (gguf.quants.dequantize), written
independently of our C decoders from llama.cpp's ggml-quants.c. Our dequantizer must give the
same float32 for every element of random blocks (random payload bytes, finite fp16 scales): the
formats define each value as a product of the block's scale factors evaluated in a fixed order,
and ours folds only powers of two into them (quant.h g4_kq_block), so equality is exact.
The products (tests/test_kernels.py test_matmul_matches_dequantized_product covers these types
on every ISA against float64) must in addition be bit-identical across ISAs here: the vector
kernels compute the same exact integers per block and the same float steps as the reference.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

from gemma4stack import _core
from test_kernels import NEW_QTYPES, random_weights

ISAS = [name for name, ok in _core.isas().items() if ok]


@pytest.mark.parametrize("qtype", NEW_QTYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf_py_exactly(qtype):
    rng = np.random.default_rng(int(qtype) + 100)
    bs, ts = GGML_QUANT_SIZES[qtype]
    n = 256 * 64
    w = random_weights(rng, qtype, 1, n)
    assert len(w) == n // bs * ts
    ref = dequantize(np.frombuffer(w, np.uint8), qtype).astype(np.float32).reshape(-1)
    got = np.frombuffer(_core.dequantize(int(qtype), w, n), np.float32)
    assert np.isfinite(ref).all()
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, f"{qtype.name}: {bad.size} elements differ, first at {bad[0]}: {got[bad[0]]} vs {ref[bad[0]]}"


@pytest.mark.parametrize("qtype", NEW_QTYPES, ids=lambda t: t.name)
def test_type_info_and_vec_dot_type(qtype):
    name, bs, ts, supported = _core.type_info(int(qtype))
    assert (name, supported) == (qtype.name, True)
    assert (bs, ts) == GGML_QUANT_SIZES[qtype]
    want = T.Q8_0 if qtype == T.IQ4_NL else T.Q8_K          # ggml-cpu.c type_traits_cpu[].vec_dot_type
    assert _core.vec_dot_type(int(qtype)) == int(want)


@pytest.mark.parametrize("qtype", NEW_QTYPES, ids=lambda t: t.name)
def test_every_isa_bit_identical_to_scalar(qtype):
    rng = np.random.default_rng(int(qtype) + 200)
    rows, cols, nt = 7, 256 * 6, 3
    w = random_weights(rng, qtype, rows, cols)
    x = rng.standard_normal((nt, cols)).astype(np.float32)
    before = _core.isa()
    try:
        outs = {}
        for isa in ISAS:
            _core.set_isa(isa)
            outs[isa] = _core.matmul(int(qtype), w, rows, cols, x.tobytes(), nt)
    finally:
        _core.set_isa(before)
    ref = np.frombuffer(outs["scalar"], np.float32)
    assert np.isfinite(ref).all()
    for isa, out in outs.items():
        got = np.frombuffer(out, np.float32)
        assert np.array_equal(got, ref), f"{qtype.name} on {isa}: max diff {np.abs(got - ref).max()}"
    # the row-by-row reference (g4_matvec_rows, quantizing x itself) agrees too
    mv = np.frombuffer(_core.matvec(int(qtype), w, rows, cols, x[0].tobytes()), np.float32)
    assert np.array_equal(mv, ref[:rows])
