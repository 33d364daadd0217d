/* test_kvcache.c - the paged KV cache of csrc/engine/kvcache.c.
 *
 * Oracles: ops.c's g4_attention over a plain whole-context cache (float or
 * fp16 rows) for paged attention, sliding window included; hand-counted
 * blocks for prefix sharing, reservations, eviction order, sliding-window
 * release and copy-on-write after a fork.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "g4test.h"
#include "common/threadpool.h"
#include "engine/kvcache.h"
#include "model/ops.h"
#include "quant/quant.h"

static float frand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return -1.0f + 2.0f * (float)((*s >> 8) & 0xFFFFFF) / (float)0xFFFFFF;
}

static int32_t used_blocks(const g4_kvcache *kv) {
    g4_kvc_stats s = g4_kvc_get_stats(kv);
    int32_t u = 0;
    for (int g = 0; g < s.n_groups; g++) u += s.blocks_used[g];
    return u;
}

/* Two sequences of L positions written in uneven chunks, interleaved; every
 * query's paged attention equals g4_attention over its own contiguous cache. */
static void check_attention(int type, int window) {
    enum { L = 150, NH = 4, NKV = 2, HD = 32, DIM = NKV * HD };
    g4_err err;
    g4_pool *pool = g4_pool_create(2, &err);
    ck_assert_ptr_nonnull(pool);
    const g4_kv_layer layer = { DIM, DIM, window };
    const g4_kvc_params p = { .n_seq = 2, .n_ctx = 256, .n_batch = 64, .type = type, .n_threads = 2 };
    g4_kvcache *kv = g4_kvc_create(&layer, 1, &p, &err);
    ck_assert_msg(kv != NULL, "%s", err.msg);
    const g4_attn a = { NH, NKV, HD, HD, 1.0f / sqrtf(HD), 0.0f, window };
    float *K = malloc(sizeof(float) * 2 * L * DIM), *V = malloc(sizeof(float) * 2 * L * DIM);
    float *Q = malloc(sizeof(float) * L * NH * HD), *got = malloc(sizeof(float) * L * NH * HD);
    float *want = malloc(sizeof(float) * L * NH * HD);
    uint16_t *Kh = malloc(sizeof(uint16_t) * L * DIM), *Vh = malloc(sizeof(uint16_t) * L * DIM);
    float *att = malloc(sizeof(float) * (size_t)g4_attention_scratch(256, 2));
    unsigned s = 7;
    for (int i = 0; i < 2 * L * DIM; i++) { K[i] = frand(&s); V[i] = frand(&s); }
    for (int i = 0; i < L * NH * HD; i++) Q[i] = frand(&s);
    int32_t tok[64] = { 0 }, cached;
    for (int q = 0; q < 2; q++) ck_assert_int_eq(g4_kvc_seq_begin(kv, q, tok, 1, L, 0, &cached, &err), 1);
    const int chunks[] = { 5, 40, 1, 1, 33, 64, 6 };    /* sums to 150 */
    int pos[2] = { 0, 0 };
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++)
        for (int q = 0; q < 2; q++) {
            const int n = chunks[c], p0 = pos[q];
            int32_t sq[64], ps[64];
            for (int t = 0; t < n; t++) { sq[t] = q; ps[t] = p0 + t; }
            ck_assert_int_eq(g4_kvc_seq_prepare(kv, q, p0, n, tok, &err), G4_OK);
            g4_kvc_store(kv, 0, n, sq, ps, K + ((size_t)q * L + p0) * DIM, DIM, V + ((size_t)q * L + p0) * DIM, DIM);
            g4_kvc_attention(pool, kv, 0, &a, n, sq, ps, Q + (size_t)p0 * NH * HD, NH * HD,
                             got + (size_t)p0 * NH * HD, NH * HD);
            g4_kvc_seq_commit(kv, q, p0 + n);
            /* oracle: the contiguous cache of this sequence */
            const float *Kq = K + (size_t)q * L * DIM, *Vq = V + (size_t)q * L * DIM;
            if (type == G4_KV_F16) {
                g4_fp32_to_fp16_row(Kq, Kh, (int64_t)(p0 + n) * DIM);
                g4_fp32_to_fp16_row(Vq, Vh, (int64_t)(p0 + n) * DIM);
                g4_attention_f16(pool, &a, Q + (size_t)p0 * NH * HD, NH * HD, Kh, DIM, Vh, DIM, p0, n,
                                 want + (size_t)p0 * NH * HD, NH * HD, att, 256);
            } else {
                g4_attention(pool, &a, Q + (size_t)p0 * NH * HD, NH * HD, Kq, DIM, Vq, DIM, p0, n,
                             want + (size_t)p0 * NH * HD, NH * HD, att, 256);
            }
            for (int i = 0; i < n * NH * HD; i++)
                ck_assert_msg(fabsf(got[(size_t)p0 * NH * HD + i] - want[(size_t)p0 * NH * HD + i]) < 1e-5f,
                              "type %d window %d seq %d chunk %zu value %d: %g vs %g", type, window, q, c, i,
                              got[(size_t)p0 * NH * HD + i], want[(size_t)p0 * NH * HD + i]);
            pos[q] += n;
        }
    if (window > 0) {   /* a sliding layer holds only the blocks of the last window */
        g4_kvc_stats st = g4_kvc_get_stats(kv);
        ck_assert_int_le(st.blocks_used[0], 2 * ((window + 64 - 1 + 31) / 32 + 1));
    }
    g4_kvc_seq_end(kv, 0);
    g4_kvc_seq_end(kv, 1);
    ck_assert_int_eq(used_blocks(kv), 0);
    g4_kvc_free(kv);
    g4_pool_free(pool);
    free(K); free(V); free(Q); free(got); free(want); free(Kh); free(Vh); free(att);
}

START_TEST(test_paged_attention_matches_contiguous) {
    check_attention(G4_KV_F32, 0);
    check_attention(G4_KV_F32, 40);
    check_attention(G4_KV_F16, 0);
    check_attention(G4_KV_F16, 8);
}
END_TEST

/* Write n positions of seq (contents: the token ids as K/V values). */
static void fill(g4_kvcache *kv, int seq, const int32_t *toks, int32_t p0, int32_t n) {
    g4_err err;
    ck_assert_int_eq(g4_kvc_seq_prepare(kv, seq, p0, n, toks + p0, &err), G4_OK);
    float row[32];
    for (int32_t t = 0; t < n; t++) {
        const int32_t sq = seq, ps = p0 + t;
        for (int i = 0; i < 32; i++) row[i] = (float)toks[p0 + t];
        g4_kvc_store(kv, 0, 1, &sq, &ps, row, 32, row, 32);
    }
    g4_kvc_seq_commit(kv, seq, p0 + n);
}

START_TEST(test_prefix_sharing_reservation_and_lru) {
    g4_err err;
    const g4_kv_layer layer = { 32, 32, 0 };
    /* 8 blocks: two sequences of 128 positions */
    const g4_kvc_params p = { .n_seq = 3, .n_ctx = 128, .n_batch = 32, .type = G4_KV_F32,
                              .bytes = 8ull * 32 * 2 * 32 * 4, .n_threads = 1 };
    g4_kvcache *kv = g4_kvc_create(&layer, 1, &p, &err);
    ck_assert_msg(kv != NULL, "%s", err.msg);
    int32_t a[128], b[128];
    for (int i = 0; i < 128; i++) { a[i] = 10 + i; b[i] = 500 + i; }
    int32_t cached;
    /* a sequence of 100 positions, then ended: its 3 full blocks stay keyed */
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, a, 100, 100, 1, &cached, &err), 1);
    ck_assert_int_eq(cached, 0);
    fill(kv, 0, a, 0, 100);
    g4_kvc_seq_end(kv, 0);
    g4_kvc_stats st = g4_kvc_get_stats(kv);
    ck_assert_int_eq(st.blocks_cached[0], 3);
    /* the same prompt plus more: 96 positions reused (never the last prompt token) */
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 1, a, 120, 128, 1, &cached, &err), 1);
    ck_assert_int_eq(cached, 96);
    /* a second user of the prefix shares the blocks read-only */
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 2, a, 97, 97, 1, &cached, &err), 1);
    ck_assert_int_eq(cached, 96);
    st = g4_kvc_get_stats(kv);
    ck_assert_int_eq(st.blocks_shared[0], 3);
    /* reservations: seq 1 promised 4 blocks in all, seq 2 promised 4: the pool of 8 is
     * fully promised, so a third sequence waits (nothing changes) */
    g4_kvc_seq_end(kv, 2);
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 2, b, 128, 128, 1, &cached, &err), 1);
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, b, 10, 40, 1, &cached, &err), 0);
    ck_assert_int_eq(g4_kvc_seq_len(kv, 0), 0);
    g4_kvc_seq_end(kv, 1);
    /* seq 1 ended: its shared prefix blocks are free again but keyed (cached) */
    st = g4_kvc_get_stats(kv);
    ck_assert_int_eq(st.blocks_cached[0], 3);
    /* seq 2 (prompt b) fills the 4 blocks nobody keyed; then a third prompt c needs 4 more:
     * free blocks go least recently used first, so a's (freed before b's) are evicted */
    fill(kv, 2, b, 0, 128);
    g4_kvc_seq_end(kv, 2);
    int32_t c[128];
    for (int i = 0; i < 128; i++) c[i] = 2000 + i;
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 1, c, 128, 128, 1, &cached, &err), 1);
    fill(kv, 1, c, 0, 128);
    g4_kvc_seq_end(kv, 1);
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, a, 100, 100, 1, &cached, &err), 1);
    ck_assert_int_eq(cached, 0);      /* evicted */
    g4_kvc_seq_end(kv, 0);
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, b, 128, 128, 1, &cached, &err), 1);
    ck_assert_int_eq(cached, 96);     /* more recent: still there */
    g4_kvc_seq_end(kv, 0);
    ck_assert_int_eq(used_blocks(kv), 0);
    g4_kvc_free(kv);
}
END_TEST

START_TEST(test_fork_and_rewind_copy_on_write) {
    g4_err err;
    const g4_kv_layer layer = { 32, 32, 0 };
    const g4_kvc_params p = { .n_seq = 2, .n_ctx = 128, .n_batch = 32, .type = G4_KV_F32, .n_threads = 1 };
    g4_kvcache *kv = g4_kvc_create(&layer, 1, &p, &err);
    ck_assert_ptr_nonnull(kv);
    int32_t a[128], b[128];
    for (int i = 0; i < 128; i++) { a[i] = i + 1; b[i] = i + 1 + (i >= 40 ? 1000 : 0); }
    int32_t cached;
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, a, 40, 64, 1, &cached, &err), 1);
    fill(kv, 0, a, 0, 40);                       /* one full block + 8 positions */
    ck_assert_int_eq(g4_kvc_seq_fork(kv, 0, 1, 64, &err), 1);
    ck_assert_int_eq(g4_kvc_seq_len(kv, 1), 40);
    fill(kv, 0, a, 40, 10);                      /* both write into the shared partial block */
    fill(kv, 1, b, 40, 10);
    /* attention of a query that only matches position 45 sees each sequence's own value */
    const g4_attn at = { 1, 1, 32, 32, 1.0f, 0.0f, 0 };
    float q[32], out[32];
    for (int i = 0; i < 32; i++) q[i] = 0.0f;
    const int32_t sq0 = 0, sq1 = 1, ps = 45;
    /* zero query: uniform weights, out = mean of values 0..45 */
    g4_kvc_attention(NULL, kv, 0, &at, 1, &sq0, &ps, q, 32, out, 32);
    double m0 = 0, m1 = 0;
    for (int i = 0; i <= 45; i++) { m0 += a[i]; m1 += b[i]; }
    ck_assert(fabs(out[0] - m0 / 46) < 1e-3);
    g4_kvc_attention(NULL, kv, 0, &at, 1, &sq1, &ps, q, 32, out, 32);
    ck_assert(fabs(out[0] - m1 / 46) < 1e-3);
    /* rewind seq 1 to 20 (speculative rollback) and rewrite: seq 0 is untouched */
    fill(kv, 1, a, 20, 30);
    g4_kvc_attention(NULL, kv, 0, &at, 1, &sq0, &ps, q, 32, out, 32);
    ck_assert(fabs(out[0] - m0 / 46) < 1e-3);
    g4_kvc_attention(NULL, kv, 0, &at, 1, &sq1, &ps, q, 32, out, 32);
    ck_assert(fabs(out[0] - m0 / 46) < 1e-3);
    g4_kvc_seq_end(kv, 0);
    g4_kvc_seq_end(kv, 1);
    ck_assert_int_eq(used_blocks(kv), 0);
    g4_kvc_free(kv);
}
END_TEST

/* window_extra (the Gemma 4 MTP assistant reads window + 1 keys before its
 * query): after a commit of P = 72 positions with a 40-position window, the
 * block of position P - 41 = 31 (block 0) is kept only with the extra 2, and
 * attention with window 41 at P - 1 reads it, equal to the contiguous oracle. */
START_TEST(test_window_extra_keeps_keys_before_the_window) {
    g4_err err;
    int32_t toks[128];
    for (int i = 0; i < 128; i++) toks[i] = i % 7 - 3;
    for (int extra = 0; extra <= 2; extra += 2) {
        const g4_kv_layer layer = { 32, 32, 40 };
        const g4_kvc_params p = { .n_seq = 1, .n_ctx = 128, .n_batch = 32, .type = G4_KV_F32, .n_threads = 1,
                                  .window_extra = extra };
        g4_kvcache *kv = g4_kvc_create(&layer, 1, &p, &err);
        ck_assert_msg(kv != NULL, "%s", err.msg);
        int32_t cached;
        ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, toks, 1, 128, 0, &cached, &err), 1);
        fill(kv, 0, toks, 0, 32);
        fill(kv, 0, toks, 32, 32);
        fill(kv, 0, toks, 64, 8);
        ck_assert_int_eq(used_blocks(kv), extra ? 3 : 2);
        if (extra) {
            float q[32], got[32], want[32], K[72 * 32];
            float *att = malloc(sizeof(float) * (size_t)g4_attention_scratch(128, 1));
            for (int i = 0; i < 32; i++) q[i] = 0.1f * (float)(i % 5) - 0.2f;
            for (int t = 0; t < 72; t++)
                for (int i = 0; i < 32; i++) K[t * 32 + i] = (float)toks[t];
            const g4_attn a = { 1, 1, 32, 32, 1.0f, 0.0f, 41 };
            const int32_t sq = 0, ps = 71;
            g4_kvc_attention(NULL, kv, 0, &a, 1, &sq, &ps, q, 32, got, 32);
            g4_attention(NULL, &a, q, 32, K, 32, K, 32, 71, 1, want, 32, att, 128);
            for (int i = 0; i < 32; i++) ck_assert_float_eq_tol(got[i], want[i], 1e-5f);
            free(att);
        }
        g4_kvc_seq_end(kv, 0);
        g4_kvc_free(kv);
    }
}
END_TEST

START_TEST(test_bad_arguments) {
    g4_err err;
    const g4_kv_layer l2[2] = { { 32, 32, 8 }, { 32, 32, 16 } };
    const g4_kvc_params p = { .n_seq = 1, .n_ctx = 64, .n_batch = 8, .type = G4_KV_F16, .n_threads = 1 };
    ck_assert_ptr_null(g4_kvc_create(l2, 2, &p, &err));             /* two windows */
    ck_assert_int_eq(err.status, G4_ERR_INVALID);
    const g4_kv_layer odd = { 48, 48, 0 };
    g4_kvc_params q = p;
    q.type = G4_KV_Q8_0;
    ck_assert_ptr_null(g4_kvc_create(&odd, 1, &q, &err));            /* q8_0 rows of 48 */
    q.type = G4_KV_F16;
    q.bytes = 100;
    ck_assert_ptr_null(g4_kvc_create(&odd, 1, &q, &err));            /* smaller than a sequence */
    ck_assert_int_eq(err.status, G4_ERR_LIMIT);
    g4_kvcache *kv = g4_kvc_create(&odd, 1, &p, &err);
    int32_t t[4] = { 1, 2, 3, 4 }, cached;
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, t, 4, 65, 1, &cached, &err), -1);   /* past n_ctx */
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, t, 4, 8, 1, &cached, &err), 1);
    ck_assert_int_eq(g4_kvc_seq_begin(kv, 0, t, 4, 8, 1, &cached, &err), -1);    /* slot busy */
    ck_assert_int_eq(g4_kvc_seq_prepare(kv, 0, 4, 8, t, &err), G4_ERR_LIMIT);    /* past n_max */
    g4_kvc_seq_end(kv, 0);
    g4_kvc_free(kv);
}
END_TEST

static Suite *kvcache_suite(void) {
    Suite *s = suite_create("kvcache");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_paged_attention_matches_contiguous);
    tcase_add_test(tc, test_prefix_sharing_reservation_and_lru);
    tcase_add_test(tc, test_fork_and_rewind_copy_on_write);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_window_extra_keeps_keys_before_the_window);
    suite_add_tcase(s, tc);
    return s;
}

G4TEST_MAIN(kvcache_suite)
