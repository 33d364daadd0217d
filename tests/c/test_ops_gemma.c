/* test_ops_gemma.c - the Gemma building blocks of csrc/model/ops_gemma.c.
 *
 * Oracles: the textbook formulas in double precision (GELU tanh, softcap,
 * router softmax + top-k by sorting); ops.c's g4_attention over a plain
 * whole-context cache for the ring-buffer attention; a simulation of which
 * position each ring row holds for g4_kv_can_resume. Vector paths are
 * checked on every ISA this CPU has (quant.h g4_quant_set_isa).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "g4test.h"
#include "common/threadpool.h"
#include "model/ops.h"
#include "model/ops_gemma.h"
#include "quant/quant.h"

static float frand(unsigned *s, float lo, float hi) {
    *s = *s * 1103515245u + 12345u;
    return lo + (hi - lo) * (float)((*s >> 8) & 0xFFFFFF) / (float)0xFFFFFF;
}

static const int isas[] = { G4_ISA_SCALAR, G4_ISA_AVX2, G4_ISA_AVX512, G4_ISA_AVX512VNNI };

/* ------------------------------------------------------------ elementwise */

START_TEST(test_geglu_vec_formula) {
    enum { N = 4099 };   /* not a multiple of the vector width: the tails run too */
    float *g = malloc(N * sizeof(float)), *u = malloc(N * sizeof(float)), *o = malloc(N * sizeof(float));
    unsigned s = 1;
    for (int i = 0; i < N; i++) { g[i] = frand(&s, -30.0f, 30.0f); u[i] = frand(&s, -2.0f, 2.0f); }
    g[0] = 0.0f; g[1] = -100.0f; g[2] = 100.0f; g[3] = 1e-8f;
    const int saved = g4_isa_active();
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
        if (!g4_isa_available(isas[k])) continue;
        g4_quant_set_isa(isas[k]);
        g4_geglu_vec(o, g, u, N);
        for (int i = 0; i < N; i++) {
            const double x = g[i], t = tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
            const double want = 0.5 * x * (1.0 + t) * u[i];
            ck_assert_msg(fabs(o[i] - want) <= 2e-6 * fabs(x * u[i]) + 1e-30,
                          "%s: gelu(%g)*%g = %.9g, want %.9g", g4_isa_name(isas[k]), g[i], u[i], o[i], want);
        }
    }
    g4_quant_set_isa(saved);
    free(g); free(u); free(o);
}
END_TEST

START_TEST(test_softcap_formula) {
    enum { N = 1031 };
    float x[N], y[N];
    unsigned s = 2;
    for (int i = 0; i < N; i++) x[i] = frand(&s, -200.0f, 200.0f);
    x[0] = 0.0f; x[1] = 1e-6f; x[2] = -1e4f;
    const int saved = g4_isa_active();
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
        if (!g4_isa_available(isas[k])) continue;
        g4_quant_set_isa(isas[k]);
        memcpy(y, x, sizeof x);
        g4_softcap(y, N, 30.0f);
        for (int i = 0; i < N; i++)
            ck_assert_msg(fabs(y[i] - 30.0 * tanh(x[i] / 30.0)) <= 30.0 * 1e-6, "%s: softcap(%g) = %.9g",
                          g4_isa_name(isas[k]), x[i], y[i]);
        memcpy(y, x, sizeof x);
        g4_softcap(y, N, 0.0f);                      /* cap 0: off */
        ck_assert(memcmp(x, y, sizeof x) == 0);
    }
    g4_quant_set_isa(saved);
}
END_TEST

/* ------------------------------------------------------------- attention */

/* Ring-buffer attention == whole-context attention, for prompt chunks and
 * single tokens, GQA, with and without a window, on every ISA. */
START_TEST(test_ring_attention_matches_full_cache) {
    enum { CTX = 150, NH = 4, NKV = 2, HD = 24, DIM = NKV * HD, B = 16 };
    g4_err err;
    g4_pool *pool = g4_pool_create(2, &err);
    ck_assert_msg(pool, "%s", err.msg);
    float *K = malloc(sizeof(float) * CTX * DIM), *V = malloc(sizeof(float) * CTX * DIM);
    float *Q = malloc(sizeof(float) * CTX * NH * HD);
    float *o1 = malloc(sizeof(float) * B * NH * HD), *o2 = malloc(sizeof(float) * B * NH * HD);
    float *att = malloc(sizeof(float) * (size_t)g4_attention_scratch(CTX, 2));
    unsigned s = 3;
    for (int i = 0; i < CTX * DIM; i++) { K[i] = frand(&s, -1, 1); V[i] = frand(&s, -1, 1); }
    for (int i = 0; i < CTX * NH * HD; i++) Q[i] = frand(&s, -1, 1);
    const int saved = g4_isa_active();
    for (int window = 0; window <= 9; window += 9) {
        for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
            if (!g4_isa_available(isas[k])) continue;
            g4_quant_set_isa(isas[k]);
            const g4_attn a = { NH, NKV, HD, HD, 0.2f, 0.0f, window };
            g4_kv kv;
            uint64_t bytes = 0;
            const int64_t rows = g4_kv_rows(window, B, CTX);
            ck_assert_int_eq(rows, window ? window + B - 1 : CTX);
            ck_assert_int_eq(g4_kv_build(&kv, rows, DIM, DIM, window, &bytes, &err), G4_OK);
            ck_assert_int_eq(bytes, (uint64_t)rows * DIM * 2 * sizeof(float));
            int64_t pos = 0;
            const int chunks[] = { B, 1, 1, 7, B, 3, B, B, 1 };
            for (size_t c = 0; pos < CTX; c++) {
                int n = c < sizeof chunks / sizeof chunks[0] ? chunks[c] : 1;
                if (pos + n > CTX) n = (int)(CTX - pos);
                g4_kv_store(&kv, pos, n, K + pos * DIM, DIM, V + pos * DIM, DIM);
                g4_attention_kv(pool, &a, Q + pos * NH * HD, NH * HD, &kv, pos, n, o1, NH * HD, att, CTX);
                g4_attention(pool, &a, Q + pos * NH * HD, NH * HD, K, DIM, V, DIM, pos, n, o2, NH * HD, att, CTX);
                for (int i = 0; i < n * NH * HD; i++)
                    ck_assert_msg(fabsf(o1[i] - o2[i]) <= 1e-5f, "%s window %d pos %lld: %g vs %g",
                                  g4_isa_name(isas[k]), window, (long long)pos, o1[i], o2[i]);
                pos += n;
            }
            g4_kv_free(&kv);
        }
    }
    g4_quant_set_isa(saved);
    free(K); free(V); free(Q); free(o1); free(o2); free(att);
    g4_pool_free(pool);
}
END_TEST

/* g4_kv_can_resume against a simulation of which position each row holds,
 * over random histories of forwards that resume where the check allows or
 * restart at 0 (a long history followed by a short one leaves rows of
 * positions past the new end: they must not count). */
START_TEST(test_kv_can_resume_simulated) {
    enum { W = 5, B = 4, CTX = 64 };
    g4_kv kv;
    g4_err err;
    uint64_t bytes = 0;
    ck_assert_int_eq(g4_kv_build(&kv, g4_kv_rows(W, B, CTX), 1, 1, W, &bytes, &err), G4_OK);
    ck_assert_int_eq(kv.n_rows, W + B - 1);
    ck_assert(!g4_kv_can_resume(&kv, 3));             /* nothing written yet */
    int64_t held[CTX];
    float zero[CTX] = {0};
    unsigned s = 4;
    int refused = 0, allowed = 0;
    for (int trial = 0; trial < 300; trial++) {
        for (int r = 0; r < kv.n_rows; r++) held[r] = kv.pos[r] = -1;
        int64_t end = 0;
        for (int step = 0; step < 8; step++) {
            int64_t start = (int64_t)frand(&s, 0, (float)end + 0.99f);
            if (!g4_kv_can_resume(&kv, start)) start = 0;
            int64_t n = 1 + (int64_t)frand(&s, 0, step % 2 ? 3 : 25);
            if (start + n > CTX) n = CTX - start;
            for (int64_t p = start; p < start + n; p += B) {   /* in chunks of at most B */
                const int c = (int)(start + n - p < B ? start + n - p : B);
                g4_kv_store(&kv, p, c, zero, 1, zero, 1);
                for (int64_t q = p; q < p + c; q++) held[q % kv.n_rows] = q;
            }
            end = start + n;
            for (int64_t keep = 0; keep <= end; keep++) {
                const int64_t first = keep - W + 1 > 0 ? keep - W + 1 : 0;
                int ok = 1;
                for (int64_t p = first; p < keep; p++) ok &= held[p % kv.n_rows] == p;
                ck_assert_msg(g4_kv_can_resume(&kv, keep) == ok, "keep %lld after writing up to %lld: "
                              "got %d, want %d", (long long)keep, (long long)end, !ok, ok);
                ok ? allowed++ : refused++;
            }
        }
    }
    ck_assert(allowed > 100 && refused > 100);      /* both outcomes were exercised */
    g4_kv_free(&kv);
}
END_TEST

/* ------------------------------------------------------- mixture of experts */

START_TEST(test_moe_route_by_sorting) {
    enum { E = 16, K = 4 };
    unsigned s = 5;
    for (int trial = 0; trial < 100; trial++) {
        float logits[E], scale[E], w[K];
        double p[E];
        int32_t idx[K];
        double mx = -1e30, sum = 0;
        for (int e = 0; e < E; e++) { logits[e] = frand(&s, -4, 4); scale[e] = frand(&s, 0.5f, 1.5f); }
        for (int e = 0; e < E; e++) mx = logits[e] > mx ? logits[e] : mx;
        for (int e = 0; e < E; e++) sum += p[e] = exp(logits[e] - mx);
        for (int e = 0; e < E; e++) p[e] /= sum;
        int order[E];
        for (int e = 0; e < E; e++) order[e] = e;
        for (int a = 0; a < E; a++)           /* selection sort, descending */
            for (int b = a + 1; b < E; b++)
                if (p[order[b]] > p[order[a]]) { int t = order[a]; order[a] = order[b]; order[b] = t; }
        double top = 0;
        for (int k = 0; k < K; k++) top += p[order[k]];
        g4_moe_route(logits, E, K, scale, idx, w);
        for (int k = 0; k < K; k++) {
            ck_assert_int_eq(idx[k], order[k]);
            ck_assert(fabs(w[k] - p[order[k]] / top * scale[order[k]]) < 1e-6);
        }
    }
}
END_TEST

static Suite *ops_gemma_suite(void) {
    Suite *s = suite_create("ops_gemma");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_geglu_vec_formula);
    tcase_add_test(tc, test_softcap_formula);
    tcase_add_test(tc, test_ring_attention_matches_full_cache);
    tcase_add_test(tc, test_kv_can_resume_simulated);
    tcase_add_test(tc, test_moe_route_by_sorting);
    suite_add_tcase(s, tc);
    return s;
}

G4TEST_MAIN(ops_gemma_suite)
