/* model.c - load a GGUF model: pick its architecture, build the tokenizer
 * and the thread pool, validate tensors; dispatch forward passes.
 *
 * Everything architecture-specific lives behind the g4_arch vtable (arch.h)
 * in its own file (llama.c, ...). This file holds what every architecture
 * shares: the registry, hyperparameter and tensor lookup with load-time
 * checks, and argument checks of the public g4_model_* API.
 */
#include "arch.h"

#include <hwloc.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../quant/quant.h"
#include "ops.h"
#include "ops_gemma.h"

/* ------------------------------------------------ architecture registry */

/* general.architecture value -> implementation. */
static const g4_arch *const g4_archs[] = {
    &g4_arch_llama,
    &g4_arch_gemma4,
    &g4_arch_gemma3,
    &g4_arch_gemma4_assistant,
};
#define N_ARCHS (sizeof g4_archs / sizeof g4_archs[0])

static const g4_arch *find_arch(g4_str name) {
    for (size_t i = 0; i < N_ARCHS; i++)
        if (g4_str_eq(name, g4_archs[i]->name)) return g4_archs[i];
    return NULL;
}

static void list_archs(char *buf, size_t cap) {
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_ARCHS && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%s", i ? ", " : "", g4_archs[i]->name);
}

/* ------------------------------------------------------- thread count */

/* Physical cores usable by this process: hwloc drops cores whose PUs are
 * outside our CPU affinity mask, and SMT siblings share a core's FP units,
 * so more threads than cores only adds contention (llama.cpp's
 * cpu_get_num_physical_cores makes the same choice). */
static int physical_cores(void) {
    int n = 0;
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) == 0) {
        if (hwloc_topology_load(topo) == 0)
            n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
        hwloc_topology_destroy(topo);
    }
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    return n;
}

/* ------------------------------------------------------- hyperparameters */

static void arch_key(const g4_model *m, const char *suffix, char *buf, size_t cap) {
    snprintf(buf, cap, "%s.%s", m->arch->name, suffix);
}

g4_status g4_hp_u32(const g4_model *m, const char *suffix, uint32_t *out, g4_err *err) {
    char key[256];
    arch_key(m, suffix, key, sizeof key);
    return g4_gguf_get_u32(m->gguf, key, out, err);
}

g4_status g4_hp_u32_or(const g4_model *m, const char *suffix, uint32_t dflt, uint32_t *out, g4_err *err) {
    char key[256];
    arch_key(m, suffix, key, sizeof key);
    return g4_gguf_get_u32_or(m->gguf, key, dflt, out, err);
}

g4_status g4_hp_f32(const g4_model *m, const char *suffix, float *out, g4_err *err) {
    char key[256];
    arch_key(m, suffix, key, sizeof key);
    return g4_gguf_get_f32(m->gguf, key, out, err);
}

g4_status g4_hp_f32_or(const g4_model *m, const char *suffix, float dflt, float *out, g4_err *err) {
    char key[256];
    arch_key(m, suffix, key, sizeof key);
    return g4_gguf_get_f32_or(m->gguf, key, dflt, out, err);
}

g4_status g4_hp_u32_layers(const g4_model *m, const char *suffix, int n_layer, const uint32_t *dflt,
                           uint32_t *out, g4_err *err) {
    char key[256];
    arch_key(m, suffix, key, sizeof key);
    const g4_gguf_kv *kv = g4_gguf_find(m->gguf, key);
    if (!kv) {
        if (!dflt) return g4_err_set(err, G4_ERR_FORMAT, "missing key '%s'", key);
        for (int il = 0; il < n_layer; il++) out[il] = dflt[il];
        return G4_OK;
    }
    if (kv->type != G4_GGUF_ARRAY) {
        uint32_t v;
        g4_status st = g4_gguf_get_u32(m->gguf, key, &v, err);
        if (st != G4_OK) return st;
        for (int il = 0; il < n_layer; il++) out[il] = v;
        return G4_OK;
    }
    if (kv->arr_len != (uint64_t)n_layer)
        return g4_err_set(err, G4_ERR_FORMAT, "key '%s' is an array of %llu values, expected one per layer (%d)",
                          key, (unsigned long long)kv->arr_len, n_layer);
    for (int il = 0; il < n_layer; il++) {
        int64_t v;
        if (kv->arr_type == G4_GGUF_BOOL) v = kv->data[il] != 0;
        else if (!g4_gguf_arr_i64(kv, (uint64_t)il, &v))
            return g4_err_set(err, G4_ERR_FORMAT, "key '%s' is an array of %s, expected integers",
                              key, g4_gguf_vtype_name(kv->arr_type));
        if (v < 0 || v > UINT32_MAX)
            return g4_err_set(err, G4_ERR_FORMAT, "key '%s'[%d] = %" PRId64 " is out of range", key, il, v);
        out[il] = (uint32_t)v;
    }
    return G4_OK;
}

/* ---------------------------------------------------------------- tensors */

static void shape_str(char *buf, size_t cap, const int64_t *ne, int n_dims) {
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n_dims && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%" PRId64, i ? ", " : "", ne[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
}

/* The checks of g4_model_tensor for any expected shape want[0..n_dims). */
static g4_status check_tensor(const g4_model *m, const char *name, const int64_t *want_in, int want_dims,
                              int optional, const g4_tensor **out, g4_err *err) {
    *out = NULL;
    const g4_tensor *t = g4_gguf_find_tensor(m->gguf, name);
    if (!t) {
        if (optional) return G4_OK;
        return g4_err_set(err, G4_ERR_FORMAT, "tensor '%s' is missing", name);
    }
    /* expected shape, padded with 1s as ggml pads unused dims */
    int64_t want[G4_MAX_DIMS] = { 1, 1, 1, 1 };
    for (int i = 0; i < want_dims; i++) want[i] = want_in[i];
    for (int i = 0; i < G4_MAX_DIMS; i++) {
        if (t->ne[i] != want[i]) {
            char ws[96], fs[96];
            shape_str(ws, sizeof ws, want, want_dims);
            shape_str(fs, sizeof fs, t->ne, t->n_dims > 0 ? (int)t->n_dims : 1);
            return g4_err_set(err, G4_ERR_FORMAT, "tensor '%s' has shape %s, expected %s", name, fs, ws);
        }
    }
    if (!g4_type_supported(t->type)) {
        const char *tn = g4_type_name(t->type);
        return g4_err_set(err, G4_ERR_UNSUPPORTED,
                          "tensor '%s' has type %s (ggml type %u), which this build cannot compute with",
                          name, tn ? tn : "unknown", t->type);
    }
    if (g4_row_size(t->type, t->ne[0]) == 0)
        return g4_err_set(err, G4_ERR_FORMAT, "tensor '%s': row length %" PRId64
                          " is not a multiple of the %s block size %zu",
                          name, t->ne[0], g4_type_name(t->type), g4_blck_size(t->type));
    *out = t;
    return G4_OK;
}

g4_status g4_model_tensor(const g4_model *m, const char *name, int64_t ne0, int64_t ne1,
                          int optional, const g4_tensor **out, g4_err *err) {
    const int64_t want[2] = { ne0, ne1 > 0 ? ne1 : 1 };
    return check_tensor(m, name, want, ne1 > 0 ? 2 : 1, optional, out, err);
}

g4_status g4_model_blk_tensor3(const g4_model *m, int il, const char *suffix, int64_t ne0, int64_t ne1,
                               int64_t ne2, int optional, const g4_tensor **out, g4_err *err) {
    char name[256];
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);
    const int64_t want[3] = { ne0, ne1, ne2 };
    return check_tensor(m, name, want, 3, optional, out, err);
}

g4_status g4_model_blk_tensor(const g4_model *m, int il, const char *suffix, int64_t ne0, int64_t ne1,
                              int optional, const g4_tensor **out, g4_err *err) {
    char name[256];
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);
    return g4_model_tensor(m, name, ne0, ne1, optional, out, err);
}

g4_status g4_model_vec(const g4_model *m, const char *name, int64_t n, int optional,
                       const float **out, g4_err *err) {
    const g4_tensor *t;
    *out = NULL;
    g4_status st = g4_model_tensor(m, name, n, 0, optional, &t, err);
    if (st != G4_OK || !t) return st;
    if (t->type != G4_TYPE_F32)
        return g4_err_set(err, G4_ERR_UNSUPPORTED, "tensor '%s' has type %s; 1-D weights must be F32",
                          name, g4_type_name(t->type));
    *out = t->data;
    return G4_OK;
}

g4_status g4_model_blk_vec(const g4_model *m, int il, const char *suffix, int64_t n, int optional,
                           const float **out, g4_err *err) {
    char name[256];
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);
    return g4_model_vec(m, name, n, optional, out, err);
}

g4_status g4_model_resolve_ctx(g4_model *m, g4_err *err) {
    if (m->n_ctx <= 0) {
        int32_t n = m->n_ctx_train > 0 ? m->n_ctx_train : G4_DEFAULT_CTX_CAP;
        m->n_ctx = n < G4_DEFAULT_CTX_CAP ? n : G4_DEFAULT_CTX_CAP;
    }
    /* The KV cache is sized by n_ctx, so the cap is checked before it is
       allocated; like the GGUF reader's caps it can be raised from the
       environment. */
    long long cap = G4_MAX_CTX;
    const char *env = getenv(G4_MAX_CTX_ENV);
    if (env && *env) {
        char *end;
        cap = strtoll(env, &end, 10);
        if (*end || cap <= 0)
            return g4_err_set(err, G4_ERR_INVALID, "%s='%s' is not a positive integer", G4_MAX_CTX_ENV, env);
    }
    if (m->n_ctx > cap)
        return g4_err_set(err, G4_ERR_LIMIT,
                          "context of %d tokens exceeds the cap of %lld tokens (raise it with "
                          G4_MAX_CTX_ENV "=<n>; the KV cache grows with it)", m->n_ctx, cap);
    return G4_OK;
}

uint64_t g4_model_weights_bytes(const g4_model *m) {
    uint64_t total = 0;
    for (uint64_t i = 0; i < g4_gguf_n_tensors(m->gguf); i++) total += g4_gguf_tensor_at(m->gguf, i)->nbytes;
    return total;
}

/* ------------------------------------------------------------- build/free */

/* Prefix err->msg with the file path, for errors raised below this file
 * (tokenizer, architecture) whose messages name only a key or tensor. */
static void prefix_path(g4_err *err, const char *path) {
    if (!err) return;
    if (strncmp(err->msg, path, strlen(path)) == 0) return;   /* the GGUF reader's messages have it */
    char tmp[sizeof err->msg];
    memcpy(tmp, err->msg, sizeof tmp);
    tmp[sizeof tmp - 1] = '\0';
    int k = snprintf(err->msg, sizeof err->msg, "%s: ", path);
    size_t off = k < 0 ? 0 : (size_t)k < sizeof err->msg ? (size_t)k : sizeof err->msg - 1;
    for (size_t i = 0; tmp[i] && off < sizeof err->msg - 1; i++) err->msg[off++] = tmp[i];
    err->msg[off] = '\0';
}

/* The matrices a forward pass multiplies, repacked for the vectorized
 * kernels now (ops.h g4_repack_all, across the pool's threads) rather than
 * on their first use, so the first token after a load does not pay for it
 * (issue 14's cold start: benchmarks/cold_start.py). Every 2-D weight and
 * every expert of a 3-D one is a matrix some architecture multiplies, but
 * for the embedding tables, which are read a row per token: token_embd
 * unless it is also the output (tied: no output.weight), and Gemma 4's
 * per_layer_token_embd. A table repacked by mistake would still be read
 * correctly (from the file's pages), it would only cost memory.
 * GEMMA4STACK_REPACK_AT_LOAD=0: on first use, as before. */
static void repack_at_load(g4_model *m) {
    const char *env = getenv("GEMMA4STACK_REPACK_AT_LOAD");
    if (env && !strcmp(env, "0")) return;
    const int tied = !g4_gguf_find_tensor(m->gguf, "output.weight");
    const uint64_t nt = g4_gguf_n_tensors(m->gguf);
    size_t n = 0, cap = 0;
    g4_tensor *W = NULL;
    for (uint64_t i = 0; i < nt; i++) {
        const g4_tensor *t = g4_gguf_tensor_at(m->gguf, i);
        if (!g4_repack_supported(t->type, t->ne[1], t->ne[0]) || t->ne[3] != 1 || t->n_dims < 2) continue;
        if (g4_str_eq(t->name, "per_layer_token_embd.weight") || (!tied && g4_str_eq(t->name, "token_embd.weight")))
            continue;
        if (t->name.len < 7 || memcmp(t->name.ptr + t->name.len - 7, ".weight", 7)) continue;
        if (n + (size_t)t->ne[2] > cap) {
            size_t nc = cap ? 2 * cap : 256;
            while (nc < n + (size_t)t->ne[2]) nc *= 2;
            g4_tensor *nw = realloc(W, sizeof *W * nc);
            if (!nw) break;   /* the rest on first use */
            W = nw;
            cap = nc;
        }
        for (int64_t e = 0; e < t->ne[2]; e++) W[n++] = t->ne[2] == 1 ? *t : g4_expert_view(t, e);
    }
    if (n) g4_repack_all(m->pool, W, n > INT32_MAX ? INT32_MAX : (int)n);
    free(W);
}

g4_model *g4_model_load(const char *path, const g4_model_params *params, g4_err *err) {
    g4_err_clear(err);
    g4_model *m = calloc(1, sizeof *m);
    if (!m) { g4_err_set(err, G4_ERR_NOMEM, "%s: out of memory", path); return NULL; }
    m->n_ctx = params ? params->n_ctx : 0;
    m->n_threads = params && params->n_threads > 0 ? params->n_threads : physical_cores();
    m->kv_type = -1;
    if (params && params->kv_type && *params->kv_type) {
        const char *t = params->kv_type;
        m->kv_type = !strcmp(t, "f16") ? G4_KV_F16 : !strcmp(t, "f32") ? G4_KV_F32 : !strcmp(t, "q8_0") ? G4_KV_Q8_0 : -2;
        if (m->kv_type == -2) {
            g4_err_set(err, G4_ERR_INVALID, "KV cache type '%.32s' is not one of f16, q8_0, f32", t);
            free(m);
            return NULL;
        }
    }

    m->gguf = g4_gguf_open(path, err);
    if (!m->gguf) goto fail;

    /* the architecture first: an unknown one should be reported as such,
     * not as whatever key or tensor it happens to lack */
    g4_str arch;
    if (g4_gguf_get_str(m->gguf, "general.architecture", &arch, err) != G4_OK) {
        prefix_path(err, path);
        goto fail;
    }
    m->arch = find_arch(arch);
    if (!m->arch) {
        char names[256];
        list_archs(names, sizeof names);
        g4_err_set(err, G4_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (supported: %s)",
                   path, (int)(arch.len > 64 ? 64 : arch.len), arch.ptr, names);
        goto fail;
    }

    m->tok = g4_tokenizer_from_gguf(m->gguf, err);
    if (!m->tok) { prefix_path(err, path); goto fail; }

    m->pool = g4_pool_create(m->n_threads, err);
    if (!m->pool) goto fail;

    if (m->arch->load(m, err) != G4_OK) {
        prefix_path(err, path);
        goto fail;
    }
    /* llama.cpp sizes token_embd by the tokenizer (llama_model::load_tensors,
     * n_vocab = vocab.n_tokens()), so a file whose embedding rows and token
     * list disagree is inconsistent: ids past either end would be out of range. */
    if (m->kv_type < 0) {
        const g4_tensor *wk = g4_gguf_find_tensor(m->gguf, "blk.0.attn_k.weight");
        m->kv_type = wk && wk->type == G4_TYPE_F32 ? G4_KV_F32 : G4_KV_F16;
    }
    if (m->n_vocab != g4_tokenizer_n_vocab(m->tok)) {
        g4_err_set(err, G4_ERR_FORMAT, "%s: token_embd.weight has %d rows but tokenizer.ggml.tokens has %d tokens",
                   path, m->n_vocab, g4_tokenizer_n_vocab(m->tok));
        goto fail;
    }
    repack_at_load(m);
    return m;
fail:
    g4_model_free(m);
    return NULL;
}

void g4_model_free(g4_model *m) {
    if (!m) return;
    g4_kvc_free(m->kv1);
    if (m->arch && m->impl) m->arch->free(m);
    g4_pool_free(m->pool);
    g4_tokenizer_free(m->tok);
    g4_gguf_close(m->gguf);
    free(m);
}

/* ---------------------------------------------------------------- access */

const g4_gguf *g4_model_gguf(const g4_model *m) { return m->gguf; }
const g4_tokenizer *g4_model_tokenizer(const g4_model *m) { return m->tok; }
const char *g4_model_arch(const g4_model *m) { return m->arch->name; }
int32_t g4_model_n_vocab(const g4_model *m) { return m->n_vocab; }
int32_t g4_model_n_ctx(const g4_model *m) { return m->n_ctx; }
int32_t g4_model_n_threads(const g4_model *m) { return m->n_threads; }

g4_model_memory g4_model_memory_usage(const g4_model *m) {
    g4_model_memory mem = m->arch->memory(m);
    if (m->kv1) mem.kv_bytes += g4_kvc_get_stats(m->kv1).bytes;
    return mem;
}

int32_t g4_model_kv_keep(const g4_model *m, int32_t n_keep) {
    if (n_keep <= 0) return 0;
    return n_keep > m->n_ctx ? m->n_ctx : n_keep;
}

int32_t g4_model_kv_type(const g4_model *m) { return m->kv_type; }

int g4_model_kv_layers(const g4_model *m, g4_kv_layer *out) { return m->arch->kv_layers(m, out); }

int32_t g4_model_set_hidden_out(g4_model *m, float *buf) {
    g4_mtp_source src;
    if (g4_gemma4_mtp_source(m, &src, NULL) != G4_OK) return 0;
    m->hidden_out = buf;
    return src.n_embd;
}

g4_kvcache *g4_model_kv1(g4_model *m) { return m->kv1; }

/* ---------------------------------------------------------------- forward */

g4_status g4_model_forward_batch(g4_model *m, const g4_batch *b, g4_kvcache *kv, float *logits, g4_err *err) {
    if (!b || b->n <= 0 || !b->token || !b->pos || !b->seq || !b->logits || !kv)
        return g4_err_set(err, G4_ERR_INVALID, "forward: need a batch of at least one token and a KV cache");
    int any = 0;
    for (int32_t i = 0; i < b->n; i++) {
        if (b->token[i] < 0 || b->token[i] >= m->n_vocab)
            return g4_err_set(err, G4_ERR_INVALID, "forward: token id %d (at index %d) is outside the vocabulary 0..%d",
                              b->token[i], i, m->n_vocab - 1);
        if (b->pos[i] < 0 || b->pos[i] >= m->n_ctx)
            return g4_err_set(err, G4_ERR_LIMIT, "forward: position %d is outside the context of %d tokens",
                              b->pos[i], m->n_ctx);
        any |= b->logits[i] != 0;
    }
    if (any && !logits) return g4_err_set(err, G4_ERR_INVALID, "forward: logits wanted but no buffer given");
    return m->arch->forward(m, b, kv, logits, err);
}

/* The single-sequence cache: one slot, every position kept. */
static g4_status ensure_kv1(g4_model *m, g4_err *err) {
    if (m->kv1) return G4_OK;
    g4_kv_layer layers[4096];
    const int n = m->arch->kv_layers(m, layers);
    if (n == 0)   /* a gemma4-assistant reads its target's cache (model.h g4_mtp_step) */
        return g4_err_set(err, G4_ERR_UNSUPPORTED, "forward: a %s model cannot run on its own (an MTP assistant "
                          "drafts for a gemma4 model)", m->arch->name);
    const g4_kvc_params p = { .n_seq = 1, .n_ctx = m->n_ctx, .n_batch = m->n_ctx, .type = m->kv_type,
                              .n_threads = m->n_threads, .keep_window = 1 };
    if (!(m->kv1 = g4_kvc_create(layers, n, &p, err))) return err ? err->status : G4_ERR_NOMEM;
    int32_t cached, tok0 = 0;
    if (g4_kvc_seq_begin(m->kv1, 0, &tok0, 1, m->n_ctx, 0, &cached, err) != 1) {
        g4_kvc_free(m->kv1);
        m->kv1 = NULL;
        return g4_err_set(err, G4_ERR_NOMEM, "forward: cannot start the single-sequence KV cache");
    }
    return G4_OK;
}

g4_status g4_model_forward(g4_model *m, const int32_t *tokens, int32_t n, int32_t pos,
                           float *logits, int all_logits, g4_err *err) {
    if (n <= 0 || !tokens || !logits)
        return g4_err_set(err, G4_ERR_INVALID, "forward: need at least one token and a logits buffer");
    if (pos < 0)
        return g4_err_set(err, G4_ERR_INVALID, "forward: position %d is negative", pos);
    if ((int64_t)pos + n > m->n_ctx)
        return g4_err_set(err, G4_ERR_LIMIT,
                          "forward: positions %d..%d exceed the context of %d tokens",
                          pos, pos + n - 1, m->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab)
            return g4_err_set(err, G4_ERR_INVALID, "forward: token id %d (at index %d) is outside the vocabulary 0..%d",
                              tokens[i], i, m->n_vocab - 1);
    g4_status st = ensure_kv1(m, err);
    if (st != G4_OK) return st;
    if (pos > g4_kvc_seq_len(m->kv1, 0))
        return g4_err_set(err, G4_ERR_INVALID, "forward: position %d is past the %d positions the KV cache holds",
                          pos, g4_kvc_seq_len(m->kv1, 0));
    if ((st = g4_kvc_seq_prepare(m->kv1, 0, pos, n, tokens, err)) != G4_OK) return st;
    int32_t *buf = malloc(sizeof(int32_t) * 2 * (size_t)n);
    int8_t *want = malloc((size_t)n);
    if (!buf || !want) {
        free(buf); free(want);
        return g4_err_set(err, G4_ERR_NOMEM, "forward: out of memory");
    }
    int32_t *ps = buf, *sq = buf + n;
    for (int32_t i = 0; i < n; i++) { ps[i] = pos + i; sq[i] = 0; want[i] = all_logits || i == n - 1; }
    const g4_batch b = { n, tokens, ps, sq, want };
    st = m->arch->forward(m, &b, m->kv1, logits, err);
    g4_kvc_seq_commit(m->kv1, 0, st == G4_OK ? pos + n : pos);
    free(buf);
    free(want);
    return st;
}
