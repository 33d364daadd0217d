/* kernels_x86.h - the x86-64 integer-dot kernels, written once and compiled
 * once per ISA. Included (only) by kernels_avx2.c and kernels_avx512.c, which
 * define before including it:
 *
 *   TGT               __attribute__((target(...))) for every function here
 *   SFX(name)         name##_<isa>, so each inclusion has its own symbols
 *   DPBUSD(acc, u, s) acc + per int32 lane the sum of 4 u8 x s8 products
 *                     (vpdpbusd, or vpmaddubsw + vpmaddwd + vpaddd)
 *   DPWSSD(acc, a, b) acc + per int32 lane the sum of 2 s16 x s16 products
 *   HAVE_AVX512VL     1 when AVX-512 BW/VL instructions may be used on ymm
 *   RT, TT            register tile of the 32-block types: rows x tokens
 *   RT_K, TT_K        register tile of the K-quants
 *
 * Structure of every matmul kernel (see g4_gemm_fn in kernels.h): rows are
 * walked in tiles of RT, tokens in tiles of TT; for each tile one pass over
 * the blocks unpacks each weight block once and dots it with the TT token
 * blocks, so weights are read from memory once per TT tokens and each
 * activation block is loaded once per RT rows. Per block the integer dot is
 * exact (int32 lanes of 4-byte groups, as the references' int32 sums); the
 * scale d_w * d_x is applied in float per lane, and the 8 lanes are summed at
 * the end of the row - the only difference from the reference is that float
 * order. The vpmaddubsw path cannot saturate: its unsigned operand is at most
 * 63 (Q6_K) or 128 (|Q8_0 weight|), the signed one at most 127 in magnitude
 * (activations are quantized to [-127, 127]), and 2 * 128 * 127 < 32767.
 *
 * The approach follows ggml-cpu/arch/x86/quants.c (mul_sum_us8_pairs,
 * bytes_from_nibbles_32, the K-quant scale shuffles); the tiling over rows
 * and tokens follows the idea of llamafile's tinyBLAS (sgemm.cpp) and ggml's
 * repacked gemm kernels, without repacking the weights.
 */

#ifndef G4_KERNELS_X86_ONCE
#define INL static inline __attribute__((always_inline)) TGT
#define KRN static TGT
/* The tile loops must be unrolled completely so the accumulator arrays live
   in registers; GCC's heuristics alone leave them on the stack. */
#define UNROLL _Pragma("GCC unroll 16")
#endif

/* ---------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------- */

/* fp16 at p (any alignment) broadcast to 8 floats: vpbroadcastw + vcvtph2ps */
INL __m256 SFX(bcast_f16)(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm256_cvtph_ps(_mm_set1_epi16((short)h));
}

INL float SFX(f16)(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

INL float SFX(hsum)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* An empty asm that "changes" v: it pins the order of the adds into v, so
   the compiler cannot reassociate a chain of sums into a tree that needs all
   the products live at once (with 16 ymm registers that spills). */
#ifndef REG_BARRIER
#define REG_BARRIER(v) __asm__("" : "+x"(v))
#endif

INL __m256i SFX(loadu)(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 16 bytes of packed nibbles -> 32 bytes: the low nibbles (elements 0..15)
   then the high nibbles (elements 16..31), as in block_q4_0. */
INL __m256i SFX(nibbles32)(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

/* The 32 bits of a Q5 qh as 32 bytes: 0x10 where the bit is set. */
INL __m256i SFX(bits32)(const uint8_t *qh) {
    uint32_t m;
    memcpy(&m, qh, 4);
#if HAVE_AVX512VL
    return _mm256_maskz_mov_epi8((__mmask32)m, _mm256_set1_epi8(0x10));
#else
    /* byte j takes byte j/8 of m, keeps bit j%8, and becomes 0x10 if it was set */
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m),
                                    _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                      0x0101010101010101, 0x0000000000000000));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
#endif
}

/* ---------------------------------------------------------------------------
 * Activation quantizers, bit-identical to the references in quant_ref.c
 * ------------------------------------------------------------------------- */

/* roundf (half away from zero) of 8 floats, NaN -> 0: trunc, then +-1 where
   the dropped fraction is >= 0.5 (the difference is exact below 2^23). */
INL __m256i SFX(roundf_epi32)(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    const __m256 up = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                    _mm256_or_ps(sign, _mm256_set1_ps(1.0f)));
    const __m256 r = _mm256_and_ps(_mm256_add_ps(t, up), _mm256_cmp_ps(v, v, _CMP_ORD_Q));
    return _mm256_cvttps_epi32(r);
}

/* 4 x 8 int32 (each within int8 range) -> 32 int8 in order */
INL __m256i SFX(pack32)(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

INL float SFX(hmax)(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

KRN void SFX(quantize_q8_0)(const float *x, block_q8_0 *y, int64_t n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        __m256 v[4], m = _mm256_setzero_ps();
        UNROLL
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(_mm256_and_ps(v[k], absmask), m);   /* a NaN lane keeps m, as fmaxf */
        }
        const float amax = SFX(hmax)(m);
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        const g4_fp16 h = (g4_fp16)_cvtss_sh(d, 0);   /* round to nearest even, as g4_fp32_to_fp16 */
        memcpy(&y[b].d, &h, 2);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        UNROLL
        for (int k = 0; k < 4; k++) q[k] = SFX(roundf_epi32)(_mm256_mul_ps(v[k], vid));
        _mm256_storeu_si256((__m256i *)y[b].qs, SFX(pack32)(q[0], q[1], q[2], q[3]));
    }
}

KRN void SFX(quantize_q8_K)(const float *x, block_q8_K *y, int64_t n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < QK_K / 8; k++) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absmask), m);
        const float amax = SFX(hmax)(m);
        if (!(amax > 0.0f)) { g4_quantize_row_q8_K(x, &y[b], QK_K); continue; }   /* all zero */
        /* the first element of largest magnitude, sign kept (the reference's max) */
        int first = 0;
        const __m256 va = _mm256_set1_ps(amax);
        for (int k = 0; k < QK_K / 8; k++) {
            int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absmask), va, _CMP_EQ_OQ));
            if (mask) { first = 8 * k + __builtin_ctz((unsigned)mask); break; }
        }
        const float iscale = -127.0f / x[first];
        const __m256 vs = _mm256_set1_ps(iscale);
        for (int k = 0; k < QK_K / 32; k++) {
            __m256i q[4];
            UNROLL
            for (int j = 0; j < 4; j++) {
                const __m256 p = _mm256_mul_ps(vs, _mm256_loadu_ps(x + 32 * k + 8 * j));
                /* cvtps rounds half to even under the default MXCSR, as nearest_int */
                __m256i iv = _mm256_cvtps_epi32(_mm256_and_ps(p, _mm256_cmp_ps(p, p, _CMP_ORD_Q)));
                q[j] = _mm256_min_epi32(iv, _mm256_set1_epi32(127));
            }
            _mm256_storeu_si256((__m256i *)(y[b].qs + 32 * k), SFX(pack32)(q[0], q[1], q[2], q[3]));
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
 * 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
 * ------------------------------------------------------------------------- */

#ifndef G4_KERNELS_X86_ONCE
enum { KQ4_0, KQ4_1, KQ5_0, KQ5_1, KQ8_0 };
enum { KQ4_K, KQ5_K, KQ6_K };
enum { KF32, KF16, KBF16 };
#endif

/* One R x T tile (R <= RT, T <= TT, both compile-time after inlining). */
INL void SFX(tile32)(const int kind, const int R, const int T, int64_t nb, const uint8_t *w, size_t ws,
                     const uint8_t *x, size_t xs, float *y, int64_t ldy) {
    const size_t wbs = kind == KQ4_0 ? 18 : kind == KQ4_1 ? 20 : kind == KQ5_0 ? 22 : kind == KQ5_1 ? 24 : 34;
    const int has_m = kind == KQ4_1 || kind == KQ5_1;
    const size_t xbs = has_m ? sizeof(block_q8_1) : sizeof(block_q8_0);
    const __m256i zero = _mm256_setzero_si256();
    __m256 acc[RT][TT];
    float accm[RT][TT];
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int t = 0; t < T; t++) { acc[r][t] = _mm256_setzero_ps(); accm[r][t] = 0.0f; }
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[RT], wa[RT];
        __m256 dw[RT];
        float mw[RT];
        UNROLL
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + (size_t)r * ws + (size_t)b * wbs;
            dw[r] = SFX(bcast_f16)(p);
            switch (kind) {
            case KQ4_0: wv[r] = SFX(nibbles32)(p + 2); break;
            case KQ4_1: mw[r] = SFX(f16)(p + 2); wv[r] = SFX(nibbles32)(p + 4); break;
            case KQ5_0: wv[r] = _mm256_or_si256(SFX(nibbles32)(p + 6), SFX(bits32)(p + 2)); break;
            case KQ5_1: mw[r] = SFX(f16)(p + 2); wv[r] = _mm256_or_si256(SFX(nibbles32)(p + 8), SFX(bits32)(p + 4)); break;
            default: wv[r] = SFX(loadu)(p + 2); wa[r] = _mm256_abs_epi8(wv[r]); break;
            }
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            const uint8_t *q = x + (size_t)t * xs + (size_t)b * xbs;
            const __m256i xv = SFX(loadu)(q + xbs - 32);
            const __m256 dx = SFX(bcast_f16)(q);
            /* Q4_0/Q5_0 store q + 8 / q + 16: start each lane at -8 / -16 times its x */
            __m256i off = zero;
            if (kind == KQ4_0) off = _mm256_sub_epi32(zero, DPBUSD(zero, _mm256_set1_epi8(8), xv));
            if (kind == KQ5_0) off = _mm256_sub_epi32(zero, DPBUSD(zero, _mm256_set1_epi8(16), xv));
            const float sx = has_m ? SFX(f16)(q + 2) : 0.0f;
            UNROLL
            for (int r = 0; r < R; r++) {
                const __m256i p = kind == KQ8_0 ? DPBUSD(zero, wa[r], _mm256_sign_epi8(xv, wv[r]))
                                                : DPBUSD(off, wv[r], xv);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[r], dx), acc[r][t]);
                if (has_m) accm[r][t] += mw[r] * sx;
            }
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int t = 0; t < T; t++) y[t * ldy + r] = SFX(hsum)(acc[r][t]) + accm[r][t];
}

/* Full tiles with the constant RT x TT, the edges one row / one token at a time. */
#ifndef G4_KERNELS_X86_ONCE
#define GEMM_DRIVER(fname, tile, kind, RTILE, TTILE, bsize)                                           \
    KRN void fname(int64_t n, const uint8_t *w, size_t ws, int64_t nr, const uint8_t *x, size_t xs,   \
                   int64_t nt, float *y, int64_t ldy) {                                              \
        const int64_t nb = n / (bsize);                                                              \
        int64_t r = 0;                                                                               \
        for (; r + (RTILE) <= nr; r += (RTILE)) {                                                    \
            int64_t t = 0;                                                                           \
            for (; t + (TTILE) <= nt; t += (TTILE))                                                  \
                tile(kind, RTILE, TTILE, nb, w + r * ws, ws, x + t * xs, xs, y + t * ldy + r, ldy);  \
            for (; t < nt; t++) tile(kind, RTILE, 1, nb, w + r * ws, ws, x + t * xs, xs, y + t * ldy + r, ldy); \
        }                                                                                            \
        for (; r < nr; r++) {                                                                        \
            int64_t t = 0;                                                                           \
            for (; t + (TTILE) <= nt; t += (TTILE))                                                  \
                tile(kind, 1, TTILE, nb, w + r * ws, ws, x + t * xs, xs, y + t * ldy + r, ldy);      \
            for (; t < nt; t++) tile(kind, 1, 1, nb, w + r * ws, ws, x + t * xs, xs, y + t * ldy + r, ldy); \
        }                                                                                            \
    }
#endif

GEMM_DRIVER(SFX(gemm_q4_0), SFX(tile32), KQ4_0, RT, TT, 32)
GEMM_DRIVER(SFX(gemm_q4_1), SFX(tile32), KQ4_1, RT, TT, 32)
GEMM_DRIVER(SFX(gemm_q5_0), SFX(tile32), KQ5_0, RT, TT, 32)
GEMM_DRIVER(SFX(gemm_q5_1), SFX(tile32), KQ5_1, RT, TT, 32)
GEMM_DRIVER(SFX(gemm_q8_0), SFX(tile32), KQ8_0, RT, TT, 32)

/* ---------------------------------------------------------------------------
 * K-quants: Q4_K, Q5_K, Q6_K against Q8_K
 * ------------------------------------------------------------------------- */

/* Q4_K/Q5_K scales: the 12 packed bytes as 8 scales and 8 mins, one byte
   each (the layout in g4_q4_K_scales, done on 32-bit words). */
INL void SFX(k4_scales)(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    uint32_t u[3], o[4];
    memcpy(u, s, 12);
    o[0] = u[0] & 0x3f3f3f3fu;                                           /* sc 0..3 */
    o[1] = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);          /* sc 4..7 */
    o[2] = u[1] & 0x3f3f3f3fu;                                           /* m 0..3 */
    o[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);   /* m 4..7 */
    memcpy(sc, o, 8);
    memcpy(mn, o + 2, 8);
}

/* Q6_K: the int16 scales of the two 16-element halves of 32-element vector
   v (0..7) of a block, as [sc16[2v] x 8 | sc16[2v+1] x 8]. */
INL __m256i SFX(q6_scale_pair)(__m256i sc16, int v) {
#if HAVE_AVX512VL
    const __m256i idx = _mm256_setr_epi16(2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v,
                                          2 * v + 1, 2 * v + 1, 2 * v + 1, 2 * v + 1,
                                          2 * v + 1, 2 * v + 1, 2 * v + 1, 2 * v + 1);
    return _mm256_permutexvar_epi16(idx, sc16);
#else
    /* dword v holds the pair; broadcast it, then pick its low / high word per 128-bit lane */
    const __m256i d = _mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(v));
    return _mm256_shuffle_epi8(d, _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                                   2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
#endif
}

INL void SFX(tileK)(const int kind, const int R, const int T, int64_t nb, const uint8_t *w, size_t ws,
                    const uint8_t *x, size_t xs, float *y, int64_t ldy) {
    const size_t wbs = kind == KQ4_K ? sizeof(block_q4_K) : kind == KQ5_K ? sizeof(block_q5_K) : sizeof(block_q6_K);
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30), b4 = _mm256_set1_epi8(0x10);
    __m256 acc[RT_K][TT_K];
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256 dw[RT_K], dmw[RT_K], dx[TT_K];
        __m256i isum[RT_K][TT_K];
        const uint8_t *wb[RT_K], *xb[TT_K];
        UNROLL
        for (int r = 0; r < R; r++) wb[r] = w + (size_t)r * ws + (size_t)b * wbs;
        UNROLL
        for (int t = 0; t < T; t++) {
            xb[t] = x + (size_t)t * xs + (size_t)b * sizeof(block_q8_K);
            dx[t] = _mm256_broadcast_ss((const float *)xb[t]);
        }
        if (kind == KQ6_K) {
            __m256i sc16[RT_K];
            UNROLL
            for (int r = 0; r < R; r++) {
                const block_q6_K *q6 = (const block_q6_K *)wb[r];
                dw[r] = SFX(bcast_f16)((const uint8_t *)&q6->d);
                sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q6->scales));
                /* the -32 offset: -32 * sum_s sc_s * bsum_s, lane-wise */
                UNROLL
                for (int t = 0; t < T; t++) {
                    const __m256i bs = _mm256_loadu_si256((const __m256i *)((const block_q8_K *)xb[t])->bsums);
                    isum[r][t] = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_setzero_si256(),
                                                                    _mm256_madd_epi16(sc16[r], bs)), 5);
                }
            }
            UNROLL
            for (int h = 0; h < 2; h++) {
                UNROLL
                for (int r = 0; r < R; r++) {
                    const block_q6_K *q6 = (const block_q6_K *)wb[r];
                    const __m256i l0 = SFX(loadu)(q6->ql + 64 * h), l1 = SFX(loadu)(q6->ql + 64 * h + 32);
                    const __m256i hb = SFX(loadu)(q6->qh + 32 * h);
                    __m256i qv[4];
                    qv[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2));
                    qv[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2));
                    qv[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m2));
                    qv[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                            _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2));
                    UNROLL
                    for (int k = 0; k < 4; k++) {
                        const __m256i scp = SFX(q6_scale_pair)(sc16[r], 4 * h + k);
                        UNROLL
                        for (int t = 0; t < T; t++) {
                            const __m256i xv = SFX(loadu)((const uint8_t *)((const block_q8_K *)xb[t])->qs + 128 * h + 32 * k);
                            isum[r][t] = DPWSSD(isum[r][t], _mm256_maddubs_epi16(qv[k], xv), scp);
                        }
                    }
                }
            }
            UNROLL
            for (int r = 0; r < R; r++)
                UNROLL
                for (int t = 0; t < T; t++)
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_mul_ps(dw[r], dx[t]), acc[r][t]);
            continue;
        }
        /* Q4_K / Q5_K */
        uint8_t sc[RT_K][8], mn[RT_K][8];
        UNROLL
        for (int r = 0; r < R; r++) {
            dw[r] = SFX(bcast_f16)(wb[r]);
            dmw[r] = SFX(bcast_f16)(wb[r] + 2);
            SFX(k4_scales)(wb[r] + 4, sc[r], mn[r]);
            UNROLL
            for (int t = 0; t < T; t++) isum[r][t] = _mm256_setzero_si256();
        }
        UNROLL
        for (int c = 0; c < 4; c++) {
            UNROLL
            for (int r = 0; r < R; r++) {
                const uint8_t *qs = wb[r] + (kind == KQ4_K ? 16 : 48) + 32 * c;
                const __m256i qv = SFX(loadu)(qs);
                __m256i lo = _mm256_and_si256(qv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
                if (kind == KQ5_K) {
                    /* bit 2c of qh[l] -> bit 4 of element l, bit 2c+1 -> of element 32 + l */
                    const __m256i qh = SFX(loadu)(wb[r] + 16);
                    __m256i hl, hh;
                    switch (c) {
                    case 0: hl = _mm256_slli_epi16(qh, 4); hh = _mm256_slli_epi16(qh, 3); break;
                    case 1: hl = _mm256_slli_epi16(qh, 2); hh = _mm256_slli_epi16(qh, 1); break;
                    case 2: hl = qh; hh = _mm256_srli_epi16(qh, 1); break;
                    default: hl = _mm256_srli_epi16(qh, 2); hh = _mm256_srli_epi16(qh, 3); break;
                    }
                    lo = _mm256_or_si256(lo, _mm256_and_si256(hl, b4));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(hh, b4));
                }
                const __m256i sl = _mm256_set1_epi16(sc[r][2 * c]), sh = _mm256_set1_epi16(sc[r][2 * c + 1]);
                UNROLL
                for (int t = 0; t < T; t++) {
                    const int8_t *xq = ((const block_q8_K *)xb[t])->qs + 64 * c;
                    const __m256i xl = SFX(loadu)((const uint8_t *)xq), xh = SFX(loadu)((const uint8_t *)xq + 32);
                    isum[r][t] = DPWSSD(isum[r][t], _mm256_maddubs_epi16(lo, xl), sl);
                    isum[r][t] = DPWSSD(isum[r][t], _mm256_maddubs_epi16(hi, xh), sh);
                }
            }
        }
        UNROLL
        for (int r = 0; r < R; r++) {
            const __m128i m16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn[r]));
            UNROLL
            for (int t = 0; t < T; t++) {
                /* mins: sum_j m_j * (bsums[2j] + bsums[2j+1]), 4 lanes */
                const block_q8_K *q8 = (const block_q8_K *)xb[t];
                const __m128i bs0 = _mm_loadu_si128((const __m128i *)q8->bsums);
                const __m128i bs1 = _mm_loadu_si128((const __m128i *)(q8->bsums + 8));
                const __m128i mm = _mm_madd_epi16(m16, _mm_hadd_epi16(bs0, bs1));
                const __m256 fm = _mm256_cvtepi32_ps(_mm256_zextsi128_si256(mm));
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_mul_ps(dw[r], dx[t]), acc[r][t]);
                acc[r][t] = _mm256_fnmadd_ps(fm, _mm256_mul_ps(dmw[r], dx[t]), acc[r][t]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int t = 0; t < T; t++) y[t * ldy + r] = SFX(hsum)(acc[r][t]);
}

GEMM_DRIVER(SFX(gemm_q4_K), SFX(tileK), KQ4_K, RT_K, TT_K, QK_K)
GEMM_DRIVER(SFX(gemm_q5_K), SFX(tileK), KQ5_K, RT_K, TT_K, QK_K)
GEMM_DRIVER(SFX(gemm_q6_K), SFX(tileK), KQ6_K, RT_K, TT_K, QK_K)

/* ---------------------------------------------------------------------------
 * Repacked weights (repack.c): a ymm holds the same 4 bytes of 8 rows, so
 * each row's integer dot accumulates in its own int32 lane against
 * broadcast activations; the 8 scales of a block column are one load, and
 * the 8 results one store. Every lane holds the whole block sum of its row,
 * and the float steps (d_w * d_x, times the sum, added to the row's total,
 * blocks in order) are the reference's, without FMA contraction: the
 * results are bit-identical to the scalar references.
 * ------------------------------------------------------------------------- */

/* 4 bytes at p broadcast to the 8 lanes (vpbroadcastd / an embedded {1to8}) */
INL __m256i SFX(bc4)(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* byte j of every dword, zero-extended to 32 bits (pair=0), or the int16
   pair (byte j, byte j) for vpmaddwd (pair=1) */
INL __m256i SFX(dword_byte)(__m256i v, const int j, const int pair) {
    const char z = (char)0x80, b = (char)j;
    const __m256i idx = pair ? _mm256_setr_epi8(b, z, b, z, b + 4, z, b + 4, z, b + 8, z, b + 8, z, b + 12, z, b + 12, z,
                                                b, z, b, z, b + 4, z, b + 4, z, b + 8, z, b + 8, z, b + 12, z, b + 12, z)
                             : _mm256_setr_epi8(b, z, z, z, b + 4, z, z, z, b + 8, z, z, z, b + 12, z, z, z,
                                                b, z, z, z, b + 4, z, z, z, b + 8, z, z, z, b + 12, z, z, z);
    return _mm256_shuffle_epi8(v, idx);
}

/* Software prefetch of the weights PF_AHEAD bytes ahead of the block
   column in use, into L2 (prefetcht1), not L1. The hardware prefetchers
   follow one ascending stream well, but a Q6_K column is read as three
   interleaved streams and the L2 streamer then falls behind DRAM latency
   (measured on Zen 3: 3 GB/s instead of 12 GB/s per core without this).
   Why L2: a prefetcht0 holds one of the core's few L1 fill buffers (~16)
   until its line arrives from DRAM, and those buffers then cap the bytes in
   flight; a prefetcht1 is tracked by L2's larger queue, and the kernel's own
   loads still hit in L2 (~15 cycles). Measured on one core of a Xeon with
   AMX (KVM guest), benchmarks/matmul_stream.c over 230-350 MB of repacked
   weights, T0 at 4 KB -> T1 at 2 KB: Q4_0 9.4 -> 11.8 GB/s, Q8_0 11.6 ->
   12.4, Q4_K 8.9 -> 10.7, Q6_K 7.9 -> 10.6 (the probe's one-thread read:
   12.2); T1 at 3 KB and T0 at 2 KB were slower, T1 at 1 KB slower but for
   Q6_K (RESULTS.md).
   Groups are contiguous, so running past the end of a group prefetches the
   next one. */
#ifndef PF_AHEAD
#define PF_AHEAD 2048
#endif
INL void SFX(prefetch)(const uint8_t *p, size_t n) {
    for (size_t off = 0; off < n; off += 64) _mm_prefetch((const char *)(p + PF_AHEAD + off), _MM_HINT_T1);
}

/* Q5_0 (in tile_x8_32): as Q4_0 with the fifth bits from hb (repack.c):
   chunk k's bits sit at bits 2k (low nibbles) and 2k + 1 (high) of every
   byte, and a 16-bit shift plus the 0x10 mask moves them to bit 4 (a shift
   by s <= 4 left or <= 3 right brings in neighbour bits only below or above
   bit 4). Values q + 16 are 0..31, so a vpmaddubsw pair is at most
   2 * 31 * 128 = 7936 and four of them add up in int16 without saturating
   (31744 < 32767): two vpmaddwd per block. The same vpmaddubsw code on
   every x86 table (no VNNI variant: that could not be tested here). */
#define Q5_HB(hb, b) ((b) < 4 ? _mm256_slli_epi16((hb), 4 - (b)) : (b) > 4 ? _mm256_srli_epi16((hb), (b) - 4) : (hb))

/* Q4_0 / Q5_0 / Q8_0: T tokens x 8 rows */
INL void SFX(tile_x8_32)(const int kind, const int T, int64_t nb, const uint8_t *w, const uint8_t *x, size_t xs,
                         float *y, int64_t ldy) {
    const size_t gbs = 8 * (kind == KQ4_0 ? sizeof(block_q4_0) : kind == KQ5_0 ? sizeof(block_q5_0) : sizeof(block_q8_0));
    const __m256i m4 = _mm256_set1_epi8(0x0f), m10 = _mm256_set1_epi8(0x10), ones = _mm256_set1_epi16(1);
    __m256 acc[TX32 + 1];
    const uint8_t *xr[TX32 + 1];
    const int16_t *xsum[TX32 + 1];
    UNROLL
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        xr[t] = x + (size_t)t * xs;
        xsum[t] = (const int16_t *)(xr[t] + (size_t)nb * sizeof(block_q8_0));
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *gb = w + (size_t)b * gbs;
        SFX(prefetch)(gb, gbs);
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)gb));
        __m256i ai[TX32 + 1];
        const uint8_t *xq[TX32 + 1];
        UNROLL
        for (int t = 0; t < T; t++) {
            xq[t] = xr[t] + (size_t)b * sizeof(block_q8_0) + 2;
            int16_t sx;
            memcpy(&sx, xsum[t] + b, 2);
            /* the stored values are q + 8 (Q4_0), q + 16 (Q5_0) and q + 128 (repacked Q8_0) */
            ai[t] = _mm256_set1_epi32((kind == KQ4_0 ? -8 : kind == KQ5_0 ? -16 : -128) * (int32_t)sx);
#if !HAVE_VNNI
            if (kind == KQ8_0) ai[t] = _mm256_setzero_si256();   /* signed weights below instead */
#endif
        }
        /* with few tokens, two accumulators per token halve the dependency
           chain of vpdpbusd (latency ~5 cycles) inside a block */
        __m256i a2[TX32 + 1];
        UNROLL
        for (int t = 0; t < T; t++) a2[t] = _mm256_setzero_si256();
#define ACC2(t, k) (*((T <= 2 && ((k) & 1)) ? &a2[t] : &ai[t]))
        if (kind == KQ5_0) {
            const __m256i hb = SFX(loadu)(gb + 16);
            __m256i s16[TX32 + 1];
            UNROLL
            for (int k = 0; k < 4; k++) {
                const __m256i v = SFX(loadu)(gb + 48 + 32 * k);
                const __m256i lo = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_and_si256(Q5_HB(hb, 2 * k), m10));
                const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                                   _mm256_and_si256(Q5_HB(hb, 2 * k + 1), m10));
                UNROLL
                for (int t = 0; t < T; t++) {
                    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, SFX(bc4)(xq[t] + 4 * k)),
                                                       _mm256_maddubs_epi16(hi, SFX(bc4)(xq[t] + 16 + 4 * k)));
                    s16[t] = (k & 1) ? _mm256_add_epi16(s16[t], p) : p;
                    if (k & 1) {
                        ai[t] = _mm256_add_epi32(ai[t], _mm256_madd_epi16(s16[t], ones));
                        REG_BARRIER(ai[t]);
                    } else REG_BARRIER(s16[t]);
                }
            }
        } else if (kind == KQ4_0) {
#if HAVE_VNNI
            UNROLL
            for (int k = 0; k < 4; k++) {
                const __m256i v = SFX(loadu)(gb + 16 + 32 * k);
                const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                UNROLL
                for (int t = 0; t < T; t++) {
                    ACC2(t, 0) = DPBUSD(ACC2(t, 0), lo, SFX(bc4)(xq[t] + 4 * k));
                    ACC2(t, 1) = DPBUSD(ACC2(t, 1), hi, SFX(bc4)(xq[t] + 16 + 4 * k));
                }
            }
#else
            /* The 8 vpmaddubsw of a block add up in one int16 register per
               token and widen once: each int16 lane gathers 16 products of a
               nibble (0..15) and an activation (|q| <= 127, the Q8_0
               quantizer's range), at most 16 * 15 * 127 = 30480 < 32767, so
               no sum saturates and the block's integer dot stays exact. One
               vpmaddwd per block instead of eight; one int16 sum per token
               (not one for each nibble half) keeps a 4-token tile inside the
               16 ymm registers: with two, GCC spilled a third of the tile's
               products to the stack (benchmarks/matmul_stream.c, T = 4). */
            __m256i s16[TX32 + 1];
            UNROLL
            for (int k = 0; k < 4; k++) {
                const __m256i v = SFX(loadu)(gb + 16 + 32 * k);
                const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                UNROLL
                for (int t = 0; t < T; t++) {
                    const __m256i pl = _mm256_maddubs_epi16(lo, SFX(bc4)(xq[t] + 4 * k));
                    const __m256i ph = _mm256_maddubs_epi16(hi, SFX(bc4)(xq[t] + 16 + 4 * k));
                    s16[t] = k ? _mm256_add_epi16(s16[t], _mm256_add_epi16(pl, ph)) : _mm256_add_epi16(pl, ph);
                    REG_BARRIER(s16[t]);
                }
            }
            UNROLL
            for (int t = 0; t < T; t++) ai[t] = _mm256_add_epi32(ai[t], _mm256_madd_epi16(s16[t], ones));
#endif
        } else {
            UNROLL
            for (int k = 0; k < 8; k++) {
                const __m256i v = SFX(loadu)(gb + 16 + 32 * k);
#if HAVE_VNNI
                UNROLL
                for (int t = 0; t < T; t++) ACC2(t, k) = DPBUSD(ACC2(t, k), v, SFX(bc4)(xq[t] + 4 * k));
#else
                /* vpmaddubsw would saturate on q + 128: back to signed, sign trick */
                const __m256i ws = _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), wa = _mm256_abs_epi8(ws);
                UNROLL
                for (int t = 0; t < T; t++) {
                    ACC2(t, k) = DPBUSD(ACC2(t, k), wa, _mm256_sign_epi8(SFX(bc4)(xq[t] + 4 * k), ws));
                    if (T <= 2 && (k & 1)) REG_BARRIER(a2[t]);
                    else REG_BARRIER(ai[t]);
                }
#endif
            }
        }
#undef ACC2
        UNROLL
        for (int t = 0; t < T; t++) ai[t] = _mm256_add_epi32(ai[t], a2[t]);
        UNROLL
        for (int t = 0; t < T; t++) {
            const __m256 s = _mm256_mul_ps(d8, SFX(bcast_f16)(xq[t] - 2));
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_cvtepi32_ps(ai[t]), s));
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ldy, acc[t]);
}


/* Q4_K (q5 = 0) and Q5_K (q5 = 1): T tokens x 8 rows. The two share the
   scales, the mins and the float steps (g4_ref_dot_q4_K_q8_K_acc and
   g4_ref_dot_q5_K_q8_K_acc are the same but for the values); Q5_K's
   quants sit 256 bytes later, after the 8 qh chunks (repack.c), and its
   fifth bits join the nibbles as Q5_0's do (Q5_HB: qs chunk 8c + q takes
   bits 2c and 2c + 1 of qh chunk q). */
INL void SFX(tile_x8_q4_K)(const int q5, const int T, int64_t nb, const uint8_t *w, const uint8_t *x, size_t xs,
                           float *y, int64_t ldy) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m6 = _mm256_set1_epi8(0x3f), m30 = _mm256_set1_epi8(0x30);
    const __m256i m10 = _mm256_set1_epi8(0x10);
    const size_t gbs = 8 * (q5 ? sizeof(block_q5_K) : sizeof(block_q4_K)), qso = q5 ? 384 : 128;
    __m256 acc[TXK4];
    UNROLL
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *gb = w + (size_t)b * gbs;
        SFX(prefetch)(gb, gbs);
        const block_q8_K *q8[TXK4];
        UNROLL
        for (int t = 0; t < T; t++) q8[t] = (const block_q8_K *)(x + (size_t)t * xs) + b;
        /* the 6-bit scales and mins of the 8 rows (g4_q4_K_scales, lane-wise) */
        const __m256i u0 = SFX(loadu)(gb + 32), u1 = SFX(loadu)(gb + 64), u2 = SFX(loadu)(gb + 96);
        const __m256i scA = _mm256_and_si256(u0, m6);
        const __m256i scB = _mm256_or_si256(_mm256_and_si256(u2, m4), _mm256_and_si256(_mm256_srli_epi32(u0, 2), m30));
        const __m256i mA = _mm256_and_si256(u1, m6);
        const __m256i mB = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), m4),
                                           _mm256_and_si256(_mm256_srli_epi32(u1, 2), m30));
        /* mins: sum_j m_j * (bsums[2j] + bsums[2j+1]) with vpmaddwd on (m_2i, m_2i+1) pairs */
        const char z = (char)0x80;
        const __m256i ip0 = _mm256_setr_epi8(0, z, 1, z, 4, z, 5, z, 8, z, 9, z, 12, z, 13, z,
                                             0, z, 1, z, 4, z, 5, z, 8, z, 9, z, 12, z, 13, z);
        const __m256i ip1 = _mm256_setr_epi8(2, z, 3, z, 6, z, 7, z, 10, z, 11, z, 14, z, 15, z,
                                             2, z, 3, z, 6, z, 7, z, 10, z, 11, z, 14, z, 15, z);
        const __m256i mp[4] = {_mm256_shuffle_epi8(mA, ip0), _mm256_shuffle_epi8(mA, ip1),
                               _mm256_shuffle_epi8(mB, ip0), _mm256_shuffle_epi8(mB, ip1)};
        __m256i isum[TXK4], msum[TXK4];
        UNROLL
        for (int t = 0; t < T; t++) {
            const __m128i bsp = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)q8[t]->bsums),
                                               _mm_loadu_si128((const __m128i *)(q8[t]->bsums + 8)));
            const __m256i bb = _mm256_broadcastsi128_si256(bsp);
            __m256i ms = _mm256_madd_epi16(mp[0], _mm256_shuffle_epi32(bb, 0x00));
            ms = _mm256_add_epi32(ms, _mm256_madd_epi16(mp[1], _mm256_shuffle_epi32(bb, 0x55)));
            ms = _mm256_add_epi32(ms, _mm256_madd_epi16(mp[2], _mm256_shuffle_epi32(bb, 0xaa)));
            msum[t] = _mm256_add_epi32(ms, _mm256_madd_epi16(mp[3], _mm256_shuffle_epi32(bb, 0xff)));
            isum[t] = _mm256_setzero_si256();
        }
        UNROLL
        for (int c = 0; c < 4; c++) {
            const __m256i sv = c < 2 ? scA : scB;
#if HAVE_VNNI
            const __m256i scl = SFX(dword_byte)(sv, (2 * c) % 4, 0), sch = SFX(dword_byte)(sv, (2 * c + 1) % 4, 0);
            __m256i pl[TXK4], ph[TXK4], pl2[TXK4], ph2[TXK4];   /* the 2s: shorter chains for one token */
            UNROLL
            for (int t = 0; t < T; t++) pl[t] = ph[t] = pl2[t] = ph2[t] = _mm256_setzero_si256();
#else
            const __m256i scl = SFX(dword_byte)(sv, (2 * c) % 4, 1), sch = SFX(dword_byte)(sv, (2 * c + 1) % 4, 1);
            /* Q4_K: the 8 vpmaddubsw of a sub-block add up in int16 before
               the scale: 16 products of a nibble and a Q8_K value (-128..127)
               per lane, at most 16 * 15 * 128 = 30720 < 32767. Q5_K's values
               reach 31: a vpmaddubsw lane is at most 2 * 31 * 128 = 7936
               and four add up to 31744 < 32767, so its sums widen (vpmaddwd
               by the scale pairs) after every 4 chunks, twice per sub-block. */
            __m256i sl[TXK4], sh[TXK4];
#endif
            UNROLL
            for (int q = 0; q < 8; q++) {
                const __m256i v = SFX(loadu)(gb + qso + 32 * (8 * c + q));
                __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                if (q5) {
                    const __m256i hb = SFX(loadu)(gb + 128 + 32 * q);
                    lo = _mm256_or_si256(lo, _mm256_and_si256(Q5_HB(hb, 2 * c), m10));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(Q5_HB(hb, 2 * c + 1), m10));
                }
                UNROLL
                for (int t = 0; t < T; t++) {
                    const int8_t *xq = q8[t]->qs + 64 * c + 4 * q;
#if HAVE_VNNI
                    if (T == 1 && (q & 1)) {
                        pl2[t] = DPBUSD(pl2[t], lo, SFX(bc4)(xq));
                        ph2[t] = DPBUSD(ph2[t], hi, SFX(bc4)(xq + 32));
                    } else {
                        pl[t] = DPBUSD(pl[t], lo, SFX(bc4)(xq));
                        ph[t] = DPBUSD(ph[t], hi, SFX(bc4)(xq + 32));
                    }
#else
                    const __m256i pl = _mm256_maddubs_epi16(lo, SFX(bc4)(xq));
                    const __m256i ph = _mm256_maddubs_epi16(hi, SFX(bc4)(xq + 32));
                    const int first = q5 ? (q & 3) == 0 : q == 0;
                    sl[t] = first ? pl : _mm256_add_epi16(sl[t], pl);
                    sh[t] = first ? ph : _mm256_add_epi16(sh[t], ph);
                    REG_BARRIER(sl[t]);
                    REG_BARRIER(sh[t]);
                    if (q5 && q == 3) {   /* Q5_K: widen the first 4 chunks */
                        isum[t] = DPWSSD(DPWSSD(isum[t], sl[t], scl), sh[t], sch);
                        REG_BARRIER(isum[t]);
                    }
#endif
                }
            }
#if !HAVE_VNNI
            UNROLL
            for (int t = 0; t < T; t++) isum[t] = DPWSSD(DPWSSD(isum[t], sl[t], scl), sh[t], sch);
#endif
#if HAVE_VNNI
            UNROLL
            for (int t = 0; t < T; t++) {
                pl[t] = _mm256_add_epi32(pl[t], pl2[t]);
                ph[t] = _mm256_add_epi32(ph[t], ph2[t]);
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(_mm256_mullo_epi32(pl[t], scl),
                                                                     _mm256_mullo_epi32(ph[t], sch)));
            }
#endif
        }
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)gb));
        const __m256 dm8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gb + 16)));
        UNROLL
        for (int t = 0; t < T; t++) {
            const __m256 dx = _mm256_broadcast_ss(&q8[t]->d);
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(d8, dx), _mm256_cvtepi32_ps(isum[t])));
            acc[t] = _mm256_sub_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(dm8, dx), _mm256_cvtepi32_ps(msum[t])));
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ldy, acc[t]);
}

/* Repacked Q6_K (repack.c): group m's 6-bit values of the 8 rows, as 4
   x 32 unsigned bytes (0..63), one register per sub-block column k. */
INL void SFX(q6_group)(const uint8_t *gb, int m, __m256i e[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
    const __m256i l0 = SFX(loadu)(gb + 144 + 32 * m), l1 = SFX(loadu)(gb + 144 + 32 * (m + 16));
    const __m256i h = SFX(loadu)(gb + 1168 + 32 * m);
    e[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
    e[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
    e[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
    e[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
}

/* The int8 scales of sub-blocks s, 4+s, 8+s, 12+s of the 8 rows (the quants
   of groups 4s..4s+3 fall there): int32 lanes for the VNNI path's
   vpmulld, (sc, sc) int16 pairs for vpmaddwd otherwise. */
INL void SFX(q6_scales)(const uint8_t *gb, int s, __m256i sc[4]) {
    for (int k = 0; k < 4; k++) {
        const __m128i v = _mm_loadl_epi64((const __m128i *)(gb + 16 + 8 * (4 * k + s)));
#if HAVE_VNNI
        sc[k] = _mm256_cvtepi8_epi32(v);
#else
        sc[k] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, v));
#endif
    }
}

/* Q6_K: T tokens x 8 rows */
INL void SFX(tile_x8_q6_K)(const int T, int64_t nb, const uint8_t *w, const uint8_t *x, size_t xs,
                           float *y, int64_t ldy) {
    __m256 acc[TXK6];
    UNROLL
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *gb = w + (size_t)b * 8 * sizeof(block_q6_K);
        SFX(prefetch)(gb, 8 * sizeof(block_q6_K));
        const block_q8_K *q8[TXK6];
        __m256i isum[TXK6];
        UNROLL
        for (int t = 0; t < T; t++) { q8[t] = (const block_q8_K *)(x + (size_t)t * xs) + b; isum[t] = _mm256_setzero_si256(); }
        /* the -32 offset: -32 * sum_s sc_s * bsums_s, on (sc_2i, sc_2i+1) int16 pairs */
        UNROLL
        for (int i = 0; i < 8; i++) {
            const __m128i v = _mm_loadu_si128((const __m128i *)(gb + 16 + 16 * i));
            const __m256i scp = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, _mm_srli_si128(v, 8)));
            UNROLL
            for (int t = 0; t < T; t++) isum[t] = DPWSSD(isum[t], scp, SFX(bc4)(q8[t]->bsums + 2 * i));
        }
        UNROLL
        for (int t = 0; t < T; t++) isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(isum[t], 5));
#if HAVE_VNNI
        UNROLL
        for (int s = 0; s < 4; s++) {
            __m256i sc[4];
            SFX(q6_scales)(gb, s, sc);
            __m256i p[TXK6][4];
            UNROLL
            for (int t = 0; t < T; t++)
                UNROLL
                for (int k = 0; k < 4; k++) p[t][k] = _mm256_setzero_si256();
            UNROLL
            for (int mm = 0; mm < 4; mm++) {
                const int m = 4 * s + mm;
                __m256i e[4];
                SFX(q6_group)(gb, m, e);
                UNROLL
                for (int t = 0; t < T; t++)
                    UNROLL
                    for (int k = 0; k < 4; k++) {
                        p[t][k] = DPBUSD(p[t][k], e[k], SFX(bc4)(q8[t]->qs + 64 * k + 4 * m));
                    }
            }
            UNROLL
            for (int t = 0; t < T; t++)
                UNROLL
                for (int k = 0; k < 4; k++) isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(p[t][k], sc[k]));
        }
#else
        /* Groups m and m + 1 (same sub-blocks, same scales) are unpacked
           together and their two vpmaddubsw add up in int16 before the
           scale: 4 products of a 6-bit value and a Q8_K value per lane, at
           most 4 * 63 * 128 = 32256 < 32767. Nothing is parked across
           iterations, so a 4-token tile stays in 16 ymm registers but for
           the scales (used from the stack as memory operands). */
        UNROLL
        for (int s = 0; s < 4; s++) {
            __m256i sc[4];
            SFX(q6_scales)(gb, s, sc);
            UNROLL
            for (int mp = 0; mp < 2; mp++) {
                const int m = 4 * s + 2 * mp;
                __m256i e[2][4];
                SFX(q6_group)(gb, m, e[0]);
                SFX(q6_group)(gb, m + 1, e[1]);
                UNROLL
                for (int t = 0; t < T; t++)
                    UNROLL
                    for (int k = 0; k < 4; k++) {
                        const __m256i pr = _mm256_add_epi16(
                            _mm256_maddubs_epi16(e[0][k], SFX(bc4)(q8[t]->qs + 64 * k + 4 * m)),
                            _mm256_maddubs_epi16(e[1][k], SFX(bc4)(q8[t]->qs + 64 * k + 4 * (m + 1))));
                        isum[t] = DPWSSD(isum[t], pr, sc[k]);
                        REG_BARRIER(isum[t]);
                    }
            }
        }
#endif
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)gb));
        UNROLL
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(d8, _mm256_broadcast_ss(&q8[t]->d)),
                                                         _mm256_cvtepi32_ps(isum[t])));
    }
    UNROLL
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ldy, acc[t]);
}

/* Groups of 8 rows outer (their block columns stay in L1/L2 while the
   token tiles pass), tiles of tokens inner; the tokens left over go in one
   smaller tile (every weight block is unpacked once per call, so 3 tokens
   in one call cost far less than 2 + 1: a k = 2 speculative verification is
   3 rows, and 6 rows are 4 + 2). With
   PLUS1 a lone token after full tiles joins the last one (5 = one tile of 5,
   9 = 4 + 5): for the kernels with few registers per token, where a tile of
   TTILE + 1 still fits the register file (the tile arrays hold TX32 + 1). */
#define GEMM_X8_DRIVER(fname, call, TTILE, bsize, PLUS1)                                             \
    KRN void fname(int64_t n, const uint8_t *w, size_t gs, int64_t nr, const uint8_t *x, size_t xs,   \
                   int64_t nt, float *y, int64_t ldy) {                                              \
        const int64_t nb = n / (bsize);                                                              \
        for (int64_t g = 0; g < nr / 8; g++) {                                                       \
            const uint8_t *wg = w + (size_t)g * gs;                                                  \
            int64_t t = 0;                                                                           \
            for (; t + (TTILE) <= nt; t += (TTILE)) {                                                \
                if ((PLUS1) && nt - t == (TTILE) + 1) {   /* the last tile takes the lone token */   \
                    call((PLUS1) ? (TTILE) + 1 : (TTILE), nb, wg, x + t * xs, xs, y + t * ldy + 8 * g, ldy); \
                    t = nt;                                                                          \
                    break;                                                                           \
                }                                                                                    \
                call(TTILE, nb, wg, x + t * xs, xs, y + t * ldy + 8 * g, ldy);                       \
            }                                                                                        \
            switch (nt - t) {   /* the tokens left over (fewer than a tile): one call */         \
                X8_REST(call, TTILE, 1) X8_REST(call, TTILE, 2) X8_REST(call, TTILE, 3)                 \
                X8_REST(call, TTILE, 4) X8_REST(call, TTILE, 5) X8_REST(call, TTILE, 6)                 \
                X8_REST(call, TTILE, 7)                                                              \
                default: for (; t < nt; t++) call(1, nb, wg, x + t * xs, xs, y + t * ldy + 8 * g, ldy); \
            }                                                                                        \
        }                                                                                            \
    }
/* case k of the leftover switch: a tile of k tokens (k < TTILE; larger k never occur: their
   case is empty, so no code is generated for it, and the ternary keeps the tile arrays' bounds) */
#define X8_REST(call, TTILE, k)                                                                      \
    case k:                                                                                          \
        if ((k) < (TTILE)) call((k) < (TTILE) ? (k) : 1, nb, wg, x + t * xs, xs, y + t * ldy + 8 * g, ldy); \
        break;
#ifndef X8_PLUS1
#define X8_PLUS1 0
#endif
#define X8_Q4_0(T, ...) SFX(tile_x8_32)(KQ4_0, T, __VA_ARGS__)
#define X8_Q8_0(T, ...) SFX(tile_x8_32)(KQ8_0, T, __VA_ARGS__)
#define X8_Q5_0(T, ...) SFX(tile_x8_32)(KQ5_0, T, __VA_ARGS__)
GEMM_X8_DRIVER(SFX(gemm_x8_q4_0), X8_Q4_0, TX32, 32, X8_PLUS1)
GEMM_X8_DRIVER(SFX(gemm_x8_q8_0), X8_Q8_0, TX32, 32, X8_PLUS1)
#define X8_Q4_K(T, ...) SFX(tile_x8_q4_K)(0, T, __VA_ARGS__)
#define X8_Q5_K(T, ...) SFX(tile_x8_q4_K)(1, T, __VA_ARGS__)
GEMM_X8_DRIVER(SFX(gemm_x8_q4_K), X8_Q4_K, TXK4, QK_K, 0)
GEMM_X8_DRIVER(SFX(gemm_x8_q5_K), X8_Q5_K, TXK4, QK_K, 0)
GEMM_X8_DRIVER(SFX(gemm_x8_q6_K), SFX(tile_x8_q6_K), TXK6, QK_K, 0)
/* Q5_0's tile: TXQ5 tokens (three accumulators per token; half of Q4_0's
   tile unless the table says otherwise: AVX2 measured 4, see kernels_avx2.c) */
#ifndef TXQ5
#define TXQ5 (TX32 / 2)
#endif
GEMM_X8_DRIVER(SFX(gemm_x8_q5_0), X8_Q5_0, TXQ5, 32, 0)
#undef TXQ5
#undef X8_Q4_0
#undef X8_Q8_0
#undef X8_Q5_0
#undef X8_Q4_K
#undef X8_Q5_K
#undef X8_PLUS1
#undef Q5_HB
#undef GEMM_X8_DRIVER
#undef X8_REST

/* ---------------------------------------------------------------------------
 * Float weights (F32, F16, BF16) with float32 activations
 * ------------------------------------------------------------------------- */

/* 8 weights at element i of a row, as floats */
INL __m256 SFX(load_wf)(const int kind, const uint8_t *row, int64_t i) {
    if (kind == KF32) return _mm256_loadu_ps((const float *)row + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * i));
    if (kind == KF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));   /* bf16: exact */
}

INL float SFX(load_wf1)(const int kind, const uint8_t *row, int64_t i) {
    if (kind == KF32) { float f; memcpy(&f, row + 4 * i, 4); return f; }
    uint16_t h;
    memcpy(&h, row + 2 * i, 2);
    return kind == KF16 ? g4_fp16_to_fp32(h) : g4_bf16_to_fp32(h);
}

INL void SFX(tileF)(const int kind, const int R, const int T, int64_t n, const uint8_t *w, size_t ws,
                    const uint8_t *x, size_t xs, float *y, int64_t ldy) {
    __m256 acc[RT][TT];
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wv[RT];
        UNROLL
        for (int r = 0; r < R; r++) wv[r] = SFX(load_wf)(kind, w + (size_t)r * ws, i);
        UNROLL
        for (int t = 0; t < T; t++) {
            const __m256 xv = _mm256_loadu_ps((const float *)(x + (size_t)t * xs) + i);
            UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int t = 0; t < T; t++) {
            float s = SFX(hsum)(acc[r][t]);
            for (int64_t j = i; j < n; j++)
                s += SFX(load_wf1)(kind, w + (size_t)r * ws, j) * ((const float *)(x + (size_t)t * xs))[j];
            y[t * ldy + r] = s;
        }
}

GEMM_DRIVER(SFX(gemm_f32), SFX(tileF), KF32, RT, TT, 1)
GEMM_DRIVER(SFX(gemm_f16), SFX(tileF), KF16, RT, TT, 1)
GEMM_DRIVER(SFX(gemm_bf16), SFX(tileF), KBF16, RT, TT, 1)

/* ---------------------------------------------------------------------------
 * Float helpers for attention (F16 KV cache)
 * ------------------------------------------------------------------------- */

KRN float SFX(dot_f32)(int64_t n, const float *a, const float *b) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = SFX(hsum)(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

KRN float SFX(dot_f16_f32)(int64_t n, const g4_fp16 *a, const float *b) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8))), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), s0);
    float s = SFX(hsum)(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += g4_fp16_to_fp32(a[i]) * b[i];
    return s;
}

KRN void SFX(axpy_f16)(int64_t n, float a, const g4_fp16 *x, float *y) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * g4_fp16_to_fp32(x[i]);
}

KRN void SFX(axpy_f32)(int64_t n, float a, const float *x, float *y) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

/* 8 floats of row r at element i: fp16 (kind KF16) or float (KF32) */
INL __m256 SFX(ld8)(const int kind, const void *row, int64_t i) {
    return kind == KF16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const g4_fp16 *)row + i)))
                        : _mm256_loadu_ps((const float *)row + i);
}

INL float SFX(ld1)(const int kind, const void *row, int64_t i) {
    return kind == KF16 ? g4_fp16_to_fp32(((const g4_fp16 *)row)[i]) : ((const float *)row)[i];
}

/* out[p] = dot(row p, q), four rows at a time so q is loaded once per four */
INL void SFX(dot_rows)(const int kind, int64_t n, int64_t dim, const void *K, int64_t ldk, const float *q, float *out) {
    const size_t es = kind == KF16 ? 2 : 4;
    int64_t p = 0;
    for (; p + 4 <= n; p += 4) {
        const uint8_t *r0 = (const uint8_t *)K + (size_t)p * ldk * es;
        const uint8_t *r1 = r0 + ldk * es, *r2 = r1 + ldk * es, *r3 = r2 + ldk * es;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t i = 0;
        for (; i + 8 <= dim; i += 8) {
            const __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(SFX(ld8)(kind, r0, i), qv, a0);
            a1 = _mm256_fmadd_ps(SFX(ld8)(kind, r1, i), qv, a1);
            a2 = _mm256_fmadd_ps(SFX(ld8)(kind, r2, i), qv, a2);
            a3 = _mm256_fmadd_ps(SFX(ld8)(kind, r3, i), qv, a3);
        }
        /* the four horizontal sums at once */
        const __m256 h01 = _mm256_hadd_ps(a0, a1), h23 = _mm256_hadd_ps(a2, a3);
        const __m256 h = _mm256_hadd_ps(h01, h23);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        float o[4];
        _mm_storeu_ps(o, s);
        for (; i < dim; i++) {
            o[0] += SFX(ld1)(kind, r0, i) * q[i]; o[1] += SFX(ld1)(kind, r1, i) * q[i];
            o[2] += SFX(ld1)(kind, r2, i) * q[i]; o[3] += SFX(ld1)(kind, r3, i) * q[i];
        }
        memcpy(out + p, o, sizeof o);
    }
    for (; p < n; p++) {
        const uint8_t *r = (const uint8_t *)K + (size_t)p * ldk * es;
        __m256 a = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= dim; i += 8) a = _mm256_fmadd_ps(SFX(ld8)(kind, r, i), _mm256_loadu_ps(q + i), a);
        float o = SFX(hsum)(a);
        for (; i < dim; i++) o += SFX(ld1)(kind, r, i) * q[i];
        out[p] = o;
    }
}

/* out = sum_p w[p] * row p: 64 output floats in 8 accumulators per pass */
INL void SFX(wsum_rows)(const int kind, int64_t n, int64_t dim, const void *V, int64_t ldv, const float *w, float *out) {
    const size_t es = kind == KF16 ? 2 : 4;
    int64_t c = 0;
    for (; c + 64 <= dim; c += 64) {
        __m256 acc[8];
        UNROLL
        for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
        for (int64_t p = 0; p < n; p++) {
            const uint8_t *r = (const uint8_t *)V + (size_t)p * ldv * es;
            const __m256 wv = _mm256_broadcast_ss(w + p);
            UNROLL
            for (int k = 0; k < 8; k++) acc[k] = _mm256_fmadd_ps(wv, SFX(ld8)(kind, r, c + 8 * k), acc[k]);
        }
        UNROLL
        for (int k = 0; k < 8; k++) _mm256_storeu_ps(out + c + 8 * k, acc[k]);
    }
    for (; c + 8 <= dim; c += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t p = 0; p < n; p++)
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(w + p), SFX(ld8)(kind, (const uint8_t *)V + (size_t)p * ldv * es, c), acc);
        _mm256_storeu_ps(out + c, acc);
    }
    for (; c < dim; c++) {
        float acc = 0.0f;
        for (int64_t p = 0; p < n; p++) acc += w[p] * SFX(ld1)(kind, (const uint8_t *)V + (size_t)p * ldv * es, c);
        out[c] = acc;
    }
}

KRN void SFX(dot_f16_rows)(int64_t n, int64_t dim, const g4_fp16 *K, int64_t ldk, const float *q, float *out) {
    SFX(dot_rows)(KF16, n, dim, K, ldk, q, out);
}
KRN void SFX(wsum_f16_rows)(int64_t n, int64_t dim, const g4_fp16 *V, int64_t ldv, const float *w, float *out) {
    SFX(wsum_rows)(KF16, n, dim, V, ldv, w, out);
}
KRN void SFX(dot_f32_rows)(int64_t n, int64_t dim, const float *K, int64_t ldk, const float *q, float *out) {
    SFX(dot_rows)(KF32, n, dim, K, ldk, q, out);
}
KRN void SFX(wsum_f32_rows)(int64_t n, int64_t dim, const float *V, int64_t ldv, const float *w, float *out) {
    SFX(wsum_rows)(KF32, n, dim, V, ldv, w, out);
}

KRN void SFX(fp32_to_fp16)(const float *x, g4_fp16 *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = g4_fp32_to_fp16(x[i]);
}

KRN void SFX(fp16_to_fp32)(const g4_fp16 *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = g4_fp16_to_fp32(x[i]);
}

/* ---------------------------------------------------------------------------
 * Q2_K, Q3_K and the i-quants: fused kernels for the common ones (Q2_K, Q3_K,
 * IQ4_XS: blocks unpacked in registers, tiles of tokens); the grid types
 * decoded to g4_kq_block (quant_kq.c) by vector decoders, then kq_dot; IQ4_NL
 * against Q8_0 like Q4_0 through a table.
 * Every kernel returns the reference's exact int32 per block and the same
 * float steps, so the results equal the scalar references bit for bit.
 * ------------------------------------------------------------------------- */

INL int32_t SFX(hsum_i32)(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* sum_g sc[g] * sum(q * x) over the 16 groups, and *summ = sum_g mn[g] * bsums[g].
   |q| <= 127 and |x| <= 127 (Q8_K never produces -128), so vpmaddubsw on
   (|q|, x with q's sign) cannot saturate (2 * 127 * 127 < 32767); the scales are
   at most 64 in magnitude, so every int32 sum is exact. */
KRN int32_t SFX(kq_dot)(const g4_kq_block *k, const block_q8_K *x, int32_t *summ) {
    __m256i acc = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(k->q + 32 * c));
        const __m256i y = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * c));
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
        const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(k->sc[2 * c + 1]), _mm_set1_epi16(k->sc[2 * c]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
    }
    const __m256i mn = _mm256_loadu_si256((const __m256i *)k->mn), bs = _mm256_loadu_si256((const __m256i *)x->bsums);
    *summ = SFX(hsum_i32)(_mm256_madd_epi16(mn, bs));   /* |mn| <= 15, |bsum| <= 2032 */
    return SFX(hsum_i32)(acc);
}

INL uint32_t SFX(u32)(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
INL uint16_t SFX(u16)(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* Fused Q2_K, Q3_K and IQ4_XS kernels (issue 14): each 32-element chunk of a
 * weight block is unpacked in registers and dotted with a tile of up to TKQ
 * tokens at once (TKQ int32 accumulators), so no g4_kq_block is stored and
 * reloaded and prefill / speculative verification share the unpacking. Per
 * block and token the integer results are the reference's exact int32 sumi
 * and summ (g4_kq_dot_ref: integer sums in another order are the same
 * integers), reduced for the tile's tokens together (hsum4), and the float
 * step is g4_kq_block_finish's, op for op, one SSE lane per token:
 *   acc += (d * dx) * (float)sumi;  if (summ) acc -= (dmin * dx) * (float)summ
 * (separate vmulps / vaddps, no FMA; the `if` a blend, since subtracting a
 * zero product could turn a -0 sum into +0 or an inf factor into NaN). So the
 * results equal the scalar references bit for bit. Activations are Q8_K,
 * |x| <= 127 (quantize_q8_K never produces -128). Chunk-per-register ideas
 * from llama.cpp's ggml_vec_dot_q2_K_q8_K / q3_K / iq4_xs (AVX2) and
 * ik_llama.cpp's iqk_mul_mat.cpp, not their code. */
#ifndef G4_KERNELS_X86_ONCE
enum { KF_Q2_K, KF_Q3_K, KF_IQ4_XS };
#define TKQ 4   /* tokens per tile: 4 int32 accumulators (+4 for the Q2_K mins) fit 16 ymm */
#endif

/* the sums of the 8 int32 lanes of a, b, c, d, as [a, b, c, d] */
INL __m128i SFX(hsum4)(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
    const __m256i s = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

/* int16 lanes 0..7 = word i0 of src, lanes 8..15 = word i1 (src: 8 int16
   scales, the same in both 128-bit lanes; vpshufb stays within a lane) */
INL __m256i SFX(pick16)(__m256i src, const int i0, const int i1) {
    const char a = (char)(2 * i0), b = (char)(2 * i0 + 1), c = (char)(2 * i1), d = (char)(2 * i1 + 1);
    return _mm256_shuffle_epi8(src, _mm256_setr_epi8(a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b,
                                                     c, d, c, d, c, d, c, d, c, d, c, d, c, d, c, d));
}

/* Q2_K block (layout: quant.h): chunk c = 4h + k of 32 elements is bits
   2k..2k+1 of qs bytes 32h..32h+31, groups 2c (first 16) and 2c + 1. The
   scale goes into the weight bytes: vpmullw of the 16-bit lanes (q0 + 256 q1)
   by sc gives the bytes q0 sc and q1 sc exactly, as q sc <= 3 * 15 = 45 < 256
   (no carry between the bytes). Then sumi = sum (q sc) x: one vpdpbusd per
   chunk and token with VNNI; without, vpmaddubsw pairs are at most
   2 * 45 * 127 = 11430 and two chunks add in int16 (22860 < 32767) before
   one vpmaddwd. summ = sum mn * bsums (|mn| <= 15, |bsum| <= 16 * 127). */
INL void SFX(kqf_q2_K)(const int T, const uint8_t *wb, const block_q8_K *const *q8, __m256i *isum, __m256i *msum) {
    const __m128i s = _mm_loadu_si128((const __m128i *)wb), m4 = _mm_set1_epi8(0x0f);
    const __m128i sc = _mm_and_si128(s, m4);
    const __m256i src[2] = {_mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc)),
                            _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_srli_si128(sc, 8)))};
    const __m256i mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), m4));
    const __m256i m3 = _mm256_set1_epi8(3);
#if !HAVE_VNNI
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    UNROLL
    for (int t = 0; t < T; t++) isum[t] = _mm256_setzero_si256();
    UNROLL
    for (int h = 0; h < 2; h++) {
        const __m256i v = SFX(loadu)(wb + 16 + 32 * h);
        UNROLL
        for (int kp = 0; kp < 4; kp += 2) {
            __m256i a[2];
            UNROLL
            for (int e = 0; e < 2; e++) {
                const int k = kp + e;
                const __m256i q = _mm256_and_si256(k ? _mm256_srli_epi16(v, 2 * k) : v, m3);
                a[e] = _mm256_mullo_epi16(q, SFX(pick16)(src[h], 2 * k, 2 * k + 1));
            }
            UNROLL
            for (int t = 0; t < T; t++) {
                const int8_t *xq = q8[t]->qs + 128 * h + 32 * kp;
                const __m256i x0 = SFX(loadu)((const uint8_t *)xq), x1 = SFX(loadu)((const uint8_t *)xq + 32);
#if HAVE_VNNI
                isum[t] = DPBUSD(DPBUSD(isum[t], a[0], x0), a[1], x1);
#else
                const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(a[0], x0), _mm256_maddubs_epi16(a[1], x1));
                isum[t] = DPWSSD(isum[t], p, ones);
#endif
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++) msum[t] = _mm256_madd_epi16(mn, _mm256_loadu_si256((const __m256i *)q8[t]->bsums));
}

/* Q3_K block: with u = the 2 low bits | the hmask bit << 2 (0..7), the value
   is u - 4, so sum_g sc_g sum (u - 4) x = sum_g sc_g sum u x - 4 sum_g sc_g
   bsum_g: the second term starts the accumulator. vpmaddubsw pairs of u x are
   at most 2 * 7 * 127 = 1778, then vpmaddwd by sc - 32 (|.| <= 32): exact. */
INL void SFX(kqf_q3_K)(const int T, const uint8_t *wb, const block_q8_K *const *q8, __m256i *isum) {
    __m256i sc16;
    {   /* the 16 6-bit scales, as decode_q3_K (quant_kq.c): scale s = low nibble of byte s
           (s < 8) or high nibble of byte s - 8, then bits 2 (s / 4) .. +1 of byte 8 + s % 4
           on top (vpsrlvd shifts dword s / 4 by 2 (s / 4)) */
        const __m128i a = _mm_loadl_epi64((const __m128i *)(wb + 96)), m4 = _mm_set1_epi8(0x0f);
        const __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(a, m4), _mm_and_si128(_mm_srli_epi16(a, 4), m4));
        const __m128i h = _mm_srlv_epi32(_mm_set1_epi32((int)SFX(u32)(wb + 104)), _mm_setr_epi32(0, 2, 4, 6));
        const __m128i v = _mm_or_si128(lo, _mm_slli_epi16(_mm_and_si128(h, _mm_set1_epi8(3)), 4));   /* no carry */
        sc16 = _mm256_cvtepi8_epi16(_mm_sub_epi8(v, _mm_set1_epi8(32)));
    }
    const __m256i src[2] = {_mm256_permute2x128_si256(sc16, sc16, 0x00), _mm256_permute2x128_si256(sc16, sc16, 0x11)};
    UNROLL
    for (int t = 0; t < T; t++) {
        const __m256i sb = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)q8[t]->bsums));
        isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sb, 2));
    }
    const __m256i hm = SFX(loadu)(wb), m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    UNROLL
    for (int h = 0; h < 2; h++) {
        const __m256i v = SFX(loadu)(wb + 32 + 32 * h);
        UNROLL
        for (int k = 0; k < 4; k++) {
            /* bit j = 4h + k of each hmask byte to bit 2: a 16-bit shift by at most 5
               brings in neighbour bits only above bit 2 of the low byte / below bit 2
               of the high byte, which the mask drops */
            const int j = 4 * h + k;
            const __m256i hb = j < 2 ? _mm256_slli_epi16(hm, 2 - j) : j > 2 ? _mm256_srli_epi16(hm, j - 2) : hm;
            const __m256i u = _mm256_or_si256(_mm256_and_si256(k ? _mm256_srli_epi16(v, 2 * k) : v, m3),
                                              _mm256_and_si256(hb, four));
            const __m256i scp = SFX(pick16)(src[h], 2 * k, 2 * k + 1);
            UNROLL
            for (int t = 0; t < T; t++) {
                const __m256i xv = SFX(loadu)((const uint8_t *)q8[t]->qs + 32 * j);
                isum[t] = DPWSSD(isum[t], _mm256_maddubs_epi16(u, xv), scp);
            }
        }
    }
}

/* IQ4_XS block: values kvalues_iq4nl (-127..113) through vpshufb; the sign
   trick per token (vpmaddubsw of |q| and x with q's sign: pairs at most
   2 * 127 * 127 = 32258 < 32767; an offset to unsigned would overflow the
   pairs), then vpmaddwd by the sub-block scale ls - 32 (|.| <= 32). */
INL void SFX(kqf_iq4_xs)(const int T, const uint8_t *wb, const block_q8_K *const *q8, __m256i *isum, __m256i table) {
    __m256i src;
    {   /* ls of sub-block ib: nibble ib of bytes 4..7 | bits 2 ib, 2 ib + 1 of the u16 at 2,
           moved to bits 4..5 by a multiply by 2^(14 - 2 ib) and a shift right by 10 */
        const __m128i sl = _mm_cvtsi32_si128((int)SFX(u32)(wb + 4)), m4 = _mm_set1_epi8(0x0f);
        const __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(sl, m4), _mm_and_si128(_mm_srli_epi16(sl, 4), m4));
        const __m128i hs = _mm_mullo_epi16(_mm_set1_epi16((short)SFX(u16)(wb + 2)),
                                           _mm_setr_epi16(1 << 14, 1 << 12, 1 << 10, 1 << 8, 1 << 6, 1 << 4, 1 << 2, 1));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(hs, 10), _mm_set1_epi16(0x30));
        src = _mm256_broadcastsi128_si256(_mm_sub_epi16(_mm_or_si128(_mm_cvtepu8_epi16(nib), hi), _mm_set1_epi16(32)));
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    UNROLL
    for (int t = 0; t < T; t++) isum[t] = _mm256_setzero_si256();
    UNROLL
    for (int c = 0; c < 4; c++) {   /* sub-blocks 2c, 2c + 1: 16 bytes each, low nibbles first */
        const __m256i v = SFX(loadu)(wb + 8 + 32 * c);
        const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
        const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
        const __m256i q[2] = {_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31)};
        UNROLL
        for (int e = 0; e < 2; e++) {
            const int ib = 2 * c + e;
            const __m256i qa = _mm256_sign_epi8(q[e], q[e]), scv = SFX(pick16)(src, ib, ib);
            UNROLL
            for (int t = 0; t < T; t++) {
                const __m256i xv = SFX(loadu)((const uint8_t *)q8[t]->qs + 32 * ib);
                isum[t] = DPWSSD(isum[t], _mm256_maddubs_epi16(qa, _mm256_sign_epi8(xv, q[e])), scv);
            }
        }
    }
}

/* One weight row times T <= TKQ tokens: y[t * ldy] for t < T. */
INL void SFX(tile_kqf)(const int kind, const int T, int64_t nb, const uint8_t *w, const uint8_t *x, size_t xs,
                       float *y, int64_t ldy) {
    const size_t wbs = kind == KF_Q2_K ? 84 : kind == KF_Q3_K ? 110 : 136;
    const size_t doff = kind == KF_Q2_K ? 80 : kind == KF_Q3_K ? 108 : 0;   /* the fp16 d */
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)g4_iq4nl_values()));
    __m128 acc = _mm_setzero_ps();   /* lane t: token t's running sum, the reference's float */
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + (size_t)b * wbs;
        const block_q8_K *q8[TKQ];
        UNROLL
        for (int t = 0; t < T; t++) q8[t] = (const block_q8_K *)(x + (size_t)t * xs) + b;
        __m256i isum[TKQ], msum[TKQ];
        if (kind == KF_Q2_K) SFX(kqf_q2_K)(T, wb, q8, isum, msum);
        else if (kind == KF_Q3_K) SFX(kqf_q3_K)(T, wb, q8, isum);
        else SFX(kqf_iq4_xs)(T, wb, q8, isum, table);
        /* lanes t >= T repeat token 0 (computed, never stored) */
#define KQF_L(v, t) (v)[(t) < T ? (t) : 0]
        __m128i si, sm = _mm_setzero_si128();
        if (kind == KF_Q2_K && T <= 2) {
            si = SFX(hsum4)(isum[0], KQF_L(isum, 1), msum[0], KQF_L(msum, 1));
            sm = _mm_shuffle_epi32(si, 0xee);   /* [summ0, summ1, ...] */
        } else {
            si = SFX(hsum4)(isum[0], KQF_L(isum, 1), KQF_L(isum, 2), KQF_L(isum, 3));
            if (kind == KF_Q2_K) sm = SFX(hsum4)(msum[0], KQF_L(msum, 1), KQF_L(msum, 2), KQF_L(msum, 3));
        }
        const __m128 dx = _mm_setr_ps(KQF_L(q8, 0)->d, KQF_L(q8, 1)->d, KQF_L(q8, 2)->d, KQF_L(q8, 3)->d);
#undef KQF_L
        /* the fp16 d (and Q2_K's dmin after it) converted by one vcvtph2ps; Q3_K's d
           ends its block, so 2 bytes only */
        const int dbits = kind == KF_Q2_K ? (int)SFX(u32)(wb + doff) : (int)SFX(u16)(wb + doff);
        const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(dbits));
        const __m128 dw = _mm_shuffle_ps(dd, dd, 0x00);
        acc = _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(dw, dx), _mm_cvtepi32_ps(si)));
        if (kind == KF_Q2_K) {
            const __m128 dm = _mm_shuffle_ps(dd, dd, 0x55);
            const __m128 sub = _mm_sub_ps(acc, _mm_mul_ps(_mm_mul_ps(dm, dx), _mm_cvtepi32_ps(sm)));
            acc = _mm_blendv_ps(sub, acc, _mm_castsi128_ps(_mm_cmpeq_epi32(sm, _mm_setzero_si128())));
        }
    }
    float out[4];
    _mm_storeu_ps(out, acc);
    UNROLL
    for (int t = 0; t < T; t++) y[t * ldy] = out[t];
}

/* Rows one at a time (a row of a 4096-column matrix is 1.3-2.2 KB: it stays in
   L1 for the row's token tiles); tokens in tiles of TKQ, then one tile of the
   1..TKQ-1 left over. */
#ifndef G4_KERNELS_X86_ONCE
#define KQF_DRIVER(fname, kind)                                                                      \
    KRN void fname(int64_t n, const uint8_t *w, size_t ws, int64_t nr, const uint8_t *x, size_t xs,   \
                   int64_t nt, float *y, int64_t ldy) {                                              \
        const int64_t nb = n / QK_K;                                                                 \
        for (int64_t r = 0; r < nr; r++) {                                                           \
            const uint8_t *wr = w + (size_t)r * ws;                                                  \
            int64_t t = 0;                                                                           \
            for (; t + TKQ <= nt; t += TKQ) SFX(tile_kqf)(kind, TKQ, nb, wr, x + t * xs, xs, y + t * ldy + r, ldy); \
            switch (nt - t) {                                                                        \
            case 3: SFX(tile_kqf)(kind, 3, nb, wr, x + t * xs, xs, y + t * ldy + r, ldy); break;     \
            case 2: SFX(tile_kqf)(kind, 2, nb, wr, x + t * xs, xs, y + t * ldy + r, ldy); break;     \
            case 1: SFX(tile_kqf)(kind, 1, nb, wr, x + t * xs, xs, y + t * ldy + r, ldy); break;     \
            }                                                                                        \
        }                                                                                            \
    }
#endif
KQF_DRIVER(SFX(gemm_q2_K), KF_Q2_K)
KQF_DRIVER(SFX(gemm_q3_K), KF_Q3_K)
KQF_DRIVER(SFX(gemm_iq4_xs), KF_IQ4_XS)

/* The grid types: table lookups stay scalar (one 8-byte load per 8 elements);
   signs, scales and the IQ1 offsets are applied 16 bytes at a time. */

/* two 8-byte grid entries with the signs of the bits of s0 (first 8) and s1 */
INL __m128i SFX(signed16)(uint64_t g0, uint64_t g1, uint8_t s0, uint8_t s1) {
    const __m128i g = _mm_set_epi64x((long long)g1, (long long)g0);
    const __m128i s = _mm_set_epi64x((long long)(s1 * 0x0101010101010101ull), (long long)(s0 * 0x0101010101010101ull));
    const __m128i bit = _mm_set1_epi64x((long long)0x8040201008040201ull);
    const __m128i neg = _mm_cmpeq_epi8(_mm_and_si128(s, bit), bit);
    return _mm_sub_epi8(_mm_xor_si128(g, neg), neg);
}


INL void SFX(kq_head)(g4_kq_block *o, float d) {
    o->d = d;
    o->dmin = 0.0f;
    _mm256_storeu_si256((__m256i *)o->mn, _mm256_setzero_si256());
}

/* the 16 group scales 2 * nibble + 1 of 8 bytes (IQ2_XS, IQ2_S) */
INL void SFX(kq_nibble_scales)(g4_kq_block *o, const uint8_t *scales) {
    const __m128i s = _mm_loadl_epi64((const __m128i *)scales), m4 = _mm_set1_epi8(0x0f);
    const __m128i n = _mm_unpacklo_epi8(_mm_and_si128(s, m4), _mm_and_si128(_mm_srli_epi16(s, 4), m4));
    const __m256i v = _mm256_cvtepu8_epi16(n);
    _mm256_storeu_si256((__m256i *)o->sc, _mm256_add_epi16(_mm256_add_epi16(v, v), _mm256_set1_epi16(1)));
}

KRN void SFX(decode_iq2_xxs)(const uint8_t *b, g4_kq_block *o) {
    const g4_iq_tables *T = &g4_iq_grids;
    SFX(kq_head)(o, SFX(f16)(b) * 0.125f);
    for (int ib = 0; ib < 8; ib++) {
        const uint32_t idx = SFX(u32)(b + 2 + 8 * ib), aux = SFX(u32)(b + 6 + 8 * ib);
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(2 * (aux >> 28) + 1);
        for (int h = 0; h < 2; h++)
            _mm_storeu_si128((__m128i *)(o->q + 32 * ib + 16 * h),
                             SFX(signed16)(T->iq2xxs[(idx >> (16 * h)) & 255], T->iq2xxs[(idx >> (16 * h + 8)) & 255],
                                           T->ksigns[(aux >> (14 * h)) & 127], T->ksigns[(aux >> (14 * h + 7)) & 127]));
    }
}

KRN void SFX(decode_iq2_xs)(const uint8_t *b, g4_kq_block *o) {
    const g4_iq_tables *T = &g4_iq_grids;
    SFX(kq_head)(o, SFX(f16)(b) * 0.125f);
    SFX(kq_nibble_scales)(o, b + 66);
    for (int p = 0; p < 16; p++) {
        const uint16_t v0 = SFX(u16)(b + 2 + 4 * p), v1 = SFX(u16)(b + 4 + 4 * p);
        _mm_storeu_si128((__m128i *)(o->q + 16 * p), SFX(signed16)(T->iq2xs[v0 & 511], T->iq2xs[v1 & 511],
                                                                   T->ksigns[v0 >> 9], T->ksigns[v1 >> 9]));
    }
}

KRN void SFX(decode_iq2_s)(const uint8_t *b, g4_kq_block *o) {
    const g4_iq_tables *T = &g4_iq_grids;
    const uint8_t *qs = b + 2, *signs = b + 34, *qh = b + 66;
    SFX(kq_head)(o, SFX(f16)(b) * 0.125f);
    SFX(kq_nibble_scales)(o, b + 74);
    for (int p = 0; p < 16; p++) {
        const int i = 2 * p;
        const int i0 = qs[i] | ((qh[i / 4] >> (2 * (i % 4))) & 3) << 8;
        const int i1 = qs[i + 1] | ((qh[(i + 1) / 4] >> (2 * ((i + 1) % 4))) & 3) << 8;
        _mm_storeu_si128((__m128i *)(o->q + 16 * p), SFX(signed16)(T->iq2s[i0], T->iq2s[i1], signs[i], signs[i + 1]));
    }
}

KRN void SFX(decode_iq3_xxs)(const uint8_t *b, g4_kq_block *o) {
    const g4_iq_tables *T = &g4_iq_grids;
    const uint8_t *qs = b + 2;
    SFX(kq_head)(o, SFX(f16)(b) * 0.25f);
    for (int ib = 0; ib < 8; ib++) {
        const uint32_t aux = SFX(u32)(b + 66 + 4 * ib);
        const uint8_t *g = qs + 8 * ib;
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(2 * (aux >> 28) + 1);
        for (int h = 0; h < 2; h++) {   /* 8-element groups k = 2h, 2h + 1 */
            const uint64_t g0 = T->iq3xxs[g[4 * h]] | (uint64_t)T->iq3xxs[g[4 * h + 1]] << 32;
            const uint64_t g1 = T->iq3xxs[g[4 * h + 2]] | (uint64_t)T->iq3xxs[g[4 * h + 3]] << 32;
            _mm_storeu_si128((__m128i *)(o->q + 32 * ib + 16 * h),
                             SFX(signed16)(g0, g1, T->ksigns[(aux >> (14 * h)) & 127], T->ksigns[(aux >> (14 * h + 7)) & 127]));
        }
    }
}

KRN void SFX(decode_iq3_s)(const uint8_t *b, g4_kq_block *o) {
    const g4_iq_tables *T = &g4_iq_grids;
    const uint8_t *qs = b + 2, *qh = b + 66, *signs = b + 74, *scales = b + 106;
    SFX(kq_head)(o, SFX(f16)(b));
    for (int ib = 0; ib < 8; ib++)
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(2 * ((scales[ib / 2] >> (4 * (ib % 2))) & 15) + 1);
    for (int p = 0; p < 16; p++) {   /* grid entries 4p .. 4p + 3, elements 16p .. 16p + 15 */
        uint64_t g[2];
        for (int k = 0; k < 2; k++) {
            const int i = 4 * p + 2 * k;
            const int i0 = qs[i] | ((qh[i / 8] >> (i % 8)) & 1) << 8, i1 = qs[i + 1] | ((qh[(i + 1) / 8] >> ((i + 1) % 8)) & 1) << 8;
            g[k] = T->iq3s[i0] | (uint64_t)T->iq3s[i1] << 32;
        }
        _mm_storeu_si128((__m128i *)(o->q + 16 * p), SFX(signed16)(g[0], g[1], signs[2 * p], signs[2 * p + 1]));
    }
}

/* IQ1: grid bytes -1/0/+1 as 8 g +- 1 (the delta's sign per 8 elements) */
INL __m128i SFX(iq1_16)(uint64_t g0, uint64_t g1, int neg0, int neg1) {
    const __m128i g = _mm_set_epi64x((long long)g1, (long long)g0);
    const __m128i g8 = _mm_and_si128(_mm_slli_epi16(g, 3), _mm_set1_epi8((char)0xf8));   /* 8 g per byte */
    const __m128i delta = _mm_set_epi64x(neg1 ? -1LL : 0x0101010101010101LL, neg0 ? -1LL : 0x0101010101010101LL);
    return _mm_add_epi8(g8, delta);
}

KRN void SFX(decode_iq1_s)(const uint8_t *b, g4_kq_block *o) {
    const g4_iq_tables *T = &g4_iq_grids;
    const uint8_t *qs = b + 2;
    SFX(kq_head)(o, SFX(f16)(b) * 0.125f);
    for (int ib = 0; ib < 8; ib++) {
        const uint16_t h = SFX(u16)(b + 34 + 2 * ib);
        const int neg = h >> 15;
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(2 * ((h >> 12) & 7) + 1);
        for (int k = 0; k < 4; k += 2)
            _mm_storeu_si128((__m128i *)(o->q + 32 * ib + 8 * k),
                             SFX(iq1_16)(T->iq1s[qs[4 * ib + k] | ((h >> (3 * k)) & 7) << 8],
                                         T->iq1s[qs[4 * ib + k + 1] | ((h >> (3 * k + 3)) & 7) << 8], neg, neg));
    }
}

KRN void SFX(decode_iq1_m)(const uint8_t *b, g4_kq_block *o) {
    const g4_iq_tables *T = &g4_iq_grids;
    const uint8_t *qs = b, *qh = b + 32;
    uint16_t s[4];
    for (int w = 0; w < 4; w++) s[w] = SFX(u16)(b + 48 + 2 * w);
    const uint16_t dh = (uint16_t)((s[0] >> 12) | ((s[1] >> 8) & 0xf0) | ((s[2] >> 4) & 0xf00) | (s[3] & 0xf000));
    SFX(kq_head)(o, SFX(f16)((const uint8_t *)&dh) * 0.125f);
    for (int g = 0; g < 16; g++) o->sc[g] = (int16_t)(2 * ((s[g / 4] >> (3 * (g % 4))) & 7) + 1);
    for (int p = 0; p < 16; p++) {   /* qh byte p: a nibble for 8-element groups 2p and 2p + 1 */
        const int n0 = qh[p] & 15, n1 = qh[p] >> 4;
        _mm_storeu_si128((__m128i *)(o->q + 16 * p),
                         SFX(iq1_16)(T->iq1s[qs[2 * p] | (n0 & 7) << 8], T->iq1s[qs[2 * p + 1] | (n1 & 7) << 8],
                                     n0 & 8, n1 & 8));
    }
}

#define KQ_X86(name, TYPE, DEC)                                                                      \
    KRN void SFX(gemm_##name)(int64_t n, const uint8_t *w, size_t ws, int64_t nr, const uint8_t *x,  \
                              size_t xs, int64_t nt, float *y, int64_t ldy) {                        \
        g4_gemm_kq(TYPE, DEC, SFX(kq_dot), n, w, ws, nr, x, xs, nt, y, ldy);                         \
    }
KQ_X86(iq3_xxs, G4_TYPE_IQ3_XXS, SFX(decode_iq3_xxs))
KQ_X86(iq3_s, G4_TYPE_IQ3_S, SFX(decode_iq3_s))
KQ_X86(iq2_xxs, G4_TYPE_IQ2_XXS, SFX(decode_iq2_xxs))
KQ_X86(iq2_xs, G4_TYPE_IQ2_XS, SFX(decode_iq2_xs))
KQ_X86(iq2_s, G4_TYPE_IQ2_S, SFX(decode_iq2_s))
KQ_X86(iq1_s, G4_TYPE_IQ1_S, SFX(decode_iq1_s))
KQ_X86(iq1_m, G4_TYPE_IQ1_M, SFX(decode_iq1_m))
#undef KQ_X86

/* IQ4_NL x Q8_0: per block the exact int32 as ref_dot_iq4_nl_q8_0, then
   acc += sumi * (d_w * d_x) in block order (the reference's float steps).
   Weight blocks outer, tokens inner, so a block is decoded once per call.
   The running sums live in registers (one token) or a local array of
   independent chains (several), not in y: y may alias nothing the compiler
   can see, so `y[...] +=` per block made a store-to-load chain of ~6 cycles
   per 18-byte block, which was most of the decode time (perf annotate). */
INL __m256i SFX(iq4_nl_q)(const uint8_t *blk, __m128i table) {
    const __m128i m4 = _mm_set1_epi8(0x0f), v = _mm_loadu_si128((const __m128i *)(blk + 2));
    return _mm256_set_m128i(_mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(v, 4), m4)),
                            _mm_shuffle_epi8(table, _mm_and_si128(v, m4)));
}

INL int32_t SFX(iq4_nl_sumi)(__m256i q, const uint8_t *xb) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(SFX(loadu)(xb + 2), q));
    return SFX(hsum_i32)(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

KRN void SFX(gemm_iq4_nl)(int64_t n, const uint8_t *w, size_t ws, int64_t nr, const uint8_t *x,
                          size_t xs, int64_t nt, float *y, int64_t ldy) {
    enum { NL_TT = 8 };    /* tokens per pass over a row */
    const __m128i table = _mm_loadu_si128((const __m128i *)g4_iq4nl_values());
    const int64_t nb = n / QK4_NL;
    for (int64_t r = 0; r < nr; r++) {
        const uint8_t *row = w + (size_t)r * ws;
        if (nt == 1) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * sizeof(block_iq4_nl);
                const uint8_t *xb = x + (size_t)b * sizeof(block_q8_0);
                acc += (float)SFX(iq4_nl_sumi)(SFX(iq4_nl_q)(blk, table), xb) * (SFX(f16)(blk) * SFX(f16)(xb));
            }
            y[r] = acc;
            continue;
        }
        for (int64_t t0 = 0; t0 < nt; t0 += NL_TT) {
            const int64_t tn = nt - t0 < NL_TT ? nt - t0 : NL_TT;
            float acc[NL_TT] = { 0 };
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * sizeof(block_iq4_nl);
                const __m256i q = SFX(iq4_nl_q)(blk, table);
                const float dw = SFX(f16)(blk);
                for (int64_t t = 0; t < tn; t++) {
                    const uint8_t *xb = x + (size_t)(t0 + t) * xs + (size_t)b * sizeof(block_q8_0);
                    acc[t] += (float)SFX(iq4_nl_sumi)(q, xb) * (dw * SFX(f16)(xb));
                }
            }
            for (int64_t t = 0; t < tn; t++) y[(t0 + t) * ldy + r] = acc[t];
        }
    }
}

/* The table entries this inclusion provides (the including file adds .isa). */
#ifndef G4_KERNELS_X86_ONCE
#define G4_KERNELS_X86_ONCE
#define X86_KERNEL_ENTRIES                                                                           \
    .quantize_q8_0 = SFX(quantize_q8_0), .quantize_q8_K = SFX(quantize_q8_K),                        \
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
        [G4_TYPE_Q5_0] = SFX(gemm_x8_q5_0), [G4_TYPE_Q5_K] = SFX(gemm_x8_q5_K),                      \
    },                                                                                               \
    .dot_f32 = SFX(dot_f32), .dot_f16_f32 = SFX(dot_f16_f32), .axpy_f16 = SFX(axpy_f16),             \
    .axpy_f32 = SFX(axpy_f32),                                                                       \
    .dot_f16_rows = SFX(dot_f16_rows), .wsum_f16_rows = SFX(wsum_f16_rows),                          \
    .dot_f32_rows = SFX(dot_f32_rows), .wsum_f32_rows = SFX(wsum_f32_rows),                          \
    .fp32_to_fp16 = SFX(fp32_to_fp16), .fp16_to_fp32 = SFX(fp16_to_fp32)
#endif
