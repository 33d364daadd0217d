/* test_gguf.c - the GGUF reader against the shared model files and the
 * malformed corpus tests/data/bad-gguf (see tests/data/make_bad_gguf.py).
 *
 * Expected values come from outside our reader: ../shared/models/SOURCES.md
 * (hyperparameters, tensor counts and types), llama2.c's stories260K.bin
 * (the same weights, so tensor data pointers can be checked byte for byte),
 * and the corpus MANIFEST written from gguf-py's GGUFWriter output.
 */
#define _GNU_SOURCE
#include "g4test.h"

#include "gguf/gguf.h"
#include "quant/quant.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define CORPUS "tests/data/bad-gguf"

static g4_gguf *open_model(const char *rel) {
    char path[1024];
    g4_err err;
    g4_gguf *g = g4_gguf_open(g4test_path(path, sizeof path, rel), &err);
    ck_assert_msg(g != NULL, "open %s: %s", path, err.msg);
    return g;
}

static uint32_t u32_of(const g4_gguf *g, const char *key) {
    uint32_t v = 0;
    g4_err err;
    ck_assert_msg(g4_gguf_get_u32(g, key, &v, &err) == G4_OK, "%s", err.msg);
    return v;
}

/* ---- the shared models ---- */

START_TEST(test_stories260k) {
    g4_gguf *g = open_model("models/stories260K.gguf");
    ck_assert_uint_eq(g4_gguf_version(g), 3);
    ck_assert_uint_eq(g4_gguf_alignment(g), 32);
    ck_assert_uint_eq(g4_gguf_file_size(g), 1185376);
    ck_assert_uint_eq(g4_gguf_n_kv(g), 19);
    ck_assert_uint_eq(g4_gguf_n_tensors(g), 48);
    /* SOURCES.md: dim 64, 5 layers, 8 heads / 4 kv heads, ffn 172, vocab 512 */
    ck_assert_uint_eq(u32_of(g, "llama.embedding_length"), 64);
    ck_assert_uint_eq(u32_of(g, "llama.block_count"), 5);
    ck_assert_uint_eq(u32_of(g, "llama.attention.head_count"), 8);
    ck_assert_uint_eq(u32_of(g, "llama.attention.head_count_kv"), 4);
    ck_assert_uint_eq(u32_of(g, "llama.feed_forward_length"), 172);
    ck_assert_uint_eq(u32_of(g, "tokenizer.ggml.bos_token_id"), 1);
    ck_assert_uint_eq(u32_of(g, "tokenizer.ggml.eos_token_id"), 2);
    g4_err err;
    g4_str s;
    ck_assert_int_eq(g4_gguf_get_str(g, "general.architecture", &s, &err), G4_OK);
    ck_assert(g4_str_eq(s, "llama"));
    float theta;   /* absent in this file (SOURCES.md): the default applies */
    ck_assert_int_eq(g4_gguf_get_f32_or(g, "llama.rope.freq_base", 10000.0f, &theta, &err), G4_OK);
    ck_assert_float_eq(theta, 10000.0f);
    const g4_gguf_kv *tok = g4_gguf_find(g, "tokenizer.ggml.tokens");
    ck_assert_ptr_nonnull(tok);
    ck_assert_int_eq(tok->type, G4_GGUF_ARRAY);
    ck_assert_int_eq(tok->arr_type, G4_GGUF_STRING);
    ck_assert_uint_eq(tok->arr_len, 512);
    for (uint64_t i = 0; i < g4_gguf_n_tensors(g); i++) {
        const g4_tensor *t = g4_gguf_tensor_at(g, i);
        ck_assert_uint_eq(t->type, G4_TYPE_F32);   /* "all 48 tensors F32" */
        ck_assert_uint_eq(t->offset % 32, 0);
        ck_assert_uint_eq((uint64_t)((const uint8_t *)t->data - (const uint8_t *)g4_gguf_tensor_at(g, 0)->data),
                          t->offset);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        ck_assert_ptr_eq(g4_gguf_find_tensor(g, name), t);
    }
    const g4_tensor *emb = g4_gguf_find_tensor(g, "token_embd.weight");
    ck_assert_ptr_nonnull(emb);
    ck_assert_int_eq(emb->n_dims, 2);
    ck_assert_int_eq(emb->ne[0], 64);
    ck_assert_int_eq(emb->ne[1], 512);
    ck_assert_uint_eq(emb->nbytes, 64 * 512 * 4);
    ck_assert_ptr_null(g4_gguf_find_tensor(g, "token_embd.weigh"));
    ck_assert_ptr_null(g4_gguf_find(g, "llama"));

    /* stories260K.bin holds the same weights after a 28-byte header, the
       embedding table first: the tensor data pointer must land on them. */
    char path[1024];
    FILE *f = fopen(g4test_path(path, sizeof path, "models/stories260K.bin"), "rb");
    ck_assert_ptr_nonnull(f);
    static float ref[64 * 512];
    ck_assert_int_eq(fseek(f, 28, SEEK_SET), 0);
    ck_assert_uint_eq(fread(ref, sizeof(float), 64 * 512, f), 64 * 512);
    fclose(f);
    ck_assert_int_eq(memcmp(ref, emb->data, sizeof ref), 0);
    g4_gguf_close(g);
}
END_TEST

START_TEST(test_tinystories_q8_0) {
    g4_gguf *g = open_model("models/TinyStories-656K-Q8_0.gguf");
    ck_assert_uint_eq(g4_gguf_n_kv(g), 34);
    ck_assert_uint_eq(g4_gguf_n_tensors(g), 20);
    ck_assert_uint_eq(u32_of(g, "general.file_type"), 7);
    ck_assert_uint_eq(u32_of(g, "llama.embedding_length"), 128);
    ck_assert_uint_eq(u32_of(g, "llama.block_count"), 2);
    ck_assert_uint_eq(u32_of(g, "llama.context_length"), 512);
    ck_assert_uint_eq(u32_of(g, "llama.feed_forward_length"), 384);
    ck_assert_uint_eq(u32_of(g, "llama.vocab_size"), 2048);
    g4_err err;
    float eps, theta;
    ck_assert_int_eq(g4_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps, &err), G4_OK);
    ck_assert_float_eq(eps, 1e-6f);
    ck_assert_int_eq(g4_gguf_get_f32(g, "llama.rope.freq_base", &theta, &err), G4_OK);
    ck_assert_float_eq(theta, 10000.0f);
    int add_bos = -1;
    ck_assert_int_eq(g4_gguf_get_bool_or(g, "tokenizer.ggml.add_bos_token", 0, &add_bos, &err), G4_OK);
    ck_assert(add_bos == 0 || add_bos == 1);
    g4_str lic;
    ck_assert_int_eq(g4_gguf_get_str(g, "general.license", &lic, &err), G4_OK);
    ck_assert(g4_str_eq(lic, "apache-2.0"));
    /* "15 tensors Q8_0 + 5 F32 (norms)" */
    int n_q8 = 0, n_f32 = 0;
    for (uint64_t i = 0; i < g4_gguf_n_tensors(g); i++) {
        const g4_tensor *t = g4_gguf_tensor_at(g, i);
        if (t->type == G4_TYPE_Q8_0) {
            n_q8++;
            ck_assert_uint_eq(t->nbytes, (uint64_t)(t->ne[0] / 32 * 34) * (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]));
        } else if (t->type == G4_TYPE_F32) {
            n_f32++;
            ck_assert_msg(memmem(t->name.ptr, t->name.len, "norm", 4) != NULL, "F32 tensor not a norm");
        }
    }
    ck_assert_int_eq(n_q8, 15);
    ck_assert_int_eq(n_f32, 5);
    const g4_gguf_kv *lang = g4_gguf_find(g, "general.languages");
    g4_str *langs = g4_gguf_arr_strings(lang, &err);
    ck_assert_ptr_nonnull(langs);
    ck_assert_uint_eq(lang->arr_len, 1);
    ck_assert(g4_str_eq(langs[0], "en"));
    free(langs);
    /* scores: 2048 FLOAT32, all -1000 (SOURCES.md) */
    const g4_gguf_kv *sc = g4_gguf_find(g, "tokenizer.ggml.scores");
    ck_assert_uint_eq(sc->arr_len, 2048);
    double v;
    ck_assert(g4_gguf_arr_f64(sc, 2047, &v));
    ck_assert(v == -1000.0);
    ck_assert(!g4_gguf_arr_f64(sc, 2048, &v));
    g4_gguf_close(g);
}
END_TEST

START_TEST(test_vocab_only) {
    g4_gguf *g = open_model("models/ggml-vocab-llama-spm.gguf");
    ck_assert_uint_eq(g4_gguf_n_tensors(g), 0);
    ck_assert_uint_eq(g4_gguf_n_kv(g), 22);
    ck_assert_ptr_null(g4_gguf_tensor_at(g, 0));
    ck_assert_ptr_null(g4_gguf_find_tensor(g, "token_embd.weight"));
    ck_assert_uint_eq(u32_of(g, "llama.vocab_size"), 32000);
    g4_err err;
    const g4_gguf_kv *tok = g4_gguf_find(g, "tokenizer.ggml.tokens");
    g4_str *toks = g4_gguf_arr_strings(tok, &err);
    ck_assert_ptr_nonnull(toks);
    ck_assert_uint_eq(tok->arr_len, 32000);
    ck_assert(g4_str_eq(toks[0], "<unk>"));
    ck_assert(g4_str_eq(toks[1], "<s>"));
    ck_assert(g4_str_eq(toks[3], "<0x00>"));
    ck_assert(g4_str_eq(toks[29871], "\xe2\x96\x81"));   /* "▁" in the Llama-2 vocab */
    /* the iterator walks the same strings */
    g4_gguf_arr_iter it;
    g4_gguf_kv e;
    uint64_t n = 0;
    g4_gguf_arr_iter_init(&it, tok);
    while (g4_gguf_arr_next(&it, &e)) {
        g4_str s;
        ck_assert(g4_gguf_kv_str(&e, &s));
        ck_assert(s.ptr == toks[n].ptr && s.len == toks[n].len);
        n++;
    }
    ck_assert_uint_eq(n, 32000);
    free(toks);
    const g4_gguf_kv *tt = g4_gguf_find(g, "tokenizer.ggml.token_type");
    int64_t ty;
    ck_assert_int_eq(tt->arr_type, G4_GGUF_INT32);
    ck_assert(g4_gguf_arr_i64(tt, 0, &ty) && ty == 2);   /* <unk> is UNKNOWN (2) */
    ck_assert(g4_gguf_arr_i64(tt, 1, &ty) && ty == 3);   /* <s> is CONTROL (3) */
    ck_assert(g4_gguf_arr_i64(tt, 3, &ty) && ty == 6);   /* <0x00> is BYTE (6) */
    ck_assert(g4_gguf_arr_strings(g4_gguf_find(g, "tokenizer.ggml.scores"), &err) == NULL);
    ck_assert_int_eq(err.status, G4_ERR_FORMAT);
    g4_gguf_close(g);
}
END_TEST

START_TEST(test_getters_errors) {
    g4_gguf *g = open_model("models/stories260K.gguf");
    g4_err err;
    uint32_t u = 0;
    float f;
    g4_str s;
    int b;
    ck_assert_int_eq(g4_gguf_get_u32(g, "no.such.key", &u, &err), G4_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "no.such.key"));
    ck_assert_int_eq(g4_gguf_get_u32(g, "general.architecture", &u, &err), G4_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "STRING"));
    ck_assert_int_eq(g4_gguf_get_u32_or(g, "general.architecture", 5, &u, &err), G4_ERR_FORMAT);
    ck_assert_int_eq(g4_gguf_get_u32_or(g, "no.such.key", 5, &u, &err), G4_OK);
    ck_assert_uint_eq(u, 5);
    ck_assert_int_eq(g4_gguf_get_str(g, "llama.block_count", &s, &err), G4_ERR_FORMAT);
    ck_assert_int_eq(g4_gguf_get_f32(g, "general.name", &f, &err), G4_ERR_FORMAT);
    ck_assert_int_eq(g4_gguf_get_f32(g, "llama.block_count", &f, &err), G4_OK);   /* integer -> float */
    ck_assert_float_eq(f, 5.0f);
    ck_assert_int_eq(g4_gguf_get_bool_or(g, "llama.block_count", 0, &b, &err), G4_ERR_FORMAT);
    ck_assert_int_eq(g4_gguf_get_bool_or(g, "no.such.key", 1, &b, &err), G4_OK);
    ck_assert_int_eq(b, 1);
    int64_t i;
    double d;
    ck_assert(g4_gguf_kv_as_i64(g4_gguf_find(g, "llama.block_count"), &i) && i == 5);
    ck_assert(!g4_gguf_kv_as_i64(g4_gguf_find(g, "general.name"), &i));
    ck_assert(!g4_gguf_kv_as_i64(g4_gguf_find(g, "llama.attention.layer_norm_rms_epsilon"), &i));
    ck_assert(g4_gguf_kv_as_f64(g4_gguf_find(g, "llama.attention.layer_norm_rms_epsilon"), &d) && d > 0 && d < 1e-3);
    ck_assert_ptr_null(g4_gguf_kv_at(g, 19));
    g4_gguf_close(g);
}
END_TEST

START_TEST(test_missing_file) {
    g4_err err;
    ck_assert_ptr_null(g4_gguf_open("/nonexistent/dir/model.gguf", &err));
    ck_assert_int_eq(err.status, G4_ERR_IO);
    ck_assert_int_eq(err.sys_errno, ENOENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/dir/model.gguf"));
    ck_assert_ptr_null(g4_gguf_open("/tmp", &err));
    ck_assert_int_eq(err.status, G4_ERR_IO);
    ck_assert_int_eq(err.sys_errno, EISDIR);
}
END_TEST

/* ---- the malformed corpus ---- */

static g4_status status_named(const char *s) {
    return !strcmp(s, "OK") ? G4_OK : !strcmp(s, "FORMAT") ? G4_ERR_FORMAT
         : !strcmp(s, "UNSUPPORTED") ? G4_ERR_UNSUPPORTED : !strcmp(s, "LIMIT") ? G4_ERR_LIMIT : -1;
}

START_TEST(test_corpus_manifest) {
    FILE *m = fopen(CORPUS "/MANIFEST.txt", "r");
    ck_assert_msg(m != NULL, "run from the repo root: " CORPUS "/MANIFEST.txt not found");
    char line[512];
    int n = 0, n_bad = 0;
    while (fgets(line, sizeof line, m)) {
        char *file = strtok(line, "\t"), *st = strtok(NULL, "\t"), *kw = strtok(NULL, "\n");
        ck_assert(file && st && kw);
        char path[600];
        snprintf(path, sizeof path, CORPUS "/%s", file);
        g4_err err;
        g4_gguf *g = g4_gguf_open(path, &err);
        g4_status want = status_named(st);
        if (want == G4_OK) {
            ck_assert_msg(g != NULL, "%s should open: %s", file, err.msg);
            g4_gguf_close(g);
        } else {
            ck_assert_msg(g == NULL, "%s opened but should fail with %s", file, st);
            ck_assert_msg(err.status == want, "%s: status %d, want %s (%s)", file, err.status, st, err.msg);
            ck_assert_msg(strstr(err.msg, kw) != NULL, "%s: message '%s' lacks '%s'", file, err.msg, kw);
            ck_assert_msg(strstr(err.msg, file) != NULL, "%s: message does not name the file", file);
            n_bad++;
        }
        n++;
    }
    fclose(m);
    ck_assert_int_ge(n_bad, 35);
    ck_assert_int_eq(n - n_bad, 2);
}
END_TEST

START_TEST(test_nested_arrays) {
    g4_err err;
    g4_gguf *g = g4_gguf_open(CORPUS "/valid_nested.gguf", &err);
    ck_assert_msg(g != NULL, "%s", err.msg);
    const g4_gguf_kv *kv = g4_gguf_find(g, "test.nested");
    ck_assert_ptr_nonnull(kv);
    /* [[[[[[[[7]]]]]]]]: descend 7 levels of one-element arrays, then INT32 7 */
    g4_gguf_kv cur = *kv, e;
    for (int depth = 0; depth < 7; depth++) {
        ck_assert_int_eq(cur.type, G4_GGUF_ARRAY);
        ck_assert_int_eq(cur.arr_type, G4_GGUF_ARRAY);
        ck_assert_uint_eq(cur.arr_len, 1);
        g4_gguf_arr_iter it;
        g4_gguf_arr_iter_init(&it, &cur);
        ck_assert(g4_gguf_arr_next(&it, &e));
        ck_assert(!g4_gguf_arr_next(&it, &e));
        cur = e;
    }
    int64_t v;
    ck_assert(g4_gguf_arr_i64(&cur, 0, &v) && v == 7);
    /* [["a","b"],["c"]] */
    kv = g4_gguf_find(g, "test.nested_strs");
    g4_gguf_arr_iter it, it2;
    g4_gguf_arr_iter_init(&it, kv);
    const char *want[] = {"a", "b", "c"};
    int k = 0;
    while (g4_gguf_arr_next(&it, &e)) {
        g4_gguf_kv s;
        g4_gguf_arr_iter_init(&it2, &e);
        while (g4_gguf_arr_next(&it2, &s)) {
            g4_str str;
            ck_assert(g4_gguf_kv_str(&s, &str));
            ck_assert(k < 3 && g4_str_eq(str, want[k]));
            k++;
        }
    }
    ck_assert_int_eq(k, 3);
    g4_gguf_close(g);
}
END_TEST

/* Every prefix of a valid file is refused cleanly (no crash, FORMAT), and
   every single-byte corruption of its header region either opens or fails
   with a status, never reads outside the file (run under ASan to see). */
static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n);
    ck_assert_uint_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

START_TEST(test_every_truncation) {
    size_t n;
    uint8_t *b = slurp(CORPUS "/valid_base.gguf", &n);
    char tmp[] = "/tmp/g4test_gguf_XXXXXX";
    int fd = mkstemp(tmp);
    ck_assert_int_ge(fd, 0);
    close(fd);
    /* the last tensor's data ends before the final alignment padding */
    g4_err err;
    g4_gguf *g = g4_gguf_open(CORPUS "/valid_base.gguf", &err);
    const g4_tensor *last = g4_gguf_tensor_at(g, g4_gguf_n_tensors(g) - 1);
    size_t end = (size_t)(g4_gguf_data_offset(g) + last->offset + last->nbytes);
    g4_gguf_close(g);
    for (size_t len = 0; len < end; len++) {
        spit(tmp, b, len);
        g = g4_gguf_open(tmp, &err);
        ck_assert_msg(g == NULL, "prefix of %zu bytes opened", len);
        ck_assert_msg(err.status == G4_ERR_FORMAT, "prefix %zu: status %d (%s)", len, err.status, err.msg);
    }
    unlink(tmp);
    free(b);
}
END_TEST

START_TEST(test_byte_corruption) {
    size_t n;
    uint8_t *b = slurp(CORPUS "/valid_base.gguf", &n);
    char tmp[] = "/tmp/g4test_gguf_XXXXXX";
    int fd = mkstemp(tmp);
    ck_assert_int_ge(fd, 0);
    close(fd);
    const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
    int opened = 0, failed = 0;
    for (size_t pos = 4; pos < 512 && pos < n; pos++) {   /* header, kvs, tensor infos */
        for (size_t k = 0; k < sizeof vals; k++) {
            uint8_t save = b[pos];
            b[pos] = vals[k];
            spit(tmp, b, n);
            b[pos] = save;
            g4_err err;
            g4_gguf *g = g4_gguf_open(tmp, &err);
            if (g) {
                /* whatever opened must be safe to walk completely */
                for (uint64_t i = 0; i < g4_gguf_n_kv(g); i++) {
                    const g4_gguf_kv *kv = g4_gguf_kv_at(g, i);
                    if (kv->type == G4_GGUF_ARRAY) {
                        g4_gguf_arr_iter it;
                        g4_gguf_kv e;
                        g4_gguf_arr_iter_init(&it, kv);
                        while (g4_gguf_arr_next(&it, &e)) {}
                    }
                }
                for (uint64_t i = 0; i < g4_gguf_n_tensors(g); i++) {
                    const g4_tensor *t = g4_gguf_tensor_at(g, i);
                    const uint8_t *p = t->data;
                    volatile uint8_t x = p[0] ^ p[t->nbytes - 1];
                    (void)x;
                }
                g4_gguf_close(g);
                opened++;
            } else {
                ck_assert_msg(err.status >= G4_ERR_IO && err.status <= G4_ERR_LIMIT && err.msg[0],
                              "pos %zu: bad status %d", pos, err.status);
                failed++;
            }
        }
    }
    ck_assert_int_gt(opened, 0);
    ck_assert_int_gt(failed, 0);
    unlink(tmp);
    free(b);
}
END_TEST

/* ---- caps ---- */

static void expect_limit(const char *rel, const char *env, const char *val) {
    char path[1024];
    g4_err err;
    setenv(env, val, 1);
    g4_gguf *g = g4_gguf_open(g4test_path(path, sizeof path, rel), &err);
    unsetenv(env);
    ck_assert_msg(g == NULL, "%s=%s: opened", env, val);
    ck_assert_msg(err.status == G4_ERR_LIMIT, "%s: status %d (%s)", env, err.status, err.msg);
    ck_assert_msg(strstr(err.msg, env) != NULL, "message '%s' does not name %s", err.msg, env);
}

START_TEST(test_caps) {
    expect_limit("models/stories260K.gguf", G4_GGUF_MAX_TENSORS_ENV, "47");
    expect_limit("models/stories260K.gguf", G4_GGUF_MAX_KV_ENV, "18");
    expect_limit("models/ggml-vocab-llama-spm.gguf", G4_GGUF_MAX_ARRAY_ENV, "31999");
    expect_limit("models/TinyStories-656K-Q8_0.gguf", G4_GGUF_MAX_STRING_ENV, "8");
    expect_limit("models/ggml-vocab-llama-spm.gguf", G4_GGUF_MAX_META_ENV, "100000");
    /* at the limit itself, the file opens */
    setenv(G4_GGUF_MAX_TENSORS_ENV, "48", 1);
    setenv(G4_GGUF_MAX_KV_ENV, "19", 1);
    g4_gguf *g = open_model("models/stories260K.gguf");
    g4_gguf_close(g);
    /* a cap that is not a number is the caller's mistake */
    setenv(G4_GGUF_MAX_TENSORS_ENV, "lots", 1);
    char path[1024];
    g4_err err;
    ck_assert_ptr_null(g4_gguf_open(g4test_path(path, sizeof path, "models/stories260K.gguf"), &err));
    ck_assert_int_eq(err.status, G4_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, G4_GGUF_MAX_TENSORS_ENV));
    unsetenv(G4_GGUF_MAX_TENSORS_ENV);
    unsetenv(G4_GGUF_MAX_KV_ENV);
}
END_TEST

static Suite *gguf_suite(void) {
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("models");
    tcase_add_test(tc, test_stories260k);
    tcase_add_test(tc, test_tinystories_q8_0);
    tcase_add_test(tc, test_vocab_only);
    tcase_add_test(tc, test_getters_errors);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_caps);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("malformed");
    tcase_set_timeout(bad, 60);
    tcase_add_test(bad, test_corpus_manifest);
    tcase_add_test(bad, test_nested_arrays);
    tcase_add_test(bad, test_every_truncation);
    tcase_add_test(bad, test_byte_corruption);
    suite_add_tcase(s, bad);
    return s;
}

G4TEST_MAIN(gguf_suite)
