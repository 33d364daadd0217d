/* sample.c - next-token sampling (see sample.h).
 *
 * The chain is llama.cpp's order (common/sampling.cpp): mask, logit bias,
 * penalties, top-k, top-p and min-p on the probabilities at temperature 1,
 * then temperature, softmax and one draw. Nothing is sorted in full: top-k is a quickselect (O(n)), top-p
 * takes growing blocks of the best candidates by quickselect until they
 * hold the requested mass, and the draw is a linear pass over the kept
 * candidates in whatever order they are (the distribution does not depend
 * on it; the sequence for a seed is still reproducible).
 */
#include "sample.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    s->min_p = 0.0f;
    s->repeat_penalty = 1.0f;
    s->repeat_last_n = 0;
    s->presence_penalty = 0.0f;
    s->frequency_penalty = 0.0f;
    s->bias_ids = NULL;
    s->bias_vals = NULL;
    s->n_bias = 0;
    s->hist = NULL;
    s->hist_n = 0;
}

g4_sample_params g4_sample_params_default(void) {
    g4_sample_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 1.0f;
    p.top_p = 1.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;   /* llama.cpp's penalty_last_n default */
    return p;
}

int g4_sampler_init_ex(g4_sampler *s, const g4_sample_params *p) {
    g4_sampler_init(s, p->temperature, p->top_k, p->top_p, p->seed);
    s->min_p = p->min_p;
    s->repeat_penalty = p->repeat_penalty > 0.0f ? p->repeat_penalty : 1.0f;
    s->repeat_last_n = p->repeat_last_n;
    s->presence_penalty = p->presence_penalty;
    s->frequency_penalty = p->frequency_penalty;
    if (p->n_bias > 0 && p->bias_ids && p->bias_vals) {
        s->bias_ids = malloc(sizeof(int32_t) * (size_t)p->n_bias);
        s->bias_vals = malloc(sizeof(float) * (size_t)p->n_bias);
        if (!s->bias_ids || !s->bias_vals) {
            free(s->bias_ids); free(s->bias_vals);
            s->bias_ids = NULL; s->bias_vals = NULL;
            return -1;
        }
        memcpy(s->bias_ids, p->bias_ids, sizeof(int32_t) * (size_t)p->n_bias);
        memcpy(s->bias_vals, p->bias_vals, sizeof(float) * (size_t)p->n_bias);
        s->n_bias = p->n_bias;
    }
    return 0;
}

void g4_sampler_free(g4_sampler *s) {
    free(s->scratch);
    free(s->bias_ids);
    free(s->bias_vals);
    free(s->hist);
    s->scratch = NULL;
    s->scratch_n = 0;
    s->bias_ids = NULL;
    s->bias_vals = NULL;
    s->n_bias = 0;
    s->hist = NULL;
    s->hist_n = 0;
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

/* c[0..n_vocab) from logits, clamped: NaN never wins; +inf would make every
 * shifted logit NaN. Returns the scratch, or NULL when out of memory. */
static cand *candidates(g4_sampler *s, const float *logits, int32_t n_vocab) {
    if (s->scratch_n < n_vocab) {
        cand *c = realloc(s->scratch, (size_t)n_vocab * sizeof *c);
        if (!c) return NULL;
        s->scratch = c;
        s->scratch_n = n_vocab;
    }
    cand *c = s->scratch;
    for (int32_t i = 0; i < n_vocab; i++) {
        float l = logits[i];
        c[i].logit = isnan(l) ? -INFINITY : l > FLT_MAX ? FLT_MAX : l;
        c[i].id = i;
    }
    return c;
}

/* Min-p (llama_sampler_min_p_apply, min_keep 1): keep c[i] with
 * p_i >= min_p * p_max, at temperature 1: logit >= max + log(min_p).
 * Compacts the kept ones to the front; returns their count (>= 1). */
static int32_t min_p_keep(cand *c, int32_t m, float min_p) {
    int32_t best = 0;
    for (int32_t i = 1; i < m; i++) if (before(&c[i], &c[best])) best = i;
    const float cut = c[best].logit + logf(min_p);
    int32_t k = 0;
    for (int32_t i = 0; i < m; i++)
        if (c[i].logit >= cut) { cand t = c[i]; c[i] = c[k]; c[k++] = t; }
    return k > 0 ? k : 1;
}

/* top-k -> top-p -> min-p: the candidates a draw may pick, compacted to
 * c[0..return). 0 when nothing has mass (every logit -inf): *only is then
 * the one token the chain returns. */
static int32_t chain_keep(const g4_sampler *s, cand *c, int32_t n_vocab, int32_t *only) {
    int32_t m = n_vocab;
    if (s->top_k > 0 && s->top_k < n_vocab) {
        select_top(c, n_vocab, s->top_k);
        m = s->top_k;
    }
    if (s->top_p < 1.0f || s->min_p > 0.0f) {
        int32_t best = 0;
        for (int32_t i = 1; i < m; i++) if (before(&c[i], &c[best])) best = i;
        if (c[best].logit == -INFINITY) { *only = c[best].id; return 0; }   /* nothing has mass */
    }
    if (s->top_p < 1.0f) m = top_p_keep(c, m, s->top_p);
    if (s->min_p > 0.0f) m = min_p_keep(c, m, s->min_p);
    return m;
}

/* top-k -> top-p -> min-p -> temperature -> draw over the candidates */
static int32_t chain(g4_sampler *s, cand *c, int32_t n_vocab) {
    int32_t only = 0;
    const int32_t m = chain_keep(s, c, n_vocab, &only);
    return m ? draw(c, m, s->temperature, &s->rng_state) : only;
}

int32_t g4_sample(g4_sampler *s, float *logits, int32_t n_vocab) {
    if (n_vocab <= 0) return -1;
    if (!(s->temperature > 0.0f)) return g4_argmax(logits, n_vocab);
    cand *c = candidates(s, logits, n_vocab);
    if (!c) return -1;
    return chain(s, c, n_vocab);
}

/* ======================================================================
 * Mask, bias, penalties, log-probabilities
 * ====================================================================== */

int32_t g4_apply_mask(float *logits, int32_t n_vocab, const uint32_t *allowed) {
    const int32_t n_words = (int32_t)(((int64_t)n_vocab + 31) / 32);
    int32_t n_allowed = 0;
    for (int32_t w = 0; w < n_words; w++) {
        uint32_t bits = allowed[w];
        const int32_t base = w * 32, n = n_vocab - base < 32 ? n_vocab - base : 32;
        if (n < 32) bits &= (1u << n) - 1u;       /* ids past the vocabulary do not count */
        else if (bits == 0xffffffffu) { n_allowed += 32; continue; }
        n_allowed += __builtin_popcount(bits);
        for (int32_t b = 0; b < n; b++)
            if (!(bits >> b & 1u)) logits[base + b] = -INFINITY;
    }
    return n_allowed;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* llama_sampler_penalties_apply over the last repeat_last_n tokens of the
 * history: counted by sorting a copy of the window (the window is small;
 * no vocabulary-sized table). Returns -1 when out of memory. */
static int apply_penalties(g4_sampler *s, float *logits, int32_t n_vocab,
                           const int32_t *history, int32_t n_history) {
    if (s->repeat_last_n == 0 || n_history <= 0 || !history) return 0;
    if (s->repeat_penalty == 1.0f && s->presence_penalty == 0.0f && s->frequency_penalty == 0.0f) return 0;
    int32_t n = s->repeat_last_n < 0 || s->repeat_last_n > n_history ? n_history : s->repeat_last_n;
    if (s->hist_n < n) {
        int32_t *h = realloc(s->hist, sizeof(int32_t) * (size_t)n);
        if (!h) return -1;
        s->hist = h;
        s->hist_n = n;
    }
    memcpy(s->hist, history + (n_history - n), sizeof(int32_t) * (size_t)n);
    qsort(s->hist, (size_t)n, sizeof(int32_t), cmp_i32);
    for (int32_t i = 0; i < n;) {
        int32_t id = s->hist[i], j = i;
        while (j < n && s->hist[j] == id) j++;
        const int32_t count = j - i;
        i = j;
        if (id < 0 || id >= n_vocab) continue;
        float l = logits[id];
        l = l <= 0.0f ? l * s->repeat_penalty : l / s->repeat_penalty;
        l -= (float)count * s->frequency_penalty + s->presence_penalty;
        logits[id] = l;
    }
    return 0;
}

/* log-softmax of logits (mask/bias/penalties applied) at temperature 1: the
 * top n_top and the chosen one. Two passes over the vocabulary. */
static void logprobs(const float *logits, int32_t n_vocab, int32_t chosen, int32_t n_top,
                     int32_t *top_ids, float *top_lp, float *chosen_lp) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++) if (logits[i] > mx) mx = logits[i];
    if (mx > FLT_MAX) mx = FLT_MAX;
    for (int32_t k = 0; k < n_top; k++) { top_ids[k] = -1; top_lp[k] = -INFINITY; }
    double z = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        const float l = logits[i];
        if (!(l > -INFINITY)) continue;   /* masked, banned or NaN */
        z += exp((double)(l > FLT_MAX ? FLT_MAX : l) - mx);
        if (n_top > 0 && (top_ids[n_top - 1] < 0 || l > top_lp[n_top - 1])) {
            int32_t k = n_top - 1;          /* insertion into the sorted top list */
            while (k > 0 && (top_ids[k - 1] < 0 || l > top_lp[k - 1])) {
                top_ids[k] = top_ids[k - 1]; top_lp[k] = top_lp[k - 1]; k--;
            }
            top_ids[k] = i; top_lp[k] = l;
        }
    }
    const double lz = (double)mx + log(z > 0.0 ? z : 1.0);
    for (int32_t k = 0; k < n_top && top_ids[k] >= 0; k++) top_lp[k] = (float)((double)top_lp[k] - lz);
    if (chosen_lp) {
        const float l = chosen >= 0 && chosen < n_vocab ? logits[chosen] : -INFINITY;
        *chosen_lp = l > -INFINITY ? (float)((double)(l > FLT_MAX ? FLT_MAX : l) - lz) : -INFINITY;
    }
}

int32_t g4_sample_ex(g4_sampler *s, float *logits, int32_t n_vocab,
                     const int32_t *history, int32_t n_history, const uint32_t *allowed,
                     int32_t n_top, int32_t *top_ids, float *top_logprobs, float *chosen_logprob) {
    if (n_vocab <= 0) return -1;
    if (n_top < 0 || !top_ids || !top_logprobs) n_top = 0;
    if (n_top > G4_SAMPLE_MAX_TOP) n_top = G4_SAMPLE_MAX_TOP;
    if (allowed && g4_apply_mask(logits, n_vocab, allowed) == 0) return -2;
    for (int32_t i = 0; i < s->n_bias; i++) {
        const int32_t id = s->bias_ids[i];
        if (id >= 0 && id < n_vocab) logits[id] += s->bias_vals[i];
    }
    if (apply_penalties(s, logits, n_vocab, history, n_history) < 0) return -1;
    int32_t id;
    if (!(s->temperature > 0.0f)) {
        id = g4_argmax(logits, n_vocab);
        /* argmax falls back to 0 when everything is NaN/-inf: keep to the mask */
        if (allowed && !(allowed[id / 32] >> (id % 32) & 1u)) {
            for (id = 0; id < n_vocab && !(allowed[id / 32] >> (id % 32) & 1u); id++) {}
        }
    } else {
        cand *c = candidates(s, logits, n_vocab);
        if (!c) return -1;
        id = chain(s, c, n_vocab);
        if (allowed && !(allowed[id / 32] >> (id % 32) & 1u)) {
            /* every allowed token had -inf after bias: the draw fell back to the best id */
            for (id = 0; id < n_vocab && !(allowed[id / 32] >> (id % 32) & 1u); id++) {}
        }
    }
    if (n_top > 0 || chosen_logprob)
        logprobs(logits, n_vocab, id, n_top, top_ids, top_logprobs, chosen_logprob);
    return id;
}

/* ======================================================================
 * The distribution itself, for speculative decoding's rejection rule
 * ====================================================================== */

int g4_sample_probs(g4_sampler *s, const float *logits, int32_t n_vocab, float *probs) {
    if (n_vocab <= 0) return -1;
    memset(probs, 0, sizeof(float) * (size_t)n_vocab);
    if (!(s->temperature > 0.0f)) { probs[g4_argmax(logits, n_vocab)] = 1.0f; return 0; }
    cand *c = candidates(s, logits, n_vocab);
    if (!c) return -1;
    int32_t only = 0;
    const int32_t m = chain_keep(s, c, n_vocab, &only);
    if (!m) { probs[only] = 1.0f; return 0; }
    /* the same softmax(logit / T) over the kept candidates as draw() */
    int32_t best = 0;
    for (int32_t i = 1; i < m; i++) if (before(&c[i], &c[best])) best = i;
    if (c[best].logit == -INFINITY) { probs[c[best].id] = 1.0f; return 0; }
    const float mx = c[best].logit, inv_t = 1.0f / s->temperature;
    double z = 0.0;
    for (int32_t i = 0; i < m; i++) z += expf((c[i].logit - mx) * inv_t);
    for (int32_t i = 0; i < m; i++) probs[c[i].id] = (float)(expf((c[i].logit - mx) * inv_t) / z);
    return 0;
}

double g4_sampler_uniform(g4_sampler *s) { return rng_uniform(&s->rng_state); }

int32_t g4_sample_weights(g4_sampler *s, const float *w, int32_t n) {
    double z = 0.0;
    int32_t last = -1;
    for (int32_t i = 0; i < n; i++)
        if (w[i] > 0.0f) { z += w[i]; last = i; }
    if (last < 0) return -1;
    const double u = rng_uniform(&s->rng_state) * z;
    double acc = 0.0;
    for (int32_t i = 0; i < n; i++) {
        if (!(w[i] > 0.0f)) continue;
        acc += w[i];
        if (acc > u) return i;
    }
    return last;   /* rounding left u at the very top */
}
