/* quant_ref.c - scalar reference kernels for every compute type: Q8_0, Q4_0,
 * Q4_1, Q5_0, Q5_1, the K-quants Q4_K, Q5_K, Q6_K, their activation types
 * Q8_1 and Q8_K, and the float types.
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

/* ---------------------------------------------------------------------------
 * Q4_1 / Q5_0 / Q5_1 / Q8_1 (ggml-quants.c quantize_row_*_ref, dequantize_row_*)
 * ------------------------------------------------------------------------- */

/* Truncation of v + 0.5 (v >= -0.5) is round-half-up; NaN maps to `nan_q`. */
static inline int trunc_q(float v, int nan_q, int hi) {
    int q = v == v ? (int)(int8_t)v : nan_q;
    return q > hi ? hi : q < 0 ? 0 : q;
}

static void min_max(const float *x, int n, float *mn, float *mx) {
    float lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < n; j++) { if (x[j] < lo) lo = x[j]; if (x[j] > hi) hi = x[j]; }
    *mn = lo; *mx = hi;
}

void g4_quantize_row_q4_1(const float *x, block_q4_1 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_1; b++, x += QK4_1) {
        float mn, mx;
        min_max(x, QK4_1, &mn, &mx);
        const float d = (mx - mn) / 15.0f, id = d ? 1.0f / d : 0.0f;
        store_d(&y[b].d, d);
        store_d(&y[b].m, mn);
        for (int j = 0; j < QK4_1 / 2; j++) {
            int q0 = trunc_q((x[j] - mn) * id + 0.5f, 0, 15);
            int q1 = trunc_q((x[j + QK4_1 / 2] - mn) * id + 0.5f, 0, 15);
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* Q5_0 and Q5_1 share the packing: low nibbles as Q4_x, bit 4 into qh. */
static void pack_q5(const int q[32], uint8_t qs[16], uint8_t qh_bytes[4]) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    for (int k = 0; k < 4; k++) qh_bytes[k] = (uint8_t)(qh >> (8 * k));   /* little endian */
}

static inline uint32_t load_qh(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

void g4_quantize_row_q5_0(const float *x, block_q5_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK5_0; b++, x += QK5_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK5_0; j++)
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        const float d = max / -16.0f, id = d ? 1.0f / d : 0.0f;
        store_d(&y[b].d, d);
        int q[32];
        for (int j = 0; j < 32; j++) q[j] = trunc_q(x[j] * id + 16.5f, 16, 31);
        pack_q5(q, y[b].qs, y[b].qh);
    }
}

void g4_quantize_row_q5_1(const float *x, block_q5_1 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK5_1; b++, x += QK5_1) {
        float mn, mx;
        min_max(x, QK5_1, &mn, &mx);
        const float d = (mx - mn) / 31.0f, id = d ? 1.0f / d : 0.0f;
        store_d(&y[b].d, d);
        store_d(&y[b].m, mn);
        int q[32];
        for (int j = 0; j < 32; j++) q[j] = trunc_q((x[j] - mn) * id + 0.5f, 0, 31);
        pack_q5(q, y[b].qs, y[b].qh);
    }
}

void g4_quantize_row_q8_1(const float *x, block_q8_1 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK8_1; b++, x += QK8_1) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) { y[b].qs[j] = round_i8(x[j] * id); sum += y[b].qs[j]; }
        store_d(&y[b].d, d);
        store_d(&y[b].s, (float)sum * d);   /* from the fp32 d, as ggml */
    }
}

void g4_dequantize_row_q4_1(const block_q4_1 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_1; b++, y += QK4_1) {
        const float d = load_d(&x[b].d), m = load_d(&x[b].m);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(x[b].qs[j] & 0x0f) * d + m;
            y[j + 16] = (float)(x[b].qs[j] >> 4) * d + m;
        }
    }
}

void g4_dequantize_row_q5_0(const block_q5_0 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK5_0; b++, y += QK5_0) {
        const float d = load_d(&x[b].d);
        const uint32_t qh = load_qh(x[b].qh);
        for (int j = 0; j < 16; j++) {
            int q0 = (x[b].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
            int q1 = (x[b].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (float)(q0 - 16) * d;
            y[j + 16] = (float)(q1 - 16) * d;
        }
    }
}

void g4_dequantize_row_q5_1(const block_q5_1 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK5_1; b++, y += QK5_1) {
        const float d = load_d(&x[b].d), m = load_d(&x[b].m);
        const uint32_t qh = load_qh(x[b].qh);
        for (int j = 0; j < 16; j++) {
            int q0 = (x[b].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
            int q1 = (x[b].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (float)q0 * d + m;
            y[j + 16] = (float)q1 * d + m;
        }
    }
}

void g4_dequantize_row_q8_1(const block_q8_1 *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK8_1; b++) {
        const float d = load_d(&x[b].d);
        for (int j = 0; j < QK8_1; j++) y[b * QK8_1 + j] = (float)x[b].qs[j] * d;
    }
}

/* ---------------------------------------------------------------------------
 * K-quants (ggml-quants.c dequantize_row_q{4,5,6}_K, quantize_row_q8_K_ref)
 * ------------------------------------------------------------------------- */

/* Scale byte layout, 6 bits each, j = sub-block 0..7 (get_scale_min_k4):
 *   bytes 0-3:  sc[0..3] in bits 0-5, bits 6-7 = top bits of sc[4..7]
 *   bytes 4-7:  m[0..3]  in bits 0-5, bits 6-7 = top bits of m[4..7]
 *   bytes 8-11: low nibble = low bits of sc[4..7], high nibble = of m[4..7] */
void g4_q4_K_scales(const uint8_t s[K_SCALE_SIZE], uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0f) | ((s[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

void g4_dequantize_row_q4_K(const block_q4_K *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = load_d(&x[b].d), dmin = load_d(&x[b].dmin);
        uint8_t sc[8], m[8];
        g4_q4_K_scales(x[b].scales, sc, m);
        const uint8_t *q = x[b].qs;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            const float d1 = d * sc[2 * c], m1 = dmin * m[2 * c];
            const float d2 = d * sc[2 * c + 1], m2 = dmin * m[2 * c + 1];
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)(q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++) y[l + 32] = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

void g4_dequantize_row_q5_K(const block_q5_K *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = load_d(&x[b].d), dmin = load_d(&x[b].dmin);
        uint8_t sc[8], m[8];
        g4_q4_K_scales(x[b].scales, sc, m);
        const uint8_t *q = x[b].qs, *qh = x[b].qh;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            const float d1 = d * sc[2 * c], m1 = dmin * m[2 * c];
            const float d2 = d * sc[2 * c + 1], m2 = dmin * m[2 * c + 1];
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)((q[l] & 0x0f) | ((qh[l] >> (2 * c)) & 1) << 4) - m1;
            for (int l = 0; l < 32; l++) y[l + 32] = d2 * (float)((q[l] >> 4) | ((qh[l] >> (2 * c + 1)) & 1) << 4) - m2;
        }
    }
}

/* Element e (0..127) of half h of a Q6_K block, as 0..63 (subtract 32 for the value). */
static inline int q6_K_at(const block_q6_K *x, int h, int e) {
    const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
    int lo = e < 64 ? ql[e] & 0x0f : ql[e - 64] >> 4;
    int hi = (qh[e % 32] >> (2 * (e / 32))) & 3;
    return lo | hi << 4;
}

void g4_dequantize_row_q6_K(const block_q6_K *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = load_d(&x[b].d);
        for (int h = 0; h < 2; h++, y += 128)
            for (int e = 0; e < 128; e++)
                y[e] = d * (float)x[b].scales[8 * h + e / 16] * (float)(q6_K_at(&x[b], h, e) - 32);
    }
}

void g4_dequantize_row_q8_K(const block_q8_K *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++)
        for (int j = 0; j < QK_K; j++) y[b * QK_K + j] = x[b].d * (float)x[b].qs[j];
}

/* Round half to even, as ggml's nearest_int (the 1.5 * 2^23 trick) for the
   |v| <= 127.5 that occur here; NaN becomes 0. */
static inline int nearest_int(float v) { return v == v ? (int)lrintf(v) : 0; }

void g4_quantize_row_q8_K(const float *x, block_q8_K *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }   /* first of ties */
        if (!amax) {   /* ggml leaves bsums unset here; zero is what they must be */
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            int v = nearest_int(iscale * x[j]);
            y[b].qs[j] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
        }
        for (int s = 0; s < QK_K / 16; s++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += y[b].qs[16 * s + j];
            y[b].bsums[s] = (int16_t)sum;
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---------------------------------------------------------------------------
 * Dot products of the other types (see quant.h for the formulas)
 * ------------------------------------------------------------------------- */

float g4_ref_dot_q4_1_q8_1_acc(float acc, int64_t nb, const block_q4_1 *w, const block_q8_1 *x) {
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += (w[b].qs[j] & 0x0f) * x[b].qs[j] + (w[b].qs[j] >> 4) * x[b].qs[j + 16];
        acc += (float)sumi * (load_d(&w[b].d) * load_d(&x[b].d)) + load_d(&w[b].m) * load_d(&x[b].s);
    }
    return acc;
}

float g4_ref_dot_q5_1_q8_1_acc(float acc, int64_t nb, const block_q5_1 *w, const block_q8_1 *x) {
    for (int64_t b = 0; b < nb; b++) {
        const uint32_t qh = load_qh(w[b].qh);
        int32_t sumi = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (w[b].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
            int q1 = (w[b].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            sumi += q0 * x[b].qs[j] + q1 * x[b].qs[j + 16];
        }
        acc += (float)sumi * (load_d(&w[b].d) * load_d(&x[b].d)) + load_d(&w[b].m) * load_d(&x[b].s);
    }
    return acc;
}

float g4_ref_dot_q5_0_q8_0_acc(float acc, int64_t nb, const block_q5_0 *w, const block_q8_0 *x) {
    for (int64_t b = 0; b < nb; b++) {
        const uint32_t qh = load_qh(w[b].qh);
        int32_t sumi = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = ((w[b].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4) - 16;
            int q1 = ((w[b].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - 16;
            sumi += q0 * x[b].qs[j] + q1 * x[b].qs[j + 16];
        }
        acc += (float)sumi * (load_d(&w[b].d) * load_d(&x[b].d));
    }
    return acc;
}

float g4_ref_dot_q4_K_q8_K_acc(float acc, int64_t nb, const block_q4_K *w, const block_q8_K *x) {
    for (int64_t b = 0; b < nb; b++) {
        uint8_t sc[8], m[8];
        g4_q4_K_scales(w[b].scales, sc, m);
        int32_t sumi = 0, summ = 0;
        for (int c = 0; c < 4; c++) {
            const uint8_t *q = w[b].qs + 32 * c;
            const int8_t *y = x[b].qs + 64 * c;
            int32_t s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) { s1 += (q[l] & 0x0f) * y[l]; s2 += (q[l] >> 4) * y[l + 32]; }
            sumi += sc[2 * c] * s1 + sc[2 * c + 1] * s2;
        }
        for (int j = 0; j < 8; j++) summ += m[j] * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
        acc += (load_d(&w[b].d) * x[b].d) * (float)sumi;
        acc -= (load_d(&w[b].dmin) * x[b].d) * (float)summ;
    }
    return acc;
}

float g4_ref_dot_q5_K_q8_K_acc(float acc, int64_t nb, const block_q5_K *w, const block_q8_K *x) {
    for (int64_t b = 0; b < nb; b++) {
        uint8_t sc[8], m[8];
        g4_q4_K_scales(w[b].scales, sc, m);
        int32_t sumi = 0, summ = 0;
        for (int c = 0; c < 4; c++) {
            const uint8_t *q = w[b].qs + 32 * c, *qh = w[b].qh;
            const int8_t *y = x[b].qs + 64 * c;
            int32_t s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                s1 += ((q[l] & 0x0f) | ((qh[l] >> (2 * c)) & 1) << 4) * y[l];
                s2 += ((q[l] >> 4) | ((qh[l] >> (2 * c + 1)) & 1) << 4) * y[l + 32];
            }
            sumi += sc[2 * c] * s1 + sc[2 * c + 1] * s2;
        }
        for (int j = 0; j < 8; j++) summ += m[j] * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
        acc += (load_d(&w[b].d) * x[b].d) * (float)sumi;
        acc -= (load_d(&w[b].dmin) * x[b].d) * (float)summ;
    }
    return acc;
}

float g4_ref_dot_q6_K_q8_K_acc(float acc, int64_t nb, const block_q6_K *w, const block_q8_K *x) {
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int h = 0; h < 2; h++)
            for (int s = 0; s < 8; s++) {
                int32_t si = 0;
                for (int e = 16 * s; e < 16 * s + 16; e++)
                    si += (q6_K_at(&w[b], h, e) - 32) * x[b].qs[128 * h + e];
                sumi += w[b].scales[8 * h + s] * si;
            }
        acc += (load_d(&w[b].d) * x[b].d) * (float)sumi;
    }
    return acc;
}

float g4_vec_dot_q4_1_q8_1(int64_t n, const block_q4_1 *w, const block_q8_1 *x) { return g4_ref_dot_q4_1_q8_1_acc(0.0f, n / 32, w, x); }
float g4_vec_dot_q5_0_q8_0(int64_t n, const block_q5_0 *w, const block_q8_0 *x) { return g4_ref_dot_q5_0_q8_0_acc(0.0f, n / 32, w, x); }
float g4_vec_dot_q5_1_q8_1(int64_t n, const block_q5_1 *w, const block_q8_1 *x) { return g4_ref_dot_q5_1_q8_1_acc(0.0f, n / 32, w, x); }
float g4_vec_dot_q4_K_q8_K(int64_t n, const block_q4_K *w, const block_q8_K *x) { return g4_ref_dot_q4_K_q8_K_acc(0.0f, n / QK_K, w, x); }
float g4_vec_dot_q5_K_q8_K(int64_t n, const block_q5_K *w, const block_q8_K *x) { return g4_ref_dot_q5_K_q8_K_acc(0.0f, n / QK_K, w, x); }
float g4_vec_dot_q6_K_q8_K(int64_t n, const block_q6_K *w, const block_q8_K *x) { return g4_ref_dot_q6_K_q8_K_acc(0.0f, n / QK_K, w, x); }
