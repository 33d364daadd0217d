/* test_ops_gemma.c - the Gemma building blocks of csrc/model/ops_gemma.c.
 *
 * Oracles: the textbook formulas in double precision (GELU tanh, softcap,
 * router softmax + top-k by sorting). (Paged attention, sliding windows
 * included, is tested in test_kvcache.c.) Vector paths are
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
    tcase_add_test(tc, test_moe_route_by_sorting);
    suite_add_tcase(s, tc);
    return s;
}

G4TEST_MAIN(ops_gemma_suite)
