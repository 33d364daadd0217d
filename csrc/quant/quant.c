/* quant.c - the type table, fp16/bf16 conversions and row-level dispatch.
 *
 * Sections: the type table (every ggml_type, so any GGUF's layout is sized
 * right), half-precision conversions, row dequantize/quantize, matvec.
 * The block kernels themselves are in quant_ref.c (scalar references).
 */
#include "quant.h"

#include <math.h>
#include <string.h>

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
    [G4_TYPE_Q4_1]    = {"Q4_1",    32,  20,  0},
    [G4_TYPE_Q5_0]    = {"Q5_0",    32,  22,  0},
    [G4_TYPE_Q5_1]    = {"Q5_1",    32,  24,  0},
    [G4_TYPE_Q8_0]    = {"Q8_0",    32,  34,  1},
    [G4_TYPE_Q8_1]    = {"Q8_1",    32,  36,  0},
    [G4_TYPE_Q2_K]    = {"Q2_K",    256, 84,  0},
    [G4_TYPE_Q3_K]    = {"Q3_K",    256, 110, 0},
    [G4_TYPE_Q4_K]    = {"Q4_K",    256, 144, 0},
    [G4_TYPE_Q5_K]    = {"Q5_K",    256, 176, 0},
    [G4_TYPE_Q6_K]    = {"Q6_K",    256, 210, 0},
    [G4_TYPE_Q8_K]    = {"Q8_K",    256, 292, 0},
    [G4_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66,  0},
    [G4_TYPE_IQ2_XS]  = {"IQ2_XS",  256, 74,  0},
    [G4_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98,  0},
    [G4_TYPE_IQ1_S]   = {"IQ1_S",   256, 50,  0},
    [G4_TYPE_IQ4_NL]  = {"IQ4_NL",  32,  18,  0},
    [G4_TYPE_IQ3_S]   = {"IQ3_S",   256, 110, 0},
    [G4_TYPE_IQ2_S]   = {"IQ2_S",   256, 82,  0},
    [G4_TYPE_IQ4_XS]  = {"IQ4_XS",  256, 136, 0},
    [G4_TYPE_I8]      = {"I8",      1,   1,   0},
    [G4_TYPE_I16]     = {"I16",     1,   2,   0},
    [G4_TYPE_I32]     = {"I32",     1,   4,   0},
    [G4_TYPE_I64]     = {"I64",     1,   8,   0},
    [G4_TYPE_F64]     = {"F64",     1,   8,   0},
    [G4_TYPE_IQ1_M]   = {"IQ1_M",   256, 56,  0},
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
    default:
        for (int64_t i = 0; i < n; i++) dst[i] = NAN;
    }
}

int g4_quantize_row(uint32_t type, const float *src, void *dst, int64_t n) {
    size_t bs = g4_blck_size(type);
    if (!g4_type_supported(type) || n < 0 || n % (int64_t)bs) return 0;
    switch (type) {
    case G4_TYPE_F32: memmove(dst, src, (size_t)n * sizeof(float)); return 1;
    case G4_TYPE_F16: {
        uint8_t *p = dst;
        for (int64_t i = 0; i < n; i++) { g4_fp16 h = g4_fp32_to_fp16(src[i]); memcpy(p + 2 * i, &h, 2); }
        return 1;
    }
    case G4_TYPE_BF16: {
        uint8_t *p = dst;
        for (int64_t i = 0; i < n; i++) { g4_bf16 h = g4_fp32_to_bf16(src[i]); memcpy(p + 2 * i, &h, 2); }
        return 1;
    }
    case G4_TYPE_Q8_0: g4_quantize_row_q8_0(src, dst, n); return 1;
    case G4_TYPE_Q4_0: g4_quantize_row_q4_0(src, dst, n); return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Matrix-vector product over a range of rows (see quant.h for the numerics)
 * ------------------------------------------------------------------------- */

uint32_t g4_vec_dot_type(uint32_t type) {
    switch (type) {
    case G4_TYPE_Q4_0: case G4_TYPE_Q8_0: return G4_TYPE_Q8_0;
    case G4_TYPE_F32: case G4_TYPE_F16: case G4_TYPE_BF16: return G4_TYPE_F32;
    }
    return G4_TYPE_COUNT;
}

/* Partial dots over blocks [0, nb) continuing from `acc` (quant_ref.c). */
float g4_ref_dot_q8_0_q8_0_acc(float acc, int64_t nb, const block_q8_0 *w, const block_q8_0 *x);
float g4_ref_dot_q4_0_q8_0_acc(float acc, int64_t nb, const block_q4_0 *w, const block_q8_0 *x);

void g4_matvec_rows_vq(uint32_t type, const void *W, int64_t cols,
                       const void *xq, float *y, int64_t r0, int64_t r1) {
    const size_t stride = g4_row_size(type, cols);
    const uint8_t *w = W;
    for (int64_t r = r0; r < r1; r++) {
        const void *row = w + (size_t)r * stride;
        switch (type) {
        case G4_TYPE_F32:  y[r] = g4_vec_dot_f32(cols, row, xq); break;
        case G4_TYPE_F16:  y[r] = g4_vec_dot_f16_f32(cols, row, xq); break;
        case G4_TYPE_BF16: y[r] = g4_vec_dot_bf16_f32(cols, row, xq); break;
        case G4_TYPE_Q8_0: y[r] = g4_vec_dot_q8_0_q8_0(cols, row, xq); break;
        case G4_TYPE_Q4_0: y[r] = g4_vec_dot_q4_0_q8_0(cols, row, xq); break;
        default: y[r] = NAN;
        }
    }
}

/* Activation blocks quantized at a time on the stack (256 * 34 = 8.5 KiB). */
#define MATVEC_CHUNK_BLOCKS 256

void g4_matvec_rows(uint32_t type, const void *W, int64_t cols,
                    const float *x, float *y, int64_t r0, int64_t r1) {
    if (g4_vec_dot_type(type) != G4_TYPE_Q8_0) {   /* float weights: x is used as is */
        g4_matvec_rows_vq(type, W, cols, x, y, r0, r1);
        return;
    }
    /* Quantize x chunk by chunk and carry each row's running sum across chunks
       in y[r]; block order and float additions are those of one whole-row
       vec_dot, so the result equals g4_matvec_rows_vq bit for bit. */
    const size_t stride = g4_row_size(type, cols);
    const size_t wblock = g4_type_size(type);
    const int64_t nb = cols / QK8_0;
    block_q8_0 xq[MATVEC_CHUNK_BLOCKS];
    for (int64_t r = r0; r < r1; r++) y[r] = 0.0f;
    for (int64_t b0 = 0; b0 < nb; b0 += MATVEC_CHUNK_BLOCKS) {
        int64_t nbc = nb - b0 < MATVEC_CHUNK_BLOCKS ? nb - b0 : MATVEC_CHUNK_BLOCKS;
        g4_quantize_row_q8_0(x + b0 * QK8_0, xq, nbc * QK8_0);
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *row = (const uint8_t *)W + (size_t)r * stride + (size_t)b0 * wblock;
            y[r] = type == G4_TYPE_Q8_0
                 ? g4_ref_dot_q8_0_q8_0_acc(y[r], nbc, (const block_q8_0 *)row, xq)
                 : g4_ref_dot_q4_0_q8_0_acc(y[r], nbc, (const block_q4_0 *)row, xq);
        }
    }
}
