"""`gemma4stack convert`: a Hugging Face checkpoint to GGUF, with llama.cpp's keys and names.

    >>> from gemma4stack.convert import convert
    >>> convert("gemma-4-E2B-it/", "e2b-f16.gguf", type="f16")
    ConvertReport(arch='gemma4', type='f16', n_tensors=..., ...)

Supported architectures: Gemma 4 (`Gemma4ForConditionalGeneration`, `Gemma4ForCausalLM`),
Gemma 4's MTP assistants (`Gemma4AssistantForCausalLM` -> `gemma4-assistant`, as llama.cpp's
conversion/gemma.py Gemma4AssistantModel, plus the masked-embedding tensors it drops), Gemma 3
(`Gemma3ForCausalLM`, `Gemma3ForConditionalGeneration`) and Llama (`LlamaForCausalLM`). Only the text decoder is converted (vision/audio towers are skipped, as
llama.cpp puts them in a separate mmproj file).

The choices follow llama.cpp's convert_hf_to_gguf.py (`conversion/gemma.py`, `conversion/
base.py`, `conversion/llama.py`) so that our files load in llama.cpp and theirs in ours:

- names from gguf-py's TensorNameMap for the architecture; no transposes (an HF Linear weight
  (out, in) is the ggml tensor [in, out]);
- Gemma 4: norms stored as is (Gemma4RMSNorm multiplies by w); `router.scale` ->
  `ffn_gate_inp.scale`, `router.per_expert_scale` -> `ffn_down_exps.scale`; `rope_freqs.weight`
  for proportional RoPE; per-layer arrays for head_count_kv / feed_forward_length;
- Gemma 3: every `*norm.weight` gets +1 (Gemma3RMSNorm multiplies by 1 + w);
- Llama: q_proj / k_proj rows permuted for llama.cpp's adjacent-pair RoPE;
- types (--type): 1-D tensors and `*_norm.weight`, the MoE router and non-`.weight` tensors
  stay F32; the rest F16 / BF16 / Q8_0 (falling back to F16 when a row is not a multiple of
  32, as convert_hf_to_gguf does); Q4_0 is not a convert_hf_to_gguf type: we write what
  `llama-quantize --pure` would (every quantizable weight Q4_0; per_layer_model_proj and the
  router, which llama-quantize never quantizes, F16 and F32).

No torch or transformers needed: safetensors are read with numpy (memory-mapped), and the
tokenizer from tokenizer.json / tokenizer_config.json (or tokenizer.model for SentencePiece).
Tensors are written one at a time, so memory stays about one tensor.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import math
import re
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

from .gguf_arch import rope_freqs_values

__all__ = ["ConvertReport", "convert", "register_cli", "SafetensorsDir", "hf_vocab"]

log = logging.getLogger("gemma4stack.convert")

# --type -> (llama_ftype for general.file_type, tensor type for quantizable weights)
FILE_TYPES: dict[str, tuple[int, T]] = {
    "f32": (gguf.LlamaFileType.ALL_F32, T.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, T.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, T.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
    "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
}

# big tensors (the 262144-row embedding tables) are read, converted and written in pieces of
# about this many elements, so memory stays ~ 64 MB per piece
_CHUNK_ELEMENTS = 1 << 24

# Gemma 4 tokens the converter makes USER_DEFINED so that they are rendered (conversion/gemma.py)
GEMMA4_VISIBLE_TOKENS = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>",
                         "<|tool_response>", "<tool_response|>", '<|"|>'}


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class ConvertReport:
    """What `convert` wrote.

    path: output GGUF. arch: general.architecture. type: the --type. n_tensors: tensors
    written. file_bytes: size of the file in bytes. seconds: wall time. tensor_types: ggml type
    name -> number of tensors of that type. n_vocab: tokens in tokenizer.ggml.tokens.
    """

    path: str
    arch: str
    type: str
    n_tensors: int
    file_bytes: int
    seconds: float
    n_vocab: int
    tensor_types: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.to_dict().items())
        return f"<table><tr><th>ConvertReport</th><th></th></tr>{rows}</table>"


# ---------------------------------------------------------------------------------------------
# Safetensors, read with numpy (https://huggingface.co/docs/safetensors: an 8-byte little-endian
# header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw data)

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


class SafetensorsDir:
    """All tensors of a checkpoint directory (model.safetensors or the sharded index).

    names(): tensor names in file order. shape(name): numpy shape. get(name) -> np.ndarray
    float32 (BF16/F16 widened); memory-mapped until read. metadata: the `__metadata__` of
    the files (e.g. tied-weight notes). Raises FileNotFoundError if there is no safetensors.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {self.dir}")
        self._where: dict[str, tuple[Path, str, tuple[int, ...], int, int, int]] = {}
        self.metadata: dict[str, str] = {}
        for f in files:
            with open(f, "rb") as fp:
                (n,) = struct.unpack("<Q", fp.read(8))
                header = json.loads(fp.read(n))
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    self.metadata.update(info or {})
                    continue
                b, e = info["data_offsets"]
                self._where[name] = (f, info["dtype"], tuple(info["shape"]), base + b, base + e,
                                     0)

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name][2]

    def get(self, name: str) -> np.ndarray:
        f, dt, shape, b, e, _ = self._where[name]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{f}: tensor {name!r} has unsupported dtype {dt}")
        raw = np.memmap(f, dtype=np.uint8, mode="r", offset=b, shape=(e - b,)) if e > b else \
            np.zeros(0, np.uint8)
        a = raw.view(_ST_DTYPES[dt]).reshape(shape)
        if dt == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(a, dtype=np.float32)

    def get_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of the tensor seen as 2-D (product of leading dims, last dim),
        float32; reads only those bytes."""
        f, dt, shape, b, e, _ = self._where[name]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{f}: tensor {name!r} has unsupported dtype {dt}")
        row = shape[-1] if shape else 1
        isz = np.dtype(_ST_DTYPES[dt]).itemsize
        raw = np.memmap(f, dtype=_ST_DTYPES[dt], mode="r", offset=b + r0 * row * isz,
                        shape=((r1 - r0) * row,))
        a = raw.reshape(r1 - r0, row)
        if dt == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(a, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Tokenizer


@dataclass
class HFVocab:
    """tokenizer.ggml.* arrays: tokens (str), scores, types (gguf.TokenType values)."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    model: str            # tokenizer.ggml.model


def _load_json(p: Path) -> dict[str, Any]:
    if p.is_file():
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    return {}


def _special_token_strings(d: Path) -> set[str]:
    """Named special tokens as transformers' `all_special_tokens` lists them: bos/eos/unk/
    sep/pad/cls/mask and additional/extra special tokens from tokenizer_config.json and
    special_tokens_map.json (values are strings or {"content": ...})."""
    out: set[str] = set()

    def add(v: Any) -> None:
        if isinstance(v, str):
            out.add(v)
        elif isinstance(v, dict) and "content" in v:
            out.add(v["content"])
        elif isinstance(v, (list, tuple)):
            for x in v:
                add(x)
        elif isinstance(v, dict):
            for x in v.values():
                add(x)

    for cfg in (_load_json(d / "tokenizer_config.json"), _load_json(d / "special_tokens_map.json")):
        for k in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token", "additional_special_tokens", "extra_special_tokens"):
            if cfg.get(k) is not None:
                add(cfg[k])
    return out


def hf_vocab(d: str | Path, n_vocab: int | None = None) -> HFVocab:
    """Tokens, scores and types from a HF tokenizer.json (BPE with byte fallback, the
    SentencePiece-style tokenizers of Llama/Gemma), as gguf-py's LlamaHfVocab builds them
    (without transformers): base vocab in id order, then added tokens with higher ids;
    `<0xXX>` -> BYTE, named special tokens -> CONTROL, other added tokens -> USER_DEFINED;
    scores all -1000. Ids with no token are filled with `[PADi]` (UNUSED) up to n_vocab.
    Raises FileNotFoundError without tokenizer.json, ValueError for other tokenizer kinds.
    """
    d = Path(d)
    tj = _load_json(d / "tokenizer.json")
    if not tj:
        raise FileNotFoundError(f"no tokenizer.json in {d}")
    m = tj.get("model", {})
    if m.get("type") != "BPE" or not m.get("byte_fallback", False):
        raise ValueError(f"{d}/tokenizer.json: not a SentencePiece-style BPE tokenizer "
                         f"(model {m.get('type')}, byte_fallback {m.get('byte_fallback')})")
    vocab: dict[str, int] = m["vocab"]
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    n_base = len(vocab)
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for i, a in added.items():
        by_id[i] = a["content"]
    special = _special_token_strings(d)
    n = max([n_base] + [i + 1 for i in added])
    if n_vocab is not None:
        n = max(n, n_vocab)
    tokens, types = [], []
    for i in range(n):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(t)
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
            types.append(gguf.TokenType.BYTE)
        elif t in special:
            types.append(gguf.TokenType.CONTROL)
        elif i >= n_base and i in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return HFVocab(tokens, [-1000.0] * n, [int(t) for t in types], "llama")


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    v = s = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return v, i


def spm_vocab(path: str | Path) -> HFVocab:
    """Pieces of a SentencePiece tokenizer.model (ModelProto field 1 = repeated SentencePiece
    {1: piece, 2: score, 3: type}; sentencepiece_model.proto), as convert_hf_to_gguf's
    _set_vocab_sentencepiece uses them. SentencePiece's type numbers (NORMAL 1, UNKNOWN 2,
    CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6) are gguf's TokenType numbers."""
    b = Path(path).read_bytes()
    tokens, scores, types = [], [], []
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        field_no, wt = key >> 3, key & 7
        if wt == 2:
            ln, i = _read_varint(b, i)
            payload, i = b[i:i + ln], i + ln
            if field_no == 1:
                piece, score, typ = "", 0.0, 1
                j = 0
                while j < len(payload):
                    k2, j = _read_varint(payload, j)
                    f2, w2 = k2 >> 3, k2 & 7
                    if w2 == 2:
                        l2, j = _read_varint(payload, j)
                        if f2 == 1:
                            piece = payload[j:j + l2].decode("utf-8")
                        j += l2
                    elif w2 == 5:
                        if f2 == 2:
                            (score,) = struct.unpack("<f", payload[j:j + 4])
                        j += 4
                    elif w2 == 0:
                        v, j = _read_varint(payload, j)
                        if f2 == 3:
                            typ = v
                    elif w2 == 1:
                        j += 8
                    else:
                        raise ValueError(f"{path}: bad protobuf wire type {w2}")
                tokens.append(piece)
                scores.append(float(score))
                types.append(int(typ))
        elif wt == 0:
            _, i = _read_varint(b, i)
        elif wt == 5:
            i += 4
        elif wt == 1:
            i += 8
        else:
            raise ValueError(f"{path}: not a SentencePiece model (wire type {wt})")
    if not tokens:
        raise ValueError(f"{path}: no pieces")
    return HFVocab(tokens, scores, types, "llama")


# ---------------------------------------------------------------------------------------------
# Architectures: hparams -> metadata, HF tensors -> (GGUF name, array)


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    tc = cfg.get("text_config")
    if isinstance(tc, dict):
        merged = dict(tc)
        for k in ("tie_word_embeddings",):
            merged.setdefault(k, cfg.get(k))
        return merged
    return cfg


def _arch_of(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    mt = cfg.get("model_type", "")
    a = archs[0] if archs else ""
    if a == "Gemma4AssistantForCausalLM" or mt == "gemma4_assistant":
        return "gemma4-assistant"
    if a.startswith("Gemma4") or mt in ("gemma4", "gemma4_text"):
        return "gemma4"
    if a.startswith("Gemma3") and "Gemma3n" not in a or mt in ("gemma3", "gemma3_text"):
        return "gemma3"
    if a in ("LlamaForCausalLM", "MistralForCausalLM") or mt == "llama":
        return "llama"
    raise ValueError(f"unsupported architecture {a or mt!r} (supported: Gemma4*, "
                     "Gemma4AssistantForCausalLM, Gemma3*, LlamaForCausalLM)")


def _rope_parameters(h: dict[str, Any]) -> dict[str, Any]:
    rp = h.get("rope_parameters") or h.get("rope_scaling") or {}
    return rp if isinstance(rp, dict) else {}


@dataclass
class _Gemma4Params:
    n_layer: int
    layer_types: list[str]
    head_dim: int
    head_dim_global: int
    n_head_kv: int
    n_head_kv_global: int | None   # None: no per-layer array (as convert_hf_to_gguf)
    n_kv_shared: int


def _gemma4_params(h: dict[str, Any]) -> _Gemma4Params:
    """Per-layer structure from a Gemma 4 text config in either serialisation: the release
    format (global_head_dim, num_global_key_value_heads) or transformers >= 5.23's
    (per_layer_config {layer index: {head_dim, num_key_value_heads}})."""
    L = h["num_hidden_layers"]
    lt = h.get("layer_types")
    if not lt:
        lt = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(L)]
    lt = list(lt)
    lt[-1] = "full_attention"        # HF forces the last layer to be global
    hd = h.get("head_dim", 256)
    hd_g = h.get("global_head_dim")
    kv_g = h.get("num_global_key_value_heads")
    plc = h.get("per_layer_config") or {}
    for k, v in plc.items():
        il = int(k)
        if lt[il] == "full_attention" and isinstance(v, dict):
            hd_g = v.get("head_dim", hd_g)
            kv_g = v.get("num_key_value_heads", kv_g)
    if hd_g is None:
        hd_g = 512
    if kv_g is not None and not h.get("attention_k_eq_v", False) and "per_layer_config" not in h:
        # HF applies num_global_key_value_heads only with attention_k_eq_v
        kv_g = None
    return _Gemma4Params(L, lt, hd, hd_g, h.get("num_key_value_heads", 1), kv_g,
                         h.get("num_kv_shared_layers", 0) or 0)


def _meta_common(w: gguf.GGUFWriter, h: dict[str, Any], n_ff: int | list[int] | None = None,
                 n_head_kv: int | list[int] | None = None) -> None:
    """TextModel.set_gguf_parameters: the keys every architecture gets. n_ff / n_head_kv
    override the config's scalars with per-layer arrays (Gemma 4)."""
    w.add_context_length(h.get("max_position_embeddings", 131072))
    w.add_embedding_length(h["hidden_size"])
    w.add_block_count(h["num_hidden_layers"])
    w.add_feed_forward_length(n_ff if n_ff is not None else h["intermediate_size"])
    w.add_head_count(h["num_attention_heads"])
    w.add_head_count_kv(n_head_kv if n_head_kv is not None else
                        h.get("num_key_value_heads", h["num_attention_heads"]))
    w.add_layer_norm_rms_eps(h.get("rms_norm_eps", 1e-6))
    rp = _rope_parameters(h)
    full = rp.get("full_attention", rp)
    theta = full.get("rope_theta", h.get("rope_theta"))
    if theta is not None:
        w.add_rope_freq_base(float(theta))
    swa = rp.get("sliding_attention", {})
    if swa.get("rope_theta") is not None:
        w.add_rope_freq_base_swa(float(swa["rope_theta"]))
    if full.get("rope_type") == "linear" and full.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(full["factor"]))


def _meta_gemma4(w: gguf.GGUFWriter, h: dict[str, Any]) -> None:
    p = _gemma4_params(h)
    swa = [t == "sliding_attention" for t in p.layer_types]
    n_ff: int | list[int] = h["intermediate_size"]
    if h.get("use_double_wide_mlp"):        # KV-shared layers have a 2x wide MLP
        first_shared = p.n_layer - p.n_kv_shared
        n_ff = [h["intermediate_size"] * (1 if il < first_shared else 2)
                for il in range(p.n_layer)]
    n_kv: int | list[int] = p.n_head_kv
    if p.n_head_kv_global is not None:
        n_kv = [p.n_head_kv if s else p.n_head_kv_global for s in swa]
    _meta_common(w, h, n_ff, n_kv)
    if h.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(h["final_logit_softcapping"]))
    w.add_sliding_window(h.get("sliding_window", 512))
    if h.get("num_experts"):
        w.add_expert_count(h["num_experts"])
        w.add_expert_used_count(h["top_k_experts"])
    if h.get("moe_intermediate_size"):
        w.add_expert_feed_forward_length(h["moe_intermediate_size"])
    w.add_shared_kv_layers(p.n_kv_shared)
    w.add_embedding_length_per_layer_input(h.get("hidden_size_per_layer_input") or 0)
    w.add_sliding_window_pattern(swa)
    w.add_key_length(p.head_dim_global)
    w.add_value_length(p.head_dim_global)
    w.add_key_length_swa(p.head_dim)
    w.add_value_length_swa(p.head_dim)
    w.add_rope_dimension_count(p.head_dim_global)
    w.add_rope_dimension_count_swa(int(p.head_dim * h.get("partial_rotary_factor", 1.0)))


def _meta_gemma4_assistant(w: gguf.GGUFWriter, h: dict[str, Any], cfg: dict[str, Any],
                           masked: bool) -> None:
    """llama.cpp conversion/gemma.py Gemma4AssistantModel.set_gguf_parameters: the Gemma 4
    keys (every layer KV-shared: Gemma4AssistantConfig.__post_init__), embedding_length_out =
    backbone_hidden_size (the target's hidden size) and nextn_predict_layers = block_count.
    With the masked embedding (use_ordered_embeddings; llama.cpp's converter drops it) also
    `gemma4-assistant.centroid_intermediate_top_k`, a key of ours."""
    h = dict(h, num_kv_shared_layers=h["num_hidden_layers"])
    _meta_gemma4(w, h)
    w.add_embedding_length_out(int(cfg.get("backbone_hidden_size", 1536)))
    w.add_nextn_predict_layers(h["num_hidden_layers"])
    if masked:
        w.add_uint32(f"{w.arch}.centroid_intermediate_top_k",
                     int(cfg.get("centroid_intermediate_top_k", 32)))


def _meta_gemma3(w: gguf.GGUFWriter, h: dict[str, Any]) -> None:
    _meta_common(w, h)
    hd = h.get("head_dim", 256)
    w.add_key_length(hd)
    w.add_value_length(hd)
    if h.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(h["final_logit_softcapping"]))
    if h.get("sliding_window_pattern") != 1 and h.get("sliding_window"):
        w.add_sliding_window(h["sliding_window"])


def _meta_llama(w: gguf.GGUFWriter, h: dict[str, Any], n_vocab: int) -> None:
    _meta_common(w, h)
    w.add_vocab_size(n_vocab)
    w.add_rope_dimension_count(h.get("head_dim") or h["hidden_size"] // h["num_attention_heads"])


def _llama_permute(wt: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf LlamaModel.permute: HF rotate-half rows -> llama.cpp's adjacent
    pairs: within each head, rows (i, i + d/2) become (2i, 2i + 1)."""
    return (wt.reshape(n_head, 2, wt.shape[0] // n_head // 2, *wt.shape[1:])
            .swapaxes(1, 2).reshape(wt.shape))


# Gemma4AssistantForCausalLM's own tensors -> llama.cpp's names (gguf-py tensor_mapping:
# NEXTN_PROJ_PRE / NEXTN_PROJ_POST, MASKED_EMBD_CENTROIDS / MASKED_EMBD_ORDERING)
_ASSISTANT_NAMES = {
    "pre_projection.weight": "nextn.pre_projection.weight",
    "post_projection.weight": "nextn.post_projection.weight",
    "masked_embedding.centroids.weight": "masked_embd_centroids.weight",
    "masked_embedding.token_ordering": "masked_embd_ordering",
}

_SKIP_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.",
                  "model.embed_audio.", "vision_tower.", "audio_tower.", "multi_modal_projector.",
                  "model.multi_modal_projector.", "multimodal_projector.", "vision_model.")


def _hf_tensors(st: SafetensorsDir, arch: str, h: dict[str, Any], n_vocab_real: int
                ) -> Iterator[tuple[str, Callable[[], np.ndarray], tuple[int, ...],
                                    Callable[[int, int], np.ndarray] | None]]:
    """(GGUF name, loader, numpy shape, row loader or None) for every tensor of the text
    decoder. The row loader (r0, r1) -> rows of the tensor seen as 2-D is given when the
    tensor needs no whole-tensor transform, so big tables are converted in chunks."""
    # the assistant's layers are named as Gemma 4's (gguf-py's GEMMA4_ASSISTANT list is a
    # subset of GEMMA4's); its own tensors are mapped below
    march = {"gemma4": gguf.MODEL_ARCH.GEMMA4, "gemma4-assistant": gguf.MODEL_ARCH.GEMMA4,
             "gemma3": gguf.MODEL_ARCH.GEMMA3, "llama": gguf.MODEL_ARCH.LLAMA}[arch]
    tmap = gguf.get_tensor_name_map(march, h["num_hidden_layers"])
    tied = h.get("tie_word_embeddings", arch != "llama")
    names = st.names()
    has_embed = any(n.endswith("embed_tokens.weight") for n in names)
    if tied is None:
        tied = True
    n_head, n_kv = h["num_attention_heads"], h.get("num_key_value_heads", h["num_attention_heads"])

    for name in names:
        if name.startswith(_SKIP_PREFIXES) or "rotary_emb" in name:
            continue
        hf = name.replace("model.language_model.", "model.")
        if hf.startswith("language_model."):
            hf = hf[len("language_model."):]
        if hf == "lm_head.weight":
            if tied and has_embed:
                continue            # tied: the output is token_embd
            if tied:
                hf = "model.embed_tokens.weight"   # file stores only lm_head (TinyStories)
        shape = st.shape(name)
        post: Callable[[np.ndarray], np.ndarray] = lambda a: a
        m = re.match(r"model\.layers\.(\d+)\.(.*)$", hf)
        bid = int(m.group(1)) if m else None
        rest = m.group(2) if m else hf

        if arch == "gemma4-assistant" and hf in _ASSISTANT_NAMES:
            new = _ASSISTANT_NAMES[hf]
        elif arch == "gemma4" and rest == "router.scale":
            new = f"blk.{bid}.ffn_gate_inp.scale"
        elif arch == "gemma4" and rest == "router.per_expert_scale":
            new = f"blk.{bid}.ffn_down_exps.scale"
        else:
            q = hf
            if q.endswith("layer_scalar") or (".experts." in q and not q.endswith(".weight")):
                q += ".weight"
            new = tmap.get_name(q, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise ValueError(f"{st.dir}: no GGUF name for tensor {name!r} ({arch})")

        if arch == "gemma3" and hf.endswith("norm.weight"):
            post = lambda a: a + 1.0                # Gemma3RMSNorm: x * (1 + w)
        if hf.endswith("embed_tokens.weight") and arch in ("gemma3", "gemma4", "gemma4-assistant") \
                and shape[0] > n_vocab_real:
            shape = (n_vocab_real, *shape[1:])      # drop rows past the tokenizer (Gemma3Model)
            post = (lambda n: lambda a: a[:n])(n_vocab_real)
        if arch == "llama" and rest == "self_attn.q_proj.weight":
            post = (lambda nh: lambda a: _llama_permute(a, nh))(n_head)
        elif arch == "llama" and rest == "self_attn.k_proj.weight":
            post = (lambda nh: lambda a: _llama_permute(a, nh))(n_kv)
        if len(shape) == 0:
            shape = (1,)

        def load(name: str = name, post: Callable[[np.ndarray], np.ndarray] = post) -> np.ndarray:
            a = post(st.get(name))
            return np.ascontiguousarray(a.reshape(-1) if a.ndim == 0 else a, dtype=np.float32)
        rows = None
        if len(shape) >= 2 and not (arch == "llama" and rest.endswith(("q_proj.weight",
                                                                        "k_proj.weight"))):
            rows = (lambda name: lambda r0, r1: st.get_rows(name, r0, r1))(name)
        yield new, load, tuple(shape), rows


def _tensor_type(new: str, shape: tuple[int, ...], want: T) -> T:
    """convert_hf_to_gguf prepare_tensors rules (and llama-quantize's for Q4_0)."""
    if new == "masked_embd_ordering":
        return T.I32        # token ids (HF keeps an int64 buffer)
    if want == T.F32 or len(shape) <= 1 or new.endswith("_norm.weight") \
            or not new.endswith(".weight") or re.search(r"ffn_gate_inp\.weight$", new):
        return T.F32
    if want == T.Q4_0 and new == "per_layer_model_proj.weight":
        return T.F16        # llama-quantize never quantizes it; F16 as in a convert to f16
    if want in (T.Q8_0, T.Q4_0) and shape[-1] % 32 != 0:
        return T.F16        # QuantError -> F16 fallback
    return want


def _nbytes(shape: tuple[int, ...], t: T) -> int:
    blk, size = gguf.GGML_QUANT_SIZES[t]
    n = 1
    for d in shape:
        n *= d
    return n // blk * size


def _encode(a: np.ndarray, t: T) -> np.ndarray:
    if t == T.F32:
        return a.astype(np.float32, copy=False)
    if t == T.I32:
        return np.rint(a).astype(np.int32)
    if t == T.F16:
        return a.astype(np.float16)
    return gguf.quants.quantize(a, t)


# ---------------------------------------------------------------------------------------------
# Driver


def convert(hf_dir: str | Path, out_path: str | Path, type: str = "f16",
            name: str | None = None) -> ConvertReport:
    """Convert a HF checkpoint directory to a GGUF file.

    type: f32 | f16 | bf16 | q8_0 | q4_0. name: general.name (default: the directory name).
    Raises FileNotFoundError (missing config.json / safetensors / tokenizer), ValueError
    (unsupported architecture, unknown type, unmapped tensor).
    """
    t0 = time.perf_counter()
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if type not in FILE_TYPES:
        raise ValueError(f"unknown --type {type!r}; expected one of {', '.join(FILE_TYPES)}")
    ftype, want = FILE_TYPES[type]
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no config.json in {hf_dir}")
    cfg = _load_json(cfg_path)
    arch = _arch_of(cfg)
    h = _text_config(cfg)
    g4 = arch in ("gemma4", "gemma4-assistant")
    st = SafetensorsDir(hf_dir)

    # tokenizer
    if (hf_dir / "tokenizer.model").is_file() and not g4:
        vocab = spm_vocab(hf_dir / "tokenizer.model")
        n_real = len(vocab.tokens)
        if h.get("vocab_size", 0) > n_real:     # _create_vocab_sentencepiece pads with [PADi]
            for i in range(n_real, h["vocab_size"]):
                vocab.tokens.append(f"[PAD{i}]")
                vocab.scores.append(-1000.0)
                vocab.types.append(int(gguf.TokenType.UNUSED))
    else:
        vocab = hf_vocab(hf_dir, n_vocab=h.get("vocab_size") if arch == "llama" else None)
        if g4:
            vocab.model = "gemma4"
            vocab.types = [int(gguf.TokenType.USER_DEFINED) if t in GEMMA4_VISIBLE_TOKENS
                           else ty for t, ty in zip(vocab.tokens, vocab.types)]
    n_vocab_real = len(vocab.tokens)

    w = gguf.GGUFWriter(out_path, arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or hf_dir.resolve().name)
    if arch == "gemma4":
        _meta_gemma4(w, h)
    elif arch == "gemma4-assistant":
        _meta_gemma4_assistant(w, h, cfg, "masked_embedding.centroids.weight" in st)
    elif arch == "gemma3":
        _meta_gemma3(w, h)
    else:
        _meta_llama(w, h, n_vocab_real)
    w.add_file_type(int(ftype))

    w.add_tokenizer_model(vocab.model)
    if arch == "llama" and vocab.model == "llama" and not (hf_dir / "tokenizer.model").is_file():
        w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    special = gguf.SpecialVocab(hf_dir, load_merges=g4, n_vocab=n_vocab_real)
    if g4:
        special.add_special_token["bos"] = True     # Gemma4Model.set_vocab: add_bos_token True
    special.add_to_gguf(w, quiet=True)
    if arch == "gemma3" or g4:
        w.add_add_space_prefix(False)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # tensor plan
    plan: list[tuple[str, Callable[[], np.ndarray], tuple[int, ...], T,
                     Callable[[int, int], np.ndarray] | None]] = []
    if g4:
        rp = _rope_parameters(h).get("full_attention", {})
        if rp.get("rope_type", "proportional") != "proportional":
            raise ValueError(f"{cfg_path}: full_attention rope_type {rp.get('rope_type')!r}; "
                             "llama.cpp's gemma4 expects 'proportional'")
        p = _gemma4_params(h)
        vals = np.array(rope_freqs_values(p.head_dim_global,
                                          rp.get("partial_rotary_factor", 0.25)), np.float32)
        plan.append(("rope_freqs.weight", lambda v=vals: v, vals.shape, T.F32, None))
    for new, load, shape, rows in _hf_tensors(st, arch, h, n_vocab_real):
        plan.append((new, load, shape, _tensor_type(new, shape, want), rows))

    for new, _, shape, t, _ in plan:
        w.add_tensor_info(new, shape, np.dtype(np.float32), _nbytes(shape, t), raw_dtype=t)
    w.write_header_to_file(out_path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    counts: dict[str, int] = {}
    chunk = _CHUNK_ELEMENTS
    for new, load, shape, t, rows in plan:
        n = math.prod(shape)
        written = 0
        if rows is not None and n > chunk:
            n_rows, row = n // shape[-1], shape[-1]
            step = max(1, chunk // row)
            for r0 in range(0, n_rows, step):
                data = _encode(rows(r0, min(n_rows, r0 + step)), t)
                data.tofile(fout)
                written += data.nbytes
        else:
            a = load()
            if a.shape != shape:
                raise ValueError(f"{hf_dir}: tensor for {new} has shape {a.shape}, "
                                 f"expected {shape}")
            data = _encode(a, t)
            data.tofile(fout)
            written = data.nbytes
        if written != _nbytes(shape, t):
            raise AssertionError(f"{new}: wrote {written} bytes, expected {_nbytes(shape, t)}")
        w.write_padding(fout, written)
        counts[t.name] = counts.get(t.name, 0) + 1
    w.close()
    return ConvertReport(str(out_path), arch, type, len(plan), out_path.stat().st_size,
                         round(time.perf_counter() - t0, 3), n_vocab_real, counts)


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(args: argparse.Namespace) -> int:
    r = convert(args.hf_dir, args.out, type=args.type, name=args.name)
    types = ", ".join(f"{k} {v}" for k, v in sorted(r.tensor_types.items()))
    print(f"wrote {r.path}: {r.arch}, {r.n_tensors} tensors ({types}), "
          f"{r.file_bytes / 1e6:.1f} MB in {r.seconds:.1f} s", file=sys.stderr)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a Hugging Face checkpoint to GGUF",
                       description="Convert a Hugging Face Gemma 4 / Gemma 3 / Llama checkpoint "
                       "(config.json, safetensors, tokenizer) to GGUF with llama.cpp's names.")
    p.add_argument("hf_dir", help="directory with config.json, *.safetensors, tokenizer.json")
    p.add_argument("out", help="output .gguf path")
    p.add_argument("--type", default="f16", choices=sorted(FILE_TYPES),
                   help="tensor type for the weights (default f16; norms stay f32)")
    p.add_argument("--name", default=None, help="general.name (default: directory name)")
    p.set_defaults(func=_cli)
