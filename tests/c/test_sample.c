/* test_sample.c - the sampler against independent references: argmax by
 * hand, softmax computed here in double, brute-force sorted nucleus sets. */
#include "g4test.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "sample/sample.h"

static void softmax_ref(const float *l, int n, double t, double *p) {
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < n; i++) if (l[i] > mx) mx = l[i];
    for (int i = 0; i < n; i++) z += p[i] = exp((l[i] - mx) / t);
    for (int i = 0; i < n; i++) p[i] /= z;
}

static uint64_t lcg = 12345;
static float frand(void) {   /* test-local generator, independent of the sampler's */
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg >> 40) / (double)(1ull << 24));
}

START_TEST(test_argmax_ties_and_nan) {
    float x[6] = {1, 3, NAN, 3, -2, 2};
    ck_assert_int_eq(g4_argmax(x, 6), 1);     /* tie 1 vs 3 -> lowest id */
    float y[3] = {NAN, NAN, -1};
    ck_assert_int_eq(g4_argmax(y, 3), 2);
    float z[2] = {NAN, NAN};
    ck_assert_int_eq(g4_argmax(z, 2), 0);
}
END_TEST

START_TEST(test_greedy_is_argmax) {
    g4_sampler s;
    g4_sampler_init(&s, 0.0f, 40, 0.9f, 1);
    float l[1000];
    for (int r = 0; r < 50; r++) {
        int best = 0;
        for (int i = 0; i < 1000; i++) {
            l[i] = frand() * 10;
            if (l[i] > l[best]) best = i;
        }
        ck_assert_int_eq(g4_sample(&s, l, 1000), best);
    }
    g4_sampler_free(&s);
}
END_TEST

START_TEST(test_top_k_1_is_greedy) {
    g4_sampler s;
    g4_sampler_init(&s, 1.5f, 1, 1.0f, 99);
    float l[5000];
    for (int r = 0; r < 50; r++) {
        for (int i = 0; i < 5000; i++) l[i] = frand() * 4;
        l[4321] = l[17] = 100.0f;   /* tie: the lower id wins, as greedy */
        ck_assert_int_eq(g4_sample(&s, l, 5000), 17);
    }
    g4_sampler_free(&s);
}
END_TEST

START_TEST(test_seed_reproducible) {
    float l[100];
    for (int i = 0; i < 100; i++) l[i] = frand() * 3;
    g4_sampler a, b, c;
    g4_sampler_init(&a, 1.0f, 0, 1.0f, 42);
    g4_sampler_init(&b, 1.0f, 0, 1.0f, 42);
    g4_sampler_init(&c, 1.0f, 0, 1.0f, 43);
    int same_c = 0;
    for (int i = 0; i < 200; i++) {
        int32_t x = g4_sample(&a, l, 100), y = g4_sample(&b, l, 100), z = g4_sample(&c, l, 100);
        ck_assert_int_eq(x, y);
        same_c += x == z;
    }
    ck_assert_int_lt(same_c, 100);   /* another seed gives another sequence */
    g4_sampler_free(&a); g4_sampler_free(&b); g4_sampler_free(&c);
}
END_TEST

/* frequencies of `draws` samples vs p: max abs diff and Pearson chi-square */
static void check_distribution(g4_sampler *s, float *l, int n, const double *p, int draws) {
    int *cnt = calloc((size_t)n, sizeof *cnt);
    for (int i = 0; i < draws; i++) {
        int32_t id = g4_sample(s, l, n);
        ck_assert(id >= 0 && id < n);
        cnt[id]++;
    }
    double chi2 = 0, maxdiff = 0;
    int dof = -1;
    for (int i = 0; i < n; i++) {
        double e = p[i] * draws;
        if (p[i] == 0) { ck_assert_int_eq(cnt[i], 0); continue; }
        chi2 += (cnt[i] - e) * (cnt[i] - e) / e;
        dof++;
        double d = fabs(cnt[i] / (double)draws - p[i]);
        if (d > maxdiff) maxdiff = d;
    }
    /* chi-square 99.9% quantile is below dof + 5 sqrt(2 dof) + 10 for these dof */
    ck_assert_msg(chi2 < dof + 5 * sqrt(2.0 * dof) + 10, "chi2 %.1f dof %d", chi2, dof);
    ck_assert_msg(maxdiff < 0.006, "max abs diff %.4f", maxdiff);
    free(cnt);
}

START_TEST(test_distribution_temperature_1) {
    float l[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, 1.5f};
    double p[8];
    softmax_ref(l, 8, 1.0, p);
    g4_sampler s;
    g4_sampler_init(&s, 1.0f, 0, 1.0f, 7);
    check_distribution(&s, l, 8, p, 200000);
    g4_sampler_free(&s);
}
END_TEST

START_TEST(test_distribution_temperature_half) {
    float l[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, 1.5f};
    double p[8];
    softmax_ref(l, 8, 0.5, p);
    g4_sampler s;
    g4_sampler_init(&s, 0.5f, 0, 1.0f, 8);
    check_distribution(&s, l, 8, p, 200000);
    g4_sampler_free(&s);
}
END_TEST

START_TEST(test_top_k_renormalizes) {
    float l[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, 1.5f};
    float kept[8];
    for (int i = 0; i < 8; i++) kept[i] = (i == 1 || i == 4 || i == 5) ? l[i] : -INFINITY;
    double p[8];
    softmax_ref(kept, 8, 1.0, p);
    g4_sampler s;
    g4_sampler_init(&s, 1.0f, 3, 1.0f, 9);
    check_distribution(&s, l, 8, p, 200000);
    g4_sampler_free(&s);
}
END_TEST

START_TEST(test_top_p_excludes_tail) {
    /* probabilities 0.5, 0.3, 0.15, 0.05: p = 0.75 keeps the first two */
    float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    double p[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
    g4_sampler s;
    g4_sampler_init(&s, 1.0f, 0, 0.75f, 10);
    check_distribution(&s, l, 4, p, 100000);
    g4_sampler_free(&s);
    /* top_p = 0 keeps only the best */
    g4_sampler_init(&s, 1.0f, 0, 0.0f, 10);
    for (int i = 0; i < 100; i++) ck_assert_int_eq(g4_sample(&s, l, 4), 0);
    g4_sampler_free(&s);
}
END_TEST

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y;
}

/* Gemma-sized vocabulary: the unsorted nucleus path against a full sort. */
START_TEST(test_top_p_large_vocab_matches_full_sort) {
    enum { N = 262144 };
    float *l = malloc(N * sizeof *l), *sorted = malloc(N * sizeof *sorted);
    for (int i = 0; i < N; i++) l[i] = frand() * 12.0f;   /* a few hundred carry the mass */
    memcpy(sorted, l, N * sizeof *l);
    qsort(sorted, N, sizeof *sorted, cmp_desc);
    double z = 0, cum = 0;
    for (int i = 0; i < N; i++) z += exp((double)sorted[i] - sorted[0]);
    int keep = 0;
    while (cum < 0.9 * z) cum += exp((double)sorted[keep++] - sorted[0]);
    float threshold = sorted[keep - 1];

    g4_sampler s;
    g4_sampler_init(&s, 1.0f, 0, 0.9f, 11);
    clock_t t0 = clock();
    for (int i = 0; i < 300; i++) {
        int32_t id = g4_sample(&s, l, N);
        ck_assert_msg(l[id] >= threshold, "drew id %d below the nucleus", id);
    }
    double ms = 1000.0 * (double)(clock() - t0) / CLOCKS_PER_SEC / 300;
    printf("top-p 0.9 over %d logits (nucleus %d): %.2f ms per sample\n", N, keep, ms);
    g4_sampler_free(&s);

    g4_sampler_init(&s, 0.8f, 40, 0.95f, 12);
    t0 = clock();
    for (int i = 0; i < 300; i++) {
        int32_t id = g4_sample(&s, l, N);
        ck_assert_msg(l[id] >= sorted[39], "drew id %d outside the top 40", id);
    }
    ms = 1000.0 * (double)(clock() - t0) / CLOCKS_PER_SEC / 300;
    printf("top-k 40 + top-p 0.95 over %d logits: %.2f ms per sample\n", N, ms);
    g4_sampler_free(&s);
    free(l); free(sorted);
}
END_TEST

START_TEST(test_degenerate_logits) {
    float l[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    g4_sampler s;
    g4_sampler_init(&s, 1.0f, 0, 0.9f, 1);
    ck_assert_int_eq(g4_sample(&s, l, 4), 0);
    float m[3] = {NAN, INFINITY, 1.0f};
    ck_assert_int_eq(g4_sample(&s, m, 3), 1);
    ck_assert_int_eq(g4_sample(&s, m, 0), -1);
    g4_sampler_free(&s);
}
END_TEST

static Suite *sample_suite(void) {
    Suite *s = suite_create("sample");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_argmax_ties_and_nan);
    tcase_add_test(tc, test_greedy_is_argmax);
    tcase_add_test(tc, test_top_k_1_is_greedy);
    tcase_add_test(tc, test_seed_reproducible);
    tcase_add_test(tc, test_distribution_temperature_1);
    tcase_add_test(tc, test_distribution_temperature_half);
    tcase_add_test(tc, test_top_k_renormalizes);
    tcase_add_test(tc, test_top_p_excludes_tail);
    tcase_add_test(tc, test_top_p_large_vocab_matches_full_sort);
    tcase_add_test(tc, test_degenerate_logits);
    suite_add_tcase(s, tc);
    return s;
}

G4TEST_MAIN(sample_suite)
