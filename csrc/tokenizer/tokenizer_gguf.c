/* tokenizer_gguf.c - read a g4_vocab_desc from GGUF metadata (llama.cpp
 * key names and defaults, src/llama-vocab.cpp llama_vocab::impl::load) and
 * build the tokenizer. The GGUF may be closed afterwards: everything is copied. */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Numeric array `key` with at least n elements as float/int32, or absent. */
static g4_status read_numbers(const g4_gguf *g, const char *key, int32_t n, int as_int,
                              float **fout, int32_t **iout, g4_err *err) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    if (!kv) return G4_OK;
    if (kv->type != G4_GGUF_ARRAY || kv->arr_type == G4_GGUF_STRING || kv->arr_type == G4_GGUF_ARRAY)
        return g4_err_set(err, G4_ERR_FORMAT, "%s: %s is not a numeric array", g4_gguf_path(g), key);
    if (kv->arr_len < (uint64_t)n)
        return g4_err_set(err, G4_ERR_FORMAT, "%s: %s has %llu entries for %d tokens",
                          g4_gguf_path(g), key, (unsigned long long)kv->arr_len, n);
    void *buf = malloc((size_t)n * 4 + 4);
    if (!buf) return g4_err_set(err, G4_ERR_NOMEM, "%s: out of memory for %s", g4_gguf_path(g), key);
    for (int32_t i = 0; i < n; i++) {
        double v;
        int64_t w;
        if (as_int ? !g4_gguf_arr_i64(kv, (uint64_t)i, &w) : !g4_gguf_arr_f64(kv, (uint64_t)i, &v)) {
            free(buf);
            return g4_err_set(err, G4_ERR_FORMAT, "%s: %s[%d] is not a number", g4_gguf_path(g), key, i);
        }
        if (as_int) ((int32_t *)buf)[i] = w < INT32_MIN || w > INT32_MAX ? 0 : (int32_t)w;
        else ((float *)buf)[i] = (float)v;
    }
    if (as_int) *iout = buf; else *fout = buf;
    return G4_OK;
}

/* Special id from `key`: llama.cpp keeps the default when the key is absent
 * or out of range (stories260K stores 4294967295 for "none"). */
static int32_t special_id(const g4_gguf *g, const char *key, int32_t dflt, int32_t n) {
    const g4_gguf_kv *kv = g4_gguf_find(g, key);
    int64_t v;
    if (kv && g4_gguf_kv_as_i64(kv, &v) && v >= 0 && v < n) return (int32_t)v;
    return dflt >= 0 && dflt < n ? dflt : -1;
}

g4_tokenizer *g4_tokenizer_from_gguf(const g4_gguf *g, g4_err *err) {
    g4_str model;
    char model_c[64];
    if (g4_gguf_get_str(g, "tokenizer.ggml.model", &model, err)) return NULL;
    snprintf(model_c, sizeof model_c, "%.*s", (int)(model.len < 63 ? model.len : 63), model.ptr);
    int spm = strcmp(model_c, "llama") == 0, gemma4 = strcmp(model_c, "gemma4") == 0;
    if (!spm && !gemma4) {
        g4_err_set(err, G4_ERR_UNSUPPORTED,
                   "%s: tokenizer.ggml.model '%s' is not supported (only 'llama' SentencePiece and 'gemma4')",
                   g4_gguf_path(g), model_c);
        return NULL;
    }

    g4_tokenizer *t = NULL;
    g4_str *tokens = NULL, *merges = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    const g4_gguf_kv *kv = g4_gguf_find(g, "tokenizer.ggml.tokens");
    if (!kv) {
        g4_err_set(err, G4_ERR_FORMAT, "%s: tokenizer.ggml.tokens is missing", g4_gguf_path(g));
        return NULL;
    }
    if (kv->type != G4_GGUF_ARRAY || kv->arr_len > INT32_MAX) {
        g4_err_set(err, G4_ERR_FORMAT, "%s: tokenizer.ggml.tokens is not an array of strings", g4_gguf_path(g));
        return NULL;
    }
    int32_t n = (int32_t)kv->arr_len;
    if (!(tokens = g4_gguf_arr_strings(kv, err))) goto done;
    if (read_numbers(g, "tokenizer.ggml.scores", n, 0, &scores, NULL, err) ||
        read_numbers(g, "tokenizer.ggml.token_type", n, 1, NULL, &types, err))
        goto done;

    int32_t n_merges = 0;
    const g4_gguf_kv *mk = g4_gguf_find(g, "tokenizer.ggml.merges");
    if (mk) {
        if (mk->arr_len > INT32_MAX || !(merges = g4_gguf_arr_strings(mk, err))) {
            if (mk->arr_len > INT32_MAX)
                g4_err_set(err, G4_ERR_FORMAT, "%s: tokenizer.ggml.merges is too long", g4_gguf_path(g));
            goto done;
        }
        n_merges = (int32_t)mk->arr_len;
    }

    /* defaults as llama.cpp: SPM has BOS 1, EOS 2, UNK 0, adds BOS and a
       space prefix; gemma4 reads every id from the file and always adds BOS
       (llama.cpp PR 21500) but no space prefix */
    int add_bos = 1, add_prefix = spm;
    if (g4_gguf_get_bool_or(g, "tokenizer.ggml.add_bos_token", 1, &add_bos, err) ||
        g4_gguf_get_bool_or(g, "tokenizer.ggml.add_space_prefix", spm, &add_prefix, err))
        goto done;
    if (gemma4) add_bos = 1;

    g4_vocab_desc d = {
        .model = model_c, .n_tokens = n, .tokens = tokens, .scores = scores, .types = types,
        .n_merges = n_merges, .merges = merges,
        .bos = special_id(g, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, n),
        .eos = special_id(g, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, n),
        .unk = special_id(g, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, n),
        .eot = special_id(g, "tokenizer.ggml.eot_token_id", -1, n),
        .add_bos = add_bos, .add_space_prefix = add_prefix,
    };
    t = g4_tokenizer_from_vocab(&d, err);
    if (!t && err && err->status != G4_ERR_NOMEM) {
        /* name the file in the message */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        g4_err_set(err, err->status, "%s: %s", g4_gguf_path(g), msg);
    }
done:
    free(tokens); free(merges); free(scores); free(types);
    return t;
}
