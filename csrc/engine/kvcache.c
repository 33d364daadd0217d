/* kvcache.c - the paged KV cache (see kvcache.h for the model).
 *
 * Per group: a pool of blocks with reference counts, a doubly linked free
 * list in least-recently-used order, and an open-addressing hash table from
 * a block's chained hash to the block (linear probing, backward-shift
 * deletion, so no tombstones). Each block also keeps its parent's hash and
 * its tokens, so a lookup is verified, not trusted to a 64-bit hash.
 */
#include "kvcache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/quant.h"

#define BS G4_KV_BLOCK

typedef struct kv_group {
    int window;                 /* 0: global */
    int32_t n_blocks;
    uint64_t block_bytes;       /* every layer of the group, K and V */
    int32_t *ref;               /* [n_blocks] */
    uint64_t *hash, *parent;    /* [n_blocks]; hash 0: not keyed */
    int32_t *toks;              /* [n_blocks][BS] tokens of a keyed block */
    int32_t *prev, *next;       /* free list links, -1 ends */
    int32_t head, tail, n_free;
    int32_t n_reserved;         /* promised to sequences, not yet taken */
    uint64_t *ht_key;           /* [ht_cap]; 0 empty */
    int32_t *ht_val;
    int32_t ht_cap;
} kv_group;

typedef struct kv_layer {
    int group, dim_k, dim_v;
    size_t row_k, row_v;        /* bytes per position */
    char *k, *v;                /* [n_blocks][BS] rows */
} kv_layer;

typedef struct kv_seq {
    int active, use_prefix;
    int32_t n_pos, n_max;
    int32_t *bt[G4_KV_MAX_GROUPS];      /* [max_blocks] block ids, -1 none */
    int32_t held[G4_KV_MAX_GROUPS];     /* blocks in bt */
    int32_t reserved[G4_KV_MAX_GROUPS]; /* promised, not taken */
    uint64_t *bhash;                    /* [max_blocks] chained hash of full blocks */
    int32_t n_keyed;                    /* full blocks whose hash is known */
    int32_t *toks;                      /* [n_ctx] */
} kv_seq;

struct g4_kvcache {
    int n_groups, type, n_layers, n_seq, keep_window, n_threads;
    int32_t n_ctx, n_batch, max_blocks;
    int group_of_window[2];             /* group index of global / sliding, -1 */
    kv_group g[G4_KV_MAX_GROUPS];
    kv_layer *layers;
    kv_seq *seqs;
    float *scratch;                     /* per thread: att_stride + 2 * max_dim + BS * max_dim floats */
    int64_t scratch_stride;
    uint64_t bytes, prefix_queried, prefix_hit;
};

/* ------------------------------------------------------------- sizes */

static size_t row_bytes(int type, int dim) {
    switch (type) {
    case G4_KV_F32: return (size_t)dim * 4;
    case G4_KV_F16: return (size_t)dim * 2;
    case G4_KV_Q8_0: return (size_t)dim / QK8_0 * sizeof(block_q8_0);
    }
    return 0;
}

static int32_t ceil_div(int64_t a, int64_t b) { return (int32_t)((a + b - 1) / b); }

/* Blocks one sequence can hold at once in a group. */
static int32_t seq_cap(int window, int32_t n_ctx, int32_t n_batch) {
    const int32_t all = ceil_div(n_ctx, BS);
    if (window <= 0) return all;
    const int32_t w = ceil_div((int64_t)window + (n_batch > 0 ? n_batch : 1) - 1, BS) + 1;
    return w < all ? w : all;
}

uint64_t g4_kvc_seq_bytes(const g4_kv_layer *layers, int n_layers, int32_t n_ctx, int32_t n_batch, int type) {
    uint64_t total = 0;
    for (int i = 0; i < n_layers; i++) {
        const uint64_t blk = (uint64_t)BS * (row_bytes(type, layers[i].dim_k) + row_bytes(type, layers[i].dim_v));
        total += blk * (uint64_t)seq_cap(layers[i].window, n_ctx, n_batch);
    }
    return total;
}

/* ----------------------------------------------------------- free list */

static void fl_unlink(kv_group *g, int32_t b) {
    if (g->prev[b] >= 0) g->next[g->prev[b]] = g->next[b]; else g->head = g->next[b];
    if (g->next[b] >= 0) g->prev[g->next[b]] = g->prev[b]; else g->tail = g->prev[b];
    g->prev[b] = g->next[b] = -1;
    g->n_free--;
}

static void fl_push(kv_group *g, int32_t b, int at_tail) {
    if (at_tail) {
        g->prev[b] = g->tail; g->next[b] = -1;
        if (g->tail >= 0) g->next[g->tail] = b; else g->head = b;
        g->tail = b;
    } else {
        g->next[b] = g->head; g->prev[b] = -1;
        if (g->head >= 0) g->prev[g->head] = b; else g->tail = b;
        g->head = b;
    }
    g->n_free++;
}

/* ---------------------------------------------------------- hash table */

static uint64_t mix64(uint64_t x) {    /* splitmix64's finaliser (Steele et al. 2014) */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t block_hash(uint64_t parent, const int32_t *tok) {
    uint64_t h = mix64(parent + 0x9e3779b97f4a7c15ULL);
    for (int i = 0; i < BS; i++) h = mix64(h ^ ((uint64_t)(uint32_t)tok[i] + 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1)));
    return h ? h : 1;   /* 0 marks "no key" */
}

static int32_t ht_find(const kv_group *g, uint64_t key) {
    const int32_t mask = g->ht_cap - 1;
    for (int32_t i = (int32_t)(key & (uint64_t)mask);; i = (i + 1) & mask) {
        if (g->ht_key[i] == 0) return -1;
        if (g->ht_key[i] == key) return g->ht_val[i];
    }
}

static void ht_insert(kv_group *g, uint64_t key, int32_t b) {
    const int32_t mask = g->ht_cap - 1;
    int32_t i = (int32_t)(key & (uint64_t)mask);
    while (g->ht_key[i] != 0) i = (i + 1) & mask;
    g->ht_key[i] = key;
    g->ht_val[i] = b;
}

static void ht_remove(kv_group *g, uint64_t key) {
    const int32_t mask = g->ht_cap - 1;
    int32_t i = (int32_t)(key & (uint64_t)mask);
    while (g->ht_key[i] != key) { if (g->ht_key[i] == 0) return; i = (i + 1) & mask; }
    /* backward-shift deletion (Knuth, TAOCP vol. 3, 6.4 Algorithm R) */
    for (int32_t j = i;;) {
        g->ht_key[i] = 0;
        for (;;) {
            j = (j + 1) & mask;
            if (g->ht_key[j] == 0) return;
            const int32_t home = (int32_t)(g->ht_key[j] & (uint64_t)mask);
            /* can the entry at j move to the hole at i? (its home is not in (i, j]) */
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) break;
        }
        g->ht_key[i] = g->ht_key[j];
        g->ht_val[i] = g->ht_val[j];
        i = j;
    }
}

static void unkey(kv_group *g, int32_t b) {
    if (g->hash[b]) { ht_remove(g, g->hash[b]); g->hash[b] = 0; }
}

/* --------------------------------------------------------- blocks */

/* Take a free block for a sequence (front of the list: least recently used). */
static int32_t take_free(kv_group *g) {
    const int32_t b = g->head;
    if (b < 0) return -1;
    fl_unlink(g, b);
    unkey(g, b);
    g->ref[b] = 1;
    return b;
}

static void release(kv_group *g, int32_t b) {
    if (--g->ref[b] == 0) fl_push(g, b, g->hash[b] != 0);   /* keyed: kept longest */
}

static void acquire(kv_group *g, int32_t b) {
    if (g->ref[b]++ == 0) fl_unlink(g, b);
}

/* Keyed block for block index i of a prompt whose previous block hashed to
 * parent, verified; -1 when absent. */
static int32_t lookup(const kv_group *g, uint64_t h, uint64_t parent, const int32_t *tok) {
    const int32_t b = ht_find(g, h);
    if (b < 0 || g->parent[b] != parent || memcmp(g->toks + (int64_t)b * BS, tok, sizeof(int32_t) * BS)) return -1;
    return b;
}

/* ---------------------------------------------------------- create/free */

static void free_group(kv_group *g) {
    free(g->ref); free(g->hash); free(g->parent); free(g->toks);
    free(g->prev); free(g->next); free(g->ht_key); free(g->ht_val);
}

void g4_kvc_free(g4_kvcache *kv) {
    if (!kv) return;
    for (int i = 0; i < kv->n_groups; i++) free_group(&kv->g[i]);
    if (kv->layers)
        for (int i = 0; i < kv->n_layers; i++) { free(kv->layers[i].k); free(kv->layers[i].v); }
    if (kv->seqs)
        for (int s = 0; s < kv->n_seq; s++) {
            for (int i = 0; i < G4_KV_MAX_GROUPS; i++) free(kv->seqs[s].bt[i]);
            free(kv->seqs[s].bhash);
            free(kv->seqs[s].toks);
        }
    free(kv->layers);
    free(kv->seqs);
    free(kv->scratch);
    free(kv);
}

static int64_t att_stride(int64_t n) { return (n + 15) / 16 * 16; }

g4_kvcache *g4_kvc_create(const g4_kv_layer *layers, int n_layers, const g4_kvc_params *p, g4_err *err) {
    if (n_layers <= 0 || p->n_seq <= 0 || p->n_ctx <= 0) {
        g4_err_set(err, G4_ERR_INVALID, "KV cache: need at least one layer, sequence and position");
        return NULL;
    }
    if (p->type != G4_KV_F16 && p->type != G4_KV_F32 && p->type != G4_KV_Q8_0) {
        g4_err_set(err, G4_ERR_INVALID, "KV cache: element type %d is not one of F32 (0), F16 (1), Q8_0 (8)", p->type);
        return NULL;
    }
    int window = 0, max_dim = 0;
    for (int i = 0; i < n_layers; i++) {
        const g4_kv_layer *l = &layers[i];
        if (l->dim_k <= 0 || l->dim_v <= 0) {
            g4_err_set(err, G4_ERR_INVALID, "KV cache: layer %d has no K/V dims", i);
            return NULL;
        }
        if (l->window > 0 && window > 0 && l->window != window) {
            g4_err_set(err, G4_ERR_INVALID, "KV cache: sliding windows of %d and %d positions in one model", window, l->window);
            return NULL;
        }
        if (l->window > 0) window = l->window;
        if (p->type == G4_KV_Q8_0 && (l->dim_k % QK8_0 || l->dim_v % QK8_0)) {
            g4_err_set(err, G4_ERR_INVALID, "KV cache: q8_0 needs K/V rows of a multiple of 32 values "
                       "(layer %d has %d/%d); use f16", i, l->dim_k, l->dim_v);
            return NULL;
        }
        if (l->dim_k > max_dim) max_dim = l->dim_k;
        if (l->dim_v > max_dim) max_dim = l->dim_v;
    }
    g4_kvcache *kv = calloc(1, sizeof *kv);
    if (!kv) { g4_err_set(err, G4_ERR_NOMEM, "KV cache: out of memory"); return NULL; }
    kv->type = p->type;
    kv->n_layers = n_layers;
    kv->n_seq = p->n_seq;
    kv->n_ctx = p->n_ctx;
    kv->n_batch = p->n_batch > 0 ? p->n_batch : 1;
    kv->keep_window = p->keep_window;
    kv->n_threads = p->n_threads > 0 ? p->n_threads : 1;
    kv->max_blocks = ceil_div(p->n_ctx, BS);
    kv->group_of_window[0] = kv->group_of_window[1] = -1;

    /* groups and per-block bytes */
    uint64_t blk_bytes[2] = { 0, 0 };
    for (int i = 0; i < n_layers; i++) {
        const int w = layers[i].window > 0;
        if (kv->group_of_window[w] < 0) {
            kv->group_of_window[w] = kv->n_groups;
            /* positions kept: the window, plus window_extra before it for a reader
             * that sees further back than the model (an MTP assistant) */
            kv->g[kv->n_groups].window = w ? window + (p->window_extra > 0 ? p->window_extra : 0) : 0;
            kv->n_groups++;
        }
        blk_bytes[kv->group_of_window[w]] += (uint64_t)BS * (row_bytes(p->type, layers[i].dim_k) +
                                                             row_bytes(p->type, layers[i].dim_v));
    }
    /* the pool: split the bytes between groups as one sequence needs them */
    const int32_t n_batch_eff = kv->keep_window ? kv->n_ctx : kv->n_batch;
    /* A sliding-window group also gets, per sequence, one window of blocks beyond what a
     * sequence holds at once: a finished prompt's window blocks then outlive the blocks
     * its own generation takes, so the next request with that prefix finds the window
     * before its first new position (prefix reuse needs it; without the slack, a
     * one-sequence pool evicted it as soon as the answer ran past the window's start). */
    uint64_t per_seq = 0, per_seq_pool = 0;
    int32_t cap[2], share_blocks[2];
    for (int gi = 0; gi < kv->n_groups; gi++) {
        cap[gi] = seq_cap(kv->g[gi].window, kv->n_ctx, n_batch_eff);
        share_blocks[gi] = cap[gi];
        if (kv->g[gi].window > 0 && !kv->keep_window) {
            share_blocks[gi] += ceil_div(kv->g[gi].window, BS);
            const int32_t all = ceil_div(kv->n_ctx, BS);
            if (share_blocks[gi] > all) share_blocks[gi] = all > cap[gi] ? all : cap[gi];
        }
        per_seq += blk_bytes[gi] * (uint64_t)cap[gi];
        per_seq_pool += blk_bytes[gi] * (uint64_t)share_blocks[gi];
    }
    const uint64_t bytes = p->bytes ? p->bytes : per_seq_pool * (uint64_t)p->n_seq;
    if (bytes < per_seq) {
        g4_err_set(err, G4_ERR_LIMIT, "KV cache: %llu bytes do not hold one sequence of %d positions (%llu bytes)",
                   (unsigned long long)bytes, p->n_ctx, (unsigned long long)per_seq);
        g4_kvc_free(kv);
        return NULL;
    }
    for (int gi = 0; gi < kv->n_groups; gi++) {
        kv_group *g = &kv->g[gi];
        const double share = (double)(blk_bytes[gi] * (uint64_t)share_blocks[gi]) / (double)per_seq_pool;
        g->n_blocks = (int32_t)((double)bytes * share / (double)blk_bytes[gi]);
        if (g->n_blocks < cap[gi]) g->n_blocks = cap[gi];
        g->block_bytes = blk_bytes[gi];
        g->ht_cap = 16;
        while (g->ht_cap < 2 * g->n_blocks) g->ht_cap *= 2;
        const size_t nb = (size_t)g->n_blocks;
        g->ref = calloc(nb, sizeof(int32_t));
        g->hash = calloc(nb, sizeof(uint64_t));
        g->parent = calloc(nb, sizeof(uint64_t));
        g->toks = calloc(nb * BS, sizeof(int32_t));
        g->prev = malloc(nb * sizeof(int32_t));
        g->next = malloc(nb * sizeof(int32_t));
        g->ht_key = calloc((size_t)g->ht_cap, sizeof(uint64_t));
        g->ht_val = calloc((size_t)g->ht_cap, sizeof(int32_t));
        if (!g->ref || !g->hash || !g->parent || !g->toks || !g->prev || !g->next || !g->ht_key || !g->ht_val) {
            g4_err_set(err, G4_ERR_NOMEM, "KV cache: out of memory for %d blocks", g->n_blocks);
            g4_kvc_free(kv);
            return NULL;
        }
        g->head = g->tail = -1;
        for (int32_t b = 0; b < g->n_blocks; b++) { g->prev[b] = g->next[b] = -1; fl_push(g, b, 1); }
        kv->bytes += (uint64_t)g->n_blocks * g->block_bytes;
    }
    /* storage: calloc of a large size maps zero pages lazily, so an unused
     * part of the pool costs address space, not memory */
    kv->layers = calloc((size_t)n_layers, sizeof *kv->layers);
    kv->seqs = calloc((size_t)p->n_seq, sizeof *kv->seqs);
    if (!kv->layers || !kv->seqs) goto nomem;
    for (int i = 0; i < n_layers; i++) {
        kv_layer *l = &kv->layers[i];
        l->group = kv->group_of_window[layers[i].window > 0];
        l->dim_k = layers[i].dim_k;
        l->dim_v = layers[i].dim_v;
        l->row_k = row_bytes(p->type, l->dim_k);
        l->row_v = row_bytes(p->type, l->dim_v);
        const size_t rows = (size_t)kv->g[l->group].n_blocks * BS;
        l->k = calloc(rows, l->row_k);
        l->v = calloc(rows, l->row_v);
        if (!l->k || !l->v) goto nomem;
    }
    for (int s = 0; s < p->n_seq; s++) {
        kv_seq *q = &kv->seqs[s];
        for (int gi = 0; gi < kv->n_groups; gi++) {
            if (!(q->bt[gi] = malloc(sizeof(int32_t) * (size_t)kv->max_blocks))) goto nomem;
            for (int32_t i = 0; i < kv->max_blocks; i++) q->bt[gi][i] = -1;
        }
        q->bhash = calloc((size_t)kv->max_blocks, sizeof(uint64_t));
        q->toks = calloc((size_t)kv->n_ctx, sizeof(int32_t));
        if (!q->bhash || !q->toks) goto nomem;
    }
    kv->scratch_stride = att_stride(kv->n_ctx) + 2 * (int64_t)max_dim + (int64_t)BS * max_dim + 16;
    kv->scratch = malloc(sizeof(float) * (size_t)(kv->scratch_stride * kv->n_threads));
    if (!kv->scratch) goto nomem;
    return kv;
nomem:
    g4_err_set(err, G4_ERR_NOMEM, "KV cache: cannot allocate %llu bytes", (unsigned long long)kv->bytes);
    g4_kvc_free(kv);
    return NULL;
}

/* ------------------------------------------------------------ sequences */

int32_t g4_kvc_seq_len(const g4_kvcache *kv, int seq) { return kv->seqs[seq].n_pos; }

/* Blocks a sequence reserves in group gi for n_max positions, given the
 * ones it already holds. */
static int32_t need_blocks(const g4_kvcache *kv, int gi, int32_t n_max, int32_t held) {
    const int32_t nb = kv->keep_window ? kv->n_ctx : kv->n_batch;
    int32_t cap = seq_cap(kv->g[gi].window, kv->n_ctx, nb);
    const int32_t all = ceil_div(n_max, BS);
    if (all < cap) cap = all;
    return cap > held ? cap - held : 0;
}

/* The prefix hit for a prompt: positions reusable (a multiple of BS, at most
 * n_prompt - 1) and, per group, the blocks it takes. hits[gi][i] = block id
 * or -1 for a sliding block outside the window of position n_hit. */
static int32_t find_prefix(const g4_kvcache *kv, const int32_t *prompt, int32_t n_prompt, int32_t *hits[2],
                           uint64_t *hashes) {
    const int gg = kv->group_of_window[0], sg = kv->group_of_window[1];
    int32_t n_full = (n_prompt - 1) / BS;
    uint64_t parent = 0;
    int32_t i = 0;
    for (; i < n_full; i++) {
        const int32_t *tok = prompt + (int64_t)i * BS;
        const uint64_t h = block_hash(parent, tok);
        if (gg >= 0) {
            const int32_t b = lookup(&kv->g[gg], h, parent, tok);
            if (b < 0) break;
            hits[gg][i] = b;
        }
        if (sg >= 0) hits[sg][i] = lookup(&kv->g[sg], h, parent, tok);
        hashes[i] = h;
        parent = h;
    }
    /* sliding layers need the blocks of the window before position n_hit */
    for (; i > 0 && sg >= 0; i--) {
        const int64_t n_hit = (int64_t)i * BS;
        const int64_t first = kv->g[sg].window > 0 && n_hit - kv->g[sg].window + 1 > 0 ? n_hit - kv->g[sg].window + 1 : 0;
        int ok = 1;
        for (int64_t b = first / BS; b < i; b++) ok &= hits[sg][b] >= 0;
        if (ok) {
            for (int64_t b = 0; b < first / BS; b++) hits[sg][b] = -1;
            break;
        }
    }
    return i;
}

int g4_kvc_seq_fits(const g4_kvcache *kv, const int32_t *prompt, int32_t n_prompt, int32_t n_max) {
    for (int gi = 0; gi < kv->n_groups; gi++)
        if (need_blocks(kv, gi, n_max, 0) > kv->g[gi].n_free - kv->g[gi].n_reserved) return 0;
    return 1;
}

int g4_kvc_seq_begin(g4_kvcache *kv, int seq, const int32_t *prompt, int32_t n_prompt, int32_t n_max,
                     int use_prefix, int32_t *n_cached, g4_err *err) {
    *n_cached = 0;
    if (seq < 0 || seq >= kv->n_seq || kv->seqs[seq].active) {
        g4_err_set(err, G4_ERR_INVALID, "KV cache: sequence slot %d is not free", seq);
        return -1;
    }
    if (n_prompt <= 0 || n_max < n_prompt || n_max > kv->n_ctx) {
        g4_err_set(err, G4_ERR_LIMIT, "KV cache: a sequence of %d prompt positions growing to %d does not fit "
                   "the context of %d", n_prompt, n_max, kv->n_ctx);
        return -1;
    }
    kv_seq *q = &kv->seqs[seq];
    int32_t n_hit_blocks = 0;
    if (use_prefix) {
        int32_t *hits[2] = { q->bt[0], q->bt[1] };
        n_hit_blocks = find_prefix(kv, prompt, n_prompt, hits, q->bhash);
    }
    /* what taking the hits and the reservation would cost each group */
    int32_t take[2] = { 0, 0 }, hold[2] = { 0, 0 }, resv[2] = { 0, 0 };
    for (int gi = 0; gi < kv->n_groups; gi++) {
        const kv_group *g = &kv->g[gi];
        for (int32_t i = 0; i < n_hit_blocks; i++) {
            const int32_t b = q->bt[gi][i];
            if (b < 0) continue;
            hold[gi]++;
            if (g->ref[b] == 0) take[gi]++;
        }
        resv[gi] = need_blocks(kv, gi, n_max, hold[gi]);
        if (take[gi] + resv[gi] > g->n_free - g->n_reserved) {
            for (int gj = 0; gj < kv->n_groups; gj++)
                for (int32_t i = 0; i < kv->max_blocks; i++) q->bt[gj][i] = -1;
            return 0;
        }
    }
    for (int gi = 0; gi < kv->n_groups; gi++) {
        kv_group *g = &kv->g[gi];
        for (int32_t i = 0; i < n_hit_blocks; i++)
            if (q->bt[gi][i] >= 0) acquire(g, q->bt[gi][i]);
        for (int32_t i = n_hit_blocks; i < kv->max_blocks; i++) q->bt[gi][i] = -1;
        q->held[gi] = hold[gi];
        q->reserved[gi] = resv[gi];
        g->n_reserved += resv[gi];
    }
    q->active = 1;
    q->use_prefix = use_prefix;
    q->n_max = n_max;
    q->n_pos = n_hit_blocks * BS;
    q->n_keyed = n_hit_blocks;
    memcpy(q->toks, prompt, sizeof(int32_t) * (size_t)q->n_pos);
    if (use_prefix) {
        kv->prefix_queried += (uint64_t)n_prompt;
        kv->prefix_hit += (uint64_t)q->n_pos;
    }
    *n_cached = q->n_pos;
    return 1;
}

/* A block for table slot i of group gi: from the sequence's reservation. */
static int32_t grab(g4_kvcache *kv, kv_seq *q, int gi) {
    kv_group *g = &kv->g[gi];
    const int32_t b = take_free(g);
    if (b < 0) return -1;
    if (q->reserved[gi] > 0) { q->reserved[gi]--; g->n_reserved--; }
    q->held[gi]++;
    return b;
}

static void drop(g4_kvcache *kv, kv_seq *q, int gi, int32_t i, int keep_promise) {
    kv_group *g = &kv->g[gi];
    const int32_t b = q->bt[gi][i];
    if (b < 0) return;
    release(g, b);
    q->bt[gi][i] = -1;
    q->held[gi]--;
    if (keep_promise) { q->reserved[gi]++; g->n_reserved++; }
}

static void copy_block(g4_kvcache *kv, int gi, int32_t dst, int32_t src) {
    for (int li = 0; li < kv->n_layers; li++) {
        kv_layer *l = &kv->layers[li];
        if (l->group != gi) continue;
        memcpy(l->k + (size_t)dst * BS * l->row_k, l->k + (size_t)src * BS * l->row_k, BS * l->row_k);
        memcpy(l->v + (size_t)dst * BS * l->row_v, l->v + (size_t)src * BS * l->row_v, BS * l->row_v);
    }
}

g4_status g4_kvc_seq_prepare(g4_kvcache *kv, int seq, int32_t pos0, int32_t n, const int32_t *tokens,
                             g4_err *err) {
    kv_seq *q = &kv->seqs[seq];
    if (!q->active || pos0 < 0 || pos0 > q->n_pos || n < 0 || (int64_t)pos0 + n > q->n_max)
        return g4_err_set(err, G4_ERR_LIMIT, "KV cache: positions %d..%d of sequence %d are outside 0..%d",
                          pos0, pos0 + n - 1, seq, q->n_max - 1);
    if (pos0 < q->n_pos) {             /* rewind: drop blocks past pos0, unkey the one it ends in */
        const int32_t first_drop = ceil_div(pos0, BS);
        for (int gi = 0; gi < kv->n_groups; gi++)
            for (int32_t i = first_drop; i < kv->max_blocks; i++) drop(kv, q, gi, i, 1);
        q->n_pos = pos0;
        if (q->n_keyed > pos0 / BS) q->n_keyed = pos0 / BS;
    }
    const int32_t b0 = pos0 / BS, b1 = n ? (pos0 + n - 1) / BS : b0 - 1;
    for (int gi = 0; gi < kv->n_groups; gi++) {
        kv_group *g = &kv->g[gi];
        for (int32_t i = b0; i <= b1; i++) {
            int32_t b = q->bt[gi][i];
            if (b < 0) {
                if ((b = grab(kv, q, gi)) < 0)
                    return g4_err_set(err, G4_ERR_NOMEM, "KV cache: pool exhausted (a reservation was broken)");
                q->bt[gi][i] = b;
            } else if (g->ref[b] > 1 || g->hash[b]) {
                /* about to write into a block others read or that is keyed by
                 * its old contents: copy-on-write (only the partly kept block
                 * after a rewind or fork gets here) */
                if (g->ref[b] > 1) {
                    const int32_t nb = grab(kv, q, gi);
                    if (nb < 0) return g4_err_set(err, G4_ERR_NOMEM, "KV cache: pool exhausted on copy-on-write");
                    copy_block(kv, gi, nb, b);
                    release(g, b);
                    q->held[gi]--;
                    q->bt[gi][i] = nb;
                } else {
                    unkey(g, b);
                }
            }
        }
    }
    if (n) memcpy(q->toks + pos0, tokens, sizeof(int32_t) * (size_t)n);
    return G4_OK;
}

void g4_kvc_seq_commit(g4_kvcache *kv, int seq, int32_t n_pos) {
    kv_seq *q = &kv->seqs[seq];
    q->n_pos = n_pos;
    /* key the newly full blocks (first come: a block whose key exists stays unkeyed) */
    for (int32_t i = q->n_keyed; i < n_pos / BS; i++) {
        const uint64_t parent = i ? q->bhash[i - 1] : 0;
        const int32_t *tok = q->toks + (int64_t)i * BS;
        const uint64_t h = block_hash(parent, tok);
        q->bhash[i] = h;
        if (!q->use_prefix) continue;
        for (int gi = 0; gi < kv->n_groups; gi++) {
            kv_group *g = &kv->g[gi];
            const int32_t b = q->bt[gi][i];
            if (b < 0 || g->hash[b] || ht_find(g, h) >= 0) continue;
            g->hash[b] = h;
            g->parent[b] = parent;
            memcpy(g->toks + (int64_t)b * BS, tok, sizeof(int32_t) * BS);
            ht_insert(g, h, b);
        }
    }
    q->n_keyed = n_pos / BS > q->n_keyed ? n_pos / BS : q->n_keyed;
    /* sliding layers: blocks wholly before the first key any later query sees */
    const int sg = kv->group_of_window[1];
    if (sg >= 0 && !kv->keep_window) {
        const int64_t first = (int64_t)n_pos - kv->g[sg].window + 1;
        for (int64_t i = 0; first > 0 && i < first / BS; i++) drop(kv, q, sg, (int32_t)i, 1);
    }
}

void g4_kvc_seq_end(g4_kvcache *kv, int seq) {
    kv_seq *q = &kv->seqs[seq];
    if (!q->active) return;
    /* release from the end, so the prompt's first blocks are the last to be
     * evicted (they are pushed to the free list's tail last) */
    for (int gi = 0; gi < kv->n_groups; gi++) {
        for (int32_t i = kv->max_blocks - 1; i >= 0; i--) drop(kv, q, gi, i, 0);
        kv->g[gi].n_reserved -= q->reserved[gi];
        q->reserved[gi] = 0;
        q->held[gi] = 0;
    }
    q->active = 0;
    q->n_pos = q->n_keyed = 0;
}

int g4_kvc_seq_fork(g4_kvcache *kv, int src, int dst, int32_t n_max, g4_err *err) {
    if (src == dst || src < 0 || dst < 0 || src >= kv->n_seq || dst >= kv->n_seq || !kv->seqs[src].active ||
        kv->seqs[dst].active) {
        g4_err_set(err, G4_ERR_INVALID, "KV cache: cannot fork sequence %d into %d", src, dst);
        return -1;
    }
    kv_seq *s = &kv->seqs[src], *d = &kv->seqs[dst];
    if (n_max < s->n_pos || n_max > kv->n_ctx) {
        g4_err_set(err, G4_ERR_LIMIT, "KV cache: a fork of %d positions cannot grow to %d", s->n_pos, n_max);
        return -1;
    }
    int32_t resv[2] = { 0, 0 };
    for (int gi = 0; gi < kv->n_groups; gi++) {
        resv[gi] = need_blocks(kv, gi, n_max, s->held[gi]) + (s->n_pos % BS ? 1 : 0);
        if (resv[gi] > kv->g[gi].n_free - kv->g[gi].n_reserved) return 0;
    }
    for (int gi = 0; gi < kv->n_groups; gi++) {
        kv_group *g = &kv->g[gi];
        for (int32_t i = 0; i < kv->max_blocks; i++) {
            d->bt[gi][i] = s->bt[gi][i];
            if (d->bt[gi][i] >= 0) acquire(g, d->bt[gi][i]);
        }
        d->held[gi] = s->held[gi];
        d->reserved[gi] = resv[gi];
        g->n_reserved += resv[gi];
    }
    d->active = 1;
    d->use_prefix = s->use_prefix;
    d->n_max = n_max;
    d->n_pos = s->n_pos;
    d->n_keyed = s->n_keyed;
    memcpy(d->bhash, s->bhash, sizeof(uint64_t) * (size_t)kv->max_blocks);
    memcpy(d->toks, s->toks, sizeof(int32_t) * (size_t)s->n_pos);
    return 1;
}

/* -------------------------------------------------------------- store */

static char *row_ptr(const g4_kvcache *kv, const kv_layer *l, char *base, size_t row, int seq, int32_t pos) {
    const int32_t b = kv->seqs[seq].bt[l->group][pos / BS];
    return base + ((size_t)b * BS + (size_t)(pos % BS)) * row;
}

static void put_row(int type, const float *x, void *dst, int dim) {
    if (type == G4_KV_F16) g4_fp32_to_fp16_row(x, dst, dim);
    else if (type == G4_KV_F32) memcpy(dst, x, sizeof(float) * (size_t)dim);
    else g4_quantize_row_q8_0(x, dst, dim);
}

void g4_kvc_store(g4_kvcache *kv, int li, int n, const int32_t *seq, const int32_t *pos,
                  const float *k, int64_t ldk, const float *v, int64_t ldv) {
    const kv_layer *l = &kv->layers[li];
    for (int t = 0; t < n; t++) {
        put_row(kv->type, k + t * ldk, row_ptr(kv, l, l->k, l->row_k, seq[t], pos[t]), l->dim_k);
        put_row(kv->type, v + t * ldv, row_ptr(kv, l, l->v, l->row_v, seq[t], pos[t]), l->dim_v);
    }
}

/* ---------------------------------------------------------- attention */

typedef struct att_job {
    g4_kvcache *kv;
    const kv_layer *l;
    const g4_attn *a;
    int n;
    const int32_t *seq, *pos;
    const float *q; int64_t ldq;
    float *out; int64_t ldo;
} att_job;

/* Rows [cnt][dim] of a Q8_0 block's head slice (elements off..off+dim of
 * each row of `full` elements) as floats in tmp, `dim` apart. A slice that
 * does not start and end on a Q8_0 block is cut from whole dequantized rows. */
static const float *dequant_rows(const char *base, size_t row, int64_t off, int cnt, int dim, int full, float *tmp) {
    for (int r = 0; r < cnt; r++) {
        const block_q8_0 *src = (const block_q8_0 *)(base + (size_t)r * row);
        if (off % QK8_0 == 0 && dim % QK8_0 == 0) {
            g4_dequantize_row_q8_0(src + off / QK8_0, tmp + (int64_t)r * dim, dim);
        } else {
            float whole[4096];
            for (int64_t c = 0; c < full; c += 4096 / QK8_0 * QK8_0) {
                const int64_t k = full - c < 4096 / QK8_0 * QK8_0 ? full - c : 4096 / QK8_0 * QK8_0;
                g4_dequantize_row_q8_0(src + c / QK8_0, whole, k);
                for (int64_t i = 0; i < k; i++)
                    if (c + i >= off && c + i < off + dim) tmp[(int64_t)r * dim + (c + i - off)] = whole[i];
            }
        }
    }
    return tmp;
}

static void att_worker(void *arg, int ith, int nth) {
    const att_job *j = arg;
    g4_kvcache *kv = j->kv;
    const kv_layer *l = j->l;
    const g4_attn *a = j->a;
    const int group = a->n_head / a->n_head_kv;
    const int dk = a->head_dim_k, dv = a->head_dim_v;
    float *att = kv->scratch + kv->scratch_stride * ith;
    float *acc = att + att_stride(kv->n_ctx);
    float *tmp = acc + (dk > dv ? dk : dv);
    float *deq = tmp + (dk > dv ? dk : dv);
    const int64_t n_pairs = (int64_t)j->n * a->n_head;
    const int type = kv->type;

    for (int64_t idx = ith; idx < n_pairs; idx += nth) {
        const int t = (int)(idx / a->n_head), h = (int)(idx % a->n_head);
        const int kvh = h / group;
        const int32_t pos = j->pos[t];
        const int32_t *bt = kv->seqs[j->seq[t]].bt[l->group];
        int32_t start = 0;
        if (a->window > 0 && pos - a->window + 1 > 0) start = pos - a->window + 1;
        const int64_t len = (int64_t)pos - start + 1;
        const float *qh = j->q + t * j->ldq + (int64_t)h * dk;
        const int64_t koff = (int64_t)kvh * dk, voff = (int64_t)kvh * dv;

        /* scores, one call per block run */
        for (int32_t p = start; p <= pos;) {
            const int32_t off = p % BS, cnt = BS - off < pos - p + 1 ? BS - off : pos - p + 1;
            const char *kb = l->k + ((size_t)bt[p / BS] * BS + (size_t)off) * l->row_k;
            if (type == G4_KV_F16)
                g4_dot_f16_rows(cnt, dk, (const g4_fp16 *)kb + koff, l->dim_k, qh, att + (p - start));
            else if (type == G4_KV_F32)
                g4_dot_f32_rows(cnt, dk, (const float *)kb + koff, l->dim_k, qh, att + (p - start));
            else
                g4_dot_f32_rows(cnt, dk, dequant_rows(kb, l->row_k, koff, cnt, dk, l->dim_k, deq), dk, qh, att + (p - start));
            p += cnt;
        }
        for (int64_t i = 0; i < len; i++) {
            float s = att[i] * a->scale;
            if (a->softcap > 0.0f) s = a->softcap * tanhf(s / a->softcap);
            att[i] = s;
        }
        g4_softmax(att, len);

        /* weighted V sum, one call per block run, accumulated */
        float *oh = j->out + t * j->ldo + (int64_t)h * dv;
        int first = 1;
        for (int32_t p = start; p <= pos;) {
            const int32_t off = p % BS, cnt = BS - off < pos - p + 1 ? BS - off : pos - p + 1;
            const char *vb = l->v + ((size_t)bt[p / BS] * BS + (size_t)off) * l->row_v;
            float *dst = first ? oh : tmp;
            if (type == G4_KV_F16)
                g4_wsum_f16_rows(cnt, dv, (const g4_fp16 *)vb + voff, l->dim_v, att + (p - start), dst);
            else if (type == G4_KV_F32)
                g4_wsum_f32_rows(cnt, dv, (const float *)vb + voff, l->dim_v, att + (p - start), dst);
            else
                g4_wsum_f32_rows(cnt, dv, dequant_rows(vb, l->row_v, voff, cnt, dv, l->dim_v, deq), dv, att + (p - start), dst);
            if (!first) for (int i = 0; i < dv; i++) oh[i] += tmp[i];
            first = 0;
            p += cnt;
        }
    }
    (void)acc;
}

/* below this many multiply-adds the pool's hand-off costs more than it saves */
#define KVC_MIN_PARALLEL (32 * 1024)

void g4_kvc_attention(g4_pool *pool, g4_kvcache *kv, int li, const g4_attn *a, int n,
                      const int32_t *seq, const int32_t *pos, const float *q, int64_t ldq,
                      float *out, int64_t ldo) {
    att_job j = { kv, &kv->layers[li], a, n, seq, pos, q, ldq, out, ldo };
    int64_t work = 0;
    for (int t = 0; t < n; t++) {
        const int64_t keys = a->window > 0 && a->window < pos[t] + 1 ? a->window : pos[t] + 1;
        work += keys * a->n_head * (a->head_dim_k + a->head_dim_v);
    }
    if (work < KVC_MIN_PARALLEL || !pool || g4_pool_size(pool) > kv->n_threads) att_worker(&j, 0, 1);
    else g4_pool_run(pool, att_worker, &j);
}

/* -------------------------------------------------------------- stats */

g4_kvc_stats g4_kvc_get_stats(const g4_kvcache *kv) {
    g4_kvc_stats s;
    memset(&s, 0, sizeof s);
    s.n_groups = kv->n_groups;
    s.bytes = kv->bytes;
    s.type = kv->type;
    s.prefix_queried = kv->prefix_queried;
    s.prefix_hit = kv->prefix_hit;
    for (int gi = 0; gi < kv->n_groups; gi++) {
        const kv_group *g = &kv->g[gi];
        s.blocks_total[gi] = g->n_blocks;
        s.blocks_reserved[gi] = g->n_reserved;
        s.block_bytes[gi] = g->block_bytes;
        for (int32_t b = 0; b < g->n_blocks; b++) {
            if (g->ref[b] > 0) s.blocks_used[gi]++;
            if (g->ref[b] > 1) s.blocks_shared[gi]++;
            if (g->ref[b] == 0 && g->hash[b]) s.blocks_cached[gi]++;
        }
    }
    return s;
}
