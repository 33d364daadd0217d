/* ops.c - numeric building blocks shared by every architecture file.
 *
 * Formulas follow ggml's CPU ops (ggml/src/ggml-cpu/ops.cpp: rms_norm,
 * soft_max, rope, swiglu) so results line up with llama.cpp; the matmul
 * delegates each row to the quant kernels (g4_matvec_rows).
 */
#include "ops.h"

#include <math.h>
#include <string.h>

#include "../quant/quant.h"

/* ------------------------------------------------------------ elementwise */

void g4_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    const float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    if (w) for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
    else   for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale;
}

void g4_softmax(float *x, int64_t n) {
    if (n <= 0) return;
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) if (x[i] > mx) mx = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void g4_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void g4_geglu(float *out, const float *gate, const float *up, int64_t n) {
    /* GELU, tanh approximation (Hendrycks & Gimpel 2016, eq. in sec. 2) */
    const float c = 0.7978845608028654f;   /* sqrt(2/pi) */
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g))) * up[i];
    }
}

void g4_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void g4_get_row(const g4_tensor *t, int64_t row, float *dst) {
    const size_t rs = g4_row_size(t->type, t->ne[0]);
    g4_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)row * rs, dst, t->ne[0]);
}

/* ------------------------------------------------------------------- RoPE */

g4_status g4_rope_init(g4_rope *r, int n_rot, int mode, float freq_base, float freq_scale,
                       const float *freq_factors, g4_err *err) {
    if (n_rot <= 0 || n_rot % 2 || n_rot > G4_ROPE_MAX_DIMS)
        return g4_err_set(err, G4_ERR_INVALID, "rope: rotated dims %d must be even and in 2..%d",
                          n_rot, G4_ROPE_MAX_DIMS);
    if (mode != G4_ROPE_NORMAL && mode != G4_ROPE_NEOX)
        return g4_err_set(err, G4_ERR_INVALID, "rope: unknown mode %d", mode);
    if (!(freq_base > 0.0f) || !(freq_scale > 0.0f))
        return g4_err_set(err, G4_ERR_INVALID, "rope: freq_base %g and freq_scale %g must be > 0",
                          freq_base, freq_scale);
    r->n_rot = n_rot;
    r->mode = mode;
    for (int i = 0; i < n_rot / 2; i++) {
        /* base^(-2i/n_rot) in double: the same value HF computes as
         * 1 / base^(arange(0, dim, 2) / dim), ggml as repeated products. */
        double f = pow((double)freq_base, -2.0 * i / (double)n_rot) * freq_scale;
        if (freq_factors) f /= freq_factors[i];
        r->inv_freq[i] = (float)f;
    }
    return G4_OK;
}

void g4_rope_cache(const g4_rope *r, int64_t pos, float *cs) {
    for (int i = 0; i < r->n_rot / 2; i++) {
        const float theta = (float)pos * r->inv_freq[i];
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
    }
}

void g4_rope_apply(const g4_rope *r, const float *cs, float *x, int n_heads, int head_dim) {
    const int half = r->n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            /* NORMAL: pair (2i, 2i+1); NEOX: pair (i, i + n_rot/2) */
            const int i0 = r->mode == G4_ROPE_NEOX ? i : 2 * i;
            const int i1 = r->mode == G4_ROPE_NEOX ? i + half : 2 * i + 1;
            const float c = cs[2 * i], s = cs[2 * i + 1];
            const float x0 = xh[i0], x1 = xh[i1];
            xh[i0] = x0 * c - x1 * s;
            xh[i1] = x0 * s + x1 * c;
        }
    }
}

/* ------------------------------------------------------- threaded matmul */

#define G4_ROW_ALIGN 16          /* 16 floats = one 64-byte cache line of output */
#define G4_BLOCK_BYTES (32 * 1024)  /* weight rows reused across tokens: about L1 */
/* Multiply-adds below which a job runs on the calling thread only (~10 us of scalar work). */
#define G4_MIN_PARALLEL_WORK (32 * 1024)

typedef struct matmul_job {
    const g4_tensor *W;
    const char *xq; size_t ldxq;     /* activations in vec_dot_type, row stride in bytes */
    float *y; int64_t ldy;
    int n;
} matmul_job;

static void matmul_worker(void *arg, int ith, int nth) {
    const matmul_job *j = arg;
    const int64_t rows = j->W->ne[1], cols = j->W->ne[0];
    const int64_t n_chunks = (rows + G4_ROW_ALIGN - 1) / G4_ROW_ALIGN;
    int64_t r0 = n_chunks * ith / nth * G4_ROW_ALIGN;
    int64_t r1 = n_chunks * (ith + 1) / nth * G4_ROW_ALIGN;
    if (r1 > rows) r1 = rows;
    if (r0 >= r1) return;
    if (j->n == 1) {
        g4_matvec_rows_vq(j->W->type, j->W->data, cols, j->xq, j->y, r0, r1);
        return;
    }
    const size_t row_bytes = g4_row_size(j->W->type, cols);
    int64_t blk = row_bytes ? (int64_t)(G4_BLOCK_BYTES / row_bytes) : 1;
    if (blk < 1) blk = 1;
    for (int64_t rb = r0; rb < r1; rb += blk) {
        const int64_t re = rb + blk < r1 ? rb + blk : r1;
        for (int t = 0; t < j->n; t++)
            g4_matvec_rows_vq(j->W->type, j->W->data, cols, j->xq + (size_t)t * j->ldxq,
                              j->y + t * j->ldy, rb, re);
    }
}

int64_t g4_matmul_scratch(int64_t cols, int n) {
    /* every vec_dot_type takes at most 4 bytes per element (F32 is the widest) */
    return (int64_t)n * cols * (int64_t)sizeof(float);
}

void g4_matmul(g4_pool *pool, const g4_tensor *W, const float *x, int64_t ldx,
               float *y, int64_t ldy, int n, void *xq) {
    const int64_t cols = W->ne[0];
    const uint32_t vdt = g4_vec_dot_type(W->type);
    matmul_job j = { W, (const char *)x, (size_t)ldx * sizeof(float), y, ldy, n };
    if (vdt != G4_TYPE_F32) {
        /* quantize the activations once, on the calling thread: n*cols work
         * against the matmul's n*cols*rows */
        const size_t rs = g4_row_size(vdt, cols);
        for (int t = 0; t < n; t++)
            g4_quantize_row(vdt, x + t * ldx, (char *)xq + (size_t)t * rs, cols);
        j.xq = xq;
        j.ldxq = rs;
    }
    /* Handing a job to the workers costs about a microsecond even when they
     * are spinning, and far more when one has to be woken or is descheduled;
     * a small matrix (the 64x64 layers of stories260K) is done sooner alone. */
    if ((int64_t)n * cols * W->ne[1] < G4_MIN_PARALLEL_WORK) matmul_worker(&j, 0, 1);
    else g4_pool_run(pool, matmul_worker, &j);
}

/* ------------------------------------------------------------- attention */

static int64_t att_stride(int64_t n_ctx) { return (n_ctx + 15) / 16 * 16; }

int64_t g4_attention_scratch(int64_t n_ctx, int n_threads) {
    return att_stride(n_ctx) * (n_threads > 0 ? n_threads : 1);
}

typedef struct attn_job {
    const g4_attn *a;
    const float *q; int64_t ldq;
    const float *k; int64_t ldk;
    const float *v; int64_t ldv;
    int64_t pos0; int n;
    float *out; int64_t ldo;
    float *att; int64_t n_ctx;
} attn_job;

static void attn_worker(void *arg, int ith, int nth) {
    const attn_job *j = arg;
    const g4_attn *a = j->a;
    const int group = a->n_head / a->n_head_kv;
    const int dk = a->head_dim_k, dv = a->head_dim_v;
    float *att = j->att + att_stride(j->n_ctx) * ith;
    const int64_t n_pairs = (int64_t)j->n * a->n_head;

    /* round-robin: later tokens attend to more keys, so dealing pairs in
     * turn keeps the threads' shares even under the causal mask */
    for (int64_t idx = ith; idx < n_pairs; idx += nth) {
        const int t = (int)(idx / a->n_head), h = (int)(idx % a->n_head);
        const int kvh = h / group;
        const int64_t pos = j->pos0 + t;
        int64_t start = 0;
        if (a->window > 0 && pos - a->window + 1 > 0) start = pos - a->window + 1;
        const int64_t len = pos - start + 1;

        const float *qh = j->q + t * j->ldq + (int64_t)h * dk;
        for (int64_t p = start; p <= pos; p++) {
            const float *kp = j->k + p * j->ldk + (int64_t)kvh * dk;
            float s = 0.0f;
            for (int d = 0; d < dk; d++) s += qh[d] * kp[d];
            s *= a->scale;
            if (a->softcap > 0.0f) s = a->softcap * tanhf(s / a->softcap);
            att[p - start] = s;
        }
        g4_softmax(att, len);

        float *oh = j->out + t * j->ldo + (int64_t)h * dv;
        memset(oh, 0, sizeof(float) * (size_t)dv);
        for (int64_t p = start; p <= pos; p++) {
            const float *vp = j->v + p * j->ldv + (int64_t)kvh * dv;
            const float w = att[p - start];
            for (int d = 0; d < dv; d++) oh[d] += w * vp[d];
        }
    }
}

void g4_attention(g4_pool *pool, const g4_attn *a,
                  const float *q, int64_t ldq,
                  const float *k, int64_t ldk, const float *v, int64_t ldv,
                  int64_t pos0, int n, float *out, int64_t ldo,
                  float *att, int64_t n_ctx) {
    attn_job j = { a, q, ldq, k, ldk, v, ldv, pos0, n, out, ldo, att, n_ctx };
    /* work ~ query heads x keys x (k + v dims); see g4_matmul */
    const int64_t keys = a->window > 0 && a->window < pos0 + n ? a->window : pos0 + n;
    if ((int64_t)n * a->n_head * keys * (a->head_dim_k + a->head_dim_v) < G4_MIN_PARALLEL_WORK)
        attn_worker(&j, 0, 1);
    else
        g4_pool_run(pool, attn_worker, &j);
}
