/* kernels_arm.h - the AArch64 NEON kernels, written once and compiled twice.
 * Included (only) by kernels_neon.c, which defines before including it:
 *
 *   TGT                       attribute for every function (dotprod or none)
 *   SFX(name)                 name##_<isa>
 *   DOT(acc, a, b)            acc + per int32 lane the sum of 4 s8 x s8 products
 *   LDOT(acc, w, x, lane)     acc + per lane r: w[4r..4r+3] . x[4*lane..4*lane+3]
 *
 * NEON multiplies signed by signed, so unlike x86 no offsets are folded:
 * Q4_0 nibbles become q - 8, Q6_K values q - 32, the repacked Q8_0 bytes are
 * flipped back to int8. Every block's int32 sum is exact; per-row kernels
 * then reduce it (addv) and apply the reference's float steps in order, so
 * all quantized kernels here match the scalar references bit for bit (the
 * file is compiled without FMA contraction). The float-weight dots use FMA
 * and differ by rounding.
 */

#ifndef G4_KERNELS_ARM_ONCE
#define INL static inline __attribute__((always_inline)) TGT
#define KRN static TGT
#define UNROLL _Pragma("GCC unroll 16")
enum { AQ4_0, AQ4_1, AQ5_0, AQ5_1, AQ8_0, AQ4_K, AQ5_K, AQ6_K };
enum { AF32, AF16, ABF16 };
#endif

/* ---------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------- */

INL float SFX(f16)(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return g4_fp16_to_fp32(h);
}

INL int8x16_t SFX(ld)(const void *p) { return vld1q_s8((const int8_t *)p); }

/* Bytes 0x10 where bit j of the 16 bits at qh (element j) is set. */
INL int8x16_t SFX(bits16)(uint32_t qh16) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)qh16), vdup_n_u8((uint8_t)(qh16 >> 8)));
    return vreinterpretq_s8_u8(vandq_u8(vtstq_u8(v, vld1q_u8(bit)), vdupq_n_u8(0x10)));
}

/* ---------------------------------------------------------------------------
 * Per-row kernels: one block at a time, int32 block sums, reference float order
 * ------------------------------------------------------------------------- */

INL float SFX(row_dot)(const int kind, int64_t n, const uint8_t *w, const uint8_t *x) {
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int32x4_t z = vdupq_n_s32(0);
    float acc = 0.0f;
    if (kind == AQ4_K || kind == AQ5_K || kind == AQ6_K) {
        for (int64_t b = 0; b < n / QK_K; b++) {
            const block_q8_K *q8 = (const block_q8_K *)x + b;
            if (kind == AQ6_K) {
                const block_q6_K *q6 = (const block_q6_K *)w + b;
                int32_t sumi = 0;
                UNROLL
                for (int h = 0; h < 2; h++) {
                    const uint8x16_t qh0 = vld1q_u8(q6->qh + 32 * h), qh1 = vld1q_u8(q6->qh + 32 * h + 16);
                    UNROLL
                    for (int k = 0; k < 8; k++) {
                        /* 16 elements 16k.. of the half: ql byte (16k) % 64 (+16), nibble k / 4, qh bits 2 (k / 2) */
                        const uint8x16_t l = vld1q_u8(q6->ql + 64 * h + 16 * (k % 4));
                        const uint8x16_t lo = k < 4 ? vandq_u8(l, m4) : vshrq_n_u8(l, 4);
                        const uint8x16_t qh = (k % 2) ? qh1 : qh0;
                        const uint8x16_t hb = vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(4 - 2 * (k / 2)))), vdupq_n_u8(0x30));
                        const int8x16_t q = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, hb)), vdupq_n_s8(32));
                        sumi += q6->scales[8 * h + k] * vaddvq_s32(DOT(z, q, SFX(ld)(q8->qs + 128 * h + 16 * k)));
                    }
                }
                acc += (SFX(f16)((const uint8_t *)&q6->d) * q8->d) * (float)sumi;
                continue;
            }
            const uint8_t *blk = w + (size_t)b * (kind == AQ4_K ? sizeof(block_q4_K) : sizeof(block_q5_K));
            uint8_t sc[8], mn[8];
            g4_q4_K_scales(blk + 4, sc, mn);
            const uint8_t *qs = blk + (kind == AQ4_K ? 16 : 48);
            int32_t sumi = 0, summ = 0;
            UNROLL
            for (int c = 0; c < 4; c++)
                UNROLL
                for (int half = 0; half < 2; half++) {
                    const uint8x16_t v = vld1q_u8(qs + 32 * c + 16 * half);
                    uint8x16_t lo = vandq_u8(v, m4), hi = vshrq_n_u8(v, 4);
                    if (kind == AQ5_K) {
                        const uint8x16_t qh = vld1q_u8(blk + 16 + 16 * half);
                        lo = vorrq_u8(lo, vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(4 - 2 * c))), vdupq_n_u8(0x10)));
                        hi = vorrq_u8(hi, vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(3 - 2 * c))), vdupq_n_u8(0x10)));
                    }
                    const int8_t *xq = q8->qs + 64 * c + 16 * half;
                    sumi += sc[2 * c] * vaddvq_s32(DOT(z, vreinterpretq_s8_u8(lo), SFX(ld)(xq)));
                    sumi += sc[2 * c + 1] * vaddvq_s32(DOT(z, vreinterpretq_s8_u8(hi), SFX(ld)(xq + 32)));
                }
            for (int j = 0; j < 8; j++) summ += mn[j] * (q8->bsums[2 * j] + q8->bsums[2 * j + 1]);
            acc += (SFX(f16)(blk) * q8->d) * (float)sumi;
            acc -= (SFX(f16)(blk + 2) * q8->d) * (float)summ;
        }
        return acc;
    }
    const size_t wbs = kind == AQ4_0 ? 18 : kind == AQ4_1 ? 20 : kind == AQ5_0 ? 22 : kind == AQ5_1 ? 24 : 34;
    const int has_m = kind == AQ4_1 || kind == AQ5_1;
    const size_t xbs = has_m ? sizeof(block_q8_1) : sizeof(block_q8_0);
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *p = w + (size_t)b * wbs, *q = x + (size_t)b * xbs;
        const int8x16_t x0 = SFX(ld)(q + xbs - 32), x1 = SFX(ld)(q + xbs - 16);
        int8x16_t w0, w1;
        if (kind == AQ8_0) {
            w0 = SFX(ld)(p + 2);
            w1 = SFX(ld)(p + 18);
        } else {
            const uint8_t *qs = p + (kind == AQ4_0 ? 2 : kind == AQ4_1 ? 4 : kind == AQ5_0 ? 6 : 8);
            const uint8x16_t v = vld1q_u8(qs);
            w0 = vreinterpretq_s8_u8(vandq_u8(v, m4));
            w1 = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
            if (kind == AQ5_0 || kind == AQ5_1) {
                uint32_t qh;
                memcpy(&qh, p + (kind == AQ5_0 ? 2 : 4), 4);
                w0 = vorrq_s8(w0, SFX(bits16)(qh & 0xffff));
                w1 = vorrq_s8(w1, SFX(bits16)(qh >> 16));
            }
            if (kind == AQ4_0 || kind == AQ5_0) {
                const int8x16_t off = vdupq_n_s8(kind == AQ4_0 ? 8 : 16);
                w0 = vsubq_s8(w0, off);
                w1 = vsubq_s8(w1, off);
            }
        }
        const int32_t sumi = vaddvq_s32(DOT(DOT(z, w0, x0), w1, x1));
        if (has_m) acc += (float)sumi * (SFX(f16)(p) * SFX(f16)(q)) + SFX(f16)(p + 2) * SFX(f16)(q + 2);
        else acc += (float)sumi * (SFX(f16)(p) * SFX(f16)(q));
    }
    return acc;
}

#ifndef G4_KERNELS_ARM_ONCE
#define ARM_GEMM(fname, kind, dotfn)                                                                  \
    KRN void fname(int64_t n, const uint8_t *w, size_t ws, int64_t nr, const uint8_t *x, size_t xs,   \
                   int64_t nt, float *y, int64_t ldy) {                                              \
        for (int64_t r = 0; r < nr; r++)                                                             \
            for (int64_t t = 0; t < nt; t++) y[t * ldy + r] = dotfn(kind, n, w + r * ws, x + t * xs); \
    }
#endif
ARM_GEMM(SFX(gemm_q4_0), AQ4_0, SFX(row_dot))
ARM_GEMM(SFX(gemm_q4_1), AQ4_1, SFX(row_dot))
ARM_GEMM(SFX(gemm_q5_0), AQ5_0, SFX(row_dot))
ARM_GEMM(SFX(gemm_q5_1), AQ5_1, SFX(row_dot))
ARM_GEMM(SFX(gemm_q8_0), AQ8_0, SFX(row_dot))
ARM_GEMM(SFX(gemm_q4_K), AQ4_K, SFX(row_dot))
ARM_GEMM(SFX(gemm_q5_K), AQ5_K, SFX(row_dot))
ARM_GEMM(SFX(gemm_q6_K), AQ6_K, SFX(row_dot))

/* ---------------------------------------------------------------------------
 * Float weights and the attention helpers (FMA: within rounding of the references)
 * ------------------------------------------------------------------------- */

INL float32x4_t SFX(load_wf)(const int kind, const uint8_t *row, int64_t i) {
    if (kind == AF32) return vld1q_f32((const float *)row + i);
    const uint16x4_t h = vld1_u16((const uint16_t *)(row + 2 * i));
    if (kind == AF16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));   /* bf16: exact */
}

INL float SFX(float_dot)(const int kind, int64_t n, const uint8_t *w, const float *x) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 = vfmaq_f32(a0, SFX(load_wf)(kind, w, i), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, SFX(load_wf)(kind, w, i + 4), vld1q_f32(x + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; i++) {
        float wi;
        if (kind == AF32) memcpy(&wi, w + 4 * i, 4);
        else { uint16_t h; memcpy(&h, w + 2 * i, 2); wi = kind == AF16 ? g4_fp16_to_fp32(h) : g4_bf16_to_fp32(h); }
        s += wi * x[i];
    }
    return s;
}

#ifndef G4_KERNELS_ARM_ONCE
#define ARM_GEMM_F(fname, kind, dotfn)                                                                \
    KRN void fname(int64_t n, const uint8_t *w, size_t ws, int64_t nr, const uint8_t *x, size_t xs,   \
                   int64_t nt, float *y, int64_t ldy) {                                              \
        for (int64_t r = 0; r < nr; r++)                                                             \
            for (int64_t t = 0; t < nt; t++)                                                         \
                y[t * ldy + r] = dotfn(kind, n, w + r * ws, (const float *)(x + t * xs));            \
    }
#endif
ARM_GEMM_F(SFX(gemm_f32), AF32, SFX(float_dot))
ARM_GEMM_F(SFX(gemm_f16), AF16, SFX(float_dot))
ARM_GEMM_F(SFX(gemm_bf16), ABF16, SFX(float_dot))

KRN float SFX(dot_f32)(int64_t n, const float *a, const float *b) { return SFX(float_dot)(AF32, n, (const uint8_t *)a, b); }
KRN float SFX(dot_f16_f32)(int64_t n, const g4_fp16 *a, const float *b) { return SFX(float_dot)(AF16, n, (const uint8_t *)a, b); }

KRN void SFX(axpy_f16)(int64_t n, float a, const g4_fp16 *x, float *y) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))), a));
    for (; i < n; i++) y[i] += a * g4_fp16_to_fp32(x[i]);
}

KRN void SFX(axpy_f32)(int64_t n, float a, const float *x, float *y) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] += a * x[i];
}

INL void SFX(dot_rows)(const int kind, int64_t n, int64_t dim, const void *K, int64_t ldk, const float *q, float *out) {
    for (int64_t p = 0; p < n; p++)
        out[p] = kind == AF16 ? SFX(float_dot)(AF16, dim, (const uint8_t *)((const g4_fp16 *)K + p * ldk), q)
                              : SFX(float_dot)(AF32, dim, (const uint8_t *)((const float *)K + p * ldk), q);
}

/* out = sum_p w[p] * row p: 16 output floats in 4 accumulators per pass */
INL void SFX(wsum_rows)(const int kind, int64_t n, int64_t dim, const void *V, int64_t ldv, const float *w, float *out) {
    int64_t c = 0;
    for (; c + 16 <= dim; c += 16) {
        float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        for (int64_t p = 0; p < n; p++) {
            const uint8_t *r = kind == AF16 ? (const uint8_t *)((const g4_fp16 *)V + p * ldv) : (const uint8_t *)((const float *)V + p * ldv);
            UNROLL
            for (int k = 0; k < 4; k++) acc[k] = vfmaq_n_f32(acc[k], SFX(load_wf)(kind, r, c + 4 * k), w[p]);
        }
        UNROLL
        for (int k = 0; k < 4; k++) vst1q_f32(out + c + 4 * k, acc[k]);
    }
    for (; c < dim; c++) {
        float acc = 0.0f;
        for (int64_t p = 0; p < n; p++)
            acc += w[p] * (kind == AF16 ? g4_fp16_to_fp32(((const g4_fp16 *)V)[p * ldv + c]) : ((const float *)V)[p * ldv + c]);
        out[c] = acc;
    }
}

KRN void SFX(dot_f16_rows)(int64_t n, int64_t dim, const g4_fp16 *K, int64_t ldk, const float *q, float *out) {
    SFX(dot_rows)(AF16, n, dim, K, ldk, q, out);
}
KRN void SFX(wsum_f16_rows)(int64_t n, int64_t dim, const g4_fp16 *V, int64_t ldv, const float *w, float *out) {
    SFX(wsum_rows)(AF16, n, dim, V, ldv, w, out);
}
KRN void SFX(dot_f32_rows)(int64_t n, int64_t dim, const float *K, int64_t ldk, const float *q, float *out) {
    SFX(dot_rows)(AF32, n, dim, K, ldk, q, out);
}
KRN void SFX(wsum_f32_rows)(int64_t n, int64_t dim, const float *V, int64_t ldv, const float *w, float *out) {
    SFX(wsum_rows)(AF32, n, dim, V, ldv, w, out);
}

KRN void SFX(fp32_to_fp16)(const float *x, g4_fp16 *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) y[i] = g4_fp32_to_fp16(x[i]);
}

KRN void SFX(fp16_to_fp32)(const g4_fp16 *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))));
    for (; i < n; i++) y[i] = g4_fp16_to_fp32(x[i]);
}

/* ---------------------------------------------------------------------------
 * Repacked weights (repack.c): a q register holds the same 4 bytes of 4 rows;
 * LDOT accumulates each row in its lane against 4 broadcast activation bytes.
 * ------------------------------------------------------------------------- */

/* LDOT with a lane chosen at run time from 0..3 (the switch folds away when
   the caller's lane is a constant after unrolling) */
INL int32x4_t SFX(ldot)(int32x4_t acc, int8x16_t w, int8x16_t x, const int lane) {
    switch (lane) {
    case 0: return LDOT(acc, w, x, 0);
    case 1: return LDOT(acc, w, x, 1);
    case 2: return LDOT(acc, w, x, 2);
    default: return LDOT(acc, w, x, 3);
    }
}

/* acc[h] += cvt(isum[h]) * (d[4h..4h+3] * dx) for the two halves of 8 rows */
INL void SFX(scale_add)(float32x4_t acc[2], const int32x4_t isum[2], const uint8_t *d8, float dx, int sub) {
    const float32x4_t lo = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)d8)));
    const float32x4_t hi = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)d8 + 4)));
    const float32x4_t t0 = vmulq_f32(vmulq_n_f32(lo, dx), vcvtq_f32_s32(isum[0]));
    const float32x4_t t1 = vmulq_f32(vmulq_n_f32(hi, dx), vcvtq_f32_s32(isum[1]));
    acc[0] = sub ? vsubq_f32(acc[0], t0) : vaddq_f32(acc[0], t0);
    acc[1] = sub ? vsubq_f32(acc[1], t1) : vaddq_f32(acc[1], t1);
}

INL void SFX(tile_x8)(const int kind, int64_t nb, const uint8_t *w, const uint8_t *x, float *y) {
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int64_t b = 0; b < nb; b++) {
        int32x4_t is[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};
        if (kind == AQ4_0 || kind == AQ8_0) {
            const uint8_t *gb = w + (size_t)b * (kind == AQ4_0 ? 144 : 272);
            const uint8_t *xq = x + (size_t)b * sizeof(block_q8_0);
            const int8x16_t x0 = SFX(ld)(xq + 2), x1 = SFX(ld)(xq + 18);
            if (kind == AQ4_0) {
                UNROLL
                for (int k = 0; k < 4; k++)
                    UNROLL
                    for (int h = 0; h < 2; h++) {
                        const uint8x16_t v = vld1q_u8(gb + 16 + 32 * k + 16 * h);
                        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), vdupq_n_s8(8));
                        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vdupq_n_s8(8));
                        is[h] = SFX(ldot)(SFX(ldot)(is[h], lo, x0, k), hi, x1, k);
                    }
            } else {
                UNROLL
                for (int k = 0; k < 8; k++)
                    UNROLL
                    for (int h = 0; h < 2; h++) {
                        const int8x16_t v = veorq_s8(SFX(ld)(gb + 16 + 32 * k + 16 * h), vdupq_n_s8((int8_t)0x80));
                        is[h] = SFX(ldot)(is[h], v, k < 4 ? x0 : x1, k % 4);
                    }
            }
            SFX(scale_add)(acc, is, gb, SFX(f16)(xq), 0);
            continue;
        }
        const block_q8_K *q8 = (const block_q8_K *)x + b;
        if (kind == AQ4_K) {
            const uint8_t *gb = w + (size_t)b * 8 * sizeof(block_q4_K);
            int32x4_t ms[2];
            uint32x4_t sc4[2][2], mn4[2][2];   /* [half][A: j < 4, B: j >= 4] */
            UNROLL
            for (int h = 0; h < 2; h++) {
                const uint32x4_t u0 = vld1q_u32((const uint32_t *)(gb + 32 + 16 * h));
                const uint32x4_t u1 = vld1q_u32((const uint32_t *)(gb + 64 + 16 * h));
                const uint32x4_t u2 = vld1q_u32((const uint32_t *)(gb + 96 + 16 * h));
                const uint32x4_t k6 = vdupq_n_u32(0x3f3f3f3f), k4 = vdupq_n_u32(0x0f0f0f0f), k3 = vdupq_n_u32(0x30303030);
                sc4[h][0] = vandq_u32(u0, k6);
                sc4[h][1] = vorrq_u32(vandq_u32(u2, k4), vandq_u32(vshrq_n_u32(u0, 2), k3));
                mn4[h][0] = vandq_u32(u1, k6);
                mn4[h][1] = vorrq_u32(vandq_u32(vshrq_n_u32(u2, 4), k4), vandq_u32(vshrq_n_u32(u1, 2), k3));
                ms[h] = vdupq_n_s32(0);
                UNROLL
                for (int j = 0; j < 8; j++) {
                    const int32x4_t mj = vreinterpretq_s32_u32(vandq_u32(vshlq_u32(mn4[h][j / 4], vdupq_n_s32(-8 * (j % 4))), vdupq_n_u32(0xff)));
                    ms[h] = vmlaq_n_s32(ms[h], mj, q8->bsums[2 * j] + q8->bsums[2 * j + 1]);
                }
            }
            UNROLL
            for (int c = 0; c < 4; c++) {
                int32x4_t pl[2] = {vdupq_n_s32(0), vdupq_n_s32(0)}, ph[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};
                const int8x16_t xl0 = SFX(ld)(q8->qs + 64 * c), xl1 = SFX(ld)(q8->qs + 64 * c + 16);
                const int8x16_t xh0 = SFX(ld)(q8->qs + 64 * c + 32), xh1 = SFX(ld)(q8->qs + 64 * c + 48);
                UNROLL
                for (int q = 0; q < 8; q++)
                    UNROLL
                    for (int h = 0; h < 2; h++) {
                        const uint8x16_t v = vld1q_u8(gb + 128 + 32 * (8 * c + q) + 16 * h);
                        const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, m4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                        pl[h] = SFX(ldot)(pl[h], lo, q < 4 ? xl0 : xl1, q % 4);
                        ph[h] = SFX(ldot)(ph[h], hi, q < 4 ? xh0 : xh1, q % 4);
                    }
                UNROLL
                for (int h = 0; h < 2; h++) {
                    const int j0 = 2 * c, j1 = 2 * c + 1;
                    const int32x4_t s0 = vreinterpretq_s32_u32(vandq_u32(vshlq_u32(sc4[h][j0 / 4], vdupq_n_s32(-8 * (j0 % 4))), vdupq_n_u32(0xff)));
                    const int32x4_t s1 = vreinterpretq_s32_u32(vandq_u32(vshlq_u32(sc4[h][j1 / 4], vdupq_n_s32(-8 * (j1 % 4))), vdupq_n_u32(0xff)));
                    is[h] = vmlaq_s32(vmlaq_s32(is[h], pl[h], s0), ph[h], s1);
                }
            }
            SFX(scale_add)(acc, is, gb, q8->d, 0);
            SFX(scale_add)(acc, ms, gb + 16, q8->d, 1);
            continue;
        }
        /* Q6_K */
        const uint8_t *gb = w + (size_t)b * 8 * sizeof(block_q6_K);
        UNROLL
        for (int s = 0; s < 4; s++) {
            int32x4_t p[4][2];
            UNROLL
            for (int k = 0; k < 4; k++) p[k][0] = p[k][1] = vdupq_n_s32(0);
            UNROLL
            for (int mm = 0; mm < 4; mm++) {
                const int m = 4 * s + mm;
                UNROLL
                for (int h = 0; h < 2; h++) {
                    const uint8x16_t l0 = vld1q_u8(gb + 144 + 32 * m + 16 * h);
                    const uint8x16_t l1 = vld1q_u8(gb + 144 + 32 * (m + 16) + 16 * h);
                    const uint8x16_t hb = vld1q_u8(gb + 1168 + 32 * m + 16 * h);
                    const uint8x16_t m30 = vdupq_n_u8(0x30);
                    uint8x16_t e[4];
                    e[0] = vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(hb, 4), m30));
                    e[1] = vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(hb, 2), m30));
                    e[2] = vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(hb, m30));
                    e[3] = vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(hb, 2), m30));
                    UNROLL
                    for (int k = 0; k < 4; k++) {
                        const int8x16_t q = vsubq_s8(vreinterpretq_s8_u8(e[k]), vdupq_n_s8(32));
                        p[k][h] = SFX(ldot)(p[k][h], q, SFX(ld)(q8->qs + 64 * k + 16 * s), mm);
                    }
                }
            }
            UNROLL
            for (int k = 0; k < 4; k++) {
                const int8x8_t sc8 = vld1_s8((const int8_t *)gb + 16 + 8 * (4 * k + s));
                const int16x8_t sc16 = vmovl_s8(sc8);
                is[0] = vmlaq_s32(is[0], p[k][0], vmovl_s16(vget_low_s16(sc16)));
                is[1] = vmlaq_s32(is[1], p[k][1], vmovl_s16(vget_high_s16(sc16)));
            }
        }
        SFX(scale_add)(acc, is, gb, q8->d, 0);
    }
    vst1q_f32(y, acc[0]);
    vst1q_f32(y + 4, acc[1]);
}

#ifndef G4_KERNELS_ARM_ONCE
#define ARM_GEMM_X8(fname, kind, tile, bsize)                                                         \
    KRN void fname(int64_t n, const uint8_t *w, size_t gs, int64_t nr, const uint8_t *x, size_t xs,   \
                   int64_t nt, float *y, int64_t ldy) {                                              \
        for (int64_t g = 0; g < nr / 8; g++)                                                         \
            for (int64_t t = 0; t < nt; t++) tile(kind, n / (bsize), w + g * gs, x + t * xs, y + t * ldy + 8 * g); \
    }
#endif
ARM_GEMM_X8(SFX(gemm_x8_q4_0), AQ4_0, SFX(tile_x8), 32)
ARM_GEMM_X8(SFX(gemm_x8_q8_0), AQ8_0, SFX(tile_x8), 32)
ARM_GEMM_X8(SFX(gemm_x8_q4_K), AQ4_K, SFX(tile_x8), QK_K)
ARM_GEMM_X8(SFX(gemm_x8_q6_K), AQ6_K, SFX(tile_x8), QK_K)

/* ---------------------------------------------------------------------------
 * Q2_K, Q3_K and the i-quants over decoded blocks (vector decoders below for
 * Q2_K, Q3_K, IQ4_XS; quant_kq.c's for the grid types), and
 * IQ4_NL x Q8_0 through a table lookup (tbl). Exact int32 per block and the
 * references' float steps: bit-identical to them.
 * ------------------------------------------------------------------------- */

KRN int32_t SFX(kq_dot)(const g4_kq_block *k, const block_q8_K *x, int32_t *summ) {
    int32x4_t acc = vdupq_n_s32(0);
    const int32x4_t z = vdupq_n_s32(0);
    UNROLL
    for (int g = 0; g < 16; g++)   /* |sc| <= 64: every product and sum fits int32 exactly */
        acc = vmlaq_n_s32(acc, DOT(z, SFX(ld)(k->q + 16 * g), SFX(ld)(x->qs + 16 * g)), k->sc[g]);
    const int16x8_t m0 = vld1q_s16(k->mn), m1 = vld1q_s16(k->mn + 8);
    const int16x8_t b0 = vld1q_s16(x->bsums), b1 = vld1q_s16(x->bsums + 8);
    int32x4_t sm = vmull_s16(vget_low_s16(m0), vget_low_s16(b0));
    sm = vmlal_high_s16(sm, m0, b0);
    sm = vmlal_s16(sm, vget_low_s16(m1), vget_low_s16(b1));
    sm = vmlal_high_s16(sm, m1, b1);
    *summ = vaddvq_s32(sm);
    return vaddvq_s32(acc);
}

/* Vector decoders for the common ones (Q2_K, Q3_K, IQ4_XS), exactly as quant_kq.c's */
KRN void SFX(decode_q2_K)(const uint8_t *b, g4_kq_block *o) {
    o->d = SFX(f16)(b + 80);
    o->dmin = SFX(f16)(b + 82);
    const uint8x16_t s = vld1q_u8(b), lo = vandq_u8(s, vdupq_n_u8(15)), hi = vshrq_n_u8(s, 4);
    vst1q_s16(o->sc, vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(lo))));
    vst1q_s16(o->sc + 8, vreinterpretq_s16_u16(vmovl_high_u8(lo)));
    vst1q_s16(o->mn, vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(hi))));
    vst1q_s16(o->mn + 8, vreinterpretq_s16_u16(vmovl_high_u8(hi)));
    const uint8x16_t m3 = vdupq_n_u8(3);
    UNROLL
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 2; j++) {
            const uint8x16_t v = vld1q_u8(b + 16 + 32 * h + 16 * j);
            for (int k = 0; k < 4; k++)
                vst1q_u8((uint8_t *)o->q + 128 * h + 32 * k + 16 * j, vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)(-2 * k))), m3));
        }
}

KRN void SFX(decode_q3_K)(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *sc = b + 96;
    o->d = SFX(f16)(b + 108);
    o->dmin = 0.0f;
    for (int s = 0; s < 16; s++) {
        int lo = s < 8 ? sc[s] & 15 : sc[s - 8] >> 4;
        int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        o->sc[s] = (int16_t)((lo | hi << 4) - 32);
    }
    vst1q_s16(o->mn, vdupq_n_s16(0));
    vst1q_s16(o->mn + 8, vdupq_n_s16(0));
    const uint8x16_t m3 = vdupq_n_u8(3), four = vdupq_n_u8(4);
    UNROLL
    for (int j = 0; j < 2; j++) {
        const uint8x16_t hm = vld1q_u8(b + 16 * j);
        for (int h = 0; h < 2; h++) {
            const uint8x16_t v = vld1q_u8(b + 32 + 32 * h + 16 * j);
            for (int k = 0; k < 4; k++) {
                const uint8x16_t low = vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)(-2 * k))), m3);
                const uint8x16_t set = vtstq_u8(hm, vdupq_n_u8((uint8_t)(1 << (4 * h + k))));
                vst1q_u8((uint8_t *)o->q + 128 * h + 32 * k + 16 * j, vsubq_u8(low, vbicq_u8(four, set)));
            }
        }
    }
}

KRN void SFX(decode_iq4_xs)(const uint8_t *b, g4_kq_block *o) {
    const uint16_t sh = (uint16_t)(b[2] | b[3] << 8);
    o->d = SFX(f16)(b);
    o->dmin = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 15) | ((sh >> (2 * ib)) & 3) << 4;
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(ls - 32);
    }
    vst1q_s16(o->mn, vdupq_n_s16(0));
    vst1q_s16(o->mn + 8, vdupq_n_s16(0));
    const int8x16_t table = vld1q_s8(g4_iq4nl_values());
    for (int ib = 0; ib < 8; ib++) {
        const uint8x16_t v = vld1q_u8(b + 8 + 16 * ib);
        vst1q_s8(o->q + 32 * ib, vqtbl1q_s8(table, vandq_u8(v, vdupq_n_u8(15))));
        vst1q_s8(o->q + 32 * ib + 16, vqtbl1q_s8(table, vshrq_n_u8(v, 4)));
    }
}

#ifndef G4_KERNELS_ARM_ONCE
#define KQ_ARM(name, TYPE, DEC)                                                                      \
    KRN void SFX(gemm_##name)(int64_t n, const uint8_t *w, size_t ws, int64_t nr, const uint8_t *x,  \
                              size_t xs, int64_t nt, float *y, int64_t ldy) {                        \
        g4_gemm_kq(TYPE, DEC, SFX(kq_dot), n, w, ws, nr, x, xs, nt, y, ldy);                         \
    }
#endif
KQ_ARM(q2_K, G4_TYPE_Q2_K, SFX(decode_q2_K))
KQ_ARM(q3_K, G4_TYPE_Q3_K, SFX(decode_q3_K))
KQ_ARM(iq4_xs, G4_TYPE_IQ4_XS, SFX(decode_iq4_xs))
KQ_ARM(iq3_xxs, G4_TYPE_IQ3_XXS, g4_kq_decoder(G4_TYPE_IQ3_XXS))
KQ_ARM(iq3_s, G4_TYPE_IQ3_S, g4_kq_decoder(G4_TYPE_IQ3_S))
KQ_ARM(iq2_xxs, G4_TYPE_IQ2_XXS, g4_kq_decoder(G4_TYPE_IQ2_XXS))
KQ_ARM(iq2_xs, G4_TYPE_IQ2_XS, g4_kq_decoder(G4_TYPE_IQ2_XS))
KQ_ARM(iq2_s, G4_TYPE_IQ2_S, g4_kq_decoder(G4_TYPE_IQ2_S))
KQ_ARM(iq1_s, G4_TYPE_IQ1_S, g4_kq_decoder(G4_TYPE_IQ1_S))
KQ_ARM(iq1_m, G4_TYPE_IQ1_M, g4_kq_decoder(G4_TYPE_IQ1_M))

KRN void SFX(gemm_iq4_nl)(int64_t n, const uint8_t *w, size_t ws, int64_t nr, const uint8_t *x,
                          size_t xs, int64_t nt, float *y, int64_t ldy) {
    const int8x16_t table = vld1q_s8(g4_iq4nl_values());
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int32x4_t z = vdupq_n_s32(0);
    const int64_t nb = n / QK4_NL;
    for (int64_t r = 0; r < nr; r++) {
        for (int64_t t = 0; t < nt; t++) y[t * ldy + r] = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + (size_t)r * ws + (size_t)b * sizeof(block_iq4_nl);
            const uint8x16_t v = vld1q_u8(blk + 2);
            const int8x16_t lo = vqtbl1q_s8(table, vandq_u8(v, m4)), hi = vqtbl1q_s8(table, vshrq_n_u8(v, 4));
            const float dw = SFX(f16)(blk);
            for (int64_t t = 0; t < nt; t++) {
                const uint8_t *xb = x + (size_t)t * xs + (size_t)b * sizeof(block_q8_0);
                const int32_t sumi = vaddvq_s32(DOT(DOT(z, lo, SFX(ld)(xb + 2)), hi, SFX(ld)(xb + 18)));
                y[t * ldy + r] += (float)sumi * (dw * SFX(f16)(xb));
            }
        }
    }
}

#ifndef G4_KERNELS_ARM_ONCE
#define G4_KERNELS_ARM_ONCE
#define ARM_KERNEL_ENTRIES                                                                           \
    .gemm = {                                                                                        \
        [G4_TYPE_F32] = SFX(gemm_f32), [G4_TYPE_F16] = SFX(gemm_f16), [G4_TYPE_BF16] = SFX(gemm_bf16), \
        [G4_TYPE_Q4_0] = SFX(gemm_q4_0), [G4_TYPE_Q4_1] = SFX(gemm_q4_1), [G4_TYPE_Q5_0] = SFX(gemm_q5_0), \
        [G4_TYPE_Q5_1] = SFX(gemm_q5_1), [G4_TYPE_Q8_0] = SFX(gemm_q8_0), [G4_TYPE_Q4_K] = SFX(gemm_q4_K), \
        [G4_TYPE_Q5_K] = SFX(gemm_q5_K), [G4_TYPE_Q6_K] = SFX(gemm_q6_K),                            \
        [G4_TYPE_IQ4_NL] = SFX(gemm_iq4_nl), [G4_TYPE_Q2_K] = SFX(gemm_q2_K), [G4_TYPE_Q3_K] = SFX(gemm_q3_K), \
        [G4_TYPE_IQ4_XS] = SFX(gemm_iq4_xs), [G4_TYPE_IQ3_XXS] = SFX(gemm_iq3_xxs),                  \
        [G4_TYPE_IQ3_S] = SFX(gemm_iq3_s), [G4_TYPE_IQ2_XXS] = SFX(gemm_iq2_xxs),                    \
        [G4_TYPE_IQ2_XS] = SFX(gemm_iq2_xs), [G4_TYPE_IQ2_S] = SFX(gemm_iq2_s),                      \
        [G4_TYPE_IQ1_S] = SFX(gemm_iq1_s), [G4_TYPE_IQ1_M] = SFX(gemm_iq1_m),                        \
    },                                                                                               \
    .gemm_x8 = {                                                                                     \
        [G4_TYPE_Q4_0] = SFX(gemm_x8_q4_0), [G4_TYPE_Q8_0] = SFX(gemm_x8_q8_0),                      \
        [G4_TYPE_Q4_K] = SFX(gemm_x8_q4_K), [G4_TYPE_Q6_K] = SFX(gemm_x8_q6_K),                      \
    },                                                                                               \
    .dot_f32 = SFX(dot_f32), .dot_f16_f32 = SFX(dot_f16_f32), .axpy_f16 = SFX(axpy_f16),             \
    .axpy_f32 = SFX(axpy_f32),                                                                       \
    .dot_f16_rows = SFX(dot_f16_rows), .wsum_f16_rows = SFX(wsum_f16_rows),                          \
    .dot_f32_rows = SFX(dot_f32_rows), .wsum_f32_rows = SFX(wsum_f32_rows),                          \
    .fp32_to_fp16 = SFX(fp32_to_fp16), .fp16_to_fp32 = SFX(fp16_to_fp32)
#endif
