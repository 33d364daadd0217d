/* sample.c - next-token sampling (see sample.h).
 *
 * The chain is llama.cpp's default order (common/sampling.cpp): top-k, then
 * top-p on the probabilities at temperature 1, then temperature, softmax and
 * one draw. Nothing is sorted in full: top-k is a quickselect (O(n)), top-p
 * takes growing blocks of the best candidates by quickselect until they
 * hold the requested mass, and the draw is a linear pass over the kept
 * candidates in whatever order they are (the distribution does not depend
 * on it; the sequence for a seed is still reproducible).
 */
#include "sample.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

typedef struct cand { float logit; int32_t id; } cand;

/* ======================================================================
 * Random numbers: xorshift64* (Vigna, "An experimental exploration of
 * Marsaglia's xorshift generators, scrambled", 2016), seeded by splitmix64
 * so that any seed, 0 included, gives a non-zero, well-mixed state.
 * ====================================================================== */

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* uniform in [0, 1) from the top 53 bits */
static double rng_uniform(uint64_t *s) {
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

void g4_sampler_init(g4_sampler *s, float temperature, int32_t top_k, float top_p, uint64_t seed) {
    s->temperature = temperature;
    s->top_k = top_k;
    s->top_p = top_p;
    s->rng_state = splitmix64(seed);
    if (!s->rng_state) s->rng_state = 0x9e3779b97f4a7c15ull;
    s->scratch = NULL;
    s->scratch_n = 0;
}

void g4_sampler_free(g4_sampler *s) {
    free(s->scratch);
    s->scratch = NULL;
    s->scratch_n = 0;
}

/* ======================================================================
 * Greedy
 * ====================================================================== */

int32_t g4_argmax(const float *x, int32_t n) {
    int32_t best = -1;
    for (int32_t i = 0; i < n; i++) {
        if (isnan(x[i])) continue;
        if (best < 0 || x[i] > x[best]) best = i;   /* strict: lowest id wins ties */
    }
    return best < 0 && n > 0 ? 0 : best;
}

/* ======================================================================
 * Candidate ordering and selection
 * ====================================================================== */

/* total order: higher logit first, then lower id */
static int before(const cand *a, const cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *a, const void *b) {
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

static void swap(cand *a, cand *b) { cand t = *a; *a = *b; *b = t; }

/* Rearrange c[0..n) so that c[0..k) holds the k best (in any order):
 * Hoare quickselect with a median-of-three pivot, O(n) on average. */
static void select_top(cand *c, int32_t n, int32_t k) {
    if (k <= 0 || k >= n) return;
    int32_t lo = 0, hi = n - 1, nth = k - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (before(&c[mid], &c[lo])) swap(&c[mid], &c[lo]);
        if (before(&c[hi], &c[lo])) swap(&c[hi], &c[lo]);
        if (before(&c[hi], &c[mid])) swap(&c[hi], &c[mid]);
        cand pivot = c[mid];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (before(&c[i], &pivot)) i++;
            while (before(&pivot, &c[j])) j--;
            if (i <= j) { swap(&c[i], &c[j]); i++; j--; }
        }
        if (nth <= j) hi = j;
        else if (nth >= i) lo = i;
        else break;
    }
}

/* Top-p (Holtzman et al. 2019, "The Curious Case of Neural Text
 * Degeneration"): keep the smallest set of best candidates whose
 * probability at temperature 1 reaches p, at least one (llama.cpp
 * llama_sampler_top_p_apply with min_keep = 1). Blocks of the next-best
 * candidates (64, 256, 1024, ...) are taken whole while the mass stays
 * below p; the block where it crosses is halved by quickselect until a
 * few candidates remain, which are sorted. No full sort: O(n) expected.
 * Leaves the kept candidates in c[0..return). */
static double mass(const cand *c, int32_t from, int32_t to, float mx) {
    double s = 0.0;
    for (int32_t i = from; i < to; i++) s += expf(c[i].logit - mx);
    return s;
}

static int32_t top_p_keep(cand *c, int32_t m, float p) {
    float mx = c[0].logit;
    for (int32_t i = 1; i < m; i++) if (c[i].logit > mx) mx = c[i].logit;
    double target = (double)p * mass(c, 0, m, mx), cum = 0.0;
    int32_t done = 0, k = m < 64 ? m : 64;
    for (;;) {
        select_top(c + done, m - done, k - done);
        double block = mass(c, done, k, mx);
        if (cum + block >= target) break;
        cum += block;
        if (k == m) return m;   /* rounding: p ~ 1 */
        done = k;
        k = (int64_t)k * 4 < m ? k * 4 : m;
    }
    int32_t lo = done, hi = k;   /* the crossing candidate lies in c[lo..hi) */
    while (hi - lo > 16) {
        int32_t mid = lo + (hi - lo) / 2;
        select_top(c + lo, hi - lo, mid - lo);
        double half = mass(c, lo, mid, mx);
        if (cum + half >= target) hi = mid;
        else { cum += half; lo = mid; }
    }
    qsort(c + lo, (size_t)(hi - lo), sizeof *c, cmp_cand);
    for (int32_t i = lo; i < hi; i++) {
        cum += expf(c[i].logit - mx);
        if (cum >= target) return i + 1;
    }
    return hi;
}

/* ======================================================================
 * Draw
 * ====================================================================== */

/* softmax(logit / T) over c[0..m), shifted by the max for stability, and
 * one inverse-CDF draw. */
static int32_t draw(cand *c, int32_t m, float temperature, uint64_t *rng) {
    int32_t best = 0;
    for (int32_t i = 1; i < m; i++) if (before(&c[i], &c[best])) best = i;
    if (c[best].logit == -INFINITY) return c[best].id;   /* nothing has mass */
    float mx = c[best].logit, inv_t = 1.0f / temperature;
    double z = 0.0;
    for (int32_t i = 0; i < m; i++) z += expf((c[i].logit - mx) * inv_t);
    double u = rng_uniform(rng) * z, acc = 0.0;
    for (int32_t i = 0; i < m; i++) {
        acc += expf((c[i].logit - mx) * inv_t);
        if (acc > u) return c[i].id;
    }
    return c[best].id;   /* rounding left u at the very top */
}

int32_t g4_sample(g4_sampler *s, float *logits, int32_t n_vocab) {
    if (n_vocab <= 0) return -1;
    if (!(s->temperature > 0.0f)) return g4_argmax(logits, n_vocab);
    if (s->scratch_n < n_vocab) {
        cand *c = realloc(s->scratch, (size_t)n_vocab * sizeof *c);
        if (!c) return -1;
        s->scratch = c;
        s->scratch_n = n_vocab;
    }
    cand *c = s->scratch;
    for (int32_t i = 0; i < n_vocab; i++) {
        float l = logits[i];
        /* NaN never wins; +inf would make every shifted logit NaN */
        c[i].logit = isnan(l) ? -INFINITY : l > FLT_MAX ? FLT_MAX : l;
        c[i].id = i;
    }
    int32_t m = n_vocab;
    if (s->top_k > 0 && s->top_k < n_vocab) {
        select_top(c, n_vocab, s->top_k);
        m = s->top_k;
    }
    if (s->top_p < 1.0f) {
        int32_t best = 0;
        for (int32_t i = 1; i < m; i++) if (before(&c[i], &c[best])) best = i;
        if (c[best].logit == -INFINITY) return c[best].id;   /* nothing has mass */
        m = top_p_keep(c, m, s->top_p);
    }
    return draw(c, m, s->temperature, &s->rng_state);
}
