/* test_kernels.c - every vectorized kernel against its scalar reference, on
 * every ISA this machine (or qemu) has.
 *
 * References: the scalar kernels of quant_ref.c (themselves checked against
 * gguf-py in tests/test_gguf.py and tests/test_kernels.py), and for ISA
 * availability the CPU flags in /proc/cpuinfo.
 *
 * Tolerances. Every quantized kernel forms, per block, exact int32 sums
 * v_l (lanes or the whole block) and then float products s_b * v_l and sums.
 * With u = 2^-24 and k float operations on any path (k <= nb + 64 here), both
 * the reference and the kernel are within gamma_k * B of the exact value,
 * B = sum over blocks of |s_b| * sum_l |v_l|, so we allow
 *     |kernel - reference| <= 2 (nb + 64) u B + (nb + 64) 2^-140
 * (the last term covers results in the subnormal range). B is bounded here
 * from the quants: |v| <= sum_j (|q_w| + offset) |q_x| times the sub-block
 * scale, the offset being what a kernel may subtract separately (8 for
 * Q4_0, 16 for Q5_0, 32 for Q6_K), plus the mins terms. The repacked
 * kernels keep each row's block sum in one lane and the reference's float
 * steps, so they must match bit for bit; so must the activation quantizers.
 * Float weights: the reference sums in double; the kernels in float with
 * chains of n/8 + 16 additions: |kernel - reference| <= (n/8 + 32) u sum|w x|
 * (OpenBLAS for F32 with 4+ tokens: (n + 32) u sum|w x|).
 */
#include "g4test.h"

#include "quant/quant.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t rng_u64(void) {
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}
static float rng_normal(void) {
    double u1 = ((rng_u64() >> 11) + 1.0) / 9007199254740993.0, u2 = (rng_u64() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static const uint32_t QTYPES[] = {G4_TYPE_Q4_0, G4_TYPE_Q4_1, G4_TYPE_Q5_0, G4_TYPE_Q5_1, G4_TYPE_Q8_0,
                                  G4_TYPE_Q4_K, G4_TYPE_Q5_K, G4_TYPE_Q6_K};
#define N_QTYPES (sizeof QTYPES / sizeof QTYPES[0])
static const uint32_t XTYPES[] = {G4_TYPE_Q4_0, G4_TYPE_Q8_0, G4_TYPE_Q4_K, G4_TYPE_Q6_K, G4_TYPE_Q5_0,
                                  G4_TYPE_Q5_K};   /* repackable */

/* Regimes of scale: weights' fp16 scales and activations' magnitude. */
enum { R_NORMAL, R_TINY, R_HUGE, R_ZERO, R_MAXQ, R_COUNT };
static const char *REGIME[R_COUNT] = {"normal", "tiny", "huge", "zero", "max-int8"};

static void put_f16(uint8_t *p, float v) { g4_fp16 h = g4_fp32_to_fp16(v); memcpy(p, &h, 2); }

/* Random weight blocks: random payload bytes, then the fp16 scales set to
   magnitudes of the regime (random bytes there would be NaN/inf at times). */
static void random_weights(uint32_t type, uint8_t *w, size_t bytes, int regime) {
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)rng_u64();
    const size_t bs = g4_type_size(type);
    for (size_t b = 0; b + bs <= bytes; b += bs) {
        uint8_t *p = w + b;
        float mag = regime == R_TINY ? 3e-7f : regime == R_HUGE ? 3e4f : regime == R_ZERO ? 0.0f : 0.02f;
        float d = mag * (0.5f + (float)(rng_u64() % 1000) / 1000.0f) * ((rng_u64() & 1) ? 1.0f : -1.0f);
        float m = mag * (float)(rng_u64() % 1000) / 1000.0f;
        switch (type) {
        case G4_TYPE_Q6_K: put_f16(p + 208, d); break;
        case G4_TYPE_Q4_K: case G4_TYPE_Q5_K: put_f16(p, fabsf(d)); put_f16(p + 2, m); break;
        case G4_TYPE_Q4_1: case G4_TYPE_Q5_1: put_f16(p, d); put_f16(p + 2, -m); break;
        default: put_f16(p, d);
        }
        if (regime == R_MAXQ) {   /* payload at its extremes */
            if (type == G4_TYPE_Q8_0) for (int j = 0; j < 32; j++) p[2 + j] = (j & 1) ? 0x80 : 0x7f;
            else if (type == G4_TYPE_Q4_0 || type == G4_TYPE_Q4_1) memset(p + bs - 16, (rng_u64() & 1) ? 0xff : 0x00, 16);
            else if (type == G4_TYPE_Q4_K || type == G4_TYPE_Q5_K) memset(p + 4, 0xff, 12);   /* sc = m = 63 */
            else if (type == G4_TYPE_Q6_K) memset(p + 192, 0x80, 16);                            /* sc = -128 */
        }
    }
}

/* q81: activations for Q8_1, whose fp16 s = d * sum(q) must stay finite */
static void random_acts_for(float *x, int64_t n, int regime, int q81) {
    for (int64_t i = 0; i < n; i++) {
        float v = rng_normal();
        switch (regime) {
        case R_TINY: v *= 1e-30f; break;
        case R_HUGE: v *= q81 ? 100.0f : 2e6f; break;   /* Q8_0's fp16 d = amax / 127 stays finite */
        case R_ZERO: v = 0.0f; break;
        case R_MAXQ: v = (i & 2) ? 3.0f : -3.0f; break;   /* every q = +-127 */
        }
        x[i] = v;
    }
}

static void random_acts(float *x, int64_t n, int regime) { random_acts_for(x, n, regime, 0); }

/* ---- the bound B of the header, per weight row and activation row ---- */

static float f16at(const uint8_t *p) { g4_fp16 h; memcpy(&h, p, 2); return g4_fp16_to_fp32(h); }

static double bound_row(uint32_t type, const uint8_t *w, const uint8_t *x, int64_t n) {
    double B = 0;
    if (g4_vec_dot_type(type) == G4_TYPE_Q8_K) {
        for (int64_t b = 0; b < n / QK_K; b++) {
            const block_q8_K *q8 = (const block_q8_K *)x + b;
            float deq[QK_K];
            /* |d_w sc q| bounded via the dequantized value plus the min term */
            g4_dequantize_row(type, w + b * g4_type_size(type), deq, QK_K);
            double dmin = 0;
            uint8_t sc[8] = {0}, m[8] = {0};
            if (type != G4_TYPE_Q6_K) {
                dmin = fabs(f16at(w + b * g4_type_size(type) + 2));
                g4_q4_K_scales(w + b * g4_type_size(type) + 4, sc, m);
            }
            for (int j = 0; j < QK_K; j++) {
                double aw = fabs(deq[j]);
                if (type == G4_TYPE_Q6_K) {   /* (|q - 32| + 32) <= 2 * 32 + |q - 32|: add 64 |d sc| */
                    const block_q6_K *q6 = (const block_q6_K *)(w + b * g4_type_size(type));
                    aw += 64.0 * fabs(f16at((const uint8_t *)&q6->d) * q6->scales[j / 16]);
                } else {
                    aw += 2.0 * dmin * m[j / 32];
                }
                B += aw * fabs(q8->d * q8->qs[j]);
            }
        }
        return B;
    }
    const size_t wbs = g4_type_size(type), xbs = g4_type_size(g4_vec_dot_type(type));
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *p = w + b * wbs, *q = x + b * xbs;
        float deq[32];
        g4_dequantize_row(type, p, deq, 32);
        const double dx = fabs(f16at(q));
        const int8_t *qs = (const int8_t *)(q + xbs - 32);
        double off = type == G4_TYPE_Q4_0 ? 8 : type == G4_TYPE_Q5_0 ? 16 : 0;
        double mm = (type == G4_TYPE_Q4_1 || type == G4_TYPE_Q5_1) ? fabs(f16at(p + 2)) : 0;
        for (int j = 0; j < 32; j++) B += (fabs(deq[j]) + 2 * mm + off * fabs(f16at(p))) * dx * abs(qs[j]);
        if (mm) B += mm * fabs(f16at(q + 2));
    }
    return B;
}

/* the reference: one vec_dot per (row, token) */
static float ref_dot(uint32_t type, int64_t n, const void *w, const void *x) {
    switch (type) {
    case G4_TYPE_Q4_0: return g4_vec_dot_q4_0_q8_0(n, w, x);
    case G4_TYPE_Q4_1: return g4_vec_dot_q4_1_q8_1(n, w, x);
    case G4_TYPE_Q5_0: return g4_vec_dot_q5_0_q8_0(n, w, x);
    case G4_TYPE_Q5_1: return g4_vec_dot_q5_1_q8_1(n, w, x);
    case G4_TYPE_Q8_0: return g4_vec_dot_q8_0_q8_0(n, w, x);
    case G4_TYPE_Q4_K: return g4_vec_dot_q4_K_q8_K(n, w, x);
    case G4_TYPE_Q5_K: return g4_vec_dot_q5_K_q8_K(n, w, x);
    case G4_TYPE_Q6_K: return g4_vec_dot_q6_K_q8_K(n, w, x);
    case G4_TYPE_F32: return g4_vec_dot_f32(n, w, x);
    case G4_TYPE_F16: return g4_vec_dot_f16_f32(n, w, x);
    case G4_TYPE_BF16: return g4_vec_dot_bf16_f32(n, w, x);
    }
    return NAN;
}

/* ---- ISA availability against /proc/cpuinfo ---- */

/* 1/0 whether the first CPU lists `flag`; -1 when /proc/cpuinfo has no such
   list for this architecture (under qemu-user it is the host's). */
static int cpuinfo_has(const char *flag) {
#if defined(__aarch64__)
    const char *key = "Features";
#else
    const char *key = "flags";
#endif
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return -1;
    char line[8192];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, strlen(key)) || !strchr(line, ':')) continue;
        found = 0;
        char *save = NULL;
        for (char *tok = strtok_r(strchr(line, ':') + 1, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save))
            if (!strcmp(tok, flag)) found = 1;
        break;
    }
    fclose(f);
    return found;
}

START_TEST(test_isa_table) {
    for (int i = 0; i < G4_ISA_COUNT; i++) ck_assert_int_eq(g4_isa_from_name(g4_isa_name(i)), i);
    ck_assert_int_eq(g4_isa_from_name("sse9"), -1);
    ck_assert_ptr_null(g4_isa_name(G4_ISA_COUNT));
    ck_assert(g4_isa_available(G4_ISA_SCALAR));
    ck_assert(g4_isa_available(g4_isa_best()));
    const int active = g4_isa_active();
    ck_assert(g4_isa_available(active));
#if defined(__x86_64__)
    if (cpuinfo_has("avx2") >= 0) {
        const int avx2 = cpuinfo_has("avx2") && cpuinfo_has("fma") && cpuinfo_has("f16c");
        const int a512 = avx2 && cpuinfo_has("avx512f") && cpuinfo_has("avx512bw") && cpuinfo_has("avx512vl");
        ck_assert_int_eq(g4_isa_available(G4_ISA_AVX2), avx2);
        ck_assert_int_eq(g4_isa_available(G4_ISA_AVX512), a512);
        ck_assert_int_eq(g4_isa_available(G4_ISA_AVX512VNNI), a512 && cpuinfo_has("avx512_vnni"));
        ck_assert_int_eq(g4_isa_available(G4_ISA_AVXVNNI), avx2 && cpuinfo_has("avx_vnni"));
    }
    ck_assert(!g4_isa_available(G4_ISA_NEON));
#elif defined(__aarch64__)
    ck_assert(g4_isa_available(G4_ISA_NEON));
    if (cpuinfo_has("asimddp") >= 0) ck_assert_int_eq(g4_isa_available(G4_ISA_NEONDOT), cpuinfo_has("asimddp"));
    ck_assert(!g4_isa_available(G4_ISA_AVX2));
#endif
    /* an unavailable ISA is refused and changes nothing */
    for (int i = 0; i < G4_ISA_COUNT; i++)
        if (!g4_isa_available(i)) { ck_assert(!g4_quant_set_isa(i)); ck_assert_int_eq(g4_isa_active(), active); }
    ck_assert(!g4_quant_set_isa(-1));
    ck_assert(!g4_quant_set_isa(G4_ISA_COUNT));
}
END_TEST

/* ---- quantizers: bit-identical on every ISA ---- */

START_TEST(test_quantizers_bit_identical) {
    enum { N = 4096 + 256 };
    static float x[N];
    static uint8_t ref[N * 2], got[N * 2];
    const uint32_t types[] = {G4_TYPE_Q8_0, G4_TYPE_Q8_K, G4_TYPE_F16};
    for (int regime = 0; regime < R_COUNT; regime++) {
        random_acts(x, N, regime);
        if (regime == R_NORMAL) {   /* ties: x * id lands on .5, and blocks where -max and +max tie */
            for (int j = 0; j < 32; j++) x[j] = (float)(j - 16) * 0.5f;
            for (int j = 256; j < 512; j++) x[j] = (j & 1) ? 2.0f : -2.0f;
            x[600] = NAN; x[601] = INFINITY;   /* non-finite inputs: the block is garbage, but the same garbage */
        }
        for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
            const size_t bytes = g4_row_size(types[k], N);
            ck_assert(g4_quant_set_isa(G4_ISA_SCALAR));
            ck_assert(g4_quantize_row(types[k], x, ref, N));
            for (int isa = 1; isa < G4_ISA_COUNT; isa++) {
                if (!g4_quant_set_isa(isa)) continue;
                memset(got, 0xa5, bytes);
                ck_assert(g4_quantize_row(types[k], x, got, N));
                for (size_t i = 0; i < bytes; i++)
                    ck_assert_msg(got[i] == ref[i], "%s %s (%s): byte %zu is %02x, scalar %02x",
                                  g4_isa_name(isa), g4_type_name(types[k]), REGIME[regime], i, got[i], ref[i]);
            }
        }
    }
    ck_assert(g4_quant_set_isa(g4_isa_best()));
}
END_TEST

/* ---- matmul kernels against the references ---- */

static void check_matmul(uint32_t type, int64_t n, int64_t rows, int64_t nt, int regime) {
    const uint32_t vdt = g4_vec_dot_type(type);
    const size_t rs = g4_row_size(type, n), xs = g4_row_size(vdt, n);
    uint8_t *w = malloc(rs * rows), *xq = malloc(xs * nt);
    float *x = malloc(sizeof(float) * n * nt), *y = malloc(sizeof(float) * nt * rows), *ref = malloc(sizeof(float) * nt * rows);
    double *tol = malloc(sizeof(double) * nt * rows);
    const int isfloat = vdt == G4_TYPE_F32;
    if (isfloat) {
        float *wf = malloc(sizeof(float) * n * rows);
        random_acts(wf, n * rows, regime == R_MAXQ ? R_NORMAL : regime);
        ck_assert(g4_quantize_row(type, wf, w, n * rows));
        free(wf);
    } else {
        random_weights(type, w, rs * rows, regime);
    }
    random_acts_for(x, n * nt, regime, vdt == G4_TYPE_Q8_1);
    ck_assert(g4_quant_set_isa(G4_ISA_SCALAR));
    for (int64_t t = 0; t < nt; t++) ck_assert(g4_quantize_row(vdt, x + t * n, xq + t * xs, n));
    for (int64_t t = 0; t < nt; t++)
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t *wr = w + r * rs, *xr = xq + t * xs;
            ref[t * rows + r] = ref_dot(type, n, wr, xr);
            if (isfloat) {
                double a = 0;
                float wrow[8192];
                g4_dequantize_row(type, wr, wrow, n);
                for (int64_t j = 0; j < n; j++) a += fabs((double)wrow[j] * ((const float *)xr)[j]);
                const double k = type == G4_TYPE_F32 && nt >= 4 ? (double)n + 32 : (double)n / 8 + 32;
                tol[t * rows + r] = k * 0x1p-24 * a + 1e-37;
            } else {
                const double nb = (double)(n / (int64_t)g4_blck_size(type));
                tol[t * rows + r] = 2 * (nb + 64) * 0x1p-24 * bound_row(type, wr, xr, n) + (nb + 64) * 0x1p-140;
            }
        }
    /* g4_matmul_rows_vq on every ISA, over a sub-range of rows too */
    for (int isa = 0; isa < G4_ISA_COUNT; isa++) {
        if (!g4_quant_set_isa(isa)) continue;
        for (int64_t i = 0; i < nt * rows; i++) y[i] = -12345.0f;
        const int64_t r0 = rows > 2 ? 1 : 0;
        g4_matmul_rows_vq(type, w, n, xq, xs, nt, y, rows, r0, rows);
        for (int64_t t = 0; t < nt; t++)
            for (int64_t r = 0; r < rows; r++) {
                const float g = y[t * rows + r], e = ref[t * rows + r];
                if (r < r0) { ck_assert_msg(g == -12345.0f, "row outside the range written"); continue; }
                if (isa == G4_ISA_SCALAR) {
                    ck_assert_msg(memcmp(&g, &e, 4) == 0, "scalar ISA must be the reference: %a vs %a", (double)g, (double)e);
                    continue;
                }
                ck_assert_msg(g == e || fabs((double)g - e) <= tol[t * rows + r],
                              "%s %s n=%ld rows=%ld nt=%ld %s: row %ld token %ld: %.9g vs reference %.9g (tol %.3g)",
                              g4_isa_name(isa), g4_type_name(type), (long)n, (long)rows, (long)nt, REGIME[regime],
                              (long)r, (long)t, g, e, tol[t * rows + r]);
                if (regime == R_ZERO) ck_assert(g == 0.0f);
            }
    }
    ck_assert(g4_quant_set_isa(g4_isa_best()));
    free(w); free(xq); free(x); free(y); free(ref); free(tol);
}

START_TEST(test_matmul_quant) {
    /* odd sizes: a single block, 256, 288 (not a multiple of 256), 4096 + 256;
       rows and tokens that leave remainders of every register tile */
    const int64_t n32[] = {32, 256, 288, 4096 + 256}, nK[] = {256, 768, 4096 + 256};
    const int64_t rows[] = {1, 5, 13}, nts[] = {1, 3, 9};
    for (size_t k = 0; k < N_QTYPES; k++) {
        const int isK = g4_blck_size(QTYPES[k]) == QK_K;
        const int64_t *ns = isK ? nK : n32;
        const size_t nn = isK ? 3 : 4;
        for (size_t i = 0; i < nn; i++)
            for (size_t j = 0; j < 3; j++) check_matmul(QTYPES[k], ns[i], rows[j], nts[j], R_NORMAL);
        for (int regime = R_TINY; regime < R_COUNT; regime++) check_matmul(QTYPES[k], isK ? 512 : 96, 9, 2, regime);
    }
}
END_TEST

/* Q2_K, Q3_K and the i-quants: random payload bytes with a finite fp16 scale
   (sane magnitude) where each format keeps it. */
static const uint32_t KQTYPES[] = {G4_TYPE_Q2_K, G4_TYPE_Q3_K, G4_TYPE_IQ4_NL, G4_TYPE_IQ4_XS, G4_TYPE_IQ3_XXS,
                                   G4_TYPE_IQ3_S, G4_TYPE_IQ2_XXS, G4_TYPE_IQ2_XS, G4_TYPE_IQ2_S,
                                   G4_TYPE_IQ1_S, G4_TYPE_IQ1_M};

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void random_kq_weights(uint32_t type, uint8_t *w, size_t bytes) {
    const size_t bs = g4_type_size(type);
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)rng_u64();
    for (uint8_t *p = w; p < w + bytes; p += bs) {
        const float d = (0.005f + 0.01f * (float)(rng_u64() % 1000) / 1000.0f) * ((rng_u64() & 1) ? 1 : -1);
        if (type == G4_TYPE_Q2_K) { put_f16(p + 80, fabsf(d)); put_f16(p + 82, fabsf(d)); }
        else if (type == G4_TYPE_Q3_K) put_f16(p + 108, d);
        else if (type == G4_TYPE_IQ1_M) {   /* the fp16 d in the top nibbles of the 4 scale words */
            const g4_fp16 h = g4_fp32_to_fp16(fabsf(d));
            for (int k = 0; k < 4; k++) p[48 + 2 * k + 1] = (uint8_t)((p[48 + 2 * k + 1] & 0x0f) | (((h >> (4 * k)) & 15) << 4));
        } else put_f16(p, d);
    }
}

/* g4_matmul_rows_vq of the kq type on every available ISA equals the scalar
   reference bit for bit; w: rows x n weights, xq: nt activation rows of xs bytes. */
static void check_kq_every_isa(uint32_t type, const uint8_t *w, int64_t n, int64_t rows, const uint8_t *xq,
                               size_t xs, int64_t nt, const char *what) {
    float *ref = malloc(sizeof(float) * rows * nt), *got = malloc(sizeof(float) * rows * nt);
    ck_assert(g4_quant_set_isa(G4_ISA_SCALAR));
    g4_matmul_rows_vq(type, w, n, xq, xs, nt, ref, rows, 0, rows);
    for (int64_t i = 0; i < rows * nt; i++)
        ck_assert_msg(isfinite(ref[i]), "%s %s: %g", g4_type_name(type), what, ref[i]);
    for (int isa = 0; isa < G4_ISA_COUNT; isa++) {
        if (!g4_isa_available(isa)) continue;
        ck_assert(g4_quant_set_isa(isa));
        memset(got, 0, sizeof(float) * rows * nt);
        g4_matmul_rows_vq(type, w, n, xq, xs, nt, got, rows, 0, rows);
        for (int64_t i = 0; i < rows * nt; i++)
            ck_assert_msg(bits_of(got[i]) == bits_of(ref[i]), "%s on %s, %s, %ld tokens, output %ld: %a vs %a",
                          g4_type_name(type), g4_isa_name(isa), what, (long)nt, (long)i, (double)got[i],
                          (double)ref[i]);
    }
    free(ref);
    free(got);
}

/* Every ISA equals the scalar reference bit for bit (same exact int32 per block,
   same float steps); the scalar reference itself is checked element for element
   against gguf-py's dequantizers in tests/test_quant_types.py. 1..6 tokens: the
   x86 fused Q2_K/Q3_K/IQ4_XS kernels take tiles of 4 tokens and the rest (1..3)
   in one smaller tile. */
START_TEST(test_matmul_kq_bit_identical) {
    const int isa0 = g4_isa_active();
    const int64_t n = 3 * QK_K, rows = 7, NT = 6;
    for (size_t k = 0; k < sizeof KQTYPES / sizeof KQTYPES[0]; k++) {
        const uint32_t type = KQTYPES[k], vdt = g4_vec_dot_type(type);
        const size_t rs = g4_row_size(type, n), xs = g4_row_size(vdt, n);
        uint8_t *w = malloc(rs * rows), *xq = malloc(xs * NT);
        float x[3 * QK_K];
        random_kq_weights(type, w, rs * rows);
        for (int64_t t = 0; t < NT; t++) {
            random_acts(x, n, 0);
            ck_assert(g4_quantize_row(vdt, x, xq + t * xs, n));
        }
        for (int64_t nt = 1; nt <= NT; nt++) check_kq_every_isa(type, w, n, rows, xq, xs, nt, "random");
        free(w);
        free(xq);
    }
    ck_assert(g4_quant_set_isa(isa0));
}
END_TEST

/* The fused x86 kernels' int16 intermediates (kernels_x86.h): the largest
   vpmaddubsw pairs and int16 sums come from every quant at its largest
   magnitude and every activation +-127 of one sign: Q2_K q = 3 with scale 15
   (q sc = 45, two chunks summed in int16), Q3_K q = 3 / -4 with scale 31 /
   -32, IQ4_XS 113 / -127 with scale 31 / -32 (bytes 0xff / 0x00). And Q2_K
   blocks without mins but dmin = inf: the reference skips the min term when
   summ = 0 (no inf * 0 = NaN), so must the kernels. */
START_TEST(test_matmul_kq_extremes) {
    const int isa0 = g4_isa_active();
    const uint32_t types[] = {G4_TYPE_Q2_K, G4_TYPE_Q3_K, G4_TYPE_IQ4_XS};
    const int64_t n = 2 * QK_K, rows = 5, NT = 6;
    for (size_t k = 0; k < 3; k++) {
        const uint32_t type = types[k];
        const size_t rs = g4_row_size(type, n), xs = g4_row_size(G4_TYPE_Q8_K, n), bs = g4_type_size(type);
        uint8_t *w = malloc(rs * rows), *xq = malloc(xs * NT);
        float x[2 * QK_K];
        for (int fill = 0; fill < 3; fill++) {
            if (fill == 2 && type != G4_TYPE_Q2_K) continue;
            memset(w, fill == 0 ? 0xff : fill == 1 ? 0x00 : 0xff, rs * rows);
            for (uint8_t *p = w; p < w + rs * rows; p += bs) {
                if (type == G4_TYPE_Q2_K) {
                    if (fill == 1) memset(p, 0x0f, 16);   /* scales 15, mins 0: summ = 0 */
                    if (fill == 2) memset(p, 0x0f, 16);
                    put_f16(p + 80, 0.01f);
                    put_f16(p + 82, fill == 2 ? INFINITY : 0.01f);
                } else {
                    put_f16(p + (type == G4_TYPE_Q3_K ? 108 : 0), 0.01f);
                }
            }
            for (int sign = -1; sign <= 1; sign += 2) {
                /* Q8_K scales by -127 / (the first element of largest magnitude): all x = 3
                   gives q = -127; x[0] = -3 and the rest 3 give q = +127 but for q[0] */
                for (int64_t i = 0; i < n; i++) x[i] = 3.0f;
                if (sign > 0) x[0] = -3.0f;
                ck_assert(g4_quant_set_isa(G4_ISA_SCALAR));
                for (int64_t t = 0; t < NT; t++) ck_assert(g4_quantize_row(G4_TYPE_Q8_K, x, xq + t * xs, n));
                ck_assert_int_eq(((const block_q8_K *)xq)->qs[1], 127 * sign);
                for (int64_t nt = 1; nt <= NT; nt++)
                    check_kq_every_isa(type, w, n, rows, xq, xs, nt, fill == 0 ? "bytes 0xff" : fill == 1 ? "bytes 0x00" : "dmin inf");
            }
        }
        free(w);
        free(xq);
    }
    ck_assert(g4_quant_set_isa(isa0));
}
END_TEST

START_TEST(test_matmul_float) {
    const uint32_t ft[] = {G4_TYPE_F32, G4_TYPE_F16, G4_TYPE_BF16};
    const int64_t ns[] = {1, 31, 256, 4096 + 256 + 3};
    for (size_t k = 0; k < 3; k++) {
        for (size_t i = 0; i < 4; i++) {
            check_matmul(ft[k], ns[i], 5, 1, R_NORMAL);
            check_matmul(ft[k], ns[i], 9, 6, R_NORMAL);   /* F32: through OpenBLAS when it is linked */
        }
        check_matmul(ft[k], 100, 3, 2, R_ZERO);
    }
}
END_TEST

/* ---- repacked weights: round trip, and bit-identical results ---- */

START_TEST(test_repacked) {
    const int64_t nts[] = {1, 2, 5, 11};
    for (size_t k = 0; k < sizeof XTYPES / sizeof XTYPES[0]; k++) {
        const uint32_t type = XTYPES[k];
        const int isK = g4_blck_size(type) == QK_K;
        /* 3 groups of 8 rows and a tail of 3 rows that stay as they are */
        const int64_t n = isK ? 768 : 288, rows = 27;
        ck_assert(!g4_repack_supported(type, 7, n));   /* at least one group of 8 rows */
        ck_assert(g4_repack_supported(type, 12, n) && g4_repack_supported(type, rows, n));
        const size_t rs = g4_row_size(type, n), as = g4_act_row_size(type, n);
        ck_assert_uint_eq(as % 64, 0);
        uint8_t *w = malloc(rs * rows), *wp = malloc(rs * rows), *back = malloc(rs * rows), *xa = malloc(as * 11);
        float *x = malloc(sizeof(float) * n * 11), *y = malloc(sizeof(float) * 11 * rows), *ref = malloc(sizeof(float) * 11 * rows);
        for (int regime = 0; regime < R_COUNT; regime++) {
            random_weights(type, w, rs * rows, regime);
            ck_assert(g4_repack(type, w, rows, n, wp));
            ck_assert(g4_unrepack(type, wp, rows, n, back));
            ck_assert_int_eq(memcmp(w, back, rs * rows), 0);
            random_acts(x, n * 11, regime);
            ck_assert(g4_quant_set_isa(G4_ISA_SCALAR));
            for (int t = 0; t < 11; t++) ck_assert(g4_quantize_act(type, x + t * n, n, xa + t * as));
            if (g4_vec_dot_type(type) == G4_TYPE_Q8_0)   /* the block sums after the Q8_0 blocks */
                for (int t = 0; t < 11; t++)
                    for (int64_t b = 0; b < n / 32; b++) {
                        const block_q8_0 *q = (const block_q8_0 *)(xa + t * as) + b;
                        int s = 0;
                        for (int j = 0; j < 32; j++) s += q->qs[j];
                        int16_t got;
                        memcpy(&got, xa + t * as + (n / 32) * sizeof(block_q8_0) + 2 * b, 2);
                        ck_assert_int_eq(got, s);
                    }
            for (int t = 0; t < 11; t++)
                for (int64_t r = 0; r < rows; r++) ref[t * rows + r] = ref_dot(type, n, w + r * rs, xa + t * as);
            for (size_t it = 0; it < 4; it++) {
                const int64_t nt = nts[it];
                for (int isa = 0; isa < G4_ISA_COUNT; isa++) {
                    if (!g4_quant_set_isa(isa)) continue;
                    for (int64_t i = 0; i < nt * rows; i++) y[i] = -1.0f;
                    /* groups 1, then 2.. with the tail; then the tail alone again */
                    g4_matmul_rows_x8(type, wp, n, xa, as, nt, y, rows, 8, 16);
                    g4_matmul_rows_x8(type, wp, n, xa, as, nt, y, rows, 16, rows);
                    for (int64_t t = 0; t < nt; t++)
                        for (int64_t r = 24; r < rows; r++) y[t * rows + r] = -2.0f;
                    g4_matmul_rows_x8(type, wp, n, xa, as, nt, y, rows, 24, rows);
                    /* the tail rows are the plain kernel's (within the bound of
                       test_matmul_quant, not always the reference's last bit):
                       the same kernel on the original rows must give the same */
                    float tail[11 * 3];
                    g4_matmul_rows_vq(type, w + 24 * rs, n, xa, as, nt, tail, 3, 0, 3);
                    for (int64_t t = 0; t < nt; t++)
                        for (int64_t r = 0; r < rows; r++) {
                            const float g = y[t * rows + r], e = r < 24 ? ref[t * rows + r] : tail[t * 3 + r - 24];
                            if (r < 8) { ck_assert(g == -1.0f); continue; }
                            ck_assert_msg(memcmp(&g, &e, 4) == 0 || (isnan(g) && isnan(e)),
                                          "%s repacked %s %s nt=%ld: row %ld token %ld: %a vs reference %a",
                                          g4_isa_name(isa), g4_type_name(type), REGIME[regime], (long)nt,
                                          (long)r, (long)t, (double)g, (double)e);
                        }
                }
            }
        }
        ck_assert(g4_quant_set_isa(g4_isa_best()));
        free(w); free(wp); free(back); free(xa); free(x); free(y); free(ref);
    }
    ck_assert(!g4_repack_supported(G4_TYPE_Q5_1, 8, 256));
    ck_assert(!g4_repack_supported(G4_TYPE_F16, 8, 256));
}
END_TEST

/* ---- float helpers for attention ---- */

START_TEST(test_float_helpers) {
    enum { N = 1000 + 7 };
    static float a[N], b[N], c[N], y0[N], y1[N], back[N];
    static g4_fp16 h[N], hc[N], hc2[N];
    for (int i = 0; i < N; i++) { a[i] = rng_normal(); b[i] = rng_normal(); y0[i] = rng_normal(); c[i] = rng_normal() * 1e3f; }
    c[3] = 65520.0f; c[4] = 1e-8f; c[5] = -0.0f; c[6] = 70000.0f; c[7] = 3e-5f;   /* inf, subnormal halves, -0 */
    for (int i = 0; i < N; i++) { h[i] = g4_fp32_to_fp16(a[i]); hc[i] = g4_fp32_to_fp16(c[i]); }
    double exact = 0, mag = 0, exact16 = 0, mag16 = 0;
    for (int i = 0; i < N; i++) {
        exact += (double)a[i] * b[i]; mag += fabs((double)a[i] * b[i]);
        exact16 += (double)g4_fp16_to_fp32(h[i]) * b[i]; mag16 += fabs((double)g4_fp16_to_fp32(h[i]) * b[i]);
    }
    const double k = N / 8.0 + 32;
    for (int isa = 0; isa < G4_ISA_COUNT; isa++) {
        if (!g4_quant_set_isa(isa)) continue;
        g4_fp32_to_fp16_row(c, hc2, N);   /* conversions: bit for bit */
        ck_assert_int_eq(memcmp(hc, hc2, sizeof hc), 0);
        g4_fp16_to_fp32_row(hc, back, N);
        for (int i = 0; i < N; i++) ck_assert(memcmp(&back[i], &(float){g4_fp16_to_fp32(hc[i])}, 4) == 0);
        ck_assert(fabs(g4_dot_f32(N, a, b) - exact) <= k * 0x1p-24 * mag);
        ck_assert(fabs(g4_dot_f16_f32(N, h, b) - exact16) <= k * 0x1p-24 * mag16);
        /* many rows at once, as attention uses them: rows of dim 64 and 67 (a tail), 1..9 of them */
        for (int dim = 64; dim <= 67; dim += 3)
            for (int rows = 1; rows <= 9; rows += 4) {
                float sc[16], sc32[16], o16[80], o32[80];
                const int ld = dim + 5;
                g4_dot_f16_rows(rows, dim, h, ld, b, sc);
                g4_dot_f32_rows(rows, dim, a, ld, b, sc32);
                float w[16];
                for (int p = 0; p < rows; p++) w[p] = b[100 + p];
                g4_wsum_f16_rows(rows, dim, h, ld, w, o16);
                g4_wsum_f32_rows(rows, dim, a, ld, w, o32);
                for (int p = 0; p < rows; p++) {
                    double e16 = 0, m16 = 0, e32 = 0, m32 = 0;
                    for (int i = 0; i < dim; i++) {
                        const double k16 = g4_fp16_to_fp32(h[p * ld + i]);
                        e16 += k16 * b[i]; m16 += fabs(k16 * b[i]);
                        e32 += (double)a[p * ld + i] * b[i]; m32 += fabs((double)a[p * ld + i] * b[i]);
                    }
                    ck_assert(fabs(sc[p] - e16) <= (dim / 8.0 + 32) * 0x1p-24 * m16);
                    ck_assert(fabs(sc32[p] - e32) <= (dim / 8.0 + 32) * 0x1p-24 * m32);
                }
                for (int i = 0; i < dim; i++) {
                    double e16 = 0, m16 = 0, e32 = 0, m32 = 0;
                    for (int p = 0; p < rows; p++) {
                        const double v16 = g4_fp16_to_fp32(h[p * ld + i]);
                        e16 += w[p] * v16; m16 += fabs(w[p] * v16);
                        e32 += (double)w[p] * a[p * ld + i]; m32 += fabs((double)w[p] * a[p * ld + i]);
                    }
                    ck_assert(fabs(o16[i] - e16) <= (rows + 32) * 0x1p-24 * m16);
                    ck_assert(fabs(o32[i] - e32) <= (rows + 32) * 0x1p-24 * m32);
                }
            }
        memcpy(y1, y0, sizeof y0);
        g4_axpy_f16(N, 0.75f, h, y1);
        for (int i = 0; i < N; i++) {   /* one rounding (FMA) or two */
            const double t = 0.75 * g4_fp16_to_fp32(h[i]), e = y0[i] + t;
            ck_assert(fabs(y1[i] - e) <= 0x1p-23 * (fabs(y0[i]) + fabs(t)));
        }
    }
    ck_assert(g4_quant_set_isa(g4_isa_best()));
}
END_TEST

/* The repacked x86 kernels add several vpmaddubsw results in int16 before
   widening (kernels_x86.h: a Q4_0 block, a Q4_K sub-block, two Q6_K groups,
   half a Q5_0 block, half a Q5_K sub-block);
   the largest such sums come from every weight at its largest unsigned
   value and every activation at +-127 with one sign. Those must not
   saturate: bit-identical to the reference, on every ISA. */
START_TEST(test_repacked_int16_sums) {
    for (size_t k = 0; k < sizeof XTYPES / sizeof XTYPES[0]; k++) {
        const uint32_t type = XTYPES[k];
        const int64_t n = g4_blck_size(type) == QK_K ? 512 : 64, rows = 16;
        const size_t rs = g4_row_size(type, n), as = g4_act_row_size(type, n), bs = g4_type_size(type);
        enum { NT = 6 };   /* 6 token rows: a full 4-token tile and the pair after it on AVX2 */
        uint8_t *w = malloc(rs * rows), *wp = malloc(rs * rows), *xa = malloc(as * NT);
        float *x = malloc(sizeof(float) * n), y[16 * NT];
        memset(w, 0xff, rs * rows);   /* nibbles 15, Q5_0 and Q5_K values 31, Q6_K 63, K scales and mins 63, Q8_0 -1 */
        for (size_t b = 0; b < rs * rows; b += bs) {
            if (type == G4_TYPE_Q6_K) {
                memset(w + b + 192, 0x01, 16);   /* sub-block scales +1 */
                put_f16(w + b + 208, 0.01f);
            } else if (type == G4_TYPE_Q4_K || type == G4_TYPE_Q5_K) {
                put_f16(w + b, 0.01f);
                put_f16(w + b + 2, 0.0f);
            } else {
                put_f16(w + b, 0.01f);
            }
        }
        ck_assert(g4_repack(type, w, rows, n, wp));
        for (int sign = -1; sign <= 1; sign += 2) {
            for (int64_t i = 0; i < n; i++) x[i] = 3.0f * (float)sign;   /* every q = +-127 */
            ck_assert(g4_quant_set_isa(G4_ISA_SCALAR));
            ck_assert(g4_quantize_act(type, x, n, xa));
            for (int t = 1; t < NT; t++) memcpy(xa + t * as, xa, as);
            const float e = ref_dot(type, n, w, xa);
            for (int isa = 0; isa < G4_ISA_COUNT; isa++) {
                if (!g4_quant_set_isa(isa)) continue;
                for (int nt = 1; nt <= NT; nt++) {
                    g4_matmul_rows_x8(type, wp, n, xa, as, nt, y, rows, 0, rows);
                    for (int64_t i = 0; i < rows * nt; i++)
                        ck_assert_msg(memcmp(&y[i], &e, 4) == 0,
                                      "%s repacked %s sign %d, %d tokens, token %ld row %ld: %a vs reference %a",
                                      g4_isa_name(isa), g4_type_name(type), sign, nt, (long)(i / rows),
                                      (long)(i % rows), (double)y[i], (double)e);
                }
            }
        }
        ck_assert(g4_quant_set_isa(g4_isa_best()));
        free(w); free(wp); free(xa); free(x);
    }
}
END_TEST

static Suite *kernels_suite(void) {
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 300);   /* qemu runs the Arm build ~20x slower */
    tcase_add_test(tc, test_isa_table);
    tcase_add_test(tc, test_quantizers_bit_identical);
    tcase_add_test(tc, test_matmul_quant);
    tcase_add_test(tc, test_matmul_float);
    tcase_add_test(tc, test_matmul_kq_bit_identical);
    tcase_add_test(tc, test_matmul_kq_extremes);
    tcase_add_test(tc, test_repacked);
    tcase_add_test(tc, test_repacked_int16_sums);
    tcase_add_test(tc, test_float_helpers);
    suite_add_tcase(s, tc);
    return s;
}

G4TEST_MAIN(kernels_suite)
