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


# ---- a Unsloth-style mixed Gemma 4 (tests/quant_mix.py) -------------------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(path, {tensor: type}, numpy reference logits, token ids) of the mixed toy."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import gemma4_ref as R
    import quant_mix
    d = tmp_path_factory.mktemp("quant_mix")
    path, types = quant_mix.build_mixed(d)
    ids = [2] + [int(i) for i in np.random.default_rng(0).integers(5, 512, 47)]
    return path, types, R.numpy_forward(path, ids), ids


def _rms_rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)))


def test_mixed_model_logits_match_float_reference(mixed):
    """Every new type is in the file, and the core's logits follow the numpy forward pass over
    the same (gguf-py-dequantized) weights. The core, as llama.cpp, rounds activations to 8-bit
    blocks (Q8_K, Q8_0 for IQ4_NL/Q8_0) before each integer dot; that rounding is the only
    difference. test_gemma4.py derives its bound for it (1.5 x the logit error of Q8_0 weights,
    measured 0.010-0.057 on the toys); here it measures 0.02. One type decoded wrongly moves
    the logits by O(1) (its tensors are as large as the others)."""
    from gemma4stack import Model
    path, types, ref, ids = mixed
    assert set(NEW_QTYPES) <= set(types.values())
    with Model(path, threads=2) as m:
        got = m.logits(ids)
    assert np.isfinite(got).all()
    assert _rms_rel(got, ref) <= 0.06, _rms_rel(got, ref)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_mixed_model_split_in_three_gives_the_same_logits(mixed, tmp_path):
    """The same tensors and metadata as 3 shards (gguf-py's writer, gguf-split's naming and
    keys): opened from the first or the last shard, the logits are bit-identical."""
    from gemma4stack import Model
    import quant_mix
    path, _, _, ids = mixed
    with Model(path, threads=2) as m:
        single = m.logits(ids)
    shards = quant_mix.split(path, tmp_path / "split", 3)
    for p in (shards[0], shards[2]):
        with Model(p, threads=2) as m:
            assert np.array_equal(m.logits(ids), single), p.name
