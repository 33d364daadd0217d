"""A tiny Gemma 4 whose weights use every GGUF type of issue 14, as Unsloth's Dynamic and
bartowski's mixed files do (Q2_K ... IQ1_M next to Q4_K/Q6_K/F32), and its split form.

build_mixed(dir) saves a random HF Gemma 4 checkpoint (tests/gemma4_ref.py build_gemma4) with
dimensions that are multiples of 256 (K-quant and i-quant rows), converts it to an F32 GGUF
with `gemma4stack convert`, then rewrites it with gguf-py (GGUFWriter): each 2-D weight matrix
gets a type in turn from MIX (rows of 32 only IQ4_NL), as random blocks whose dequantized
standard deviation matches the F32 tensor's (so activations keep their scale). Both the C core
and the numpy reference (gemma4_ref.numpy_forward, which dequantizes with gguf-py) read these
same bytes. split(src, n) writes the same tensors and metadata as n shards with GGUFWriter's
split_max_tensors: gguf-py's writer names and tags shards as llama.cpp's gguf-split does
(<stem>-00001-of-0000n.gguf; split.no u16, split.count u16, split.tensors.count i32).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

import gemma4_ref as R
from gguf_rewrite import copy_keys
from test_kernels import NEW_QTYPES, random_weights

S, F = "sliding_attention", "full_attention"
CONFIG = dict(
    vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
    layer_types=[S, S, F, S, S, F], num_attention_heads=4, num_key_value_heads=2,
    num_global_key_value_heads=1, head_dim=64, global_head_dim=128, sliding_window=8,
    hidden_size_per_layer_input=0, final_logit_softcapping=30.0)
# the new types first so each appears, then the common ones the mixes hold besides
MIX = list(NEW_QTYPES) + [T.Q4_K, T.Q6_K, T.Q8_0]


def _blocks_like(rng: np.random.Generator, qtype: T, rows: int, cols: int, sigma: float) -> np.ndarray:
    """Random blocks of qtype whose dequantized values have standard deviation ~sigma."""
    state = rng.bit_generator.state
    probe = random_weights(rng, qtype, rows, cols)
    s0 = float(gguf.quants.dequantize(np.frombuffer(probe, np.uint8), qtype).std())
    rng.bit_generator.state = state              # the same payload bytes, scales times sigma/s0
    w = random_weights(rng, qtype, rows, cols, mag=sigma / s0)
    return np.frombuffer(w, np.uint8).reshape(rows, -1)


def _add_raw(w: gguf.GGUFWriter, t) -> None:
    shape = [int(x) for x in t.shape]                  # ggml order, ne[0] first
    if t.tensor_type in (T.F32, T.F16):
        w.add_tensor(t.name, np.asarray(t.data).reshape(list(reversed(shape))))
    else:
        # gguf-py takes a quantized tensor as uint8 (rows, bytes per row) and derives the shape
        w.add_tensor(t.name, np.asarray(t.data).reshape(-1, np.asarray(t.data).shape[-1]), raw_dtype=t.tensor_type)


def build_mixed(d: Path, seed: int = 3) -> tuple[Path, dict[str, T]]:
    """Write d/mixed.gguf; returns (path, {tensor name: type})."""
    d = Path(d)
    R.CONFIGS["quant_mix"] = CONFIG                   # build_gemma4 takes a CONFIGS key
    try:
        hf = R.build_gemma4(d / "hf", "quant_mix", seed=seed)
    finally:
        del R.CONFIGS["quant_mix"]
    from gemma4stack.convert import convert
    f32 = convert(hf, d / "f32.gguf", type="f32") and d / "f32.gguf"
    r = gguf.GGUFReader(str(f32))
    out = d / "mixed.gguf"
    w = gguf.GGUFWriter(str(out), r.fields["general.architecture"].contents())
    copy_keys(r, w)
    rng = np.random.default_rng(seed)
    types: dict[str, T] = {}
    k = 0
    for t in r.tensors:
        shape = [int(x) for x in t.shape]
        if len(shape) != 2 or not t.name.endswith(".weight") or t.tensor_type != T.F32:
            _add_raw(w, t)
            types[t.name] = T(t.tensor_type)
            continue
        a = np.asarray(t.data, np.float32)
        qtype = MIX[k % len(MIX)]
        if shape[0] % GGML_QUANT_SIZES[qtype][0]:
            qtype = T.IQ4_NL if shape[0] % 32 == 0 else T.F32
        else:
            k += 1
        types[t.name] = qtype
        if qtype == T.F32:
            _add_raw(w, t)
            continue
        blocks = _blocks_like(rng, qtype, shape[1], shape[0], float(a.std()) or 1.0)
        w.add_tensor(t.name, blocks, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out, types


def split(src: Path, out_dir: Path, n: int) -> list[Path]:
    """src rewritten as n shards in out_dir; returns their paths in order."""
    r = gguf.GGUFReader(str(src))
    per = math.ceil(len(r.tensors) / n)
    out_dir.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out_dir / src.name), r.fields["general.architecture"].contents(),
                        split_max_tensors=per)
    copy_keys(r, w)
    for t in r.tensors:
        _add_raw(w, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shards = sorted(out_dir.glob(f"{src.stem}-*-of-*.gguf"))
    assert len(shards) == n, shards
    return shards
