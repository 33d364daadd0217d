/* quant.c - the type table, fp16/bf16 conversions and row-level dispatch.
 *
 * Sections: the type table (every ggml_type, so any GGUF's layout is sized
 * right), half-precision conversions, row dequantize/quantize, the scalar
 * kernel table, ISA selection, matvec/matmul.
 * The block kernels themselves are in quant_ref.c (scalar references) and
 * kernels_<isa>.c (vectorized, see kernels.h).
 */
#include "quant.h"
#include "kernels.h"

#if __has_include(<cblas.h>)   /* OpenBLAS; absent in the standalone Arm test build */
#include <cblas.h>
#define G4_HAVE_CBLAS 1
#endif
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

/* ---------------------------------------------------------------------------
 * The type table
 *
 * Block sizes and bytes per block from ggml/src/ggml.c type_traits[] (which
 * take sizeof of the ggml-common.h block structs). Names as ggml spells them.
 * Ids 4, 5 (Q4_2, Q4_3), 31-33 (Q4_0_4_4 ...) and 36-38 (IQ4_NL_4_4 ...) were
 * removed from ggml; a file using them is rejected as an unknown type.
 * Note: gguf-py's GGML_QUANT_SIZES lists Q8_1 as 40 bytes (an old layout with
 * float d and s); ggml's block_q8_1 is two fp16 + 32 int8 = 36 bytes.
 * ------------------------------------------------------------------------- */

typedef struct { const char *name; uint32_t blck; uint32_t size; int compute; } type_info;

static const type_info TYPES[G4_TYPE_COUNT] = {
    [G4_TYPE_F32]     = {"F32",     1,   4,   1},
    [G4_TYPE_F16]     = {"F16",     1,   2,   1},
    [G4_TYPE_Q4_0]    = {"Q4_0",    32,  18,  1},
    [G4_TYPE_Q4_1]    = {"Q4_1",    32,  20,  1},
    [G4_TYPE_Q5_0]    = {"Q5_0",    32,  22,  1},
    [G4_TYPE_Q5_1]    = {"Q5_1",    32,  24,  1},
    [G4_TYPE_Q8_0]    = {"Q8_0",    32,  34,  1},
    [G4_TYPE_Q8_1]    = {"Q8_1",    32,  36,  0},
    [G4_TYPE_Q2_K]    = {"Q2_K",    256, 84,  1},
    [G4_TYPE_Q3_K]    = {"Q3_K",    256, 110, 1},
    [G4_TYPE_Q4_K]    = {"Q4_K",    256, 144, 1},
    [G4_TYPE_Q5_K]    = {"Q5_K",    256, 176, 1},
    [G4_TYPE_Q6_K]    = {"Q6_K",    256, 210, 1},
    [G4_TYPE_Q8_K]    = {"Q8_K",    256, 292, 0},
    [G4_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66,  1},
    [G4_TYPE_IQ2_XS]  = {"IQ2_XS",  256, 74,  1},
    [G4_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98,  1},
    [G4_TYPE_IQ1_S]   = {"IQ1_S",   256, 50,  1},
    [G4_TYPE_IQ4_NL]  = {"IQ4_NL",  32,  18,  1},
    [G4_TYPE_IQ3_S]   = {"IQ3_S",   256, 110, 1},
    [G4_TYPE_IQ2_S]   = {"IQ2_S",   256, 82,  1},
    [G4_TYPE_IQ4_XS]  = {"IQ4_XS",  256, 136, 1},
    [G4_TYPE_I8]      = {"I8",      1,   1,   0},
    [G4_TYPE_I16]     = {"I16",     1,   2,   0},
    [G4_TYPE_I32]     = {"I32",     1,   4,   0},
    [G4_TYPE_I64]     = {"I64",     1,   8,   0},
    [G4_TYPE_F64]     = {"F64",     1,   8,   0},
    [G4_TYPE_IQ1_M]   = {"IQ1_M",   256, 56,  1},
    [G4_TYPE_BF16]    = {"BF16",    1,   2,   1},
    [G4_TYPE_TQ1_0]   = {"TQ1_0",   256, 54,  0},
    [G4_TYPE_TQ2_0]   = {"TQ2_0",   256, 66,  0},
    [G4_TYPE_MXFP4]   = {"MXFP4",   32,  17,  0},
    [G4_TYPE_NVFP4]   = {"NVFP4",   64,  36,  0},
    [G4_TYPE_Q1_0]    = {"Q1_0",    128, 18,  0},
};

static const type_info *info(uint32_t type) {
    return type < G4_TYPE_COUNT && TYPES[type].name ? &TYPES[type] : NULL;
}

const char *g4_type_name(uint32_t type) { const type_info *t = info(type); return t ? t->name : NULL; }
int g4_type_supported(uint32_t type) { const type_info *t = info(type); return t ? t->compute : 0; }
size_t g4_blck_size(uint32_t type) { const type_info *t = info(type); return t ? t->blck : 0; }
size_t g4_type_size(uint32_t type) { const type_info *t = info(type); return t ? t->size : 0; }

size_t g4_row_size(uint32_t type, int64_t n) {
    const type_info *t = info(type);
    if (!t || n < 0 || n % t->blck) return 0;
    size_t bytes;
    if (__builtin_mul_overflow((uint64_t)(n / t->blck), (uint64_t)t->size, &bytes)) return 0;
    return bytes;
}

/* ---------------------------------------------------------------------------
 * Half-precision conversions (IEEE 754 binary16 and bfloat16)
 *
 * Integer implementations, so the result never depends on the FPU rounding
 * mode. fp32 -> fp16 rounds to nearest, ties to even, like F16C's
 * vcvtps2ph with imm 0 and numpy's astype(float16): overflow goes to inf,
 * small values become subnormal halves, NaN stays NaN (quiet, sign kept).
 * ------------------------------------------------------------------------- */

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float g4_fp16_to_fp32(g4_fp16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {                       /* zero or subnormal: man * 2^-24, exact in fp32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));   /* inf / nan */
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));         /* rebias 15 -> 127 */
}

g4_fp16 g4_fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u)                 /* inf, or nan with the quiet bit forced */
        return sign | 0x7c00 | (x > 0x7f800000u ? 0x200 | ((x >> 13) & 0x3ff) : 0);
    if (x >= 0x477ff000u) return sign | 0x7c00;   /* >= 65520 rounds to inf */
    if (x >= 0x38800000u) {               /* normal half: >= 2^-14 */
        uint32_t h = (x - (112u << 23)) >> 13, rem = x & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;   /* carry may bump exponent: fine */
        return sign | (uint16_t)h;
    }
    /* subnormal half: value = m * 2^(e-150), in units of 2^-24 that is m >> (126-e) */
    uint32_t e = x >> 23;
    if (e < 102) return sign;             /* < 2^-25: rounds to zero */
    uint32_t m = (x & 0x7fffff) | 0x800000, shift = 126 - e;   /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;           /* may become the smallest normal */
    return sign | (uint16_t)q;
}

float g4_bf16_to_fp32(g4_bf16 h) { return bits_f32((uint32_t)h << 16); }

g4_bf16 g4_fp32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (g4_bf16)((x >> 16) | 0x40);   /* quiet nan */
    /* round to nearest even on the dropped 16 bits; overflow carries into inf,
       as in ggml-impl.h ggml_compute_fp32_to_bf16. Subnormals are kept. */
    return (g4_bf16)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* ---------------------------------------------------------------------------
 * Rows
 * ------------------------------------------------------------------------- */

static const g4_kernels *kernels(void);

int g4_type_can_dequantize(uint32_t type) {
    return g4_type_supported(type) || type == G4_TYPE_Q8_1 || type == G4_TYPE_Q8_K;
}

int g4_type_can_quantize(uint32_t type) {
    switch (type) {
    case G4_TYPE_F32: case G4_TYPE_F16: case G4_TYPE_BF16: case G4_TYPE_Q8_0: case G4_TYPE_Q4_0:
    case G4_TYPE_Q4_1: case G4_TYPE_Q5_0: case G4_TYPE_Q5_1: case G4_TYPE_Q8_1: case G4_TYPE_Q8_K:
        return 1;
    }
    return 0;
}

void g4_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n) {
    switch (type) {
    case G4_TYPE_F32: memmove(dst, src, (size_t)n * sizeof(float)); return;
    case G4_TYPE_F16: {
        const uint8_t *p = src;           /* may be unaligned inside a mapping */
        for (int64_t i = 0; i < n; i++) { g4_fp16 h; memcpy(&h, p + 2 * i, 2); dst[i] = g4_fp16_to_fp32(h); }
        return;
    }
    case G4_TYPE_BF16: {
        const uint8_t *p = src;
        for (int64_t i = 0; i < n; i++) { g4_bf16 h; memcpy(&h, p + 2 * i, 2); dst[i] = g4_bf16_to_fp32(h); }
        return;
    }
    case G4_TYPE_Q8_0: g4_dequantize_row_q8_0(src, dst, n); return;
    case G4_TYPE_Q4_0: g4_dequantize_row_q4_0(src, dst, n); return;
    case G4_TYPE_Q4_1: g4_dequantize_row_q4_1(src, dst, n); return;
    case G4_TYPE_Q5_0: g4_dequantize_row_q5_0(src, dst, n); return;
    case G4_TYPE_Q5_1: g4_dequantize_row_q5_1(src, dst, n); return;
    case G4_TYPE_Q8_1: g4_dequantize_row_q8_1(src, dst, n); return;
    case G4_TYPE_Q4_K: g4_dequantize_row_q4_K(src, dst, n); return;
    case G4_TYPE_Q5_K: g4_dequantize_row_q5_K(src, dst, n); return;
    case G4_TYPE_Q6_K: g4_dequantize_row_q6_K(src, dst, n); return;
    case G4_TYPE_Q8_K: g4_dequantize_row_q8_K(src, dst, n); return;
    case G4_TYPE_IQ4_NL: g4_dequantize_row_iq4_nl(src, dst, n); return;
    case G4_TYPE_Q2_K: case G4_TYPE_Q3_K: case G4_TYPE_IQ4_XS: case G4_TYPE_IQ3_XXS: case G4_TYPE_IQ3_S:
    case G4_TYPE_IQ2_XXS: case G4_TYPE_IQ2_XS: case G4_TYPE_IQ2_S: case G4_TYPE_IQ1_S: case G4_TYPE_IQ1_M:
        g4_dequantize_row_kq(type, src, dst, n); return;
    default:
        for (int64_t i = 0; i < n; i++) dst[i] = NAN;
    }
}

int g4_quantize_row(uint32_t type, const float *src, void *dst, int64_t n) {
    size_t bs = g4_blck_size(type);
    if (!g4_type_can_quantize(type) || n < 0 || n % (int64_t)bs) return 0;
    switch (type) {
    case G4_TYPE_F32: memmove(dst, src, (size_t)n * sizeof(float)); return 1;
    case G4_TYPE_F16:
        if (((uintptr_t)dst & 1) == 0) { kernels()->fp32_to_fp16(src, dst, n); return 1; }
        for (int64_t i = 0; i < n; i++) { g4_fp16 h = g4_fp32_to_fp16(src[i]); memcpy((uint8_t *)dst + 2 * i, &h, 2); }
        return 1;
    case G4_TYPE_BF16: {
        uint8_t *p = dst;
        for (int64_t i = 0; i < n; i++) { g4_bf16 h = g4_fp32_to_bf16(src[i]); memcpy(p + 2 * i, &h, 2); }
        return 1;
    }
    case G4_TYPE_Q8_0: kernels()->quantize_q8_0(src, dst, n); return 1;
    case G4_TYPE_Q8_K: kernels()->quantize_q8_K(src, dst, n); return 1;
    case G4_TYPE_Q4_0: g4_quantize_row_q4_0(src, dst, n); return 1;
    case G4_TYPE_Q4_1: g4_quantize_row_q4_1(src, dst, n); return 1;
    case G4_TYPE_Q5_0: g4_quantize_row_q5_0(src, dst, n); return 1;
    case G4_TYPE_Q5_1: g4_quantize_row_q5_1(src, dst, n); return 1;
    case G4_TYPE_Q8_1: g4_quantize_row_q8_1(src, dst, n); return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * The scalar kernel table: the references behind the kernel interface. It is
 * the "scalar" ISA and fills every entry another ISA leaves NULL.
 * ------------------------------------------------------------------------- */

#define SCALAR_GEMM(name, wt, xt, dot)                                                       \
    static void gemm_##name##_scalar(int64_t n, const uint8_t *w, size_t ws, int64_t nr,     \
                                     const uint8_t *x, size_t xs, int64_t nt, float *y,      \
                                     int64_t ldy) {                                         \
        for (int64_t t = 0; t < nt; t++)                                                     \
            for (int64_t r = 0; r < nr; r++)                                                 \
                y[t * ldy + r] = dot(n, (const wt *)(w + (size_t)r * ws), (const xt *)(x + (size_t)t * xs)); \
    }
SCALAR_GEMM(f32, float, float, g4_vec_dot_f32)
SCALAR_GEMM(f16, g4_fp16, float, g4_vec_dot_f16_f32)
SCALAR_GEMM(bf16, g4_bf16, float, g4_vec_dot_bf16_f32)
SCALAR_GEMM(q8_0, block_q8_0, block_q8_0, g4_vec_dot_q8_0_q8_0)
SCALAR_GEMM(q4_0, block_q4_0, block_q8_0, g4_vec_dot_q4_0_q8_0)
SCALAR_GEMM(q4_1, block_q4_1, block_q8_1, g4_vec_dot_q4_1_q8_1)
SCALAR_GEMM(q5_0, block_q5_0, block_q8_0, g4_vec_dot_q5_0_q8_0)
SCALAR_GEMM(q5_1, block_q5_1, block_q8_1, g4_vec_dot_q5_1_q8_1)
SCALAR_GEMM(q4_K, block_q4_K, block_q8_K, g4_vec_dot_q4_K_q8_K)
SCALAR_GEMM(q5_K, block_q5_K, block_q8_K, g4_vec_dot_q5_K_q8_K)
SCALAR_GEMM(q6_K, block_q6_K, block_q8_K, g4_vec_dot_q6_K_q8_K)
SCALAR_GEMM(iq4_nl, block_iq4_nl, block_q8_0, g4_vec_dot_iq4_nl_q8_0)
KQ_GEMM_ALL(scalar, g4_kq_dot_ref)

#define SCALAR_GEMM_X8(name, type)                                                           \
    static void gemm_x8_##name##_scalar(int64_t n, const uint8_t *w, size_t ws, int64_t nr,  \
                                        const uint8_t *x, size_t xs, int64_t nt, float *y,   \
                                        int64_t ldy) {                                      \
        (void)ws;                                                                            \
        g4_gemm_x8_scalar(type, n, w, nr, x, xs, nt, y, ldy);                                \
    }
SCALAR_GEMM_X8(q4_0, G4_TYPE_Q4_0)
SCALAR_GEMM_X8(q8_0, G4_TYPE_Q8_0)
SCALAR_GEMM_X8(q4_K, G4_TYPE_Q4_K)
SCALAR_GEMM_X8(q6_K, G4_TYPE_Q6_K)
SCALAR_GEMM_X8(q5_0, G4_TYPE_Q5_0)
SCALAR_GEMM_X8(q5_K, G4_TYPE_Q5_K)

static float dot_f32_scalar(int64_t n, const float *a, const float *b) { return g4_vec_dot_f32(n, a, b); }
static float dot_f16_f32_scalar(int64_t n, const g4_fp16 *a, const float *b) { return g4_vec_dot_f16_f32(n, a, b); }
static void axpy_f16_scalar(int64_t n, float a, const g4_fp16 *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += a * g4_fp16_to_fp32(x[i]);
}
static void axpy_f32_scalar(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}
/* the row helpers, by the single-row helpers of the same table */
static void dot_f16_rows_scalar(int64_t n, int64_t dim, const g4_fp16 *K, int64_t ldk, const float *q, float *out) {
    for (int64_t p = 0; p < n; p++) out[p] = g4_vec_dot_f16_f32(dim, K + p * ldk, q);
}
static void wsum_f16_rows_scalar(int64_t n, int64_t dim, const g4_fp16 *V, int64_t ldv, const float *w, float *out) {
    memset(out, 0, sizeof(float) * (size_t)dim);
    for (int64_t p = 0; p < n; p++) axpy_f16_scalar(dim, w[p], V + p * ldv, out);
}
static void dot_f32_rows_scalar(int64_t n, int64_t dim, const float *K, int64_t ldk, const float *q, float *out) {
    for (int64_t p = 0; p < n; p++) out[p] = g4_vec_dot_f32(dim, K + p * ldk, q);
}
static void wsum_f32_rows_scalar(int64_t n, int64_t dim, const float *V, int64_t ldv, const float *w, float *out) {
    memset(out, 0, sizeof(float) * (size_t)dim);
    for (int64_t p = 0; p < n; p++) axpy_f32_scalar(dim, w[p], V + p * ldv, out);
}
static void fp32_to_fp16_scalar(const float *x, g4_fp16 *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g4_fp32_to_fp16(x[i]);
}
static void fp16_to_fp32_scalar(const g4_fp16 *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g4_fp16_to_fp32(x[i]);
}

static const g4_kernels kernels_scalar = {
    .isa = G4_ISA_SCALAR,
    .quantize_q8_0 = g4_quantize_row_q8_0,
    .quantize_q8_K = g4_quantize_row_q8_K,
    .gemm = {
        [G4_TYPE_F32] = gemm_f32_scalar, [G4_TYPE_F16] = gemm_f16_scalar, [G4_TYPE_BF16] = gemm_bf16_scalar,
        [G4_TYPE_Q8_0] = gemm_q8_0_scalar, [G4_TYPE_Q4_0] = gemm_q4_0_scalar, [G4_TYPE_Q4_1] = gemm_q4_1_scalar,
        [G4_TYPE_Q5_0] = gemm_q5_0_scalar, [G4_TYPE_Q5_1] = gemm_q5_1_scalar, [G4_TYPE_Q4_K] = gemm_q4_K_scalar,
        [G4_TYPE_Q5_K] = gemm_q5_K_scalar, [G4_TYPE_Q6_K] = gemm_q6_K_scalar,
        [G4_TYPE_IQ4_NL] = gemm_iq4_nl_scalar, KQ_GEMM_ENTRIES(scalar),
    },
    .gemm_x8 = {
        [G4_TYPE_Q4_0] = gemm_x8_q4_0_scalar, [G4_TYPE_Q8_0] = gemm_x8_q8_0_scalar,
        [G4_TYPE_Q4_K] = gemm_x8_q4_K_scalar, [G4_TYPE_Q6_K] = gemm_x8_q6_K_scalar,
        [G4_TYPE_Q5_0] = gemm_x8_q5_0_scalar, [G4_TYPE_Q5_K] = gemm_x8_q5_K_scalar,
    },
    .dot_f32 = dot_f32_scalar,
    .dot_f16_f32 = dot_f16_f32_scalar,
    .axpy_f16 = axpy_f16_scalar,
    .axpy_f32 = axpy_f32_scalar,
    .dot_f16_rows = dot_f16_rows_scalar, .wsum_f16_rows = wsum_f16_rows_scalar,
    .dot_f32_rows = dot_f32_rows_scalar, .wsum_f32_rows = wsum_f32_rows_scalar,
    .fp32_to_fp16 = fp32_to_fp16_scalar,
    .fp16_to_fp32 = fp16_to_fp32_scalar,
};

/* ---------------------------------------------------------------------------
 * ISA selection
 *
 * Each available ISA gets a merged table (its entries, the scalar ones where
 * it has none), built once; switching ISA swaps one pointer.
 * ------------------------------------------------------------------------- */

static const char *const ISA_NAMES[G4_ISA_COUNT] = {
    "scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "neon", "neondot",
};

const char *g4_isa_name(int isa) { return isa >= 0 && isa < G4_ISA_COUNT ? ISA_NAMES[isa] : NULL; }

int g4_isa_from_name(const char *name) {
    for (int i = 0; name && i < G4_ISA_COUNT; i++)
        if (!strcmp(name, ISA_NAMES[i])) return i;
    return -1;
}

/* The ISA's table if this build has it (NULL otherwise). */
static const g4_kernels *isa_table(int isa) {
    switch (isa) {
    case G4_ISA_SCALAR: return &kernels_scalar;
#if defined(__x86_64__)
    case G4_ISA_AVX2: return &g4_kernels_avx2;
    case G4_ISA_AVXVNNI: return &g4_kernels_avxvnni;
    case G4_ISA_AVX512: return &g4_kernels_avx512;
    case G4_ISA_AVX512VNNI: return &g4_kernels_avx512vnni;
#endif
#if defined(__aarch64__)
    case G4_ISA_NEON: return &g4_kernels_neon;
    case G4_ISA_NEONDOT: return &g4_kernels_neondot;
#endif
    }
    return NULL;
}

/* What the CPU (and OS: libgcc checks XCR0 for the AVX/AVX-512 state) supports. */
static int cpu_has(int isa) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl");
    switch (isa) {
    case G4_ISA_AVX2: return avx2;
    case G4_ISA_AVXVNNI: return avx2 && __builtin_cpu_supports("avxvnni");
    case G4_ISA_AVX512: return avx512;
    case G4_ISA_AVX512VNNI: return avx512 && __builtin_cpu_supports("avx512vnni");
    }
#elif defined(__aarch64__)
    const unsigned long hw = getauxval(AT_HWCAP);
    switch (isa) {
    case G4_ISA_NEON: return (hw & HWCAP_ASIMD) != 0;
    case G4_ISA_NEONDOT: return (hw & HWCAP_ASIMD) && (hw & HWCAP_ASIMDDP);
    }
#endif
    return isa == G4_ISA_SCALAR;
}

int g4_isa_available(int isa) { return isa_table(isa) != NULL && cpu_has(isa); }

int g4_isa_best(void) {
    /* fastest first: VNNI over plain AVX-512, 512-bit over 256-bit */
    static const int order[] = {G4_ISA_AVX512VNNI, G4_ISA_AVX512, G4_ISA_AVXVNNI, G4_ISA_AVX2,
                                G4_ISA_NEONDOT, G4_ISA_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (g4_isa_available(order[i])) return order[i];
    return G4_ISA_SCALAR;
}

static g4_kernels merged[G4_ISA_COUNT];
static const g4_kernels *active_kernels;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static void merge(int isa) {
    const g4_kernels *t = isa_table(isa), *s = &kernels_scalar;
    g4_kernels *m = &merged[isa];
    *m = *t;
    m->isa = isa;
#define FILL(f) if (!m->f) m->f = s->f
    FILL(quantize_q8_0); FILL(quantize_q8_K); FILL(dot_f32); FILL(dot_f16_f32); FILL(axpy_f16); FILL(axpy_f32);
    FILL(dot_f16_rows); FILL(wsum_f16_rows); FILL(dot_f32_rows); FILL(wsum_f32_rows);
    FILL(fp32_to_fp16); FILL(fp16_to_fp32);
#undef FILL
    for (int ty = 0; ty < G4_TYPE_COUNT; ty++) {
        if (!m->gemm[ty]) m->gemm[ty] = s->gemm[ty];
        if (!m->gemm_x8[ty]) m->gemm_x8[ty] = s->gemm_x8[ty];
    }
}

static void isa_init(void) {
    for (int i = 0; i < G4_ISA_COUNT; i++)
        if (g4_isa_available(i)) merge(i);
    int isa = g4_isa_best();
    const char *env = getenv("GEMMA4STACK_ISA");
    if (env && *env) {
        int want = g4_isa_from_name(env);
        if (want < 0)
            fprintf(stderr, "gemma4stack: GEMMA4STACK_ISA=%s is not one of scalar, avx2, avxvnni, avx512, "
                            "avx512vnni, neon, neondot; using %s\n", env, ISA_NAMES[isa]);
        else if (!g4_isa_available(want))
            fprintf(stderr, "gemma4stack: GEMMA4STACK_ISA=%s is not available on this CPU or build; using %s\n",
                    env, ISA_NAMES[isa]);
        else
            isa = want;
    }
    __atomic_store_n(&active_kernels, &merged[isa], __ATOMIC_RELEASE);
#ifdef G4_HAVE_CBLAS
    /* Threads come from our own pool (csrc/common/threadpool.c); OpenBLAS
       threads under each of ours would oversubscribe the cores. */
    openblas_set_num_threads(1);
#endif
}

static const g4_kernels *kernels(void) {
    const g4_kernels *k = __atomic_load_n(&active_kernels, __ATOMIC_ACQUIRE);
    if (k) return k;
    pthread_once(&isa_once, isa_init);
    return __atomic_load_n(&active_kernels, __ATOMIC_ACQUIRE);
}

int g4_isa_active(void) { return kernels()->isa; }

int g4_quant_set_isa(int isa) {
    kernels();   /* the merged tables exist after the first call */
    if (!g4_isa_available(isa)) return 0;
    __atomic_store_n(&active_kernels, &merged[isa], __ATOMIC_RELEASE);
    return 1;
}

/* ---------------------------------------------------------------------------
 * Matrix-vector and matrix-matrix products (see quant.h for the numerics)
 * ------------------------------------------------------------------------- */

uint32_t g4_vec_dot_type(uint32_t type) {
    switch (type) {
    case G4_TYPE_Q4_0: case G4_TYPE_Q5_0: case G4_TYPE_Q8_0: case G4_TYPE_IQ4_NL: return G4_TYPE_Q8_0;
    case G4_TYPE_Q4_1: case G4_TYPE_Q5_1: return G4_TYPE_Q8_1;
    case G4_TYPE_Q4_K: case G4_TYPE_Q5_K: case G4_TYPE_Q6_K: return G4_TYPE_Q8_K;
    /* as ggml-cpu.c type_traits_cpu[].vec_dot_type for these */
    case G4_TYPE_Q2_K: case G4_TYPE_Q3_K: case G4_TYPE_IQ4_XS: case G4_TYPE_IQ3_XXS: case G4_TYPE_IQ3_S:
    case G4_TYPE_IQ2_XXS: case G4_TYPE_IQ2_XS: case G4_TYPE_IQ2_S: case G4_TYPE_IQ1_S: case G4_TYPE_IQ1_M:
        return G4_TYPE_Q8_K;
    case G4_TYPE_F32: case G4_TYPE_F16: case G4_TYPE_BF16: return G4_TYPE_F32;
    }
    return G4_TYPE_COUNT;
}

/* Activation token rows per call of a gemm kernel: the chunk of quantized
   activations is swept once per tile of weight rows, so it should stay in L2. */
#define MATMUL_X_CHUNK_BYTES (256 * 1024)

void g4_matmul_rows_vq(uint32_t type, const void *W, int64_t cols, const void *xq, size_t x_stride,
                       int64_t nt, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const g4_kernels *k = kernels();
    const size_t ws = g4_row_size(type, cols);
    g4_gemm_fn fn = type < G4_TYPE_COUNT ? k->gemm[type] : NULL;
    if (r1 <= r0 || nt <= 0) return;
    if (!fn || !ws) {
        for (int64_t t = 0; t < nt; t++)
            for (int64_t r = r0; r < r1; r++) Y[t * ldy + r] = NAN;
        return;
    }
    const uint8_t *w = (const uint8_t *)W + (size_t)r0 * ws;
#ifdef G4_HAVE_CBLAS
    if (type == G4_TYPE_F32 && nt >= 4 && k->isa != G4_ISA_SCALAR && x_stride % sizeof(float) == 0) {
        /* Y[t][r] = sum_k X[t][k] W[r][k]: X (nt x cols) times W^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)nt, (blasint)(r1 - r0), (blasint)cols,
                    1.0f, xq, (blasint)(x_stride / sizeof(float)), (const float *)w, (blasint)cols,
                    0.0f, Y + r0, (blasint)ldy);
        return;
    }
#endif
    int64_t chunk = (int64_t)(MATMUL_X_CHUNK_BYTES / (x_stride ? x_stride : 1));
    chunk = chunk < 8 ? 8 : chunk & ~(int64_t)7;
    for (int64_t t0 = 0; t0 < nt; t0 += chunk) {
        int64_t tn = nt - t0 < chunk ? nt - t0 : chunk;
        fn(cols, w, ws, r1 - r0, (const uint8_t *)xq + (size_t)t0 * x_stride, x_stride, tn, Y + t0 * ldy + r0, ldy);
    }
}

int g4_repack_fast(uint32_t type) {
    const g4_kernels *k = kernels();
    if (type >= G4_TYPE_COUNT || !k->gemm_x8[type]) return 0;
    return k->isa == G4_ISA_SCALAR || k->gemm_x8[type] != kernels_scalar.gemm_x8[type];
}

void g4_matmul_rows_x8(uint32_t type, const void *Wp, int64_t cols, const void *xa, size_t x_stride,
                       int64_t nt, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const g4_kernels *k = kernels();
    const size_t gs = g4_row_size(type, cols) * G4_REPACK_ROWS;
    g4_gemm_fn fn = type < G4_TYPE_COUNT ? k->gemm_x8[type] : NULL;
    if (r1 <= r0 || nt <= 0) return;
    if (!fn || !gs || r0 % G4_REPACK_ROWS) {
        for (int64_t t = 0; t < nt; t++)
            for (int64_t r = r0; r < r1; r++) Y[t * ldy + r] = NAN;
        return;
    }
    if (r1 % G4_REPACK_ROWS) {
        /* the matrix's last rows % 8 rows, stored plainly at their own
           offsets; the activation row starts with the plain vec_dot row */
        const int64_t rt = r1 / G4_REPACK_ROWS * G4_REPACK_ROWS > r0 ? r1 / G4_REPACK_ROWS * G4_REPACK_ROWS : r0;
        g4_matmul_rows_vq(type, Wp, cols, xa, x_stride, nt, Y, ldy, rt, r1);
        if (rt == r0) return;
        r1 = rt;
    }
    const uint8_t *w = (const uint8_t *)Wp + (size_t)(r0 / G4_REPACK_ROWS) * gs;
    int64_t chunk = (int64_t)(MATMUL_X_CHUNK_BYTES / (x_stride ? x_stride : 1));
    chunk = chunk < 8 ? 8 : chunk & ~(int64_t)7;
    for (int64_t t0 = 0; t0 < nt; t0 += chunk) {
        int64_t tn = nt - t0 < chunk ? nt - t0 : chunk;
        fn(cols, w, gs, r1 - r0, (const uint8_t *)xa + (size_t)t0 * x_stride, x_stride, tn, Y + t0 * ldy + r0, ldy);
    }
}

void g4_matvec_rows_vq(uint32_t type, const void *W, int64_t cols,
                       const void *xq, float *y, int64_t r0, int64_t r1) {
    g4_matmul_rows_vq(type, W, cols, xq, g4_row_size(g4_vec_dot_type(type), cols), 1, y, 0, r0, r1);
}

/* Reference partial dot of nb weight blocks with activation blocks, from acc. */
static float ref_dot_acc(uint32_t type, float acc, int64_t nb, const void *w, const void *x) {
    switch (type) {
    case G4_TYPE_Q8_0: return g4_ref_dot_q8_0_q8_0_acc(acc, nb, w, x);
    case G4_TYPE_Q4_0: return g4_ref_dot_q4_0_q8_0_acc(acc, nb, w, x);
    case G4_TYPE_Q4_1: return g4_ref_dot_q4_1_q8_1_acc(acc, nb, w, x);
    case G4_TYPE_Q5_0: return g4_ref_dot_q5_0_q8_0_acc(acc, nb, w, x);
    case G4_TYPE_Q5_1: return g4_ref_dot_q5_1_q8_1_acc(acc, nb, w, x);
    case G4_TYPE_Q4_K: return g4_ref_dot_q4_K_q8_K_acc(acc, nb, w, x);
    case G4_TYPE_Q5_K: return g4_ref_dot_q5_K_q8_K_acc(acc, nb, w, x);
    case G4_TYPE_Q6_K: return g4_ref_dot_q6_K_q8_K_acc(acc, nb, w, x);
    case G4_TYPE_IQ4_NL: return g4_ref_dot_iq4_nl_q8_0_acc(acc, nb, w, x);
    }
    if (g4_kq_decoder(type)) return g4_ref_dot_kq_acc(type, acc, nb, w, x);
    return NAN;
}

/* Elements of x quantized at a time on the stack (8192 -> 256 Q8_0 blocks,
   8.5 KiB, or 32 Q8_K blocks, 9.1 KiB). */
#define MATVEC_CHUNK 8192

void g4_matvec_rows(uint32_t type, const void *W, int64_t cols,
                    const float *x, float *y, int64_t r0, int64_t r1) {
    const uint32_t vdt = g4_vec_dot_type(type);
    if (vdt == G4_TYPE_F32) {   /* float weights: x is used as is */
        const size_t stride = g4_row_size(type, cols);
        for (int64_t r = r0; r < r1; r++) {
            const void *row = (const uint8_t *)W + (size_t)r * stride;
            y[r] = type == G4_TYPE_F32 ? g4_vec_dot_f32(cols, row, x)
                 : type == G4_TYPE_F16 ? g4_vec_dot_f16_f32(cols, row, x) : g4_vec_dot_bf16_f32(cols, row, x);
        }
        return;
    }
    if (vdt == G4_TYPE_COUNT || !g4_row_size(type, cols)) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return;
    }
    /* Quantize x chunk by chunk with the reference quantizer and carry each
       row's running sum across chunks in y[r]; block order and float additions
       are those of one whole-row reference vec_dot, bit for bit. */
    const size_t stride = g4_row_size(type, cols), wblock = g4_type_size(type);
    const int64_t bs = (int64_t)g4_blck_size(type);
    _Alignas(64) uint8_t xq[MATVEC_CHUNK / QK_K * sizeof(block_q8_K) + MATVEC_CHUNK / QK8_1 * sizeof(block_q8_1)];
    for (int64_t r = r0; r < r1; r++) y[r] = 0.0f;
    for (int64_t c0 = 0; c0 < cols; c0 += MATVEC_CHUNK) {
        const int64_t nc = cols - c0 < MATVEC_CHUNK ? cols - c0 : MATVEC_CHUNK;
        switch (vdt) {
        case G4_TYPE_Q8_0: g4_quantize_row_q8_0(x + c0, (block_q8_0 *)xq, nc); break;
        case G4_TYPE_Q8_1: g4_quantize_row_q8_1(x + c0, (block_q8_1 *)xq, nc); break;
        case G4_TYPE_Q8_K: g4_quantize_row_q8_K(x + c0, (block_q8_K *)xq, nc); break;
        }
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *row = (const uint8_t *)W + (size_t)r * stride + (size_t)(c0 / bs) * wblock;
            y[r] = ref_dot_acc(type, y[r], nc / bs, row, xq);
        }
    }
}

/* ---------------------------------------------------------------------------
 * Float helpers (attention over an F16 KV cache)
 * ------------------------------------------------------------------------- */

float g4_dot_f32(int64_t n, const float *a, const float *b) { return kernels()->dot_f32(n, a, b); }
float g4_dot_f16_f32(int64_t n, const g4_fp16 *a, const float *b) { return kernels()->dot_f16_f32(n, a, b); }
void g4_axpy_f16(int64_t n, float a, const g4_fp16 *x, float *y) { kernels()->axpy_f16(n, a, x, y); }
void g4_axpy_f32(int64_t n, float a, const float *x, float *y) { kernels()->axpy_f32(n, a, x, y); }
void g4_dot_f16_rows(int64_t n, int64_t dim, const g4_fp16 *K, int64_t ldk, const float *q, float *out) {
    kernels()->dot_f16_rows(n, dim, K, ldk, q, out);
}
void g4_wsum_f16_rows(int64_t n, int64_t dim, const g4_fp16 *V, int64_t ldv, const float *w, float *out) {
    kernels()->wsum_f16_rows(n, dim, V, ldv, w, out);
}
void g4_dot_f32_rows(int64_t n, int64_t dim, const float *K, int64_t ldk, const float *q, float *out) {
    kernels()->dot_f32_rows(n, dim, K, ldk, q, out);
}
void g4_wsum_f32_rows(int64_t n, int64_t dim, const float *V, int64_t ldv, const float *w, float *out) {
    kernels()->wsum_f32_rows(n, dim, V, ldv, w, out);
}
void g4_fp32_to_fp16_row(const float *x, g4_fp16 *y, int64_t n) { kernels()->fp32_to_fp16(x, y, n); }
void g4_fp16_to_fp32_row(const g4_fp16 *x, float *y, int64_t n) { kernels()->fp16_to_fp32(x, y, n); }
