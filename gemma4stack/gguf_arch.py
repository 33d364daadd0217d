"""GGUF names and shapes shared by `convert`, `synth` and the tests: llama.cpp's spelling.

Sources (read, not copied): llama.cpp `src/models/gemma4.cpp` (load_arch_hparams /
load_arch_tensors), `conversion/gemma.py` (Gemma4Model, Gemma3Model), `src/llama-quant.cpp`
(which tensor gets which type), and gguf-py's `constants.py` (TENSOR_NAMES, Keys), which this
module uses directly so the names cannot drift from llama.cpp's.

Shapes are in ggml order: ``shape[0]`` is the row length (contiguous), the reverse of numpy's.
A matmul weight of ggml shape ``[n_in, n_out]`` is the HF ``nn.Linear.weight`` of numpy shape
``(n_out, n_in)`` stored unchanged.

The Gemma 4 variant table is the catalog of issue 2 ("Main job end to end"), which took it from
HF transformers' Gemma4TextConfig and llama.cpp's gemma4 support.
"""
from __future__ import annotations

import html
from dataclasses import asdict, dataclass
from typing import Any

import gguf

__all__ = [
    "GGUF_TYPES", "TensorSpec", "Gemma4Shape", "LlamaShape", "GEMMA4_VARIANTS", "TINYLLAMA",
    "gemma4_tensor_specs", "llama_tensor_specs", "kv_source_layer", "rope_freqs_values",
    "Q4_K_M_FTYPE", "q4_k_m_types",
]

T = gguf.GGMLQuantizationType

# ggml type name -> GGMLQuantizationType, for the types we write
GGUF_TYPES: dict[str, T] = {t.name: t for t in (
    T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q5_0, T.Q4_K, T.Q6_K)}

# llama_ftype of a Q4_K_M file (llama.h LLAMA_FTYPE_MOSTLY_Q4_K_M)
Q4_K_M_FTYPE = 15


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: GGUF name, ggml shape, and its role for quantization.

    role: "token_embd", "output", "attn_v", "ffn_down", "norm" (1-D, kept F32), "router"
    (ffn_gate_inp, kept F32), "keep" (2-D but never quantized: per_layer_model_proj),
    or "weight" (any other matmul weight). layer: block index or -1.
    """

    name: str
    shape: tuple[int, ...]
    role: str = "weight"
    layer: int = -1

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


# ---------------------------------------------------------------------------------------------
# Gemma 4 shapes


@dataclass(frozen=True)
class Gemma4Shape:
    """A Gemma 4 text decoder's structure (llama.cpp hparams names).

    swa_period: layer l is global (full attention) when (l + 1) % swa_period == 0, and the last
    layer is always global (HF Gemma4TextConfig). n_head_kv_global: KV heads on global layers
    (equal to n_head_kv unless k_eq_v_global, as in HF where num_global_key_value_heads only
    applies with attention_k_eq_v). n_ff_shared: FFN width in the KV-shared layers
    (2 * n_ff when use_double_wide_mlp). n_expert = 0: dense.
    """

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_head_kv_global: int
    head_dim: int = 256
    head_dim_global: int = 512
    swa_period: int = 6
    sliding_window: int = 1024
    n_kv_shared: int = 0
    n_ff: int = 0
    n_ff_shared: int = 0
    n_embd_per_layer: int = 0
    k_eq_v_global: bool = False
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_vocab: int = 262144
    context_length: int = 131072
    rope_theta: float = 1_000_000.0
    rope_theta_swa: float = 10_000.0
    partial_rotary_factor_global: float = 0.25
    final_logit_softcapping: float = 30.0
    rms_norm_eps: float = 1e-6
    source: str = "issue 2 catalog table"

    # -- per-layer structure -------------------------------------------------------------
    def is_swa(self, il: int) -> bool:
        if il == self.n_layer - 1:
            return False
        return (il + 1) % self.swa_period != 0

    def swa_pattern(self) -> list[bool]:
        return [self.is_swa(il) for il in range(self.n_layer)]

    def layer_head_dim(self, il: int) -> int:
        return self.head_dim if self.is_swa(il) else self.head_dim_global

    def layer_head_kv(self, il: int) -> int:
        return self.n_head_kv if self.is_swa(il) else self.n_head_kv_global

    def has_kv(self, il: int) -> bool:
        return il < self.n_layer - self.n_kv_shared

    def layer_n_ff(self, il: int) -> int:
        return self.n_ff if self.has_kv(il) or not self.n_ff_shared else self.n_ff_shared

    def has_v(self, il: int) -> bool:
        return self.has_kv(il) and not (self.k_eq_v_global and not self.is_swa(il))

    def with_layers(self, n_layer: int) -> "Gemma4Shape":
        """The same structure cut to n_layer layers (for small test files). KV-shared layers
        are scaled down proportionally but always leave one producer of each type."""
        if n_layer == self.n_layer:
            return self
        shared = 0
        if self.n_kv_shared:
            shared = round(self.n_kv_shared * n_layer / self.n_layer)
            shared = max(0, min(shared, n_layer - min(n_layer, self.swa_period)))
        d = asdict(self)
        d.update(n_layer=n_layer, n_kv_shared=shared)
        return Gemma4Shape(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.to_dict().items())
        return f"<table><tr><th>field</th><th>value</th></tr>{rows}</table>"


def kv_source_layer(swa_pattern: list[bool], n_kv_shared: int, il: int) -> int:
    """Layer whose KV cache layer il attends over (HF Gemma4TextConfig.kv_sharing_modes).

    Non-shared layers use their own (returns il). A shared layer uses the last non-shared layer
    of the same type. llama.cpp instead hard-codes n_layer_kv_from_start - (2 if swa else 1);
    the two agree on every Gemma 4 release. Raises ValueError if no producer exists.
    """
    first_shared = len(swa_pattern) - n_kv_shared
    if il < first_shared:
        return il
    for j in range(first_shared - 1, -1, -1):
        if swa_pattern[j] == swa_pattern[il]:
            return j
    raise ValueError(f"layer {il}: no earlier non-shared layer of the same type to share KV with")


def rope_freqs_values(head_dim_global: int, partial_rotary_factor: float) -> list[float]:
    """rope_freqs.weight for proportional RoPE (conversion/gemma.py generate_extra_tensors):
    1.0 for the rotated pairs, 1e30 for the others (theta / 1e30 ~ 0: cos 1, sin 0)."""
    n_rot = int(head_dim_global * partial_rotary_factor / 2)
    return [1.0] * n_rot + [1e30] * (head_dim_global // 2 - n_rot)


GEMMA4_VARIANTS: dict[str, Gemma4Shape] = {
    "e2b": Gemma4Shape(
        name="E2B", n_layer=35, n_embd=1536, n_head=8, n_head_kv=1, n_head_kv_global=1,
        swa_period=5, sliding_window=512, n_kv_shared=20, n_ff=6144, n_ff_shared=12288,
        n_embd_per_layer=256, context_length=131072),
    "e4b": Gemma4Shape(
        name="E4B", n_layer=42, n_embd=2560, n_head=8, n_head_kv=2, n_head_kv_global=2,
        swa_period=6, sliding_window=512, n_kv_shared=18, n_ff=10240,
        n_embd_per_layer=256, context_length=131072),
    "26b-a4b": Gemma4Shape(
        name="26B-A4B", n_layer=30, n_embd=2816, n_head=16, n_head_kv=8, n_head_kv_global=2,
        sliding_window=1024, n_ff=2112, k_eq_v_global=True, n_expert=128, n_expert_used=8,
        n_ff_exp=704, context_length=262144),
    "31b": Gemma4Shape(
        name="31B", n_layer=60, n_embd=5376, n_head=32, n_head_kv=16, n_head_kv_global=4,
        sliding_window=1024, n_ff=21504, k_eq_v_global=True, context_length=262144),
    "12b": Gemma4Shape(
        name="12B", n_layer=48, n_embd=3840, n_head=16, n_head_kv=8, n_head_kv_global=1,
        sliding_window=1024, n_ff=15360, k_eq_v_global=True, context_length=262144,
        source="issue 2 catalog table (sliding window and context unconfirmed there)"),
}


def gemma4_tensor_specs(s: Gemma4Shape) -> list[TensorSpec]:
    """Every tensor llama.cpp's gemma4 loader reads, in the order convert_hf_to_gguf writes
    them (globals first; per layer as HF's state dict). Tied output: no output.weight."""
    H, L, P = s.n_embd, s.n_layer, s.n_embd_per_layer
    out = [TensorSpec("token_embd.weight", (H, s.n_vocab), "token_embd")]
    if P:
        out += [TensorSpec("per_layer_token_embd.weight", (L * P, s.n_vocab), "token_embd"),
                TensorSpec("per_layer_model_proj.weight", (H, L * P), "keep"),
                TensorSpec("per_layer_proj_norm.weight", (P,), "norm")]
    out.append(TensorSpec("output_norm.weight", (H,), "norm"))
    out.append(TensorSpec("rope_freqs.weight", (s.head_dim_global // 2,), "norm"))
    for il in range(L):
        hd, nkv, nff = s.layer_head_dim(il), s.layer_head_kv(il), s.layer_n_ff(il)

        def t(name: str, shape: tuple[int, ...], role: str = "weight") -> TensorSpec:
            return TensorSpec(f"blk.{il}.{name}", shape, role, il)

        out.append(t("attn_norm.weight", (H,), "norm"))
        out.append(t("attn_q.weight", (H, s.n_head * hd)))
        if s.has_kv(il):
            out.append(t("attn_k.weight", (H, nkv * hd)))
            if s.has_v(il):
                out.append(t("attn_v.weight", (H, nkv * hd), "attn_v"))
            out.append(t("attn_k_norm.weight", (hd,), "norm"))
        out.append(t("attn_q_norm.weight", (hd,), "norm"))
        out.append(t("attn_output.weight", (s.n_head * hd, H)))
        out.append(t("post_attention_norm.weight", (H,), "norm"))
        out.append(t("ffn_norm.weight", (H,), "norm"))
        out.append(t("ffn_gate.weight", (H, nff)))
        out.append(t("ffn_up.weight", (H, nff)))
        out.append(t("ffn_down.weight", (nff, H), "ffn_down"))
        out.append(t("post_ffw_norm.weight", (H,), "norm"))
        if s.n_expert:
            E, F = s.n_expert, s.n_ff_exp
            out.append(t("ffn_gate_inp.weight", (H, E), "router"))
            out.append(t("ffn_gate_inp.scale", (H,), "norm"))
            out.append(t("ffn_down_exps.scale", (E,), "norm"))
            out.append(t("ffn_gate_up_exps.weight", (H, 2 * F, E)))
            out.append(t("ffn_down_exps.weight", (F, H, E), "ffn_down"))
            out.append(t("pre_ffw_norm_2.weight", (H,), "norm"))
            out.append(t("post_ffw_norm_1.weight", (H,), "norm"))
            out.append(t("post_ffw_norm_2.weight", (H,), "norm"))
        out.append(t("layer_output_scale.weight", (1,), "norm"))
        if P:
            out.append(t("inp_gate.weight", (H, P)))
            out.append(t("proj.weight", (P, H)))
            out.append(t("post_norm.weight", (H,), "norm"))
    return out


# ---------------------------------------------------------------------------------------------
# Llama shape (kernel benchmarks)


@dataclass(frozen=True)
class LlamaShape:
    """A Llama-architecture decoder (llama.cpp hparams names); default TinyLlama-1.1B."""

    name: str = "TinyLlama-1.1B"
    n_layer: int = 22
    n_embd: int = 2048
    n_head: int = 32
    n_head_kv: int = 4
    n_ff: int = 5632
    n_vocab: int = 32000
    context_length: int = 2048
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-5
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def with_layers(self, n_layer: int) -> "LlamaShape":
        d = asdict(self)
        d["n_layer"] = n_layer
        return LlamaShape(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TINYLLAMA = LlamaShape()


def llama_tensor_specs(s: LlamaShape) -> list[TensorSpec]:
    """Tensors of llama.cpp's llama architecture (no biases)."""
    H, kv = s.n_embd, s.n_head_kv * s.head_dim
    out = [TensorSpec("token_embd.weight", (H, s.n_vocab), "token_embd"),
           TensorSpec("output_norm.weight", (H,), "norm")]
    if not s.tied:
        out.append(TensorSpec("output.weight", (H, s.n_vocab), "output"))
    for il in range(s.n_layer):
        def t(name: str, shape: tuple[int, ...], role: str = "weight") -> TensorSpec:
            return TensorSpec(f"blk.{il}.{name}", shape, role, il)
        out += [t("attn_norm.weight", (H,), "norm"),
                t("attn_q.weight", (H, H)), t("attn_k.weight", (H, kv)),
                t("attn_v.weight", (H, kv), "attn_v"), t("attn_output.weight", (H, H)),
                t("ffn_norm.weight", (H,), "norm"),
                t("ffn_gate.weight", (H, s.n_ff)), t("ffn_up.weight", (H, s.n_ff)),
                t("ffn_down.weight", (s.n_ff, H), "ffn_down")]
    return out


# ---------------------------------------------------------------------------------------------
# Tensor types (llama-quant.cpp)


def _use_more_bits(i: int, n: int) -> bool:
    # llama-quant.cpp: the first and last eighth of the layers, and every third in between
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(t: T, ne0: int) -> T:
    """llama-quant.cpp tensor_type_fallback: a row length the block size does not divide."""
    blk = gguf.GGML_QUANT_SIZES[t][0]
    if ne0 % blk == 0:
        return t
    t = {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0, T.Q5_K: T.Q5_1}.get(t, T.F16)
    return t if ne0 % gguf.GGML_QUANT_SIZES[t][0] == 0 else T.F16


def q4_k_m_types(specs: list[TensorSpec], n_layer: int, n_expert: int = 0,
                 unquantized: T = T.BF16) -> dict[str, T]:
    """Tensor name -> ggml type for LLAMA_FTYPE_MOSTLY_Q4_K_M, following llama-quant.cpp:

    - default Q4_K; output.weight, and token_embd + per_layer_token_embd when the output is tied
      (both are llama.cpp's TOKEN_EMBD category): Q6_K;
    - attn_v.weight: Q6_K when use_more_bits(i, n) over the attn_v tensors in file order
      (weights sorted by layer, then name);
    - ffn_down(_exps): Q6_K when use_more_bits(layer, n_layer);
    - n_expert == 8 models: attn_v and attn_k Q8_0 (not a Gemma 4 case);
    - rows whose length the block does not divide fall back (Q4_K -> Q5_0, Q6_K -> Q8_0);
    - norms/1-D stay F32, the router F32, per_layer_model_proj keeps `unquantized`.
    """
    tied = not any(s.role == "output" for s in specs)
    # llama_model_loader sorts weights by layer number, then by name (weight_name_comparer)
    order = sorted(specs, key=lambda s: (s.layer, s.name))
    n_attn_v = sum(1 for s in specs if s.role == "attn_v")
    i_attn_v = 0
    types: dict[str, T] = {}
    for s in order:
        if s.role in ("norm",) or len(s.shape) < 2:
            types[s.name] = T.F32
            continue
        if s.role == "router":
            types[s.name] = T.F32
            continue
        if s.role == "keep":
            types[s.name] = unquantized
            continue
        t = T.Q4_K
        if s.role == "output" or (tied and s.role == "token_embd"):
            t = T.Q6_K if s.shape[0] % 256 == 0 else T.Q8_0
        elif s.role == "attn_v":
            if _use_more_bits(i_attn_v, n_attn_v):
                t = T.Q6_K
            if n_expert == 8:
                t = T.Q8_0
            i_attn_v += 1
        elif s.role == "ffn_down":
            if _use_more_bits(s.layer, n_layer):
                t = T.Q6_K
        elif n_expert == 8 and s.name.endswith("attn_k.weight"):
            t = T.Q8_0
        types[s.name] = _fallback(t, s.shape[0])
    return types
