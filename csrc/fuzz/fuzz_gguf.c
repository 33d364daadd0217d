/* fuzz_gguf.c - libFuzzer harness for the GGUF reader (csrc/gguf/gguf.c).
 *
 * The input is a GGUF file. It is written to an in-memory file and opened
 * with g4_gguf_open; a file that opens is then walked through every public
 * accessor: each key/value (scalars of every type, strings, arrays nested to
 * any depth with the iterator, g4_gguf_arr_i64/f64 and g4_gguf_arr_strings),
 * the typed getters on each key, each tensor (name lookup, shape, size and
 * offset arithmetic, the first row dequantized and multiplied), and, when the
 * file has tokenizer.ggml.model, the tokenizer built from it.
 *
 * Checks beyond the sanitizers: gguf.h promises that every pointer it hands
 * out lies inside the file, so each one is checked against the mapping
 * (the reader maps the file, so a read a few bytes past the end would land
 * in the page's zero padding and go unnoticed by ASan); a failed open fills
 * a status and a message naming the file.
 *
 * Inputs whose length is a multiple of 7 are read with small caps
 * (GEMMA4STACK_MAX_* = a few KiB), so the limit paths are fuzzed as well.
 *
 * Split models: when the input holds a second "GGUF" magic, the bytes before
 * it and from it on are also written as <dir>/fz-00001-of-00002.gguf and
 * fz-00002-of-00002.gguf and the first is opened, so a pair with
 * split.count = 2 goes through the shard checks and the merged tensor table
 * (every tensor then checked against its own shard's mapping). Seeds of this
 * form are written by make_seeds.py (split-*.gguf).
 */
#include "fuzz.h"

#include <fcntl.h>

#include "../gguf/gguf.h"
#include "../quant/quant.h"
#include "../tokenizer/tokenizer.h"

/* The file as mapped by the reader: every pointer must lie in [lo, hi). */
typedef struct span { const uint8_t *lo, *hi; } span;

static void in_file(const span *f, const void *p, uint64_t n, const char *what) {
    const uint8_t *b = p;
    G4FUZZ_CHECK(f->lo && b >= f->lo && b <= f->hi && n <= (uint64_t)(f->hi - b),
                 "%s: [%p, +%llu) is outside the file [%p, %p)", what, p, (unsigned long long)n,
                 (const void *)f->lo, (const void *)f->hi);
    g4fuzz_touch(p, (size_t)n);
}

static uint64_t scalar_size(uint32_t t) {
    switch (t) {
    case G4_GGUF_UINT8: case G4_GGUF_INT8: case G4_GGUF_BOOL: return 1;
    case G4_GGUF_UINT16: case G4_GGUF_INT16: return 2;
    case G4_GGUF_UINT32: case G4_GGUF_INT32: case G4_GGUF_FLOAT32: return 4;
    case G4_GGUF_UINT64: case G4_GGUF_INT64: case G4_GGUF_FLOAT64: return 8;
    }
    return 0;
}

/* ---- metadata ------------------------------------------------------------- */

static void walk_value(const span *f, const g4_gguf_kv *v, int depth);

static void walk_array(const span *f, const g4_gguf_kv *a, int depth) {
    G4FUZZ_CHECK(depth < G4_GGUF_MAX_DEPTH, "array nested %d deep was accepted", depth + 1);
    G4FUZZ_CHECK(a->arr_type <= G4_GGUF_FLOAT64, "array element type %u was accepted", a->arr_type);
    uint64_t esz = scalar_size(a->arr_type);
    if (esz) in_file(f, a->data, a->arr_len * esz, "scalar array payload");

    g4_str *strs = NULL;
    if (a->arr_type == G4_GGUF_STRING) {
        g4_err err;
        strs = g4_gguf_arr_strings(a, &err);
        if (!strs) G4FUZZ_CHECK_ERR(err, "g4_gguf_arr_strings");
    }
    g4_gguf_arr_iter it;
    g4_gguf_kv e;
    uint64_t i = 0;
    g4_gguf_arr_iter_init(&it, a);
    while (g4_gguf_arr_next(&it, &e)) {
        G4FUZZ_CHECK(i < a->arr_len, "the iterator gave more than arr_len = %llu elements",
                     (unsigned long long)a->arr_len);
        G4FUZZ_CHECK(e.type == a->arr_type, "element type %u in an array of %u", e.type, a->arr_type);
        walk_value(f, &e, depth + 1);
        int64_t iv;
        double dv;
        int got_i = g4_gguf_arr_i64(a, i, &iv), got_f = g4_gguf_arr_f64(a, i, &dv);
        G4FUZZ_CHECK(!got_i || esz, "g4_gguf_arr_i64 read element %llu of a %s array",
                     (unsigned long long)i, g4_gguf_vtype_name(a->arr_type));
        G4FUZZ_CHECK(!got_f || esz, "g4_gguf_arr_f64 read a non-scalar element");
        if (strs) {
            g4_str s;
            G4FUZZ_CHECK(g4_gguf_kv_str(&e, &s), "a string array element is not a string");
            G4FUZZ_CHECK(s.ptr == strs[i].ptr && s.len == strs[i].len,
                         "g4_gguf_arr_strings and the iterator disagree on element %llu",
                         (unsigned long long)i);
        }
        i++;
    }
    G4FUZZ_CHECK(i == a->arr_len, "the iterator gave %llu of %llu elements", (unsigned long long)i,
                 (unsigned long long)a->arr_len);
    /* out-of-range indices are refused, not read */
    int64_t iv;
    double dv;
    G4FUZZ_CHECK(!g4_gguf_arr_i64(a, a->arr_len, &iv) && !g4_gguf_arr_f64(a, a->arr_len, &dv),
                 "an element past arr_len was read");
    free(strs);
}

static void walk_value(const span *f, const g4_gguf_kv *v, int depth) {
    int64_t iv;
    double dv;
    g4_str s;
    if (v->type == G4_GGUF_ARRAY) { walk_array(f, v, depth); return; }
    if (v->type == G4_GGUF_STRING) {
        in_file(f, v->data, 8, "string length");
        G4FUZZ_CHECK(g4_gguf_kv_str(v, &s), "g4_gguf_kv_str refused a STRING");
        in_file(f, s.ptr, s.len, "string bytes");
        return;
    }
    uint64_t sz = scalar_size(v->type);
    G4FUZZ_CHECK(sz, "value type %u was accepted", v->type);
    in_file(f, v->data, sz, "scalar value");
    int got_i = g4_gguf_kv_as_i64(v, &iv), got_f = g4_gguf_kv_as_f64(v, &dv);
    G4FUZZ_CHECK(got_f || v->type == G4_GGUF_BOOL, "g4_gguf_kv_as_f64 refused a number of type %s",
                 g4_gguf_vtype_name(v->type));
    (void)got_i;
}

/* The typed getters on one key: either a value or a filled error. */
static void walk_getters(const span *f, const g4_gguf *g, const char *key) {
    g4_err err;
    uint32_t u;
    float x;
    int b;
    g4_str s;
    if (g4_gguf_get_u32(g, key, &u, &err)) G4FUZZ_CHECK_ERR(err, "g4_gguf_get_u32");
    if (g4_gguf_get_u32_or(g, key, 7, &u, &err)) G4FUZZ_CHECK_ERR(err, "g4_gguf_get_u32_or");
    if (g4_gguf_get_f32(g, key, &x, &err)) G4FUZZ_CHECK_ERR(err, "g4_gguf_get_f32");
    if (g4_gguf_get_f32_or(g, key, 1.0f, &x, &err)) G4FUZZ_CHECK_ERR(err, "g4_gguf_get_f32_or");
    if (g4_gguf_get_bool_or(g, key, 0, &b, &err)) G4FUZZ_CHECK_ERR(err, "g4_gguf_get_bool_or");
    if (g4_gguf_get_str(g, key, &s, &err)) G4FUZZ_CHECK_ERR(err, "g4_gguf_get_str");
    else in_file(f, s.ptr, s.len, "g4_gguf_get_str");
}

static void walk_kvs(const span *f, const g4_gguf *g) {
    char key[256];
    for (uint64_t i = 0; i < g4_gguf_n_kv(g); i++) {
        const g4_gguf_kv *kv = g4_gguf_kv_at(g, i);
        G4FUZZ_CHECK(kv, "g4_gguf_kv_at(%llu) is NULL below n_kv", (unsigned long long)i);
        in_file(f, kv->key.ptr, kv->key.len, "key");
        walk_value(f, kv, 0);
        /* lookup by name finds this very pair (keys are unique); keys with a
           NUL byte cannot be spelled as a C string */
        if (kv->key.len < sizeof key && !memchr(kv->key.ptr, 0, kv->key.len)) {
            memcpy(key, kv->key.ptr, kv->key.len);
            key[kv->key.len] = 0;
            G4FUZZ_CHECK(g4_gguf_find(g, key) == kv, "g4_gguf_find('%s') misses pair %llu", key,
                         (unsigned long long)i);
            walk_getters(f, g, key);
        }
    }
    G4FUZZ_CHECK(!g4_gguf_kv_at(g, g4_gguf_n_kv(g)), "g4_gguf_kv_at(n_kv) is not NULL");
    walk_getters(f, g, "general.architecture");
    walk_getters(f, g, "no.such.key");
}

/* ---- tensors ------------------------------------------------------------------ */

/* f and sh: the span and handle of the file holding t (its shard) */
static void walk_tensor(const span *f, const g4_gguf *g, const g4_gguf *sh, const g4_tensor *t) {
    char name[256];
    in_file(f, t->name.ptr, t->name.len, "tensor name");
    G4FUZZ_CHECK(t->n_dims <= G4_MAX_DIMS, "n_dims %u accepted", t->n_dims);
    int64_t nel = 1;
    for (int d = 0; d < G4_MAX_DIMS; d++) {
        G4FUZZ_CHECK(t->ne[d] >= 1, "dimension %d is %lld", d, (long long)t->ne[d]);
        G4FUZZ_CHECK(!__builtin_mul_overflow(nel, t->ne[d], &nel), "element count overflows");
    }
    G4FUZZ_CHECK(g4_type_name(t->type), "unknown tensor type %u accepted", t->type);
    size_t row = g4_row_size(t->type, t->ne[0]);
    G4FUZZ_CHECK(row && row * (uint64_t)(nel / t->ne[0]) == t->nbytes, "nbytes %llu is not rows x row size",
                 (unsigned long long)t->nbytes);
    G4FUZZ_CHECK(t->offset % g4_gguf_alignment(g) == 0, "unaligned offset accepted");
    G4FUZZ_CHECK((const uint8_t *)t->data == f->lo + g4_gguf_data_offset(sh) + t->offset,
                 "tensor data pointer is not data section + offset");
    in_file(f, t->data, t->nbytes, "tensor data");
    if (t->name.len < sizeof name && !memchr(t->name.ptr, 0, t->name.len)) {
        memcpy(name, t->name.ptr, t->name.len);
        name[t->name.len] = 0;
        G4FUZZ_CHECK(g4_gguf_find_tensor(g, name) == t, "g4_gguf_find_tensor('%s') misses it", name);
    }
    /* the first row (at most 1024 elements) through the scalar kernels:
       arbitrary bits must not crash them */
    if (g4_type_supported(t->type)) {
        static float x[1024], y[1024];
        int64_t blk = (int64_t)g4_blck_size(t->type), n = t->ne[0];
        if (n > 1024) n = 1024 / blk * blk;
        if (n > 0) {
            for (int64_t i = 0; i < n; i++) x[i] = 1.0f;
            g4_dequantize_row(t->type, t->data, y, n);
            g4fuzz_touch(y, (size_t)n * sizeof *y);
            if (n == t->ne[0]) g4_matvec_rows(t->type, t->data, n, x, y, 0, 1);
        }
    }
}

/* ---- the tokenizer in the file -------------------------------------------- */

static void walk_tokenizer(const g4_gguf *g) {
    if (!g4_gguf_find(g, "tokenizer.ggml.model")) return;
    g4_err err;
    g4_tokenizer *t = g4_tokenizer_from_gguf(g, &err);
    if (!t) { G4FUZZ_CHECK_ERR(err, "g4_tokenizer_from_gguf"); return; }
    static const char text[] = "Hello world <s> \xe2\x96\x81\n\n<|turn>user\n\xf0\x9f\x99\x82";
    int32_t ids[256];
    size_t n = 0;
    if (g4_tokenizer_encode(t, text, sizeof text - 1, 1, 1, ids, 256, &n, &err))
        G4FUZZ_CHECK_ERR(err, "g4_tokenizer_encode");
    int32_t nv = g4_tokenizer_n_vocab(t);
    for (size_t i = 0; i < n && i < 256; i++)
        G4FUZZ_CHECK(ids[i] >= 0 && ids[i] < nv, "id %d outside the vocab of %d", ids[i], nv);
    char out[1024];
    g4_tokenizer_decode(t, ids, n < 256 ? n : 256, out, sizeof out);
    g4_tokenizer_free(t);
}

/* ---- the harness ----------------------------------------------------------- */

static void set_caps(int small) {
    static int now = -1;
    if (now == small) return;
    now = small;
    const char *names[] = {G4_GGUF_MAX_TENSORS_ENV, G4_GGUF_MAX_KV_ENV, G4_GGUF_MAX_ARRAY_ENV,
                           G4_GGUF_MAX_STRING_ENV, G4_GGUF_MAX_META_ENV};
    const char *vals[] = {"8", "16", "64", "256", "4096"};
    for (int i = 0; i < 5; i++) {
        if (small) setenv(names[i], vals[i], 1);
        else unsetenv(names[i]);
    }
}

/* The mapping of a file starts 24 bytes before the first key's length prefix
   (or the first tensor name's when there are no keys); NULL lo when neither. */
static span file_span(const g4_gguf *g, size_t size) {
    span f = {0};
    if (g4_gguf_n_kv(g)) f.lo = (const uint8_t *)g4_gguf_kv_at(g, 0)->key.ptr - 32;
    else if (g4_gguf_n_tensors(g)) f.lo = (const uint8_t *)g4_gguf_tensor_at(g, 0)->name.ptr - 32;
    if (f.lo) {
        f.hi = f.lo + size;
        G4FUZZ_CHECK(memcmp(f.lo, "GGUF", 4) == 0, "no magic at the inferred map start");
    }
    return f;
}

/* Open `path` (n_files files of sizes[]) and walk everything. */
static void run(const char *path, const size_t *sizes, uint32_t n_files) {
    g4_err err;
    g4_gguf *g = g4_gguf_open(path, &err);
    if (!g) {
        G4FUZZ_CHECK_ERR(err, "g4_gguf_open");
        /* a shard's own error names that shard, prefixed with the opened path */
        G4FUZZ_CHECK(strstr(err.msg, path), "the error does not name the file: %s", err.msg);
        return;
    }
    const uint32_t ns = g4_gguf_n_shards(g);
    G4FUZZ_CHECK(ns == 1 || ns == n_files, "%u shards from %u files", ns, n_files);
    span f[2] = {{0}};
    for (uint32_t i = 0; i < ns; i++) {
        const g4_gguf *sh = g4_gguf_shard(g, i);
        G4FUZZ_CHECK(sh && (i || sh == g), "g4_gguf_shard(%u)", i);
        G4FUZZ_CHECK(g4_gguf_file_size(sh) == sizes[i], "file size %llu, input %zu",
                     (unsigned long long)g4_gguf_file_size(sh), sizes[i]);
        G4FUZZ_CHECK(g4_gguf_version(sh) == 2 || g4_gguf_version(sh) == 3, "version accepted");
        uint64_t al = g4_gguf_alignment(sh);
        G4FUZZ_CHECK(al && !(al & (al - 1)) && g4_gguf_data_offset(sh) % al == 0, "alignment");
        f[i] = file_span(sh, sizes[i]);
    }
    G4FUZZ_CHECK(!g4_gguf_shard(g, ns), "g4_gguf_shard(n_shards) is not NULL");
    walk_kvs(&f[0], g);
    for (uint64_t i = 0; i < g4_gguf_n_tensors(g); i++) {
        const g4_tensor *t = g4_gguf_tensor_at(g, i);
        G4FUZZ_CHECK(t->shard < ns, "tensor in shard %u of %u", t->shard, ns);
        walk_tensor(&f[t->shard], g, g4_gguf_shard(g, t->shard), t);
    }
    G4FUZZ_CHECK(!g4_gguf_tensor_at(g, g4_gguf_n_tensors(g)), "tensor_at(n_tensors) is not NULL");
    g4fuzz_touch(g4_gguf_find_tensor(g, "no.such.tensor"), 0);
    walk_tokenizer(g);
    g4_gguf_close(g);
}

/* The two shard files of the split mode, in a directory made once per process. */
static void split_run(const uint8_t *data, size_t size) {
    const uint8_t *second = size > 8 ? memmem(data + 4, size - 4, "GGUF", 4) : NULL;
    if (!second) return;
    static char dir[64], paths[2][96];
    if (!dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/g4fuzz-XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
        if (!mkdtemp(dir)) { perror("mkdtemp"); abort(); }
        for (int i = 0; i < 2; i++) snprintf(paths[i], sizeof paths[i], "%s/fz-%05d-of-00002.gguf", dir, i + 1);
    }
    const size_t sizes[2] = {(size_t)(second - data), size - (size_t)(second - data)};
    const uint8_t *parts[2] = {data, second};
    for (int i = 0; i < 2; i++) {
        int fd = open(paths[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) { perror("open"); abort(); }
        for (size_t done = 0; done < sizes[i];) {
            ssize_t w = write(fd, parts[i] + done, sizes[i] - done);
            if (w <= 0) { perror("write"); abort(); }
            done += (size_t)w;
        }
        close(fd);
    }
    run(paths[0], sizes, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static g4fuzz_file file;
    const char *path = g4fuzz_file_put(&file, data, size);
    set_caps(size % 7 == 0);
    run(path, &size, 1);
    split_run(data, size);
    return 0;
}
