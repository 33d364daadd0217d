/* gemma3.c - the `gemma3` architecture (Gemma 3 text decoders), as llama.cpp
 * reads and runs it (src/models/gemma3.cpp, conversion/gemma.py) and HF
 * transformers computes it (models/gemma3/modeling_gemma3.py).
 *
 *   h = token_embd[tok] * sqrt(H)
 *   per layer:  x = rms(h) * attn_norm
 *               q = rope(rms_head(attn_q x) * attn_q_norm) * scale
 *               k = rope(rms_head(attn_k x) * attn_k_norm);  v = attn_v x  (no v norm)
 *               h += rms(attn_output softmax(q k^T + mask) v) * post_attention_norm
 *               h += rms(ffn_down (gelu(ffn_gate y) * ffn_up y)) * post_ffw_norm,
 *                    y = rms(h) * ffn_norm
 *   logits = token_embd (rms(h) * output_norm)   (softcapped only if the file says so)
 *
 * HF's Gemma3RMSNorm multiplies by (1 + w); llama.cpp's converter stores
 * w + 1 in every *norm.weight, so here norms multiply by the stored value as
 * for every other architecture.
 * Not stored in GGUF, fixed as llama.cpp fixes them: layer il is global when
 * il % 6 == 5 (set_swa_pattern(6); all layers global without a sliding
 * window); sliding layers use RoPE base 10000 unscaled; the query scale
 * (HF query_pre_attn_scalar^-0.5) is 1/sqrt(key_length), except the 27B
 * (62 layers) where it is 1/sqrt(H / n_head).
 * KV cache: the engine's paged cache (engine/kvcache.h), whose sliding-window
 * layers return blocks that left the window as a sequence advances.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "ops.h"
#include "ops_gemma.h"

#define GEMMA3_BATCH 64
#define GEMMA3_SWA_PERIOD 6

/* ---------------------------------------------------------------- structs */

typedef struct gemma3_hparams {
    int32_t n_vocab, n_ctx_train;
    int32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot, window;
    float eps, rope_base, rope_scale, softcap, attn_scale;
} gemma3_hparams;

typedef struct gemma3_layer {
    int is_swa;
    const float *attn_norm, *attn_q_norm, *attn_k_norm, *post_attention_norm;
    const float *ffn_norm, *post_ffw_norm;
    const g4_tensor *wq, *wk, *wv, *wo;
    const g4_tensor *ffn_gate, *ffn_up, *ffn_down;
    g4_attn attn;
} gemma3_layer;

typedef struct gemma3_scratch {
    int n_batch;
    float *x, *xb;           /* [B][H] */
    float *q, *ao;           /* [B][n_head * head_dim] */
    float *kb, *vb;          /* [B][n_head_kv * head_dim] */
    float *hb, *hb2;         /* [B][n_ff] */
    float *cs, *cs_swa;      /* [B][n_rot] */
    void *xq;
    void *base;
    size_t bytes;
} gemma3_scratch;

typedef struct gemma3 {
    gemma3_hparams hp;
    const g4_tensor *token_embd, *output;
    const float *output_norm;
    gemma3_layer *layers;
    g4_rope rope, rope_swa;
    gemma3_scratch s;
} gemma3;

/* ---------------------------------------------------------- hyperparameters */

static g4_status read_hparams(g4_model *m, gemma3_hparams *hp, g4_err *err) {
    uint32_t u;
    g4_status st;
#define U32(key, field) do { if ((st = g4_hp_u32(m, key, &u, err)) != G4_OK) return st; hp->field = (int32_t)u; } while (0)
    U32("context_length", n_ctx_train);
    U32("embedding_length", n_embd);
    U32("block_count", n_layer);
    U32("feed_forward_length", n_ff);
    U32("attention.head_count", n_head);
#undef U32
    if ((st = g4_hp_u32_or(m, "attention.head_count_kv", (uint32_t)hp->n_head, &u, err)) != G4_OK) return st;
    hp->n_head_kv = (int32_t)u;
    if ((st = g4_hp_u32_or(m, "attention.sliding_window", 0, &u, err)) != G4_OK) return st;
    hp->window = (int32_t)u;
    if ((st = g4_hp_f32(m, "attention.layer_norm_rms_epsilon", &hp->eps, err)) != G4_OK) return st;
    if ((st = g4_hp_f32_or(m, "rope.freq_base", 10000.0f, &hp->rope_base, err)) != G4_OK) return st;
    if ((st = g4_hp_f32_or(m, "final_logit_softcapping", 0.0f, &hp->softcap, err)) != G4_OK) return st;
    /* RoPE scaling of the global layers: none or linear (4B/12B/27B: factor 8) */
    char key[96];
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch->name);
    if (g4_gguf_find(m->gguf, key)) {
        g4_str type;
        if ((st = g4_gguf_get_str(m->gguf, key, &type, err)) != G4_OK) return st;
        if (!g4_str_eq(type, "none") && !g4_str_eq(type, "linear"))
            return g4_err_set(err, G4_ERR_UNSUPPORTED, "gemma3: rope.scaling.type '%.*s' is not supported "
                              "(only none and linear)", (int)(type.len > 32 ? 32 : type.len), type.ptr);
    }
    float factor;
    if ((st = g4_hp_f32_or(m, "rope.scaling.factor", 1.0f, &factor, err)) != G4_OK) return st;
    hp->rope_scale = factor > 0.0f ? 1.0f / factor : 1.0f;

    if (hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_head <= 0 || hp->n_ff <= 0)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma3: embedding_length, block_count, head_count and "
                          "feed_forward_length must be positive");
    if (hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma3: attention.head_count %d is not a multiple of "
                          "attention.head_count_kv %d", hp->n_head, hp->n_head_kv);
    const uint32_t dflt_hd = hp->n_embd % hp->n_head ? 0 : (uint32_t)(hp->n_embd / hp->n_head);
    uint32_t hd_k, hd_v;
    if ((st = g4_hp_u32_or(m, "attention.key_length", dflt_hd, &hd_k, err)) != G4_OK) return st;
    if ((st = g4_hp_u32_or(m, "attention.value_length", hd_k, &hd_v, err)) != G4_OK) return st;
    if (hd_k == 0)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma3: missing key 'gemma3.attention.key_length'");
    if (hd_v != hd_k)
        return g4_err_set(err, G4_ERR_UNSUPPORTED, "gemma3: attention.key_length %u != value_length %u "
                          "is not supported", hd_k, hd_v);
    hp->head_dim = (int32_t)hd_k;
    if ((st = g4_hp_u32_or(m, "rope.dimension_count", (uint32_t)hp->head_dim, &u, err)) != G4_OK) return st;
    hp->n_rot = (int32_t)u;
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma3: rope.dimension_count %d must be even and at most "
                          "the head size %d", hp->n_rot, hp->head_dim);
    /* llama.cpp: f_attention_scale, 27B (LLM_TYPE_27B, 62 layers) uses H / n_head */
    hp->attn_scale = hp->n_layer == 62 ? 1.0f / sqrtf((float)hp->n_embd / (float)hp->n_head)
                                       : 1.0f / sqrtf((float)hp->head_dim);
    return G4_OK;
}

/* ---------------------------------------------------------------- weights */

static g4_status load_weights(g4_model *m, gemma3 *G3, g4_err *err) {
    gemma3_hparams *hp = &G3->hp;
    const int64_t H = hp->n_embd, F = hp->n_ff;
    const int64_t Q = (int64_t)hp->n_head * hp->head_dim, KV = (int64_t)hp->n_head_kv * hp->head_dim;
    g4_status st;
    const g4_tensor *te = g4_gguf_find_tensor(m->gguf, "token_embd.weight");
    hp->n_vocab = te ? (int32_t)te->ne[1] : 0;
    if ((st = g4_model_tensor(m, "token_embd.weight", H, hp->n_vocab, 0, &G3->token_embd, err))) return st;
    if ((st = g4_model_vec(m, "output_norm.weight", H, 0, &G3->output_norm, err))) return st;
    if ((st = g4_model_tensor(m, "output.weight", H, hp->n_vocab, 1, &G3->output, err))) return st;
    if (!G3->output) G3->output = G3->token_embd;

    G3->layers = calloc((size_t)hp->n_layer, sizeof *G3->layers);
    if (!G3->layers) return g4_err_set(err, G4_ERR_NOMEM, "gemma3: out of memory");
    for (int il = 0; il < hp->n_layer; il++) {
        gemma3_layer *l = &G3->layers[il];
        l->is_swa = hp->window > 0 && il % GEMMA3_SWA_PERIOD != GEMMA3_SWA_PERIOD - 1;
        if ((st = g4_model_blk_vec(m, il, "attn_norm.weight", H, 0, &l->attn_norm, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_q.weight", H, Q, 0, &l->wq, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_k.weight", H, KV, 0, &l->wk, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_v.weight", H, KV, 0, &l->wv, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_output.weight", Q, H, 0, &l->wo, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "attn_q_norm.weight", hp->head_dim, 0, &l->attn_q_norm, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "attn_k_norm.weight", hp->head_dim, 0, &l->attn_k_norm, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "post_attention_norm.weight", H, 0, &l->post_attention_norm, err)))
            return st;
        if ((st = g4_model_blk_vec(m, il, "ffn_norm.weight", H, 0, &l->ffn_norm, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_gate.weight", H, F, 0, &l->ffn_gate, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_up.weight", H, F, 0, &l->ffn_up, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_down.weight", F, H, 0, &l->ffn_down, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "post_ffw_norm.weight", H, 0, &l->post_ffw_norm, err))) return st;
        l->attn = (g4_attn){
            .n_head = hp->n_head, .n_head_kv = hp->n_head_kv,
            .head_dim_k = hp->head_dim, .head_dim_v = hp->head_dim,
            .scale = hp->attn_scale, .softcap = 0.0f, .window = l->is_swa ? hp->window : 0,
        };
    }
    return G4_OK;
}

/* ------------------------------------------------------- KV cache, scratch */

static float *carve(char **p, size_t n_floats) {
    float *r = (float *)*p;
    *p += (n_floats * sizeof(float) + 63) / 64 * 64;
    return r;
}

static g4_status build_scratch(g4_model *m, gemma3 *G3, g4_err *err) {
    const gemma3_hparams *hp = &G3->hp;
    gemma3_scratch *s = &G3->s;
    const size_t B = (size_t)s->n_batch, H = (size_t)hp->n_embd, F = (size_t)hp->n_ff;
    const size_t Q = (size_t)hp->n_head * hp->head_dim, KV = (size_t)hp->n_head_kv * hp->head_dim;
    size_t max_cols = H > Q ? H : Q;
    if (F > max_cols) max_cols = F;
    const size_t sizes[] = {
        B * H, B * H, B * Q, B * Q, B * KV, B * KV, B * F, B * F,
        B * (size_t)hp->n_rot, B * (size_t)hp->n_rot,
        (size_t)g4_matmul_scratch((int64_t)max_cols, (int)B) / sizeof(float) + 16,
    };
    const size_t n_sizes = sizeof sizes / sizeof sizes[0];
    size_t total = 0;
    for (size_t i = 0; i < n_sizes; i++) total += (sizes[i] * sizeof(float) + 63) / 64 * 64;
    if (!(s->base = aligned_alloc(64, total)))
        return g4_err_set(err, G4_ERR_NOMEM, "gemma3: cannot allocate %zu bytes of scratch", total);
    memset(s->base, 0, total);
    char *p = s->base;
    float **dst[] = { &s->x, &s->xb, &s->q, &s->ao, &s->kb, &s->vb, &s->hb, &s->hb2,
                      &s->cs, &s->cs_swa, (float **)&s->xq };
    for (size_t i = 0; i < n_sizes; i++) *dst[i] = carve(&p, sizes[i]);
    s->bytes = total;
    return G4_OK;
}

/* ------------------------------------------------------------- load/free */

static void gemma3_free(g4_model *m) {
    gemma3 *G3 = m->impl;
    if (!G3) return;
    free(G3->layers);
    free(G3->s.base);
    free(G3);
    m->impl = NULL;
}

static g4_status gemma3_load(g4_model *m, g4_err *err) {
    gemma3 *G3 = calloc(1, sizeof *G3);
    if (!G3) return g4_err_set(err, G4_ERR_NOMEM, "gemma3: out of memory");
    m->impl = G3;
    g4_status st;
    if ((st = read_hparams(m, &G3->hp, err)) != G4_OK) return st;
    if ((st = load_weights(m, G3, err)) != G4_OK) return st;
    m->n_vocab = G3->hp.n_vocab;
    m->n_ctx_train = G3->hp.n_ctx_train;
    if ((st = g4_model_resolve_ctx(m, err)) != G4_OK) return st;
    if ((st = g4_rope_init(&G3->rope, G3->hp.n_rot, G4_ROPE_NEOX, G3->hp.rope_base, G3->hp.rope_scale, NULL, err)))
        return st;
    /* llama.cpp: rope_freq_base_train_swa = 10000, rope_freq_scale_train_swa = 1 */
    if ((st = g4_rope_init(&G3->rope_swa, G3->hp.n_rot, G4_ROPE_NEOX, 10000.0f, 1.0f, NULL, err))) return st;
    G3->s.n_batch = m->n_ctx < GEMMA3_BATCH ? m->n_ctx : GEMMA3_BATCH;
    return build_scratch(m, G3, err);
}

static g4_model_memory gemma3_memory(const g4_model *m) {
    const gemma3 *G3 = m->impl;
    g4_model_memory mem = { g4_model_weights_bytes(m), 0, G3->s.bytes };
    return mem;
}

static int gemma3_kv_layers(const g4_model *m, g4_kv_layer *out) {
    const gemma3 *G3 = m->impl;
    const int dim = G3->hp.n_head_kv * G3->hp.head_dim;
    for (int il = 0; out && il < G3->hp.n_layer; il++)
        out[il] = (g4_kv_layer){ dim, dim, G3->layers[il].is_swa ? G3->hp.window : 0 };
    return G3->hp.n_layer;
}

/* ---------------------------------------------------------------- forward */

/* Tokens b->token[t0..t0+n) (n <= n_batch); logits of the flagged ones to
 * logits (one row each, in order). Returns the rows written. */
static int forward_chunk(g4_model *m, gemma3 *G3, g4_kvcache *kv, const g4_batch *b, int t0, int n, float *logits) {
    const gemma3_hparams *hp = &G3->hp;
    gemma3_scratch *s = &G3->s;
    const int64_t H = hp->n_embd, F = hp->n_ff, V = hp->n_vocab, hd = hp->head_dim, R = hp->n_rot;
    const int64_t Q = (int64_t)hp->n_head * hd, KV = (int64_t)hp->n_head_kv * hd;
    const float emb_scale = sqrtf((float)H);
    const int32_t *tok = b->token + t0, *pos = b->pos + t0, *seq = b->seq + t0;
    const int8_t *want = b->logits + t0;

    for (int t = 0; t < n; t++) {
        g4_get_row(G3->token_embd, tok[t], s->x + t * H);
        g4_scale(s->x + t * H, H, emb_scale);
        g4_rope_cache(&G3->rope, pos[t], s->cs + t * R);
        g4_rope_cache(&G3->rope_swa, pos[t], s->cs_swa + t * R);
    }

    for (int il = 0; il < hp->n_layer; il++) {
        const gemma3_layer *l = &G3->layers[il];
        const g4_rope *rope = l->is_swa ? &G3->rope_swa : &G3->rope;
        const float *cs = l->is_swa ? s->cs_swa : s->cs;

        /* attention */
        for (int t = 0; t < n; t++) g4_rmsnorm(s->xb + t * H, s->x + t * H, l->attn_norm, H, hp->eps);
        const g4_mm qkv[3] = { { l->wq, s->q, Q }, { l->wk, s->kb, KV }, { l->wv, s->vb, KV } };
        g4_matmul_n(m->pool, qkv, 3, s->xb, H, n, s->xq);
        for (int t = 0; t < n; t++) {
            g4_rmsnorm_heads(s->q + t * Q, hp->n_head, (int)hd, l->attn_q_norm, hp->eps);
            g4_rope_apply(rope, cs + t * R, s->q + t * Q, hp->n_head, (int)hd);
            g4_rmsnorm_heads(s->kb + t * KV, hp->n_head_kv, (int)hd, l->attn_k_norm, hp->eps);
            g4_rope_apply(rope, cs + t * R, s->kb + t * KV, hp->n_head_kv, (int)hd);
        }
        g4_kvc_store(kv, il, n, seq, pos, s->kb, KV, s->vb, KV);
        g4_kvc_attention(m->pool, kv, il, &l->attn, n, seq, pos, s->q, Q, s->ao, Q);
        g4_matmul(m->pool, l->wo, s->ao, Q, s->xb, H, n, s->xq);
        for (int t = 0; t < n; t++) {
            g4_rmsnorm(s->xb + t * H, s->xb + t * H, l->post_attention_norm, H, hp->eps);
            g4_add(s->x + t * H, s->xb + t * H, H);
        }

        /* feed-forward (GeGLU) */
        for (int t = 0; t < n; t++) g4_rmsnorm(s->xb + t * H, s->x + t * H, l->ffn_norm, H, hp->eps);
        const g4_mm gate_up[2] = { { l->ffn_gate, s->hb, F }, { l->ffn_up, s->hb2, F } };
        g4_matmul_n(m->pool, gate_up, 2, s->xb, H, n, s->xq);
        g4_geglu_vec(s->hb, s->hb, s->hb2, n * F);
        g4_matmul(m->pool, l->ffn_down, s->hb, F, s->xb, H, n, s->xq);
        for (int t = 0; t < n; t++) {
            g4_rmsnorm(s->xb + t * H, s->xb + t * H, l->post_ffw_norm, H, hp->eps);
            g4_add(s->x + t * H, s->xb + t * H, H);
        }
    }

    int rows = 0;
    for (int t = 0; t < n; t++)
        if (want[t]) g4_rmsnorm(s->xb + (rows++) * H, s->x + t * H, G3->output_norm, H, hp->eps);
    if (!rows) return 0;
    g4_matmul(m->pool, G3->output, s->xb, H, logits, V, rows, s->xq);
    g4_softcap(logits, rows * V, hp->softcap);
    return rows;
}

static g4_status gemma3_forward(g4_model *m, const g4_batch *b, g4_kvcache *kv, float *logits, g4_err *err) {
    gemma3 *G3 = m->impl;
    const int B = G3->s.n_batch;
    size_t rows = 0;
    for (int32_t c = 0; c < b->n; c += B) {
        const int nb = b->n - c < B ? b->n - c : B;
        rows += (size_t)forward_chunk(m, G3, kv, b, c, nb, logits ? logits + rows * (size_t)G3->hp.n_vocab : NULL);
    }
    return G4_OK;
}

const g4_arch g4_arch_gemma3 = {
    .name = "gemma3",
    .load = gemma3_load,
    .free = gemma3_free,
    .forward = gemma3_forward,
    .memory = gemma3_memory,
    .kv_layers = gemma3_kv_layers,
};
