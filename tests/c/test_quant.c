/* test_quant.c - the type table, half-precision conversions and the scalar
 * Q8_0/Q4_0 references.
 *
 * References: block sizes from ggml-common.h's static_asserts; fp32->fp16
 * against the CPU's own F16C conversion (vcvtps2ph, round to nearest even)
 * and against a brute-force nearest-value search written here in double;
 * bf16 against the same brute force. Quantizer bit-exactness against ggml's
 * rounding is checked in tests/test_gguf.py with gguf-py's implementation.
 */
#include "g4test.h"

#include "gguf/gguf.h"
#include "quant/quant.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static float f_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* xorshift64*: deterministic test data */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_u64(void) {
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}
static float rng_normal(void) {   /* Box-Muller */
    double u1 = ((rng_u64() >> 11) + 1.0) / 9007199254740993.0, u2 = (rng_u64() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---- the type table ---- */

START_TEST(test_type_table) {
    static const struct { uint32_t t; const char *name; size_t blck, size; int sup; } want[] = {
        {G4_TYPE_F32, "F32", 1, 4, 1},     {G4_TYPE_F16, "F16", 1, 2, 1},     {G4_TYPE_BF16, "BF16", 1, 2, 1},
        {G4_TYPE_Q4_0, "Q4_0", 32, 18, 1}, {G4_TYPE_Q8_0, "Q8_0", 32, 34, 1},
        {G4_TYPE_Q4_1, "Q4_1", 32, 20, 1}, {G4_TYPE_Q5_0, "Q5_0", 32, 22, 1}, {G4_TYPE_Q5_1, "Q5_1", 32, 24, 1},
        {G4_TYPE_Q8_1, "Q8_1", 32, 36, 0},
        {G4_TYPE_Q2_K, "Q2_K", 256, 84, 1},  {G4_TYPE_Q3_K, "Q3_K", 256, 110, 1},
        {G4_TYPE_Q4_K, "Q4_K", 256, 144, 1}, {G4_TYPE_Q5_K, "Q5_K", 256, 176, 1},
        {G4_TYPE_Q6_K, "Q6_K", 256, 210, 1}, {G4_TYPE_Q8_K, "Q8_K", 256, 292, 0},
        {G4_TYPE_I8, "I8", 1, 1, 0}, {G4_TYPE_I16, "I16", 1, 2, 0}, {G4_TYPE_I32, "I32", 1, 4, 0},
        {G4_TYPE_I64, "I64", 1, 8, 0}, {G4_TYPE_F64, "F64", 1, 8, 0},
        {G4_TYPE_IQ4_NL, "IQ4_NL", 32, 18, 1}, {G4_TYPE_IQ4_XS, "IQ4_XS", 256, 136, 1},
        {G4_TYPE_IQ3_XXS, "IQ3_XXS", 256, 98, 1}, {G4_TYPE_IQ3_S, "IQ3_S", 256, 110, 1},
        {G4_TYPE_IQ2_XXS, "IQ2_XXS", 256, 66, 1}, {G4_TYPE_IQ2_XS, "IQ2_XS", 256, 74, 1},
        {G4_TYPE_IQ2_S, "IQ2_S", 256, 82, 1}, {G4_TYPE_IQ1_S, "IQ1_S", 256, 50, 1},
        {G4_TYPE_IQ1_M, "IQ1_M", 256, 56, 1},
        {G4_TYPE_MXFP4, "MXFP4", 32, 17, 0}, {G4_TYPE_TQ1_0, "TQ1_0", 256, 54, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        ck_assert_str_eq(g4_type_name(want[i].t), want[i].name);
        ck_assert_uint_eq(g4_blck_size(want[i].t), want[i].blck);
        ck_assert_uint_eq(g4_type_size(want[i].t), want[i].size);
        ck_assert_int_eq(g4_type_supported(want[i].t), want[i].sup);
    }
    /* the block structs are ggml-common.h's (its static_asserts give these sizes) */
    ck_assert_uint_eq(sizeof(block_q8_0), 34);
    ck_assert_uint_eq(sizeof(block_q4_0), 18);
    ck_assert_uint_eq(sizeof(block_q4_1), 20);
    ck_assert_uint_eq(sizeof(block_q5_0), 22);
    ck_assert_uint_eq(sizeof(block_q2_K), 84);
    ck_assert_uint_eq(sizeof(block_q3_K), 110);
    ck_assert_uint_eq(sizeof(block_iq4_nl), 18);
    ck_assert_uint_eq(sizeof(block_iq4_xs), 136);
    ck_assert_uint_eq(sizeof(block_iq3_xxs), 98);
    ck_assert_uint_eq(sizeof(block_iq3_s), 110);
    ck_assert_uint_eq(sizeof(block_iq2_xxs), 66);
    ck_assert_uint_eq(sizeof(block_iq2_xs), 74);
    ck_assert_uint_eq(sizeof(block_iq2_s), 82);
    ck_assert_uint_eq(sizeof(block_iq1_s), 50);
    ck_assert_uint_eq(sizeof(block_iq1_m), 56);
    ck_assert_uint_eq(sizeof(block_q5_1), 24);
    ck_assert_uint_eq(sizeof(block_q8_1), 36);
    ck_assert_uint_eq(sizeof(block_q4_K), 144);
    ck_assert_uint_eq(sizeof(block_q5_K), 176);
    ck_assert_uint_eq(sizeof(block_q6_K), 210);
    ck_assert_uint_eq(sizeof(block_q8_K), 292);
    /* removed and out-of-range ids */
    const uint32_t gone[] = {4, 5, 31, 32, 33, 36, 37, 38, G4_TYPE_COUNT, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
        ck_assert_ptr_null(g4_type_name(gone[i]));
        ck_assert_uint_eq(g4_type_size(gone[i]), 0);
        ck_assert_uint_eq(g4_row_size(gone[i], 32), 0);
        ck_assert_int_eq(g4_type_supported(gone[i]), 0);
    }
    ck_assert_uint_eq(g4_row_size(G4_TYPE_Q4_K, 4096), 16 * 144);
    ck_assert_uint_eq(g4_row_size(G4_TYPE_Q8_0, 4096), 128 * 34);
    ck_assert_uint_eq(g4_row_size(G4_TYPE_Q8_0, 33), 0);
    ck_assert_uint_eq(g4_row_size(G4_TYPE_F32, -1), 0);
    ck_assert_uint_eq(g4_row_size(G4_TYPE_F64, INT64_MAX), 0);   /* overflows size_t */
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_Q4_0), G4_TYPE_Q8_0);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_BF16), G4_TYPE_F32);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_Q4_K), G4_TYPE_Q8_K);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_Q6_K), G4_TYPE_Q8_K);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_Q4_1), G4_TYPE_Q8_1);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_Q5_0), G4_TYPE_Q8_0);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_IQ4_XS), G4_TYPE_Q8_K);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_Q2_K), G4_TYPE_Q8_K);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_IQ4_NL), G4_TYPE_Q8_0);
    ck_assert_uint_eq(g4_vec_dot_type(G4_TYPE_TQ1_0), G4_TYPE_COUNT);
}
END_TEST

/* ---- fp16 / bf16 ---- */

/* Brute-force reference: the representable value nearest to x (ties to the
   even encoding), found by comparing distances in double. `decode` maps an
   encoding to its value; `lo`/`hi` bracket x among positive finite codes. */
static uint16_t nearest(double ax, double (*decode)(uint16_t), uint16_t max_finite, uint16_t inf_code) {
    uint16_t lo = 0, hi = max_finite;
    if (ax > decode(max_finite)) {
        /* beyond the largest finite value: inf when at least half an ulp past it */
        double ulp = decode(max_finite) - decode(max_finite - 1);
        return ax >= decode(max_finite) + ulp / 2 ? inf_code : max_finite;
    }
    while (hi - lo > 1) {   /* codes are monotonic in value for positive numbers */
        uint16_t mid = (uint16_t)((lo + hi) / 2);
        if (decode(mid) <= ax) lo = mid; else hi = mid;
    }
    double dl = ax - decode(lo), dh = decode(hi) - ax;
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

static double dec_f16(uint16_t h) { return g4_fp16_to_fp32(h); }
static double dec_bf16(uint16_t h) { return g4_bf16_to_fp32(h); }

static uint16_t ref_fp16(float f) {
    uint16_t s = (bits_of(f) >> 16) & 0x8000;
    return s | nearest(fabs((double)f), dec_f16, 0x7bff, 0x7c00);
}

static uint16_t ref_bf16(float f) {
    uint16_t s = (bits_of(f) >> 16) & 0x8000;
    /* with a double above FLT_MAX the overflow threshold is exact */
    double ax = fabs((double)f);
    double maxv = dec_bf16(0x7f7f), ulp = maxv - dec_bf16(0x7f7e);
    if (ax > maxv) return s | (ax >= maxv + ulp / 2 ? 0x7f80 : 0x7f7f);
    return s | nearest(ax, dec_bf16, 0x7f7f, 0x7f80);
}

START_TEST(test_fp16_decode_all) {
    /* every half decodes to the value its fields say, and re-encodes to itself */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = g4_fp16_to_fp32((g4_fp16)h);
        uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        double want = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, (int)e - 25);
        if (h & 0x8000) want = -want;
        if (e == 31 && m) { ck_assert(isnan(f)); ck_assert(isnan(g4_fp16_to_fp32(g4_fp32_to_fp16(f)))); continue; }
        ck_assert_msg((double)f == want, "half %04x -> %g, want %g", h, f, want);
        ck_assert_uint_eq(g4_fp32_to_fp16(f), h);
    }
}
END_TEST

START_TEST(test_fp16_edges) {
    const struct { float f; uint16_t h; } cases[] = {
        {0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3c00}, {-2.0f, 0xc000},
        {65504.0f, 0x7bff},                         /* largest half */
        {65519.996f, 0x7bff}, {65520.0f, 0x7c00},   /* overflow threshold: half way rounds to even = inf */
        {1e10f, 0x7c00}, {-1e10f, 0xfc00}, {INFINITY, 0x7c00}, {-INFINITY, 0xfc00},
        {0x1p-14f, 0x0400},                         /* smallest normal */
        {0x1p-24f, 0x0001},                         /* smallest subnormal */
        {0x1p-25f, 0x0000},                         /* exactly half of it: tie to even (0) */
        {0x1.000002p-25f, 0x0001},                  /* just above the tie */
        {0x3p-25f, 0x0002},                         /* 1.5 ulp: tie to even (2) */
        {0x1.ff8p-15f, 0x03ff}, {0x1.ffcp-15f, 0x0400},   /* largest subnormal; rounds up into normal */
        {1.0f + 0x1p-11f, 0x3c00},                  /* tie between 1 and 1+2^-10: even */
        {1.0f + 0x3p-11f, 0x3c02},                  /* tie between 1+2^-10 and 1+2^-9: even */
        {f_of(0x3f801001), 0x3c01},                 /* just above that tie */
        {-0x1p-30f, 0x8000},                        /* tiny negative -> -0 */
        {f_of(0x00000001), 0x0000},                 /* fp32 subnormal */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(g4_fp32_to_fp16(cases[i].f) == cases[i].h, "fp16(%a) = %04x, want %04x",
                      (double)cases[i].f, g4_fp32_to_fp16(cases[i].f), cases[i].h);
    uint16_t qn = g4_fp32_to_fp16(NAN);
    ck_assert((qn & 0x7c00) == 0x7c00 && (qn & 0x3ff) != 0);
    uint16_t sn = g4_fp32_to_fp16(f_of(0xff800001));   /* signalling nan, payload only in low bits */
    ck_assert((sn & 0x7c00) == 0x7c00 && (sn & 0x3ff) != 0 && (sn & 0x8000));
}
END_TEST

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("f16c"))) static uint16_t hw_fp16(float f) {
    return (uint16_t)_cvtss_sh(f, 0);   /* imm 0: round to nearest even */
}
#include <immintrin.h>
#endif

START_TEST(test_fp16_vs_references) {
    int have_f16c = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_f16c = __builtin_cpu_supports("f16c");
#endif
    /* all fp32 values near the half range's interesting spots, plus random bits */
    for (int i = 0; i < 400000; i++) {
        uint32_t u;
        if (i < 200000) u = (uint32_t)rng_u64();
        else u = (0x33000000u + (uint32_t)(i - 200000) * 0x1000u) | (uint32_t)(rng_u64() & 0xfff);
        float f = f_of(u);
        if (isnan(f)) continue;
        uint16_t got = g4_fp32_to_fp16(f);
        if (i % 8 == 0) ck_assert_msg(got == ref_fp16(f), "fp16(%a): %04x vs brute force %04x",
                                      (double)f, got, ref_fp16(f));
#if defined(__x86_64__)
        if (have_f16c) ck_assert_msg(got == hw_fp16(f), "fp16(%a): %04x vs F16C %04x", (double)f, got, hw_fp16(f));
#endif
    }
}
END_TEST

START_TEST(test_bf16) {
    ck_assert_uint_eq(g4_fp32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(g4_fp32_to_bf16(-0.0f), 0x8000);
    ck_assert_uint_eq(g4_fp32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(g4_fp32_to_bf16(-INFINITY), 0xff80);
    ck_assert_uint_eq(g4_fp32_to_bf16(FLT_MAX), 0x7f80);          /* above max bf16 + half ulp */
    ck_assert_uint_eq(g4_fp32_to_bf16(f_of(0x3f808000)), 0x3f80); /* tie: even stays */
    ck_assert_uint_eq(g4_fp32_to_bf16(f_of(0x3f818000)), 0x3f82); /* tie: odd rounds up */
    ck_assert_uint_eq(g4_fp32_to_bf16(f_of(0x3f808001)), 0x3f81);
    ck_assert_uint_eq(g4_fp32_to_bf16(f_of(0x00010000)), 0x0001); /* subnormal kept, not flushed */
    ck_assert_uint_eq(g4_fp32_to_bf16(f_of(0x00008000)), 0x0000); /* tie to even zero */
    ck_assert_uint_eq(g4_fp32_to_bf16(f_of(0x00018000)), 0x0002);
    ck_assert(isnan(g4_bf16_to_fp32(g4_fp32_to_bf16(NAN))));
    ck_assert(isnan(g4_bf16_to_fp32(g4_fp32_to_bf16(f_of(0x7f800001)))));   /* payload below bit 16 */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = g4_bf16_to_fp32((g4_bf16)h);
        ck_assert_uint_eq(bits_of(f), h << 16);
        if (!isnan(f)) ck_assert_uint_eq(g4_fp32_to_bf16(f), h);
    }
    for (int i = 0; i < 100000; i++) {
        float f = f_of((uint32_t)rng_u64());
        if (isnan(f)) continue;
        ck_assert_msg(g4_fp32_to_bf16(f) == ref_bf16(f), "bf16(%a): %04x vs %04x", (double)f,
                      g4_fp32_to_bf16(f), ref_bf16(f));
    }
}
END_TEST

/* ---- Q8_0 / Q4_0 ---- */

#define N 4096

START_TEST(test_q8_0_roundtrip) {
    static float x[N], y[N];
    static block_q8_0 q[N / 32];
    for (int i = 0; i < N; i++) x[i] = rng_normal() * (i < N / 2 ? 1.0f : 1e-3f);
    for (int j = 0; j < 32; j++) x[32 + j] = 0.0f;             /* an all-zero block */
    x[64 + 5] = 3.0f;                                          /* a block whose max is exact */
    ck_assert(g4_quantize_row(G4_TYPE_Q8_0, x, q, N));
    g4_dequantize_row(G4_TYPE_Q8_0, q, y, N);
    for (int b = 0; b < N / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = amax / 127, d16 = g4_fp16_to_fp32(q[b].d);
        ck_assert_uint_eq(q[b].d, g4_fp32_to_fp16(d));         /* scale stored as fp16(amax/127) */
        int saw127 = amax == 0;
        for (int j = 0; j < 32; j++) {
            float e = fabsf(x[b * 32 + j] - y[b * 32 + j]);
            /* half a step, plus the step's own fp16 rounding over up to 127 steps */
            ck_assert_msg(e <= d / 2 * 1.0001f + 127 * fabsf(d - d16) + 1e-30f, "block %d elem %d: err %g d %g", b, j, e, d);
            if (abs(q[b].qs[j]) == 127) saw127 = 1;
            ck_assert_int_le(abs(q[b].qs[j]), 127);
        }
        ck_assert_msg(saw127, "block %d: the largest element must map to +-127", b);
    }
    for (int j = 0; j < 32; j++) ck_assert(y[32 + j] == 0.0f);
    ck_assert_int_eq(q[2].qs[5], 127);
    ck_assert_float_eq(y[64 + 5], g4_fp16_to_fp32(g4_fp32_to_fp16(3.0f / 127)) * 127);
}
END_TEST

START_TEST(test_q4_0_roundtrip) {
    static float x[N], y[N];
    static block_q4_0 q[N / 32];
    for (int i = 0; i < N; i++) x[i] = rng_normal();
    ck_assert(g4_quantize_row(G4_TYPE_Q4_0, x, q, N));
    g4_dequantize_row(G4_TYPE_Q4_0, q, y, N);
    double se = 0, sx = 0;
    for (int b = 0; b < N / 32; b++) {
        float amax = 0, max = 0;
        int imax = 0;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[b * 32 + j]) > amax) { amax = fabsf(x[b * 32 + j]); max = x[b * 32 + j]; imax = j; }
        float d = max / -8, d16 = g4_fp16_to_fp32(q[b].d);
        ck_assert_uint_eq(q[b].d, g4_fp32_to_fp16(d));
        /* the element of largest magnitude is q = 0 (value -8 d = max) */
        uint8_t nib = imax < 16 ? q[b].qs[imax] & 0x0f : q[b].qs[imax - 16] >> 4;
        ck_assert_uint_eq(nib, 0);
        for (int j = 0; j < 32; j++) {
            float e = fabsf(x[b * 32 + j] - y[b * 32 + j]);
            /* the grid is d*[-8, 7]: values near -max clamp at 7 d, so the bound is one step */
            ck_assert_msg(e <= fabsf(d) * 1.0001f + 8 * fabsf(d - d16), "block %d elem %d: err %g d %g", b, j, e, d);
            se += (double)e * e;
            sx += (double)x[b * 32 + j] * x[b * 32 + j];
        }
    }
    /* uniform error over a step of ~amax/8: relative rms error around 0.1 for normals */
    ck_assert_msg(sqrt(se / sx) < 0.15, "Q4_0 relative rms error %g", sqrt(se / sx));
}
END_TEST

START_TEST(test_q4_0_layout) {
    /* element j in the low nibble of byte j, element j+16 in the high nibble */
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = (float)(j % 16) - 8.0f;   /* -8..7 twice; max magnitude -8 -> d = 1 */
    block_q4_0 q;
    g4_quantize_row_q4_0(x, &q, 32);
    ck_assert_float_eq(g4_fp16_to_fp32(q.d), 1.0f);
    for (int j = 0; j < 16; j++) ck_assert_uint_eq(q.qs[j], (uint8_t)(j | (j << 4)));
    float y[32];
    g4_dequantize_row_q4_0(&q, y, 32);
    for (int j = 0; j < 32; j++) ck_assert_float_eq(y[j], x[j]);
}
END_TEST

START_TEST(test_float_rows) {
    static float x[N], y[N];
    static uint16_t h[N];
    for (int i = 0; i < N; i++) x[i] = rng_normal();
    ck_assert(g4_quantize_row(G4_TYPE_F16, x, h, N));
    g4_dequantize_row(G4_TYPE_F16, h, y, N);
    for (int i = 0; i < N; i++) ck_assert(y[i] == g4_fp16_to_fp32(g4_fp32_to_fp16(x[i])));
    ck_assert(g4_quantize_row(G4_TYPE_BF16, x, h, N));
    g4_dequantize_row(G4_TYPE_BF16, h, y, N);
    for (int i = 0; i < N; i++) ck_assert(fabsf(y[i] - x[i]) <= fabsf(x[i]) * 0x1p-8f);
    ck_assert(g4_quantize_row(G4_TYPE_F32, x, y, N));
    ck_assert_int_eq(memcmp(x, y, sizeof x), 0);
    /* unsupported types: quantize refuses, dequantize poisons with NaN */
    ck_assert(!g4_quantize_row(G4_TYPE_Q4_K, x, h, 256));
    ck_assert(!g4_quantize_row(G4_TYPE_Q8_0, x, h, 33));
    g4_dequantize_row(G4_TYPE_TQ1_0, h, y, 256);
    ck_assert(isnan(y[0]) && isnan(y[255]));
}
END_TEST

/* ---- dot products and matvec ---- */

START_TEST(test_vec_dot_exact) {
    /* the quantized dot equals sum over blocks of (sum_j qw*qx) * dw * dx,
       computed here from the dequantized integers in double */
    enum { C = 1024 };
    static float w[C], x[C];
    static block_q8_0 wq8[C / 32], xq[C / 32];
    static block_q4_0 wq4[C / 32];
    for (int i = 0; i < C; i++) { w[i] = rng_normal(); x[i] = rng_normal(); }
    g4_quantize_row_q8_0(w, wq8, C);
    g4_quantize_row_q4_0(w, wq4, C);
    g4_quantize_row_q8_0(x, xq, C);
    double r8 = 0, r4 = 0;
    for (int b = 0; b < C / 32; b++) {
        long s8 = 0, s4 = 0;
        for (int j = 0; j < 32; j++) {
            int n4 = j < 16 ? (wq4[b].qs[j] & 15) - 8 : (wq4[b].qs[j - 16] >> 4) - 8;
            s8 += wq8[b].qs[j] * xq[b].qs[j];
            s4 += n4 * xq[b].qs[j];
        }
        double dx = g4_fp16_to_fp32(xq[b].d);
        r8 += s8 * (double)g4_fp16_to_fp32(wq8[b].d) * dx;
        r4 += s4 * (double)g4_fp16_to_fp32(wq4[b].d) * dx;
    }
    float g8 = g4_vec_dot_q8_0_q8_0(C, wq8, xq), g4 = g4_vec_dot_q4_0_q8_0(C, wq4, xq);
    ck_assert_msg(fabs(g8 - r8) <= 1e-5 * (fabs(r8) + 1), "q8_0 dot %g vs %g", g8, r8);
    ck_assert_msg(fabs(g4 - r4) <= 1e-5 * (fabs(r4) + 1), "q4_0 dot %g vs %g", g4, r4);
    /* and it is close to the float dot of the original vectors */
    double ref = 0;
    for (int i = 0; i < C; i++) ref += (double)w[i] * x[i];
    /* per-term errors: ~0.008 (Q8_0 w and x) and ~0.11 (Q4_0) rms for unit normals; 5 sigma */
    ck_assert_msg(fabs(g8 - ref) < 0.04 * sqrt(C), "q8_0 dot %g vs float %g", g8, ref);
    ck_assert_msg(fabs(g4 - ref) < 0.6 * sqrt(C), "q4_0 dot %g vs float %g", g4, ref);
}
END_TEST

START_TEST(test_matvec) {
    /* cols spans more than one 256-block chunk of g4_matvec_rows's stack buffer */
    enum { R = 7, C = 32 * 600 };
    static float w[R * C], x[C], y[R], yv[R];
    static uint8_t wq[R * (C / 32) * 34], xq[(C / 32) * 34];
    static uint16_t wh[R * C];
    for (int i = 0; i < R * C; i++) w[i] = rng_normal();
    for (int i = 0; i < C; i++) x[i] = rng_normal();
    double ref[R];
    for (int r = 0; r < R; r++) {
        ref[r] = 0;
        for (int i = 0; i < C; i++) ref[r] += (double)w[r * C + i] * x[i];
    }
    /* F32: double accumulation, so within float rounding of the exact result */
    g4_matvec_rows(G4_TYPE_F32, w, C, x, y, 0, R);
    for (int r = 0; r < R; r++) ck_assert(fabs(y[r] - ref[r]) <= 1e-6 * (fabs(ref[r]) + 1));
    /* F16 / BF16: exact dot of the rounded weights */
    const uint32_t ft[] = {G4_TYPE_F16, G4_TYPE_BF16};
    for (int k = 0; k < 2; k++) {
        ck_assert(g4_quantize_row(ft[k], w, wh, R * C));
        g4_matvec_rows(ft[k], wh, C, x, y, 0, R);
        for (int r = 0; r < R; r++) {
            double e = 0;
            for (int i = 0; i < C; i++)
                e += (double)(ft[k] == G4_TYPE_F16 ? g4_fp16_to_fp32(wh[r * C + i]) : g4_bf16_to_fp32(wh[r * C + i])) * x[i];
            ck_assert(fabs(y[r] - e) <= 1e-6 * (fabs(e) + 1));
        }
    }
    /* Q8_0 / Q4_0: g4_matvec_rows (chunked) == g4_matvec_rows_vq (whole x) == vec_dot, bit for bit,
       with the scalar kernels (the vectorized ones are checked in test_kernels.c) */
    const int isa = g4_isa_active();
    ck_assert(g4_quant_set_isa(G4_ISA_SCALAR));
    const uint32_t qt[] = {G4_TYPE_Q8_0, G4_TYPE_Q4_0};
    ck_assert(g4_quantize_row(g4_vec_dot_type(G4_TYPE_Q8_0), x, xq, C));
    for (int k = 0; k < 2; k++) {
        ck_assert(g4_quantize_row(qt[k], w, wq, R * C));
        for (int r = 0; r < R; r++) y[r] = yv[r] = -1;
        g4_matvec_rows(qt[k], wq, C, x, y, 2, 6);   /* a sub-range: rows outside untouched */
        g4_matvec_rows_vq(qt[k], wq, C, xq, yv, 2, 6);
        ck_assert(y[1] == -1 && y[6] == -1);
        size_t rs = g4_row_size(qt[k], C);
        for (int r = 2; r < 6; r++) {
            float d = qt[k] == G4_TYPE_Q8_0 ? g4_vec_dot_q8_0_q8_0(C, (const block_q8_0 *)(wq + r * rs), (const block_q8_0 *)xq)
                                            : g4_vec_dot_q4_0_q8_0(C, (const block_q4_0 *)(wq + r * rs), (const block_q8_0 *)xq);
            ck_assert_msg(bits_of(y[r]) == bits_of(yv[r]) && bits_of(y[r]) == bits_of(d),
                          "type %u row %d: %a %a %a", qt[k], r, (double)y[r], (double)yv[r], (double)d);
            double tol = (qt[k] == G4_TYPE_Q8_0 ? 0.04 : 0.6) * sqrt(C);   /* 5 sigma, as above */
            ck_assert_msg(fabs(y[r] - ref[r]) < tol, "type %u row %d: %g vs %g", qt[k], r, y[r], ref[r]);
        }
    }
    ck_assert(g4_quant_set_isa(isa));
    /* unsupported weights: NaN, not garbage */
    g4_matvec_rows(G4_TYPE_TQ1_0, wq, 256, x, y, 0, 1);
    ck_assert(isnan(y[0]));
}
END_TEST

/* Q8_0 tensors of the shared model dequantize to finite values of the right
   scale, and matvec over a real weight matrix agrees with dequantize + dot. */
START_TEST(test_real_q8_0_tensor) {
    char path[1024];
    g4_err err;
    g4_gguf *g = g4_gguf_open(g4test_path(path, sizeof path, "models/TinyStories-656K-Q8_0.gguf"), &err);
    ck_assert_msg(g != NULL, "%s", err.msg);
    const g4_tensor *t = g4_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->type, G4_TYPE_Q8_0);
    int64_t cols = t->ne[0], rows = t->ne[1];
    float *row = malloc(sizeof(float) * cols), *x = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * rows);
    for (int64_t i = 0; i < cols; i++) x[i] = rng_normal();
    g4_matvec_rows(t->type, t->data, cols, x, y, 0, rows);
    size_t rs = g4_row_size(t->type, cols);
    for (int64_t r = 0; r < rows; r++) {
        g4_dequantize_row(t->type, (const uint8_t *)t->data + r * rs, row, cols);
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < cols; i++) { ck_assert(isfinite(row[i])); ref += (double)row[i] * x[i]; mag += fabs(row[i] * x[i]); }
        ck_assert_msg(fabs(y[r] - ref) <= 0.02 * mag + 1e-6, "row %ld: %g vs %g", (long)r, y[r], ref);
    }
    free(row); free(x); free(y);
    g4_gguf_close(g);
}
END_TEST

static Suite *quant_suite(void) {
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("types");
    tcase_add_test(tc, test_type_table);
    tcase_add_test(tc, test_fp16_decode_all);
    tcase_add_test(tc, test_fp16_edges);
    tcase_add_test(tc, test_fp16_vs_references);
    tcase_add_test(tc, test_bf16);
    suite_add_tcase(s, tc);
    TCase *q = tcase_create("blocks");
    tcase_set_timeout(q, 60);
    tcase_add_test(q, test_q8_0_roundtrip);
    tcase_add_test(q, test_q4_0_roundtrip);
    tcase_add_test(q, test_q4_0_layout);
    tcase_add_test(q, test_float_rows);
    tcase_add_test(q, test_vec_dot_exact);
    tcase_add_test(q, test_matvec);
    tcase_add_test(q, test_real_q8_0_tensor);
    suite_add_tcase(s, q);
    return s;
}

G4TEST_MAIN(quant_suite)
