"""`gemma4stack synth`: random-weight GGUF files at the real shapes, for benchmarks and memory
checks without downloads.

    >>> from gemma4stack.synth import synth
    >>> synth("/tmp/e2b-q4_0.gguf", variant="e2b", type="q4_0")      # ~2.9 GB, full E2B shape
    SynthReport(variant='e2b', type='q4_0', n_layer=35, file_bytes=..., seconds=...)

What is written:

- the metadata `gemma4stack convert` writes for the real config (the same code path), or the
  llama keys for `--arch llama` (TinyLlama-1.1B shape: 22 layers, 2048 wide, 32 heads, 4 KV
  heads, FFN 5632, vocab 32000);
- the tensors llama.cpp's loader expects (gguf_arch.gemma4_tensor_specs / llama_tensor_specs);
- a synthetic tokenizer of the right size: for gemma4 an SPM-style BPE vocab (262144 tokens with
  Gemma 4's special-token ids, byte tokens <0x00>.. at 238, merges), for llama a SentencePiece
  vocab (32000 tokens, Llama-2 layout), plus a Gemma-4-style chat template;
- tensor types: q4_0 = every quantizable weight Q4_0 (like `llama-quantize --pure`; that is
  the size of the published Q4_0 files); q8_0 / bf16 / f16 / f32 likewise; q4_k_m = llama.cpp's
  Q4_K_M mix (gguf_arch.q4_k_m_types: Q4_K, Q6_K for token_embd/per_layer_token_embd (tied
  output) and for attn_v/ffn_down in use_more_bits layers, Q5_0/Q8_0 fallbacks for rows not a
  multiple of 256). Norms and 1-D tensors F32, the MoE router F32, per_layer_model_proj BF16
  (llama-quantize never quantizes it).

Values: quantized blocks are generated directly (random payload bytes, random-sign fp16 scales
calibrated per type) so dequantized weights have mean 0 and standard deviation 1/sqrt(row
length): every matmul output has about unit variance, and since every Gemma 4 sublayer output
passes an RMSNorm before it joins the residual, activations stay finite at any depth. Norm
weights are near 1 (q/k norms near hd^-1/4, so that attention scores with scale 1.0 have unit
variance); token_embd has std 1/sqrt(H) (unit-RMS embeddings after the sqrt(H) scale, logits of
std ~1); the PLE table 1/sqrt(P). Data are streamed to disk in chunks (memory ~ 64 MB).
"""
from __future__ import annotations

import argparse
import html
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

from .convert import _meta_gemma4
from .gguf_arch import (GEMMA4_VARIANTS, TINYLLAMA, Gemma4Shape, LlamaShape, Q4_K_M_FTYPE,
                        TensorSpec, gemma4_tensor_specs, llama_tensor_specs, q4_k_m_types, rope_freqs_values)

__all__ = ["SynthReport", "SynthPlan", "plan", "synth", "register_cli", "random_blocks"]

_F = gguf.LlamaFileType
# "pure" files of one ggml type (llama-quantize --pure): every matrix of that type, the
# k-quants and i-quants of issue 14 included, to measure each type's kernels on its own
_PURE = {"q2_k": (T.Q2_K, _F.MOSTLY_Q2_K), "q3_k": (T.Q3_K, _F.MOSTLY_Q3_K_S),
         "q4_k": (T.Q4_K, _F.MOSTLY_Q4_K_S), "q5_k": (T.Q5_K, _F.MOSTLY_Q5_K_S),
         "q6_k": (T.Q6_K, _F.MOSTLY_Q6_K), "q5_0": (T.Q5_0, _F.MOSTLY_Q5_0),
         "iq4_nl": (T.IQ4_NL, _F.MOSTLY_IQ4_NL), "iq4_xs": (T.IQ4_XS, _F.MOSTLY_IQ4_XS),
         "iq3_xxs": (T.IQ3_XXS, _F.MOSTLY_IQ3_XXS), "iq3_s": (T.IQ3_S, _F.MOSTLY_IQ3_S),
         "iq2_xxs": (T.IQ2_XXS, _F.MOSTLY_IQ2_XXS), "iq2_xs": (T.IQ2_XS, _F.MOSTLY_IQ2_XS),
         "iq2_s": (T.IQ2_S, _F.MOSTLY_IQ2_S), "iq1_s": (T.IQ1_S, _F.MOSTLY_IQ1_S),
         "iq1_m": (T.IQ1_M, _F.MOSTLY_IQ1_M)}
TYPES = ("q4_0", "q4_k_m", "q8_0", "bf16", "f16", "f32") + tuple(_PURE)
_FTYPE = {"q4_0": _F.MOSTLY_Q4_0, "q8_0": _F.MOSTLY_Q8_0, "bf16": _F.MOSTLY_BF16,
          "f16": _F.MOSTLY_F16, "f32": _F.ALL_F32, "q4_k_m": Q4_K_M_FTYPE,
          **{k: f for k, (_, f) in _PURE.items()}}
_BASE = {"q4_0": T.Q4_0, "q8_0": T.Q8_0, "bf16": T.BF16, "f16": T.F16, "f32": T.F32,
         **{k: t for k, (t, _) in _PURE.items()}}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
    "<turn|>\n{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}")


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass
class SynthPlan:
    """Everything but the tensor data: arch, the model shape, tensors with their ggml types."""

    arch: str
    variant: str
    type: str
    shape: Gemma4Shape | LlamaShape
    tensors: list[tuple[TensorSpec, T]]

    @property
    def tensor_bytes(self) -> int:
        return sum(_nbytes(s.shape, t) for s, t in self.tensors)

    def type_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, t in self.tensors:
            out[t.name] = out.get(t.name, 0) + 1
        return out


def _nbytes(shape: tuple[int, ...], t: T) -> int:
    blk, size = gguf.GGML_QUANT_SIZES[t]
    n = math.prod(shape)
    return n // blk * size


def _pick_type(spec: TensorSpec, base: T) -> T:
    if spec.role == "norm" or len(spec.shape) < 2 or spec.role == "router":
        return T.F32
    if spec.role == "keep":        # never quantized: stays in the conversion's float type
        return base if base in (T.F32, T.F16, T.BF16) else T.BF16
    blk = gguf.GGML_QUANT_SIZES[base][0]
    return base if spec.shape[0] % blk == 0 else T.F16


def plan(variant: str = "e2b", arch: str = "gemma4", type: str = "q4_0",
         layers: int | None = None, n_vocab: int | None = None) -> SynthPlan:
    """The file synth would write. variant: e2b | e4b | 26b-a4b | 31b | 12b (gemma4) or
    tinyllama (llama). layers: cut the depth. n_vocab: a smaller vocabulary (tests).
    Raises ValueError for an unknown variant/type/arch."""
    if type not in TYPES:
        raise ValueError(f"unknown --type {type!r}; expected one of {', '.join(TYPES)}")
    if arch == "gemma4":
        if variant not in GEMMA4_VARIANTS:
            raise ValueError(f"unknown --variant {variant!r}; expected one of "
                             f"{', '.join(GEMMA4_VARIANTS)}")
        shape: Gemma4Shape | LlamaShape = GEMMA4_VARIANTS[variant]
        if layers is not None and layers < 2:
            # one layer would be global only; llama.cpp's iSWA cache aborts without a
            # sliding layer (GGML_ASSERT(hparams.is_swa_any()))
            raise ValueError("--layers must be at least 2 for gemma4 (one sliding and one "
                             "global layer)")
        if layers:
            shape = shape.with_layers(layers)
        if n_vocab:
            shape = Gemma4Shape(**{**asdict(shape), "n_vocab": n_vocab})
        specs = gemma4_tensor_specs(shape)
        n_expert = shape.n_expert
    elif arch == "llama":
        shape = TINYLLAMA
        if layers:
            shape = shape.with_layers(layers)
        if n_vocab:
            shape = LlamaShape(**{**asdict(shape), "n_vocab": n_vocab})
        specs = llama_tensor_specs(shape)
        n_expert = 0
        variant = "tinyllama"
    else:
        raise ValueError(f"unknown --arch {arch!r}; expected gemma4 or llama")
    if type == "q4_k_m":
        types = q4_k_m_types(specs, shape.n_layer, n_expert)
        tensors = [(s, types[s.name]) for s in specs]
    else:
        tensors = [(s, _pick_type(s, _BASE[type])) for s in specs]
    return SynthPlan(arch, variant, type, shape, tensors)


# ---------------------------------------------------------------------------------------------
# Random blocks

# E[q^2] of the integer part of each format with uniformly random bits (q, q - 8, ...), and
# E[u^2] = 13/12 for the scale magnitude u ~ U(0.5, 1.5): s = sigma / sqrt(k) gives std sigma.
_Q4_K_VAR = 1333.5 * 77.5 - 15 * 31.5 * 7.5 * 31.5 + 56.25 * 1333.5   # E[(sc q - 7.5 m)^2]
_SCALE_K = {
    T.Q8_0: 5461.5,                 # q uniform int8: var 5461.25 + mean^2 0.25
    T.Q4_0: 21.5,                   # q - 8, q in 0..15
    T.Q5_0: 85.5,                   # q - 16, q in 0..31
    T.Q4_K: _Q4_K_VAR,              # d sc q - dmin m, |dmin| = 7.5 |d|, sc, m, q uniform
    T.Q6_K: 5461.5 * 341.5,         # d sc (q - 32), sc int8, q in 0..63
}


def _rand_scales(rng: np.random.Generator, n: int, s: float) -> np.ndarray:
    u = rng.random(n, dtype=np.float32) + np.float32(0.5)
    sign = np.where(rng.random(n, dtype=np.float32) < 0.5, -1.0, 1.0).astype(np.float32)
    return (u * sign * np.float32(s)).astype(np.float16)


def random_blocks(rng: np.random.Generator, n_blocks: int, qtype: T, sigma: float) -> np.ndarray:
    """n_blocks random blocks of a ggml quant type as uint8 (n_blocks, type_size) whose
    dequantized values have mean ~0 and standard deviation ~sigma (ggml-common.h layouts)."""
    blk, size = gguf.GGML_QUANT_SIZES[qtype]
    n_words = (n_blocks * size + 7) // 8
    raw = rng.bit_generator.random_raw(n_words).view(np.uint8)[:n_blocks * size]
    b = raw.reshape(n_blocks, size)
    if qtype in _SCALE_FIELDS:
        return _random_blocks_calibrated(rng, b, qtype, sigma)
    s = sigma / math.sqrt(_SCALE_K[qtype] * 13.0 / 12.0)
    d = _rand_scales(rng, n_blocks, s).view(np.uint8).reshape(n_blocks, 2)
    if qtype in (T.Q8_0, T.Q4_0, T.Q5_0):
        b[:, 0:2] = d                                   # ggml_half d first
    elif qtype == T.Q4_K:
        b[:, 0:2] = d                                   # d, then dmin = 7.5 d (same sign)
        dm = (d.view(np.float16).astype(np.float32) * np.float32(7.5)).astype(np.float16)
        b[:, 2:4] = dm.view(np.uint8).reshape(n_blocks, 2)
    elif qtype == T.Q6_K:
        b[:, 208:210] = d                               # ql[128] qh[64] scales[16] d
    else:
        raise ValueError(f"random_blocks: unsupported type {qtype.name}")
    return b


# Where each remaining type keeps its fp16 super-block scale(s), as byte offsets into the block
# (ggml-common.h: block_q2_K {scales[16], qs[64], d, dmin}, block_q3_K {hmask[32], qs[64],
# scales[12], d}, block_q5_K {d, dmin, ...}; the i-quants and Q5_0 start with d; block_iq1_m has
# no d field: its fp16 scale is the top nibbles of the four 16-bit words at offset 48).
_SCALE_FIELDS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q5_K: (0, 2), **{
    t: (0,) for t in (T.IQ4_NL, T.IQ4_XS, T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S,
                      T.IQ1_S)}, T.IQ1_M: ()}
_UNIT_STD: dict[T, float] = {}


def _set_scales(b: np.ndarray, qtype: T, d: np.ndarray) -> None:
    """Write fp16 scales d (n_blocks,) into blocks b (and dmin where the type has one)."""
    if qtype == T.IQ1_M:
        h = d.astype(np.float16).view(np.uint16)
        words = b[:, 48:56].copy().view(np.uint16) & np.uint16(0x0FFF)
        for k in range(4):
            words[:, k] |= ((h >> np.uint16(4 * k)) & np.uint16(0xF)) << np.uint16(12)
        b[:, 48:56] = words.view(np.uint8)
        return
    offs = _SCALE_FIELDS[qtype]
    if len(offs) == 2:              # x = d sc q - dmin m: dmin = E[q] d centres x on 0
        d = np.abs(d)
        dmin = d * np.float32(1.5 if qtype == T.Q2_K else 15.5)   # q in 0..3 / 0..31
        b[:, offs[1]:offs[1] + 2] = dmin.astype(np.float16).view(np.uint8).reshape(-1, 2)
    b[:, offs[0]:offs[0] + 2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _random_blocks_calibrated(rng: np.random.Generator, b: np.ndarray, qtype: T,
                              sigma: float) -> np.ndarray:
    """Random payload bytes with scales set so the dequantized std is ~sigma: the std at
    scale 1 is measured once per type on 64 random blocks with gguf-py's numpy dequantizer."""
    if qtype not in _UNIT_STD:
        probe_rng = np.random.default_rng(0)
        probe = probe_rng.integers(0, 256, (64, b.shape[1]), dtype=np.uint8)
        _set_scales(probe, qtype, np.ones(64, np.float32))
        _UNIT_STD[qtype] = float(gguf.quants.dequantize(probe, qtype).std())
    d = _rand_scales(rng, b.shape[0], sigma / _UNIT_STD[qtype] / math.sqrt(13.0 / 12.0))
    _set_scales(b, qtype, d.astype(np.float32))
    return b


def _tensor_chunks(rng: np.random.Generator, spec: TensorSpec, t: T, sigma: float,
                   chunk_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
    """The tensor's bytes in chunks of about chunk_bytes."""
    n = spec.n_elements
    if spec.name == "rope_freqs.weight":
        yield np.array(_rope_values(spec), np.float32)
        return
    if t in (T.F32, T.F16, T.BF16):
        if spec.role == "norm":
            yield _norm_values(rng, spec).astype(np.float32)
            return
        step = max(1, chunk_bytes // 4)
        for i in range(0, n, step):
            x = rng.standard_normal(min(step, n - i), dtype=np.float32) * np.float32(sigma)
            if t == T.F32:
                yield x
            elif t == T.F16:
                yield x.astype(np.float16)
            else:
                yield (x.view(np.uint32) >> 16).astype(np.uint16)   # bf16 = top 16 bits
        return
    blk, size = gguf.GGML_QUANT_SIZES[t]
    n_blocks = n // blk
    step = max(1, chunk_bytes // size)
    for i in range(0, n_blocks, step):
        yield random_blocks(rng, min(step, n_blocks - i), t, sigma)


_ROPE_CACHE: dict[str, list[float]] = {}


def _rope_values(spec: TensorSpec) -> list[float]:
    return _ROPE_CACHE[spec.name]


def _norm_values(rng: np.random.Generator, spec: TensorSpec) -> np.ndarray:
    n = spec.n_elements
    u = rng.uniform(0.9, 1.1, size=n).astype(np.float32)
    if spec.name.endswith(("attn_q_norm.weight", "attn_k_norm.weight")):
        return u * np.float32(spec.shape[0] ** -0.25)
    return u


def _sigma(spec: TensorSpec, shape: Gemma4Shape | LlamaShape) -> float:
    if spec.name == "per_layer_token_embd.weight":
        return 1.0 / math.sqrt(shape.n_embd_per_layer)      # type: ignore[union-attr]
    return 1.0 / math.sqrt(spec.shape[0])


# ---------------------------------------------------------------------------------------------
# Tokenizers


def _base_alphabet() -> list[str]:
    chars = ["▁"] + [chr(c) for c in range(33, 127)]
    chars += [chr(c) for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7)]
    return chars


def _gemma4_vocab(n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, types and merges of a synthetic SPM-style BPE vocab with Gemma 4's layout:
    <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, tool tokens 46-52, <|think|> 98,
    <|channel>/<channel|> 100/101, <|turn>/<turn|> 105/106, "\\n".."\\n\\n\\n" 107-109, bytes
    <0x00>..<0xFF> at 238..493; then characters, and two/three-character pieces each with the
    merge that builds it."""
    N, U, C, B, UD = (int(gguf.TokenType.NORMAL), int(gguf.TokenType.USER_DEFINED),
                      int(gguf.TokenType.CONTROL), int(gguf.TokenType.BYTE),
                      int(gguf.TokenType.UNUSED))
    fixed = {0: ("<pad>", C), 1: ("<eos>", C), 2: ("<bos>", C), 3: ("<unk>", C),
             4: ("<mask>", C), 46: ("<|tool>", C), 47: ("<tool|>", C), 48: ("<|tool_call>", U),
             49: ("<tool_call|>", U), 50: ("<|tool_response>", U), 51: ("<tool_response|>", U),
             52: ('<|"|>', U), 98: ("<|think|>", C), 100: ("<|channel>", U),
             101: ("<channel|>", U), 105: ("<|turn>", C), 106: ("<turn|>", C),
             107: ("\n", N), 108: ("\n\n", N), 109: ("\n\n\n", N)}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(238):
        t, ty = fixed.get(i, (f"<unused{i}>", UD))
        tokens.append(t)
        types.append(ty)
    for i in range(256):
        tokens.append(f"<0x{i:02X}>")
        types.append(B)
    merges: list[str] = []
    alpha = _base_alphabet()
    tokens += alpha
    types += [N] * len(alpha)
    pairs = [(a, b) for a in alpha for b in alpha]
    for a, b in pairs:
        if len(tokens) >= n_vocab:
            break
        tokens.append(a + b)
        types.append(N)
        merges.append(f"{a} {b}")
    for a, b in pairs:
        for c in alpha:
            if len(tokens) >= n_vocab:
                break
            tokens.append(a + b + c)
            types.append(N)
            merges.append(f"{a + b} {c}")
        if len(tokens) >= n_vocab:
            break
    return tokens[:n_vocab], types[:n_vocab], merges


def _llama_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece vocab with Llama-2's layout (<unk> 0, <s> 1, </s> 2, bytes 3..258), then
    pieces with decreasing scores (SPM merges higher scores first)."""
    N, C, B, UNK = (int(gguf.TokenType.NORMAL), int(gguf.TokenType.CONTROL),
                    int(gguf.TokenType.BYTE), int(gguf.TokenType.UNKNOWN))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [UNK, C, C] + [B] * 256
    alpha = _base_alphabet()
    pieces = list(alpha) + [a + b for a in alpha for b in alpha]
    pieces += [a + b + c for a in alpha[:64] for b in alpha[:64] for c in alpha[:64]]
    pieces = pieces[:n_vocab - len(tokens)]
    tokens += pieces
    types += [N] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


# ---------------------------------------------------------------------------------------------
# Metadata


def _hf_config(s: Gemma4Shape) -> dict[str, Any]:
    """The HF text config of a Gemma 4 shape (release format), so that synth writes exactly
    the keys `convert` writes for the real checkpoint."""
    return {
        "num_hidden_layers": s.n_layer, "hidden_size": s.n_embd, "intermediate_size": s.n_ff,
        "num_attention_heads": s.n_head, "num_key_value_heads": s.n_head_kv,
        "num_global_key_value_heads": s.n_head_kv_global if s.k_eq_v_global else None,
        "attention_k_eq_v": s.k_eq_v_global, "head_dim": s.head_dim,
        "global_head_dim": s.head_dim_global, "sliding_window": s.sliding_window,
        "layer_types": ["sliding_attention" if s.is_swa(i) else "full_attention"
                        for i in range(s.n_layer)],
        "num_kv_shared_layers": s.n_kv_shared,
        "use_double_wide_mlp": bool(s.n_ff_shared and s.n_ff_shared == 2 * s.n_ff),
        "hidden_size_per_layer_input": s.n_embd_per_layer,
        "num_experts": s.n_expert or None, "top_k_experts": s.n_expert_used or None,
        "moe_intermediate_size": s.n_ff_exp or None,
        "max_position_embeddings": s.context_length, "rms_norm_eps": s.rms_norm_eps,
        "final_logit_softcapping": s.final_logit_softcapping, "vocab_size": s.n_vocab,
        "rope_parameters": {
            "full_attention": {"rope_type": "proportional", "rope_theta": s.rope_theta,
                               "partial_rotary_factor": s.partial_rotary_factor_global},
            "sliding_attention": {"rope_type": "default", "rope_theta": s.rope_theta_swa}},
    }


def _write_metadata(w: gguf.GGUFWriter, p: SynthPlan, name: str) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    s = p.shape
    if isinstance(s, Gemma4Shape):
        _meta_gemma4(w, _hf_config(s))
        tokens, types, merges = _gemma4_vocab(s.n_vocab)
        w.add_file_type(int(_FTYPE[p.type]))
        w.add_tokenizer_model("gemma4")
        w.add_token_list(tokens)
        w.add_token_scores([-1000.0] * len(tokens))
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_mask_token_id(4)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)
        w.add_chat_template(CHAT_TEMPLATE)
    else:
        w.add_context_length(s.context_length)
        w.add_embedding_length(s.n_embd)
        w.add_block_count(s.n_layer)
        w.add_feed_forward_length(s.n_ff)
        w.add_head_count(s.n_head)
        w.add_head_count_kv(s.n_head_kv)
        w.add_layer_norm_rms_eps(s.rms_norm_eps)
        w.add_rope_freq_base(s.rope_theta)
        w.add_vocab_size(s.n_vocab)
        w.add_rope_dimension_count(s.head_dim)
        w.add_file_type(int(_FTYPE[p.type]))
        tokens, scores, ltypes = _llama_vocab(s.n_vocab)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(ltypes)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---------------------------------------------------------------------------------------------
# Driver


@dataclass
class SynthReport:
    """What synth wrote. file_bytes: size on disk; tensor_bytes: sum of tensor data (what a
    model maps as weights); seconds: wall time; tensor_types: ggml type -> tensor count."""

    path: str
    arch: str
    variant: str
    type: str
    n_layer: int
    n_tensors: int
    tensor_bytes: int
    file_bytes: int
    seconds: float
    tensor_types: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.to_dict().items())
        return f"<table><tr><th>SynthReport</th><th></th></tr>{rows}</table>"


def synth(out_path: str | Path, variant: str = "e2b", arch: str = "gemma4", type: str = "q4_0",
          layers: int | None = None, seed: int = 0, n_vocab: int | None = None,
          progress: bool = False, metadata_only: bool = False) -> SynthReport:
    """Write a random-weight GGUF of `variant` at the real shapes (see module doc).

    layers: cut the depth (KV-shared layers scale down with it). seed: RNG seed (the same seed
    gives the same file). n_vocab: smaller vocabulary (tests). progress: tqdm bar on stderr.
    metadata_only: write only the header and metadata, no tensors (a vocab-only style file:
    lets tests read a full-size model's keys without writing gigabytes).
    Raises ValueError for an unknown variant/type/arch, OSError when the file cannot be written.
    """
    t0 = time.perf_counter()
    out_path = Path(out_path)
    p = plan(variant, arch, type, layers, n_vocab)
    if isinstance(p.shape, Gemma4Shape):
        _ROPE_CACHE["rope_freqs.weight"] = rope_freqs_values(
            p.shape.head_dim_global, p.shape.partial_rotary_factor_global)
    name = f"synthetic {p.shape.name} {type.upper()} (random weights, seed {seed})"

    w = gguf.GGUFWriter(out_path, p.arch)
    _write_metadata(w, p, name)
    if metadata_only:
        w.write_header_to_file(out_path)
        w.write_kv_data_to_file()
        w.close()
        return SynthReport(str(out_path), p.arch, p.variant, type, p.shape.n_layer, 0, 0,
                           out_path.stat().st_size, round(time.perf_counter() - t0, 2), {})
    for spec, t in p.tensors:
        w.add_tensor_info(spec.name, tuple(reversed(spec.shape)), np.dtype(np.float32),
                          _nbytes(spec.shape, t), raw_dtype=t)
    w.write_header_to_file(out_path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())

    rng = np.random.Generator(np.random.SFC64(seed))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=p.tensor_bytes, unit="B", unit_scale=True, desc="synth", file=sys.stderr)
    for spec, t in p.tensors:
        nbytes = 0
        for chunk in _tensor_chunks(rng, spec, t, _sigma(spec, p.shape)):
            chunk.tofile(fout)
            nbytes += chunk.nbytes
            if bar is not None:
                bar.update(chunk.nbytes)
        if nbytes != _nbytes(spec.shape, t):
            raise AssertionError(f"{spec.name}: wrote {nbytes} bytes, expected "
                                 f"{_nbytes(spec.shape, t)}")
        w.write_padding(fout, nbytes)
    if bar is not None:
        bar.close()
    w.close()
    return SynthReport(str(out_path), p.arch, p.variant, type, p.shape.n_layer, len(p.tensors),
                       p.tensor_bytes, out_path.stat().st_size,
                       round(time.perf_counter() - t0, 2), p.type_counts())


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(args: argparse.Namespace) -> int:
    variant = args.variant or ("tinyllama" if args.arch == "llama" else "e2b")
    r = synth(args.out, variant=variant, arch=args.arch, type=args.type, layers=args.layers,
              seed=args.seed, progress=not args.quiet)
    types = ", ".join(f"{k} {v}" for k, v in sorted(r.tensor_types.items()))
    print(f"wrote {r.path}: {r.arch} {r.variant} {r.type}, {r.n_layer} layers, {r.n_tensors} "
          f"tensors ({types}), {r.file_bytes / 1e9:.3f} GB in {r.seconds:.1f} s", file=sys.stderr)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a random-weight GGUF at a real model's shapes",
                       description="Write a GGUF with random weights at the real shapes of a "
                       "Gemma 4 variant (or TinyLlama-1.1B with --arch llama), for benchmarks "
                       "and memory checks without downloads.")
    p.add_argument("out", help="output .gguf path (full-size files are GBs: use /tmp)")
    p.add_argument("--variant", default=None,
                   choices=sorted(GEMMA4_VARIANTS) + ["tinyllama"],
                   help="Gemma 4 variant (default e2b; tinyllama for --arch llama)")
    p.add_argument("--arch", default="gemma4", choices=["gemma4", "llama"])
    p.add_argument("--type", default="q4_0", choices=TYPES)
    p.add_argument("--layers", type=int, default=None, help="cut the model to N layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli)
