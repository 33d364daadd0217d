/* ops_gemma.c - the Gemma architectures' additions to ops.c: vectorized
 * GeGLU, per-head RMSNorm, softcap, MoE routing (their KV cache is the
 * engine's paged cache, engine/kvcache.c).
 * Formulas follow HF transformers' modeling_gemma4.py / modeling_gemma3.py,
 * which the tests compare against.
 */
#include "ops_gemma.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define G4_X86 1
#endif

/* ---------------------------------------------------- vector kernels (x86)
 * Float loops the compiler cannot vectorize on its own at -O3 without
 * -march (a reduction, tanh): AVX-512 and AVX2+FMA versions chosen from the
 * ISA the quant kernels use (g4_isa_active, so GEMMA4STACK_ISA=scalar also
 * selects the plain C below, the reference the tests compare against).
 * exp(x) as Cephes' expf: x = k ln2 + r, |r| <= ln2/2, a degree-6 polynomial
 * for e^r (relative error ~1e-7), then scaled by 2^k. */

enum { VEC_SCALAR = 0, VEC_AVX2 = 1, VEC_AVX512 = 2 };

static int vec_level(void) {
#ifdef G4_X86
    const int isa = g4_isa_active();
    if (isa == G4_ISA_AVX512 || isa == G4_ISA_AVX512VNNI) return VEC_AVX512;
    if (isa == G4_ISA_AVX2 || isa == G4_ISA_AVXVNNI) return VEC_AVX2;
#endif
    return VEC_SCALAR;
}

/* GELU, tanh approximation (Hendrycks & Gimpel 2016), as HF's gelu_pytorch_tanh:
 * 0.5 g (1 + tanh(u)) = g / (1 + e^(-2u)), u = sqrt(2/pi) (g + 0.044715 g^3). */
#define GELU_C 0.7978845608028654f

#ifdef G4_X86
#define EXP_CONSTS                                                                   \
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f, log2e = 1.44269504088896341f; \
    const float p0 = 1.9875691500e-4f, p1 = 1.3981999507e-3f, p2 = 8.3334519073e-3f,   \
                p3 = 4.1665795894e-2f, p4 = 1.6666665459e-1f, p5 = 5.0000001201e-1f

__attribute__((target("avx512f")))
static inline __m512 exp_avx512(__m512 x) {
    EXP_CONSTS;
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(log2e)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(ln2_hi), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(ln2_lo), r);
    __m512 p = _mm512_set1_ps(p0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(p1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(p2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(p3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(p4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(p5));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, k);
}

__attribute__((target("avx512f")))
static void geglu_avx512(float *out, const float *gate, const float *up, int64_t n) {
    const __m512 c = _mm512_set1_ps(GELU_C), c3 = _mm512_set1_ps(0.044715f), m2 = _mm512_set1_ps(-2.0f);
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 u = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(c3, g), _mm512_mul_ps(g, g), g));
        const __m512 e = exp_avx512(_mm512_mul_ps(m2, u));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
    }
    if (i < n) g4_geglu(out + i, gate + i, up + i, n - i);
}

/* cap tanh(x / cap) = cap (1 - 2 / (1 + e^(2x / cap))): absolute error ~1e-7 cap */
__attribute__((target("avx512f")))
static void softcap_avx512(float *x, int64_t n, float cap) {
    const __m512 two_inv = _mm512_set1_ps(2.0f / cap), vcap = _mm512_set1_ps(cap);
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp_avx512(_mm512_mul_ps(_mm512_loadu_ps(x + i), two_inv));
        const __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(one, e)));
        _mm512_storeu_ps(x + i, _mm512_mul_ps(vcap, t));
    }
    for (; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}

__attribute__((target("avx2,fma")))
static inline __m256 exp_avx2(__m256 x) {
    EXP_CONSTS;
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(log2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(ln2_hi), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(ln2_lo), r);
    __m256 p = _mm256_set1_ps(p0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(p1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(p2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(p3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(p4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(p5));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^k through the exponent bits: k in [-126, 127] after the clamp */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma")))
static void geglu_avx2(float *out, const float *gate, const float *up, int64_t n) {
    const __m256 c = _mm256_set1_ps(GELU_C), c3 = _mm256_set1_ps(0.044715f), m2 = _mm256_set1_ps(-2.0f);
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 u = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(c3, g), _mm256_mul_ps(g, g), g));
        const __m256 e = exp_avx2(_mm256_mul_ps(m2, u));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    if (i < n) g4_geglu(out + i, gate + i, up + i, n - i);
}
#endif

void g4_geglu_vec(float *out, const float *gate, const float *up, int64_t n) {
#ifdef G4_X86
    switch (vec_level()) {
    case VEC_AVX512: geglu_avx512(out, gate, up, n); return;
    case VEC_AVX2: geglu_avx2(out, gate, up, n); return;
    }
#endif
    g4_geglu(out, gate, up, n);
}

/* ------------------------------------------------------------ elementwise */

void g4_softcap(float *x, int64_t n, float cap) {
    if (!(cap > 0.0f)) return;
#ifdef G4_X86
    if (vec_level() == VEC_AVX512) { softcap_avx512(x, n, cap); return; }
#endif
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
