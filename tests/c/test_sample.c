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


/* ---- the extended chain: each stage against its formula ---- */

static g4_sample_params greedy_params(void) {
    g4_sample_params p = g4_sample_params_default();
    p.temperature = 0.0f;
    return p;
}

START_TEST(test_mask_bits_and_words) {
    enum { N = 70 };   /* three words, the last one partial */
    float l[N];
    uint32_t mask[3] = {0xffffffffu, 0x00000005u, 0xffffffffu};   /* ids 0-31, 32, 34, 64-69 */
    for (int i = 0; i < N; i++) l[i] = (float)i;
    ck_assert_int_eq(g4_apply_mask(l, N, mask), 32 + 2 + 6);
    for (int i = 0; i < N; i++) {
        int allowed = i < 32 || i == 32 || i == 34 || i >= 64;
        ck_assert_msg(allowed ? l[i] == (float)i : l[i] == -INFINITY, "id %d", i);
    }
    /* the greedy pick respects the mask: without it, 69 would win */
    uint32_t only33[3] = {0, 1u << 1, 0};
    g4_sample_params p = greedy_params();
    g4_sampler s;
    ck_assert_int_eq(g4_sampler_init_ex(&s, &p), 0);
    for (int i = 0; i < N; i++) l[i] = (float)i;
    ck_assert_int_eq(g4_sample_ex(&s, l, N, NULL, 0, only33, 0, NULL, NULL, NULL), 33);
    /* and so does a draw at temperature 1 */
    p.temperature = 1.0f;
    g4_sampler_free(&s);
    g4_sampler_init_ex(&s, &p);
    for (int r = 0; r < 50; r++) {
        for (int i = 0; i < N; i++) l[i] = (float)i;
        ck_assert_int_eq(g4_sample_ex(&s, l, N, NULL, 0, only33, 0, NULL, NULL, NULL), 33);
    }
    uint32_t none[3] = {0, 0, 0xffffff80u};   /* only bits past the vocabulary */
    ck_assert_int_eq(g4_sample_ex(&s, l, N, NULL, 0, none, 0, NULL, NULL, NULL), -2);
    g4_sampler_free(&s);
}
END_TEST

START_TEST(test_logit_bias) {
    float l[5] = {1, 2, 3, 4, 5};
    int32_t ids[3] = {0, 4, 99};         /* 99 is outside the vocabulary: ignored */
    float vals[3] = {10.0f, -INFINITY, 100.0f};
    g4_sample_params p = greedy_params();
    p.bias_ids = ids; p.bias_vals = vals; p.n_bias = 3;
    g4_sampler s;
    ck_assert_int_eq(g4_sampler_init_ex(&s, &p), 0);
    vals[0] = -50.0f;                    /* the sampler kept its own copy */
    ck_assert_int_eq(g4_sample_ex(&s, l, 5, NULL, 0, NULL, 0, NULL, NULL, NULL), 0);
    ck_assert(l[0] == 11.0f && l[4] == -INFINITY && l[3] == 4.0f);
    g4_sampler_free(&s);
}
END_TEST

/* llama_sampler_penalties_apply + OpenAI's presence/frequency, by hand */
START_TEST(test_penalties_formula) {
    float l[6] = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 1.0f};
    int32_t hist[7] = {5, 0, 1, 0, 3, 0, 1};   /* with repeat_last_n 6: 0 x3, 1 x2, 3 x1 */
    g4_sample_params p = greedy_params();
    p.repeat_penalty = 1.5f; p.repeat_last_n = 6;
    p.presence_penalty = 0.25f; p.frequency_penalty = 0.5f;
    g4_sampler s;
    g4_sampler_init_ex(&s, &p);
    g4_sample_ex(&s, l, 6, hist, 7, NULL, 0, NULL, NULL, NULL);
    ck_assert_float_eq_tol(l[0], 2.0f / 1.5f - 3 * 0.5f - 0.25f, 1e-6f);
    ck_assert_float_eq_tol(l[1], -1.0f * 1.5f - 2 * 0.5f - 0.25f, 1e-6f);
    ck_assert_float_eq_tol(l[3], 3.0f / 1.5f - 1 * 0.5f - 0.25f, 1e-6f);
    ck_assert(l[2] == 0.5f && l[4] == 0.0f);
    ck_assert(l[5] == 1.0f);               /* id 5 is older than the window */
    g4_sampler_free(&s);
    /* -1: the whole history; 0: off */
    float m[6] = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 1.0f};
    p.repeat_last_n = -1;
    g4_sampler_init_ex(&s, &p);
    g4_sample_ex(&s, m, 6, hist, 7, NULL, 0, NULL, NULL, NULL);
    ck_assert_float_eq_tol(m[5], 1.0f / 1.5f - 0.5f - 0.25f, 1e-6f);
    g4_sampler_free(&s);
    float q[6] = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 1.0f};
    p.repeat_last_n = 0;
    g4_sampler_init_ex(&s, &p);
    g4_sample_ex(&s, q, 6, hist, 7, NULL, 0, NULL, NULL, NULL);
    ck_assert(q[0] == 2.0f && q[1] == -1.0f && q[5] == 1.0f);
    g4_sampler_free(&s);
}
END_TEST

/* min-p: the support is {i : p_i >= min_p * p_max} and the draw renormalizes */
START_TEST(test_min_p_distribution) {
    /* p = .4 .3 .15 .1 .05; min_p .3 -> cut at .12: keeps .4 .3 .15 */
    float l[5] = {logf(0.4f), logf(0.3f), logf(0.15f), logf(0.1f), logf(0.05f)};
    double p[5] = {0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0};
    g4_sample_params sp = g4_sample_params_default();
    sp.min_p = 0.3f; sp.seed = 21;
    g4_sampler s;
    g4_sampler_init_ex(&s, &sp);
    int cnt[5] = {0};
    const int draws = 100000;
    for (int i = 0; i < draws; i++) {
        float w[5];
        memcpy(w, l, sizeof w);
        cnt[g4_sample_ex(&s, w, 5, NULL, 0, NULL, 0, NULL, NULL, NULL)]++;
    }
    for (int i = 0; i < 5; i++) {
        if (p[i] == 0) ck_assert_int_eq(cnt[i], 0);
        else ck_assert_msg(fabs(cnt[i] / (double)draws - p[i]) < 0.01, "id %d: %d", i, cnt[i]);
    }
    g4_sampler_free(&s);
}
END_TEST

/* logprobs: the log-softmax in double over the processed logits, top list sorted */
START_TEST(test_logprobs_match_log_softmax) {
    enum { N = 3000 };
    float *l = malloc(N * sizeof *l), *w = malloc(N * sizeof *w);
    for (int i = 0; i < N; i++) l[i] = frand() * 8.0f - 4.0f;
    uint32_t mask[(N + 31) / 32];
    for (int i = 0; i < (N + 31) / 32; i++) mask[i] = 0xffffffffu;
    mask[0] &= ~1u;                        /* token 0 masked: never listed, -inf */
    l[0] = 100.0f;
    g4_sample_params p = g4_sample_params_default();
    p.seed = 5;
    g4_sampler s;
    g4_sampler_init_ex(&s, &p);
    memcpy(w, l, N * sizeof *l);
    int32_t ids[5];
    float lps[5], chosen;
    int32_t id = g4_sample_ex(&s, w, N, NULL, 0, mask, 5, ids, lps, &chosen);
    double mx = -INFINITY, z = 0;
    for (int i = 1; i < N; i++) if (l[i] > mx) mx = l[i];
    for (int i = 1; i < N; i++) z += exp(l[i] - mx);
    ck_assert_float_eq_tol(chosen, (float)(l[id] - mx - log(z)), 1e-4f);
    for (int k = 0; k < 5; k++) {
        ck_assert_int_ne(ids[k], 0);
        ck_assert_float_eq_tol(lps[k], (float)(l[ids[k]] - mx - log(z)), 1e-4f);
        if (k) ck_assert(lps[k] <= lps[k - 1]);
        int better = 0;                    /* exactly k tokens beat the k-th */
        for (int i = 1; i < N; i++) better += l[i] > l[ids[k]];
        ck_assert_int_eq(better, k);
    }
    g4_sampler_free(&s);
    free(l); free(w);
}
END_TEST

/* the extended entry point with everything off draws what g4_sample draws */
START_TEST(test_ex_defaults_match_plain) {
    float l[200], w[200];
    for (int i = 0; i < 200; i++) l[i] = frand() * 5;
    g4_sampler a, b;
    g4_sampler_init(&a, 0.7f, 50, 0.9f, 77);
    g4_sample_params p = g4_sample_params_default();
    p.temperature = 0.7f; p.top_k = 50; p.top_p = 0.9f; p.seed = 77;
    g4_sampler_init_ex(&b, &p);
    int32_t hist[3] = {1, 2, 3};
    for (int r = 0; r < 300; r++) {
        memcpy(w, l, sizeof l);
        ck_assert_int_eq(g4_sample(&a, l, 200), g4_sample_ex(&b, w, 200, hist, 3, NULL, 0, NULL, NULL, NULL));
    }
    g4_sampler_free(&a); g4_sampler_free(&b);
}
END_TEST

/* the mask on a Gemma-sized vocabulary: cheap when most words are all ones */
START_TEST(test_mask_cost_large_vocab) {
    enum { N = 262144 };
    float *l = malloc(N * sizeof *l);
    uint32_t *mask = malloc(N / 8);
    for (int i = 0; i < N / 32; i++) mask[i] = 0xffffffffu;
    mask[100] = 0x0000ffffu;
    for (int i = 0; i < N; i++) l[i] = 0.0f;
    clock_t t0 = clock();
    int32_t n = 0;
    for (int r = 0; r < 200; r++) n = g4_apply_mask(l, N, mask);
    double us = 1e6 * (double)(clock() - t0) / CLOCKS_PER_SEC / 200;
    ck_assert_int_eq(n, N - 16);
    ck_assert(l[3200 + 15] == 0.0f && l[3200 + 16] == -INFINITY);
    printf("mask over %d tokens (all-ones words skipped): %.1f us\n", N, us);
    free(l); free(mask);
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
    tcase_add_test(tc, test_mask_bits_and_words);
    tcase_add_test(tc, test_logit_bias);
    tcase_add_test(tc, test_penalties_formula);
    tcase_add_test(tc, test_min_p_distribution);
    tcase_add_test(tc, test_logprobs_match_log_softmax);
    tcase_add_test(tc, test_ex_defaults_match_plain);
    tcase_add_test(tc, test_mask_cost_large_vocab);
    suite_add_tcase(s, tc);
    return s;
}

G4TEST_MAIN(sample_suite)
