/* ops.h - numeric building blocks shared by every architecture file.
 *
 * Float32 activations, weights of any g4_type (quant/quant.h). Matrices are
 * GGUF tensors: ne[0] = columns (input features), ne[1] = rows (outputs),
 * rows stored contiguously, so y = W x is one dot product per row.
 * The threaded ops split work over a g4_pool; everything else runs on the
 * calling thread. Nothing here allocates: callers pass scratch sized at load.
 */
#ifndef G4_OPS_H
#define G4_OPS_H

#include <stdint.h>

#include "../common/threadpool.h"
#include "../gguf/gguf.h"

/* ------------------------------------------------------------ elementwise */

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]  (w may be NULL: no scale).
 * Sum of squares in double as ggml's rms_norm does. out may alias x. */
void g4_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/* In-place softmax over x[0..n). */
void g4_softmax(float *x, int64_t n);

/* SwiGLU (llama FFN): out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + e^-x). out may alias gate. */
void g4_swiglu(float *out, const float *gate, const float *up, int64_t n);

/* GeGLU with the tanh approximation of GELU (Gemma FFN, "gelu_pytorch_tanh"). */
void g4_geglu(float *out, const float *gate, const float *up, int64_t n);

/* y[i] += x[i] */
void g4_add(float *y, const float *x, int64_t n);

/* dst[0..ne[0]) = row `row` of a 2-D tensor, dequantized (embedding lookup). */
void g4_get_row(const g4_tensor *t, int64_t row, float *dst);

/* ------------------------------------------------------------------- RoPE */

/* Rotation layouts, numbered as llama.cpp's rope types (LLAMA_ROPE_TYPE_*):
 * NORMAL rotates adjacent pairs (x[2i], x[2i+1]) - llama, as in the original
 * Meta code and llama2.c; NEOX rotates (x[i], x[i + n_rot/2]) - GPT-NeoX and
 * HF's rotate_half (Gemma, Qwen...). */
enum { G4_ROPE_NORMAL = 0, G4_ROPE_NEOX = 2 };

#define G4_ROPE_MAX_DIMS 1024

/* RoFormer (Su et al. 2021) rotary embedding as ggml_rope_ext computes it
 * without YaRN: pair i of the first n_rot dims of each head turns by
 *   theta_i = pos * freq_scale * freq_base^(-2i/n_rot) / freq_factors[i].
 * Dims n_rot..head_dim-1 pass through unchanged. */
typedef struct g4_rope {
    int n_rot;                          /* rotated dims per head, even, <= G4_ROPE_MAX_DIMS */
    int mode;                           /* G4_ROPE_NORMAL or G4_ROPE_NEOX */
    float inv_freq[G4_ROPE_MAX_DIMS / 2];
} g4_rope;

/* freq_factors: NULL or n_rot/2 divisors (llama.cpp's rope_freqs.weight, used
 * by Llama 3.1 and for proportional / partial rotation). freq_scale: 1 for no
 * linear position interpolation. Returns G4_ERR_INVALID for a bad n_rot/mode. */
g4_status g4_rope_init(g4_rope *r, int n_rot, int mode, float freq_base, float freq_scale,
                       const float *freq_factors, g4_err *err);

/* cs[2i] = cos(theta_i), cs[2i+1] = sin(theta_i) for position pos: computed
 * once per token and reused by every layer. cs has n_rot floats. */
void g4_rope_cache(const g4_rope *r, int64_t pos, float *cs);

/* Rotate n_heads heads of head_dim floats stored back to back in x. */
void g4_rope_apply(const g4_rope *r, const float *cs, float *x, int n_heads, int head_dim);

/* ------------------------------------------------------- threaded matmul */

/* y[t*ldy + r] = sum_c W[r][c] * x[t*ldx + c] for tokens t < n and rows
 * r < W->ne[1]. As in ggml's mul_mat, x is first converted once to the
 * weight type's vec_dot_type (Q8_0 for Q8_0/Q4_0 weights, see quant.h) into
 * xq, scratch of g4_matmul_scratch(cols, n) bytes (unused for float weights).
 * Rows are then split into shares of a multiple of 16 rows (64 bytes of
 * float output, so two threads never write the same cache line), a few
 * shares per thread, claimed by whichever thread is free. A matrix with a
 * repacked form (quant.h g4_repack: Q4_0, Q8_0, Q4_K, Q6_K) is repacked the
 * first time it is multiplied, once per model; the kernels tile over tokens
 * and rows, so each weight block is read once per tile of tokens. */
void g4_matmul(g4_pool *pool, const g4_tensor *W, const float *x, int64_t ldx,
               float *y, int64_t ldy, int n, void *xq);

/* Repacks W[0..n) now, as g4_matmul would on each one's first use, in one
 * job across the pool's threads (a model load calls it, so the first token
 * does not pay for it). Matrices without a repacked form (quant.h
 * g4_repack_supported; 2-D only: pass expert stacks as g4_expert_view
 * slices) and ones already repacked are skipped; so is everything when
 * GEMMA4STACK_REPACK=0. The W array itself need not outlive the call: the
 * copies are found again by data pointer and shape. Returns how many
 * matrices it repacked; one without memory for its copy is left to the
 * plain kernels, as on first use. */
int g4_repack_all(g4_pool *pool, const g4_tensor *W, int n);

/* Several matrices that read the same input x (rows of ne[0] = cols each),
 * e.g. attention's q, k, v or the FFN's gate and up: y_k = W_k x as for
 * g4_matmul, with x quantized once per activation format and one pool job
 * (one meeting of the threads) for all of them. */
typedef struct g4_mm { const g4_tensor *W; float *y; int64_t ldy; } g4_mm;
void g4_matmul_n(g4_pool *pool, const g4_mm *mm, int count, const float *x, int64_t ldx, int n, void *xq);

/* A gated FFN's first half: out = act(gate x) * (up x), for llama's SwiGLU
 * (glu = g4_swiglu) or Gemma's GeGLU. Each share computes the same rows of
 * gate and up and applies the activation to them while they are in cache,
 * so the activation runs on all threads and needs no pass of its own.
 * tmp [n][ldt] receives up x. */
typedef void (*g4_glu_fn)(float *out, const float *gate, const float *up, int64_t n);
void g4_matmul_glu(g4_pool *pool, const g4_tensor *gate, const g4_tensor *up, g4_glu_fn glu,
                   const float *x, int64_t ldx, float *out, int64_t ldo, float *tmp, int64_t ldt,
                   int n, void *xq);

/* Bytes of xq scratch enough for any weight type(s) with `cols` columns. */
int64_t g4_matmul_scratch(int64_t cols, int n);

/* ------------------------------------------------------------- attention */

typedef struct g4_attn {
    int n_head, n_head_kv;     /* grouped-query attention: n_head % n_head_kv == 0 */
    int head_dim_k;            /* q and k per head */
    int head_dim_v;            /* v and the output per head */
    float scale;               /* scores = q.k * scale, usually 1/sqrt(head_dim_k) */
    float softcap;             /* > 0: scores = softcap * tanh(scores / softcap) (Gemma 2); 0: off */
    int window;                /* > 0: sliding window, key p is seen from pos when pos - p < window */
} g4_attn;

/* Causal multi-head attention of n query tokens at positions pos0..pos0+n-1
 * over a KV cache that already holds positions 0..pos0+n-1:
 *   q   [n][n_head * head_dim_k]         row stride ldq floats
 *   k   [n_ctx][n_head_kv * head_dim_k]  row stride ldk (row p = position p)
 *   v   [n_ctx][n_head_kv * head_dim_v]  row stride ldv
 *   out [n][n_head * head_dim_v]         row stride ldo
 * Query head h reads kv head h / (n_head / n_head_kv). (token, head) pairs
 * are dealt round-robin to the pool's threads. att is scratch of
 * g4_attention_scratch(n_ctx, n_threads) floats. */
void g4_attention(g4_pool *pool, const g4_attn *a,
                  const float *q, int64_t ldq,
                  const float *k, int64_t ldk, const float *v, int64_t ldv,
                  int64_t pos0, int n, float *out, int64_t ldo,
                  float *att, int64_t n_ctx);

/* The same over a KV cache of IEEE half floats (the KV cache type llama.cpp
 * uses by default): k and v rows are fp16 bits, strides in elements.
 * Scores and the weighted sum are accumulated in float32. */
void g4_attention_f16(g4_pool *pool, const g4_attn *a,
                      const float *q, int64_t ldq,
                      const uint16_t *k, int64_t ldk, const uint16_t *v, int64_t ldv,
                      int64_t pos0, int n, float *out, int64_t ldo,
                      float *att, int64_t n_ctx);

int64_t g4_attention_scratch(int64_t n_ctx, int n_threads);

#endif
