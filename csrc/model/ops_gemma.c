/* ops_gemma.c - the Gemma architectures' additions to ops.c: ring-buffer KV
 * cache, attention over it, per-head RMSNorm, softcap, MoE routing.
 * Formulas follow HF transformers' modeling_gemma4.py / modeling_gemma3.py,
 * which the tests compare against.
 */
#include "ops_gemma.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/quant.h"

/* ------------------------------------------------------------ elementwise */

void g4_softcap(float *x, int64_t n, float cap) {
    if (!(cap > 0.0f)) return;
    const float inv = 1.0f / cap;
    for (int64_t i = 0; i < n; i++) x[i] = cap * tanhf(x[i] * inv);
}

void g4_scale(float *x, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

void g4_rmsnorm_heads(float *x, int n_heads, int head_dim, const float *w, float eps) {
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (int64_t)h * head_dim;
        g4_rmsnorm(xh, xh, w, head_dim, eps);
    }
}

/* -------------------------------------------------------------- KV cache */

int64_t g4_kv_rows(int window, int n_batch, int64_t n_ctx) {
    if (window <= 0) return n_ctx;
    const int64_t r = (int64_t)window + (n_batch > 0 ? n_batch : 1) - 1;
    return r < n_ctx ? r : n_ctx;
}

g4_status g4_kv_build(g4_kv *kv, int64_t n_rows, int dim_k, int dim_v, int window,
                      uint64_t *bytes, g4_err *err) {
    memset(kv, 0, sizeof *kv);
    const size_t nk = (size_t)n_rows * (size_t)dim_k, nv = (size_t)n_rows * (size_t)dim_v;
    kv->k = calloc(nk ? nk : 1, sizeof(float));
    kv->v = calloc(nv ? nv : 1, sizeof(float));
    if (!kv->k || !kv->v) {
        g4_kv_free(kv);
        return g4_err_set(err, G4_ERR_NOMEM, "cannot allocate a KV cache of %lld positions (%zu MiB)",
                          (long long)n_rows, (nk + nv) * sizeof(float) >> 20);
    }
    kv->n_rows = n_rows;
    kv->dim_k = dim_k;
    kv->dim_v = dim_v;
    kv->window = window;
    *bytes += (uint64_t)(nk + nv) * sizeof(float);
    return G4_OK;
}

void g4_kv_free(g4_kv *kv) {
    free(kv->k);
    free(kv->v);
    kv->k = kv->v = NULL;
}

void g4_kv_store(g4_kv *kv, int64_t pos0, int n, const float *k, int64_t ldk,
                 const float *v, int64_t ldv) {
    for (int t = 0; t < n; t++) {
        const int64_t row = (pos0 + t) % kv->n_rows;
        memcpy(kv->k + row * kv->dim_k, k + t * ldk, sizeof(float) * (size_t)kv->dim_k);
        memcpy(kv->v + row * kv->dim_v, v + t * ldv, sizeof(float) * (size_t)kv->dim_v);
    }
}

int g4_kv_can_resume(const g4_kv *kv, int64_t n_keep, int64_t n_end) {
    if (n_keep > n_end) return 0;
    int64_t first = 0;   /* oldest position a query at n_keep looks at */
    if (kv->window > 0 && n_keep - kv->window + 1 > 0) first = n_keep - kv->window + 1;
    if (n_keep == 0) return 1;
    /* position p sits in row p % n_rows until a later q = p + n_rows is written */
    return n_end - first <= kv->n_rows;
}

/* ------------------------------------------------------------- attention */

/* Dot product with independent partial sums, so the compiler keeps them in
 * vector lanes (no -ffast-math needed to reassociate). */
static float dot_f32(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

static int64_t att_stride(int64_t n_ctx) { return (n_ctx + 15) / 16 * 16; }

typedef struct kv_attn_job {
    const g4_attn *a;
    const float *q; int64_t ldq;
    const g4_kv *kv;
    int64_t pos0; int n;
    float *out; int64_t ldo;
    float *att; int64_t n_ctx;
} kv_attn_job;

static void kv_attn_worker(void *arg, int ith, int nth) {
    const kv_attn_job *j = arg;
    const g4_attn *a = j->a;
    const g4_kv *kv = j->kv;
    const int group = a->n_head / a->n_head_kv;
    const int dk = a->head_dim_k, dv = a->head_dim_v;
    float *att = j->att + att_stride(j->n_ctx) * ith;
    const int64_t n_pairs = (int64_t)j->n * a->n_head;

    /* (token, head) pairs dealt round-robin: later tokens see more keys */
    for (int64_t idx = ith; idx < n_pairs; idx += nth) {
        const int t = (int)(idx / a->n_head), h = (int)(idx % a->n_head);
        const int kvh = h / group;
        const int64_t pos = j->pos0 + t;
        int64_t start = 0;
        if (a->window > 0 && pos - a->window + 1 > 0) start = pos - a->window + 1;
        const int64_t len = pos - start + 1;

        const float *qh = j->q + t * j->ldq + (int64_t)h * dk;
        for (int64_t p = start; p <= pos; p++) {
            const float *kp = kv->k + (p % kv->n_rows) * kv->dim_k + (int64_t)kvh * dk;
            float s = dot_f32(qh, kp, dk) * a->scale;
            if (a->softcap > 0.0f) s = a->softcap * tanhf(s / a->softcap);
            att[p - start] = s;
        }
        g4_softmax(att, len);

        float *oh = j->out + t * j->ldo + (int64_t)h * dv;
        memset(oh, 0, sizeof(float) * (size_t)dv);
        for (int64_t p = start; p <= pos; p++) {
            const float *vp = kv->v + (p % kv->n_rows) * kv->dim_v + (int64_t)kvh * dv;
            const float w = att[p - start];
            for (int d = 0; d < dv; d++) oh[d] += w * vp[d];
        }
    }
}

/* below this many multiply-adds the pool's hand-off costs more than it saves */
#define KV_ATTN_MIN_PARALLEL (32 * 1024)

void g4_attention_kv(g4_pool *pool, const g4_attn *a, const float *q, int64_t ldq,
                     const g4_kv *kv, int64_t pos0, int n, float *out, int64_t ldo,
                     float *att, int64_t n_ctx) {
    kv_attn_job j = { a, q, ldq, kv, pos0, n, out, ldo, att, n_ctx };
    const int64_t keys = a->window > 0 && a->window < pos0 + n ? a->window : pos0 + n;
    if ((int64_t)n * a->n_head * keys * (a->head_dim_k + a->head_dim_v) < KV_ATTN_MIN_PARALLEL)
        kv_attn_worker(&j, 0, 1);
    else
        g4_pool_run(pool, kv_attn_worker, &j);
}

/* ------------------------------------------------------- mixture of experts */

void g4_moe_route(float *logits, int n_expert, int n_used, const float *per_expert_scale,
                  int32_t *idx, float *w) {
    g4_softmax(logits, n_expert);
    /* top-k by selection: k is small (8 of 128) */
    double sum = 0.0;
    for (int k = 0; k < n_used; k++) {
        int best = -1;
        for (int e = 0; e < n_expert; e++) {
            int taken = 0;
            for (int i = 0; i < k; i++) taken |= idx[i] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        idx[k] = best;
        w[k] = logits[best];
        sum += logits[best];
    }
    const float inv = sum > 0.0 ? (float)(1.0 / sum) : 0.0f;
    for (int k = 0; k < n_used; k++) {
        w[k] *= inv;
        if (per_expert_scale) w[k] *= per_expert_scale[idx[k]];
    }
}

g4_tensor g4_expert_view(const g4_tensor *t, int64_t e) {
    g4_tensor v = *t;
    const size_t rs = g4_row_size(t->type, t->ne[0]);
    v.n_dims = 2;
    v.ne[2] = v.ne[3] = 1;
    v.nbytes = rs * (size_t)t->ne[1];
    v.data = (const char *)t->data + (size_t)e * v.nbytes;
    return v;
}
