/* gemma4.c - the `gemma4` architecture (Gemma 4 text decoders: E2B, E4B,
 * 26B-A4B, 31B, 12B), read from GGUF as llama.cpp writes it and computed as
 * HF transformers 5.23 does (models/gemma4/modeling_gemma4.py; llama.cpp
 * src/models/gemma4.cpp builds the same graph; keys and tensor shapes from
 * its load_arch_hparams / load_arch_tensors). An executable numpy version of
 * the same semantics: tests/gemma4_ref.py::numpy_forward.
 *
 *   h = token_embd[tok] * sqrt(H)
 *   ple[l] = (rms(per_layer_model_proj h / sqrt(H))[l] * per_layer_proj_norm
 *             + per_layer_token_embd[tok][l] * sqrt(P)) / sqrt(2)          (E2B/E4B)
 *   per layer l (sliding or global, from attention.sliding_window_pattern):
 *     x = rms(h) * attn_norm
 *     q = rope(rms_head(attn_q x) * attn_q_norm)
 *     k = rope(rms_head(attn_k x) * attn_k_norm); v = rms_head(attn_v x)   (no weight;
 *         global layers without attn_v take v from the raw attn_k x)
 *     KV-shared layers (the last attention.shared_kv_layers) compute only q and
 *         attend over the cache of the last earlier layer of the same type
 *     h += rms(attn_output softmax(q k^T + mask) v) * post_attention_norm   (scale 1)
 *     m = ffn_down (gelu(ffn_gate y) * ffn_up y),  y = rms(h) * ffn_norm
 *     MoE layers: m = rms(m) * post_ffw_norm_1 + rms(experts) * post_ffw_norm_2,
 *         experts = sum_top-k w_e down_e (gelu(gate_e z) * up_e z), z = rms(h) * pre_ffw_norm_2,
 *         w = renormalised top-k of softmax(ffn_gate_inp (rms(h) * ffn_gate_inp.scale / sqrt(H)))
 *         times ffn_down_exps.scale
 *     h += rms(m) * post_ffw_norm
 *     h += rms(proj (gelu(inp_gate h) * ple[l])) * post_norm                (E2B/E4B)
 *     h *= layer_output_scale                                  (the whole stream)
 *   logits = softcap(token_embd (rms(h) * output_norm)),  softcap(x) = c tanh(x / c)
 *
 * Where issue 3's summary is loose, this follows transformers: the router
 * reads the residual before ffn_norm but RMS-normalises it (no weight) and
 * scales it by ffn_gate_inp.scale / sqrt(H); the layer scalar multiplies the
 * residual stream, not only the layer's contribution; a KV-shared layer
 * reads the last non-shared layer of its own type (llama.cpp hard-codes
 * n_layer_kv_from_start - 2 / - 1, the same layers in every release).
 *
 * Sliding layers: head dim key_length_swa, RoPE rope.freq_base_swa over
 * rope.dimension_count_swa dims, window of attention.sliding_window tokens
 * including the current one. Global layers: head dim key_length, RoPE
 * rope.freq_base over rope.dimension_count dims divided by rope_freqs
 * ("proportional" RoPE: 1e30 switches a pair off). RoPE pairs (i, i + d/2)
 * (NeoX, HF rotate_half).
 *
 * KV cache: the engine's paged cache (engine/kvcache.h), one cache layer per
 * layer that computes K/V (none for KV-shared layers); its sliding-window
 * layers return blocks that left the window as a sequence advances. A batch
 * (tokens of several sequences) runs in chunks of GEMMA4_BATCH tokens; the
 * KV-shared layers (which write no cache) run only for the tokens whose
 * logits are wanted, as HF does with logits_to_keep.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "ops.h"
#include "ops_gemma.h"

#define GEMMA4_BATCH 64

/* ---------------------------------------------------------------- structs */

typedef struct gemma4_hparams {
    int32_t n_vocab, n_ctx_train;
    int32_t n_embd, n_layer, n_embd_per_layer;  /* H, L, P (0: no per-layer embeddings) */
    int32_t n_kv_shared, window;
    int32_t head_dim, head_dim_swa, n_rot, n_rot_swa;
    int32_t n_expert, n_expert_used, n_ff_exp;
    float eps, rope_base, rope_base_swa, softcap;
} gemma4_hparams;

typedef struct gemma4_layer {
    int is_swa, has_kv, kv_src;       /* kv_src: the layer whose cache this one reads */
    int kv_slot;                      /* cache layer index of kv_src (g4_kvc_*'s li) */
    int n_head, n_head_kv, head_dim, n_ff;
    const float *attn_norm, *attn_q_norm, *attn_k_norm, *post_attention_norm;
    const float *ffn_norm, *post_ffw_norm;
    const g4_tensor *wq, *wk, *wv, *wo;  /* wv NULL on K=V layers */
    const g4_tensor *ffn_gate, *ffn_up, *ffn_down;
    /* mixture of experts (26B-A4B) */
    const g4_tensor *ffn_gate_inp;       /* router [H, E]; NULL: dense layer */
    const float *ffn_gate_inp_scale, *pre_ffw_norm_2, *post_ffw_norm_1, *post_ffw_norm_2;
    const g4_tensor *gate_up_exps;       /* [H, 2 n_ff_exp, E], or the two below */
    const g4_tensor *gate_exps, *up_exps;
    const g4_tensor *down_exps;          /* [n_ff_exp, H, E] */
    const float *down_exps_scale;        /* [E] or NULL */
    /* per-layer embeddings (E2B/E4B) */
    const g4_tensor *inp_gate, *proj;
    const float *post_norm;
    float out_scale;                     /* layer_output_scale, 1 when absent */
    g4_attn attn;
} gemma4_layer;

typedef struct gemma4_scratch {
    int n_batch;
    float *x, *xb, *xb2;     /* [B][H] residual stream, normed input, FFN output */
    float *q, *ao;           /* [B][max n_head * head_dim] queries, attention output */
    float *kb, *vb;          /* [B][max n_head_kv * head_dim] new keys / values */
    float *hb, *hb2;         /* [B][max n_ff] */
    float *cs, *cs_swa;      /* [B][n_rot], [B][n_rot_swa] RoPE cos/sin per position */
    float *ple;              /* [B][L * P] per-layer inputs */
    float *pe;               /* [L * P] one token's per_layer_token_embd row */
    float *pg;               /* [B][P] per-layer gate */
    float *rl;               /* [B][E] router logits */
    int32_t *eidx;           /* [B][k] chosen experts */
    float *ew;               /* [B][k] their weights */
    int32_t *etok;           /* [B] tokens routed to the expert at hand */
    float *ew1;              /* [B] and their weights */
    float *ex, *eo, *y2;     /* [B][H] expert input gathered, expert output, expert sum */
    float *eh;               /* [B][2 n_ff_exp] */
    void *xq;                /* activations converted for the matmul kernels */
    void *base;
    size_t bytes;
} gemma4_scratch;

typedef struct gemma4 {
    gemma4_hparams hp;
    const g4_tensor *token_embd, *output;
    const float *output_norm, *rope_freqs;
    const g4_tensor *per_layer_token_embd, *per_layer_model_proj;
    const float *per_layer_proj_norm;
    gemma4_layer *layers;
    int n_kv_layers;
    g4_rope rope, rope_swa;
    gemma4_scratch s;
} gemma4;

/* ---------------------------------------------------------- hyperparameters */

static g4_status read_hparams(g4_model *m, gemma4 *G, g4_err *err) {
    gemma4_hparams *hp = &G->hp;
    uint32_t u;
    g4_status st;
#define U32(key, field) do { if ((st = g4_hp_u32(m, key, &u, err)) != G4_OK) return st; hp->field = (int32_t)u; } while (0)
#define U32_OR(key, dflt, field) do { if ((st = g4_hp_u32_or(m, key, dflt, &u, err)) != G4_OK) return st; hp->field = (int32_t)u; } while (0)
    U32("context_length", n_ctx_train);
    U32("embedding_length", n_embd);
    U32("block_count", n_layer);
    U32("attention.sliding_window", window);
    U32("embedding_length_per_layer_input", n_embd_per_layer);
    U32("attention.key_length_swa", head_dim_swa);
    U32_OR("attention.shared_kv_layers", 0, n_kv_shared);
    U32_OR("expert_count", 0, n_expert);
    U32_OR("expert_used_count", 0, n_expert_used);
    U32_OR("expert_feed_forward_length", 0, n_ff_exp);
    if ((st = g4_hp_f32(m, "attention.layer_norm_rms_epsilon", &hp->eps, err)) != G4_OK) return st;
    if ((st = g4_hp_f32_or(m, "rope.freq_base", 10000.0f, &hp->rope_base, err)) != G4_OK) return st;
    /* llama.cpp falls back to the global base; every converter writes the key */
    if ((st = g4_hp_f32_or(m, "rope.freq_base_swa", hp->rope_base, &hp->rope_base_swa, err)) != G4_OK) return st;
    if ((st = g4_hp_f32_or(m, "final_logit_softcapping", 0.0f, &hp->softcap, err)) != G4_OK) return st;

    if (hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_layer > 4096)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4: embedding_length %d and block_count %d must be positive "
                          "(block_count at most 4096)", hp->n_embd, hp->n_layer);
    if (hp->window <= 0)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4: attention.sliding_window must be positive");
    if (hp->n_kv_shared >= hp->n_layer)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4: attention.shared_kv_layers %d must be below block_count %d",
                          hp->n_kv_shared, hp->n_layer);
    if (hp->n_expert > 0 && (hp->n_expert_used <= 0 || hp->n_expert_used > hp->n_expert))
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4: expert_used_count %d must be in 1..expert_count %d",
                          hp->n_expert_used, hp->n_expert);
    /* head sizes: key_length is the global layers' (llama.cpp n_embd_head_k) */
    U32_OR("attention.key_length", 0, head_dim);
    if (hp->head_dim <= 0) return g4_err_set(err, G4_ERR_FORMAT, "gemma4: missing key 'gemma4.attention.key_length'");
    uint32_t vl, vl_swa;
    if ((st = g4_hp_u32_or(m, "attention.value_length", (uint32_t)hp->head_dim, &vl, err)) != G4_OK) return st;
    if ((st = g4_hp_u32_or(m, "attention.value_length_swa", (uint32_t)hp->head_dim_swa, &vl_swa, err)) != G4_OK)
        return st;
    if ((int32_t)vl != hp->head_dim || (int32_t)vl_swa != hp->head_dim_swa)
        return g4_err_set(err, G4_ERR_UNSUPPORTED, "gemma4: value_length %u / value_length_swa %u differ from "
                          "key_length %d / key_length_swa %d", vl, vl_swa, hp->head_dim, hp->head_dim_swa);
    U32_OR("rope.dimension_count", (uint32_t)hp->head_dim, n_rot);
    U32_OR("rope.dimension_count_swa", (uint32_t)hp->head_dim_swa, n_rot_swa);
#undef U32
#undef U32_OR
    if (hp->head_dim_swa <= 0 || hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2 ||
        hp->n_rot_swa <= 0 || hp->n_rot_swa > hp->head_dim_swa || hp->n_rot_swa % 2)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4: rope.dimension_count %d / _swa %d must be even and at most "
                          "key_length %d / key_length_swa %d", hp->n_rot, hp->n_rot_swa, hp->head_dim,
                          hp->head_dim_swa);
    return G4_OK;
}

/* Per-layer structure: type, head counts, FFN width, and whose KV cache each
 * layer reads (HF Gemma4TextConfig.kv_sharing_modes: a shared layer uses the
 * last non-shared layer of its own type; llama.cpp's fixed offsets -2/-1
 * give the same layers in every release). */
static g4_status read_layer_structure(g4_model *m, gemma4 *G, g4_err *err) {
    gemma4_hparams *hp = &G->hp;
    const int L = hp->n_layer;
    uint32_t *swa = calloc((size_t)L * 4, sizeof(uint32_t));
    if (!swa) return g4_err_set(err, G4_ERR_NOMEM, "gemma4: out of memory");
    uint32_t *nh = swa + L, *nkv = swa + 2 * L, *nff = swa + 3 * L;
    g4_status st;
    if ((st = g4_hp_u32_layers(m, "attention.sliding_window_pattern", L, NULL, swa, err)) != G4_OK) goto done;
    if ((st = g4_hp_u32_layers(m, "attention.head_count", L, NULL, nh, err)) != G4_OK) goto done;
    if ((st = g4_hp_u32_layers(m, "attention.head_count_kv", L, nh, nkv, err)) != G4_OK) goto done;
    if ((st = g4_hp_u32_layers(m, "feed_forward_length", L, NULL, nff, err)) != G4_OK) goto done;

    const int first_shared = L - hp->n_kv_shared;
    G->n_kv_layers = 0;
    for (int il = 0; il < L; il++) {
        gemma4_layer *l = &G->layers[il];
        l->is_swa = swa[il] != 0;
        l->n_head = (int)nh[il];
        l->n_head_kv = (int)nkv[il];
        l->head_dim = l->is_swa ? hp->head_dim_swa : hp->head_dim;
        l->n_ff = (int)nff[il];
        l->has_kv = il < first_shared;
        l->kv_src = il;
        if (l->has_kv) l->kv_slot = G->n_kv_layers++;
        if (!l->has_kv) {
            l->kv_src = -1;
            for (int j = first_shared - 1; j >= 0; j--)
                if (G->layers[j].is_swa == l->is_swa) { l->kv_src = j; l->kv_slot = G->layers[j].kv_slot; break; }
            if (l->kv_src < 0) {
                st = g4_err_set(err, G4_ERR_FORMAT, "gemma4: KV-shared layer %d (%s) has no earlier layer of its "
                                "type to share with", il, l->is_swa ? "sliding" : "global");
                goto done;
            }
        }
        if (l->n_head <= 0 || l->n_ff <= 0) {
            st = g4_err_set(err, G4_ERR_FORMAT, "gemma4: layer %d: head_count %d and feed_forward_length %d "
                            "must be positive", il, l->n_head, l->n_ff);
            goto done;
        }
        const gemma4_layer *src = &G->layers[l->kv_src];
        const int kvh = l->has_kv ? l->n_head_kv : src->n_head_kv;
        if (kvh <= 0 || l->n_head % kvh) {
            st = g4_err_set(err, G4_ERR_FORMAT, "gemma4: layer %d: head_count %d is not a multiple of "
                            "head_count_kv %d", il, l->n_head, kvh);
            goto done;
        }
        l->attn = (g4_attn){
            .n_head = l->n_head, .n_head_kv = kvh, .head_dim_k = l->head_dim, .head_dim_v = l->head_dim,
            .scale = 1.0f,    /* hparams.f_attention_scale = 1: q_norm does the scaling */
            .softcap = 0.0f, .window = l->is_swa ? hp->window : 0,
        };
    }
    st = G4_OK;
done:
    free(swa);
    return st;
}

/* ---------------------------------------------------------------- weights */

static g4_status load_globals(g4_model *m, gemma4 *G, g4_err *err) {
    gemma4_hparams *hp = &G->hp;
    const int64_t H = hp->n_embd, LP = (int64_t)hp->n_layer * hp->n_embd_per_layer;
    g4_status st;
    const g4_tensor *te = g4_gguf_find_tensor(m->gguf, "token_embd.weight");
    hp->n_vocab = te ? (int32_t)te->ne[1] : 0;
    if ((st = g4_model_tensor(m, "token_embd.weight", H, hp->n_vocab, 0, &G->token_embd, err))) return st;
    if ((st = g4_model_vec(m, "output_norm.weight", H, 0, &G->output_norm, err))) return st;
    /* tied in every release; llama.cpp uses output.weight when present */
    if ((st = g4_model_tensor(m, "output.weight", H, hp->n_vocab, 1, &G->output, err))) return st;
    if (!G->output) G->output = G->token_embd;
    if ((st = g4_model_vec(m, "rope_freqs.weight", hp->n_rot / 2, 1, &G->rope_freqs, err))) return st;
    if (hp->n_embd_per_layer > 0) {
        if ((st = g4_model_tensor(m, "per_layer_token_embd.weight", LP, hp->n_vocab, 0, &G->per_layer_token_embd, err)))
            return st;
        if ((st = g4_model_tensor(m, "per_layer_model_proj.weight", H, LP, 0, &G->per_layer_model_proj, err))) return st;
        if ((st = g4_model_vec(m, "per_layer_proj_norm.weight", hp->n_embd_per_layer, 0, &G->per_layer_proj_norm, err)))
            return st;
    }
    return G4_OK;
}

static g4_status load_moe(g4_model *m, gemma4 *G, int il, g4_err *err) {
    gemma4_hparams *hp = &G->hp;
    gemma4_layer *l = &G->layers[il];
    const int64_t H = hp->n_embd, E = hp->n_expert;
    g4_status st;
    if ((st = g4_model_blk_tensor(m, il, "ffn_gate_inp.weight", H, E, 0, &l->ffn_gate_inp, err))) return st;
    if ((st = g4_model_blk_vec(m, il, "ffn_gate_inp.scale", H, 0, &l->ffn_gate_inp_scale, err))) return st;
    if ((st = g4_model_blk_vec(m, il, "pre_ffw_norm_2.weight", H, 0, &l->pre_ffw_norm_2, err))) return st;
    if ((st = g4_model_blk_vec(m, il, "post_ffw_norm_1.weight", H, 0, &l->post_ffw_norm_1, err))) return st;
    if ((st = g4_model_blk_vec(m, il, "post_ffw_norm_2.weight", H, 0, &l->post_ffw_norm_2, err))) return st;
    if (hp->n_ff_exp <= 0) {   /* expert_feed_forward_length is optional: take it from the down stack */
        char name[64];
        snprintf(name, sizeof name, "blk.%d.ffn_down_exps.weight", il);
        const g4_tensor *t = g4_gguf_find_tensor(m->gguf, name);
        hp->n_ff_exp = t ? (int32_t)t->ne[0] : 0;
        if (hp->n_ff_exp <= 0) return g4_err_set(err, G4_ERR_FORMAT, "tensor '%s' is missing", name);
    }
    const int64_t I = hp->n_ff_exp;
    /* fused gate+up (current converters; rows 0..I-1 gate, I..2I-1 up, as HF's
     * gate_up_proj.chunk(2)) or the older separate stacks */
    if ((st = g4_model_blk_tensor3(m, il, "ffn_gate_up_exps.weight", H, 2 * I, E, 1, &l->gate_up_exps, err))) return st;
    if (!l->gate_up_exps) {
        if ((st = g4_model_blk_tensor3(m, il, "ffn_gate_exps.weight", H, I, E, 1, &l->gate_exps, err))) return st;
        if (!l->gate_exps)
            return g4_err_set(err, G4_ERR_FORMAT, "tensor 'blk.%d.ffn_gate_up_exps.weight' (or ffn_gate_exps + "
                              "ffn_up_exps) is missing", il);
        if ((st = g4_model_blk_tensor3(m, il, "ffn_up_exps.weight", H, I, E, 0, &l->up_exps, err))) return st;
    }
    if ((st = g4_model_blk_tensor3(m, il, "ffn_down_exps.weight", I, H, E, 0, &l->down_exps, err))) return st;
    return g4_model_blk_vec(m, il, "ffn_down_exps.scale", E, 1, &l->down_exps_scale, err);
}

static g4_status load_layer(g4_model *m, gemma4 *G, int il, g4_err *err) {
    gemma4_hparams *hp = &G->hp;
    gemma4_layer *l = &G->layers[il];
    const int64_t H = hp->n_embd, hd = l->head_dim, F = l->n_ff, P = hp->n_embd_per_layer;
    const int64_t Q = (int64_t)l->n_head * hd, KV = (int64_t)l->n_head_kv * hd;
    g4_status st;
    if ((st = g4_model_blk_vec(m, il, "attn_norm.weight", H, 0, &l->attn_norm, err))) return st;
    if ((st = g4_model_blk_tensor(m, il, "attn_q.weight", H, Q, 0, &l->wq, err))) return st;
    if ((st = g4_model_blk_vec(m, il, "attn_q_norm.weight", hd, 0, &l->attn_q_norm, err))) return st;
    if (l->has_kv) {
        if ((st = g4_model_blk_tensor(m, il, "attn_k.weight", H, KV, 0, &l->wk, err))) return st;
        /* absent on the K=V global layers of 26B-A4B / 31B / 12B */
        if ((st = g4_model_blk_tensor(m, il, "attn_v.weight", H, KV, 1, &l->wv, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "attn_k_norm.weight", hd, 0, &l->attn_k_norm, err))) return st;
    }
    if ((st = g4_model_blk_tensor(m, il, "attn_output.weight", Q, H, 0, &l->wo, err))) return st;
    if ((st = g4_model_blk_vec(m, il, "post_attention_norm.weight", H, 0, &l->post_attention_norm, err))) return st;
    if ((st = g4_model_blk_vec(m, il, "ffn_norm.weight", H, 0, &l->ffn_norm, err))) return st;
    if ((st = g4_model_blk_tensor(m, il, "ffn_gate.weight", H, F, 0, &l->ffn_gate, err))) return st;
    if ((st = g4_model_blk_tensor(m, il, "ffn_up.weight", H, F, 0, &l->ffn_up, err))) return st;
    if ((st = g4_model_blk_tensor(m, il, "ffn_down.weight", F, H, 0, &l->ffn_down, err))) return st;
    if ((st = g4_model_blk_vec(m, il, "post_ffw_norm.weight", H, 0, &l->post_ffw_norm, err))) return st;
    if (hp->n_expert > 0 && (st = load_moe(m, G, il, err))) return st;
    if (P > 0) {
        if ((st = g4_model_blk_tensor(m, il, "inp_gate.weight", H, P, 0, &l->inp_gate, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "proj.weight", P, H, 0, &l->proj, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "post_norm.weight", H, 0, &l->post_norm, err))) return st;
    }
    const float *scale;
    if ((st = g4_model_blk_vec(m, il, "layer_output_scale.weight", 1, 1, &scale, err))) return st;
    l->out_scale = scale ? scale[0] : 1.0f;
    return G4_OK;
}

/* ------------------------------------------------------- KV cache, scratch */

/* ------------------------------------------------------------- scratch */

static float *carve(char **p, size_t n_floats) {
    float *r = (float *)*p;
    *p += (n_floats * sizeof(float) + 63) / 64 * 64;
    return r;
}

static g4_status build_scratch(g4_model *m, gemma4 *G, g4_err *err) {
    const gemma4_hparams *hp = &G->hp;
    gemma4_scratch *s = &G->s;
    const size_t B = (size_t)s->n_batch, H = (size_t)hp->n_embd;
    size_t Q = 0, KV = 0, F = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const gemma4_layer *l = &G->layers[il];
        if ((size_t)l->n_head * l->head_dim > Q) Q = (size_t)l->n_head * l->head_dim;
        if ((size_t)l->n_head_kv * l->head_dim > KV) KV = (size_t)l->n_head_kv * l->head_dim;
        if ((size_t)l->n_ff > F) F = (size_t)l->n_ff;
    }
    const size_t LP = (size_t)hp->n_layer * hp->n_embd_per_layer, P = (size_t)hp->n_embd_per_layer;
    const size_t E = (size_t)hp->n_expert, K = (size_t)hp->n_expert_used, I = (size_t)hp->n_ff_exp;
    size_t max_cols = H > Q ? H : Q;
    if (F > max_cols) max_cols = F;
    if (P > max_cols) max_cols = P;
    if (I > max_cols) max_cols = I;
    const size_t sizes[] = {
        B * H, B * H, B * H, B * Q, B * Q, B * KV, B * KV, B * F, B * F,
        B * (size_t)hp->n_rot, B * (size_t)hp->n_rot_swa, B * LP, LP, B * P,
        B * E, B * K, B * K, B, B, B * H, B * H, B * H, B * 2 * I,
        (size_t)g4_matmul_scratch((int64_t)max_cols, (int)B) / sizeof(float) + 16,
    };
    const size_t n_sizes = sizeof sizes / sizeof sizes[0];
    size_t total = 0;
    for (size_t i = 0; i < n_sizes; i++) total += (sizes[i] * sizeof(float) + 63) / 64 * 64;
    if (!(s->base = aligned_alloc(64, total)))
        return g4_err_set(err, G4_ERR_NOMEM, "gemma4: cannot allocate %zu bytes of scratch", total);
    memset(s->base, 0, total);
    char *p = s->base;
    float **dst[] = {
        &s->x, &s->xb, &s->xb2, &s->q, &s->ao, &s->kb, &s->vb, &s->hb, &s->hb2,
        &s->cs, &s->cs_swa, &s->ple, &s->pe, &s->pg,
        &s->rl, (float **)&s->eidx, &s->ew, (float **)&s->etok, &s->ew1, &s->ex, &s->eo, &s->y2, &s->eh,
        (float **)&s->xq,
    };
    for (size_t i = 0; i < n_sizes; i++) *dst[i] = carve(&p, sizes[i]);
    s->bytes = total;
    return G4_OK;
}

/* ------------------------------------------------------------- load/free */

static void gemma4_free(g4_model *m) {
    gemma4 *G = m->impl;
    if (!G) return;
    free(G->layers);
    free(G->s.base);
    free(G);
    m->impl = NULL;
}

static g4_status gemma4_load(g4_model *m, g4_err *err) {
    gemma4 *G = calloc(1, sizeof *G);
    if (!G) return g4_err_set(err, G4_ERR_NOMEM, "gemma4: out of memory");
    m->impl = G;
    g4_status st;
    if ((st = read_hparams(m, G, err)) != G4_OK) return st;
    if (!(G->layers = calloc((size_t)G->hp.n_layer, sizeof *G->layers)))
        return g4_err_set(err, G4_ERR_NOMEM, "gemma4: out of memory");
    if ((st = read_layer_structure(m, G, err)) != G4_OK) return st;
    if ((st = load_globals(m, G, err)) != G4_OK) return st;
    for (int il = 0; il < G->hp.n_layer; il++)
        if ((st = load_layer(m, G, il, err)) != G4_OK) return st;
    m->n_vocab = G->hp.n_vocab;
    m->n_ctx_train = G->hp.n_ctx_train;
    if ((st = g4_model_resolve_ctx(m, err)) != G4_OK) return st;
    if ((st = g4_rope_init(&G->rope, G->hp.n_rot, G4_ROPE_NEOX, G->hp.rope_base, 1.0f, G->rope_freqs, err))) return st;
    if ((st = g4_rope_init(&G->rope_swa, G->hp.n_rot_swa, G4_ROPE_NEOX, G->hp.rope_base_swa, 1.0f, NULL, err)))
        return st;
    G->s.n_batch = m->n_ctx < GEMMA4_BATCH ? m->n_ctx : GEMMA4_BATCH;
    return build_scratch(m, G, err);
}

static g4_model_memory gemma4_memory(const g4_model *m) {
    const gemma4 *G = m->impl;
    g4_model_memory mem = { g4_model_weights_bytes(m), 0, G->s.bytes };
    return mem;
}

static int gemma4_kv_layers(const g4_model *m, g4_kv_layer *out) {
    const gemma4 *G = m->impl;
    for (int il = 0; out && il < G->hp.n_layer; il++) {
        const gemma4_layer *l = &G->layers[il];
        if (!l->has_kv) continue;
        const int dim = l->n_head_kv * l->head_dim;
        out[l->kv_slot] = (g4_kv_layer){ dim, dim, l->is_swa ? G->hp.window : 0 };
    }
    return G->n_kv_layers;
}

/* ---------------------------------------------------------------- forward */

/* Per-layer inputs of n tokens (E2B/E4B): project the scaled embedding, RMSNorm
 * each layer's slice, add the token's own per-layer embedding (HF
 * get_per_layer_inputs + project_per_layer_inputs). */
static void per_layer_inputs(g4_model *m, gemma4 *G, const int32_t *tok, int n) {
    const gemma4_hparams *hp = &G->hp;
    gemma4_scratch *s = &G->s;
    const int64_t H = hp->n_embd, P = hp->n_embd_per_layer, LP = (int64_t)hp->n_layer * P;
    const float sp = sqrtf((float)P), sh = 1.0f / sqrtf((float)H), s2 = 1.0f / sqrtf(2.0f);
    g4_matmul(m->pool, G->per_layer_model_proj, s->x, H, s->ple, LP, n, s->xq);
    for (int t = 0; t < n; t++) {
        float *pt = s->ple + t * LP;
        g4_get_row(G->per_layer_token_embd, tok[t], s->pe);
        for (int il = 0; il < hp->n_layer; il++) {
            float *sl = pt + il * P;
            g4_scale(sl, P, sh);
            g4_rmsnorm(sl, sl, G->per_layer_proj_norm, P, hp->eps);
            for (int64_t i = 0; i < P; i++) sl[i] = (sl[i] + s->pe[il * P + i] * sp) * s2;
        }
    }
}

static void attention_block(g4_model *m, gemma4 *G, g4_kvcache *kv, int il, int n, const int32_t *seq,
                            const int32_t *pos) {
    const gemma4_hparams *hp = &G->hp;
    const gemma4_layer *l = &G->layers[il];
    gemma4_scratch *s = &G->s;
    const int64_t H = hp->n_embd, hd = l->head_dim;
    const int64_t Q = (int64_t)l->n_head * hd, KV = (int64_t)l->n_head_kv * hd;
    const g4_rope *rope = l->is_swa ? &G->rope_swa : &G->rope;
    const float *cs = l->is_swa ? s->cs_swa : s->cs;
    const int n_rot = rope->n_rot;

    for (int t = 0; t < n; t++) g4_rmsnorm(s->xb + t * H, s->x + t * H, l->attn_norm, H, hp->eps);
    /* q, k, v read the same input: one quantization of it, one pool job */
    const g4_mm qkv[3] = { { l->wq, s->q, Q }, { l->wk, s->kb, KV }, { l->wv, s->vb, KV } };
    g4_matmul_n(m->pool, qkv, !l->has_kv ? 1 : l->wv ? 3 : 2, s->xb, H, n, s->xq);
    for (int t = 0; t < n; t++) {
        g4_rmsnorm_heads(s->q + t * Q, l->n_head, (int)hd, l->attn_q_norm, hp->eps);
        g4_rope_apply(rope, cs + t * n_rot, s->q + t * Q, l->n_head, (int)hd);
    }
    if (l->has_kv) {
        if (!l->wv) memcpy(s->vb, s->kb, sizeof(float) * (size_t)(n * KV));   /* V = raw K projection */
        for (int t = 0; t < n; t++) {
            g4_rmsnorm_heads(s->kb + t * KV, l->n_head_kv, (int)hd, l->attn_k_norm, hp->eps);
            g4_rope_apply(rope, cs + t * n_rot, s->kb + t * KV, l->n_head_kv, (int)hd);
            g4_rmsnorm_heads(s->vb + t * KV, l->n_head_kv, (int)hd, NULL, hp->eps);
        }
        g4_kvc_store(kv, l->kv_slot, n, seq, pos, s->kb, KV, s->vb, KV);
    }
    g4_kvc_attention(m->pool, kv, l->kv_slot, &l->attn, n, seq, pos, s->q, Q, s->ao, Q);
    g4_matmul(m->pool, l->wo, s->ao, Q, s->xb, H, n, s->xq);
    for (int t = 0; t < n; t++) {
        g4_rmsnorm(s->xb + t * H, s->xb + t * H, l->post_attention_norm, H, hp->eps);
        g4_add(s->x + t * H, s->xb + t * H, H);
    }
}

/* The routed experts of a MoE layer: xe [n][H] (already normed) -> y2 [n][H].
 * Tokens are grouped by expert so each expert's weights are read once per
 * chunk (llama.cpp's mul_mat_id does the same). */
static void experts(g4_model *m, gemma4 *G, const gemma4_layer *l, int n) {
    const gemma4_hparams *hp = &G->hp;
    gemma4_scratch *s = &G->s;
    const int64_t H = hp->n_embd, I = hp->n_ff_exp, K = hp->n_expert_used;
    memset(s->y2, 0, sizeof(float) * (size_t)(n * H));
    for (int e = 0; e < hp->n_expert; e++) {
        int cnt = 0;
        for (int t = 0; t < n; t++)
            for (int k = 0; k < K; k++)
                if (s->eidx[t * K + k] == e) {
                    s->etok[cnt] = t;
                    s->ew1[cnt] = s->ew[t * K + k];
                    memcpy(s->ex + cnt * H, s->xb + t * H, sizeof(float) * (size_t)H);
                    cnt++;
                }
        if (!cnt) continue;
        if (l->gate_up_exps) {
            const g4_tensor gu = g4_expert_view(l->gate_up_exps, e);
            g4_matmul(m->pool, &gu, s->ex, H, s->eh, 2 * I, cnt, s->xq);
        } else {
            const g4_tensor g = g4_expert_view(l->gate_exps, e), u = g4_expert_view(l->up_exps, e);
            const g4_mm gu2[2] = { { &g, s->eh, 2 * I }, { &u, s->eh + I, 2 * I } };
            g4_matmul_n(m->pool, gu2, 2, s->ex, H, cnt, s->xq);
        }
        for (int c = 0; c < cnt; c++) g4_geglu_vec(s->eh + c * 2 * I, s->eh + c * 2 * I, s->eh + c * 2 * I + I, I);
        const g4_tensor d = g4_expert_view(l->down_exps, e);
        g4_matmul(m->pool, &d, s->eh, 2 * I, s->eo, H, cnt, s->xq);
        for (int c = 0; c < cnt; c++) {
            float *y = s->y2 + (int64_t)s->etok[c] * H;
            const float *o = s->eo + c * H, w = s->ew1[c];
            for (int64_t i = 0; i < H; i++) y[i] += w * o[i];
        }
    }
}

static void ffn_block(g4_model *m, gemma4 *G, int il, int n) {
    const gemma4_hparams *hp = &G->hp;
    const gemma4_layer *l = &G->layers[il];
    gemma4_scratch *s = &G->s;
    const int64_t H = hp->n_embd, F = l->n_ff;

    /* dense MLP (GeGLU, GELU tanh approximation), on rms(h) * ffn_norm */
    for (int t = 0; t < n; t++) g4_rmsnorm(s->xb + t * H, s->x + t * H, l->ffn_norm, H, hp->eps);
    const g4_mm gate_up[2] = { { l->ffn_gate, s->hb, F }, { l->ffn_up, s->hb2, F } };
    g4_matmul_n(m->pool, gate_up, 2, s->xb, H, n, s->xq);
    g4_geglu_vec(s->hb, s->hb, s->hb2, n * F);
    g4_matmul(m->pool, l->ffn_down, s->hb, F, s->xb2, H, n, s->xq);

    if (l->ffn_gate_inp) {
        const int64_t E = hp->n_expert, K = hp->n_expert_used;
        const float sh = 1.0f / sqrtf((float)H);
        for (int t = 0; t < n; t++) {
            g4_rmsnorm(s->xb2 + t * H, s->xb2 + t * H, l->post_ffw_norm_1, H, hp->eps);
            /* router input: the residual, RMS-normed without weight, times its own scale */
            float *r = s->xb + t * H;
            g4_rmsnorm(r, s->x + t * H, l->ffn_gate_inp_scale, H, hp->eps);
            g4_scale(r, H, sh);
        }
        g4_matmul(m->pool, l->ffn_gate_inp, s->xb, H, s->rl, E, n, s->xq);
        for (int t = 0; t < n; t++) {
            g4_moe_route(s->rl + t * E, (int)E, (int)K, l->down_exps_scale, s->eidx + t * K, s->ew + t * K);
            g4_rmsnorm(s->xb + t * H, s->x + t * H, l->pre_ffw_norm_2, H, hp->eps);
        }
        experts(m, G, l, n);
        for (int t = 0; t < n; t++) {
            g4_rmsnorm(s->y2 + t * H, s->y2 + t * H, l->post_ffw_norm_2, H, hp->eps);
            g4_add(s->xb2 + t * H, s->y2 + t * H, H);
        }
    }
    for (int t = 0; t < n; t++) {
        g4_rmsnorm(s->xb2 + t * H, s->xb2 + t * H, l->post_ffw_norm, H, hp->eps);
        g4_add(s->x + t * H, s->xb2 + t * H, H);
    }
}

/* Per-layer input gate (E2B/E4B), after the FFN residual. */
static void ple_block(g4_model *m, gemma4 *G, int il, int n) {
    const gemma4_hparams *hp = &G->hp;
    const gemma4_layer *l = &G->layers[il];
    gemma4_scratch *s = &G->s;
    const int64_t H = hp->n_embd, P = hp->n_embd_per_layer, LP = (int64_t)hp->n_layer * P;
    g4_matmul(m->pool, l->inp_gate, s->x, H, s->pg, P, n, s->xq);
    for (int t = 0; t < n; t++) g4_geglu_vec(s->pg + t * P, s->pg + t * P, s->ple + t * LP + il * P, P);
    g4_matmul(m->pool, l->proj, s->pg, P, s->xb, H, n, s->xq);
    for (int t = 0; t < n; t++) {
        g4_rmsnorm(s->xb + t * H, s->xb + t * H, l->post_norm, H, hp->eps);
        g4_add(s->x + t * H, s->xb + t * H, H);
    }
}

/* Keep only the tokens keep[0..k) of the chunk, in rows 0..k-1 of every
 * per-token buffer (keep[] ascending, so rows only move down). */
static void keep_tokens(gemma4 *G, const int *keep, int k) {
    const gemma4_hparams *hp = &G->hp;
    gemma4_scratch *s = &G->s;
    const int64_t H = hp->n_embd, LP = (int64_t)hp->n_layer * hp->n_embd_per_layer;
    for (int r = 0; r < k; r++) {
        const int t = keep[r];
        if (t == r) continue;
        memmove(s->x + r * H, s->x + t * H, sizeof(float) * (size_t)H);
        if (LP) memmove(s->ple + r * LP, s->ple + t * LP, sizeof(float) * (size_t)LP);
        memmove(s->cs + r * hp->n_rot, s->cs + t * hp->n_rot, sizeof(float) * (size_t)hp->n_rot);
        memmove(s->cs_swa + r * hp->n_rot_swa, s->cs_swa + t * hp->n_rot_swa, sizeof(float) * (size_t)hp->n_rot_swa);
    }
}

/* Tokens b->token[t0..t0+n) (n <= n_batch); logits of the flagged ones to
 * logits (one row each, in order), and their final-normed hidden states
 * (the lm_head input, [rows][H]) to hidden when not NULL. Returns the rows
 * written. */
static int forward_chunk(g4_model *m, gemma4 *G, g4_kvcache *kv, const g4_batch *b, int t0, int n, float *logits,
                         float *hidden) {
    const gemma4_hparams *hp = &G->hp;
    gemma4_scratch *s = &G->s;
    const int64_t H = hp->n_embd, V = hp->n_vocab;
    const int first_shared = hp->n_layer - hp->n_kv_shared;
    const float emb_scale = sqrtf((float)H);
    const int32_t *tok = b->token + t0;
    int32_t seq[GEMMA4_BATCH], pos[GEMMA4_BATCH];
    int keep[GEMMA4_BATCH], n_want = 0;
    for (int t = 0; t < n; t++) {
        seq[t] = b->seq[t0 + t];
        pos[t] = b->pos[t0 + t];
        if (b->logits[t0 + t]) keep[n_want++] = t;
    }

    for (int t = 0; t < n; t++) {
        g4_get_row(G->token_embd, tok[t], s->x + t * H);
        g4_scale(s->x + t * H, H, emb_scale);
        g4_rope_cache(&G->rope, pos[t], s->cs + t * hp->n_rot);
        g4_rope_cache(&G->rope_swa, pos[t], s->cs_swa + t * hp->n_rot_swa);
    }
    if (hp->n_embd_per_layer > 0) per_layer_inputs(m, G, tok, n);

    for (int il = 0; il < hp->n_layer; il++) {
        const gemma4_layer *l = &G->layers[il];
        /* From here on no layer writes KV: only tokens whose logits are wanted matter. */
        if (il == first_shared && n_want < n) {
            if (!n_want) return 0;
            keep_tokens(G, keep, n_want);
            for (int r = 0; r < n_want; r++) { seq[r] = seq[keep[r]]; pos[r] = pos[keep[r]]; keep[r] = r; }
            n = n_want;
        }
        attention_block(m, G, kv, il, n, seq, pos);
        ffn_block(m, G, il, n);
        if (hp->n_embd_per_layer > 0) ple_block(m, G, il, n);
        if (l->out_scale != 1.0f) g4_scale(s->x, n * H, l->out_scale);
    }

    if (!n_want) return 0;
    for (int r = 0; r < n_want; r++)
        g4_rmsnorm(s->xb + r * H, s->x + keep[r] * H, G->output_norm, H, hp->eps);
    /* transformers' hidden_states[-1] (capture_outputs ties it to the normed
     * last_hidden_state) and llama.cpp's h_nextn: the MTP assistant's input */
    if (hidden) memcpy(hidden, s->xb, sizeof(float) * (size_t)(n_want * H));
    g4_matmul(m->pool, G->output, s->xb, H, logits, V, n_want, s->xq);
    g4_softcap(logits, n_want * V, hp->softcap);
    return n_want;
}

static g4_status gemma4_forward(g4_model *m, const g4_batch *b, g4_kvcache *kv, float *logits, g4_err *err) {
    gemma4 *G = m->impl;
    const int B = G->s.n_batch;
    size_t rows = 0;
    for (int32_t c = 0; c < b->n; c += B) {
        const int nb = b->n - c < B ? b->n - c : B;
        rows += (size_t)forward_chunk(m, G, kv, b, c, nb, logits ? logits + rows * (size_t)G->hp.n_vocab : NULL,
                                      m->hidden_out ? m->hidden_out + rows * (size_t)G->hp.n_embd : NULL);
    }
    return G4_OK;
}

g4_status g4_gemma4_mtp_source(const g4_model *m, g4_mtp_source *out, g4_err *err) {
    if (m->arch != &g4_arch_gemma4)
        return g4_err_set(err, G4_ERR_UNSUPPORTED, "MTP assistant: the target must be a gemma4 model, not %s",
                          m->arch->name);
    const gemma4 *G = m->impl;
    memset(out, 0, sizeof *out);
    out->token_embd = G->token_embd;
    out->n_embd = G->hp.n_embd;
    out->n_vocab = G->hp.n_vocab;
    out->window = G->hp.window;
    out->kv_slot[0] = out->kv_slot[1] = -1;
    for (int il = 0; il < G->hp.n_layer; il++) {
        const gemma4_layer *l = &G->layers[il];
        if (!l->has_kv) continue;
        out->kv_slot[l->is_swa] = l->kv_slot;
        out->n_head_kv[l->is_swa] = l->n_head_kv;
        out->head_dim[l->is_swa] = l->head_dim;
    }
    return G4_OK;
}

const g4_arch g4_arch_gemma4 = {
    .name = "gemma4",
    .load = gemma4_load,
    .free = gemma4_free,
    .forward = gemma4_forward,
    .memory = gemma4_memory,
    .kv_layers = gemma4_kv_layers,
};
