/* gguf.c - GGUF v2/v3 reader over a read-only mmap (see gguf.h).
 *
 * Sections: the reader state, bounded little-endian reads, caps, the name
 * index, metadata (key/value) parsing, tensor infos, open/close, getters and
 * array access.
 *
 * Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 type, value },
 *   n_tensors x { string name, u32 n_dims, i64 ne[n_dims], u32 type, u64 offset },
 *   padding to general.alignment, tensor data.
 * where string = u64 len + bytes, array = u32 elem type + u64 count + elems.
 *
 * Only the headers are read at open time; tensor data stays on disk until
 * someone touches it. Each count, length and offset is checked against what
 * is left of the file before it is used, with overflow-checked 64-bit
 * arithmetic, so no accessor can step outside the mapping afterwards.
 * The checks follow llama.cpp ggml/src/gguf.cpp gguf_init_from_file_impl,
 * and add a few (nested arrays, positive dims, caps naming their env var).
 */
#define _GNU_SOURCE
#include "gguf.h"
#include "../quant/quant.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian GGUF files by direct loads; port the rd_* helpers first"
#endif

/* ---------------------------------------------------------------------------
 * The reader state
 * ------------------------------------------------------------------------- */

typedef struct name_index {        /* open addressing; slot holds item index + 1, 0 = empty */
    uint64_t *slots;
    uint64_t mask;
} name_index;

struct g4_gguf {
    char *path;
    const uint8_t *map;
    uint64_t size;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    g4_gguf_kv *kv;
    name_index kv_index;
    uint64_t n_tensors;
    g4_tensor *tensors;
    name_index tensor_index;
    /* A split model (see g4_gguf_open): this is shard 0 and owns the others;
       tensors/tensor_index then cover every shard. n_shards = 1 otherwise. */
    uint32_t n_shards;
    g4_gguf **shards;          /* [n_shards], shards[0] == this; NULL when not split */
};

typedef struct caps {
    uint64_t max_tensors, max_kv, max_array, max_string, max_meta;
} caps;

/* A cursor over the mapping; every read goes through need(). */
typedef struct cursor {
    const uint8_t *base;
    uint64_t size, pos;
    const char *path;
    const caps *caps;
    g4_err *err;
} cursor;

/* ---------------------------------------------------------------------------
 * Bounded little-endian reads
 * ------------------------------------------------------------------------- */

static g4_status need(cursor *c, uint64_t n, const char *what) {
    if (n > c->size - c->pos)
        return g4_err_set(c->err, G4_ERR_FORMAT,
                          "%s: truncated: %s needs %" PRIu64 " bytes at offset %" PRIu64
                          " but the file ends at %" PRIu64,
                          c->path, what, n, c->pos, c->size);
    return G4_OK;
}

static inline uint32_t ld_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static g4_status rd_u32(cursor *c, uint32_t *v, const char *what) {
    g4_status st = need(c, 4, what);
    if (st) return st;
    *v = ld_u32(c->base + c->pos);
    c->pos += 4;
    return G4_OK;
}

static g4_status rd_u64(cursor *c, uint64_t *v, const char *what) {
    g4_status st = need(c, 8, what);
    if (st) return st;
    *v = ld_u64(c->base + c->pos);
    c->pos += 8;
    return G4_OK;
}

/* A string: u64 length then bytes (not NUL-terminated). */
static g4_status rd_str(cursor *c, g4_str *s, const char *what) {
    uint64_t len;
    g4_status st = rd_u64(c, &len, what);
    if (st) return st;
    if (len > c->size - c->pos)
        return g4_err_set(c->err, G4_ERR_FORMAT,
                          "%s: truncated: %s has length %" PRIu64 " at offset %" PRIu64
                          " but only %" PRIu64 " bytes remain (string without end)",
                          c->path, what, len, c->pos - 8, c->size - c->pos);
    if (len > c->caps->max_string)
        return g4_err_set(c->err, G4_ERR_LIMIT,
                          "%s: %s length %" PRIu64 " exceeds the cap of %" PRIu64
                          " bytes (raise it with " G4_GGUF_MAX_STRING_ENV "=<n>)",
                          c->path, what, len, c->caps->max_string);
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return G4_OK;
}

/* ---------------------------------------------------------------------------
 * Caps, from the environment (see gguf.h for names and defaults)
 * ------------------------------------------------------------------------- */

static g4_status cap_env(const char *name, uint64_t dflt, uint64_t *out, g4_err *err) {
    const char *s = getenv(name);
    *out = dflt;
    if (!s || !*s) return G4_OK;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || v == 0 || s[0] == '-')
        return g4_err_set(err, G4_ERR_INVALID, "%s='%s' is not a positive integer", name, s);
    *out = v;
    return G4_OK;
}

static g4_status read_caps(caps *cp, g4_err *err) {
    g4_status st;
    if ((st = cap_env(G4_GGUF_MAX_TENSORS_ENV, 1u << 18, &cp->max_tensors, err)) ||
        (st = cap_env(G4_GGUF_MAX_KV_ENV, 1u << 16, &cp->max_kv, err)) ||
        (st = cap_env(G4_GGUF_MAX_ARRAY_ENV, 1u << 24, &cp->max_array, err)) ||
        (st = cap_env(G4_GGUF_MAX_STRING_ENV, 1u << 26, &cp->max_string, err)) ||
        (st = cap_env(G4_GGUF_MAX_META_ENV, 1u << 30, &cp->max_meta, err)))
        return st;
    return G4_OK;
}

/* ---------------------------------------------------------------------------
 * The name index: FNV-1a hash, linear probing. Rejects duplicates on insert.
 * ------------------------------------------------------------------------- */

static uint64_t fnv1a(const char *p, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < n; i++) { h ^= (uint8_t)p[i]; h *= 0x100000001b3ull; }
    return h;
}

static int build_index(name_index *ix, uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n) cap <<= 1;   /* n is capped, so this cannot overflow */
    ix->slots = calloc(cap, sizeof *ix->slots);
    ix->mask = cap - 1;
    return ix->slots != NULL;
}

static void free_index(name_index *ix) { free(ix->slots); ix->slots = NULL; }

static int str_eq_n(g4_str a, const char *p, uint64_t n) {
    return a.len == n && (n == 0 || memcmp(a.ptr, p, n) == 0);
}

typedef g4_str (*name_of_fn)(const g4_gguf *g, uint64_t i);

/* Insert item `idx` named s; returns 0, or the existing item's index + 1
   when the name is already present (nothing inserted). */
static uint64_t index_insert(name_index *ix, const g4_gguf *g, name_of_fn name_of, g4_str s, uint64_t idx) {
    for (uint64_t h = fnv1a(s.ptr, s.len) & ix->mask;; h = (h + 1) & ix->mask) {
        uint64_t e = ix->slots[h];
        if (!e) { ix->slots[h] = idx + 1; return 0; }
        if (str_eq_n(name_of(g, e - 1), s.ptr, s.len)) return e;
    }
}

static uint64_t index_find(const name_index *ix, const g4_gguf *g, name_of_fn name_of, const char *s) {
    if (!ix->slots) return 0;
    uint64_t n = strlen(s);
    for (uint64_t h = fnv1a(s, n) & ix->mask;; h = (h + 1) & ix->mask) {
        uint64_t e = ix->slots[h];
        if (!e || str_eq_n(name_of(g, e - 1), s, n)) return e;
    }
}

static g4_str kv_key_of(const g4_gguf *g, uint64_t i) { return g->kv[i].key; }
static g4_str tensor_name_of(const g4_gguf *g, uint64_t i) { return g->tensors[i].name; }

/* ---------------------------------------------------------------------------
 * Metadata: key/value pairs
 * ------------------------------------------------------------------------- */

static const char *VTYPE_NAMES[] = {
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL",
    "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
};
#define N_VTYPES 13

const char *g4_gguf_vtype_name(uint32_t t) { return t < N_VTYPES ? VTYPE_NAMES[t] : "?"; }

/* Bytes of a fixed-size value; 0 for STRING and ARRAY. */
static uint64_t vtype_size(uint32_t t) {
    switch (t) {
    case G4_GGUF_UINT8: case G4_GGUF_INT8: case G4_GGUF_BOOL: return 1;
    case G4_GGUF_UINT16: case G4_GGUF_INT16: return 2;
    case G4_GGUF_UINT32: case G4_GGUF_INT32: case G4_GGUF_FLOAT32: return 4;
    case G4_GGUF_UINT64: case G4_GGUF_INT64: case G4_GGUF_FLOAT64: return 8;
    }
    return 0;
}

/* Smallest encoding of one element, for plausibility checks of counts. */
static uint64_t vtype_min_size(uint32_t t) {
    return t == G4_GGUF_STRING ? 8 : t == G4_GGUF_ARRAY ? 12 : vtype_size(t);
}

/* Validate the value of `type` at the cursor and step over it. `key` names
   the pair for messages; depth counts array nesting. */
static g4_status skip_value(cursor *c, uint32_t type, const char *key, int depth) {
    if (type >= N_VTYPES)
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: key '%s': unknown value type %" PRIu32,
                          c->path, key, type);
    if (type == G4_GGUF_STRING) {
        g4_str s;
        return rd_str(c, &s, "a string value");
    }
    if (type != G4_GGUF_ARRAY) {
        g4_status st = need(c, vtype_size(type), "a value");
        if (st) return st;
        c->pos += vtype_size(type);
        return G4_OK;
    }
    if (depth >= G4_GGUF_MAX_DEPTH)
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: key '%s': arrays nested deeper than %d",
                          c->path, key, G4_GGUF_MAX_DEPTH);
    uint32_t et;
    uint64_t n;
    g4_status st;
    if ((st = rd_u32(c, &et, "an array element type")) || (st = rd_u64(c, &n, "an array length")))
        return st;
    if (et >= N_VTYPES)
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: key '%s': unknown array element type %" PRIu32,
                          c->path, key, et);
    /* Every element takes at least vtype_min_size bytes: a length that cannot
       fit in the rest of the file is corrupt, before it is large. */
    if (n > (c->size - c->pos) / vtype_min_size(et))
        return g4_err_set(c->err, G4_ERR_FORMAT,
                          "%s: truncated: key '%s': array of %" PRIu64 " %s needs more than the %"
                          PRIu64 " bytes left (array length past end of file)",
                          c->path, key, n, g4_gguf_vtype_name(et), c->size - c->pos);
    if (n > c->caps->max_array)
        return g4_err_set(c->err, G4_ERR_LIMIT,
                          "%s: key '%s': array length %" PRIu64 " exceeds the cap of %" PRIu64
                          " elements (raise it with " G4_GGUF_MAX_ARRAY_ENV "=<n>)",
                          c->path, key, n, c->caps->max_array);
    if (et != G4_GGUF_STRING && et != G4_GGUF_ARRAY) {
        c->pos += n * vtype_size(et);   /* checked above: n * size <= bytes left */
        return G4_OK;
    }
    for (uint64_t i = 0; i < n; i++)
        if ((st = skip_value(c, et, key, depth + 1))) return st;
    return G4_OK;
}

/* A key as a C string for messages (truncated, non-printables replaced). */
static const char *key_cstr(g4_str k, char *buf, size_t cap) {
    size_t n = k.len < cap - 1 ? (size_t)k.len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)k.ptr[i];
        buf[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    buf[n] = '\0';
    return buf;
}

static g4_status parse_kvs(g4_gguf *g, cursor *c) {
    const uint64_t start = c->pos;
    char kbuf[128];
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    if (!g->kv || !build_index(&g->kv_index, g->n_kv))
        return g4_err_set(c->err, G4_ERR_NOMEM, "%s: out of memory for %" PRIu64 " keys", c->path, g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        g4_gguf_kv *kv = &g->kv[i];
        uint32_t type;
        g4_status st;
        char what[64];
        snprintf(what, sizeof what, "key %" PRIu64, i);
        if ((st = rd_str(c, &kv->key, what))) return st;
        const char *key = key_cstr(kv->key, kbuf, sizeof kbuf);
        if ((st = rd_u32(c, &type, "a value type"))) return st;
        uint64_t dup = index_insert(&g->kv_index, g, kv_key_of, kv->key, i);
        if (dup)
            return g4_err_set(c->err, G4_ERR_FORMAT, "%s: duplicate key '%s' (pairs %" PRIu64 " and %" PRIu64 ")",
                              c->path, key, dup - 1, i);
        kv->type = (g4_gguf_vtype)type;
        kv->data = c->base + c->pos;
        if (type == G4_GGUF_ARRAY && c->size - c->pos >= 12) {
            kv->arr_type = (g4_gguf_vtype)ld_u32(c->base + c->pos);
            kv->arr_len = ld_u64(c->base + c->pos + 4);
            kv->data = c->base + c->pos + 12;
        }
        if ((st = skip_value(c, type, key, 0))) return st;
        if (c->pos - start > c->caps->max_meta)
            return g4_err_set(c->err, G4_ERR_LIMIT,
                              "%s: metadata exceeds the cap of %" PRIu64 " bytes at key '%s'"
                              " (raise it with " G4_GGUF_MAX_META_ENV "=<n>)",
                              c->path, c->caps->max_meta, key);
    }
    return G4_OK;
}

/* general.alignment: an integer, a nonzero power of two (default 32). */
static g4_status read_alignment(g4_gguf *g, g4_err *err) {
    g->alignment = 32;
    const g4_gguf_kv *kv = g4_gguf_find(g, "general.alignment");
    if (!kv) return G4_OK;
    int64_t a;
    if (!g4_gguf_kv_as_i64(kv, &a))
        return g4_err_set(err, G4_ERR_FORMAT, "%s: general.alignment has type %s, expected UINT32",
                          g->path, g4_gguf_vtype_name(kv->type));
    /* the spec (docs/gguf.md, general.alignment) also asks for a multiple of 8,
       which keeps every F32/F64/I64 tensor naturally aligned in the mapping;
       fuzz_gguf found alignment 2 feeding misaligned floats to the kernels */
    if (a < 8 || (a & (a - 1)))
        return g4_err_set(err, G4_ERR_FORMAT,
                          "%s: general.alignment = %" PRId64 " is not a power of two of at least 8"
                          " (the GGUF spec asks for a multiple of 8)", g->path, a);
    g->alignment = (uint64_t)a;
    return G4_OK;
}

/* ---------------------------------------------------------------------------
 * Tensor infos
 * ------------------------------------------------------------------------- */

static g4_status parse_tensor_info(g4_gguf *g, cursor *c, uint64_t i) {
    g4_tensor *t = &g->tensors[i];
    char nbuf[128], what[64];
    g4_status st;
    snprintf(what, sizeof what, "tensor %" PRIu64 " name", i);
    if ((st = rd_str(c, &t->name, what))) return st;
    const char *name = key_cstr(t->name, nbuf, sizeof nbuf);
    if ((st = rd_u32(c, &t->n_dims, "a tensor's n_dims"))) return st;
    if (t->n_dims > G4_MAX_DIMS)
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: tensor '%s': n_dims %" PRIu32 " > %d",
                          c->path, name, t->n_dims, G4_MAX_DIMS);
    int64_t nel = 1;
    for (uint32_t d = 0; d < G4_MAX_DIMS; d++) {
        uint64_t v = 1;
        if (d < t->n_dims && (st = rd_u64(c, &v, "a tensor dimension"))) return st;
        t->ne[d] = (int64_t)v;
        if (t->ne[d] <= 0)
            return g4_err_set(c->err, G4_ERR_FORMAT, "%s: tensor '%s': dimension %" PRIu32 " is %" PRId64
                              " (must be positive)", c->path, name, d, t->ne[d]);
        if (__builtin_mul_overflow(nel, t->ne[d], &nel))
            return g4_err_set(c->err, G4_ERR_FORMAT,
                              "%s: tensor '%s': element count overflows int64 (dims product)",
                              c->path, name);
    }
    if ((st = rd_u32(c, &t->type, "a tensor type"))) return st;
    if (!g4_type_name(t->type))
        return g4_err_set(c->err, G4_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown type id %" PRIu32,
                          c->path, name, t->type);
    if (t->ne[0] % (int64_t)g4_blck_size(t->type))
        return g4_err_set(c->err, G4_ERR_FORMAT,
                          "%s: tensor '%s': row of %" PRId64 " elements is not a multiple of the %s block size %zu",
                          c->path, name, t->ne[0], g4_type_name(t->type), g4_blck_size(t->type));
    uint64_t rows = (uint64_t)(nel / t->ne[0]), row = g4_row_size(t->type, t->ne[0]);
    if (row == 0 || __builtin_mul_overflow(row, rows, &t->nbytes))
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: tensor '%s': byte size overflows", c->path, name);
    if ((st = rd_u64(c, &t->offset, "a tensor offset"))) return st;
    if (t->offset % g->alignment)
        return g4_err_set(c->err, G4_ERR_FORMAT,
                          "%s: tensor '%s': data offset %" PRIu64 " is unaligned (alignment %" PRIu64 ")",
                          c->path, name, t->offset, g->alignment);
    uint64_t dup = index_insert(&g->tensor_index, g, tensor_name_of, t->name, i);
    if (dup)
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: duplicate tensor name '%s' (tensors %" PRIu64
                          " and %" PRIu64 ")", c->path, name, dup - 1, i);
    return G4_OK;
}

/* After the infos: place the data section and check each tensor lies in it. */
static g4_status place_tensor_data(g4_gguf *g, uint64_t end_of_infos, g4_err *err) {
    uint64_t pad = (g->alignment - end_of_infos % g->alignment) % g->alignment;
    if (__builtin_add_overflow(end_of_infos, pad, &g->data_offset))
        return g4_err_set(err, G4_ERR_FORMAT, "%s: data section offset overflows", g->path);
    uint64_t avail = g->data_offset <= g->size ? g->size - g->data_offset : 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        g4_tensor *t = &g->tensors[i];
        char nbuf[128];
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return g4_err_set(err, G4_ERR_FORMAT,
                              "%s: truncated: tensor '%s' data [%" PRIu64 ", +%" PRIu64 ") runs past end of file"
                              " (%" PRIu64 " data bytes from offset %" PRIu64 ")",
                              g->path, key_cstr(t->name, nbuf, sizeof nbuf), t->offset, t->nbytes,
                              avail, g->data_offset);
        t->data = g->map + g->data_offset + t->offset;
    }
    return G4_OK;
}

/* ---------------------------------------------------------------------------
 * Open / close
 * ------------------------------------------------------------------------- */

static g4_status map_file(g4_gguf *g, const char *path, g4_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return g4_err_errno(err, errno, "cannot open GGUF file %s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return g4_err_errno(err, e, "cannot stat %s", path);
    }
    if (S_ISDIR(sb.st_mode)) { close(fd); return g4_err_errno(err, EISDIR, "cannot read GGUF file %s", path); }
    g->size = (uint64_t)sb.st_size;
    if (g->size < 4) {
        close(fd);
        return g4_err_set(err, G4_ERR_FORMAT, "%s: not a GGUF file (%" PRIu64 " bytes, no magic)", path, g->size);
    }
    void *m = mmap(NULL, (size_t)g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) return g4_err_errno(err, e, "cannot mmap %s", path);
    g->map = m;
    return G4_OK;
}

static g4_status parse_header(g4_gguf *g, cursor *c) {
    if (memcmp(c->base, "GGUF", 4) != 0)
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: not a GGUF file (bad magic %02x %02x %02x %02x)",
                          c->path, c->base[0], c->base[1], c->base[2], c->base[3]);
    c->pos = 4;
    g4_status st;
    if ((st = rd_u32(c, &g->version, "the header version"))) return st;
    if (g->version == 1)
        return g4_err_set(c->err, G4_ERR_UNSUPPORTED, "%s: GGUF version 1 is no longer supported (need 2 or 3)", c->path);
    if (g->version != 2 && g->version != 3) {
        uint32_t sw = __builtin_bswap32(g->version);
        if (sw >= 1 && sw <= 3)
            return g4_err_set(c->err, G4_ERR_UNSUPPORTED, "%s: big-endian GGUF (version %" PRIu32
                              " byte-swapped) is not supported", c->path, sw);
        return g4_err_set(c->err, G4_ERR_UNSUPPORTED, "%s: GGUF version %" PRIu32 " is not supported (need 2 or 3)",
                          c->path, g->version);
    }
    if ((st = rd_u64(c, &g->n_tensors, "the header tensor count")) ||
        (st = rd_u64(c, &g->n_kv, "the header kv count")))
        return st;
    /* A key/value pair takes >= 13 bytes (empty key, u32 type, one byte). */
    if (g->n_kv > (c->size - c->pos) / 13)
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: truncated: kv count %" PRIu64
                          " cannot fit in the %" PRIu64 " bytes left", c->path, g->n_kv, c->size - c->pos);
    if (g->n_kv > c->caps->max_kv)
        return g4_err_set(c->err, G4_ERR_LIMIT, "%s: kv count %" PRIu64 " exceeds the cap of %" PRIu64
                          " (raise it with " G4_GGUF_MAX_KV_ENV "=<n>)", c->path, g->n_kv, c->caps->max_kv);
    return G4_OK;
}

static g4_status parse_tensor_infos(g4_gguf *g, cursor *c) {
    /* A tensor info takes >= 24 bytes (empty name, n_dims 0, type, offset). */
    if (g->n_tensors > (c->size - c->pos) / 24)
        return g4_err_set(c->err, G4_ERR_FORMAT, "%s: truncated: tensor count %" PRIu64
                          " cannot fit in the %" PRIu64 " bytes left", c->path, g->n_tensors, c->size - c->pos);
    if (g->n_tensors > c->caps->max_tensors)
        return g4_err_set(c->err, G4_ERR_LIMIT, "%s: tensor count %" PRIu64 " exceeds the cap of %" PRIu64
                          " (raise it with " G4_GGUF_MAX_TENSORS_ENV "=<n>)",
                          c->path, g->n_tensors, c->caps->max_tensors);
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->tensors || !build_index(&g->tensor_index, g->n_tensors))
        return g4_err_set(c->err, G4_ERR_NOMEM, "%s: out of memory for %" PRIu64 " tensors", c->path, g->n_tensors);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        g4_status st = parse_tensor_info(g, c, i);
        if (st) return st;
    }
    return G4_OK;
}

/* Open one file (a single-file model, or one shard of a split one). */
static g4_gguf *open_one(const char *path, const caps *cp, g4_err *err) {
    g4_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        g4_err_set(err, G4_ERR_NOMEM, "out of memory opening %s", path);
        return NULL;
    }
    g->n_shards = 1;
    cursor c = {0};
    g4_status st = map_file(g, path, err);
    if (st) goto fail;
    c = (cursor){ .base = g->map, .size = g->size, .pos = 0, .path = path, .caps = cp, .err = err };
    if ((st = parse_header(g, &c)) || (st = parse_kvs(g, &c)) || (st = read_alignment(g, err)) ||
        (st = parse_tensor_infos(g, &c)) || (st = place_tensor_data(g, c.pos, err)))
        goto fail;
    return g;
fail:
    g4_gguf_close(g);
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Split models, as llama.cpp's gguf-split writes them (tools/gguf-split,
 * llama.cpp src/llama-model-loader.cpp): shard i of n is
 * <prefix>-%05d-of-%05d.gguf with i + 1 and n; every shard carries
 * split.no (u16, 0-based) and split.count (u16); shard 0 holds all other
 * metadata and split.tensors.count (i32), the total number of tensors. Each
 * shard is a complete GGUF with its own tensor infos and data section, so each
 * is validated on its own exactly as a single file is.
 * ------------------------------------------------------------------------- */

#define SPLIT_SUFFIX_LEN 20   /* strlen("-00001-of-00003.gguf") */
#define SPLIT_MAX 99999       /* what the %05d file names can count to */

/* split.<what> of g as an integer in [lo, hi]; absent -> *out = dflt. */
static g4_status split_key(const g4_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t dflt,
                           int64_t *out, g4_err *err) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    if (!kv) { *out = dflt; return G4_OK; }
    if (!g4_gguf_kv_as_i64(kv, out) || *out < lo || *out > hi)
        return g4_err_set(err, G4_ERR_FORMAT, "%s: %s must be an integer in [%" PRId64 ", %" PRId64 "]",
                          g->path, key, lo, hi);
    return G4_OK;
}

/* The shard's split.count / split.no checked against what the set expects. */
static g4_status check_shard(const g4_gguf *s, int64_t count, int64_t no, g4_err *err) {
    int64_t c = 0, n = 0;
    g4_status st;
    if ((st = split_key(s, "split.count", 0, SPLIT_MAX, 0, &c, err)) ||
        (st = split_key(s, "split.no", 0, SPLIT_MAX, -1, &n, err)))
        return st;
    if (c != count || n != no)
        return g4_err_set(err, G4_ERR_FORMAT, "%s: expected shard %" PRId64 " of %" PRId64
                          " (split.no %" PRId64 ", split.count %" PRId64 ") but it says split.no %" PRId64
                          ", split.count %" PRId64, s->path, no + 1, count, no, count, n, c);
    return G4_OK;
}

/* err->msg = pre + path + ": " + err->msg, truncated to fit as g4_err_set does. */
static void err_prefix(g4_err *err, const char *pre, const char *path) {
    char msg[sizeof err->msg + 4096 + 160];   /* pre (< 128) + path (<= 4096) + ": " + msg */
    snprintf(msg, sizeof msg, "%s%.4096s: %s", pre, path, err->msg);
    size_t len = strlen(msg);
    if (len >= sizeof err->msg) len = sizeof err->msg - 1;
    memcpy(err->msg, msg, len);
    err->msg[len] = '\0';
}

static g4_gguf *open_split(g4_gguf *first, int64_t count, int64_t no, const caps *cp, g4_err *err) {
    const char *path = first->path;
    const size_t plen = strlen(path);
    char want[SPLIT_SUFFIX_LEN + 1];
    snprintf(want, sizeof want, "-%05d-of-%05d.gguf", (int)(no + 1), (int)count);
    if (plen < SPLIT_SUFFIX_LEN || strcmp(path + plen - SPLIT_SUFFIX_LEN, want) != 0) {
        g4_err_set(err, G4_ERR_FORMAT, "%s: shard %" PRId64 " of a split model (split.no %" PRId64
                   ", split.count %" PRId64 ") but its name does not end in %s, so the other shards"
                   " cannot be found", path, no + 1, no, count, want);
        g4_gguf_close(first);
        return NULL;
    }
    g4_gguf **sh = calloc((size_t)count, sizeof *sh);
    char *spath = malloc(plen + 1);
    g4_gguf *g = NULL;
    if (!sh || !spath) {
        g4_err_set(err, G4_ERR_NOMEM, "%s: out of memory for %" PRId64 " shards", path, count);
        g4_gguf_close(first);
        goto done;
    }
    sh[no] = first;
    memcpy(spath, path, plen + 1);
    for (int64_t i = 0; i < count; i++) {
        if (sh[i]) continue;
        snprintf(spath + plen - SPLIT_SUFFIX_LEN, SPLIT_SUFFIX_LEN + 1, "-%05d-of-%05d.gguf", (int)(i + 1), (int)count);
        g4_err e1;
        g4_err_clear(&e1);
        if (!(sh[i] = open_one(spath, cp, &e1))) {
            /* keep the cause's status (FileNotFoundError for a missing shard) */
            if (err) {
                char pre[128];
                snprintf(pre, sizeof pre, "shard %" PRId64 " of %" PRId64 " of ", i + 1, count);
                *err = e1;
                err_prefix(err, pre, path);
            }
            goto fail;
        }
    }
    for (int64_t i = 0; i < count; i++)
        if (check_shard(sh[i], count, i, err)) goto fail;
    g = sh[0];
    int64_t want_tensors = -1;
    if (split_key(g, "split.tensors.count", 0, INT64_MAX, -1, &want_tensors, err)) goto fail;
    uint64_t total = 0;
    for (int64_t i = 0; i < count; i++) total += sh[i]->n_tensors;   /* each is capped: no overflow */
    if (want_tensors >= 0 && (uint64_t)want_tensors != total) {
        g4_err_set(err, G4_ERR_FORMAT, "%s: split.tensors.count is %" PRId64 " but the %" PRId64
                   " shards hold %" PRIu64 " tensors", g->path, want_tensors, count, total);
        goto fail;
    }
    if (total > cp->max_tensors) {
        g4_err_set(err, G4_ERR_LIMIT, "%s: %" PRIu64 " tensors over %" PRId64 " shards exceed the cap of %"
                   PRIu64 " (raise it with " G4_GGUF_MAX_TENSORS_ENV "=<n>)", g->path, total, count, cp->max_tensors);
        goto fail;
    }
    /* One tensor table over all shards; names and data stay in each shard's mapping. */
    g4_tensor *all = calloc(total ? total : 1, sizeof *all);
    name_index ix = {0};
    if (!all || !build_index(&ix, total)) {
        free(all);
        g4_err_set(err, G4_ERR_NOMEM, "%s: out of memory for %" PRIu64 " tensors", g->path, total);
        goto fail;
    }
    g4_tensor *own = g->tensors;   /* shard 0's, copied first */
    const uint64_t n_own = g->n_tensors;
    free_index(&g->tensor_index);
    g->tensors = all;
    g->tensor_index = ix;
    g->n_tensors = 0;
    for (int64_t i = 0; i < count; i++)
        for (uint64_t j = 0; j < (i ? sh[i]->n_tensors : n_own); j++) {
            g4_tensor *t = &all[g->n_tensors];
            *t = i ? sh[i]->tensors[j] : own[j];
            t->shard = (uint32_t)i;
            uint64_t dup = index_insert(&g->tensor_index, g, tensor_name_of, t->name, g->n_tensors);
            if (dup) {
                char nbuf[128];
                g4_err_set(err, G4_ERR_FORMAT, "%s: tensor '%s' is in shard %" PRIu32 " and again in shard %" PRId64,
                           g->path, key_cstr(t->name, nbuf, sizeof nbuf), all[dup - 1].shard + 1, i + 1);
                free(own);
                goto fail;
            }
            g->n_tensors++;
        }
    free(own);
    g->shards = sh;
    g->n_shards = (uint32_t)count;
    sh = NULL;
    goto done;
fail:
    /* every message names the file the caller opened (path dies with the shards) */
    if (err && !strstr(err->msg, path)) err_prefix(err, "", path);
    for (int64_t i = 0; sh && i < count; i++) g4_gguf_close(sh[i]);
    g = NULL;
done:
    free(sh);
    free(spath);
    return g;
}

g4_gguf *g4_gguf_open(const char *path, g4_err *err) {
    g4_err_clear(err);
    caps cp;
    if (read_caps(&cp, err)) return NULL;
    g4_gguf *g = open_one(path, &cp, err);
    if (!g) return NULL;
    int64_t count = 0, no = 0;
    if (split_key(g, "split.count", 0, SPLIT_MAX, 0, &count, err) ||
        split_key(g, "split.no", 0, SPLIT_MAX, 0, &no, err)) {
        g4_gguf_close(g);
        return NULL;
    }
    if (count <= 1) return g;   /* a single file (gguf-split --merge leaves split.count 0 or 1) */
    if (no >= count) {
        g4_err_set(err, G4_ERR_FORMAT, "%s: split.no %" PRId64 " is not below split.count %" PRId64, path, no, count);
        g4_gguf_close(g);
        return NULL;
    }
    return open_split(g, count, no, &cp, err);
}

void g4_gguf_close(g4_gguf *g) {
    if (!g) return;
    for (uint32_t i = 1; g->shards && i < g->n_shards; i++) g4_gguf_close(g->shards[i]);
    free(g->shards);
    if (g->map) munmap((void *)g->map, (size_t)g->size);
    free_index(&g->kv_index);
    free_index(&g->tensor_index);
    free(g->kv);
    free(g->tensors);
    free(g->path);
    free(g);
}

uint32_t g4_gguf_n_shards(const g4_gguf *g) { return g->n_shards; }

const g4_gguf *g4_gguf_shard(const g4_gguf *g, uint32_t i) {
    if (i >= g->n_shards) return NULL;
    return g->shards ? g->shards[i] : g;
}

const char *g4_gguf_shard_path(const g4_gguf *g, uint32_t i) {
    if (i >= g->n_shards) return NULL;
    return g->shards ? g->shards[i]->path : g->path;
}

uint64_t g4_gguf_total_size(const g4_gguf *g) {
    uint64_t s = 0;
    for (uint32_t i = 0; i < g->n_shards; i++) s += g->shards ? g->shards[i]->size : g->size;
    return s;
}

/* ---------------------------------------------------------------------------
 * Accessors
 * ------------------------------------------------------------------------- */

uint32_t g4_gguf_version(const g4_gguf *g) { return g->version; }
uint64_t g4_gguf_alignment(const g4_gguf *g) { return g->alignment; }
uint64_t g4_gguf_file_size(const g4_gguf *g) { return g->size; }
uint64_t g4_gguf_data_offset(const g4_gguf *g) { return g->data_offset; }
const char *g4_gguf_path(const g4_gguf *g) { return g->path; }
uint64_t g4_gguf_n_kv(const g4_gguf *g) { return g->n_kv; }
uint64_t g4_gguf_n_tensors(const g4_gguf *g) { return g->n_tensors; }

const g4_gguf_kv *g4_gguf_kv_at(const g4_gguf *g, uint64_t i) { return i < g->n_kv ? &g->kv[i] : NULL; }
const g4_tensor *g4_gguf_tensor_at(const g4_gguf *g, uint64_t i) { return i < g->n_tensors ? &g->tensors[i] : NULL; }

int g4_str_eq(g4_str s, const char *cstr) { return str_eq_n(s, cstr, strlen(cstr)); }

const g4_gguf_kv *g4_gguf_find(const g4_gguf *g, const char *key) {
    uint64_t e = index_find(&g->kv_index, g, kv_key_of, key);
    return e ? &g->kv[e - 1] : NULL;
}

const g4_tensor *g4_gguf_find_tensor(const g4_gguf *g, const char *name) {
    uint64_t e = index_find(&g->tensor_index, g, tensor_name_of, name);
    return e ? &g->tensors[e - 1] : NULL;
}

/* One scalar at p of value type t as int64 / double; 0 if not numeric. */
static int scalar_i64(uint32_t t, const uint8_t *p, int64_t *out) {
    switch (t) {
    case G4_GGUF_UINT8: *out = p[0]; return 1;
    case G4_GGUF_INT8: *out = (int8_t)p[0]; return 1;
    case G4_GGUF_UINT16: { uint16_t v; memcpy(&v, p, 2); *out = v; return 1; }
    case G4_GGUF_INT16: { int16_t v; memcpy(&v, p, 2); *out = v; return 1; }
    case G4_GGUF_UINT32: *out = ld_u32(p); return 1;
    case G4_GGUF_INT32: *out = (int32_t)ld_u32(p); return 1;
    case G4_GGUF_UINT64: { uint64_t v = ld_u64(p); if (v > INT64_MAX) return 0; *out = (int64_t)v; return 1; }
    case G4_GGUF_INT64: *out = (int64_t)ld_u64(p); return 1;
    }
    return 0;
}

static int scalar_f64(uint32_t t, const uint8_t *p, double *out) {
    switch (t) {
    case G4_GGUF_FLOAT32: { float v; memcpy(&v, p, 4); *out = v; return 1; }
    case G4_GGUF_FLOAT64: { double v; memcpy(&v, p, 8); *out = v; return 1; }
    case G4_GGUF_UINT64: *out = (double)ld_u64(p); return 1;
    }
    int64_t i;
    if (!scalar_i64(t, p, &i)) return 0;
    *out = (double)i;
    return 1;
}

int g4_gguf_kv_as_i64(const g4_gguf_kv *kv, int64_t *out) { return kv && scalar_i64(kv->type, kv->data, out); }
int g4_gguf_kv_as_f64(const g4_gguf_kv *kv, double *out) { return kv && scalar_f64(kv->type, kv->data, out); }

int g4_gguf_kv_str(const g4_gguf_kv *kv, g4_str *out) {
    if (!kv || kv->type != G4_GGUF_STRING) return 0;
    out->len = ld_u64(kv->data);
    out->ptr = (const char *)kv->data + 8;
    return 1;
}

/* ---- typed getters ---- */

static g4_status missing(const g4_gguf *g, const char *key, g4_err *err) {
    return g4_err_set(err, G4_ERR_FORMAT, "%s: missing key '%s'", g->path, key);
}

static g4_status mistyped(const g4_gguf *g, const g4_gguf_kv *kv, const char *key, const char *want, g4_err *err) {
    return g4_err_set(err, G4_ERR_FORMAT, "%s: key '%s' has type %s, expected %s",
                      g->path, key, g4_gguf_vtype_name(kv->type), want);
}

static g4_status get_u32(const g4_gguf *g, const g4_gguf_kv *kv, const char *key, uint32_t *out, g4_err *err) {
    int64_t v;
    if (kv->type == G4_GGUF_UINT64 && ld_u64(kv->data) > INT64_MAX)
        return g4_err_set(err, G4_ERR_FORMAT, "%s: key '%s' = %" PRIu64 " does not fit in uint32",
                          g->path, key, ld_u64(kv->data));
    if (!g4_gguf_kv_as_i64(kv, &v)) return mistyped(g, kv, key, "an integer", err);
    if (v < 0 || v > UINT32_MAX)
        return g4_err_set(err, G4_ERR_FORMAT, "%s: key '%s' = %" PRId64 " does not fit in uint32", g->path, key, v);
    *out = (uint32_t)v;
    return G4_OK;
}

g4_status g4_gguf_get_u32(const g4_gguf *g, const char *key, uint32_t *out, g4_err *err) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    return kv ? get_u32(g, kv, key, out, err) : missing(g, key, err);
}

g4_status g4_gguf_get_u32_or(const g4_gguf *g, const char *key, uint32_t dflt, uint32_t *out, g4_err *err) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    if (!kv) { *out = dflt; return G4_OK; }
    return get_u32(g, kv, key, out, err);
}

/* Floats: FLOAT32/FLOAT64, or any integer (exact for |v| < 2^24). */
static g4_status get_f32(const g4_gguf *g, const g4_gguf_kv *kv, const char *key, float *out, g4_err *err) {
    double v;
    if (!g4_gguf_kv_as_f64(kv, &v)) return mistyped(g, kv, key, "a number", err);
    *out = (float)v;
    return G4_OK;
}

g4_status g4_gguf_get_f32(const g4_gguf *g, const char *key, float *out, g4_err *err) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    return kv ? get_f32(g, kv, key, out, err) : missing(g, key, err);
}

g4_status g4_gguf_get_f32_or(const g4_gguf *g, const char *key, float dflt, float *out, g4_err *err) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    if (!kv) { *out = dflt; return G4_OK; }
    return get_f32(g, kv, key, out, err);
}

g4_status g4_gguf_get_bool_or(const g4_gguf *g, const char *key, int dflt, int *out, g4_err *err) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    if (!kv) { *out = dflt; return G4_OK; }
    if (kv->type != G4_GGUF_BOOL) return mistyped(g, kv, key, "BOOL", err);
    *out = kv->data[0] != 0;
    return G4_OK;
}

g4_status g4_gguf_get_str(const g4_gguf *g, const char *key, g4_str *out, g4_err *err) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    if (!kv) return missing(g, key, err);
    if (!g4_gguf_kv_str(kv, out)) return mistyped(g, kv, key, "STRING", err);
    return G4_OK;
}

/* ---------------------------------------------------------------------------
 * Arrays
 * ------------------------------------------------------------------------- */

int g4_gguf_arr_i64(const g4_gguf_kv *kv, uint64_t i, int64_t *out) {
    if (!kv || kv->type != G4_GGUF_ARRAY || i >= kv->arr_len || !vtype_size(kv->arr_type)) return 0;
    return scalar_i64(kv->arr_type, kv->data + i * vtype_size(kv->arr_type), out);
}

int g4_gguf_arr_f64(const g4_gguf_kv *kv, uint64_t i, double *out) {
    if (!kv || kv->type != G4_GGUF_ARRAY || i >= kv->arr_len || !vtype_size(kv->arr_type)) return 0;
    return scalar_f64(kv->arr_type, kv->data + i * vtype_size(kv->arr_type), out);
}

/* Bytes of an already validated value of type t at p (recursion depth is
   bounded by G4_GGUF_MAX_DEPTH, enforced at open). */
static uint64_t value_bytes(uint32_t t, const uint8_t *p) {
    if (t == G4_GGUF_STRING) return 8 + ld_u64(p);
    if (t != G4_GGUF_ARRAY) return vtype_size(t);
    uint32_t et = ld_u32(p);
    uint64_t n = ld_u64(p + 4), off = 12;
    if (vtype_size(et)) return off + n * vtype_size(et);
    for (uint64_t i = 0; i < n; i++) off += value_bytes(et, p + off);
    return off;
}

void g4_gguf_arr_iter_init(g4_gguf_arr_iter *it, const g4_gguf_kv *arr) {
    it->arr = arr;
    it->i = 0;
    it->p = arr ? arr->data : NULL;
}

int g4_gguf_arr_next(g4_gguf_arr_iter *it, g4_gguf_kv *elem) {
    const g4_gguf_kv *a = it->arr;
    if (!a || a->type != G4_GGUF_ARRAY || it->i >= a->arr_len) return 0;
    memset(elem, 0, sizeof *elem);
    elem->type = a->arr_type;
    elem->data = it->p;
    if (a->arr_type == G4_GGUF_ARRAY) {
        elem->arr_type = (g4_gguf_vtype)ld_u32(it->p);
        elem->arr_len = ld_u64(it->p + 4);
        elem->data = it->p + 12;
    }
    it->p += value_bytes(a->arr_type, it->p);
    it->i++;
    return 1;
}

g4_str *g4_gguf_arr_strings(const g4_gguf_kv *kv, g4_err *err) {
    char kbuf[128];
    if (!kv || kv->type != G4_GGUF_ARRAY || kv->arr_type != G4_GGUF_STRING) {
        g4_err_set(err, G4_ERR_FORMAT, "key '%s' is not an array of strings",
                   kv ? key_cstr(kv->key, kbuf, sizeof kbuf) : "(null)");
        return NULL;
    }
    /* arr_len <= file size / 8 (checked at open), so this cannot overflow. */
    g4_str *out = malloc((kv->arr_len ? kv->arr_len : 1) * sizeof *out);
    if (!out) {
        g4_err_set(err, G4_ERR_NOMEM, "out of memory for %" PRIu64 " strings of key '%s'",
                   kv->arr_len, key_cstr(kv->key, kbuf, sizeof kbuf));
        return NULL;
    }
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < kv->arr_len; i++) {
        out[i].len = ld_u64(p);
        out[i].ptr = (const char *)p + 8;
        p += 8 + out[i].len;
    }
    return out;
}
