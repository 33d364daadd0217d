"""One formula for the KV cache a sequence holds: the C core's paged cache
(csrc/engine/kvcache.h g4_kvc_seq_bytes) and gemma4stack.recommend (which calls it through
_core.kv_seq_bytes with the layers it reads from the model catalog) agree for the Gemma 4
variants, per context and cache type.

Files: synthetic Gemma 4 GGUFs at the variants' real widths, head counts, windows and layer
pattern, cut in depth (gemma4stack.synth) and with a small vocabulary, so they load in seconds.
The layer list recommend builds from the catalog is checked against synth's shapes at full
depth for all five variants.
"""
from __future__ import annotations

import dataclasses

import pytest

from gemma4stack import Model
from gemma4stack.recommend import KV_BATCH_TOKENS, get_variant, kv_cache_bytes, kv_layers
from gemma4stack.synth import GEMMA4_VARIANTS, synth


def _shape_layers(shape) -> list[tuple[int, int, int]]:
    out = []
    for il in range(shape.n_layer):
        if not shape.has_kv(il):
            continue
        d = shape.layer_head_kv(il) * shape.layer_head_dim(il)
        out.append((d, d, shape.sliding_window if shape.is_swa(il) else 0))
    return out


@pytest.mark.parametrize("name", list(GEMMA4_VARIANTS))
def test_recommend_reads_the_layers_the_gguf_has(name):
    assert kv_layers(get_variant(name)) == _shape_layers(GEMMA4_VARIANTS[name])


@pytest.mark.parametrize("name,layers", [("e2b", 10), ("e4b", 3)])
def test_model_kv_per_sequence_equals_recommend(tmp_path, name, layers):
    path = tmp_path / f"{name}.gguf"
    synth(path, variant=name, type="q4_0", layers=layers, n_vocab=4096)
    shape = GEMMA4_VARIANTS[name].with_layers(layers)
    v = dataclasses.replace(get_variant(name), n_layer=layers, n_kv_shared_layers=shape.n_kv_shared)
    assert kv_layers(v) == _shape_layers(shape)
    if name == "e2b":
        assert shape.n_kv_shared > 0                   # KV-shared layers hold none
    for ctx in (300, 2048):
        for kv in ("f16", "q8_0"):
            with Model(path, threads=1, context=ctx, kv_cache=kv, parallel=2) as m:
                mem = m.memory()
                assert mem["kv_bytes_per_sequence"] == kv_cache_bytes(v, ctx, kv), (ctx, kv)
                # parallel 2: two sequences, plus a window of sliding blocks each (prefix reuse)
                assert mem["kv_bytes"] >= 2 * mem["kv_bytes_per_sequence"]
    assert KV_BATCH_TOKENS == Model(path, threads=1, context=64).stats().batch_tokens
