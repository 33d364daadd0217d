/* llama.c - the `llama` architecture, as llama.cpp runs it
 * (src/llama-model.cpp, llm_build_llama; Touvron et al. 2023).
 *
 *   x = token_embd[token]
 *   per layer:  h = x + attn_output( attention( rope(attn_q(n)), rope(attn_k(n)), attn_v(n) ) ),
 *                   n = rmsnorm(x) * attn_norm
 *               x = h + ffn_down( silu(ffn_gate(m)) * ffn_up(m) ),  m = rmsnorm(h) * ffn_norm
 *   logits = output( rmsnorm(x) * output_norm )     (output tied to token_embd when absent)
 *
 * RoPE rotates adjacent pairs (llama.cpp rope type NORM). HF checkpoints use
 * rotate-half, but convert_hf_to_gguf.py permutes the rows of attn_q/attn_k
 * so that adjacent-pair rotation is exact for them too; llama2.c exports
 * (stories260K) were trained with adjacent pairs and need no permutation.
 * The KV cache is the engine's paged cache (engine/kvcache.h): F16 by
 * default as llama.cpp's (type_k = type_v = f16), F32 for a model whose K
 * projection is F32 (an unquantized reference model, so it reproduces float32
 * references to float rounding).
 * A batch (g4_batch: tokens of several sequences, each at its own position)
 * goes through every layer in chunks of up to LLAMA_BATCH tokens (llama.cpp's
 * default n_ubatch): each matmul is a matrix-matrix product whose kernels
 * read each weight block once per tile of tokens, so a prompt, or one decode
 * token of each of many sequences, costs about one pass over the weights.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "ops.h"
#include "../quant/quant.h"

#define LLAMA_BATCH 512

/* ---------------------------------------------------------------- structs */

typedef struct llama_hparams {
    int32_t n_vocab, n_ctx_train;
    int32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    float eps, rope_base, rope_scale;
} llama_hparams;

typedef struct llama_layer {
    const float *attn_norm, *ffn_norm;                  /* [n_embd] */
    const g4_tensor *wq, *wk, *wv, *wo;                 /* attn_q/k/v/output */
    const g4_tensor *ffn_gate, *ffn_up, *ffn_down;
} llama_layer;

typedef struct llama_scratch {
    int n_batch;
    float *x;        /* [n_batch][n_embd] residual stream */
    float *xb;       /* [n_batch][n_embd] normed input / matmul output */
    float *q;        /* [n_batch][n_head * head_dim] */
    float *xb2;      /* [n_batch][n_head * head_dim] attention output */
    float *kb, *vb;  /* [n_batch][n_head_kv * head_dim] new keys/values before conversion to F16 */
    float *hb, *hb2; /* [n_batch][n_ff] */
    float *cs;       /* [n_batch][n_rot] rope cos/sin per position */
    void *xq;        /* activations converted for the matmul kernels */
    void *base;      /* the one allocation the above are carved from */
    size_t bytes;
} llama_scratch;

typedef struct llama {
    llama_hparams hp;
    const g4_tensor *token_embd, *output;
    const float *output_norm;
    const float *rope_freqs;   /* optional rope_freqs.weight (Llama 3.1 scaling) */
    llama_layer *layers;
    g4_rope rope;
    g4_attn attn;
    llama_scratch s;
} llama;

/* ---------------------------------------------------------- hyperparameters */

static g4_status read_hparams(g4_model *m, llama_hparams *hp, g4_err *err) {
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
    if ((st = g4_hp_f32(m, "attention.layer_norm_rms_epsilon", &hp->eps, err)) != G4_OK) return st;
    if ((st = g4_hp_f32_or(m, "rope.freq_base", 10000.0f, &hp->rope_base, err)) != G4_OK) return st;
    /* Mixtral-style MoE files also say "llama" but carry expert tensors */
    if ((st = g4_hp_u32_or(m, "expert_count", 0, &u, err)) != G4_OK) return st;
    if (u > 0)
        return g4_err_set(err, G4_ERR_UNSUPPORTED, "llama: mixture-of-experts models (expert_count %u) "
                          "are not supported", u);
    /* RoPE scaling: none, or linear (positions divided by factor). Llama 3's
     * scaling comes as rope_freqs.weight instead. YaRN/LongRoPE are refused
     * rather than silently run as unscaled. */
    char key[96];
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch->name);
    if (g4_gguf_find(m->gguf, key)) {
        g4_str type;
        if ((st = g4_gguf_get_str(m->gguf, key, &type, err)) != G4_OK) return st;
        if (!g4_str_eq(type, "none") && !g4_str_eq(type, "linear"))
            return g4_err_set(err, G4_ERR_UNSUPPORTED, "llama: rope.scaling.type '%.*s' is not supported "
                              "(only none and linear)", (int)(type.len > 32 ? 32 : type.len), type.ptr);
    }
    float factor;
    if ((st = g4_hp_f32_or(m, "rope.scaling.factor", 1.0f, &factor, err)) != G4_OK) return st;
    hp->rope_scale = factor > 0.0f ? 1.0f / factor : 1.0f;

    if (hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_head <= 0 || hp->n_ff <= 0)
        return g4_err_set(err, G4_ERR_FORMAT, "llama: embedding_length, block_count, head_count and "
                          "feed_forward_length must be positive");
    if (hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv)
        return g4_err_set(err, G4_ERR_FORMAT, "llama: attention.head_count %d is not a multiple of "
                          "attention.head_count_kv %d", hp->n_head, hp->n_head_kv);
    /* head size: attention.key_length when given (llama.cpp n_embd_head_k),
     * else embedding_length / head_count */
    const uint32_t dflt_hd = hp->n_embd % hp->n_head ? 0 : (uint32_t)(hp->n_embd / hp->n_head);
    uint32_t hd_k, hd_v;
    if ((st = g4_hp_u32_or(m, "attention.key_length", dflt_hd, &hd_k, err)) != G4_OK) return st;
    if ((st = g4_hp_u32_or(m, "attention.value_length", hd_k, &hd_v, err)) != G4_OK) return st;
    if (hd_k == 0)
        return g4_err_set(err, G4_ERR_FORMAT, "llama: embedding_length %d is not a multiple of "
                          "attention.head_count %d", hp->n_embd, hp->n_head);
    if (hd_v != hd_k)
        return g4_err_set(err, G4_ERR_UNSUPPORTED, "llama: attention.key_length %u != value_length %u "
                          "is not supported", hd_k, hd_v);
    hp->head_dim = (int32_t)hd_k;
    if ((st = g4_hp_u32_or(m, "rope.dimension_count", (uint32_t)hp->head_dim, &u, err)) != G4_OK) return st;
    hp->n_rot = (int32_t)u;
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return g4_err_set(err, G4_ERR_FORMAT, "llama: rope.dimension_count %d must be even and at most "
                          "the head size %d", hp->n_rot, hp->head_dim);
    return G4_OK;
}

/* ---------------------------------------------------------------- weights */

static g4_status load_weights(g4_model *m, llama *L, g4_err *err) {
    llama_hparams *hp = &L->hp;
    const int64_t E = hp->n_embd, F = hp->n_ff;
    const int64_t Q = (int64_t)hp->n_head * hp->head_dim, KV = (int64_t)hp->n_head_kv * hp->head_dim;
    g4_status st;

    /* vocab size: llama.vocab_size when present, else the embedding's rows */
    const g4_tensor *te = g4_gguf_find_tensor(m->gguf, "token_embd.weight");
    uint32_t nv;
    if ((st = g4_hp_u32_or(m, "vocab_size", te ? (uint32_t)te->ne[1] : 0, &nv, err)) != G4_OK) return st;
    hp->n_vocab = (int32_t)nv;
    if ((st = g4_model_tensor(m, "token_embd.weight", E, hp->n_vocab, 0, &L->token_embd, err))) return st;
    if ((st = g4_model_vec(m, "output_norm.weight", E, 0, &L->output_norm, err))) return st;
    if ((st = g4_model_tensor(m, "output.weight", E, hp->n_vocab, 1, &L->output, err))) return st;
    if (!L->output) L->output = L->token_embd;   /* tied embeddings */
    if ((st = g4_model_vec(m, "rope_freqs.weight", hp->n_rot / 2, 1, &L->rope_freqs, err))) return st;

    L->layers = calloc((size_t)hp->n_layer, sizeof *L->layers);
    if (!L->layers) return g4_err_set(err, G4_ERR_NOMEM, "llama: out of memory");
    for (int il = 0; il < hp->n_layer; il++) {
        llama_layer *l = &L->layers[il];
        if ((st = g4_model_blk_vec(m, il, "attn_norm.weight", E, 0, &l->attn_norm, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_q.weight", E, Q, 0, &l->wq, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_k.weight", E, KV, 0, &l->wk, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_v.weight", E, KV, 0, &l->wv, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_output.weight", Q, E, 0, &l->wo, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "ffn_norm.weight", E, 0, &l->ffn_norm, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_gate.weight", E, F, 0, &l->ffn_gate, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_up.weight", E, F, 0, &l->ffn_up, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_down.weight", F, E, 0, &l->ffn_down, err))) return st;
    }
    return G4_OK;
}

/* ------------------------------------------------------- KV cache, scratch */

/* Carve every activation buffer from one 64-byte aligned block, so the
 * forward pass never allocates. */
static float *carve(char **p, size_t n_floats) {
    float *r = (float *)*p;
    *p += (n_floats * sizeof(float) + 63) / 64 * 64;
    return r;
}

static g4_status build_scratch(g4_model *m, llama *L, g4_err *err) {
    const llama_hparams *hp = &L->hp;
    llama_scratch *s = &L->s;
    const size_t B = (size_t)(m->n_ctx < LLAMA_BATCH ? m->n_ctx : LLAMA_BATCH);
    const size_t E = (size_t)hp->n_embd, Q = (size_t)hp->n_head * hp->head_dim, F = (size_t)hp->n_ff;
    const size_t KV = (size_t)hp->n_head_kv * hp->head_dim;
    size_t max_cols = E > Q ? E : Q;
    if (F > max_cols) max_cols = F;
    const size_t sizes[] = {
        B * E, B * E, B * Q, B * Q, B * F, B * F, B * (size_t)hp->n_rot,
        (size_t)g4_matmul_scratch((int64_t)max_cols, (int)B) / sizeof(float) + 16,
        B * KV, B * KV,
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += (sizes[i] * sizeof(float) + 63) / 64 * 64;
    if (!(s->base = aligned_alloc(64, total)))
        return g4_err_set(err, G4_ERR_NOMEM, "llama: cannot allocate %zu bytes of scratch", total);
    memset(s->base, 0, total);
    char *p = s->base;
    s->n_batch = (int)B;
    s->x = carve(&p, sizes[0]);
    s->xb = carve(&p, sizes[1]);
    s->q = carve(&p, sizes[2]);
    s->xb2 = carve(&p, sizes[3]);
    s->hb = carve(&p, sizes[4]);
    s->hb2 = carve(&p, sizes[5]);
    s->cs = carve(&p, sizes[6]);
    s->xq = carve(&p, sizes[7]);
    s->kb = carve(&p, sizes[8]);
    s->vb = carve(&p, sizes[9]);
    s->bytes = total;
    return G4_OK;
}

/* ------------------------------------------------------------- load/free */

static void llama_free(g4_model *m) {
    llama *L = m->impl;
    if (!L) return;
    free(L->layers);
    free(L->s.base);
    free(L);
    m->impl = NULL;
}

static g4_status llama_load(g4_model *m, g4_err *err) {
    llama *L = calloc(1, sizeof *L);
    if (!L) return g4_err_set(err, G4_ERR_NOMEM, "llama: out of memory");
    m->impl = L;
    g4_status st;
    if ((st = read_hparams(m, &L->hp, err)) != G4_OK) return st;
    if ((st = load_weights(m, L, err)) != G4_OK) return st;
    m->n_vocab = L->hp.n_vocab;
    m->n_ctx_train = L->hp.n_ctx_train;
    if ((st = g4_model_resolve_ctx(m, err)) != G4_OK) return st;
    if ((st = g4_rope_init(&L->rope, L->hp.n_rot, G4_ROPE_NORMAL, L->hp.rope_base, L->hp.rope_scale,
                           L->rope_freqs, err)) != G4_OK) return st;
    L->attn = (g4_attn){
        .n_head = L->hp.n_head, .n_head_kv = L->hp.n_head_kv,
        .head_dim_k = L->hp.head_dim, .head_dim_v = L->hp.head_dim,
        .scale = 1.0f / sqrtf((float)L->hp.head_dim), .softcap = 0.0f, .window = 0,
    };
    return build_scratch(m, L, err);
}

static g4_model_memory llama_memory(const g4_model *m) {
    const llama *L = m->impl;
    g4_model_memory mem = { g4_model_weights_bytes(m), 0, L->s.bytes };
    return mem;
}

static int llama_kv_layers(const g4_model *m, g4_kv_layer *out) {
    const llama *L = m->impl;
    const int kv = L->hp.n_head_kv * L->hp.head_dim;
    for (int il = 0; out && il < L->hp.n_layer; il++) out[il] = (g4_kv_layer){ kv, kv, 0 };
    return L->hp.n_layer;
}

/* ---------------------------------------------------------------- forward */

/* Tokens b->token[t0..t0+n) (n <= n_batch); logits of the flagged ones to
 * logits (one row each, in order). Returns the rows written. */
static int forward_chunk(g4_model *m, llama *L, g4_kvcache *kv, const g4_batch *b, int t0, int n, float *logits) {
    const llama_hparams *hp = &L->hp;
    llama_scratch *s = &L->s;
    const int64_t E = hp->n_embd, F = hp->n_ff, V = hp->n_vocab;
    const int64_t Q = (int64_t)hp->n_head * hp->head_dim, KV = (int64_t)hp->n_head_kv * hp->head_dim;
    const int32_t *tok = b->token + t0, *pos = b->pos + t0, *seq = b->seq + t0;
    const int8_t *want = b->logits + t0;

    for (int t = 0; t < n; t++) {
        g4_get_row(L->token_embd, tok[t], s->x + t * E);
        g4_rope_cache(&L->rope, pos[t], s->cs + t * hp->n_rot);
    }

    for (int il = 0; il < hp->n_layer; il++) {
        const llama_layer *l = &L->layers[il];

        /* attention: q, k, v; k roped, then k and v stored in the paged cache */
        for (int t = 0; t < n; t++) g4_rmsnorm(s->xb + t * E, s->x + t * E, l->attn_norm, E, hp->eps);
        const g4_mm qkv[3] = { { l->wq, s->q, Q }, { l->wk, s->kb, KV }, { l->wv, s->vb, KV } };
        g4_matmul_n(m->pool, qkv, 3, s->xb, E, n, s->xq);
        for (int t = 0; t < n; t++) {
            const float *cs = s->cs + t * hp->n_rot;
            g4_rope_apply(&L->rope, cs, s->q + t * Q, hp->n_head, hp->head_dim);
            g4_rope_apply(&L->rope, cs, s->kb + t * KV, hp->n_head_kv, hp->head_dim);
        }
        g4_kvc_store(kv, il, n, seq, pos, s->kb, KV, s->vb, KV);
        g4_kvc_attention(m->pool, kv, il, &L->attn, n, seq, pos, s->q, Q, s->xb2, Q);
        g4_matmul(m->pool, l->wo, s->xb2, Q, s->xb, E, n, s->xq);
        g4_add(s->x, s->xb, n * E);

        /* feed-forward (SwiGLU) */
        for (int t = 0; t < n; t++) g4_rmsnorm(s->xb + t * E, s->x + t * E, l->ffn_norm, E, hp->eps);
        g4_matmul_glu(m->pool, l->ffn_gate, l->ffn_up, g4_swiglu, s->xb, E, s->hb, F, s->hb2, F, n, s->xq);
        g4_matmul(m->pool, l->ffn_down, s->hb, F, s->xb, E, n, s->xq);
        g4_add(s->x, s->xb, n * E);
    }

    int rows = 0;
    for (int t = 0; t < n; t++)
        if (want[t]) g4_rmsnorm(s->xb + (rows++) * E, s->x + t * E, L->output_norm, E, hp->eps);
    if (rows) g4_matmul(m->pool, L->output, s->xb, E, logits, V, rows, s->xq);
    return rows;
}

static g4_status llama_forward(g4_model *m, const g4_batch *b, g4_kvcache *kv, float *logits, g4_err *err) {
    llama *L = m->impl;
    const int B = L->s.n_batch;
    size_t rows = 0;
    for (int32_t c = 0; c < b->n; c += B) {
        const int nb = b->n - c < B ? b->n - c : B;
        rows += (size_t)forward_chunk(m, L, kv, b, c, nb, logits ? logits + rows * (size_t)L->hp.n_vocab : NULL);
    }
    return G4_OK;
}

const g4_arch g4_arch_llama = {
    .name = "llama",
    .load = llama_load,
    .free = llama_free,
    .forward = llama_forward,
    .memory = llama_memory,
    .kv_layers = llama_kv_layers,
};
