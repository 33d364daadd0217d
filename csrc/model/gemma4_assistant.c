/* gemma4_assistant.c - the `gemma4-assistant` architecture: Gemma 4's MTP
 * ("multi-token prediction") drafter, read from GGUF as llama.cpp writes it
 * (conversion/gemma.py Gemma4AssistantModel; keys and shapes from
 * src/models/gemma4-assistant.cpp load_arch_hparams / load_arch_tensors) and
 * computed as HF transformers 5.25 does (models/gemma4_assistant/
 * modeling_gemma4_assistant.py Gemma4AssistantForCausalLM.forward over a
 * Gemma4TextModel whose every layer is KV-shared). It is not a model of its
 * own: one step reads its gemma4 target's token embedding and KV cache
 * (model.h g4_mtp_step). For row t (token tok at position P, hidden h):
 *
 *   x = nextn.pre_projection [target token_embd[tok] * sqrt(Hb) ; h]     (2 Hb -> H)
 *   per layer l (sliding or global, attention.sliding_window_pattern):
 *     q = rope_P(rms_head(attn_q (rms(x) * attn_norm)) * attn_q_norm)
 *     a = softmax(q k^T) v over the target's cache layer of its type (scale 1):
 *         global: target positions 0..P-1; sliding: the last window + 1 of them,
 *         P - window - 1 .. P - 1 (transformers' bidirectional sliding mask
 *         |q_idx - kv_idx| <= window, flipped to look back; llama.cpp's
 *         standard SWA mask sees P - window + 1 .. P - 1 instead: we follow
 *         the transformers reference)
 *     x += rms(attn_output a) * post_attention_norm
 *     x += rms(ffn_down (gelu(ffn_gate y) * ffn_up y)) * post_ffw_norm,  y = rms(x) * ffn_norm
 *     x *= layer_output_scale
 *   o = rms(x) * output_norm
 *   h_out = nextn.post_projection o                                        (H -> Hb)
 *   logits = token_embd o                        (tied lm_head; no final softcap)
 *   or, with masked_embd_centroids / masked_embd_ordering (E2B/E4B assistants,
 *   use_ordered_embeddings; Gemma4AssistantMaskedEmbedder): the top
 *   centroid_intermediate_top_k of c = masked_embd_centroids o pick clusters
 *   of V / C token ids each (ordering viewed as [C][V / C]); only those get
 *   token_embd[id] . o, every other logit is min(those) - 1.
 *
 * Keys are the target's positions before P only: transformers' generation loop
 * slices shared_kv_states to the new input length, which after a partly
 * rejected draft still holds the rejected draft's K/V at P (a leftover of
 * its cache handling, not of the model); llama.cpp removes rejected positions
 * first, as the engine here does (its cache is committed to P).
 *
 * Hb = embedding_length_out (the target's hidden size), H = embedding_length.
 * The position P stays that of the last token the target sampled for every
 * step of a draft round (transformers Gemma4AssistantCandidateGenerator,
 * llama.cpp common/speculative.cpp "same position for all draft tokens").
 * llama.cpp's converter drops the masked-embedding tensors (its assistant
 * then scores the whole vocabulary, as here when they are absent); our
 * converter keeps them (gemma4stack/convert.py), with the top-k in
 * `gemma4-assistant.centroid_intermediate_top_k` (ours; default 32, the HF
 * config default).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "ops.h"
#include "ops_gemma.h"
#include "../quant/quant.h"

typedef struct asst_layer {
    int is_swa, n_head, head_dim, n_ff;
    const float *attn_norm, *attn_q_norm, *post_attention_norm, *ffn_norm, *post_ffw_norm;
    const g4_tensor *wq, *wo, *ffn_gate, *ffn_up, *ffn_down;
    float out_scale;
} asst_layer;

typedef struct asst {
    int32_t n_vocab, n_embd, n_embd_out, n_layer, window;   /* V, H, Hb, L */
    int32_t head_dim, head_dim_swa, n_rot, n_rot_swa;
    float eps, rope_base, rope_base_swa;
    const g4_tensor *token_embd, *pre_proj, *post_proj;
    const float *output_norm, *rope_freqs;
    /* masked embedding (optional) */
    const g4_tensor *centroids;        /* [H][C] */
    const int32_t *ordering;           /* [V] */
    int32_t n_centroids, top_k;
    asst_layer *layers;
    g4_rope rope, rope_swa;
    /* scratch for n_cap rows, grown on demand */
    int n_cap;
    float *x2, *x, *xb, *q, *ao, *hb, *hb2, *cs, *cs_swa, *cl, *row, *vals;
    int32_t *pos1, *sel;
    void *xq;
    size_t bytes;
} asst;

/* ----------------------------------------------------------------- load */

static g4_status read_hparams(g4_model *m, asst *A, g4_err *err) {
    uint32_t u;
    g4_status st;
#define U32(key, field) do { if ((st = g4_hp_u32(m, key, &u, err)) != G4_OK) return st; A->field = (int32_t)u; } while (0)
#define U32_OR(key, dflt, field) do { if ((st = g4_hp_u32_or(m, key, dflt, &u, err)) != G4_OK) return st; A->field = (int32_t)u; } while (0)
    U32("embedding_length", n_embd);
    U32("embedding_length_out", n_embd_out);
    U32("block_count", n_layer);
    U32("attention.sliding_window", window);
    U32("attention.key_length", head_dim);
    U32("attention.key_length_swa", head_dim_swa);
    U32_OR("rope.dimension_count", (uint32_t)A->head_dim, n_rot);
    U32_OR("rope.dimension_count_swa", (uint32_t)A->head_dim_swa, n_rot_swa);
    U32_OR("centroid_intermediate_top_k", 32, top_k);
#undef U32
#undef U32_OR
    if ((st = g4_hp_f32(m, "attention.layer_norm_rms_epsilon", &A->eps, err)) != G4_OK) return st;
    if ((st = g4_hp_f32_or(m, "rope.freq_base", 10000.0f, &A->rope_base, err)) != G4_OK) return st;
    if ((st = g4_hp_f32_or(m, "rope.freq_base_swa", A->rope_base, &A->rope_base_swa, err)) != G4_OK) return st;
    if (A->n_embd <= 0 || A->n_layer <= 0 || A->n_layer > 64 || A->window <= 0)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: embedding_length %d, block_count %d (1..64) and "
                          "attention.sliding_window %d must be positive", A->n_embd, A->n_layer, A->window);
    /* llama.cpp: "requires embedding_length_out to carry the target hidden size" */
    if (A->n_embd_out <= 0 || A->n_embd_out == A->n_embd)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: embedding_length_out %d must be the target's hidden "
                          "size, not embedding_length %d", A->n_embd_out, A->n_embd);
    if (A->head_dim <= 0 || A->head_dim_swa <= 0 || A->n_rot <= 0 || A->n_rot > A->head_dim || A->n_rot % 2 ||
        A->n_rot_swa <= 0 || A->n_rot_swa > A->head_dim_swa || A->n_rot_swa % 2)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: key_length %d / _swa %d and rope.dimension_count "
                          "%d / _swa %d must be positive, the latter even and at most the former", A->head_dim,
                          A->head_dim_swa, A->n_rot, A->n_rot_swa);
    uint32_t vl, vl_swa;
    if ((st = g4_hp_u32_or(m, "attention.value_length", (uint32_t)A->head_dim, &vl, err)) != G4_OK) return st;
    if ((st = g4_hp_u32_or(m, "attention.value_length_swa", (uint32_t)A->head_dim_swa, &vl_swa, err)) != G4_OK)
        return st;
    if ((int32_t)vl != A->head_dim || (int32_t)vl_swa != A->head_dim_swa)
        return g4_err_set(err, G4_ERR_UNSUPPORTED, "gemma4-assistant: requires value_length == key_length "
                          "(%u / %d) and value_length_swa == key_length_swa (%u / %d)", vl, A->head_dim, vl_swa,
                          A->head_dim_swa);
    return G4_OK;
}

static g4_status load_layers(g4_model *m, asst *A, g4_err *err) {
    const int L = A->n_layer;
    uint32_t swa[64], nh[64], nff[64];
    g4_status st;
    if ((st = g4_hp_u32_layers(m, "attention.sliding_window_pattern", L, NULL, swa, err)) != G4_OK) return st;
    if ((st = g4_hp_u32_layers(m, "attention.head_count", L, NULL, nh, err)) != G4_OK) return st;
    if ((st = g4_hp_u32_layers(m, "feed_forward_length", L, NULL, nff, err)) != G4_OK) return st;
    const int64_t H = A->n_embd;
    for (int il = 0; il < L; il++) {
        asst_layer *l = &A->layers[il];
        l->is_swa = swa[il] != 0;
        l->n_head = (int)nh[il];
        l->n_ff = (int)nff[il];
        l->head_dim = l->is_swa ? A->head_dim_swa : A->head_dim;
        if (l->n_head <= 0 || l->n_ff <= 0)
            return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: layer %d: head_count %d and feed_forward_length "
                              "%d must be positive", il, l->n_head, l->n_ff);
        const int64_t hd = l->head_dim, Q = (int64_t)l->n_head * hd, F = l->n_ff;
        if ((st = g4_model_blk_vec(m, il, "attn_norm.weight", H, 0, &l->attn_norm, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_q.weight", H, Q, 0, &l->wq, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "attn_q_norm.weight", hd, 0, &l->attn_q_norm, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "attn_output.weight", Q, H, 0, &l->wo, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "post_attention_norm.weight", H, 0, &l->post_attention_norm, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "ffn_norm.weight", H, 0, &l->ffn_norm, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_gate.weight", H, F, 0, &l->ffn_gate, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_up.weight", H, F, 0, &l->ffn_up, err))) return st;
        if ((st = g4_model_blk_tensor(m, il, "ffn_down.weight", F, H, 0, &l->ffn_down, err))) return st;
        if ((st = g4_model_blk_vec(m, il, "post_ffw_norm.weight", H, 0, &l->post_ffw_norm, err))) return st;
        const float *scale;
        /* llama.cpp requires it; absent means 1 here, as in gemma4.c */
        if ((st = g4_model_blk_vec(m, il, "layer_output_scale.weight", 1, 1, &scale, err))) return st;
        l->out_scale = scale ? scale[0] : 1.0f;
    }
    return G4_OK;
}

static g4_status load_globals(g4_model *m, asst *A, g4_err *err) {
    const int64_t H = A->n_embd, Hb = A->n_embd_out;
    g4_status st;
    const g4_tensor *te = g4_gguf_find_tensor(m->gguf, "token_embd.weight");
    A->n_vocab = te ? (int32_t)te->ne[1] : 0;
    if ((st = g4_model_tensor(m, "token_embd.weight", H, A->n_vocab, 0, &A->token_embd, err))) return st;
    if ((st = g4_model_vec(m, "output_norm.weight", H, 0, &A->output_norm, err))) return st;
    if ((st = g4_model_tensor(m, "nextn.pre_projection.weight", 2 * Hb, H, 0, &A->pre_proj, err))) return st;
    if ((st = g4_model_tensor(m, "nextn.post_projection.weight", H, Hb, 0, &A->post_proj, err))) return st;
    if ((st = g4_model_vec(m, "rope_freqs.weight", A->n_rot / 2, 1, &A->rope_freqs, err))) return st;

    /* the masked embedding: both tensors or neither */
    const g4_tensor *c = g4_gguf_find_tensor(m->gguf, "masked_embd_centroids.weight");
    const g4_tensor *o = g4_gguf_find_tensor(m->gguf, "masked_embd_ordering");
    if (!c && !o) return G4_OK;
    if (!c || !o)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: %s is present but %s is missing",
                          c ? "masked_embd_centroids.weight" : "masked_embd_ordering",
                          c ? "masked_embd_ordering" : "masked_embd_centroids.weight");
    A->n_centroids = (int32_t)c->ne[1];
    if ((st = g4_model_tensor(m, "masked_embd_centroids.weight", H, A->n_centroids, 0, &A->centroids, err))) return st;
    if (o->type != G4_TYPE_I32 || o->n_dims != 1 || o->ne[0] != A->n_vocab)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: masked_embd_ordering must be I32 [%d] (the "
                          "vocabulary), found type %u with %lld elements", A->n_vocab, o->type, (long long)o->ne[0]);
    if (A->n_centroids <= 0 || A->n_vocab % A->n_centroids)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: %d centroids do not divide the vocabulary of %d",
                          A->n_centroids, A->n_vocab);
    if (A->top_k <= 0 || A->top_k > A->n_centroids)
        return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: centroid_intermediate_top_k %d must be in 1..%d",
                          A->top_k, A->n_centroids);
    A->ordering = o->data;
    for (int32_t i = 0; i < A->n_vocab; i++)
        if (A->ordering[i] < 0 || A->ordering[i] >= A->n_vocab)
            return g4_err_set(err, G4_ERR_FORMAT, "gemma4-assistant: masked_embd_ordering[%d] = %d is outside the "
                              "vocabulary", i, A->ordering[i]);
    return G4_OK;
}

static void asst_free(g4_model *m) {
    asst *A = m->impl;
    if (!A) return;
    free(A->layers);
    free(A->x2);
    free(A);
    m->impl = NULL;
}

static g4_status asst_load(g4_model *m, g4_err *err) {
    asst *A = calloc(1, sizeof *A);
    if (!A) return g4_err_set(err, G4_ERR_NOMEM, "gemma4-assistant: out of memory");
    m->impl = A;
    g4_status st;
    if ((st = read_hparams(m, A, err)) != G4_OK) return st;
    if (!(A->layers = calloc((size_t)A->n_layer, sizeof *A->layers)))
        return g4_err_set(err, G4_ERR_NOMEM, "gemma4-assistant: out of memory");
    if ((st = load_globals(m, A, err)) != G4_OK) return st;
    if ((st = load_layers(m, A, err)) != G4_OK) return st;
    m->n_vocab = A->n_vocab;
    uint32_t ctx;
    if ((st = g4_hp_u32_or(m, "context_length", 131072, &ctx, err)) != G4_OK) return st;
    m->n_ctx_train = (int32_t)ctx;
    if ((st = g4_model_resolve_ctx(m, err)) != G4_OK) return st;
    if ((st = g4_rope_init(&A->rope, A->n_rot, G4_ROPE_NEOX, A->rope_base, 1.0f, A->rope_freqs, err))) return st;
    return g4_rope_init(&A->rope_swa, A->n_rot_swa, G4_ROPE_NEOX, A->rope_base_swa, 1.0f, NULL, err);
}

/* Scratch for n rows (grown, never shrunk). */
static g4_status ensure_scratch(asst *A, int n, int n_threads, g4_err *err) {
    if (n <= A->n_cap) return G4_OK;
    size_t Q = 0, F = 0;
    for (int il = 0; il < A->n_layer; il++) {
        const asst_layer *l = &A->layers[il];
        if ((size_t)l->n_head * (size_t)l->head_dim > Q) Q = (size_t)l->n_head * (size_t)l->head_dim;
        if ((size_t)l->n_ff > F) F = (size_t)l->n_ff;
    }
    const size_t B = (size_t)n, H = (size_t)A->n_embd, Hb = (size_t)A->n_embd_out;
    size_t cols = 2 * Hb;
    if (Q > cols) cols = Q;
    if (F > cols) cols = F;
    if (H > cols) cols = H;
    const size_t C = (size_t)A->n_centroids, K = A->n_centroids ? (size_t)A->top_k * (size_t)(A->n_vocab / A->n_centroids) : 0;
    const size_t sizes[] = { B * 2 * Hb, B * H, B * H, B * Q, B * Q, B * F, B * F, B * (size_t)A->n_rot,
                             B * (size_t)A->n_rot_swa, C, H * (size_t)(n_threads > 0 ? n_threads : 1), K, B, K,
                             (size_t)g4_matmul_scratch((int64_t)cols, n) / sizeof(float) + 16 };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += (sizes[i] + 15) / 16 * 16;
    float *base = aligned_alloc(64, total * sizeof(float));
    if (!base) return g4_err_set(err, G4_ERR_NOMEM, "gemma4-assistant: cannot allocate %zu bytes of scratch",
                                 total * sizeof(float));
    free(A->x2);
    float **dst[] = { &A->x2, &A->x, &A->xb, &A->q, &A->ao, &A->hb, &A->hb2, &A->cs, &A->cs_swa, &A->cl, &A->row,
                      &A->vals, (float **)&A->pos1, (float **)&A->sel, (float **)&A->xq };
    float *p = base;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *dst[i] = p;
        p += (sizes[i] + 15) / 16 * 16;
    }
    A->n_cap = n;
    A->bytes = total * sizeof(float);
    return G4_OK;
}

static g4_status asst_forward(g4_model *m, const g4_batch *b, g4_kvcache *kv, float *logits, g4_err *err) {
    (void)b; (void)kv; (void)logits;
    return g4_err_set(err, G4_ERR_UNSUPPORTED, "gemma4-assistant: an MTP assistant drafts for a gemma4 model "
                      "(Model(target, draft=\"mtp:PATH\")); it cannot run on its own (%s)", m->arch->name);
}

static g4_model_memory asst_memory(const g4_model *m) {
    const asst *A = m->impl;
    g4_model_memory mem = { g4_model_weights_bytes(m), 0, A->bytes };
    return mem;
}

static int asst_kv_layers(const g4_model *m, g4_kv_layer *out) {
    (void)m; (void)out;
    return 0;   /* it writes no cache: it reads its target's */
}

const g4_arch g4_arch_gemma4_assistant = {
    .name = "gemma4-assistant",
    .load = asst_load,
    .free = asst_free,
    .forward = asst_forward,
    .memory = asst_memory,
    .kv_layers = asst_kv_layers,
};

/* ----------------------------------------------------------- public API */

int32_t g4_mtp_n_embd_backbone(const g4_model *asst_m) {
    return asst_m && asst_m->arch == &g4_arch_gemma4_assistant ? ((const asst *)asst_m->impl)->n_embd_out : 0;
}

g4_status g4_mtp_check(const g4_model *am, const g4_model *target, g4_err *err) {
    if (!am || am->arch != &g4_arch_gemma4_assistant)
        return g4_err_set(err, G4_ERR_INVALID, "MTP: the drafter is not a gemma4-assistant model");
    g4_mtp_source src;
    g4_status st = g4_gemma4_mtp_source(target, &src, err);
    if (st != G4_OK) return st;
    const asst *A = am->impl;
    if (A->n_embd_out != src.n_embd)
        return g4_err_set(err, G4_ERR_INVALID, "MTP: the assistant was made for a target of hidden size %d "
                          "(embedding_length_out), this target has %d", A->n_embd_out, src.n_embd);
    if (A->n_vocab != src.n_vocab)
        return g4_err_set(err, G4_ERR_INVALID, "MTP: the assistant's vocabulary has %d tokens, the target's %d",
                          A->n_vocab, src.n_vocab);
    for (int il = 0; il < A->n_layer; il++) {
        const asst_layer *l = &A->layers[il];
        const int t = l->is_swa;
        if (src.kv_slot[t] < 0)
            return g4_err_set(err, G4_ERR_INVALID, "MTP: assistant layer %d is %s, the target has no such layer",
                              il, t ? "sliding-window" : "global");
        if (src.head_dim[t] != l->head_dim || l->n_head % src.n_head_kv[t])
            return g4_err_set(err, G4_ERR_INVALID, "MTP: assistant layer %d (%d heads of %d) cannot read the target's "
                              "%s layer (%d KV heads of %d)", il, l->n_head, l->head_dim,
                              t ? "sliding-window" : "global", src.n_head_kv[t], src.head_dim[t]);
    }
    return G4_OK;
}

int32_t g4_mtp_window_extra(const g4_model *am, const g4_model *target) {
    g4_mtp_source src;
    if (!am || am->arch != &g4_arch_gemma4_assistant || g4_gemma4_mtp_source(target, &src, NULL) != G4_OK) return 0;
    const asst *A = am->impl;
    /* reads P - w_a - 1 .. P - 1 after a commit of P positions; the cache keeps
     * P - w_t + 1 - extra .. P - 1 */
    const int32_t extra = A->window + 2 - src.window;
    return extra > 0 ? extra : 0;
}

/* Selected rows j = ith, ith + nth, .. of the masked head: vals[j] = token_embd[sel[j]] . o. */
typedef struct sel_job { asst *A; const float *o; int64_t n_sel; } sel_job;

static void sel_worker(void *arg, int ith, int nth) {
    const sel_job *j = arg;
    asst *A = j->A;
    const int64_t H = A->n_embd;
    float *row = A->row + (int64_t)ith * H;
    for (int64_t k = ith; k < j->n_sel; k += nth) {
        g4_get_row(A->token_embd, A->sel[k], row);
        double dot = 0.0;
        for (int64_t i = 0; i < H; i++) dot += (double)row[i] * j->o[i];
        A->vals[k] = (float)dot;
    }
}

/* Logits of one row o [H] from the masked embedding
 * (Gemma4AssistantMaskedEmbedder.forward): the top_k clusters by centroid
 * logit, their V / C token ids each scored against token_embd (the tied
 * lm_head; rows dealt to the pool's threads), every other token
 * min(those) - 1. */
static void masked_logits(g4_pool *pool, asst *A, const float *o, float *lg) {
    const int64_t H = A->n_embd, V = A->n_vocab, C = A->n_centroids, per = V / C, K = A->top_k;
    g4_matmul(pool, A->centroids, o, H, A->cl, C, 1, A->xq);
    for (int64_t k = 0; k < K; k++) {   /* order is irrelevant: every chosen cluster is scored */
        int64_t best = -1;
        for (int64_t c = 0; c < C; c++)
            if (A->cl[c] != -INFINITY && (best < 0 || A->cl[c] > A->cl[best])) best = c;
        A->cl[best] = -INFINITY;
        memcpy(A->sel + k * per, A->ordering + best * per, sizeof(int32_t) * (size_t)per);
    }
    sel_job job = { A, o, K * per };
    if (pool && g4_pool_size(pool) > 1 && K * per * H >= 64 * 1024) g4_pool_run(pool, sel_worker, &job);
    else sel_worker(&job, 0, 1);
    float lo = INFINITY;
    for (int64_t j = 0; j < K * per; j++)
        if (A->vals[j] < lo) lo = A->vals[j];
    for (int64_t v = 0; v < V; v++) lg[v] = lo - 1.0f;
    for (int64_t j = 0; j < K * per; j++) lg[A->sel[j]] = A->vals[j];
}

g4_status g4_mtp_step(g4_model *am, g4_model *target, const g4_mtp_batch *b, g4_kvcache *kv, float *logits,
                      float *h_out, g4_err *err) {
    g4_status st = g4_mtp_check(am, target, err);
    if (st != G4_OK) return st;
    if (!b || b->n <= 0 || !b->token || !b->pos || !b->seq || !b->h || !kv || !logits || !h_out)
        return g4_err_set(err, G4_ERR_INVALID, "MTP step: need at least one row, a KV cache and output buffers");
    asst *A = am->impl;
    g4_mtp_source src;
    g4_gemma4_mtp_source(target, &src, NULL);
    const int n = b->n;
    const int64_t H = A->n_embd, Hb = A->n_embd_out, V = A->n_vocab;
    for (int t = 0; t < n; t++) {
        if (b->token[t] < 0 || b->token[t] >= V)
            return g4_err_set(err, G4_ERR_INVALID, "MTP step: token id %d (row %d) is outside the vocabulary 0..%lld",
                              b->token[t], t, (long long)V - 1);
        if (b->pos[t] < 1 || b->pos[t] > g4_kvc_seq_len(kv, b->seq[t]))
            return g4_err_set(err, G4_ERR_INVALID, "MTP step: position %d (row %d) must be in 1..%d, what the target's "
                              "cache holds for sequence %d", b->pos[t], t, g4_kvc_seq_len(kv, b->seq[t]), b->seq[t]);
    }
    if ((st = ensure_scratch(A, n, g4_pool_size(am->pool), err)) != G4_OK) return st;
    g4_pool *pool = am->pool;

    /* input: [target embedding * sqrt(Hb) ; h] -> pre_projection */
    const float emb_scale = sqrtf((float)Hb);
    for (int t = 0; t < n; t++) {
        float *x2 = A->x2 + t * 2 * Hb;
        g4_get_row(src.token_embd, b->token[t], x2);
        g4_scale(x2, Hb, emb_scale);
        memcpy(x2 + Hb, b->h + t * Hb, sizeof(float) * (size_t)Hb);
        g4_rope_cache(&A->rope, b->pos[t], A->cs + t * A->n_rot);
        g4_rope_cache(&A->rope_swa, b->pos[t], A->cs_swa + t * A->n_rot_swa);
        A->pos1[t] = b->pos[t] - 1;   /* keys up to P - 1 */
    }
    g4_matmul(pool, A->pre_proj, A->x2, 2 * Hb, A->x, H, n, A->xq);

    for (int il = 0; il < A->n_layer; il++) {
        const asst_layer *l = &A->layers[il];
        const int ty = l->is_swa;
        const int64_t hd = l->head_dim, Q = (int64_t)l->n_head * hd, F = l->n_ff;
        const g4_rope *rope = ty ? &A->rope_swa : &A->rope;
        const float *cs = ty ? A->cs_swa : A->cs;
        const g4_attn at = { .n_head = l->n_head, .n_head_kv = src.n_head_kv[ty], .head_dim_k = (int)hd,
                             .head_dim_v = (int)hd, .scale = 1.0f, .softcap = 0.0f,
                             /* a query at P - 1 with window w + 1 sees P - w - 1 .. P - 1 */
                             .window = ty ? A->window + 1 : 0 };
        for (int t = 0; t < n; t++) g4_rmsnorm(A->xb + t * H, A->x + t * H, l->attn_norm, H, A->eps);
        g4_matmul(pool, l->wq, A->xb, H, A->q, Q, n, A->xq);
        for (int t = 0; t < n; t++) {
            g4_rmsnorm_heads(A->q + t * Q, l->n_head, (int)hd, l->attn_q_norm, A->eps);
            g4_rope_apply(rope, cs + t * rope->n_rot, A->q + t * Q, l->n_head, (int)hd);
        }
        g4_kvc_attention(pool, kv, src.kv_slot[ty], &at, n, b->seq, A->pos1, A->q, Q, A->ao, Q);
        g4_matmul(pool, l->wo, A->ao, Q, A->xb, H, n, A->xq);
        for (int t = 0; t < n; t++) {
            g4_rmsnorm(A->xb + t * H, A->xb + t * H, l->post_attention_norm, H, A->eps);
            g4_add(A->x + t * H, A->xb + t * H, H);
            g4_rmsnorm(A->xb + t * H, A->x + t * H, l->ffn_norm, H, A->eps);
        }
        const g4_mm gate_up[2] = { { l->ffn_gate, A->hb, F }, { l->ffn_up, A->hb2, F } };
        g4_matmul_n(pool, gate_up, 2, A->xb, H, n, A->xq);
        g4_geglu_vec(A->hb, A->hb, A->hb2, n * F);
        g4_matmul(pool, l->ffn_down, A->hb, F, A->xb, H, n, A->xq);
        for (int t = 0; t < n; t++) {
            g4_rmsnorm(A->xb + t * H, A->xb + t * H, l->post_ffw_norm, H, A->eps);
            g4_add(A->x + t * H, A->xb + t * H, H);
        }
        if (l->out_scale != 1.0f) g4_scale(A->x, n * H, l->out_scale);
    }

    for (int t = 0; t < n; t++) g4_rmsnorm(A->xb + t * H, A->x + t * H, A->output_norm, H, A->eps);
    g4_matmul(pool, A->post_proj, A->xb, H, h_out, Hb, n, A->xq);
    if (!A->centroids) {
        g4_matmul(pool, A->token_embd, A->xb, H, logits, V, n, A->xq);
    } else {
        for (int t = 0; t < n; t++) masked_logits(pool, A, A->xb + t * H, logits + t * V);
    }
    return G4_OK;
}
