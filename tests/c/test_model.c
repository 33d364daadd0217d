/* test_model.c - thread pool, numeric ops and the llama forward pass.
 *
 * Oracles: closed-form sums for the pool; the textbook formulas (written out
 * here in double precision, independently of ops.c's loops) for RMSNorm,
 * RoPE and softmax; the reference token ids of ../shared/models/SOURCES.md
 * for the model.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "g4test.h"
#include "common/threadpool.h"
#include "model/model.h"
#include "model/ops.h"
#include "quant/quant.h"
#include "sample/sample.h"

/* ------------------------------------------------------------------ pool */

#define N_ITEMS 100003

typedef struct { atomic_long sum; atomic_int calls; atomic_int seen[64]; } pool_ctx;

static void sum_range(void *arg, int ith, int nth) {
    pool_ctx *c = arg;
    long lo = (long)N_ITEMS * ith / nth, hi = (long)N_ITEMS * (ith + 1) / nth, s = 0;
    for (long i = lo; i < hi; i++) s += i;
    atomic_fetch_add(&c->sum, s);
    atomic_fetch_add(&c->calls, 1);
    atomic_fetch_add(&c->seen[ith], 1);
}

START_TEST(test_pool_sum_over_ranges) {
    const int sizes[] = {1, 2, 3, 8};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        g4_err err;
        g4_pool *p = g4_pool_create(sizes[k], &err);
        ck_assert_msg(p, "%s", err.msg);
        ck_assert_int_eq(g4_pool_size(p), sizes[k]);
        for (int rep = 0; rep < 2000; rep++) {   /* many back-to-back jobs: no lost wakeups */
            pool_ctx c;
            memset(&c, 0, sizeof c);
            g4_pool_run(p, sum_range, &c);
            ck_assert_int_eq(atomic_load(&c.sum), (long)N_ITEMS * (N_ITEMS - 1) / 2);
            ck_assert_int_eq(atomic_load(&c.calls), sizes[k]);
            for (int i = 0; i < sizes[k]; i++) ck_assert_int_eq(atomic_load(&c.seen[i]), 1);
        }
        g4_pool_free(p);
    }
}
END_TEST

START_TEST(test_pool_bad_size) {
    g4_err err;
    ck_assert_ptr_null(g4_pool_create(0, &err));
    ck_assert_int_eq(err.status, G4_ERR_INVALID);
}
END_TEST

/* ------------------------------------------------------------------- ops */

static unsigned rng_state = 12345;
static float frand(void) {   /* uniform in [-1, 1) */
    rng_state = rng_state * 1103515245u + 12345u;
    return (float)((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

START_TEST(test_rmsnorm_formula) {
    float x[37], w[37], out[37];
    for (int i = 0; i < 37; i++) { x[i] = 3 * frand(); w[i] = frand(); }
    g4_rmsnorm(out, x, w, 37, 1e-5f);
    double ms = 0;
    for (int i = 0; i < 37; i++) ms += (double)x[i] * x[i];
    ms /= 37;
    for (int i = 0; i < 37; i++)
        ck_assert_double_eq_tol(out[i], x[i] / sqrt(ms + 1e-5) * w[i], 1e-5);
}
END_TEST

START_TEST(test_softmax_formula) {
    float x[50];
    double e[50], z = 0;
    for (int i = 0; i < 50; i++) { x[i] = 40 * frand(); e[i] = exp((double)x[i]); z += e[i]; }
    g4_softmax(x, 50);
    double total = 0;
    for (int i = 0; i < 50; i++) { ck_assert_double_eq_tol(x[i], e[i] / z, 1e-6); total += x[i]; }
    ck_assert_double_eq_tol(total, 1.0, 1e-5);
}
END_TEST

/* RoPE against the rotation written out per mode: NORMAL turns pairs
 * (2i, 2i+1), NEOX pairs (i, i + n_rot/2), by pos * base^(-2i/n_rot) / ff[i];
 * dims past n_rot are untouched. */
static void check_rope(int mode, int head_dim, int n_rot, const float *ff) {
    const int n_heads = 3, pos = 17;
    const float base = 10000.0f;
    float x[3 * 64], y[3 * 64], cs[64];
    for (int i = 0; i < n_heads * head_dim; i++) x[i] = y[i] = frand();
    g4_rope r;
    g4_err err;
    ck_assert_int_eq(g4_rope_init(&r, n_rot, mode, base, 1.0f, ff, &err), G4_OK);
    g4_rope_cache(&r, pos, cs);
    g4_rope_apply(&r, cs, y, n_heads, head_dim);
    for (int h = 0; h < n_heads; h++) {
        const float *xh = x + h * head_dim, *yh = y + h * head_dim;
        for (int i = 0; i < n_rot / 2; i++) {
            double theta = pos * pow(base, -2.0 * i / n_rot) / (ff ? ff[i] : 1.0);
            int a = mode == G4_ROPE_NEOX ? i : 2 * i, b = mode == G4_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
            ck_assert_double_eq_tol(yh[a], xh[a] * cos(theta) - xh[b] * sin(theta), 1e-4);
            ck_assert_double_eq_tol(yh[b], xh[a] * sin(theta) + xh[b] * cos(theta), 1e-4);
        }
        for (int d = n_rot; d < head_dim; d++) ck_assert_float_eq(yh[d], xh[d]);
    }
}

START_TEST(test_rope_formulas) {
    float ff[16];
    for (int i = 0; i < 16; i++) ff[i] = 1.0f + i * 0.5f;
    check_rope(G4_ROPE_NORMAL, 64, 64, NULL);
    check_rope(G4_ROPE_NORMAL, 64, 16, NULL);   /* partial rotation, as TinyStories (16 of 16) / Gemma */
    check_rope(G4_ROPE_NEOX, 64, 64, NULL);
    check_rope(G4_ROPE_NEOX, 48, 32, ff);       /* partial + frequency factors */
    g4_rope r;
    g4_err err;
    ck_assert_int_eq(g4_rope_init(&r, 7, G4_ROPE_NORMAL, 1e4f, 1.0f, NULL, &err), G4_ERR_INVALID);
}
END_TEST

/* threaded matmul == the scalar row kernel, for row counts that do and do not
 * divide by the 16-row split, one and several tokens; 1000 and 1003 rows are
 * large enough to be repacked, 1003 with a tail of 3 rows past the last
 * group of 8 (the plain kernel's, inside the last share) */
START_TEST(test_matmul_matches_rows) {
    const int cols = 96, rows_list[] = {5, 64, 100, 1000, 1003};
    g4_err err;
    g4_pool *pool = g4_pool_create(3, &err);
    for (size_t k = 0; k < sizeof rows_list / sizeof rows_list[0]; k++) {
        const int rows = rows_list[k], n = 3;
        float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * n * cols);
        float *y = malloc(sizeof(float) * n * rows), *ref = malloc(sizeof(float) * rows);
        void *xq = malloc((size_t)g4_matmul_scratch(cols, n));
        block_q8_0 *wq = malloc(sizeof(block_q8_0) * rows * cols / 32);
        for (int i = 0; i < rows * cols; i++) w[i] = frand();
        for (int i = 0; i < n * cols; i++) x[i] = frand();
        g4_quantize_row(G4_TYPE_Q8_0, w, wq, (int64_t)rows * cols);
        g4_tensor tf = { .ne = {cols, rows, 1, 1}, .type = G4_TYPE_F32, .data = w };
        g4_tensor tq = { .ne = {cols, rows, 1, 1}, .type = G4_TYPE_Q8_0, .data = wq };
        const g4_tensor *ts[2] = { &tf, &tq };
        for (int which = 0; which < 2; which++) {
            for (int nn = 1; nn <= n; nn += n - 1) {
                g4_matmul(pool, ts[which], x, cols, y, rows, nn, xq);
                for (int t = 0; t < nn; t++) {
                    g4_matvec_rows(ts[which]->type, ts[which]->data, cols, x + t * cols, ref, 0, rows);
                    for (int r = 0; r < rows; r++) ck_assert_float_eq_tol(y[t * rows + r], ref[r], 1e-4);
                }
            }
        }
        free(w); free(x); free(y); free(ref); free(xq); free(wq);
    }
    g4_pool_free(pool);
}
END_TEST

/* attention for one query over 3 cached positions, computed by hand */
START_TEST(test_attention_by_hand) {
    /* 2 query heads sharing 1 kv head (GQA), head_dim 2 */
    const float q[4] = {1, 0, 0, 1};
    const float k[6] = {1, 0, 0, 1, 1, 1};      /* positions 0..2 */
    const float v[6] = {1, 2, 3, 4, 5, 6};
    float out[4], att[64];
    g4_attn a = { .n_head = 2, .n_head_kv = 1, .head_dim_k = 2, .head_dim_v = 2, .scale = 0.5f };
    g4_attention(NULL, &a, q, 4, k, 2, v, 2, 2, 1, out, 4, att, 3);
    for (int h = 0; h < 2; h++) {
        double s[3], z = 0;
        for (int p = 0; p < 3; p++) { s[p] = exp(0.5 * (q[2 * h] * k[2 * p] + q[2 * h + 1] * k[2 * p + 1])); z += s[p]; }
        for (int d = 0; d < 2; d++) {
            double o = 0;
            for (int p = 0; p < 3; p++) o += s[p] / z * v[2 * p + d];
            ck_assert_double_eq_tol(out[2 * h + d], o, 1e-5);
        }
    }
    /* sliding window of 1: only the query's own position */
    a.window = 1;
    g4_attention(NULL, &a, q, 4, k, 2, v, 2, 2, 1, out, 4, att, 3);
    ck_assert_float_eq_tol(out[0], 5, 1e-6);
    ck_assert_float_eq_tol(out[3], 6, 1e-6);
}
END_TEST

/* ----------------------------------------------------------------- model */

static const int32_t ref260k[30] = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
                                    338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433};

START_TEST(test_stories260k_greedy_reference_ids) {
    char path[1024];
    g4_err err;
    g4_model_params mp = { 0, 2 };
    g4_model *m = g4_model_load(g4test_path(path, sizeof path, "models/stories260K.gguf"), &mp, &err);
    ck_assert_msg(m, "%s", err.msg);
    ck_assert_str_eq(g4_model_arch(m), "llama");
    ck_assert_int_eq(g4_model_n_vocab(m), 512);
    ck_assert_int_eq(g4_model_n_ctx(m), 2048);   /* the trained context, below the 4096 cap */
    float logits[512];
    int32_t tok = 1;
    for (int i = 0; i < 30; i++) {
        ck_assert_int_eq(g4_model_forward(m, &tok, 1, i, logits, 0, &err), G4_OK);
        tok = g4_argmax(logits, 512);
        ck_assert_int_eq(tok, ref260k[i]);
    }
    /* the same through the generation loop, prompt = BOS */
    g4_gen_params gp = { .max_tokens = 30, .temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 1 };
    int32_t bos = 1;
    g4_gen *g = g4_gen_create(m, &bos, 1, &gp, &err);
    ck_assert_ptr_nonnull(g);
    for (int i = 0; i < 30; i++) {
        ck_assert_int_eq(g4_gen_next(g, &tok, &err), G4_OK);
        ck_assert_int_eq(tok, ref260k[i]);
    }
    ck_assert_int_eq(g4_gen_next(g, &tok, &err), G4_OK);
    ck_assert_int_eq(tok, -1);
    g4_gen_stats st = g4_gen_get_stats(g);
    ck_assert_int_eq(st.finish, G4_FINISH_LENGTH);
    ck_assert_int_eq(st.n_generated, 30);
    ck_assert_int_eq(st.n_decode, 29);
    g4_gen_free(g);

    /* argument checks */
    tok = 512;
    ck_assert_int_eq(g4_model_forward(m, &tok, 1, 0, logits, 0, &err), G4_ERR_INVALID);
    tok = 1;
    ck_assert_int_eq(g4_model_forward(m, &tok, 1, 2048, logits, 0, &err), G4_ERR_LIMIT);
    g4_model_free(m);
}
END_TEST

/* a batched prefill gives the same last-token logits as feeding tokens one by one */
START_TEST(test_prefill_matches_one_by_one) {
    char path[1024];
    g4_err err;
    g4_model_params mp = { 256, 2 };
    g4_model *m = g4_model_load(g4test_path(path, sizeof path, "models/TinyStories-656K-Q8_0.gguf"), &mp, &err);
    ck_assert_msg(m, "%s", err.msg);
    const int n = 100;   /* more than one 64-token chunk */
    int32_t toks[100];
    for (int i = 0; i < n; i++) toks[i] = (i * 37 + 1) % 2048;
    float *all = malloc(sizeof(float) * 2048 * n), *one = malloc(sizeof(float) * 2048);
    ck_assert_int_eq(g4_model_forward(m, toks, n, 0, all, 1, &err), G4_OK);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(g4_model_forward(m, &toks[i], 1, i, one, 0, &err), G4_OK);
        if (i % 33 == 0 || i == n - 1)
            for (int v = 0; v < 2048; v++) ck_assert_float_eq_tol(all[(size_t)i * 2048 + v], one[v], 1e-3);
    }
    free(all);
    free(one);
    g4_model_free(m);
}
END_TEST

START_TEST(test_load_errors) {
    g4_err err;
    char path[1024];
    ck_assert_ptr_null(g4_model_load("/nonexistent/x.gguf", NULL, &err));
    ck_assert_int_eq(err.status, G4_ERR_IO);
    ck_assert_ptr_null(g4_model_load(g4test_path(path, sizeof path, "models/stories260K.bin"), NULL, &err));
    ck_assert_int_eq(err.status, G4_ERR_FORMAT);
    /* a vocab-only GGUF has an architecture (llama) but no tensors: the
     * first missing tensor is named */
    ck_assert_ptr_null(g4_model_load(g4test_path(path, sizeof path, "models/ggml-vocab-llama-spm.gguf"), NULL, &err));
    ck_assert_msg(strstr(err.msg, "token_embd.weight"), "%s", err.msg);
}
END_TEST

static Suite *model_suite(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_pool_sum_over_ranges);
    tcase_add_test(tc, test_pool_bad_size);
    tcase_add_test(tc, test_rmsnorm_formula);
    tcase_add_test(tc, test_softmax_formula);
    tcase_add_test(tc, test_rope_formulas);
    tcase_add_test(tc, test_matmul_matches_rows);
    tcase_add_test(tc, test_attention_by_hand);
    tcase_add_test(tc, test_stories260k_greedy_reference_ids);
    tcase_add_test(tc, test_prefill_matches_one_by_one);
    tcase_add_test(tc, test_load_errors);
    suite_add_tcase(s, tc);
    return s;
}

G4TEST_MAIN(model_suite)
