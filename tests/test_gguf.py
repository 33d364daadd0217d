"""The GGUF reader and the quant references against independent implementations.

References: the `gguf` package (llama.cpp's gguf-py: GGUFReader, gguf.quants, which
implements ggml's reference rounding bit for bit), numpy's float16 and torch's bfloat16
conversions, and the HF safetensors release of TinyStories-656K.
The malformed corpus is tests/data/bad-gguf (written by tests/data/make_bad_gguf.py).
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

import gemma4stack
from gemma4stack import _core
from gemma4stack.gguf import GGUFFile, TensorInfo, read_gguf

CORPUS = Path(__file__).parent / "data" / "bad-gguf"
MODEL_FILES = ["stories260K.gguf", "TinyStories-656K-Q8_0.gguf", "ggml-vocab-llama-spm.gguf"]
Q8_0, Q4_0 = int(GGMLQuantizationType.Q8_0), int(GGMLQuantizationType.Q4_0)
F16, BF16 = int(GGMLQuantizationType.F16), int(GGMLQuantizationType.BF16)


# ---- the reader agrees with gguf-py on the shared models ----------------------------------------

def reference_value(field):
    """A GGUFReader field as a Python value (arrays of arrays come back flattened)."""
    t = field.types[0]
    if t == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if t == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "surrogateescape")
    v = field.parts[field.data[0]].tolist()[0]
    return bool(v) if t == GGUFValueType.BOOL else v


@pytest.mark.parametrize("name", MODEL_FILES)
def test_reader_matches_gguf_py(models, name):
    path = models / name
    ours, ref = read_gguf(path), GGUFReader(path)
    ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.version == ref.fields["GGUF.version"].parts[-1][0]
    assert ours.file_size == path.stat().st_size
    assert ours.data_offset == ref.data_offset
    assert ours.alignment == ref.alignment
    assert list(ours.metadata) == list(ref_fields)            # same keys, same order
    for key, field in ref_fields.items():
        want, got = reference_value(field), ours.metadata[key]
        if field.types[0] == GGUFValueType.FLOAT32:
            assert np.float32(got) == np.float32(want), key   # a float32 widened to double, exactly
        elif field.types[0] == GGUFValueType.ARRAY and field.types[-1] == GGUFValueType.FLOAT32:
            assert np.array_equal(np.array(got, np.float32), np.array(want, np.float32)), key
        else:
            assert got == want and type(got) is type(want), key
    assert len(ours.tensors) == len(ref.tensors)
    data = path.read_bytes()
    for t, r in zip(ours.tensors, ref.tensors):
        assert t.name == r.name
        assert t.type == int(r.tensor_type) and t.type_name == r.tensor_type.name
        assert list(t.shape) == [int(x) for x in r.shape]
        assert ours.data_offset + t.offset == r.data_offset
        assert t.nbytes == r.n_bytes
        assert t.n_elements == r.n_elements
        start = ours.data_offset + t.offset
        assert data[start:start + t.nbytes] == r.data.tobytes()


def test_model_facts(models):
    """Counts from ../shared/models/SOURCES.md."""
    s = read_gguf(models / "stories260K.gguf")
    assert len(s.tensors) == 48 and s.type_counts() == {"F32": 48}
    assert s.metadata["llama.embedding_length"] == 64 and s.architecture == "llama"
    t = read_gguf(models / "TinyStories-656K-Q8_0.gguf")
    assert t.type_counts() == {"Q8_0": 15, "F32": 5}
    assert t.metadata["general.file_type"] == 7 and len(t.metadata["tokenizer.ggml.tokens"]) == 2048
    v = read_gguf(models / "ggml-vocab-llama-spm.gguf")
    assert v.tensors == [] and len(v.metadata["tokenizer.ggml.tokens"]) == 32000
    assert v.data_offset > v.file_size   # tensor-less file: the data section starts past the end


def test_dataclasses(models):
    f = read_gguf(models / "TinyStories-656K-Q8_0.gguf")
    assert isinstance(f, GGUFFile) and isinstance(f.tensors[0], TensorInfo)
    emb = f.tensor("token_embd.weight")
    assert emb.shape == (128, 2048) and emb.n_elements == 128 * 2048 and emb.nbytes == 2048 * 4 * 34
    assert f.n_parameters == 656_000   # the model's name: TinyStories-656K
    d = json.loads(json.dumps(f.to_dict()))
    assert d["tensors"][1]["name"] == emb.name and d["metadata"]["general.architecture"] == "llama"
    h = f._repr_html_()
    assert "llama" in h and "token_embd.weight" in h and "Q8_0" in h
    with pytest.raises(KeyError):
        f.tensor("nope")


# ---- quantization agrees with gguf.quants (ggml's reference rounding) ------------------------

def test_dequantize_q8_0_tensors_match_gguf_py(models):
    ref = GGUFReader(models / "TinyStories-656K-Q8_0.gguf")
    n = 0
    for t in ref.tensors:
        if t.tensor_type != GGMLQuantizationType.Q8_0:
            continue
        want = dequantize(t.data, t.tensor_type).reshape(-1)
        got = np.frombuffer(_core.dequantize(Q8_0, t.data.tobytes(), t.n_elements), np.float32)
        assert np.array_equal(got, want), t.name
        n += 1
    assert n == 15


@pytest.mark.parametrize("gguf_name,hf_name", [
    ("token_embd.weight", "lm_head.weight"),                       # tied: the HF file keeps lm_head
    ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),   # v is not permuted
    ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
])
def test_q8_0_matches_f32_release(models, shared, gguf_name, hf_name):
    """llama.cpp quantized the HF F32 release into this file: our quantizer reproduces its
    bytes exactly, and our dequantization is within the Q8_0 error bound of the F32 values."""
    from safetensors.numpy import load_file
    want = load_file(shared / "models" / "tinystories-656k-hf" / "model.safetensors")[hf_name]
    f = read_gguf(models / "TinyStories-656K-Q8_0.gguf")
    t = f.tensor(gguf_name)
    assert t.shape == want.shape[::-1]                              # ggml order is numpy's reversed
    raw = (models / "TinyStories-656K-Q8_0.gguf").read_bytes()[f.data_offset + t.offset:][:t.nbytes]
    assert _core.quantize(Q8_0, want.tobytes()) == raw
    got = np.frombuffer(_core.dequantize(Q8_0, raw, t.n_elements), np.float32).reshape(-1, 32)
    want = want.reshape(-1, 32)
    d = np.abs(want).max(axis=1, keepdims=True) / 127               # the fp32 step used to round
    d16 = d.astype(np.float16).astype(np.float32)                   # the step stored and used to decode
    err = np.abs(got - want)
    assert np.all(err <= d / 2 + 127 * np.abs(d - d16) + 1e-7)
    assert err.max() > 0                                             # really quantized


def random_rows(seed: int, n: int = 32 * 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    x[:32] = 0                                   # an all-zero block (d = 0)
    x[32:64] = np.arange(32, dtype=np.float32)   # exact values, ties in x * id
    x[64:96] *= 1e-6                             # tiny scales (subnormal fp16 d)
    x[96:128] *= 1e4                             # large scales
    x[128:160] = -x[128:160]
    x[160:192] = np.round(x[160:192] * 4) / 4    # many exact .5 products
    return x


@pytest.mark.parametrize("qtype", [Q8_0, Q4_0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_matches_gguf_py_bit_for_bit(qtype, seed):
    x = random_rows(seed)
    want = quantize(x.reshape(-1, 32), GGMLQuantizationType(qtype)).tobytes()
    got = _core.quantize(qtype, x.tobytes())
    assert got == want
    back = np.frombuffer(_core.dequantize(qtype, got, x.size), np.float32)
    assert np.array_equal(back, dequantize(np.frombuffer(want, np.uint8), GGMLQuantizationType(qtype)).reshape(-1))


def special_floats() -> np.ndarray:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    vals = [0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e30, -1e30, np.inf, -np.inf,
            2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14, 1 + 2.0**-11, 1 + 3 * 2.0**-11,
            np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45]
    x = np.concatenate([bits.view(np.float32), np.array(vals, np.float32),
                        rng.standard_normal(10_000).astype(np.float32) * 1e-5])
    return x[~np.isnan(x)]


def test_fp16_matches_numpy():
    x = special_floats()
    got = np.frombuffer(_core.quantize(F16, x.tobytes()), np.uint16)
    with np.errstate(over="ignore"):   # values beyond 65504 become inf, as they should
        want = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(got, want)
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    back = np.frombuffer(_core.dequantize(F16, every.tobytes(), 65536), np.float32)
    ref = every.view(np.float16).astype(np.float32)
    assert np.array_equal(back, ref, equal_nan=True)


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    x = special_floats()
    got = np.frombuffer(_core.quantize(BF16, x.tobytes()), np.uint16)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(got, want)
    nan = np.frombuffer(_core.quantize(BF16, np.array([np.nan], np.float32).tobytes()), np.uint16)
    assert (nan[0] & 0x7F80) == 0x7F80 and (nan[0] & 0x7F) != 0


# ---- matvec: llama.cpp's numerics -----------------------------------------------------------

def llama_cpp_matvec(w_bytes: bytes, qtype: int, rows: int, cols: int, x: np.ndarray) -> np.ndarray:
    """x -> Q8_0 (gguf.quants), then per block float(sumi) * (d_w * d_x) summed in float32,
    as ggml_vec_dot_{q4_0,q8_0}_q8_0 do."""
    xq = quantize(x.reshape(-1, 32), GGMLQuantizationType.Q8_0).reshape(-1, 34)
    xd = xq[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    xs = xq[:, 2:].view(np.int8).astype(np.int32)
    bs = 34 if qtype == Q8_0 else 18
    wb = np.frombuffer(w_bytes, np.uint8).reshape(rows, cols // 32, bs)
    wd = wb[:, :, :2].copy().view(np.float16).astype(np.float32)[..., 0]
    if qtype == Q8_0:
        ws = wb[:, :, 2:].view(np.int8).astype(np.int32)
    else:
        qs = wb[:, :, 2:]
        ws = np.concatenate([(qs & 15).astype(np.int32) - 8, (qs >> 4).astype(np.int32) - 8], axis=2)
    sumi = (ws * xs[None]).sum(axis=2).astype(np.float32)         # exact ints, then float
    y = np.zeros(rows, np.float32)
    for b in range(cols // 32):                                    # sequential float32 sum
        y = (y + sumi[:, b] * (wd[:, b] * xd[b])).astype(np.float32)
    return y


@pytest.mark.parametrize("qtype", [Q8_0, Q4_0])
def test_matvec_matches_llama_cpp_formula(qtype):
    rng = np.random.default_rng(3)
    rows, cols = 16, 32 * 300          # more than one 256-block chunk
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    wq = _core.quantize(qtype, w.tobytes())
    got = np.frombuffer(_core.matvec(qtype, wq, rows, cols, x.tobytes()), np.float32)
    want = llama_cpp_matvec(wq, qtype, rows, cols, x)
    assert np.array_equal(got, want)


def test_matvec_float_types():
    rng = np.random.default_rng(4)
    rows, cols = 8, 1000
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    exact = w.astype(np.float64) @ x.astype(np.float64)
    got = np.frombuffer(_core.matvec(0, w.tobytes(), rows, cols, x.tobytes()), np.float32)
    assert np.allclose(got, exact, rtol=1e-6, atol=1e-5)
    w16 = w.astype(np.float16)
    got = np.frombuffer(_core.matvec(F16, w16.tobytes(), rows, cols, x.tobytes()), np.float32)
    assert np.allclose(got, w16.astype(np.float64) @ x.astype(np.float64), rtol=1e-6, atol=1e-5)


def test_type_table_matches_gguf_py():
    for t, (blck, size) in GGML_QUANT_SIZES.items():
        if int(t) >= 42:
            continue   # newer than our table
        name, b, s, supported = _core.type_info(int(t))
        assert name == t.name and b == blck
        # gguf-py keeps Q8_1 at 40 bytes (an old float d/s layout); ggml's block_q8_1 is 36
        assert s == (36 if t == GGMLQuantizationType.Q8_1 else size), t.name
        assert supported == (t.name in {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
                                         "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S",
                                         "IQ1_M"})
    with pytest.raises(ValueError):
        _core.type_info(4)
    with pytest.raises(gemma4stack.UnsupportedError, match="Q4_K"):
        _core.quantize(int(GGMLQuantizationType.Q4_K), np.zeros(256, np.float32).tobytes())


# ---- malformed files ----------------------------------------------------------------------

EXC = {"FORMAT": "GGUFError", "UNSUPPORTED": "UnsupportedError", "LIMIT": "LimitError"}


def manifest() -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in (CORPUS / "MANIFEST.txt").read_text().splitlines()]


@pytest.mark.parametrize("fname,status,keyword", manifest(), ids=[m[0] for m in manifest()])
def test_malformed_corpus(fname, status, keyword):
    path = CORPUS / fname
    if status == "OK":
        read_gguf(path)
        return
    with pytest.raises(Exception) as ei:
        read_gguf(path)
    assert type(ei.value).__name__ == EXC[status], (fname, ei.value)
    assert keyword in str(ei.value), (fname, str(ei.value))
    assert isinstance(ei.value, ValueError)


def test_corpus_is_current(tmp_path):
    """The committed corpus is exactly what the generator writes today (deterministic)."""
    spec = importlib.util.spec_from_file_location("make_bad_gguf", CORPUS.parent / "make_bad_gguf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in CORPUS.iterdir())
    for name in fresh:
        assert (tmp_path / name).read_bytes() == (CORPUS / name).read_bytes(), name
    assert len(manifest()) >= 40


def test_nested_arrays_are_nested():
    md = read_gguf(CORPUS / "valid_nested.gguf").metadata
    assert md["test.nested"] == [[[[[[[[7]]]]]]]]
    assert md["test.nested_strs"] == [["a", "b"], ["c"]]


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no/such/model.gguf"):
        read_gguf("/no/such/model.gguf")
    with pytest.raises(IsADirectoryError):
        read_gguf("/tmp")


@pytest.mark.parametrize("env,value,model", [
    ("GEMMA4STACK_MAX_TENSORS", "10", "stories260K.gguf"),
    ("GEMMA4STACK_MAX_KV", "10", "stories260K.gguf"),
    ("GEMMA4STACK_MAX_ARRAY_LEN", "1000", "ggml-vocab-llama-spm.gguf"),
    ("GEMMA4STACK_MAX_STRING_LEN", "4", "TinyStories-656K-Q8_0.gguf"),
    ("GEMMA4STACK_MAX_METADATA_BYTES", "4096", "ggml-vocab-llama-spm.gguf"),
])
def test_caps_raise_limit_error(models, monkeypatch, env, value, model):
    monkeypatch.setenv(env, value)
    with pytest.raises(gemma4stack.LimitError, match=env):
        read_gguf(models / model)
    monkeypatch.setenv(env, "abc")
    with pytest.raises(ValueError, match=env):
        read_gguf(models / model)
    monkeypatch.delenv(env)
    read_gguf(models / model)


def test_open_reads_headers_only(tmp_path):
    """A 16 GiB tensor in a sparse file opens in well under a second: only the headers are
    parsed (the data is mmapped and bounds-checked, never read)."""
    path = tmp_path / "big.gguf"
    w = GGUFWriter(path, arch="llama")
    n = 1 << 32                                              # 2^32 F32 = 16 GiB
    w.add_tensor_info("big.weight", (1 << 16, 1 << 16), np.dtype(np.float32), n * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    head = path.stat().st_size
    data_start = (head + 31) // 32 * 32
    os.truncate(path, data_start + n * 4)                  # sparse: no blocks allocated
    t0 = time.perf_counter()
    f = read_gguf(path)
    assert time.perf_counter() - t0 < 0.5
    assert f.tensors[0].nbytes == n * 4 and f.tensors[0].shape == (1 << 16, 1 << 16)
    os.truncate(path, data_start + n * 4 - 1)              # one byte short: refused
    with pytest.raises(gemma4stack.GGUFError, match="past end of file"):
        read_gguf(path)
