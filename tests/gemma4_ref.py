"""Reference models for the Gemma 4 / Gemma 3 tests: tiny random HF checkpoints, HF logits,
and a plain numpy forward pass over our GGUF files.

    >>> d = build_gemma4(tmp_path / "ple", "ple_shared")          # HF dir: config, safetensors, tokenizer
    >>> ref = reference_logits(d, ids)                              # (len(ids), n_vocab) float32, HF eager
    >>> convert(d, tmp_path / "ple.gguf", type="f32")
    >>> ours = numpy_forward(tmp_path / "ple.gguf", ids)            # GGUF semantics in numpy

`numpy_forward` is the executable form of /work/notes/gemma4_semantics.md: it reads only the
GGUF (gguf-py's GGUFReader, dequantized), so agreement with `reference_logits` shows that the
converter and the documented semantics match transformers. The C core (`Model.logits`) is
compared with the same references in tests/test_convert.py once it supports the architecture.

Test configurations (CONFIGS) each exercise features of the real variants at toy size:
  ple_shared     E2B/E4B: per-layer embeddings, KV-shared layers, double-wide MLP, 4:1 pattern
  moe            26B-A4B: 8 experts top-2 plus the dense MLP, K=V global layers, per-layer KV heads
  dense_kv_eq_v  31B/12B: K=V global layers with fewer global KV heads, 5:1 pattern
All use proportional RoPE on global layers (global head dim = 2 x local), sliding window 8 (the
tests run 100+ tokens), final softcap 30, and random norm weights / layer scalars / router
scales (not HF's ones-init, so a missing multiply is visible).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

S, F = "sliding_attention", "full_attention"

CONFIGS: dict[str, dict[str, Any]] = {
    "ple_shared": dict(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=10,
        layer_types=[S, S, S, S, F] * 2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, global_head_dim=32, sliding_window=8,
        hidden_size_per_layer_input=16, vocab_size_per_layer_input=512,
        num_kv_shared_layers=5, use_double_wide_mlp=True, final_logit_softcapping=30.0),
    "moe": dict(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
        layer_types=[S, S, F, S, S, F], num_attention_heads=4, num_key_value_heads=2,
        num_global_key_value_heads=1, attention_k_eq_v=True,
        head_dim=16, global_head_dim=32, sliding_window=8, hidden_size_per_layer_input=0,
        enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=32,
        final_logit_softcapping=30.0),
    "dense_kv_eq_v": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, num_global_key_value_heads=1,
        attention_k_eq_v=True, head_dim=16, global_head_dim=32, sliding_window=8,
        hidden_size_per_layer_input=0, final_logit_softcapping=30.0),
}

GEMMA3_CONFIG = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
    sliding_window=8, rope_parameters={F: {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1_000_000.0},
                                        S: {"rope_type": "default", "rope_theta": 10_000.0}})

# A Gemma-4-like chat template (the shape of Gemma 4's turns; not Google's full template)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
    "<turn|>\n{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}")

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>",
            "<|channel>", "<channel|>"]

_CORPUS = """Once upon a time, there was a little girl named Lily. She loved to play outside in
the park with her dog. One day, she saw a big red ball under a tree. "Can I play with you?" she
asked. The sun was warm and the birds sang. Tom and Sue went to the shop to buy milk, bread and
three green apples. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 1234. Ünïcödé: café, naïve, 東京, 🙂."""


def make_tokenizer(d: Path, vocab_size: int = 512) -> None:
    """A Gemma-4-style tokenizer in d: SentencePiece-style BPE (spaces -> '▁', byte fallback
    `<0xXX>`), trained on a small corpus with the `tokenizers` library; specials <pad> 0,
    <eos> 1, <bos> 2, <unk> 3, <mask> 4, <|turn> 5, <turn|> 6, <|channel> 7, <channel|> 8;
    the 256 byte tokens follow. Writes tokenizer.json, tokenizer_config.json (with
    CHAT_TEMPLATE) and special_tokens_map.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    bytes_tok = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + bytes_tok,
                                  show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(d)
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg.setdefault("chat_template", CHAT_TEMPLATE)
    cfg_path.write_text(json.dumps(cfg, indent=1))


def _randomize(model, seed: int, emb_std: float = 0.5, router_std: float = 2.0) -> None:
    """Weights at scales where every nonlinearity matters: Linear ~ N(0, 1/fan_in) (unit-size
    outputs, GELU outside its linear region), norms / layer scalars / router scales uniform
    around 1 (HF initialises them to exactly 1, which would hide a missing multiply)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision" in name or "audio" in name:
                continue
            if name.endswith("norm.weight"):
                lo, hi = (0.3, 0.8) if ("q_norm" in name or "k_norm" in name) else (0.5, 1.5)
                p.copy_(torch.empty_like(p).uniform_(lo, hi, generator=g))
            elif name.endswith(("router.scale", "per_expert_scale")):
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=g))
            elif "router.proj" in name:
                p.copy_(torch.randn(p.shape, generator=g) * router_std / math.sqrt(p.shape[-1]))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * emb_std)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(torch.empty_like(b).uniform_(0.5, 1.5, generator=g))


def build_gemma4(d: str | Path, config: str = "ple_shared", seed: int = 0,
                 wrapper: str = "conditional", config_format: str = "release") -> Path:
    """Save a tiny random Gemma 4 checkpoint in d and return d.

    wrapper: "conditional" (Gemma4ForConditionalGeneration without vision/audio, tensors under
    model.language_model. as in Google's releases) or "causal" (Gemma4ForCausalLM, model.).
    config_format: "release" rewrites config.json with global_head_dim /
    num_global_key_value_heads as in the released configs; "hf" keeps transformers 5.23's
    per_layer_config serialisation.
    """
    import torch
    from transformers import (Gemma4Config, Gemma4ForCausalLM,
                              Gemma4ForConditionalGeneration, Gemma4TextConfig)

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    kw = dict(CONFIGS[config])
    tc = Gemma4TextConfig(**kw, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(seed)
    if wrapper == "conditional":
        model = Gemma4ForConditionalGeneration(
            Gemma4Config(text_config=tc.to_dict(), vision_config=None, audio_config=None))
    else:
        model = Gemma4ForCausalLM(tc)
    _randomize(model, seed)
    model.save_pretrained(d)
    make_tokenizer(d, kw["vocab_size"])
    if config_format == "release":
        cfg = json.loads((d / "config.json").read_text())
        text = cfg.get("text_config", cfg)
        text.pop("per_layer_config", None)
        text["global_head_dim"] = kw["global_head_dim"]
        text["num_global_key_value_heads"] = kw.get("num_global_key_value_heads")
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
    return d


def build_gemma3(d: str | Path, seed: int = 0) -> Path:
    """Save a tiny random Gemma3ForCausalLM (1+w norms, query_pre_attn_scalar = head_dim as
    llama.cpp assumes, 5:1 pattern, linear RoPE scaling on global layers) in d."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**GEMMA3_CONFIG, bos_token_id=2, eos_token_id=1,
                                               pad_token_id=0))
    _randomize(model, seed)
    with torch.no_grad():       # Gemma 3 norms are stored as w with output * (1 + w)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.sub_(1.0)
    model.save_pretrained(d)
    make_tokenizer(d, GEMMA3_CONFIG["vocab_size"])
    return d


@functools.lru_cache(maxsize=8)
def _hf_model(hf_dir: str, mtime: float):
    import torch
    import transformers

    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    cls = getattr(transformers, cfg["architectures"][0])
    model = cls.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def reference_logits(hf_dir: str | Path, token_ids: list[int] | np.ndarray) -> np.ndarray:
    """Logits of HF transformers on CPU, float32, eager attention, no cache: shape
    (len(token_ids), n_vocab), float32. The class comes from config.json `architectures`
    (loaded models are cached per directory)."""
    import torch

    cfg = Path(hf_dir) / "config.json"
    model = _hf_model(str(Path(hf_dir).resolve()), cfg.stat().st_mtime)
    ids = torch.tensor([list(map(int, token_ids))], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float().numpy().astype(np.float32)


def reference_greedy(hf_dir: str | Path, token_ids: list[int], n_new: int) -> list[int]:
    """HF transformers' greedy continuation (n_new token ids) of token_ids, decoding one token
    at a time with its KV cache (no EOS stop, no logits processors)."""
    import torch

    cfg = Path(hf_dir) / "config.json"
    model = _hf_model(str(Path(hf_dir).resolve()), cfg.stat().st_mtime)
    out: list[int] = []
    with torch.no_grad():
        res = model(input_ids=torch.tensor([list(map(int, token_ids))]), use_cache=True)
        for _ in range(n_new):
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            res = model(input_ids=torch.tensor([[nxt]]), past_key_values=res.past_key_values,
                        use_cache=True)
    return out


# ---------------------------------------------------------------------------------------------
# numpy forward pass over a GGUF (gemma4, gemma3, llama)


class _GGUF:
    def __init__(self, path: str | Path):
        import gguf
        self.r = gguf.GGUFReader(str(path))
        self.arch = self.r.fields["general.architecture"].contents()
        self.t = {t.name: t for t in self.r.tensors}

    def kv(self, key: str, default: Any = None) -> Any:
        f = self.r.fields.get(key if key.startswith(("general.", "tokenizer.")) else
                              f"{self.arch}.{key}")
        return default if f is None else f.contents()

    def per_layer(self, key: str, n: int, default: Any = None) -> list[Any]:
        v = self.kv(key, default)
        return list(v) if isinstance(v, list) else [v] * n

    def has(self, name: str) -> bool:
        return name in self.t

    def w(self, name: str) -> np.ndarray:
        """Dequantized, numpy shape = reversed ggml shape (a Linear is (n_out, n_in))."""
        import gguf
        t = self.t[name]
        a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        return a.reshape([int(x) for x in reversed(t.shape)]).astype(np.float32)


def _rms(x: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _rope_neox(x: np.ndarray, pos: np.ndarray, base: float, n_rot: int,
               freq_factors: np.ndarray | None = None, scale: float = 1.0) -> np.ndarray:
    """x: (T, heads, d). Pairs (i, i + n_rot/2), theta = pos * scale * base^(-2i/n_rot) / ff."""
    half = n_rot // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    if freq_factors is not None:
        inv = inv / freq_factors.astype(np.float64)
    ang = (pos[:, None].astype(np.float64) * scale) * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    a, b = x[..., :half], x[..., half:n_rot]
    out[..., :half] = a * c - b * s
    out[..., half:n_rot] = b * c + a * s
    return out


def _rope_norm(x: np.ndarray, pos: np.ndarray, base: float, n_rot: int) -> np.ndarray:
    """llama.cpp normal mode: adjacent pairs (2i, 2i+1)."""
    inv = base ** (-np.arange(n_rot // 2, dtype=np.float64) * 2.0 / n_rot)
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
    out[..., 0:n_rot:2] = a * c - b * s
    out[..., 1:n_rot:2] = b * c + a * s
    return out


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
            window: int | None) -> np.ndarray:
    """q (T, nh, d), k/v (T, nkv, d); causal, optional sliding window of `window` positions
    including the current one. Returns (T, nh*d)."""
    T_, nh, dh = q.shape
    nkv = k.shape[1]
    g = nh // nkv
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = np.einsum("qhd,khd->hqk", q, kk).astype(np.float64) * scale
    i, j = np.arange(T_)[:, None], np.arange(T_)[None, :]
    mask = j <= i
    if window:
        mask &= (i - j) < window
    s = np.where(mask[None], s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, vv).reshape(T_, nh * dh).astype(np.float32)


def _kv_source(swa: list[bool], n_shared: int, il: int) -> int:
    first = len(swa) - n_shared
    if il < first:
        return il
    return max(j for j in range(first) if swa[j] == swa[il])


def numpy_forward(gguf_path: str | Path, token_ids: list[int] | np.ndarray,
                  trace: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits (T, n_vocab) float32 of the GGUF model for token_ids at positions 0..T-1,
    computed in numpy from the file alone (architectures gemma4, gemma3, llama).

    trace (gemma4 only): if a dict is given, it receives the activations for debugging a port
    layer by layer: "inp_scaled" (T, H), "ple" (T, L, P), and per layer l: f"{l}.q" (roped,
    T x nh x hd), f"{l}.attn_out" (residual after attention), f"{l}.ffn_out" (after the FFN
    residual), f"{l}.out" (after PLE and the layer scalar); "result_norm" (T, H)."""
    m = _GGUF(gguf_path)
    ids = np.asarray(token_ids, dtype=np.int64)
    pos = np.arange(len(ids))
    if m.arch == "gemma4":
        return _gemma4(m, ids, pos, trace if trace is not None else {})
    if m.arch == "gemma3":
        return _gemma3(m, ids, pos)
    if m.arch == "llama":
        return _llama(m, ids, pos)
    raise ValueError(f"numpy_forward: unsupported architecture {m.arch}")


def _gemma4(m: _GGUF, ids: np.ndarray, pos: np.ndarray, tr: dict[str, np.ndarray]
            ) -> np.ndarray:
    L, H = m.kv("block_count"), m.kv("embedding_length")
    eps = m.kv("attention.layer_norm_rms_epsilon")
    nh = m.per_layer("attention.head_count", L)
    nkv = m.per_layer("attention.head_count_kv", L, nh[0])
    swa = m.per_layer("attention.sliding_window_pattern", L)
    W = m.kv("attention.sliding_window")
    n_shared = m.kv("attention.shared_kv_layers", 0)
    P = m.kv("embedding_length_per_layer_input", 0)
    cap = m.kv("final_logit_softcapping", 0.0)
    base, base_swa = m.kv("rope.freq_base", 10000.0), m.kv("rope.freq_base_swa")
    rot, rot_swa = m.kv("rope.dimension_count"), m.kv("rope.dimension_count_swa")
    ff = m.w("rope_freqs.weight") if m.has("rope_freqs.weight") else None
    n_used = m.kv("expert_used_count", 0)
    emb = m.w("token_embd.weight")
    out_w = m.w("output.weight") if m.has("output.weight") else emb

    h = emb[ids] * np.float32(math.sqrt(H))
    tr["inp_scaled"] = h
    if P:
        tokp = m.w("per_layer_token_embd.weight")[ids].reshape(len(ids), L, P) * math.sqrt(P)
        proj = (h @ m.w("per_layer_model_proj.weight").T) * (H ** -0.5)
        proj = _rms(proj.reshape(len(ids), L, P), eps) * m.w("per_layer_proj_norm.weight")
        ple = (proj + tokp) * (2.0 ** -0.5)
        tr["ple"] = ple
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for il in range(L):
        b = f"blk.{il}."
        hd = m.kv("attention.key_length_swa") if swa[il] else m.kv("attention.key_length")
        x = _rms(h, eps) * m.w(b + "attn_norm.weight")
        q = (x @ m.w(b + "attn_q.weight").T).reshape(len(ids), nh[il], hd)
        q = _rms(q, eps) * m.w(b + "attn_q_norm.weight")
        if swa[il]:
            q = _rope_neox(q, pos, base_swa, rot_swa)
        else:
            q = _rope_neox(q, pos, base, rot, ff)
        tr[f"{il}.q"] = q
        if m.has(b + "attn_k.weight"):
            k_raw = (x @ m.w(b + "attn_k.weight").T).reshape(len(ids), nkv[il], hd)
            v_raw = (x @ m.w(b + "attn_v.weight").T).reshape(len(ids), nkv[il], hd) \
                if m.has(b + "attn_v.weight") else k_raw
            k = _rms(k_raw, eps) * m.w(b + "attn_k_norm.weight")
            k = _rope_neox(k, pos, base_swa, rot_swa) if swa[il] else \
                _rope_neox(k, pos, base, rot, ff)
            cache[il] = (k, _rms(v_raw, eps))
        k, v = cache[_kv_source(swa, n_shared, il)]
        a = _attend(q, k, v, 1.0, W if swa[il] else None)
        a = a @ m.w(b + "attn_output.weight").T
        h = h + _rms(a, eps) * m.w(b + "post_attention_norm.weight")
        tr[f"{il}.attn_out"] = h

        res = h
        xm = _rms(res, eps) * m.w(b + "ffn_norm.weight")
        y = (_gelu(xm @ m.w(b + "ffn_gate.weight").T) * (xm @ m.w(b + "ffn_up.weight").T)) \
            @ m.w(b + "ffn_down.weight").T
        if m.has(b + "ffn_gate_inp.weight"):
            y1 = _rms(y, eps) * m.w(b + "post_ffw_norm_1.weight")
            r = _rms(res, eps) * m.w(b + "ffn_gate_inp.scale") * (H ** -0.5)
            logits = r @ m.w(b + "ffn_gate_inp.weight").T
            pr = np.exp(logits - logits.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            xe = _rms(res, eps) * m.w(b + "pre_ffw_norm_2.weight")
            if m.has(b + "ffn_gate_up_exps.weight"):
                gu = m.w(b + "ffn_gate_up_exps.weight")          # (E, 2F, H)
                Fx = gu.shape[1] // 2
                gate_e, up_e = gu[:, :Fx], gu[:, Fx:]
            else:
                gate_e, up_e = m.w(b + "ffn_gate_exps.weight"), m.w(b + "ffn_up_exps.weight")
            down_e = m.w(b + "ffn_down_exps.weight")             # (E, H, F)
            esc = m.w(b + "ffn_down_exps.scale")
            y2 = np.zeros_like(h)
            for t in range(len(ids)):
                top = np.argsort(-pr[t], kind="stable")[:n_used]
                wts = pr[t, top] / pr[t, top].sum()
                for e, we in zip(top, wts):
                    z = _gelu(gate_e[e] @ xe[t]) * (up_e[e] @ xe[t])
                    y2[t] += we * esc[e] * (down_e[e] @ z)
            y = y1 + _rms(y2, eps) * m.w(b + "post_ffw_norm_2.weight")
        h = res + _rms(y, eps) * m.w(b + "post_ffw_norm.weight")
        tr[f"{il}.ffn_out"] = h
        if P:
            gt = _gelu(h @ m.w(b + "inp_gate.weight").T) * ple[:, il, :]
            h = h + _rms(gt @ m.w(b + "proj.weight").T, eps) * m.w(b + "post_norm.weight")
        if m.has(b + "layer_output_scale.weight"):
            h = h * m.w(b + "layer_output_scale.weight")[0]
        tr[f"{il}.out"] = h
    hn = _rms(h, eps) * m.w("output_norm.weight")
    tr["result_norm"] = hn
    logits = hn @ out_w.T
    if cap:
        logits = cap * np.tanh(logits / cap)
    return logits.astype(np.float32)


def _gemma3(m: _GGUF, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
    L, H = m.kv("block_count"), m.kv("embedding_length")
    eps = m.kv("attention.layer_norm_rms_epsilon")
    nh, nkv = m.kv("attention.head_count"), m.kv("attention.head_count_kv")
    hd = m.kv("attention.key_length")
    W = m.kv("attention.sliding_window", 0)
    base = m.kv("rope.freq_base", 10000.0)
    scale = 1.0 / m.kv("rope.scaling.factor", 1.0) \
        if m.kv("rope.scaling.type") == "linear" else 1.0
    q_scale = 1.0 / math.sqrt(H / nh) if L == 62 else 1.0 / math.sqrt(hd)   # llama.cpp 27B rule
    cap = m.kv("final_logit_softcapping", 0.0)
    emb = m.w("token_embd.weight")
    out_w = m.w("output.weight") if m.has("output.weight") else emb
    h = emb[ids] * np.float32(math.sqrt(H))
    for il in range(L):
        b = f"blk.{il}."
        is_swa = bool(W) and il % 6 != 5               # llama.cpp set_swa_pattern(6)
        x = _rms(h, eps) * m.w(b + "attn_norm.weight")
        q = (x @ m.w(b + "attn_q.weight").T).reshape(len(ids), nh, hd)
        k = (x @ m.w(b + "attn_k.weight").T).reshape(len(ids), nkv, hd)
        v = (x @ m.w(b + "attn_v.weight").T).reshape(len(ids), nkv, hd)
        q = _rms(q, eps) * m.w(b + "attn_q_norm.weight")
        k = _rms(k, eps) * m.w(b + "attn_k_norm.weight")
        if is_swa:
            q, k = _rope_neox(q, pos, 10000.0, hd), _rope_neox(k, pos, 10000.0, hd)
        else:
            q, k = _rope_neox(q, pos, base, hd, scale=scale), _rope_neox(k, pos, base, hd, scale=scale)
        a = _attend(q, k, v, q_scale, W if is_swa else None) @ m.w(b + "attn_output.weight").T
        h = h + _rms(a, eps) * m.w(b + "post_attention_norm.weight")
        xm = _rms(h, eps) * m.w(b + "ffn_norm.weight")
        y = (_gelu(xm @ m.w(b + "ffn_gate.weight").T) * (xm @ m.w(b + "ffn_up.weight").T)) \
            @ m.w(b + "ffn_down.weight").T
        h = h + _rms(y, eps) * m.w(b + "post_ffw_norm.weight")
    logits = (_rms(h, eps) * m.w("output_norm.weight")) @ out_w.T
    if cap:
        logits = cap * np.tanh(logits / cap)
    return logits.astype(np.float32)


def _llama(m: _GGUF, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
    L, H = m.kv("block_count"), m.kv("embedding_length")
    eps = m.kv("attention.layer_norm_rms_epsilon")
    nh, nkv = m.kv("attention.head_count"), m.kv("attention.head_count_kv")
    hd = H // nh
    base = m.kv("rope.freq_base", 10000.0)
    emb = m.w("token_embd.weight")
    out_w = m.w("output.weight") if m.has("output.weight") else emb
    h = emb[ids].copy()
    for il in range(L):
        b = f"blk.{il}."
        x = _rms(h, eps) * m.w(b + "attn_norm.weight")
        q = _rope_norm((x @ m.w(b + "attn_q.weight").T).reshape(len(ids), nh, hd), pos, base, hd)
        k = _rope_norm((x @ m.w(b + "attn_k.weight").T).reshape(len(ids), nkv, hd), pos, base, hd)
        v = (x @ m.w(b + "attn_v.weight").T).reshape(len(ids), nkv, hd)
        h = h + _attend(q, k, v, 1.0 / math.sqrt(hd), None) @ m.w(b + "attn_output.weight").T
        xm = _rms(h, eps) * m.w(b + "ffn_norm.weight")
        g = xm @ m.w(b + "ffn_gate.weight").T
        h = h + ((g / (1.0 + np.exp(-g))) * (xm @ m.w(b + "ffn_up.weight").T)) \
            @ m.w(b + "ffn_down.weight").T
    return ((_rms(h, eps) * m.w("output_norm.weight")) @ out_w.T).astype(np.float32)
