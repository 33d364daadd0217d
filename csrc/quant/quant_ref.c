/* quant_ref.c - scalar reference kernels for Q8_0, Q4_0 and the float types.
 *
 * These are the test oracle for the vectorized kernels: plain loops, one
 * block at a time, with the layouts and rounding of ggml-quants.c
 * (quantize_row_q8_0_ref, quantize_row_q4_0_ref, dequantize_row_*) and the
 * generic dot products of ggml-cpu/quants.c (ggml_vec_dot_q4_0_q8_0_generic,
 * ggml_vec_dot_q8_0_q8_0_generic). Block pointers point into a GGUF mapping
 * (2-byte aligned at best), so the fp16 scale is read with memcpy.
 */
#include "quant.h"

#include <math.h>

/* Reference results must not depend on whether the compiler fuses a*b+c into
   an FMA (GCC does by default when the target has FMA): ggml's reference
   rounds the product and the sum separately. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <string.h>

static inline float load_d(const g4_fp16 *p) { g4_fp16 h; memcpy(&h, p, 2); return g4_fp16_to_fp32(h); }
static inline void store_d(g4_fp16 *p, float d) { g4_fp16 h = g4_fp32_to_fp16(d); memcpy(p, &h, 2); }

/* roundf(v) as an int8 value; NaN (only from non-finite input) becomes 0
   instead of an undefined float->int conversion. */
static inline int8_t round_i8(float v) { v = roundf(v); return v == v ? (int8_t)v : 0; }

/* ---------------------------------------------------------------------------
 * Q8_0: 32 int8 with one fp16 scale d = amax / 127, x ~= d * q.
 * ------------------------------------------------------------------------- */

void g4_quantize_row_q8_0(const float *x, block_q8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;   /* scale with the fp32 d, store fp16 d: as ggml */
        store_d(&y[b].d, d);
        for (int j = 0; j < QK8_0; j++) y[b].qs[j] = round_i8(x[j] * id);
    }
}

void g4_dequantize_row_q8_0(const block_q8_0 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK8_0; b++) {
        const float d = load_d(&x[b].d);
        for (int j = 0; j < QK8_0; j++) y[b * QK8_0 + j] = (float)x[b].qs[j] * d;
    }
}

/* ---------------------------------------------------------------------------
 * Q4_0: 32 4-bit values q in [0,15] with fp16 scale d, x ~= d * (q - 8).
 * d = max / -8 where max is the element of largest magnitude (sign kept), so
 * that element maps exactly to q = 0 and the full range [-8, 7] is used.
 * Byte j holds element j in the low nibble and element j + 16 in the high.
 * ------------------------------------------------------------------------- */

void g4_quantize_row_q4_0(const float *x, block_q4_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_0; b++, x += QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++)
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }   /* first of ties */
        const float d = max / -8.0f;
        const float id = d ? 1.0f / d : 0.0f;
        store_d(&y[b].d, d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            /* truncation of v + 8.5 is round-half-up of v + 8; clamp 16 -> 15 */
            float v0 = x[j] * id, v1 = x[j + QK4_0 / 2] * id;
            v0 += 8.5f; v1 += 8.5f;
            int q0 = v0 == v0 ? (int)(int8_t)v0 : 8, q1 = v1 == v1 ? (int)(int8_t)v1 : 8;
            q0 = q0 > 15 ? 15 : q0 < 0 ? 0 : q0;
            q1 = q1 > 15 ? 15 : q1 < 0 ? 0 : q1;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void g4_dequantize_row_q4_0(const block_q4_0 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_0; b++) {
        const float d = load_d(&x[b].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[b * QK4_0 + j]             = (float)((x[b].qs[j] & 0x0f) - 8) * d;
            y[b * QK4_0 + j + QK4_0 / 2] = (float)((x[b].qs[j] >> 4) - 8) * d;
        }
    }
}

/* ---------------------------------------------------------------------------
 * Dot products. Quantized: exact int32 sum per block, then
 * acc += sumi * (d_w * d_x) in float, blocks in order - ggml's generic order.
 * ------------------------------------------------------------------------- */

float g4_ref_dot_q8_0_q8_0_acc(float acc, int64_t nb, const block_q8_0 *w, const block_q8_0 *x) {
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += (int32_t)w[b].qs[j] * (int32_t)x[b].qs[j];
        acc += (float)sumi * (load_d(&w[b].d) * load_d(&x[b].d));
    }
    return acc;
}

float g4_ref_dot_q4_0_q8_0_acc(float acc, int64_t nb, const block_q4_0 *w, const block_q8_0 *x) {
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            sumi += ((w[b].qs[j] & 0x0f) - 8) * (int32_t)x[b].qs[j];
            sumi += ((w[b].qs[j] >> 4) - 8) * (int32_t)x[b].qs[j + QK4_0 / 2];
        }
        acc += (float)sumi * (load_d(&w[b].d) * load_d(&x[b].d));
    }
    return acc;
}

float g4_vec_dot_q8_0_q8_0(int64_t n, const block_q8_0 *w, const block_q8_0 *x) {
    return g4_ref_dot_q8_0_q8_0_acc(0.0f, n / QK8_0, w, x);
}

float g4_vec_dot_q4_0_q8_0(int64_t n, const block_q4_0 *w, const block_q8_0 *x) {
    return g4_ref_dot_q4_0_q8_0_acc(0.0f, n / QK4_0, w, x);
}

/* Float weights: products summed in double (ggml_float in ggml's scalar
   ggml_vec_dot_f32/f16), so the reference is more accurate than any SIMD path. */

float g4_vec_dot_f32(int64_t n, const float *w, const float *x) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)w[i] * (double)x[i];
    return (float)s;
}

float g4_vec_dot_f16_f32(int64_t n, const g4_fp16 *w, const float *x) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        g4_fp16 h; memcpy(&h, w + i, 2);
        s += (double)g4_fp16_to_fp32(h) * (double)x[i];
    }
    return (float)s;
}

float g4_vec_dot_bf16_f32(int64_t n, const g4_bf16 *w, const float *x) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        g4_bf16 h; memcpy(&h, w + i, 2);
        s += (double)g4_bf16_to_fp32(h) * (double)x[i];
    }
    return (float)s;
}
