/* ops_gemma.h - building blocks the Gemma architectures (gemma4.c, gemma3.c)
 * add to ops.h: a KV cache per layer that is a ring buffer on sliding-window
 * layers, attention over such a cache, per-head RMSNorm, logit softcapping
 * and the mixture-of-experts router.
 *
 * Float32 activations and KV; every matrix product still goes through
 * g4_matmul (ops.h). Nothing here allocates except g4_kv_build.
 */
#ifndef G4_OPS_GEMMA_H
#define G4_OPS_GEMMA_H

#include <stdint.h>

#include "ops.h"

/* ------------------------------------------------------------ elementwise */

/* x[i] = cap * tanh(x[i] / cap): Gemma 2/4 final logit softcapping
 * (HF Gemma4ForCausalLM.forward, llama.cpp ggml_softcap). cap <= 0: nothing. */
void g4_softcap(float *x, int64_t n, float cap);

/* out[i] = gelu_tanh(gate[i]) * up[i] as ops.h g4_geglu, vectorized (AVX-512 or
 * AVX2 by the active ISA, see quant.h): gelu(g) = g / (1 + e^(-2u)), the same
 * function in another form, with a polynomial exp (relative error ~1e-7).
 * The scalar ISA runs g4_geglu itself. out may alias gate. */
void g4_geglu_vec(float *out, const float *gate, const float *up, int64_t n);

/* x[i] *= s */
void g4_scale(float *x, int64_t n, float s);

/* RMSNorm over each of n_heads heads of head_dim floats (q/k/v norms, which
 * HF applies on the last dim after .view(..., -1, head_dim)). w: NULL or
 * head_dim weights shared by every head. */
void g4_rmsnorm_heads(float *x, int n_heads, int head_dim, const float *w, float eps);

/* -------------------------------------------------------------- KV cache */

/* One layer's K and V, n_rows positions of dim_k / dim_v floats. Position p
 * lives in row p % n_rows: a global layer has n_rows = n_ctx (no wrap), a
 * sliding-window layer only window + n_batch - 1 rows (llama.cpp's iSWA
 * cache keeps n_swa + n_ubatch cells for the same reason: a batch of n
 * tokens writes its n rows before attending, and its first query still
 * needs the window - 1 positions before it). */
typedef struct g4_kv {
    float *k, *v;            /* [n_rows][dim_k], [n_rows][dim_v]; NULL when unused */
    int64_t *pos;            /* [n_rows] position each row holds, -1: none yet */
    int64_t n_rows;
    int dim_k, dim_v;        /* n_head_kv * head_dim_k / head_dim_v */
    int window;              /* > 0: sliding window this cache serves (ring buffer) */
} g4_kv;

/* Rows a layer needs: n_ctx for a global layer (window <= 0), else
 * min(n_ctx, window + n_batch - 1). */
int64_t g4_kv_rows(int window, int n_batch, int64_t n_ctx);

/* Allocate (zeroed) rows for k and v; *bytes += their size. */
g4_status g4_kv_build(g4_kv *kv, int64_t n_rows, int dim_k, int dim_v, int window,
                      uint64_t *bytes, g4_err *err);
void g4_kv_free(g4_kv *kv);

/* Copy n new positions pos0.. from k [n][ldk] and v [n][ldv] into their rows. */
void g4_kv_store(g4_kv *kv, int64_t pos0, int n, const float *k, int64_t ldk,
                 const float *v, int64_t ldv);

/* Whether a forward at position n_keep can build on what the cache holds:
 * every position its window looks back at, max(0, n_keep - window + 1) ..
 * n_keep - 1 (all earlier positions on a global layer), is still in its row
 * (a ring row is overwritten by any later write of a position n_rows apart,
 * including one from a longer earlier history). */
int g4_kv_can_resume(const g4_kv *kv, int64_t n_keep);

/* Causal attention of n queries at positions pos0..pos0+n-1 over kv (which
 * already holds them), GQA, a->window as in g4_attention (a key p is seen
 * from pos when pos - p < window, the current token included), scores
 * q.k * a->scale, optional a->softcap. Layouts as g4_attention:
 *   q [n][n_head * head_dim_k] (stride ldq), out [n][n_head * head_dim_v] (ldo).
 * att: g4_attention_scratch(n_ctx, n_threads) floats. */
void g4_attention_kv(g4_pool *pool, const g4_attn *a, const float *q, int64_t ldq,
                     const g4_kv *kv, int64_t pos0, int n, float *out, int64_t ldo,
                     float *att, int64_t n_ctx);

/* ------------------------------------------------------- mixture of experts */

/* Gemma 4 router (HF Gemma4TextRouter; llama.cpp build_moe_ffn with softmax
 * gating and weight normalisation): softmax over n_expert logits (in place),
 * the n_used most probable experts in idx (ties: lower index first), their
 * probabilities renormalised to sum 1 in w, times per_expert_scale[e] when
 * given. */
void g4_moe_route(float *logits, int n_expert, int n_used, const float *per_expert_scale,
                  int32_t *idx, float *w);

/* A view of expert e of a 3-D expert tensor [ne0, ne1, n_expert] as a 2-D
 * matrix [ne0, ne1] for g4_matmul (llama.cpp's mul_mat_id picks the same
 * slice). */
g4_tensor g4_expert_view(const g4_tensor *t, int64_t e);

#endif
