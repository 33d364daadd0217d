/* ops.c - numeric building blocks shared by every architecture file.
 *
 * Formulas follow ggml's CPU ops (ggml/src/ggml-cpu/ops.cpp: rms_norm,
 * soft_max, rope, swiglu) so results line up with llama.cpp; the matmul
 * quantizes the activations once and hands row ranges of repacked weights
 * to the vectorized kernels (quant.h: g4_matmul_rows_x8, g4_matmul_rows_vq).
 */
#include "ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../quant/quant.h"

/* ------------------------------------------------------------ elementwise */

void g4_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    const float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    if (w) for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
    else   for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale;
}

void g4_softmax(float *x, int64_t n) {
    if (n <= 0) return;
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) if (x[i] > mx) mx = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void g4_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void g4_geglu(float *out, const float *gate, const float *up, int64_t n) {
    /* GELU, tanh approximation (Hendrycks & Gimpel 2016, eq. in sec. 2) */
    const float c = 0.7978845608028654f;   /* sqrt(2/pi) */
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g))) * up[i];
    }
}

void g4_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void g4_get_row(const g4_tensor *t, int64_t row, float *dst) {
    const size_t rs = g4_row_size(t->type, t->ne[0]);
    g4_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)row * rs, dst, t->ne[0]);
}

/* ------------------------------------------------------------------- RoPE */

g4_status g4_rope_init(g4_rope *r, int n_rot, int mode, float freq_base, float freq_scale,
                       const float *freq_factors, g4_err *err) {
    if (n_rot <= 0 || n_rot % 2 || n_rot > G4_ROPE_MAX_DIMS)
        return g4_err_set(err, G4_ERR_INVALID, "rope: rotated dims %d must be even and in 2..%d",
                          n_rot, G4_ROPE_MAX_DIMS);
    if (mode != G4_ROPE_NORMAL && mode != G4_ROPE_NEOX)
        return g4_err_set(err, G4_ERR_INVALID, "rope: unknown mode %d", mode);
    if (!(freq_base > 0.0f) || !(freq_scale > 0.0f))
        return g4_err_set(err, G4_ERR_INVALID, "rope: freq_base %g and freq_scale %g must be > 0",
                          freq_base, freq_scale);
    r->n_rot = n_rot;
    r->mode = mode;
    for (int i = 0; i < n_rot / 2; i++) {
        /* base^(-2i/n_rot) in double: the same value HF computes as
         * 1 / base^(arange(0, dim, 2) / dim), ggml as repeated products. */
        double f = pow((double)freq_base, -2.0 * i / (double)n_rot) * freq_scale;
        if (freq_factors) f /= freq_factors[i];
        r->inv_freq[i] = (float)f;
    }
    return G4_OK;
}

void g4_rope_cache(const g4_rope *r, int64_t pos, float *cs) {
    for (int i = 0; i < r->n_rot / 2; i++) {
        const float theta = (float)pos * r->inv_freq[i];
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
    }
}

void g4_rope_apply(const g4_rope *r, const float *cs, float *x, int n_heads, int head_dim) {
    const int half = r->n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            /* NORMAL: pair (2i, 2i+1); NEOX: pair (i, i + n_rot/2) */
            const int i0 = r->mode == G4_ROPE_NEOX ? i : 2 * i;
            const int i1 = r->mode == G4_ROPE_NEOX ? i + half : 2 * i + 1;
            const float c = cs[2 * i], s = cs[2 * i + 1];
            const float x0 = xh[i0], x1 = xh[i1];
            xh[i0] = x0 * c - x1 * s;
            xh[i1] = x0 * s + x1 * c;
        }
    }
}

/* ------------------------------------------------------- threaded matmul */

/* Output rows per share are a multiple of 16: 64 bytes of float output, so
 * two threads never write the same cache line, and a multiple of the 8-row
 * groups of repacked weights. */
#define G4_ROW_ALIGN 16
/* Shares per thread: the pool deals shares to whichever thread is free, so
 * a few per thread even out cores of different speed or cores busy with
 * other processes, at one atomic claim (~50 ns) each. */
#define G4_SHARES_PER_THREAD 4
/* Multiply-adds below which a job runs on the calling thread only (~10 us of scalar work). */
#define G4_MIN_PARALLEL_WORK (32 * 1024)

/* ---- repacked weights, made the first time a matrix is used ----
 * The vectorized kernels are fastest on weights interleaved 8 rows at a
 * time (quant.h, g4_repack): that is a copy of the matrix in another order,
 * made once per model like llama.cpp's CPU_REPACK buffers. Matrices are
 * repacked on first use rather than at load so tensors never multiplied
 * (embedding tables only read row by row, Gemma's per-layer embeddings) are
 * not copied. The copies live in a hash table on the model's pool (freed
 * with it), keyed by the tensor's data and shape - not by the g4_tensor
 * address, which architectures may build on the stack for views (experts).
 * After repacking, the file pages of the original are dropped from this
 * process (MADV_DONTNEED on the read-only file mapping: they come back from
 * the page cache if read again, e.g. by an embedding lookup), so the
 * resident set holds one copy of each matrix, as with llama.cpp.
 * GEMMA4STACK_REPACK=0 turns it off. */

typedef struct packed_entry {
    const void *data;
    uint32_t type;
    int64_t ne0, ne1;
    void *packed;            /* NULL: not repackable (cached so we do not retry) */
} packed_entry;

/* Memory for repacked matrices: an anonymous mapping on 2 MiB boundaries,
 * asking for transparent huge pages. Decode streams every matrix once per
 * token; with 4 KiB pages that is a TLB miss every 4 KiB, and the hardware
 * prefetchers stop at each 4 KiB page boundary, so 2 MiB pages keep the
 * memory bus busier (THP in "madvise" mode, the common default, only backs
 * regions that ask). Falls back to whatever the kernel gives. */
#define G4_HUGE (2u << 20)

static void *big_alloc(size_t bytes, size_t *map_bytes) {
    const size_t n = (bytes + G4_HUGE - 1) / G4_HUGE * G4_HUGE, span = n + G4_HUGE;
    uint8_t *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uint8_t *a = (uint8_t *)(((uintptr_t)p + G4_HUGE - 1) & ~(uintptr_t)(G4_HUGE - 1));
    if (a > p) munmap(p, (size_t)(a - p));
    if (a + n < p + span) munmap(a + n, (size_t)(p + span - (a + n)));
#ifdef MADV_HUGEPAGE
    madvise(a, n, MADV_HUGEPAGE);
#endif
    *map_bytes = n;
    return a;
}

/* Matrices are carved one after another from chunks of at least
 * G4_ARENA_CHUNK bytes, so rounding to huge pages costs once per chunk,
 * not once per matrix (a 300 KiB attn_k would otherwise take 2 MiB).
 * G4_ARENA_CHUNKS of them: 256 GiB, more than any model this runs (with 64
 * chunks, as before, everything past 4 GiB of a 26B-A4B or 31B stayed
 * unrepacked and ran the plain kernels: 34% of a 26B-A4B decode profile in
 * gemm_q4_K, the plain Q4_K kernel). */
#define G4_ARENA_CHUNK ((size_t)64 << 20)
#define G4_ARENA_CHUNKS 4096

typedef struct arena_chunk { uint8_t *base; size_t size, used; } arena_chunk;

typedef struct packed_cache {
    packed_entry *e;
    size_t cap, n;           /* cap a power of two; open addressing */
    int enabled;
    arena_chunk chunk[G4_ARENA_CHUNKS];
    int n_chunks;
} packed_cache;

static void packed_cache_free(void *arg) {
    packed_cache *c = arg;
    if (!c) return;
    for (int i = 0; i < c->n_chunks; i++) munmap(c->chunk[i].base, c->chunk[i].size);
    free(c->e);
    free(c);
}

/* `bytes` from the cache's arena, 4 KiB aligned; NULL when out of memory */
static void *arena_alloc(packed_cache *c, size_t bytes) {
    bytes = (bytes + 4095) & ~(size_t)4095;
    arena_chunk *k = c->n_chunks ? &c->chunk[c->n_chunks - 1] : NULL;
    if (!k || k->size - k->used < bytes) {
        if (c->n_chunks == (int)(sizeof c->chunk / sizeof c->chunk[0])) return NULL;
        size_t size;
        uint8_t *base = big_alloc(bytes > G4_ARENA_CHUNK ? bytes : G4_ARENA_CHUNK, &size);
        if (!base) return NULL;
        k = &c->chunk[c->n_chunks++];
        *k = (arena_chunk){ base, size, 0 };
    }
    void *p = k->base + k->used;
    k->used += bytes;
    return p;
}

static size_t packed_slot(const packed_cache *c, const g4_tensor *W) {
    uintptr_t h = (uintptr_t)W->data;
    h ^= h >> 17;
    h *= 0x9e3779b97f4a7c15ull;
    for (size_t i = (size_t)(h >> 20) & (c->cap - 1);; i = (i + 1) & (c->cap - 1)) {
        const packed_entry *e = &c->e[i];
        if (!e->data || (e->data == W->data && e->type == W->type && e->ne0 == W->ne[0] && e->ne1 == W->ne[1]))
            return i;
    }
}

static int packed_grow(packed_cache *c) {
    const size_t cap = c->cap ? 2 * c->cap : 256;
    packed_entry *old = c->e;
    const size_t old_cap = c->cap;
    packed_entry *e = calloc(cap, sizeof *e);
    if (!e) return 0;
    c->e = e;
    c->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].data) {
            g4_tensor t = {0};
            t.data = old[i].data; t.type = old[i].type; t.ne[0] = old[i].ne0; t.ne[1] = old[i].ne1;
            c->e[packed_slot(c, &t)] = old[i];
        }
    free(old);
    return 1;
}

/* Whether [p, p + n) lies in a file-backed mapping of this process
 * (/proc/self/maps lines with an inode): only there is MADV_DONTNEED a
 * harmless page drop rather than zeroing of anonymous memory. */
static int in_file_mapping(const void *p, size_t n) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    char line[512];
    int found = 0;
    const uintptr_t a = (uintptr_t)p, b = a + n;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, inode;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu", &lo, &hi, perms, &inode) == 4)
            found = a >= lo && b <= hi && inode != 0 && perms[1] == '-';
    }
    fclose(f);
    return found;
}

static void drop_pages(const void *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + n) & ~(page - 1);
    if (b > a && in_file_mapping(p, n)) madvise((void *)a, b - a, MADV_DONTNEED);
}

typedef struct repack_job {
    const g4_tensor *W;
    void *dst;
    int64_t groups_per_share;
} repack_job;

static void repack_worker(void *arg, int ith, int nth) {
    const repack_job *j = arg;
    const int64_t groups = j->W->ne[1] / G4_REPACK_ROWS;
    const int64_t g0 = ith * j->groups_per_share;
    int64_t g1 = g0 + j->groups_per_share;
    if (g1 > groups) g1 = groups;
    if (g0 >= g1) return;
    const size_t gs = g4_row_size(j->W->type, j->W->ne[0]) * G4_REPACK_ROWS;
    /* the last share also takes the rows % 8 rows that are copied as they are */
    const int64_t rows = g1 == groups ? j->W->ne[1] - g0 * G4_REPACK_ROWS : (g1 - g0) * G4_REPACK_ROWS;
    g4_repack(j->W->type, (const uint8_t *)j->W->data + (size_t)g0 * gs, rows, j->W->ne[0],
              (uint8_t *)j->dst + (size_t)g0 * gs);
}

static packed_cache *get_cache(g4_pool *pool) {
    packed_cache *c = g4_pool_cache(pool);
    if (!c) {
        if (!(c = calloc(1, sizeof *c))) return NULL;
        const char *env = getenv("GEMMA4STACK_REPACK");
        c->enabled = !(env && !strcmp(env, "0"));
        g4_pool_set_cache(pool, c, packed_cache_free);
    }
    return c;
}

static int repackable(const g4_tensor *W) {
    return W->ne[2] == 1 && W->ne[3] == 1 && g4_repack_supported(W->type, W->ne[1], W->ne[0]) &&
           g4_repack_fast(W->type);
}

/* The cache entry of W: 1 and *found set when there is one, else a new
 * entry with memory for the copy (its `packed` NULL when memory ran out).
 * Returns 0 when no entry can be made. */
static int cache_entry(packed_cache *c, const g4_tensor *W, packed_entry **out, int *found) {
    *found = 0;
    if (c->cap) {
        packed_entry *e = &c->e[packed_slot(c, W)];
        if (e->data) { *out = e; *found = 1; return 1; }
    }
    if ((c->n + 1) * 2 > c->cap && !packed_grow(c)) return 0;
    const size_t bytes = g4_row_size(W->type, W->ne[0]) * (size_t)W->ne[1];
    packed_entry *e = &c->e[packed_slot(c, W)];
    *e = (packed_entry){ W->data, W->type, W->ne[0], W->ne[1], arena_alloc(c, bytes) };
    c->n++;
    *out = e;
    return 1;
}

/* The repacked copy of W, made now if this is its first use; NULL when W has
 * no repacked form (or memory ran out: the plain kernels still work). */
static const void *packed_weights(g4_pool *pool, const g4_tensor *W) {
    if (!pool || !repackable(W)) return NULL;
    packed_cache *c = get_cache(pool);
    if (!c || !c->enabled) return NULL;
    packed_entry *e;
    int found;
    if (!cache_entry(c, W, &e, &found)) return NULL;
    if (!found && e->packed) {
        const int64_t groups = W->ne[1] / G4_REPACK_ROWS;
        const int shares = g4_pool_size(pool) * G4_SHARES_PER_THREAD;
        repack_job j = { W, e->packed, (groups + shares - 1) / shares };
        g4_pool_run_n(pool, repack_worker, &j, shares);
        drop_pages(W->data, g4_row_size(W->type, W->ne[0]) * (size_t)W->ne[1]);
    }
    return e->packed;
}

/* ---- all of a model's matrices at once (g4_repack_all) ----
 * One pool job over every matrix: pieces of G4_REPACK_PIECE groups of 8
 * rows, claimed by whichever thread is free, so the threads meet once
 * rather than once per matrix and a small matrix does not leave a thread
 * idle. */
#define G4_REPACK_PIECE 256   /* groups: 2048 rows, ~2.3 MB of Q4_0 at 2048 columns */

typedef struct repack_piece { const g4_tensor *W; void *dst; int64_t g0, g1; } repack_piece;

static void repack_piece_worker(void *arg, int ith, int nth) {
    const repack_piece *p = (const repack_piece *)arg + ith;
    const size_t gs = g4_row_size(p->W->type, p->W->ne[0]) * G4_REPACK_ROWS;
    const int64_t groups = p->W->ne[1] / G4_REPACK_ROWS;
    const int64_t rows = p->g1 == groups ? p->W->ne[1] - p->g0 * G4_REPACK_ROWS : (p->g1 - p->g0) * G4_REPACK_ROWS;
    g4_repack(p->W->type, (const uint8_t *)p->W->data + (size_t)p->g0 * gs, rows, p->W->ne[0],
              (uint8_t *)p->dst + (size_t)p->g0 * gs);
}

int g4_repack_all(g4_pool *pool, const g4_tensor *W, int n) {
    if (!pool || n <= 0) return 0;
    packed_cache *c = get_cache(pool);
    if (!c || !c->enabled) return 0;
    int64_t n_pieces = 0;
    for (int i = 0; i < n; i++)
        if (repackable(&W[i])) n_pieces += (W[i].ne[1] / G4_REPACK_ROWS + G4_REPACK_PIECE - 1) / G4_REPACK_PIECE;
    repack_piece *pc = malloc(sizeof *pc * (size_t)(n_pieces ? n_pieces : 1));
    char *todo = calloc((size_t)n, 1);
    if (!pc || !todo) { free(pc); free(todo); return 0; }
    int64_t np = 0;
    int done = 0;
    for (int i = 0; i < n; i++) {
        packed_entry *e;
        int found;
        if (!repackable(&W[i]) || !cache_entry(c, &W[i], &e, &found) || found || !e->packed) continue;
        const int64_t groups = W[i].ne[1] / G4_REPACK_ROWS;
        for (int64_t g = 0; g < groups; g += G4_REPACK_PIECE)
            pc[np++] = (repack_piece){ &W[i], e->packed, g, g + G4_REPACK_PIECE < groups ? g + G4_REPACK_PIECE : groups };
        todo[i] = 1;
        done++;
    }
    /* g4_pool_run_n takes an int count of shares */
    for (int64_t p0 = 0; p0 < np; p0 += INT32_MAX)
        g4_pool_run_n(pool, repack_piece_worker, pc + p0, (int)(np - p0 < INT32_MAX ? np - p0 : INT32_MAX));
    for (int i = 0; i < n; i++)
        if (todo[i]) drop_pages(W[i].data, g4_row_size(W[i].type, W[i].ne[0]) * (size_t)W[i].ne[1]);
    free(pc);
    free(todo);
    return done;
}

/* ---- the matmul job ----
 * One pool job covers the rows of up to G4_MM_MAX matrices that read the
 * same input (attention's q, k and v; the FFN's gate and up): the input is
 * quantized once per activation format, and the threads meet once instead
 * of once per matrix. */

#define G4_MM_MAX 4

typedef struct mm_part {
    const g4_tensor *W;
    const void *packed;              /* repacked W, or NULL */
    const char *xq; size_t ldxq;     /* its activations (x itself for float weights) */
    float *y; int64_t ldy;
    int64_t rows_per_share, share0;  /* its shares are share0 .. share0 + ceil(rows / rows_per_share) - 1 */
} mm_part;

typedef struct matmul_job {
    mm_part part[G4_MM_MAX];
    int n_parts, n;
    g4_glu_fn glu;                   /* g4_matmul_glu: part 0 gate, part 1 up, same rows per share */
    /* quantization: one activation format per entry */
    const float *x; int64_t ldx;
    int n_fmt;
    struct { uint32_t wtype; int act; char *dst; size_t ld; } fmt[G4_MM_MAX];
} matmul_job;

static void quantize_worker(void *arg, int ith, int nth) {
    const matmul_job *j = arg;
    for (int f = 0; f < j->n_fmt; f++)
        for (int t = ith; t < j->n; t += nth) {
            const int64_t cols = j->part[0].W->ne[0];
            char *dst = j->fmt[f].dst + (size_t)t * j->fmt[f].ld;
            /* the activation row of repacked weights starts with the plain
               vec_dot_type row, so it serves both kernels */
            if (j->fmt[f].act) g4_quantize_act(j->fmt[f].wtype, j->x + t * j->ldx, cols, dst);
            else g4_quantize_row(g4_vec_dot_type(j->fmt[f].wtype), j->x + t * j->ldx, dst, cols);
        }
}

/* rows [r0, r1) of one part, all n tokens at once: the kernels tile over
   tokens and rows, so each weight block is read once per tile of tokens */
static void part_rows(const matmul_job *j, const mm_part *p, int64_t r0, int64_t r1) {
    const int64_t cols = p->W->ne[0];
    if (p->packed) g4_matmul_rows_x8(p->W->type, p->packed, cols, p->xq, p->ldxq, j->n, p->y, p->ldy, r0, r1);
    else g4_matmul_rows_vq(p->W->type, p->W->data, cols, p->xq, p->ldxq, j->n, p->y, p->ldy, r0, r1);
}

static void matmul_worker(void *arg, int ith, int nth) {
    const matmul_job *j = arg;
    int k = j->glu ? 0 : j->n_parts - 1;
    while (k > 0 && ith < j->part[k].share0) k--;
    const mm_part *p = &j->part[k];
    const int64_t rows = p->W->ne[1];
    const int64_t r0 = (ith - p->share0) * p->rows_per_share;
    int64_t r1 = r0 + p->rows_per_share;
    if (r1 > rows) r1 = rows;
    if (r0 >= r1) return;
    part_rows(j, p, r0, r1);
    if (j->glu) {   /* the same rows of up, then gate <- act(gate) * up while both are in cache */
        const mm_part *u = &j->part[1];
        part_rows(j, u, r0, r1);
        for (int t = 0; t < j->n; t++)
            j->glu(p->y + t * p->ldy + r0, p->y + t * p->ldy + r0, u->y + t * u->ldy + r0, r1 - r0);
    }
}

int64_t g4_matmul_scratch(int64_t cols, int n) {
    /* up to two activation formats (a Q8_0 and a Q8_K row, each at most 1.14
       bytes per element + 64 bytes of padding); at least 4 bytes per element */
    const int64_t row = cols * 3 + 128 > cols * 4 ? cols * 3 + 128 : cols * 4;
    return (int64_t)n * row;
}

static void matmul_run(g4_pool *pool, const g4_mm *mm, int count, g4_glu_fn glu, const float *x, int64_t ldx,
                       int n, void *xq);

void g4_matmul_n(g4_pool *pool, const g4_mm *mm, int count, const float *x, int64_t ldx, int n, void *xq) {
    if (count < 1) return;
    if (count > G4_MM_MAX) {
        g4_matmul_n(pool, mm, G4_MM_MAX, x, ldx, n, xq);
        g4_matmul_n(pool, mm + G4_MM_MAX, count - G4_MM_MAX, x, ldx, n, xq);
        return;
    }
    matmul_run(pool, mm, count, NULL, x, ldx, n, xq);
}

void g4_matmul_glu(g4_pool *pool, const g4_tensor *gate, const g4_tensor *up, g4_glu_fn glu,
                   const float *x, int64_t ldx, float *out, int64_t ldo, float *tmp, int64_t ldt,
                   int n, void *xq) {
    const g4_mm mm[2] = { { gate, out, ldo }, { up, tmp, ldt } };
    if (gate->ne[1] != up->ne[1] || gate->ne[0] != up->ne[0]) {   /* not a pair: separately */
        g4_matmul_n(pool, mm, 2, x, ldx, n, xq);
        for (int t = 0; t < n; t++) glu(out + t * ldo, out + t * ldo, tmp + t * ldt, gate->ne[1]);
        return;
    }
    matmul_run(pool, mm, 2, glu, x, ldx, n, xq);
}

static void matmul_run(g4_pool *pool, const g4_mm *mm, int count, g4_glu_fn glu, const float *x, int64_t ldx,
                       int n, void *xq) {
    const int64_t cols = mm[0].W->ne[0];
    int64_t work = 0;
    for (int k = 0; k < count; k++) work += (int64_t)n * cols * mm[k].W->ne[1];
    /* Handing a job to the workers costs about a microsecond even when they
     * are spinning, and far more when one has to be woken or is descheduled;
     * a small matrix (the 64x64 layers of stories260K) is done sooner alone. */
    const int small = work < G4_MIN_PARALLEL_WORK;
    matmul_job j = { .n_parts = count, .n = n, .x = x, .ldx = ldx, .glu = glu };
    char *next = xq;
    const int shares_wanted = g4_pool_size(pool) * G4_SHARES_PER_THREAD;
    int shares = 0;
    for (int k = 0; k < count; k++) {
        mm_part *p = &j.part[k];
        const g4_tensor *W = mm[k].W;
        p->W = W;
        p->packed = small ? NULL : packed_weights(pool, W);
        p->y = mm[k].y;
        p->ldy = mm[k].ldy;
        const uint32_t vdt = g4_vec_dot_type(W->type);
        if (vdt == G4_TYPE_F32) {
            p->xq = (const char *)x;
            p->ldxq = (size_t)ldx * sizeof(float);
        } else {
            /* one activation format per vec_dot_type; the x8 layout (with
               block sums) when any matrix of that format is repacked */
            int f = 0;
            while (f < j.n_fmt && g4_vec_dot_type(j.fmt[f].wtype) != vdt) f++;
            if (f == j.n_fmt) {
                j.fmt[f].wtype = W->type;
                j.fmt[f].act = 0;
                j.n_fmt++;
            }
            if (p->packed && !j.fmt[f].act) { j.fmt[f].wtype = W->type; j.fmt[f].act = 1; }
        }
        /* shares: a multiple of 16 rows each, about G4_SHARES_PER_THREAD per
           thread over all the matrices together, in proportion to their rows */
        int64_t per = small ? W->ne[1] : (W->ne[1] * count + shares_wanted - 1) / shares_wanted;
        if (glu) per = small ? W->ne[1] : (W->ne[1] + shares_wanted - 1) / shares_wanted;   /* a share does both */
        per = (per + G4_ROW_ALIGN - 1) / G4_ROW_ALIGN * G4_ROW_ALIGN;
        p->rows_per_share = per;
        p->share0 = glu ? 0 : shares;
        if (!glu || k == 0) shares += (int)((W->ne[1] + per - 1) / per);
    }
    for (int f = 0; f < j.n_fmt; f++) {
        j.fmt[f].dst = next;
        j.fmt[f].ld = j.fmt[f].act ? g4_act_row_size(j.fmt[f].wtype, cols)
                                   : (g4_row_size(g4_vec_dot_type(j.fmt[f].wtype), cols) + 63) / 64 * 64;
        next += j.fmt[f].ld * (size_t)n;
    }
    for (int k = 0; k < count; k++) {
        mm_part *p = &j.part[k];
        const uint32_t vdt = g4_vec_dot_type(p->W->type);
        for (int f = 0; f < j.n_fmt; f++)
            if (vdt != G4_TYPE_F32 && g4_vec_dot_type(j.fmt[f].wtype) == vdt) { p->xq = j.fmt[f].dst; p->ldxq = j.fmt[f].ld; }
    }
    if (j.n_fmt) {
        if (n >= 4 && !small) g4_pool_run(pool, quantize_worker, &j);
        else quantize_worker(&j, 0, 1);
    }
    if (small) for (int s = 0; s < shares; s++) matmul_worker(&j, s, shares);
    else g4_pool_run_n(pool, matmul_worker, &j, shares);
}

void g4_matmul(g4_pool *pool, const g4_tensor *W, const float *x, int64_t ldx,
               float *y, int64_t ldy, int n, void *xq) {
    const g4_mm mm = { W, y, ldy };
    g4_matmul_n(pool, &mm, 1, x, ldx, n, xq);
}

/* ------------------------------------------------------------- attention */

static int64_t att_stride(int64_t n_ctx) { return (n_ctx + 15) / 16 * 16; }

int64_t g4_attention_scratch(int64_t n_ctx, int n_threads) {
    return att_stride(n_ctx) * (n_threads > 0 ? n_threads : 1);
}

typedef struct attn_job {
    const g4_attn *a;
    const float *q; int64_t ldq;
    const void *k; int64_t ldk;      /* float or fp16 rows, strides in elements */
    const void *v; int64_t ldv;
    int f16;
    int64_t pos0; int n;
    float *out; int64_t ldo;
    float *att; int64_t n_ctx;
} attn_job;

static void attn_worker(void *arg, int ith, int nth) {
    const attn_job *j = arg;
    const g4_attn *a = j->a;
    const int group = a->n_head / a->n_head_kv;
    const int dk = a->head_dim_k, dv = a->head_dim_v;
    float *att = j->att + att_stride(j->n_ctx) * ith;
    const int64_t n_pairs = (int64_t)j->n * a->n_head;
    const float *kf = j->k, *vf = j->v;
    const uint16_t *kh = j->k, *vh = j->v;

    /* round-robin: later tokens attend to more keys, so dealing pairs in
     * turn keeps the threads' shares even under the causal mask. The scores
     * of a head over all its keys, and the weighted sum of their V rows, are
     * one call each to the quant kernels' vector helpers (F16 rows are
     * converted in registers; the output row stays in registers over keys). */
    for (int64_t idx = ith; idx < n_pairs; idx += nth) {
        const int t = (int)(idx / a->n_head), h = (int)(idx % a->n_head);
        const int kvh = h / group;
        const int64_t pos = j->pos0 + t;
        int64_t start = 0;
        if (a->window > 0 && pos - a->window + 1 > 0) start = pos - a->window + 1;
        const int64_t len = pos - start + 1;

        const float *qh = j->q + t * j->ldq + (int64_t)h * dk;
        const int64_t koff = start * j->ldk + (int64_t)kvh * dk, voff = start * j->ldv + (int64_t)kvh * dv;
        if (j->f16) g4_dot_f16_rows(len, dk, kh + koff, j->ldk, qh, att);
        else g4_dot_f32_rows(len, dk, kf + koff, j->ldk, qh, att);
        for (int64_t p = 0; p < len; p++) {
            float s = att[p] * a->scale;
            if (a->softcap > 0.0f) s = a->softcap * tanhf(s / a->softcap);
            att[p] = s;
        }
        g4_softmax(att, len);

        float *oh = j->out + t * j->ldo + (int64_t)h * dv;
        if (j->f16) g4_wsum_f16_rows(len, dv, vh + voff, j->ldv, att, oh);
        else g4_wsum_f32_rows(len, dv, vf + voff, j->ldv, att, oh);
    }
}

static void attention(g4_pool *pool, attn_job *j) {
    const g4_attn *a = j->a;
    /* work ~ query heads x keys x (k + v dims); see g4_matmul */
    const int64_t keys = a->window > 0 && a->window < j->pos0 + j->n ? a->window : j->pos0 + j->n;
    if ((int64_t)j->n * a->n_head * keys * (a->head_dim_k + a->head_dim_v) < G4_MIN_PARALLEL_WORK)
        attn_worker(j, 0, 1);
    else
        g4_pool_run(pool, attn_worker, j);
}

void g4_attention(g4_pool *pool, const g4_attn *a,
                  const float *q, int64_t ldq,
                  const float *k, int64_t ldk, const float *v, int64_t ldv,
                  int64_t pos0, int n, float *out, int64_t ldo,
                  float *att, int64_t n_ctx) {
    attn_job j = { a, q, ldq, k, ldk, v, ldv, 0, pos0, n, out, ldo, att, n_ctx };
    attention(pool, &j);
}

void g4_attention_f16(g4_pool *pool, const g4_attn *a,
                      const float *q, int64_t ldq,
                      const uint16_t *k, int64_t ldk, const uint16_t *v, int64_t ldv,
                      int64_t pos0, int n, float *out, int64_t ldo,
                      float *att, int64_t n_ctx) {
    attn_job j = { a, q, ldq, k, ldk, v, ldv, 1, pos0, n, out, ldo, att, n_ctx };
    attention(pool, &j);
}
