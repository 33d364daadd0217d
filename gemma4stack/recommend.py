"""Which Gemma 4 tiers fit a machine, where they go, and how fast they should decode.

    >>> import gemma4stack as g4
    >>> rec = g4.recommend(context=8192)                 # detects this machine (hwloc + bandwidth)
    >>> rec.best                                         # largest variant x quant that fits at >= 5 tokens/s
    >>> rec                                              # a table in Jupyter, marking what fits
    >>> g4.recommend(machine="mac-mini-m4-16gb")         # a machine you don't have (data/machines.toml)

Everything model-specific is data: data/gemma4_catalog.toml holds the architecture of each variant
(layers, widths, heads, sliding window, KV sharing, experts) and of each quantization (bits per
weight per tensor class), each number with its source. From those this module derives, tensor by
tensor in llama.cpp's GGUF naming:

- parameter counts (checked in tests against the published totals and against HF transformers'
  Gemma4TextModel built on the meta device);
- weights_bytes: the size of the text-decoder GGUF (the vision/audio encoders go in a separate
  mmproj file and are not counted);
- kv_bytes at a context: K and V per layer type (f16 by default, the C core's and llama.cpp's
  cache type; q8_0 or f32 on request), as the C core's paged cache holds them for one sequence
  (the same function: _core.kv_seq_bytes, csrc/engine/kvcache.h g4_kvc_seq_bytes): blocks of 32
  positions; a global layer holds the whole context; a sliding-window layer at most
  ceil((sliding_window + batch_tokens - 1) / 32) + 1 blocks (the window plus one step's tokens,
  as llama.cpp's iSWA cache keeps n_swa + n_ubatch cells); E2B/E4B's KV-shared layers hold none
  (they attend over the cache of an earlier layer). Global layers of 12B/26B/31B have a single
  K=V projection (no v_proj), but K is RMS-normed and RoPE-rotated while V is only RMS-normed,
  so the cache stores both: K=V saves weights, not cache, and we count K and V;
- bytes read per decoded token: every matmul weight (attention, FFN, per-layer-embedding gate and
  projections), the whole tied output head (all 262144 rows are read for the logits), for the MoE
  only the n_expert_used of n_expert experts plus router and dense FFN; the input embedding and the
  per-layer-embedding table are gathered (one row per token), not streamed; plus the KV cache read
  by attention at that context (KV-shared layers read their producer's cache again);
- predicted decode tokens/s = bandwidth x efficiency / bytes per token, the memory roofline.
  Bandwidth is this machine's measured read bandwidth for system RAM, or the vendor's peak for a
  GPU or Apple unified memory; the efficiencies and their sources are in the catalog's
  [efficiency] table. Without a measured or known bandwidth the prediction is None, with a note.

Memory budgets (all stated in Recommendation.assumptions):
- system RAM: min(total, cgroup limit) minus headroom for the OS of max(2 GiB, 10%);
- a discrete GPU: its memory minus max(1 GiB, 5%) for the driver context and compute buffers;
  llama.cpp keeps input-layer tensors (the per-layer-embedding table and the input token
  embedding) in host memory whatever -ngl says, so those must fit in the RAM budget instead;
- Apple unified memory (what-if machines): Metal's working-set limit, 75% of RAM (see
  data/machines.toml for the measured values this rests on).

Units: bytes; bandwidth in GB/s (10^9 bytes/s); speeds in tokens/s. Nothing here runs a model.
"""
from __future__ import annotations

import argparse
import functools
import html
import json
import math
import sys
try:
    import tomllib
except ModuleNotFoundError:        # Python 3.10: the backport (a dependency there)
    import tomli as tomllib        # type: ignore[no-redef]
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

_DATA = Path(__file__).resolve().parent / "data"
CATALOG_PATH = _DATA / "gemma4_catalog.toml"
MACHINES_PATH = _DATA / "machines.toml"

GIB = 1 << 30
KV_BYTES_PER_VALUE = 2              # f16 K and V: llama.cpp's default cache_type_k / cache_type_v
RAM_HEADROOM_MIN = 2 * GIB          # left to the OS and other programs
RAM_HEADROOM_FRACTION = 0.10
GPU_RESERVE_MIN = 1 * GIB           # driver context (CUDA ~0.3-0.5 GiB) and compute buffers
GPU_RESERVE_FRACTION = 0.05
WORKING_SET_FRACTION = 0.75         # Metal recommendedMaxWorkingSetSize / RAM (data/machines.toml)
USABLE_TPS = 5.0                    # .best needs at least this predicted decode speed
DEFAULT_CONTEXT = 8192


# ---------------------------------------------------------------------------------------------
# The catalog: quantizations and variants, read from data/gemma4_catalog.toml

@dataclass(frozen=True)
class Quant:
    """A GGUF file type as the recommendation sizes it.

    bits_per_weight: 2-D matmul weights; token_embd_bits: the tied embedding / output head;
    per_layer_token_embd_bits: E2B/E4B's per-layer-embedding table. 1-D tensors are F32.
    """
    name: str
    bits_per_weight: float
    token_embd_bits: float
    per_layer_token_embd_bits: float
    rank: int
    source: str


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor: name (llama.cpp's), shape (ne0 first, as GGUF), kind.

    kind: "matmul" (streamed every token), "expert" (MoE: n_expert_used of n_expert streamed),
    "token_embd" (tied: gathered as input, streamed whole as output head),
    "per_layer_token_embd" (gathered, one row per token), "f32" (norms, scales, router).
    """
    name: str
    shape: tuple[int, ...]
    kind: str

    @property
    def n(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Variant:
    """One Gemma 4 text decoder (see the catalog for the meaning and source of each field)."""
    key: str
    name: str
    rank: int
    n_vocab: int
    n_layer: int
    n_embd: int
    swa_period: int
    sliding_window: int
    n_head: int
    n_head_kv: int
    n_head_kv_global: int
    head_dim: int
    head_dim_global: int
    n_kv_shared_layers: int
    n_ff: int
    n_ff_kv_shared: int
    n_embd_per_layer: int
    k_eq_v_global: bool
    context_length: int
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    ref: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    # -- layer types ([hf] Gemma4TextConfig.layer_types / kv_sharing_modes)
    def is_global(self, il: int) -> bool:
        return (il + 1) % self.swa_period == 0 or il == self.n_layer - 1

    def is_kv_shared(self, il: int) -> bool:
        return il >= self.n_layer - self.n_kv_shared_layers

    def layer_dims(self, il: int) -> tuple[int, int]:
        """(n_head_kv, head_dim) of layer il."""
        if self.is_global(il):
            return self.n_head_kv_global, self.head_dim_global
        return self.n_head_kv, self.head_dim

    # -- tensors, in llama.cpp's GGUF naming
    def tensors(self) -> list[TensorSpec]:
        """Every tensor of the text decoder with its shape and kind (see TensorSpec)."""
        return list(_tensors(self))

    def _build_tensors(self) -> list[TensorSpec]:
        E, V, L = self.n_embd, self.n_vocab, self.n_layer
        ple = self.n_embd_per_layer
        out = [TensorSpec("token_embd.weight", (E, V), "token_embd"),
               TensorSpec("output_norm.weight", (E,), "f32")]
        if ple:
            out += [TensorSpec("per_layer_token_embd.weight", (ple * L, V), "per_layer_token_embd"),
                    TensorSpec("per_layer_model_proj.weight", (E, ple * L), "matmul"),
                    TensorSpec("per_layer_proj_norm.weight", (ple,), "f32")]
        for il in range(L):
            out += self._layer_tensors(il)
        return out

    def _layer_tensors(self, il: int) -> list[TensorSpec]:
        E = self.n_embd
        n_kv, hd = self.layer_dims(il)
        p = f"blk.{il}."
        t = [TensorSpec(p + "attn_norm.weight", (E,), "f32"),
             TensorSpec(p + "attn_q.weight", (E, self.n_head * hd), "matmul"),
             TensorSpec(p + "attn_q_norm.weight", (hd,), "f32"),
             TensorSpec(p + "attn_output.weight", (self.n_head * hd, E), "matmul"),
             TensorSpec(p + "post_attention_norm.weight", (E,), "f32"),
             TensorSpec(p + "ffn_norm.weight", (E,), "f32"),
             TensorSpec(p + "post_ffw_norm.weight", (E,), "f32")]
        if not self.is_kv_shared(il):          # shared layers have no K/V projections at all
            t += [TensorSpec(p + "attn_k.weight", (E, n_kv * hd), "matmul"),
                  TensorSpec(p + "attn_k_norm.weight", (hd,), "f32")]
            if not (self.k_eq_v_global and self.is_global(il)):
                t.append(TensorSpec(p + "attn_v.weight", (E, n_kv * hd), "matmul"))
        ff = self.n_ff_kv_shared if self.is_kv_shared(il) else self.n_ff
        t += [TensorSpec(p + "ffn_gate.weight", (E, ff), "matmul"),
              TensorSpec(p + "ffn_up.weight", (E, ff), "matmul"),
              TensorSpec(p + "ffn_down.weight", (ff, E), "matmul")]
        if self.n_expert:                      # [hf] Gemma4TextRouter + Gemma4TextExperts
            X, F = self.n_expert, self.n_ff_exp
            t += [TensorSpec(p + "ffn_gate_inp.weight", (E, X), "f32"),       # router, kept F32
                  TensorSpec(p + "ffn_gate_inp_scale.weight", (E,), "f32"),
                  TensorSpec(p + "ffn_exp_probs_scale.weight", (X,), "f32"),
                  TensorSpec(p + "ffn_gate_up_exps.weight", (E, 2 * F, X), "expert"),
                  TensorSpec(p + "ffn_down_exps.weight", (F, E, X), "expert"),
                  TensorSpec(p + "pre_ffw_norm_2.weight", (E,), "f32"),
                  TensorSpec(p + "post_ffw_norm_1.weight", (E,), "f32"),
                  TensorSpec(p + "post_ffw_norm_2.weight", (E,), "f32")]
        if self.n_embd_per_layer:              # [hf] per_layer_input_gate / per_layer_projection
            P = self.n_embd_per_layer
            t += [TensorSpec(p + "inp_gate.weight", (E, P), "matmul"),
                  TensorSpec(p + "proj.weight", (P, E), "matmul"),
                  TensorSpec(p + "post_norm.weight", (E,), "f32")]
        return t

    # -- parameter counts
    def n_params(self) -> int:
        """Parameters of the text decoder (embeddings included, encoders excluded)."""
        return sum(t.n for t in self.tensors())

    def n_params_effective(self) -> int:
        """Parameters without the per-layer-embedding table (Google's "effective" size)."""
        return sum(t.n for t in self.tensors() if t.kind != "per_layer_token_embd")

    def n_params_active(self) -> int:
        """Parameters used per token: experts counted n_expert_used / n_expert."""
        total = 0.0
        for t in self.tensors():
            total += t.n * self.n_expert_used / self.n_expert if t.kind == "expert" else t.n
        return int(total)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "ref"}
        d.update(n_params=self.n_params(), n_params_effective=self.n_params_effective(),
                 n_params_active=self.n_params_active())
        return d


@functools.lru_cache(maxsize=None)
def _tensors(v: Variant) -> tuple[TensorSpec, ...]:
    return tuple(v._build_tensors())


@dataclass(frozen=True)
class Catalog:
    variants: dict[str, Variant]
    quants: dict[str, Quant]
    efficiency: dict[str, Any]


@functools.lru_cache(maxsize=None)
def load_catalog(path: str | None = None) -> Catalog:
    """Read data/gemma4_catalog.toml (or `path`). Raises OSError, tomllib.TOMLDecodeError."""
    with open(path or CATALOG_PATH, "rb") as f:
        raw = tomllib.load(f)
    quants = {name: Quant(name=name, bits_per_weight=q["bits_per_weight"],
                          token_embd_bits=q["token_embd_bits"],
                          per_layer_token_embd_bits=q["per_layer_token_embd_bits"],
                          rank=q["rank"], source=q["source"])
              for name, q in raw["quant"].items()}
    arch_fields = {f for f in Variant.__dataclass_fields__} - {"key", "ref", "n_vocab"}
    variants = {}
    for key, v in raw["variant"].items():
        kw = {k: v[k] for k in arch_fields if k in v}
        kw.setdefault("n_ff_kv_shared", v["n_ff"])
        ref = {k: v[k] for k in v if k not in arch_fields}
        variants[key] = Variant(key=key, n_vocab=raw["n_vocab"], ref=ref, **kw)
    return Catalog(variants=variants, quants=quants, efficiency=raw["efficiency"])


def variants() -> list[Variant]:
    """The Gemma 4 variants, smallest first."""
    return sorted(load_catalog().variants.values(), key=lambda v: v.rank)


def quants() -> list[Quant]:
    """The quantizations, smallest first (Q4_0, Q4_K_M, Q8_0, BF16)."""
    return sorted(load_catalog().quants.values(), key=lambda q: q.rank)


def get_variant(name: str) -> Variant:
    """A variant by key or name, case-insensitive ("e2b", "E2B", "26B-A4B"). Raises KeyError."""
    for v in load_catalog().variants.values():
        if name.lower() in (v.key, v.name.lower()):
            return v
    raise KeyError(f"unknown Gemma 4 variant {name!r}; known: {[v.name for v in variants()]}")


def get_quant(name: str) -> Quant:
    """A quantization by name, case-insensitive ("q4_0", "Q4_K_M"). Raises KeyError."""
    for q in load_catalog().quants.values():
        if name.upper() == q.name:
            return q
    raise KeyError(f"unknown quantization {name!r}; known: {[q.name for q in quants()]}")


# ---------------------------------------------------------------------------------------------
# Sizes: weights, KV cache, bytes read per token

def _bits(t: TensorSpec, q: Quant) -> float:
    if t.kind == "f32":
        return 32.0
    if t.kind == "token_embd":
        return q.token_embd_bits
    if t.kind == "per_layer_token_embd":
        return q.per_layer_token_embd_bits
    return q.bits_per_weight


@functools.lru_cache(maxsize=None)
def weights_bytes(variant: Variant, quant: Quant) -> int:
    """Bytes of the text decoder's tensors in a GGUF of this quantization (header not counted)."""
    return int(sum(t.n * _bits(t, quant) / 8 for t in variant.tensors()))


@functools.lru_cache(maxsize=None)
def host_resident_bytes(variant: Variant, quant: Quant) -> int:
    """Bytes llama.cpp keeps in host memory even with every layer offloaded to a GPU.

    Input-layer tensors (token_embd as input, per_layer_token_embd) are assigned to the CPU
    buffer type whatever -ngl says (llama-model.cpp: "there is very little benefit to offloading
    the input layer"); the tied output head is duplicated into GPU memory.
    """
    return int(sum(t.n * _bits(t, quant) / 8 for t in variant.tensors()
                   if t.kind in ("token_embd", "per_layer_token_embd")))


@functools.lru_cache(maxsize=None)
def gpu_resident_bytes(variant: Variant, quant: Quant) -> int:
    """Bytes in GPU memory when fully offloaded: everything but the per-layer-embedding table
    (the tied token_embd is there once, as the output head)."""
    return int(sum(t.n * _bits(t, quant) / 8 for t in variant.tensors()
                   if t.kind != "per_layer_token_embd"))


KV_BATCH_TOKENS = 128               # the engine's default tokens per step (csrc/engine/engine.h)


def kv_layers(variant: Variant) -> list[tuple[int, int, int]]:
    """(dim_k, dim_v, window) of each layer that stores K/V, as the C core's paged cache is
    built for the variant's GGUF (window 0: global)."""
    out = []
    for il in range(variant.n_layer):
        if variant.is_kv_shared(il):
            continue
        n_kv, hd = variant.layer_dims(il)
        out.append((n_kv * hd, n_kv * hd, 0 if variant.is_global(il) else variant.sliding_window))
    return out


def kv_cache_breakdown(variant: Variant, context: int, cache_type: str = "f16",
                       batch_tokens: int = KV_BATCH_TOKENS) -> dict:
    """KV cache of one sequence by layer type at `context` tokens, as the C core's paged
    cache holds it (cache_type "f16", "q8_0" or "f32"; batch_tokens: the engine's tokens per
    step, which a sliding-window layer holds beyond its window).

    Returns {"sliding": {...}, "global": {...}, "kv_shared_layers": n, "total_bytes": b}; each
    type gives layers (holding a cache), cells per layer (positions held, whole blocks of 32),
    bytes_per_cell (K and V of n_head_kv x head_dim values) and bytes.
    """
    from gemma4stack import _core

    out: dict[str, Any] = {}
    layers = kv_layers(variant)
    for kind in ("sliding", "global"):
        mine = [lay for lay in layers if (lay[2] > 0) == (kind == "sliding")]
        b = _core.kv_seq_bytes(mine, context, batch_tokens, cache_type) if mine else 0
        per_cell = _core.kv_seq_bytes(mine[:1], 32, 32, cache_type) // 32 if mine else 0
        cells = b // len(mine) // per_cell if mine else 0
        out[kind] = {"layers": len(mine), "cells": cells, "bytes_per_cell": per_cell, "bytes": b}
    out["kv_shared_layers"] = variant.n_kv_shared_layers
    out["total_bytes"] = out["sliding"]["bytes"] + out["global"]["bytes"]
    return out


def kv_cache_bytes(variant: Variant, context: int, cache_type: str = "f16",
                   batch_tokens: int = KV_BATCH_TOKENS) -> int:
    """Bytes of KV cache one sequence of `context` tokens holds (see kv_cache_breakdown)."""
    from gemma4stack import _core
    return _core.kv_seq_bytes(kv_layers(variant), context, batch_tokens, cache_type)


def bytes_per_token(variant: Variant, quant: Quant, context: int) -> int:
    """Bytes read from memory to decode one token with `context` tokens in the cache.

    Streamed: matmul weights, the whole tied output head, F32 tensors, and for the MoE
    n_expert_used / n_expert of the expert tensors. Gathered: one row of token_embd and one of
    per_layer_token_embd. KV: every layer reads the cells it attends to, shared layers included.
    """
    total = 0.0
    for t in variant.tensors():
        b = t.n * _bits(t, quant) / 8
        if t.kind == "expert":
            total += b * variant.n_expert_used / variant.n_expert
        elif t.kind == "per_layer_token_embd":
            total += b / t.shape[-1]                     # one row of n_vocab
        elif t.kind == "token_embd":
            total += b + b / t.shape[-1]                 # output head + the input row
        else:
            total += b
    for il in range(variant.n_layer):
        n_kv, hd = variant.layer_dims(il)
        cells = context if variant.is_global(il) else min(context, variant.sliding_window)
        total += cells * 2 * n_kv * hd * KV_BYTES_PER_VALUE
    return int(total)


# ---------------------------------------------------------------------------------------------
# Where a model can go: placement targets from a hardware report or a what-if machine

@dataclass
class Target:
    """One memory a model can live in, with its budget and decode bandwidth.

    placement: "gpu:<name>", "ram" or "unified"; budget_bytes: what models + KV may use;
    bandwidth_gbs: GB/s the speed prediction uses (None: unknown); efficiency: fraction of it
    decode achieves; host_budget_bytes: RAM budget for host-resident tensors (GPU targets).
    vendor: "nvidia", "amd", "intel", "apple" or None (which engines can run there);
    efficiency_by_quant: measured fractions per quant name that override `efficiency`
    (our C core on system RAM, data/gemma4_catalog.toml [[efficiency.ram_measured]]);
    efficiency_source: where the efficiency figures come from.
    """
    placement: str
    kind: str
    memory_bytes: int
    budget_bytes: int
    budget_rule: str
    bandwidth_gbs: float | None
    bandwidth_source: str
    efficiency: float
    host_budget_bytes: int | None = None
    vendor: str | None = None
    efficiency_by_quant: dict[str, float] | None = None
    efficiency_source: str = ""

    def efficiency_for(self, quant: str) -> float:
        """The decode efficiency for a quant name on this target."""
        return (self.efficiency_by_quant or {}).get(quant, self.efficiency)

    def to_dict(self) -> dict:
        return asdict(self)


def _ram_budget(total: int) -> tuple[int, int]:
    headroom = max(RAM_HEADROOM_MIN, int(RAM_HEADROOM_FRACTION * total))
    return max(0, total - headroom), headroom


def _gpu_budget(mem: int) -> int:
    return max(0, mem - max(GPU_RESERVE_MIN, int(GPU_RESERVE_FRACTION * mem)))


@functools.lru_cache(maxsize=None)
def _machines_raw() -> dict:
    with open(MACHINES_PATH, "rb") as f:
        return tomllib.load(f)


def _gpu_entry_bytes(g: dict) -> int:
    return int(g["memory_bytes"]) if "memory_bytes" in g else int(g["memory_gib"] * GIB)


def known_gpu(name: str) -> dict | None:
    """The data/machines.toml [gpu.*] entry whose `match` substrings occur in `name`, or None."""
    low = (name or "").lower()
    for key, g in _machines_raw()["gpu"].items():
        if any(m in low for m in g["match"]):
            return {"key": key, **g}
    return None


def gpu_vendor(name: str, vendor: str = "") -> str | None:
    """"nvidia", "amd", "intel" or "apple" from a GPU's name and vendor strings, else None."""
    text = f"{vendor} {name}".lower()
    for key, words in (("nvidia", ("nvidia", "tesla", "geforce", "quadro", "rtx ")),
                       ("amd", ("amd", "advanced micro", "ati ", "radeon", "instinct")),
                       ("intel", ("intel", " arc ")), ("apple", ("apple",))):
        if any(w in f" {text} " for w in words):
            return key
    return None


def known_chip(brand: str) -> dict | None:
    """The data/machines.toml [chip.*] entry of an Apple chip brand string ("Apple M4 Pro")."""
    low = " ".join((brand or "").lower().split())
    for key, c in _machines_raw().get("chip", {}).items():
        if low == c["match"]:
            return {"key": key, **c}
    return None


def _ram_efficiency(cpu_vendor: str | None, eff: dict) -> tuple[float, dict[str, float], str]:
    """Our C core's decode efficiency on system RAM for a CPU vendor (hwloc's CPUVendor):
    (fallback, {quant: measured fraction}, source) from [[efficiency.ram_measured]]."""
    rows = [m for m in eff.get("ram_measured", []) if m["cpu_vendor"] == (cpu_vendor or "")]
    if not rows:
        return eff["ram"], {}, (f"no measurement of our core on a {cpu_vendor or 'unknown'} CPU: "
                                f"{eff['ram']} = {eff['ram_source']}")
    by_quant = {m["quant"]: float(m["fraction"]) for m in rows}
    src = (f"measured on {rows[0]['machine']} (benchmarks/RESULTS.md): "
           + ", ".join(f"{q} {f:.3f}" for q, f in by_quant.items())
           + f"; other quants take this CPU kind's lowest, {min(by_quant.values()):.3f}")
    return min(by_quant.values()), by_quant, src


def machines() -> list[dict]:
    """The what-if machines of data/machines.toml: [{key, name, kind, memory, bandwidth, source}]."""
    raw = _machines_raw()
    out = []
    for key, m in raw["machine"].items():
        d = {"key": key, "name": m["name"], "kind": m["kind"]}
        if m["kind"] == "unified":
            d.update(memory_gib=m["memory_gib"], bandwidth_gbs=m["bandwidth_gbs"], source=m["source"])
        else:
            g = raw["gpu"][m["gpu"]]
            d.update(gpu=g["name"], gpu_memory_bytes=_gpu_entry_bytes(g), bandwidth_gbs=g["bandwidth_gbs"],
                     host_ram_gib=m.get("host_ram_gib", 64), source=g["source"])
        out.append(d)
    return out


def _targets_for_machine(name: str | dict, eff: dict) -> tuple[list[Target], str, list[str]]:
    raw = _machines_raw()
    if isinstance(name, dict):                  # a machine of your own, shaped like the catalog's
        m = {"name": "custom machine", "source": "given by the caller", **name}
    else:
        m = raw["machine"].get(name)
        if m is None:
            raise ValueError(f"unknown machine {name!r}; known: {', '.join(raw['machine'])}")
    if m.get("kind") not in ("unified", "gpu"):
        raise ValueError(f"machine kind must be 'unified' or 'gpu', got {m.get('kind')!r}")
    notes = []
    if m["kind"] == "unified":
        mem = int(m["memory_gib"] * GIB)
        frac = m.get("working_set_fraction", WORKING_SET_FRACTION)
        t = Target("unified", "unified", mem, int(frac * mem),
                   f"Metal working-set limit {frac:.0%} of {m['memory_gib']} GiB unified memory",
                   float(m["bandwidth_gbs"]), m["source"], eff["unified"], vendor="apple")
        return [t], m["name"], notes
    g = m["gpu"] if isinstance(m["gpu"], dict) else raw["gpu"][m["gpu"]]
    g = {"source": "given by the caller", **g}
    host = int(m.get("host_ram_gib", 64) * GIB)
    host_budget, headroom = _ram_budget(host)
    gmem = _gpu_entry_bytes(g)
    targets = [Target(f"gpu:{g['name']}", "gpu", gmem, _gpu_budget(gmem),
                      f"{gmem / 1e9:.1f} GB minus max(1 GiB, 5%) reserve",
                      float(g["bandwidth_gbs"]), g["source"], eff["gpu"], host_budget,
                      vendor=g.get("vendor") or gpu_vendor(g["name"])),
               Target("ram", "ram", host, host_budget,
                      f"{m.get('host_ram_gib', 64)} GiB host RAM (assumed) minus max(2 GiB, 10%)",
                      None, "host RAM bandwidth is not part of this what-if", eff["ram"])]
    notes.append("host RAM bandwidth unknown for this what-if: models that only fit in host RAM "
                 "get no speed prediction")
    return targets, m["name"], notes


def _targets_for_report(report: Any, eff: dict) -> tuple[list[Target], str, list[str]]:
    notes: list[str] = []
    mem = report.memory
    total = int(mem.total_bytes)
    limit = getattr(mem, "cgroup_limit_bytes", None)
    effective = min(total, int(limit)) if limit else total
    ram_budget, headroom = _ram_budget(effective)
    rule = (f"{effective / 1e9:.1f} GB {'(cgroup limit) ' if effective < total else ''}"
            f"minus max(2 GiB, 10%) = {headroom / 1e9:.1f} GB headroom")
    bw = getattr(report, "bandwidth_gbs", None)
    read = getattr(bw, "read", None) if bw is not None else None
    if read:
        ram_bw, ram_src = float(read), "measured read bandwidth (STREAM-style probe, gemma4stack.detect)"
    else:
        ram_bw, ram_src = None, "not measured"
        notes.append("system RAM bandwidth was not measured (--no-bandwidth, or a topology XML "
                     "from another machine): CPU decode speeds are left empty rather than guessed; "
                     "run without --no-bandwidth to measure it")
    targets: list[Target] = []
    # identical GPUs (a DGX) become one target: a model is placed on one GPU, never split
    count: dict[tuple[str, int | None], int] = {}
    gpus = []
    for gpu in getattr(report, "gpus", None) or []:
        if getattr(gpu, "unified", False):       # Apple silicon: the GPU works in system RAM
            targets.append(_unified_target(gpu, eff, notes))
            continue
        k = (gpu.name, gpu.memory_bytes)
        if k not in count:
            gpus.append(gpu)
        count[k] = count.get(k, 0) + 1
    for gpu in gpus:
        n_same = count[(gpu.name, gpu.memory_bytes)]
        known = known_gpu(gpu.name)
        gmem = gpu.memory_bytes
        if gmem is None and known:
            gmem = _gpu_entry_bytes(known)
            notes.append(f"{gpu.name}: memory not reported by {gpu.backend}; "
                         f"{gmem / 1e9:.1f} GB from data/machines.toml")
        elif getattr(gpu, "memory_source", None) == "catalog":
            notes.append(f"{gpu.name}: memory size from gemma4stack/data/gpus.toml "
                         f"({gpu.backend} gives none)")
        if gmem is None:
            notes.append(f"{gpu.name}: memory size unknown (backend {gpu.backend} gives none); "
                         "not considered for placement")
            continue
        peak = getattr(gpu, "peak_bandwidth_gbs", None)
        if peak:
            gbw, gsrc = float(peak), (f"2 x memory clock {gpu.memory_clock_mhz} MHz x "
                                      f"{gpu.memory_bus_width_bits}-bit bus / 8 (NVML)")
        elif known:
            gbw, gsrc = float(known["bandwidth_gbs"]), known["source"]
        else:
            gbw, gsrc = None, "not in data/machines.toml"
            notes.append(f"{gpu.name}: memory bandwidth unknown (not in data/machines.toml), "
                         "so no speed prediction on it")
        same = (f"; {n_same} such GPUs, a model goes on one (splitting across GPUs is not "
                "modelled)" if n_same > 1 else "")
        targets.append(Target(f"gpu:{gpu.name}", "gpu", int(gmem), _gpu_budget(int(gmem)),
                              f"{gmem / 1e9:.1f} GB minus max(1 GiB, 5%) reserve{same}",
                              gbw, gsrc, eff["gpu"], ram_budget,
                              vendor=gpu_vendor(gpu.name, getattr(gpu, "vendor", ""))))
    # fastest GPU first; unknown bandwidth after known; then the larger memory
    targets.sort(key=lambda t: (t.bandwidth_gbs is None, -(t.bandwidth_gbs or 0), -t.budget_bytes))
    cpu = getattr(report, "cpu", None)
    if eff.get("_ram_given"):                  # the caller's efficiency={"ram": f} wins
        ram_eff, by_quant, eff_src = eff["ram"], {}, "given by the caller"
    else:
        ram_eff, by_quant, eff_src = _ram_efficiency(getattr(cpu, "vendor", None), eff)
    targets.append(Target("ram", "ram", effective, ram_budget, rule, ram_bw, ram_src, ram_eff,
                          efficiency_by_quant=by_quant or None, efficiency_source=eff_src))
    cores = getattr(cpu, "cores", None)
    if read and cores and cores <= 4:
        notes.append(f"only {cores} CPU cores: decode from RAM may be compute-bound rather than "
                     "memory-bound, so the RAM speeds are upper bounds")
    desc = getattr(cpu, "model", None) or "this machine"
    if getattr(report, "source", None) and "xml" in str(report.source).lower():
        desc = f"{desc} ({report.source})"
    return targets, desc, notes


def _unified_target(gpu: Any, eff: dict, notes: list[str]) -> Target:
    """Apple silicon found by sysctl: Metal may wire WORKING_SET_FRACTION of the RAM."""
    mem = int(gpu.memory_bytes or 0)
    chip = known_chip(gpu.name)
    if chip is None:
        notes.append(f"{gpu.name}: unified-memory bandwidth unknown (not in data/machines.toml "
                     "[chip.*]), so no speed prediction on it")
    return Target("unified", "unified", mem, int(WORKING_SET_FRACTION * mem),
                  f"Metal working-set limit {WORKING_SET_FRACTION:.0%} of {mem / GIB:.0f} GiB "
                  f"unified memory ({gpu.name})",
                  float(chip["bandwidth_gbs"]) if chip else None,
                  chip["source"] if chip else "not in data/machines.toml", eff["unified"],
                  vendor="apple")


# ---------------------------------------------------------------------------------------------
# Fitting: the largest context, the placement, the speed

def _fits(v: Variant, q: Quant, t: Target, context: int) -> bool:
    if t.kind == "gpu":
        if host_resident_bytes(v, q) > (t.host_budget_bytes or 0):
            return False
        return gpu_resident_bytes(v, q) + kv_cache_bytes(v, context) <= t.budget_bytes
    return weights_bytes(v, q) + kv_cache_bytes(v, context) <= t.budget_bytes


def max_context(v: Variant, q: Quant, t: Target) -> int:
    """Largest context (tokens, <= the trained context) whose weights + KV fit `t`; 0 if none."""
    if not _fits(v, q, t, 1):
        return 0
    lo, hi = 1, v.context_length                 # KV grows monotonically with context
    if _fits(v, q, t, hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(v, q, t, mid):
            lo = mid
        else:
            hi = mid
    return lo


def predicted_tps(v: Variant, q: Quant, t: Target, context: int) -> float | None:
    """Decode tokens/s on `t` at `context`: bandwidth x efficiency / bytes per token (None if the
    bandwidth is unknown)."""
    if not t.bandwidth_gbs:
        return None
    return t.bandwidth_gbs * 1e9 * t.efficiency_for(q.name) / bytes_per_token(v, q, context)


# ---------------------------------------------------------------------------------------------
# Speculative decoding: predicted speed with a drafter

# Cost of verifying k draft tokens (one forward of k + 1 tokens) relative to one decode step,
# measured with our C core on the 2-core reference machine (benchmarks/RESULTS.md, "Speculative
# decoding by prompt lookup", benchmarks/step_cost.py, Gemma 3 270M): 1.27x (k=1), 2.46x (k=4),
# 4.04x (k=8). Bandwidth-bound larger models should verify relatively cheaper; these are the
# figures we have.
SPEC_K = 4
SPEC_VERIFY_COST = {1: 1.27, 4: 2.46, 8: 4.04}
# Acceptance rates assumed per draft token. Prompt lookup: 0.49, measured on the extraction task
# (a document quoted in the answer; RESULTS.md, Gemma 3 270M). A same-family draft model: 0.7,
# within the 0.5-0.9 range of alpha Leviathan et al. 2023 report for small drafters of T5, GPT
# and LaMDA targets (their Table 3); random-weight measurements here mean nothing.
SPEC_ACCEPT_NGRAM = 0.49
SPEC_ACCEPT_DRAFT_MODEL = 0.7


def expected_tokens_per_step(acceptance: float, k: int) -> float:
    """Tokens a speculative step yields on average when each of k drafts is accepted with
    probability `acceptance`, independently, until the first rejection, plus the target's own
    token: (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023, "Fast Inference from Transformers
    via Speculative Decoding", eq. 1); k + 1 at a = 1. Raises ValueError outside 0 <= a <= 1,
    k >= 0."""
    if not 0.0 <= acceptance <= 1.0 or k < 0:
        raise ValueError(f"need 0 <= acceptance <= 1 and k >= 0 (got {acceptance}, {k})")
    if acceptance == 1.0:
        return float(k + 1)
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def speculative_speedup(acceptance: float, k: int = SPEC_K, verify_cost: float | None = None,
                        draft_cost: float = 0.0) -> float:
    """Predicted decode speed with drafts over plain decode: expected_tokens_per_step divided
    by a step's cost in plain decode steps, verify_cost (verifying k drafts; None: the
    measured SPEC_VERIFY_COST[k]) + k x draft_cost (one drafter forward relative to one target
    decode step: 0 for prompt lookup, the drafter's bytes per token over the target's for a
    draft model), as Leviathan et al. 2023's improvement factor (1 - a^(k+1)) /
    ((1 - a)(k c + 1)) with the verification's measured cost in place of 1. The model assumes
    independent acceptances; drafts copied from a quoted document are accepted in runs, which
    measured better (RESULTS.md: 1.29-1.44x where this predicts 0.77x). Raises ValueError for a
    k without a measured cost and no verify_cost."""
    if verify_cost is None:
        if k not in SPEC_VERIFY_COST:
            raise ValueError(f"no measured verification cost for k={k} (have {sorted(SPEC_VERIFY_COST)})")
        verify_cost = SPEC_VERIFY_COST[k]
    return expected_tokens_per_step(acceptance, k) / (verify_cost + k * draft_cost)


@dataclass
class TierRow:
    """One variant x quantization on one machine.

    fits: weights + KV at `context` fit a memory budget; placement: where ("gpu:<name>", "ram",
    "unified") or None; weights_bytes: GGUF tensor bytes; kv_bytes: f16 KV at `context`;
    max_context: tokens that fit (capped at the trained context; for a row that does not fit,
    the best any memory allows, 0 if even the weights don't fit); predicted_decode_tps: tokens/s
    on the placement (for a row that does not fit: on the largest memory, as if it fitted) or None
    when the bandwidth is unknown; bytes_per_token: memory read per decoded token.

    What runs it (rows that fit; None otherwise), from data/engines.toml: engine ("gemma4stack"
    for our C core on system RAM; "llama.cpp", "ollama", "vllm", "mlx-lm" on a GPU or Apple
    unified memory); engine_command: the shell command that starts it for this file and
    context; gateway_tier: the [tiers.NAME] table of a gateway config that routes to it
    (gemma4stack/gateway/config.py); alternatives: other engines that can run it, each
    {"engine", "command", "gateway_tier"}.

    Speculative decoding (speculative_speedup, k = SPEC_K): predicted_tps_ngram: decode
    tokens/s with prompt lookup at acceptance SPEC_ACCEPT_NGRAM; draft_variant: the drafter
    assumed (the smallest variant at the same quant; None for the smallest itself) and
    predicted_tps_draft: tokens/s with it at SPEC_ACCEPT_DRAFT_MODEL; None without a speed.
    """
    variant: str
    quant: str
    fits: bool
    placement: str | None
    weights_bytes: int
    kv_bytes: int
    max_context: int
    predicted_decode_tps: float | None
    bytes_per_token: int
    context: int
    n_params: int
    note: str = ""
    best: bool = False
    engine: str | None = None
    engine_command: str | None = None
    gateway_tier: dict | None = None
    alternatives: list[dict] = field(default_factory=list)
    predicted_tps_ngram: float | None = None
    draft_variant: str | None = None
    predicted_tps_draft: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("predicted_decode_tps", "predicted_tps_ngram", "predicted_tps_draft"):
            if d[k] is not None:
                d[k] = round(d[k], 2)
        return d


def _row(v: Variant, q: Quant, targets: list[Target], context: int) -> TierRow:
    ctx = min(context, v.context_length)
    note = []
    if context > v.context_length:
        note.append(f"context capped at the trained {v.context_length}")
    chosen = next((t for t in targets if _fits(v, q, t, ctx)), None)
    if chosen is not None:
        mctx = max_context(v, q, chosen)
        basis = chosen
    else:
        per = [(max_context(v, q, t), t) for t in targets]
        mctx = max((m for m, _ in per), default=0)
        basis = max(targets, key=lambda t: t.budget_bytes) if targets else None
        note.append("does not fit" + (f" at {ctx} tokens" if mctx else "")
                    + (f"; speed shown as if it fitted in {basis.placement}" if basis else ""))
    tps = predicted_tps(v, q, basis, ctx) if basis else None
    if basis is not None and tps is None:
        note.append(f"{basis.placement} bandwidth unknown")
    bpt = bytes_per_token(v, q, ctx)
    small = min(variants(), key=lambda x: x.rank)
    drafter = small.name if small.name != v.name else None
    return TierRow(variant=v.name, quant=q.name, fits=chosen is not None,
                   placement=chosen.placement if chosen else None,
                   weights_bytes=weights_bytes(v, q), kv_bytes=kv_cache_bytes(v, ctx),
                   max_context=mctx, predicted_decode_tps=tps,
                   bytes_per_token=bpt, context=ctx,
                   n_params=v.n_params(), note="; ".join(note),
                   predicted_tps_ngram=tps * speculative_speedup(SPEC_ACCEPT_NGRAM) if tps else None,
                   draft_variant=drafter,
                   predicted_tps_draft=(tps * speculative_speedup(
                       SPEC_ACCEPT_DRAFT_MODEL, draft_cost=bytes_per_token(small, q, ctx) / bpt)
                       if tps and drafter else None))


def _pick_best(rows: list[TierRow]) -> TierRow | None:
    """Largest variant, then highest precision, that fits at >= USABLE_TPS predicted; None when
    nothing fitting is predicted that fast, including when no speed is known (no measured
    bandwidth): the largest row that fits would then be a guess, and often an unusably slow one
    (31B from system RAM)."""
    vr = {v.name: v.rank for v in variants()}
    qr = {q.name: q.rank for q in quants()}
    key = lambda r: (vr[r.variant], qr[r.quant])
    known = [r for r in rows if r.fits and r.predicted_decode_tps is not None
             and r.predicted_decode_tps >= USABLE_TPS]
    return max(known, key=key) if known else None


@functools.lru_cache(maxsize=None)
def _pullable() -> frozenset[tuple[str, str]]:
    """(variant key, quant) pairs that data/gemma4_gguf_repos.toml (gemma4stack pull) knows."""
    try:
        with open(_DATA / "gemma4_gguf_repos.toml", "rb") as f:
            raw = tomllib.load(f)
    except OSError:
        return frozenset()
    return frozenset((e["variant"], e["quant"].upper()) for e in raw.get("file", []))


def pull_hint(row: TierRow) -> str:
    """The `gemma4stack pull` command for a row, or why there is none."""
    key = get_variant(row.variant).key
    if (key, row.quant) in _pullable():
        return f"gemma4stack pull gemma4:{key}:{row.quant.lower()}"
    return f"no {row.quant} download listed for {row.variant} in data/gemma4_gguf_repos.toml"


# ---------------------------------------------------------------------------------------------
# Engines: what runs a tier (data/engines.toml)

@functools.lru_cache(maxsize=None)
def _engines_raw() -> dict:
    with open(_DATA / "engines.toml", "rb") as f:
        return tomllib.load(f)


def _gguf_source(variant_key: str, quant: str) -> Any:
    """The (repo, file) `gemma4stack pull` uses for a variant x quant, or None."""
    if (variant_key, quant) not in _pullable():
        return None
    from gemma4stack.pull import resolve
    return resolve(f"gemma4:{variant_key}:{quant.lower()}")


def _placement_key(t: Target) -> str:
    if t.kind == "gpu":
        return f"gpu:{t.vendor}" if t.vendor else "gpu:?"
    return t.kind


def _tier_id(variant_key: str, quant: str) -> str:
    return f"gemma-4-{variant_key}-{quant.lower()}"


def engines_for(row: TierRow, target: Target, model_path: str | None = None) -> list[dict]:
    """Engines that can run `row` on `target`, preferred first: [{engine, name, command,
    gateway_tier, source}]. model_path: the GGUF for engines that take a path (our core); by
    default the path `gemma4stack pull` prints. Empty when none applies (an unknown GPU vendor,
    or a row with no downloadable file and no path)."""
    raw = _engines_raw()
    v = get_variant(row.variant)
    src = _gguf_source(v.key, row.quant)
    tag = f"gemma4:{v.key}:{row.quant.lower()}"
    gguf = (model_path if model_path else
            f'"$(gemma4stack pull {tag} --quiet | tail -n 1)"' if src else
            f"<path to a {v.name} {row.quant} GGUF>")
    tier_id = _tier_id(v.key, row.quant)
    where = _placement_key(target)
    out = []
    for key, e in raw["engine"].items():
        if where not in e["placements"]:
            continue
        fmt = {"context": row.context, "port": e["port"], "id": tier_id, "quant": row.quant,
               "hf_model": raw["models"].get(v.key, ""), "gguf": gguf,
               "repo": src.repo if src else None, "file": src.file if src else None,
               "bits": {"Q8_0": 8}.get(row.quant, 4)}
        command = e["command"]
        if src is None and "{repo}" in command:   # no known download: the engine's file option
            if "command_path" not in e:
                continue
            command = e["command_path"]
        if e["needs"] == "bf16" and row.quant != "BF16":
            continue                            # runs the original checkpoint only
        bf16 = row.quant == "BF16" and "command_bf16" in e   # the checkpoint as it is (mlx-lm)
        if bf16:
            command = e["command_bf16"]
        if key == "gemma4stack":
            tier = {"backend": "local", "model": model_path or f"<path printed by gemma4stack pull {tag}>",
                    "id": tier_id, "context": row.context}
        else:
            model = e["model_bf16" if bf16 else "model"].format(**fmt)
            tier = {"backend": "openai", "url": e["url"].format(**fmt), "model": model, "id": tier_id}
        out.append({"engine": key, "name": e["name"], "command": command.format(**fmt),
                    "gateway_tier": tier, "source": e["source"]})
    return out


def _attach_engines(rows: list[TierRow], targets: list[Target]) -> None:
    by_placement = {t.placement: t for t in targets}
    for r in rows:
        t = by_placement.get(r.placement or "")
        found = engines_for(r, t) if r.fits and t is not None else []
        if found:
            r.engine, r.engine_command, r.gateway_tier = (found[0]["engine"], found[0]["command"],
                                                         found[0]["gateway_tier"])
            r.alternatives = [{k: a[k] for k in ("engine", "command", "gateway_tier")}
                              for a in found[1:]]


def _cached_gguf(row: TierRow) -> str | None:
    """The row's GGUF if `gemma4stack pull` has it in the Hugging Face cache, else None."""
    v = get_variant(row.variant)
    if (v.key, row.quant) not in _pullable():
        return None
    try:
        from gemma4stack.pull import download
        return str(download(f"gemma4:{v.key}:{row.quant.lower()}", offline=True,
                            progress=False).path)
    except (ImportError, OSError, ValueError):
        return None


def gateway_config(rec: "Recommendation", model_path: str | None = None, port: int = 8080) -> dict:
    """A gateway config (the TOML document as a dict, gemma4stack/gateway/config.py) for this
    machine: per placement, the largest row that fits there at >= USABLE_TPS (or, with no speed
    known, the one Recommendation.best would pick), biggest first as tiers "heavy", "primary",
    "fast" (the gateway's fallback ladder); GPU / unified tiers are `openai` tiers pointing at
    the engine's server (start it with the row's engine_command), a system-RAM tier is a `local`
    tier run by our core in the gateway process.

    model_path: the GGUF of the RAM tier; default: the file in `gemma4stack pull`'s cache.
    Raises ValueError when no tier can be written (nothing fits, or the RAM tier's file is not
    downloaded and no model_path was given: the message says which `gemma4stack pull` to run).
    """
    chosen: list[TierRow] = []
    def usable(r: TierRow) -> bool:           # an engine runs it, and its file can be had
        return bool(r.engine) and (r.placement != "ram" or model_path is not None
                                   or (get_variant(r.variant).key, r.quant) in _pullable())

    for placement in dict.fromkeys(r.placement for r in rec.rows if r.fits):
        best = _pick_best([r for r in rec.rows if r.placement == placement and usable(r)])
        if best is not None:
            chosen.append(best)
    chosen.sort(key=lambda r: -r.bytes_per_token)
    written, notes = [], []
    for r in chosen:
        t = next(t for t in rec.targets if t.placement == r.placement)
        if t.kind == "ram":
            path = model_path or _cached_gguf(r)
            if path is None:
                notes.append(f"{r.variant} {r.quant} on ram: not downloaded; {pull_hint(r)} "
                             "then run this again (or pass --model PATH / model_path)")
                continue
            found = engines_for(r, t, model_path=str(Path(path).resolve()))
            if model_path:                      # the caller's file: the gateway names it by its stem
                found[0]["gateway_tier"].pop("id", None)
        else:
            found = engines_for(r, t)
        if not found:
            notes.append(f"{r.variant} {r.quant} on {r.placement}: no engine known for it")
            continue
        tier = dict(found[0]["gateway_tier"])
        if tier["backend"] == "openai":
            tier["_start"] = found[0]["command"]
        written.append(tier)
    ladder = {1: ["primary"], 2: ["primary", "fast"], 3: ["heavy", "primary", "fast"]}
    names = ladder.get(len(written)) or (["heavy", "primary", "fast"]
                                         + [f"tier{i}" for i in range(4, len(written) + 1)])
    tiers = dict(zip(names, written))
    if not tiers:
        raise ValueError("no gateway tier can be written: " + ("; ".join(notes) or
                         "no Gemma 4 tier fits this machine"))
    order = [n for n in ("heavy", "primary", "fast") if n in tiers] + \
        [n for n in tiers if n not in ("heavy", "primary", "fast")]
    return {"server": {"host": "127.0.0.1", "port": port},
            "routing": {"order": order, "default": order[0]},
            "tiers": tiers, "_notes": notes}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)                    # a TOML basic string is a JSON string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def gateway_toml(cfg: dict, header: str = "") -> str:
    """The TOML text of gateway_config()'s dict; each openai tier is preceded by the command
    that starts its engine, as a comment."""
    lines = [f"# {h}" for h in header.splitlines()]
    for n in cfg.get("_notes", []):
        lines.append(f"# note: {n}")
    for section in ("server", "routing"):
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in cfg[section].items()]
    for name, tier in cfg["tiers"].items():
        lines.append("")
        if "_start" in tier:
            lines.append(f"# start the engine first: {tier['_start']}")
        lines.append(f"[tiers.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in tier.items() if not k.startswith("_")]
    return "\n".join(lines).lstrip("\n") + "\n"

# ---------------------------------------------------------------------------------------------
# The result object

@dataclass
class Recommendation:
    """Rows for every variant x quantization on one machine, at one context length.

    rows: list[TierRow] (smallest variant first); best: the TierRow to use or None; machine: a
    description; targets: the memories considered (Target); assumptions: every rule and
    figure the numbers rest on; notes: what is unknown and why.
    """
    rows: list[TierRow]
    context: int
    machine: str
    targets: list[Target]
    assumptions: dict
    notes: list[str] = field(default_factory=list)
    best: TierRow | None = None

    def row(self, variant: str, quant: str) -> TierRow:
        """The row of one variant x quant (names as in the catalog, case-insensitive)."""
        v, q = get_variant(variant).name, get_quant(quant).name
        return next(r for r in self.rows if r.variant == v and r.quant == q)

    def to_list(self) -> list[dict]:
        """The rows as dicts (what `gemma4stack recommend --json` prints)."""
        return [r.to_dict() for r in self.rows]

    def to_dict(self) -> dict:
        return {"machine": self.machine, "context": self.context,
                "best": self.best.to_dict() if self.best else None,
                "targets": [t.to_dict() for t in self.targets],
                "assumptions": self.assumptions, "notes": self.notes, "rows": self.to_list()}

    # -- text for the terminal
    def to_text(self) -> str:
        lines = [f"Gemma 4 on {self.machine} - context {self.context} tokens "
                 "(sizes in GB = 10^9 bytes)"]
        for t in self.targets:
            e = (", ".join(f"{q} {f:.2f}" for q, f in t.efficiency_by_quant.items())
                 + f", others {t.efficiency:.2f}" if t.efficiency_by_quant else f"{t.efficiency:.2f}")
            bw = (f"{t.bandwidth_gbs:.1f} GB/s x {e} efficiency"
                  if t.bandwidth_gbs else "bandwidth unknown")
            lines.append(f"  {t.placement}: {t.budget_bytes / 1e9:.1f} GB usable "
                         f"({t.budget_rule}); {bw}")
        hdr = (f"  {'variant':<8} {'quant':<7} {'fits':<4} {'where':<18} {'weights':>8} "
               f"{'KV':>7} {'max ctx':>8} {'tok/s':>7}  {'engine':<11}")
        lines += ["", hdr, "  " + "-" * (len(hdr) - 2)]
        for r in self.rows:
            tps = ("-" if r.predicted_decode_tps is None else f"{r.predicted_decode_tps:.1f}"
                   if r.fits else f"({r.predicted_decode_tps:.1f})")
            where = (r.placement or "-")[:18]
            mark = "*" if r.best else " "
            lines.append(f"{mark} {r.variant:<8} {r.quant:<7} {'yes' if r.fits else 'no':<4} "
                         f"{where:<18} {r.weights_bytes / 1e9:>8.2f} {r.kv_bytes / 1e9:>7.2f} "
                         f"{r.max_context:>8} {tps:>7}  {r.engine or '-':<11}")
        lines.append("")
        if self.best:
            b = self.best
            lines.append(f"* best: {b.variant} {b.quant} on {b.placement} "
                         f"(~{b.predicted_decode_tps:.1f} tokens/s predicted); "
                         f"get it: {pull_hint(b)}")
            spec = f"  speculative decoding (k={SPEC_K}), predicted: prompt lookup " \
                   f"~{b.predicted_tps_ngram:.1f} tokens/s (acceptance {SPEC_ACCEPT_NGRAM})"
            if b.predicted_tps_draft is not None:
                spec += (f", draft model {b.draft_variant} {b.quant} ~{b.predicted_tps_draft:.1f} "
                         f"tokens/s (acceptance {SPEC_ACCEPT_DRAFT_MODEL})")
            lines.append(spec + f"; verifying {SPEC_K} drafts costs {SPEC_VERIFY_COST[SPEC_K]}x a "
                         "decode step (measured, benchmarks/RESULTS.md), tokens per step "
                         "(1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023)")
            if b.engine_command:
                lines.append(f"  run it with {b.engine}: {b.engine_command}")
                lines.append("  a gateway config routing to it: gemma4stack recommend --emit-config gateway.toml")
        elif not any(r.fits and r.predicted_decode_tps is not None for r in self.rows):
            lines.append("* best: none chosen: no speed is known for the rows that fit (no "
                         "measured bandwidth), and the largest that fits may be far below "
                         f"{USABLE_TPS:g} tokens/s")
        else:
            lines.append(f"* best: none fits at >= {USABLE_TPS:g} tokens/s")
        lines.append("  tok/s = bandwidth x efficiency / bytes read per token; in parentheses: "
                     "what a row that does not fit would give on the largest memory; "
                     "efficiency: RAM = our core's measured fraction of the read bandwidth on this "
                     f"CPU kind (fallback {self.assumptions['efficiency']['ram']}), "
                     f"GPU {self.assumptions['efficiency']['gpu']}, "
                     f"unified {self.assumptions['efficiency']['unified']} "
                     "(sources: gemma4stack/data/gemma4_catalog.toml); engines: data/engines.toml")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)

    __str__ = to_text

    # -- HTML for Jupyter
    def _repr_html_(self) -> str:
        e = html.escape
        head = ("<tr>" + "".join(f"<th>{h}</th>" for h in
                ("variant", "quant", "fits", "where", "weights GB", "KV GB", "max context",
                 "decode tok/s")) + "</tr>")
        body = []
        for r in self.rows:
            style = ("background:#c8f0c8;font-weight:bold" if r.best
                     else "background:#eaf7ea" if r.fits else "color:#999")
            tps = "" if r.predicted_decode_tps is None else f"{r.predicted_decode_tps:.1f}"
            cells = (r.variant, r.quant, "&#10003;" if r.fits else "&#10007;",
                     e(r.placement or ""), f"{r.weights_bytes / 1e9:.2f}",
                     f"{r.kv_bytes / 1e9:.2f}", f"{r.max_context:,}", tps)
            body.append(f'<tr style="{style}" title="{e(r.note)}">'
                        + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        best = (f"best: <b>{e(self.best.variant)} {e(self.best.quant)}</b> on "
                f"{e(self.best.placement or '')}" if self.best else "best: none")
        notes = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        targets = "".join(
            f"<li>{e(t.placement)}: {t.budget_bytes / 1e9:.1f} GB usable ({e(t.budget_rule)}); "
            + (f"{t.bandwidth_gbs:.1f} GB/s &times; {t.efficiency:.2f}" if t.bandwidth_gbs
               else "bandwidth unknown") + "</li>" for t in self.targets)
        return (f"<div><b>Gemma 4 on {e(self.machine)}</b>, context {self.context} tokens"
                f"<ul>{targets}</ul><table>{head}{''.join(body)}</table>"
                f"<p>{best}. Predicted tok/s = bandwidth &times; efficiency / bytes per token.</p>"
                f"<ul>{notes}</ul></div>")


def _assumptions(eff: dict) -> dict:
    return {
        "ram_headroom": "system RAM budget = min(total, cgroup limit) - max(2 GiB, 10%)",
        "gpu_reserve": "GPU budget = GPU memory - max(1 GiB, 5%); the per-layer-embedding table "
                       "and the input token_embd stay in host RAM (llama.cpp input layer)",
        "unified": f"Apple unified memory budget = Metal working-set limit, "
                   f"{WORKING_SET_FRACTION:.0%} of RAM (data/machines.toml)",
        "kv_cache": "f16 K and V; sliding layers hold min(context, window) cells, global layers "
                    "the context, KV-shared layers none; K=V global layers store K and V",
        "weights": "text decoder only (vision/audio encoders live in a separate mmproj GGUF)",
        "efficiency": {k: eff[k] for k in ("ram", "gpu", "unified")},
        "efficiency_of": {k: eff[f"{k}_of"] for k in ("ram", "gpu", "unified")},
        "efficiency_source": {k: eff[f"{k}_source"] for k in ("ram", "gpu", "unified")},
        "ram_efficiency_measured": [{k: m[k] for k in ("cpu_vendor", "quant", "fraction", "source")}
                                    for m in eff.get("ram_measured", [])],
        "engines": "our C core runs system-RAM rows; GPU and unified-memory rows name an "
                   "existing engine (data/engines.toml) and its command line",
        "usable_tps": USABLE_TPS,
        "speculative": {"k": SPEC_K, "verify_cost": SPEC_VERIFY_COST,
                        "acceptance_ngram": SPEC_ACCEPT_NGRAM,
                        "acceptance_draft_model": SPEC_ACCEPT_DRAFT_MODEL,
                        "rule": "tokens/s x (1 - a^(k+1)) / (1 - a) / (verify_cost + k x drafter "
                                "bytes per token / target bytes per token); Leviathan et al. "
                                "2023 eq. 1; verify_cost measured (benchmarks/RESULTS.md)"},
    }


def recommend(report: Any = None, context: int = DEFAULT_CONTEXT, machine: str | dict | None = None,
              efficiency: dict | None = None) -> Recommendation:
    """Recommend Gemma 4 tiers for a machine.

    report: a gemma4stack.hardware.HardwareReport; None -> gemma4stack.detect() (with the
    bandwidth probe). machine: a key of data/machines.toml (see machines()) to answer for that
    machine instead, or a dict shaped like its entries, e.g. {"kind": "unified",
    "memory_gib": 32, "bandwidth_gbs": 120} or {"kind": "gpu", "gpu": {"name": "My GPU",
    "memory_gib": 16, "bandwidth_gbs": 448}, "host_ram_gib": 32}; report is then ignored.
    context: tokens the KV cache must hold (>= 1).
    efficiency: override {"ram": f, "gpu": f, "unified": f}.
    Raises ValueError for an unknown machine or a context < 1.
    """
    if context < 1:
        raise ValueError(f"context must be >= 1 token, got {context}")
    cat = load_catalog()
    eff = dict(cat.efficiency)
    if efficiency:
        eff.update(efficiency)
        eff["_ram_given"] = "ram" in efficiency
    if machine is not None:
        targets, desc, notes = _targets_for_machine(machine, eff)
    else:
        if report is None:
            from gemma4stack.hardware import detect
            report = detect()
        targets, desc, notes = _targets_for_report(report, eff)
    rows = [_row(v, q, targets, context) for v in variants() for q in quants()]
    if any(r.fits and (r.predicted_decode_tps or 0) > 250 for r in rows):
        notes.append("predictions above ~250 tokens/s are memory-roofline bounds only: small "
                     "models on fast GPUs are held back by per-kernel launch and sync overhead")
    _attach_engines(rows, targets)
    best = _pick_best(rows)
    if best is not None:
        best.best = True
    for v in variants():
        if v.ref.get("context_confirmed") is False or v.ref.get("sliding_window_confirmed") is False:
            notes.append(f"{v.name}: trained context / sliding window not confirmed by Google "
                         f"(catalog uses {v.context_length} / {v.sliding_window})")
    return Recommendation(rows=rows, context=context, machine=desc, targets=targets,
                          assumptions=_assumptions(eff), notes=notes, best=best)


# ---------------------------------------------------------------------------------------------
# CLI: gemma4stack recommend

def _cmd_recommend(args: argparse.Namespace) -> int:
    if args.list_machines:
        ms = machines()
        if args.json:
            print(json.dumps(ms, indent=2))
        else:
            for m in ms:
                print(f"{m['key']:<28} {m['name']}")
        return 0
    if args.machine:
        rec = recommend(context=args.context, machine=args.machine)
    else:
        from gemma4stack.hardware import detect
        measure = not args.no_bandwidth and not args.topology_xml
        report = detect(bandwidth=measure, topology_xml=args.topology_xml)
        rec = recommend(report, context=args.context)
    if args.emit_config:
        cfg = gateway_config(rec, model_path=args.model)
        text = gateway_toml(cfg, header=(
            f"gemma4stack gateway config for {rec.machine}, context {rec.context} tokens\n"
            "written by `gemma4stack recommend --emit-config`; run: gemma4stack serve --config "
            f"{args.emit_config}"))
        Path(args.emit_config).write_text(text)
        print(f"wrote {args.emit_config}: tiers {', '.join(cfg['tiers'])}", file=sys.stderr)
        for n in cfg["_notes"]:
            print(f"note: {n}", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps(rec.to_list(), indent=2))
    else:
        print(rec.to_text())
    return 0


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "recommend", help="which Gemma 4 tiers fit this machine (or a what-if machine), how fast",
        description="For every Gemma 4 variant x quantization: whether it fits, where, weight and "
                    "KV-cache bytes, the largest context, and predicted decode tokens/s.")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {variant, quant, fits, placement, weights_bytes, "
                        "kv_bytes, max_context, predicted_decode_tps, ...}")
    p.add_argument("--context", type=int, default=DEFAULT_CONTEXT,
                   help=f"tokens the KV cache must hold (default {DEFAULT_CONTEXT})")
    p.add_argument("--topology-xml", metavar="F", help="an hwloc XML export of another machine "
                   "(its bandwidth is not measured, so CPU speeds are left empty)")
    p.add_argument("--machine", metavar="NAME", help="a what-if machine from data/machines.toml "
                   "(see --list-machines)")
    p.add_argument("--list-machines", action="store_true", help="list the what-if machines")
    p.add_argument("--no-bandwidth", action="store_true",
                   help="skip the memory-bandwidth probe (CPU speeds are then left empty)")
    p.add_argument("--emit-config", metavar="FILE",
                   help="write a gateway TOML for this machine's best tier per memory (GPU tiers "
                        "route to the engine that runs them) instead of the table")
    p.add_argument("--model", metavar="PATH",
                   help="with --emit-config: the GGUF of the system-RAM tier (default: the file "
                        "`gemma4stack pull` has cached)")
    p.set_defaults(func=_cmd_recommend)


# `gemma4stack.recommend` is both this module and (lazily, via the package __init__) the function
# above. Once anything has imported the module, the package attribute is the module, so make the
# module callable: g4.recommend(...) then works whatever the import order.
class _CallableModule(type(sys)):
    def __call__(self, *args: Any, **kwargs: Any) -> Recommendation:
        return recommend(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
