"""Reference for the Gemma 4 MTP assistant tests: a tiny random Gemma4AssistantForCausalLM
beside a tiny Gemma 4 target (tests/gemma4_ref.py), and transformers' draft steps.

    >>> tgt = build_gemma4(tmp / "t", "ple_shared", wrapper="causal")   # gemma4_ref
    >>> asst = build_assistant(tmp / "a", tgt, masked=True)
    >>> ref = reference_draft(tgt, asst, ids, n_steps=3)

reference_draft follows transformers 5.25's Gemma4AssistantCandidateGenerator.get_candidates
(generation/candidate_generator.py): the target runs the prompt (no cache) and returns its
final-normed hidden states (hidden_states[-1]) and shared_kv_states (the last non-shared
sliding / global layer's K and V over positions 0..T-1); the token the target picks at T-1
(argmax) sits at position T; each assistant step gets [target embedding(token) ;
hidden] at that same position and returns logits and the projected hidden state for the next.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from gemma4_ref import CONFIGS, _hf_model, _randomize, make_tokenizer

S, F = "sliding_attention", "full_attention"


def assistant_config(target: dict[str, Any], hidden: int = 32, n_ff: int = 64,
                     n_head: int = 4) -> dict[str, Any]:
    """A small Gemma4TextConfig for an assistant of a target config (CONFIGS entry): 4 layers
    (3 sliding, 1 global, as every released assistant), the target's head sizes, KV heads and
    window (its layers read the target's K/V)."""
    return dict(vocab_size=target["vocab_size"], hidden_size=hidden, intermediate_size=n_ff,
                num_hidden_layers=4, layer_types=[S, S, S, F], num_attention_heads=n_head,
                num_key_value_heads=target["num_key_value_heads"],
                num_global_key_value_heads=target.get("num_global_key_value_heads"),
                attention_k_eq_v=target.get("attention_k_eq_v", False),
                head_dim=target["head_dim"], global_head_dim=target["global_head_dim"],
                sliding_window=target["sliding_window"], hidden_size_per_layer_input=0,
                vocab_size_per_layer_input=0, num_kv_shared_layers=4,
                final_logit_softcapping=None)


def build_assistant(d: str | Path, target_dir: str | Path, config: str = "ple_shared",
                    masked: bool = True, n_centroids: int = 16, top_k: int = 4,
                    seed: int = 1) -> Path:
    """Save a random Gemma4AssistantForCausalLM for the target in target_dir (built from
    CONFIGS[config]) in d: backbone_hidden_size = the target's hidden size; masked: the
    ordered-embedding head (use_ordered_embeddings) with a random token permutation. The
    tokenizer files are the target's."""
    import torch
    from transformers import (Gemma4AssistantConfig, Gemma4AssistantForCausalLM,
                              Gemma4TextConfig)

    d, target_dir = Path(d), Path(target_dir)
    d.mkdir(parents=True, exist_ok=True)
    tc = CONFIGS[config]
    text = Gemma4TextConfig(**assistant_config(tc), bos_token_id=2, eos_token_id=1,
                            pad_token_id=0)
    cfg = Gemma4AssistantConfig(text_config=text.to_dict(), backbone_hidden_size=tc["hidden_size"],
                                use_ordered_embeddings=masked, num_centroids=n_centroids,
                                centroid_intermediate_top_k=top_k)
    torch.manual_seed(seed)
    model = Gemma4AssistantForCausalLM(cfg)
    _randomize(model, seed)
    if masked:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.masked_embedding.token_ordering.copy_(
                torch.randperm(tc["vocab_size"], generator=g))
            model.masked_embedding.centroids.weight.copy_(
                torch.randn(model.masked_embedding.centroids.weight.shape, generator=g)
                / math.sqrt(text.hidden_size))
    model.save_pretrained(d)
    for f in target_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, d / f.name)
    return d


# E2B-width target (hidden 1536, 8 heads, 1 KV head, head dims 256 / 512, window 512; two
# layers) and an assistant of the published Gemma 4 assistant layer shapes (hidden 1024, FFN
# 8192, 16 query heads, 4 layers; the 12B assistant's config.json and MAX's
# Gemma4AssistantConfig defaults; the E2B/E4B assistants' own widths were not available here).
# Only the vocabulary is small (512; so 128 centroids of 4 tokens, top 32, not 2048 of 128).
REAL_TARGET = dict(vocab_size=512, hidden_size=1536, intermediate_size=512, num_hidden_layers=2,
                   layer_types=[S, F], num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                   global_head_dim=512, sliding_window=512, hidden_size_per_layer_input=0,
                   vocab_size_per_layer_input=0, num_kv_shared_layers=0,
                   final_logit_softcapping=30.0)
REAL_ASSISTANT = dict(vocab_size=512, hidden_size=1024, intermediate_size=8192, num_hidden_layers=4,
                      layer_types=[S, S, S, F], num_attention_heads=16, num_key_value_heads=1,
                      head_dim=256, global_head_dim=512, sliding_window=512,
                      hidden_size_per_layer_input=0, vocab_size_per_layer_input=0,
                      num_kv_shared_layers=4, final_logit_softcapping=None)


def build_real_shapes(d: str | Path, seed: int = 2) -> tuple[Path, Path]:
    """(target dir, assistant dir) at REAL_TARGET / REAL_ASSISTANT shapes, random weights."""
    import torch
    from transformers import (Gemma4AssistantConfig, Gemma4AssistantForCausalLM,
                              Gemma4ForCausalLM, Gemma4TextConfig)

    d = Path(d)
    torch.manual_seed(seed)
    tgt = Gemma4ForCausalLM(Gemma4TextConfig(**REAL_TARGET, bos_token_id=2, eos_token_id=1,
                                             pad_token_id=0))
    _randomize(tgt, seed)
    tgt.save_pretrained(d / "t")
    make_tokenizer(d / "t", 512)
    cfg = Gemma4AssistantConfig(
        text_config=Gemma4TextConfig(**REAL_ASSISTANT, bos_token_id=2, eos_token_id=1,
                                     pad_token_id=0).to_dict(),
        backbone_hidden_size=REAL_TARGET["hidden_size"], use_ordered_embeddings=True,
        num_centroids=128, centroid_intermediate_top_k=32)
    asst = Gemma4AssistantForCausalLM(cfg)
    _randomize(asst, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        asst.masked_embedding.token_ordering.copy_(torch.randperm(512, generator=g))
        asst.masked_embedding.centroids.weight.normal_(0.0, 1.0 / math.sqrt(1024), generator=g)
    asst.save_pretrained(d / "a")
    for f in (d / "t").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, d / "a" / f.name)
    return d / "t", d / "a"


def reference_draft(target_dir: str | Path, asst_dir: str | Path, ids: list[int],
                    n_steps: int = 3) -> dict[str, Any]:
    """transformers' MTP draft after the prompt ids: {"token0": the target's argmax at the last
    prompt row (position T), "h0": its final-normed hidden state (float32 [H_target]),
    "steps": [(logits [V], h_out [H_target], drafted token)] * n_steps}."""
    import torch

    tgt = _hf_model(str(Path(target_dir).resolve()), (Path(target_dir) / "config.json").stat().st_mtime)
    asst = _hf_model(str(Path(asst_dir).resolve()), (Path(asst_dir) / "config.json").stat().st_mtime)
    T = len(ids)
    with torch.no_grad():
        out = tgt(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True,
                  return_shared_kv_states=True)
        kv = {k: (v[0], v[1]) for k, v in dict(out.shared_kv_states).items()}
        tok = int(out.logits[0, -1].argmax())
        h = out.hidden_states[-1][:, -1:]
        res: dict[str, Any] = {"token0": tok, "h0": h[0, 0].float().numpy().copy(), "steps": []}
        emb = tgt.get_input_embeddings()
        pos = torch.tensor([[T]])
        for _ in range(n_steps):
            x = torch.cat([emb(torch.tensor([[tok]])), h], dim=-1)
            o = asst(inputs_embeds=x, position_ids=pos, shared_kv_states=kv, use_cache=False)
            lg = o.logits[0, 0].float().numpy().copy()
            tok = int(lg.argmax())
            h = o.last_hidden_state
            res["steps"].append((lg, h[0, 0].float().numpy().copy(), tok))
    return res


def config_json(d: str | Path) -> dict[str, Any]:
    return json.loads((Path(d) / "config.json").read_text())
