/* ops_gemma.h - building blocks the Gemma architectures (gemma4.c, gemma3.c)
 * add to ops.h: per-head RMSNorm, logit softcapping, a vectorized GeGLU and
 * the mixture-of-experts router. (The KV cache, sliding windows included,
 * is the engine's paged cache: engine/kvcache.h.)
 *
 * Float32 activations; every matrix product still goes through g4_matmul
 * (ops.h). Nothing here allocates.
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
