/* test_engine.c - the batching engine's per-request sampler chain, logprobs
 * and token masks (csrc/engine/engine.h), on stories260K (../shared/models).
 *
 * Reference: the single-sequence generation loop (csrc/model/generate.c,
 * g4_gen_*), which samples with the same g4_sample_ex chain; a request alone
 * in the engine runs the same forward pass, so greedy tokens are equal and
 * logprobs agree to rounding. Run under ASan/UBSan with leak checks by
 * `make test-asan-c`, which covers every exit path of a request's buffers
 * (finished, cancelled, still running when the engine is freed).
 */
#include <math.h>
#include <string.h>

#include "g4test.h"
#include "engine/engine.h"
#include "model/model.h"

static g4_model *load260k(void) {
    char path[1024];
    g4_err err;
    g4_model_params mp = { .n_ctx = 0, .n_threads = 1 };
    g4_model *m = g4_model_load(g4test_path(path, sizeof path, "models/stories260K.gguf"), &mp, &err);
    ck_assert_msg(m, "%s", err.msg);
    return m;
}

static g4_engine *engine2(g4_model *m) {
    g4_err err;
    const g4_engine_params ep = { .n_seq = 2, .n_batch = 0, .kv_bytes = 0, .queue_max = 4, .prefix_cache = 1 };
    g4_engine *e = g4_engine_create(m, &ep, &err);
    ck_assert_msg(e, "%s", err.msg);
    return e;
}

/* Step until request id yields an event; returns it. */
static g4_event next_event(g4_engine *e, int64_t id, g4_event *evs) {
    g4_err err;
    for (int k = 0; k < 64; k++) {
        int32_t n = 0;
        ck_assert_int_eq(g4_engine_step(e, evs, &n, &err), G4_OK);
        for (int32_t i = 0; i < n; i++)
            if (evs[i].id == id) return evs[i];
    }
    ck_abort_msg("request %lld gave no event", (long long)id);
    return evs[0];
}

START_TEST(test_penalties_bias_logprobs_match_the_generation_loop) {
    g4_model *m = load260k();
    g4_err err;
    const int32_t prompt[4] = {1, 403, 407, 261};
    const int32_t bias_ids[2] = {378, 286};
    const float bias_vals[2] = {-100.0f, 1.5f};
    g4_gen_params gp = { .max_tokens = 20, .temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 1,
                         .repeat_penalty = 1.4f, .repeat_last_n = 8, .presence_penalty = 0.5f,
                         .frequency_penalty = 0.25f, .bias_ids = bias_ids, .bias_vals = bias_vals, .n_bias = 2,
                         .n_logprobs = 3 };
    g4_gen *g = g4_gen_create(m, prompt, 4, &gp, &err);
    ck_assert_msg(g, "%s", err.msg);
    int32_t ref[20], ref_top[20][3];
    float ref_lp[20], ref_top_lp[20][3];
    for (int i = 0; i < 20; i++) {
        ck_assert_int_eq(g4_gen_next(g, &ref[i], &err), G4_OK);
        ck_assert_int_ge(ref[i], 0);
        const int32_t *ids;
        const float *lps;
        ck_assert_int_eq(g4_gen_logprobs(g, &ref_lp[i], &ids, &lps), 3);
        memcpy(ref_top[i], ids, sizeof ref_top[i]);
        memcpy(ref_top_lp[i], lps, sizeof ref_top_lp[i]);
    }
    g4_gen_free(g);

    g4_engine *e = engine2(m);
    g4_event *evs = malloc(sizeof(g4_event) * (size_t)g4_engine_max_events(e));
    g4_request_params rp = { .max_tokens = 20, .temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 1,
                             .repeat_penalty = 1.4f, .repeat_last_n = 8, .presence_penalty = 0.5f,
                             .frequency_penalty = 0.25f, .bias_ids = bias_ids, .bias_vals = bias_vals, .n_bias = 2,
                             .logprobs = 1, .top_logprobs = 3 };
    int32_t stack_ids[2] = {378, 286};
    rp.bias_ids = stack_ids;                    /* copied at submit: changing it later does nothing */
    const int64_t id = g4_engine_submit(e, prompt, 4, &rp, &err);
    ck_assert_msg(id > 0, "%s", err.msg);
    stack_ids[0] = stack_ids[1] = 0;
    /* a plain request beside it must not change it */
    const g4_request_params plain = { .max_tokens = 20, .temperature = 0.0f, .top_p = 1.0f };
    ck_assert_int_gt(g4_engine_submit(e, prompt, 4, &plain, &err), 0);
    int banned_seen = 0;
    for (int i = 0; i < 20; i++) {
        const g4_event ev = next_event(e, id, evs);
        ck_assert_int_eq(ev.token, ref[i]);
        ck_assert_int_eq(ev.n_top, 3);
        ck_assert_float_eq_tol(ev.logprob, ref_lp[i], 1e-4);
        for (int k = 0; k < 3; k++) {
            ck_assert_int_eq(ev.top_ids[k], ref_top[i][k]);
            ck_assert_float_eq_tol(ev.top_logprobs[k], ref_top_lp[i][k], 1e-4);
            banned_seen |= ev.top_ids[k] == 378;
        }
        ck_assert_int_eq(ev.finish, i == 19 ? G4_FINISH_LENGTH : G4_FINISH_NONE);
    }
    ck_assert(!banned_seen);
    g4_engine_free(e);                          /* the plain request may still run: freed too */
    free(evs);
    g4_model_free(m);
}
END_TEST

static void only(uint32_t *mask, int32_t words, int32_t tok) {
    memset(mask, 0, sizeof(uint32_t) * (size_t)words);
    mask[tok / 32] |= 1u << (tok % 32);
}

START_TEST(test_masks_force_tokens_and_pause_requests) {
    g4_model *m = load260k();
    g4_err err;
    g4_engine *e = engine2(m);
    g4_event *evs = malloc(sizeof(g4_event) * (size_t)g4_engine_max_events(e));
    const int32_t words = (g4_model_n_vocab(m) + 31) / 32, prompt[3] = {1, 403, 407};
    uint32_t mask[16];
    ck_assert_int_eq(words, 16);
    const g4_request_params rp = { .max_tokens = 3, .temperature = 2.0f, .top_p = 1.0f, .seed = 9,
                                   .constrained = 1, .logprobs = 1, .top_logprobs = 2,
                                   .draft_max = 4, .draft_ngram = 2 };   /* drafts: ignored when constrained */
    const int64_t id = g4_engine_submit(e, prompt, 3, &rp, &err);
    ck_assert_msg(id > 0, "%s", err.msg);
    int32_t n = -1;
    /* without its first mask only the prompt but its last token runs, then nothing */
    ck_assert_int_eq(g4_engine_step(e, evs, &n, &err), G4_OK);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(g4_engine_get_stats(e).tokens, 2);
    ck_assert_int_eq(g4_engine_step(e, evs, &n, &err), G4_OK);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(g4_engine_get_stats(e).steps, 1);
    const int32_t forced[3] = {300, 17, 421};
    for (int i = 0; i < 3; i++) {
        only(mask, words, forced[i]);
        ck_assert_int_eq(g4_engine_set_mask(e, id, mask, words, &err), G4_OK);
        const g4_event ev = next_event(e, id, evs);
        ck_assert_int_eq(ev.token, forced[i]);
        ck_assert_float_eq_tol(ev.logprob, 0.0f, 1e-6);   /* the only allowed token */
        ck_assert_int_eq(ev.n_top, 1);
        ck_assert_int_eq(ev.top_ids[0], forced[i]);
        ck_assert_int_eq(ev.finish, i == 2 ? G4_FINISH_LENGTH : G4_FINISH_NONE);
        ck_assert_int_eq(ev.stats.n_drafted, 0);
        if (i < 2) {                                       /* used up: the request waits */
            ck_assert_int_eq(g4_engine_step(e, evs, &n, &err), G4_OK);
            ck_assert_int_eq(n, 0);
            ck_assert_int_eq(g4_engine_get_stats(e).n_running, 1);
        }
    }
    ck_assert_int_eq(g4_engine_get_stats(e).n_running, 0);

    /* errors: nothing changes */
    const int64_t c = g4_engine_submit(e, prompt, 3, &rp, &err);
    const g4_request_params plain = { .max_tokens = 2, .top_p = 1.0f };
    const int64_t p = g4_engine_submit(e, prompt, 3, &plain, &err);
    ck_assert(c > 0 && p > 0);
    only(mask, words, 5);
    ck_assert_int_eq(g4_engine_set_mask(e, c, mask, words - 1, &err), G4_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "15 words, 16 are needed"), "%s", err.msg);
    ck_assert_int_eq(g4_engine_set_mask(e, c, mask, words + 1, &err), G4_ERR_INVALID);
    ck_assert_int_eq(g4_engine_set_mask(e, 12345, mask, words, &err), G4_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "no waiting or running request"), "%s", err.msg);
    ck_assert_int_eq(g4_engine_set_mask(e, p, mask, words, &err), G4_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "not submitted as constrained"), "%s", err.msg);
    memset(mask, 0, sizeof mask);
    ck_assert_int_eq(g4_engine_set_mask(e, c, mask, words, &err), G4_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "allows no token"), "%s", err.msg);
    g4_request_params bad = rp;
    bad.top_logprobs = G4_SAMPLE_MAX_TOP + 1;
    ck_assert_int_eq(g4_engine_submit(e, prompt, 3, &bad, &err), -1);
    ck_assert_int_eq(err.status, G4_ERR_INVALID);
    bad = rp;
    const int32_t far = 512;
    const float one = 1.0f;
    bad.bias_ids = &far; bad.bias_vals = &one; bad.n_bias = 1;
    ck_assert_int_eq(g4_engine_submit(e, prompt, 3, &bad, &err), -1);
    ck_assert_msg(strstr(err.msg, "token id 512 is outside"), "%s", err.msg);
    bad = rp;
    bad.repeat_last_n = -2;
    ck_assert_int_eq(g4_engine_submit(e, prompt, 3, &bad, &err), -1);
    ck_assert_int_eq(err.status, G4_ERR_INVALID);
    ck_assert_int_eq(g4_engine_get_stats(e).n_waiting, 2);
    /* a cancelled constrained request frees its mask; one left running is freed with the engine */
    ck_assert_int_eq(g4_engine_cancel(e, p), 1);
    g4_engine_free(e);
    free(evs);
    g4_model_free(m);
}
END_TEST

static Suite *engine_suite(void) {
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("sampling");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_penalties_bias_logprobs_match_the_generation_loop);
    tcase_add_test(tc, test_masks_force_tokens_and_pause_requests);
    suite_add_tcase(s, tc);
    return s;
}

G4TEST_MAIN(engine_suite)
