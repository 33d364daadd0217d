/* quant_kq.c - Q2_K, Q3_K and the i-quants (IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S,
 * IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M): scalar references.
 *
 * Every 256-element type is decoded block by block into one integer form,
 * g4_kq_block (quant.h): int8 values, int16 scales and mins per 16 elements
 * and two float factors. Dequantization, the reference dot with Q8_K
 * activations and the vectorized kernels (kernels_x86.h, kernels_arm.h) all
 * start from that form, so each format's bit layout is written down once, here
 * (except x86's fused Q2_K, Q3_K and IQ4_XS kernels, which unpack in registers
 * and are tested bit for bit against these references).
 * IQ4_NL has blocks of 32 and pairs with Q8_0 activations, as in ggml
 * (ggml-cpu.c type_traits_cpu[GGML_TYPE_IQ4_NL].vec_dot_type).
 *
 * Layouts and formulas: llama.cpp ggml/src/ggml-common.h (block_*), ggml-quants.c
 * dequantize_row_q2_K ... dequantize_row_iq1_m; cross-checked element for element
 * against gguf-py's numpy dequantizers (tests/test_quant_types.py). Grids and sign
 * tables: iq_tables.h. Blocks may sit at any 2-byte boundary of a mapping, so
 * multi-byte fields are read with memcpy.
 */
#include "quant.h"
#include "kernels.h"
#include "iq_tables.h"

#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")   /* see quant_ref.c */
#endif

static inline float f16_at(const uint8_t *p) { g4_fp16 h; memcpy(&h, p, 2); return g4_fp16_to_fp32(h); }
static inline uint16_t u16_at(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* 8 grid magnitudes (bytes of g, element 0 lowest) with the signs of the 8 bits of s. */
static inline void put8_signed(int8_t *q, uint64_t g, uint8_t s) {
    for (int j = 0; j < 8; j++) {
        int v = (int)((g >> (8 * j)) & 0xff);
        q[j] = (int8_t)((s >> j) & 1 ? -v : v);
    }
}

static inline void put4_signed(int8_t *q, uint32_t g, uint8_t s) {
    for (int j = 0; j < 4; j++) {
        int v = (int)((g >> (8 * j)) & 0xff);
        q[j] = (int8_t)((s >> j) & 1 ? -v : v);
    }
}

/* ---- the K-quants with 2 and 3 bits ----------------------------------------- */

static void decode_q2_K(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *scales = b, *qs = b + 16;
    o->d = f16_at(b + 80);
    o->dmin = f16_at(b + 82);
    for (int s = 0; s < 16; s++) { o->sc[s] = scales[s] & 15; o->mn[s] = scales[s] >> 4; }
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) o->q[128 * h + 32 * k + l] = (int8_t)((qs[32 * h + l] >> (2 * k)) & 3);
}

static void decode_q3_K(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *hmask = b, *qs = b + 32, *sc = b + 96;
    o->d = f16_at(b + 108);
    o->dmin = 0.0f;
    for (int s = 0; s < 16; s++) {
        int lo = s < 8 ? sc[s] & 15 : sc[s - 8] >> 4;
        int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        o->sc[s] = (int16_t)((lo | hi << 4) - 32);
        o->mn[s] = 0;
    }
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) {
                int q = (qs[32 * h + l] >> (2 * k)) & 3;
                int high = (hmask[l] >> (4 * h + k)) & 1;
                o->q[128 * h + 32 * k + l] = (int8_t)(q - (high ? 0 : 4));
            }
}

/* ---- 4-bit non-linear ------------------------------------------------------------ */

static void decode_iq4_xs(const uint8_t *b, g4_kq_block *o) {
    const uint16_t sh = u16_at(b + 2);
    const uint8_t *sl = b + 4, *qs = b + 8;
    o->d = f16_at(b);
    o->dmin = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 15) | ((sh >> (2 * ib)) & 3) << 4;
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(ls - 32);
        o->mn[2 * ib] = o->mn[2 * ib + 1] = 0;
        for (int j = 0; j < 16; j++) {
            o->q[32 * ib + j] = g4_kvalues_iq4nl[qs[16 * ib + j] & 15];
            o->q[32 * ib + 16 + j] = g4_kvalues_iq4nl[qs[16 * ib + j] >> 4];
        }
    }
}

/* ---- 3-bit grids ------------------------------------------------------------------ */

static void decode_iq3_xxs(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *qs = b + 2, *ss = b + 66;
    o->d = f16_at(b) * 0.25f;   /* (ls + 1/2) / 2 = (2 ls + 1) / 4 */
    o->dmin = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        const uint32_t aux = u32_at(ss + 4 * ib);
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(2 * (aux >> 28) + 1);
        o->mn[2 * ib] = o->mn[2 * ib + 1] = 0;
        for (int k = 0; k < 4; k++) {
            const uint8_t s = g4_ksigns_iq2xs[(aux >> (7 * k)) & 127];
            int8_t *q = o->q + 32 * ib + 8 * k;
            put4_signed(q, g4_iq3xxs_grid[qs[8 * ib + 2 * k]], s);
            put4_signed(q + 4, g4_iq3xxs_grid[qs[8 * ib + 2 * k + 1]], (uint8_t)(s >> 4));
        }
    }
}

static void decode_iq3_s(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *qs = b + 2, *qh = b + 66, *signs = b + 74, *scales = b + 106;
    o->d = f16_at(b);
    o->dmin = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(2 * ((scales[ib / 2] >> (4 * (ib % 2))) & 15) + 1);
        o->mn[2 * ib] = o->mn[2 * ib + 1] = 0;
    }
    for (int i = 0; i < 64; i++) {   /* grid entry i: elements 4i..4i+3 */
        const int idx = qs[i] | ((qh[i / 8] >> (i % 8)) & 1) << 8;
        put4_signed(o->q + 4 * i, g4_iq3s_grid[idx], (uint8_t)(signs[i / 2] >> (4 * (i % 2))));
    }
}

/* ---- 2-bit grids ------------------------------------------------------------------ */

static void decode_iq2_xxs(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *qs = b + 2;
    o->d = f16_at(b) * 0.125f;   /* (ls + 1/2) / 4 = (2 ls + 1) / 8 */
    o->dmin = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        const uint32_t idx = u32_at(qs + 8 * ib), aux = u32_at(qs + 8 * ib + 4);
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(2 * (aux >> 28) + 1);
        o->mn[2 * ib] = o->mn[2 * ib + 1] = 0;
        for (int k = 0; k < 4; k++)
            put8_signed(o->q + 32 * ib + 8 * k, g4_iq2xxs_grid[(idx >> (8 * k)) & 255],
                        g4_ksigns_iq2xs[(aux >> (7 * k)) & 127]);
    }
}

/* IQ2_XS / IQ2_S: d / 8 and a scale nibble per 16 elements, 2 ls + 1 */
static void iq2_head(const uint8_t *b, const uint8_t *scales, g4_kq_block *o) {
    o->d = f16_at(b) * 0.125f;
    o->dmin = 0.0f;
    for (int g = 0; g < 16; g++) {
        o->sc[g] = (int16_t)(2 * ((scales[g / 2] >> (4 * (g % 2))) & 15) + 1);
        o->mn[g] = 0;
    }
}

static void decode_iq2_xs(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *qs = b + 2;
    iq2_head(b, b + 66, o);
    for (int i = 0; i < 32; i++) {
        const uint16_t v = u16_at(qs + 2 * i);
        put8_signed(o->q + 8 * i, g4_iq2xs_grid[v & 511], g4_ksigns_iq2xs[v >> 9]);
    }
}

static void decode_iq2_s(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *qs = b + 2, *signs = b + 34, *qh = b + 66;
    iq2_head(b, b + 74, o);
    for (int i = 0; i < 32; i++) {
        const int idx = qs[i] | ((qh[i / 4] >> (2 * (i % 4))) & 3) << 8;
        put8_signed(o->q + 8 * i, g4_iq2s_grid[idx], signs[i]);
    }
}

/* ---- 1-bit grids: x = dl * (g + delta), delta = +-1/8, as dl / 8 * (8 g +- 1) ---- */

static inline void put8_iq1(int8_t *q, uint64_t g, int neg) {
    for (int j = 0; j < 8; j++) q[j] = (int8_t)(8 * (int8_t)((g >> (8 * j)) & 0xff) + (neg ? -1 : 1));
}

static void decode_iq1_s(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *qs = b + 2, *qh = b + 34;
    o->d = f16_at(b) * 0.125f;
    o->dmin = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        const uint16_t h = u16_at(qh + 2 * ib);
        o->sc[2 * ib] = o->sc[2 * ib + 1] = (int16_t)(2 * ((h >> 12) & 7) + 1);
        o->mn[2 * ib] = o->mn[2 * ib + 1] = 0;
        for (int k = 0; k < 4; k++)
            put8_iq1(o->q + 32 * ib + 8 * k, g4_iq1s_grid[qs[4 * ib + k] | ((h >> (3 * k)) & 7) << 8], h >> 15);
    }
}

static void decode_iq1_m(const uint8_t *b, g4_kq_block *o) {
    const uint8_t *qs = b, *qh = b + 32, *scales = b + 48;
    uint16_t s[4];
    for (int w = 0; w < 4; w++) s[w] = u16_at(scales + 2 * w);
    const g4_fp16 dh = (g4_fp16)((s[0] >> 12) | ((s[1] >> 8) & 0xf0) | ((s[2] >> 4) & 0xf00) | (s[3] & 0xf000));
    o->d = g4_fp16_to_fp32(dh) * 0.125f;
    o->dmin = 0.0f;
    for (int g = 0; g < 16; g++) {
        o->sc[g] = (int16_t)(2 * ((s[g / 4] >> (3 * (g % 4))) & 7) + 1);
        o->mn[g] = 0;
    }
    for (int i = 0; i < 32; i++) {   /* 8 elements each, a nibble of qh */
        const int nib = (qh[i / 2] >> (4 * (i % 2))) & 15;
        put8_iq1(o->q + 8 * i, g4_iq1s_grid[qs[i] | (nib & 7) << 8], nib & 8);
    }
}

int g4_kq_decode(uint32_t type, const void *block, g4_kq_block *out) {
    const uint8_t *b = block;
    switch (type) {
    case G4_TYPE_Q2_K: decode_q2_K(b, out); return 1;
    case G4_TYPE_Q3_K: decode_q3_K(b, out); return 1;
    case G4_TYPE_IQ4_XS: decode_iq4_xs(b, out); return 1;
    case G4_TYPE_IQ3_XXS: decode_iq3_xxs(b, out); return 1;
    case G4_TYPE_IQ3_S: decode_iq3_s(b, out); return 1;
    case G4_TYPE_IQ2_XXS: decode_iq2_xxs(b, out); return 1;
    case G4_TYPE_IQ2_XS: decode_iq2_xs(b, out); return 1;
    case G4_TYPE_IQ2_S: decode_iq2_s(b, out); return 1;
    case G4_TYPE_IQ1_S: decode_iq1_s(b, out); return 1;
    case G4_TYPE_IQ1_M: decode_iq1_m(b, out); return 1;
    }
    return 0;
}

g4_kq_decode_fn g4_kq_decoder(uint32_t type) {
    switch (type) {
    case G4_TYPE_Q2_K: return decode_q2_K;
    case G4_TYPE_Q3_K: return decode_q3_K;
    case G4_TYPE_IQ4_XS: return decode_iq4_xs;
    case G4_TYPE_IQ3_XXS: return decode_iq3_xxs;
    case G4_TYPE_IQ3_S: return decode_iq3_s;
    case G4_TYPE_IQ2_XXS: return decode_iq2_xxs;
    case G4_TYPE_IQ2_XS: return decode_iq2_xs;
    case G4_TYPE_IQ2_S: return decode_iq2_s;
    case G4_TYPE_IQ1_S: return decode_iq1_s;
    case G4_TYPE_IQ1_M: return decode_iq1_m;
    }
    return NULL;
}

/* ---- dequantization and the reference dots ----------------------------------------- */

void g4_dequantize_row_kq(uint32_t type, const void *src, float *y, int64_t n) {
    const g4_kq_decode_fn dec = g4_kq_decoder(type);
    const size_t bsz = g4_type_size(type);
    g4_kq_block k;
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        dec((const uint8_t *)src + (size_t)b * bsz, &k);
        for (int j = 0; j < QK_K; j++) {
            const float v = (k.d * (float)k.sc[j / 16]) * (float)k.q[j];
            y[j] = k.mn[j / 16] ? v - k.dmin * (float)k.mn[j / 16] : v;
        }
    }
}

/* The exact integer part of a decoded block's dot with a Q8_K block: sumi = sum over
   the 16 groups of sc * sum(q * x); *summ = sum of mn * bsums. */
int32_t g4_kq_dot_ref(const g4_kq_block *k, const block_q8_K *x, int32_t *summ) {
    int32_t sumi = 0, sm = 0;
    for (int g = 0; g < 16; g++) {
        int32_t s = 0;
        for (int j = 16 * g; j < 16 * g + 16; j++) s += (int32_t)k->q[j] * x->qs[j];
        sumi += k->sc[g] * s;
        sm += k->mn[g] * x->bsums[g];
    }
    *summ = sm;
    return sumi;
}

float g4_kq_block_finish(float acc, const g4_kq_block *k, float dx, int32_t sumi, int32_t summ) {
    acc += (k->d * dx) * (float)sumi;
    if (summ) acc -= (k->dmin * dx) * (float)summ;
    return acc;
}

float g4_ref_dot_kq_acc(uint32_t type, float acc, int64_t nb, const void *w, const block_q8_K *x) {
    const g4_kq_decode_fn dec = g4_kq_decoder(type);
    const size_t bsz = g4_type_size(type);
    g4_kq_block k;
    for (int64_t b = 0; b < nb; b++) {
        dec((const uint8_t *)w + (size_t)b * bsz, &k);
        int32_t summ;
        const int32_t sumi = g4_kq_dot_ref(&k, &x[b], &summ);
        acc = g4_kq_block_finish(acc, &k, x[b].d, sumi, summ);
    }
    return acc;
}

/* The generic matmul over decoded blocks: each weight block is decoded once per
   call (by `dec`, which must fill the block exactly as g4_kq_decoder(type)'s)
   and dotted with every token's activation block, in the reference's order
   (blocks in sequence per output), so any `dot` that returns the exact integers
   gives bit-identical results. y is used as the running sum. */
void g4_gemm_kq(uint32_t type, g4_kq_decode_fn dec, g4_kq_dot_fn dot, int64_t n, const uint8_t *w, size_t ws,
                int64_t nr, const uint8_t *x, size_t xs, int64_t nt, float *y, int64_t ldy) {
    const size_t bsz = g4_type_size(type);
    const int64_t nb = n / QK_K;
    _Alignas(64) g4_kq_block k;
    enum { TT = 8 };   /* tokens per pass; their sums stay local, not a store/load of y per block */
    for (int64_t r = 0; r < nr; r++) {
        for (int64_t t0 = 0; t0 < nt; t0 += TT) {
            const int64_t tn = nt - t0 < TT ? nt - t0 : TT;
            float acc[TT] = { 0 };
            for (int64_t b = 0; b < nb; b++) {
                dec(w + (size_t)r * ws + (size_t)b * bsz, &k);
                for (int64_t t = 0; t < tn; t++) {
                    const block_q8_K *xb = (const block_q8_K *)(x + (size_t)(t0 + t) * xs) + b;
                    int32_t summ;
                    const int32_t sumi = dot(&k, xb, &summ);
                    acc[t] = g4_kq_block_finish(acc[t], &k, xb->d, sumi, summ);
                }
            }
            for (int64_t t = 0; t < tn; t++) y[(t0 + t) * ldy + r] = acc[t];
        }
    }
}

/* ---- IQ4_NL: blocks of 32 with Q8_0 activations ----------------------------------------- */

void g4_dequantize_row_iq4_nl(const block_iq4_nl *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_NL; b++, y += QK4_NL) {
        const float d = f16_at((const uint8_t *)&x[b].d);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)g4_kvalues_iq4nl[x[b].qs[j] & 15];
            y[j + 16] = d * (float)g4_kvalues_iq4nl[x[b].qs[j] >> 4];
        }
    }
}

float g4_ref_dot_iq4_nl_q8_0_acc(float acc, int64_t nb, const block_iq4_nl *w, const block_q8_0 *x) {
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += g4_kvalues_iq4nl[w[b].qs[j] & 15] * x[b].qs[j] + g4_kvalues_iq4nl[w[b].qs[j] >> 4] * x[b].qs[j + 16];
        acc += (float)sumi * (f16_at((const uint8_t *)&w[b].d) * f16_at((const uint8_t *)&x[b].d));
    }
    return acc;
}

float g4_vec_dot_iq4_nl_q8_0(int64_t n, const block_iq4_nl *w, const block_q8_0 *x) {
    return g4_ref_dot_iq4_nl_q8_0_acc(0.0f, n / QK4_NL, w, x);
}

float g4_vec_dot_kq_q8_K(uint32_t type, int64_t n, const void *w, const block_q8_K *x) {
    return g4_ref_dot_kq_acc(type, 0.0f, n / QK_K, w, x);
}

const int8_t *g4_iq4nl_values(void) { return g4_kvalues_iq4nl; }

const g4_iq_tables g4_iq_grids = {
    .iq2xxs = g4_iq2xxs_grid, .iq2xs = g4_iq2xs_grid, .iq2s = g4_iq2s_grid, .iq1s = g4_iq1s_grid,
    .iq3xxs = g4_iq3xxs_grid, .iq3s = g4_iq3s_grid, .ksigns = g4_ksigns_iq2xs,
};
