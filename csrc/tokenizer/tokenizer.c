/* tokenizer.c - SentencePiece-style tokenizer (llama.cpp's "llama" SPM and
 * "gemma4" BPE vocabularies).
 *
 * Reference: llama.cpp src/llama-vocab.cpp (llm_tokenizer_spm_session,
 * llm_tokenizer_bpe_session with LLAMA_VOCAB_PRE_TYPE_GEMMA4,
 * tokenizer_st_partition, token_to_piece). The algorithms are the same; the
 * code is our own and avoids their O(n * n_special) special-token scan.
 *
 * Sections: vocabulary (build/free, hash lookup), special-token partition,
 * SPM merge, BPE merge, encode driver, decode.
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Attribute bits, as llama.cpp's llama_token_attr: a token may carry several
 * (an end-of-turn token typed user-defined is also made control). */
enum {
    ATTR_NORMAL = 1 << 0, ATTR_UNKNOWN = 1 << 1, ATTR_CONTROL = 1 << 2,
    ATTR_USER_DEFINED = 1 << 3, ATTR_UNUSED = 1 << 4, ATTR_BYTE = 1 << 5,
    ATTR_EOG = 1 << 6,
};

enum { KIND_SPM = 1, KIND_BPE_GEMMA4 = 2 };

/* Open-addressing map from a 63-bit key to an int32 (merge ranks, trie
 * edges). Stored keys have bit 63 set so that 0 marks an empty slot. */
typedef struct u64map {
    uint64_t *keys;
    int32_t *vals;
    uint64_t mask;
} u64map;

struct g4_tokenizer {
    int kind;
    char model[16];
    int32_t n;
    char *text;          /* all token strings back to back */
    uint64_t *off;       /* token i is text[off[i] .. off[i+1]) */
    float *score;        /* SPM merge priority (see build_scores) */
    uint8_t *type;       /* g4_token_type from the file */
    uint8_t *attr;       /* ATTR_* bits */
    int32_t *ht;         /* token string -> id, open addressing, -1 empty */
    uint64_t ht_mask;
    int32_t byte_tok[256];   /* byte fallback token for each byte, or -1 */
    u64map merges;           /* (left id << 32 | right id) -> rank, BPE only */
    /* special tokens (control, user defined, unknown): a byte trie whose
       nodes carry a token id, and a priority (longest first) per token. */
    u64map trie;             /* (node << 8 | byte) -> child node */
    int32_t *trie_tok;       /* node -> token id or -1 */
    int32_t trie_n;
    int32_t *spec_prio;      /* token id -> rank among specials, or -1 */
    int32_t max_special_len;
    int32_t bos, eos, unk, eot;
    int add_bos, add_space_prefix;
};

/* ======================================================================
 * Hashing
 * ====================================================================== */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;           /* FNV-1a 64 */
    for (size_t i = 0; i < n; i++) { h ^= (uint8_t)s[i]; h *= 1099511628211ull; }
    return h ^ (h >> 29);
}

static uint64_t mix64(uint64_t x) {                /* splitmix64 finalizer */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27; x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

static int u64map_init(u64map *m, uint64_t n_expected) {
    uint64_t cap = pow2_at_least(n_expected * 2 + 1);
    m->keys = calloc(cap, sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    m->mask = cap - 1;
    return m->keys && m->vals ? 0 : -1;
}

static void u64map_free(u64map *m) {
    free(m->keys); free(m->vals);
    m->keys = NULL; m->vals = NULL; m->mask = 0;
}

/* Insert key -> val unless present; returns the stored value. */
static int32_t u64map_put(u64map *m, uint64_t key, int32_t val) {
    uint64_t k = key | (1ull << 63);
    for (uint64_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == k) return m->vals[i];
        if (!m->keys[i]) { m->keys[i] = k; m->vals[i] = val; return val; }
    }
}

static int32_t u64map_get(const u64map *m, uint64_t key) {
    if (!m->keys) return -1;
    uint64_t k = key | (1ull << 63);
    for (uint64_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == k) return m->vals[i];
        if (!m->keys[i]) return -1;
    }
}

/* ======================================================================
 * Vocabulary
 * ====================================================================== */

static const char *tok_str(const g4_tokenizer *t, int32_t id, size_t *len) {
    *len = (size_t)(t->off[id + 1] - t->off[id]);
    return t->text + t->off[id];
}

/* Id of the token spelled s[0..n), or -1. */
static int32_t lookup(const g4_tokenizer *t, const char *s, size_t n) {
    for (uint64_t i = hash_bytes(s, n) & t->ht_mask;; i = (i + 1) & t->ht_mask) {
        int32_t id = t->ht[i];
        if (id < 0) return -1;
        size_t len;
        const char *p = tok_str(t, id, &len);
        if (len == n && memcmp(p, s, n) == 0) return id;
    }
}

static uint8_t type_to_attr(int32_t type) {
    switch (type) {
    case G4_TOKEN_NORMAL: return ATTR_NORMAL;
    case G4_TOKEN_UNKNOWN: return ATTR_UNKNOWN;
    case G4_TOKEN_CONTROL: return ATTR_CONTROL;
    case G4_TOKEN_USER_DEFINED: return ATTR_USER_DEFINED;
    case G4_TOKEN_UNUSED: return ATTR_UNUSED;
    case G4_TOKEN_BYTE: return ATTR_BYTE;
    default: return 0;   /* undefined: never rendered, never matched */
    }
}

/* Copy the strings into one arena and index them by a hash table. Empty
 * strings become "[EMPTY_<id>]" and duplicates are an error, as in
 * llama.cpp's llama_vocab::impl::load. */
static g4_status build_strings(g4_tokenizer *t, const g4_vocab_desc *d, g4_err *err) {
    uint64_t total = 0;
    for (int32_t i = 0; i < d->n_tokens; i++)
        total += d->tokens[i].len ? d->tokens[i].len : 32;
    t->text = malloc(total ? total : 1);
    t->off = malloc(((size_t)d->n_tokens + 1) * sizeof *t->off);
    t->ht_mask = pow2_at_least((uint64_t)d->n_tokens * 2 + 1) - 1;
    t->ht = malloc((t->ht_mask + 1) * sizeof *t->ht);
    if (!t->text || !t->off || !t->ht)
        return g4_err_set(err, G4_ERR_NOMEM, "tokenizer: out of memory for %d tokens", d->n_tokens);
    memset(t->ht, 0xff, (t->ht_mask + 1) * sizeof *t->ht);

    uint64_t pos = 0;
    for (int32_t i = 0; i < d->n_tokens; i++) {
        t->off[i] = pos;
        if (d->tokens[i].len) {
            memcpy(t->text + pos, d->tokens[i].ptr, d->tokens[i].len);
            pos += d->tokens[i].len;
        } else {
            pos += (uint64_t)snprintf(t->text + pos, 32, "[EMPTY_%d]", i);
        }
        size_t len = (size_t)(pos - t->off[i]);
        const char *s = t->text + t->off[i];
        uint64_t h = hash_bytes(s, len) & t->ht_mask;
        for (;; h = (h + 1) & t->ht_mask) {
            int32_t other = t->ht[h];
            if (other < 0) { t->ht[h] = i; break; }
            size_t olen;
            const char *o = tok_str(t, other, &olen);
            if (olen == len && memcmp(o, s, len) == 0)
                return g4_err_set(err, G4_ERR_FORMAT,
                                  "tokenizer.ggml.tokens: duplicate token '%.*s' at ids %d and %d",
                                  (int)(len < 64 ? len : 64), s, other, i);
        }
    }
    t->off[d->n_tokens] = pos;
    return G4_OK;
}

/* SPM merge priorities. llama.cpp merges the bigram whose token has the
 * highest score. GGUFs converted from a Hugging Face BPE tokenizer.json by
 * gguf-py's LlamaHfVocab carry a placeholder score (-1000) for every token;
 * llama.cpp then merges leftmost-first, which is not how the model's
 * tokenizer splits text. HF BPE numbers merged tokens in merge order, so in
 * that case we use -id as the score, which reproduces the HF tokenizer
 * (checked against tokenizers on TinyStories-656K, tests/test_tokenizer.py).
 * This is a deliberate deviation from llama.cpp for degenerate scores only. */
static void build_scores(g4_tokenizer *t, const g4_vocab_desc *d) {
    int flat = 1;
    for (int32_t i = 1; i < d->n_tokens && flat; i++)
        flat = (d->scores ? d->scores[i] : 0.0f) == (d->scores ? d->scores[0] : 0.0f);
    for (int32_t i = 0; i < d->n_tokens; i++)
        t->score[i] = flat && d->n_tokens > 1 ? -(float)i : (d->scores ? d->scores[i] : 0.0f);
}

/* End-of-generation tokens, by text, as llama.cpp's special_eog_ids list
 * (Gemma 2/3 "<end_of_turn>", Gemma 4 "<turn|>" and "<|tool_response>"). */
static const char *const EOG_TEXTS[] = {
    "<end_of_turn>", "<eos>", "<turn|>", "<|tool_response>", "<|eot_id|>", "<|im_end|>",
    "<|end|>", "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>", "<EOT>",
};

static void build_attrs(g4_tokenizer *t, const g4_vocab_desc *d) {
    for (int32_t i = 0; i < d->n_tokens; i++) {
        int32_t ty = d->types ? d->types[i] : G4_TOKEN_NORMAL;
        t->type[i] = (uint8_t)(ty >= 0 && ty <= 6 ? ty : 0);
        t->attr[i] = type_to_attr(ty);
    }
    for (size_t k = 0; k < sizeof EOG_TEXTS / sizeof *EOG_TEXTS; k++) {
        int32_t id = lookup(t, EOG_TEXTS[k], strlen(EOG_TEXTS[k]));
        /* llama.cpp also forces these to control: never rendered as text */
        if (id >= 0) t->attr[id] |= ATTR_EOG | ATTR_CONTROL;
    }
    if (t->eos >= 0) t->attr[t->eos] |= ATTR_EOG;
    if (t->eot >= 0) t->attr[t->eot] |= ATTR_EOG;
    /* llama.cpp: in Gemma 4's vocab (it has "<|tool_response>") "</s>" is plain text */
    int32_t s_id = lookup(t, "</s>", 4);
    if (s_id >= 0 && s_id != t->eos && lookup(t, "<|tool_response>", 16) >= 0) t->attr[s_id] = ATTR_NORMAL;

    /* byte fallback: "<0xXX>", else the one-byte token (llama.cpp byte_to_token) */
    for (int b = 0; b < 256; b++) {
        char hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        int32_t id = lookup(t, hex, 6);
        if (id < 0) { char c = (char)b; id = lookup(t, &c, 1); }
        t->byte_tok[b] = id;
    }
}

/* Merges "left right" -> rank, keyed by the ids of both halves. A merge whose
 * halves are not tokens can never apply (HF refuses such files) and is skipped. */
static g4_status build_merges(g4_tokenizer *t, const g4_vocab_desc *d, g4_err *err) {
    /* ranks travel as float heap keys, exact up to 2^24 */
    if (d->n_merges > (1 << 24))
        return g4_err_set(err, G4_ERR_LIMIT, "tokenizer.ggml.merges: %d merges (at most %d)",
                          d->n_merges, 1 << 24);
    if (u64map_init(&t->merges, (uint64_t)d->n_merges) < 0)
        return g4_err_set(err, G4_ERR_NOMEM, "tokenizer: out of memory for %d merges", d->n_merges);
    for (int32_t r = 0; r < d->n_merges; r++) {
        const char *s = d->merges[r].ptr;
        size_t n = (size_t)d->merges[r].len, sp = 1;   /* split at the first space after byte 0 */
        while (sp < n && s[sp] != ' ') sp++;
        if (sp >= n) continue;
        int32_t l = lookup(t, s, sp), rr = lookup(t, s + sp + 1, n - sp - 1);
        if (l < 0 || rr < 0) continue;
        u64map_put(&t->merges, (uint64_t)l << 32 | (uint32_t)rr, r);
    }
    return G4_OK;
}

typedef struct spec_key { uint64_t len; int32_t id; } spec_key;

static int cmp_special(const void *a, const void *b) {
    const spec_key *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Special tokens are matched whole in the raw text before merging
 * (llama.cpp tokenizer_st_partition): longest first, ties by id. */
static g4_status build_specials(g4_tokenizer *t, g4_err *err) {
    int32_t n_spec = 0;
    uint64_t n_bytes = 0;
    for (int32_t i = 0; i < t->n; i++)
        if (t->attr[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) {
            n_spec++;
            n_bytes += t->off[i + 1] - t->off[i];
        }
    spec_key *ids = malloc(((size_t)n_spec + 1) * sizeof *ids);
    t->spec_prio = malloc((size_t)t->n * sizeof *t->spec_prio);
    t->trie_tok = malloc((n_bytes + 1) * sizeof *t->trie_tok);
    if (!ids || !t->spec_prio || !t->trie_tok || u64map_init(&t->trie, n_bytes) < 0) {
        free(ids);
        return g4_err_set(err, G4_ERR_NOMEM, "tokenizer: out of memory for %d special tokens", n_spec);
    }
    n_spec = 0;
    for (int32_t i = 0; i < t->n; i++) {
        t->spec_prio[i] = -1;
        if (t->attr[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
            ids[n_spec++] = (spec_key){t->off[i + 1] - t->off[i], i};
    }
    qsort(ids, (size_t)n_spec, sizeof *ids, cmp_special);

    t->trie_n = 1;
    t->trie_tok[0] = -1;
    t->max_special_len = 0;
    for (int32_t k = 0; k < n_spec; k++) {
        int32_t id = ids[k].id;
        size_t len;
        const char *s = tok_str(t, id, &len);
        t->spec_prio[id] = k;
        if ((int32_t)len > t->max_special_len) t->max_special_len = (int32_t)len;
        int32_t node = 0;
        for (size_t j = 0; j < len; j++) {
            int32_t child = u64map_put(&t->trie, (uint64_t)node << 8 | (uint8_t)s[j], t->trie_n);
            if (child == t->trie_n) t->trie_tok[t->trie_n++] = -1;
            node = child;
        }
        t->trie_tok[node] = id;   /* strings are unique, so one id per node */
    }
    free(ids);
    return G4_OK;
}

void g4_tokenizer_free(g4_tokenizer *t) {
    if (!t) return;
    free(t->text); free(t->off); free(t->score); free(t->type); free(t->attr); free(t->ht);
    u64map_free(&t->merges); u64map_free(&t->trie);
    free(t->trie_tok); free(t->spec_prio);
    free(t);
}

static g4_status check_id(const g4_vocab_desc *d, int32_t id, const char *what, g4_err *err) {
    if (id < -1 || id >= d->n_tokens)
        return g4_err_set(err, G4_ERR_FORMAT, "tokenizer.ggml.%s_token_id = %d is out of range (vocab %d)",
                          what, id, d->n_tokens);
    return G4_OK;
}

g4_tokenizer *g4_tokenizer_from_vocab(const g4_vocab_desc *d, g4_err *err) {
    int kind = 0;
    if (d->model && strcmp(d->model, "llama") == 0) kind = KIND_SPM;
    else if (d->model && strcmp(d->model, "gemma4") == 0) kind = KIND_BPE_GEMMA4;
    if (!kind) {
        g4_err_set(err, G4_ERR_UNSUPPORTED,
                   "tokenizer.ggml.model '%s' is not supported (only 'llama' SentencePiece and 'gemma4')",
                   d->model ? d->model : "(missing)");
        return NULL;
    }
    if (d->n_tokens <= 0 || !d->tokens) {
        g4_err_set(err, G4_ERR_FORMAT, "tokenizer.ggml.tokens is missing or empty");
        return NULL;
    }
    if (kind == KIND_BPE_GEMMA4 && (d->n_merges <= 0 || !d->merges)) {
        g4_err_set(err, G4_ERR_FORMAT, "tokenizer.ggml.merges is missing (required for model 'gemma4')");
        return NULL;
    }
    if (check_id(d, d->bos, "bos", err) || check_id(d, d->eos, "eos", err) ||
        check_id(d, d->unk, "unknown", err) || check_id(d, d->eot, "eot", err))
        return NULL;

    g4_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { g4_err_set(err, G4_ERR_NOMEM, "tokenizer: out of memory"); return NULL; }
    t->kind = kind;
    snprintf(t->model, sizeof t->model, "%s", d->model);
    t->n = d->n_tokens;
    t->bos = d->bos; t->eos = d->eos; t->unk = d->unk; t->eot = d->eot;
    t->add_bos = d->add_bos;
    t->add_space_prefix = d->add_space_prefix;
    t->score = malloc((size_t)t->n * sizeof *t->score);
    t->type = malloc((size_t)t->n);
    t->attr = malloc((size_t)t->n);
    if (!t->score || !t->type || !t->attr) {
        g4_err_set(err, G4_ERR_NOMEM, "tokenizer: out of memory for %d tokens", t->n);
        goto fail;
    }
    if (build_strings(t, d, err)) goto fail;
    build_scores(t, d);
    build_attrs(t, d);
    if (kind == KIND_BPE_GEMMA4 && build_merges(t, d, err)) goto fail;
    if (build_specials(t, err)) goto fail;
    return t;
fail:
    g4_tokenizer_free(t);
    return NULL;
}

/* ======================================================================
 * Output buffer
 * ====================================================================== */

typedef struct idvec {
    int32_t *v;
    size_t n, cap;
    int fail;
    int unk_run;   /* the last id is an UNK standing for bytes without a token */
} idvec;

static void push(idvec *o, int32_t id) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 256;
        int32_t *v = realloc(o->v, cap * sizeof *v);
        if (!v) { o->fail = 1; return; }
        o->v = v; o->cap = cap;
    }
    o->v[o->n++] = id;
    o->unk_run = 0;
}

/* Bytes of a piece that is no token: one <0xXX> token per byte. Without a
 * byte token we emit UNK, one per run as HF's fuse_unk and SentencePiece do
 * (llama.cpp would throw here). */
static void push_bytes(const g4_tokenizer *t, const char *s, size_t n, idvec *o) {
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_tok[(uint8_t)s[i]];
        if (id >= 0) push(o, id);
        else if (t->unk >= 0 && !o->unk_run) { push(o, t->unk); o->unk_run = 1; }
    }
}

/* llama.cpp unicode_len_utf8: sequence length from the lead byte's high nibble. */
static size_t utf8_len(uint8_t c) {
    static const uint8_t lens[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lens[c >> 4];
}

/* ======================================================================
 * Symbols and the merge heap (shared by SPM and BPE)
 *
 * The text is cut into UTF-8 characters kept in a doubly linked list;
 * candidate merges of neighbours go into a binary heap; popping the best
 * and re-offering its new neighbours is O(n log n) overall.
 * ====================================================================== */

typedef struct sym { int32_t start, n, prev, next, id; } sym;

typedef struct bigram {
    float key;            /* SPM: score (higher first); BPE: -rank */
    int32_t left, right;
    int32_t ln, rn;       /* lengths when offered, to detect stale entries */
} bigram;

typedef struct merge_state {
    sym *s; int32_t n_sym, cap_sym;
    bigram *h; int32_t n_h, cap_h;
    int fail;
} merge_state;

/* heap order: larger key first, then leftmost (llama.cpp llm_bigram_spm/bpe comparators) */
static int bg_before(const bigram *a, const bigram *b) {
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

static void heap_push(merge_state *m, bigram b) {
    if (m->n_h == m->cap_h) {
        int32_t cap = m->cap_h ? m->cap_h * 2 : 256;
        bigram *h = realloc(m->h, (size_t)cap * sizeof *h);
        if (!h) { m->fail = 1; return; }
        m->h = h; m->cap_h = cap;
    }
    int32_t i = m->n_h++;
    while (i > 0) {
        int32_t p = (i - 1) / 2;
        if (!bg_before(&b, &m->h[p])) break;
        m->h[i] = m->h[p];
        i = p;
    }
    m->h[i] = b;
}

static bigram heap_pop(merge_state *m) {
    bigram top = m->h[0], last = m->h[--m->n_h];
    int32_t i = 0;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= m->n_h) break;
        if (c + 1 < m->n_h && bg_before(&m->h[c + 1], &m->h[c])) c++;
        if (!bg_before(&m->h[c], &last)) break;
        m->h[i] = m->h[c];
        i = c;
    }
    if (m->n_h) m->h[i] = last;
    return top;
}

/* Cut s[0..n) into characters; ids looked up when `with_ids`. */
static int split_chars(const g4_tokenizer *t, merge_state *m, const char *s, int32_t n, int with_ids) {
    if (n > m->cap_sym) {
        sym *v = realloc(m->s, (size_t)n * sizeof *v);
        if (!v) return -1;
        m->s = v; m->cap_sym = n;
    }
    m->n_sym = 0;
    m->n_h = 0;
    for (int32_t off = 0; off < n;) {
        int32_t len = (int32_t)utf8_len((uint8_t)s[off]);
        if (len > n - off) len = n - off;
        sym *y = &m->s[m->n_sym];
        y->start = off; y->n = len;
        y->prev = m->n_sym - 1;
        y->next = off + len == n ? -1 : m->n_sym + 1;
        y->id = with_ids ? lookup(t, s + off, (size_t)len) : -1;
        m->n_sym++;
        off += len;
    }
    return 0;
}

/* Merge right into left and unlink right. */
static void merge_pair(merge_state *m, int32_t l, int32_t r) {
    sym *a = &m->s[l], *b = &m->s[r];
    a->n += b->n;
    b->n = 0;
    a->next = b->next;
    if (b->next >= 0) m->s[b->next].prev = l;
}

/* ======================================================================
 * SPM (llama.cpp llm_tokenizer_spm_session): merge the neighbour pair whose
 * concatenation is the highest-scoring token, until none is left.
 * ====================================================================== */

static void spm_offer(const g4_tokenizer *t, merge_state *m, const char *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t id = lookup(t, s + m->s[l].start, (size_t)(m->s[l].n + m->s[r].n));
    if (id < 0) return;
    heap_push(m, (bigram){t->score[id], l, r, m->s[l].n, m->s[r].n});
}

static int spm_tokenize(const g4_tokenizer *t, merge_state *m, const char *s, int32_t n, idvec *o) {
    if (n == 0) return 0;
    if (split_chars(t, m, s, n, 0) < 0) return -1;
    for (int32_t i = 1; i < m->n_sym; i++) spm_offer(t, m, s, i - 1, i);
    while (m->n_h > 0 && !m->fail) {
        bigram b = heap_pop(m);
        sym *l = &m->s[b.left], *r = &m->s[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.ln + b.rn) continue;   /* stale */
        merge_pair(m, b.left, b.right);
        spm_offer(t, m, s, m->s[b.left].prev, b.left);
        spm_offer(t, m, s, b.left, m->s[b.left].next);
    }
    /* Every merged symbol is a token; a lone character that is none falls
       back to bytes. (llama.cpp's resegment() also walks rev_merge, which
       only matters for symbols that are not tokens: single characters.) */
    for (int32_t i = 0; i != -1; i = m->s[i].next) {
        int32_t id = lookup(t, s + m->s[i].start, (size_t)m->s[i].n);
        if (id >= 0) push(o, id);
        else push_bytes(t, s + m->s[i].start, (size_t)m->s[i].n, o);
    }
    return m->fail ? -1 : 0;
}

/* ======================================================================
 * Gemma 4 BPE (llama.cpp llm_tokenizer_bpe_session, pre-type GEMMA4):
 * spaces become U+2581, the text is cut into runs of non-newlines and runs
 * of newlines, and each run is merged by tokenizer.ggml.merges rank
 * (lowest first). A run of newlines that is itself a token stays whole.
 * ====================================================================== */

static void bpe_offer(const g4_tokenizer *t, merge_state *m, int32_t l, int32_t r) {
    if (l < 0 || r < 0 || m->s[l].id < 0 || m->s[r].id < 0) return;
    int32_t rank = u64map_get(&t->merges, (uint64_t)m->s[l].id << 32 | (uint32_t)m->s[r].id);
    if (rank < 0) return;
    heap_push(m, (bigram){-(float)rank, l, r, m->s[l].n, m->s[r].n});
}

static int bpe_word(const g4_tokenizer *t, merge_state *m, const char *s, int32_t n, idvec *o) {
    if (s[0] == '\n') {
        int32_t id = lookup(t, s, (size_t)n);
        if (id >= 0) { push(o, id); return 0; }
    }
    if (split_chars(t, m, s, n, 1) < 0) return -1;
    for (int32_t i = 1; i < m->n_sym; i++) bpe_offer(t, m, i - 1, i);
    while (m->n_h > 0 && !m->fail) {
        bigram b = heap_pop(m);
        sym *l = &m->s[b.left], *r = &m->s[b.right];
        if (l->n == 0 || r->n == 0 || l->n != b.ln || r->n != b.rn) continue;   /* stale */
        merge_pair(m, b.left, b.right);
        l->id = lookup(t, s + l->start, (size_t)l->n);
        bpe_offer(t, m, l->prev, b.left);
        bpe_offer(t, m, b.left, l->next);
    }
    for (int32_t i = 0; i != -1; i = m->s[i].next) {
        if (m->s[i].id >= 0) push(o, m->s[i].id);
        else push_bytes(t, s + m->s[i].start, (size_t)m->s[i].n, o);
    }
    return m->fail ? -1 : 0;
}

static int bpe_tokenize(const g4_tokenizer *t, merge_state *m, const char *s, int32_t n, idvec *o) {
    for (int32_t i = 0; i < n;) {
        int32_t j = i;
        if (s[i] == '\n') while (j < n && s[j] == '\n') j++;
        else while (j < n && s[j] != '\n') j++;
        if (bpe_word(t, m, s + i, j - i, o) < 0) return -1;
        i = j;
    }
    return 0;
}

/* ======================================================================
 * Special-token partition (llama.cpp tokenizer_st_partition)
 *
 * llama.cpp takes the special tokens longest first (priority = rank in
 * that order) and splits every remaining raw-text fragment at each leftmost
 * occurrence. We get the same result in one pass over the text: every
 * occurrence, in (priority, position) order, is accepted when none of its
 * bytes is taken yet. Taken intervals are never shorter than the current
 * token, so checking its first and last byte is enough. The order comes
 * from a k-way merge: a heap holds the best remaining occurrence of each
 * position (longest first), and a rejected one is replaced by the next
 * shorter occurrence at the same position, so memory stays O(n).
 * ====================================================================== */

typedef struct match { int32_t prio, pos, id, len; } match;

/* Longest special token at s[i..) shorter than `below` bytes, or -1. */
static int32_t special_at(const g4_tokenizer *t, const char *s, int32_t n, int32_t i, int32_t below,
                          int parse_special, int32_t *len) {
    int32_t node = 0, best = -1, lim = n - i;
    if (lim > t->max_special_len) lim = t->max_special_len;
    if (lim > below - 1) lim = below - 1;
    for (int32_t j = 0; j < lim; j++) {
        node = u64map_get(&t->trie, (uint64_t)node << 8 | (uint8_t)s[i + j]);
        if (node < 0) break;
        int32_t id = t->trie_tok[node];
        /* control and unknown tokens only when asked; user defined always */
        if (id >= 0 && (parse_special || !(t->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN)))) {
            best = id;
            *len = j + 1;
        }
    }
    return best;
}

static int match_before(const match *a, const match *b) {
    return a->prio < b->prio || (a->prio == b->prio && a->pos < b->pos);
}

static void match_sift_down(match *h, int32_t n, int32_t i) {
    match x = h[i];
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && match_before(&h[c + 1], &h[c])) c++;
        if (!match_before(&h[c], &x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static int cmp_match_pos(const void *a, const void *b) {
    const match *x = a, *y = b;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Fills *out with accepted matches sorted by position; returns their count or -1. */
static int32_t partition(const g4_tokenizer *t, const char *s, int32_t n, int parse_special, match **out) {
    *out = NULL;
    if (t->trie_n <= 1) return 0;
    match *h = NULL, *acc = NULL;
    uint8_t *taken = NULL;
    int32_t nh = 0, cap = 0, na = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t len, id = special_at(t, s, n, i, INT32_MAX, parse_special, &len);
        if (id < 0) continue;
        if (nh == cap) {
            cap = cap ? cap * 2 : 64;
            match *v = realloc(h, (size_t)cap * sizeof *v);
            if (!v) goto oom;
            h = v;
        }
        h[nh++] = (match){t->spec_prio[id], i, id, len};
    }
    if (!nh) { free(h); return 0; }
    /* heapify by (priority, position) */
    for (int32_t i = nh / 2 - 1; i >= 0; i--) match_sift_down(h, nh, i);
    taken = calloc((size_t)n, 1);
    acc = malloc((size_t)nh * sizeof *acc);   /* at most one per position */
    if (!taken || !acc) goto oom;
    while (nh > 0) {
        match m = h[0];
        if (!taken[m.pos] && !taken[m.pos + m.len - 1]) {
            memset(taken + m.pos, 1, (size_t)m.len);
            acc[na++] = m;
            h[0] = h[--nh];
        } else {
            int32_t len, id = special_at(t, s, n, m.pos, m.len, parse_special, &len);
            if (id >= 0) h[0] = (match){t->spec_prio[id], m.pos, id, len};
            else h[0] = h[--nh];
        }
        if (nh > 0) match_sift_down(h, nh, 0);
    }
    free(h); free(taken);
    qsort(acc, (size_t)na, sizeof *acc, cmp_match_pos);
    *out = acc;
    return na;
oom:
    free(h); free(taken); free(acc);
    return -1;
}

/* ======================================================================
 * Encode
 * ====================================================================== */

/* SPM text fragment: optional leading space, then ' ' -> U+2581 (llama.cpp
 * llama_escape_whitespace). Gemma 4 escapes spaces the same way. */
static char *escape_spaces(const char *s, size_t n, int prefix, size_t *out_n) {
    size_t spaces = (size_t)prefix;
    for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
    char *e = malloc(n + (size_t)prefix + 2 * spaces + 1);
    if (!e) return NULL;
    size_t k = 0;
    if (prefix) { memcpy(e, "\xe2\x96\x81", 3); k = 3; }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(e + k, "\xe2\x96\x81", 3); k += 3; }
        else e[k++] = s[i];
    }
    *out_n = k;
    return e;
}

static int encode_text(const g4_tokenizer *t, merge_state *m, const char *s, size_t n,
                       int prefix, idvec *o) {
    size_t en;
    char *e = escape_spaces(s, n, t->kind == KIND_SPM && prefix, &en);
    if (!e) return -1;
    int rc = t->kind == KIND_SPM ? spm_tokenize(t, m, e, (int32_t)en, o)
                                 : bpe_tokenize(t, m, e, (int32_t)en, o);
    free(e);
    return rc;
}

g4_status g4_tokenizer_encode(const g4_tokenizer *t, const char *text, size_t len,
                              int add_bos, int parse_special,
                              int32_t *out, size_t cap, size_t *n_out, g4_err *err) {
    *n_out = 0;
    if (!text && len) return g4_err_set(err, G4_ERR_INVALID, "tokenizer: NULL text");
    /* symbol indices are int32 and spaces grow to 3 bytes */
    if (len > (size_t)INT32_MAX / 4)
        return g4_err_set(err, G4_ERR_LIMIT, "tokenizer: text of %zu bytes is too long (at most %d)",
                          len, INT32_MAX / 4);
    idvec o = {0};
    merge_state m = {0};
    match *mt = NULL;
    g4_status st = G4_OK;

    if (add_bos && t->bos >= 0) push(&o, t->bos);
    int32_t nm = len ? partition(t, text, (int32_t)len, parse_special, &mt) : 0;
    if (nm < 0) { st = g4_err_set(err, G4_ERR_NOMEM, "tokenizer: out of memory"); goto done; }

    /* llama.cpp SPM: a raw fragment gets the space prefix when it is the
       first one or follows a special token */
    int prev_special = 1;
    size_t pos = 0;
    for (int32_t k = 0; k <= nm; k++) {
        size_t end = k < nm ? (size_t)mt[k].pos : len;
        if (end > pos) {
            if (encode_text(t, &m, text + pos, end - pos, t->add_space_prefix && prev_special, &o) < 0) {
                st = g4_err_set(err, G4_ERR_NOMEM, "tokenizer: out of memory");
                goto done;
            }
            prev_special = 0;
        }
        if (k < nm) {
            push(&o, mt[k].id);
            prev_special = 1;
            pos = (size_t)mt[k].pos + (size_t)mt[k].len;
        }
    }
    if (o.fail || m.fail) { st = g4_err_set(err, G4_ERR_NOMEM, "tokenizer: out of memory"); goto done; }
    *n_out = o.n;
    if (out && o.n && cap) memcpy(out, o.v, (o.n < cap ? o.n : cap) * sizeof *out);
done:
    free(o.v); free(m.s); free(m.h); free(mt);
    return st;
}

/* ======================================================================
 * Decode (llama.cpp token_to_piece with special = false)
 * ====================================================================== */

static size_t put(char *buf, size_t cap, size_t at, const char *s, size_t n) {
    if (at < cap) memcpy(buf + at, s, n <= cap - at ? n : cap - at);
    return at + n;
}

size_t g4_tokenizer_piece(const g4_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->n) return 0;
    uint8_t a = t->attr[id];
    if (a & (ATTR_CONTROL | ATTR_UNKNOWN)) return 0;
    size_t len;
    const char *s = tok_str(t, id, &len);
    /* the space SPM put in front of the text is not part of it: drop it at
       the start of the text and right after BOS */
    int lstrip = t->add_space_prefix && (prev < 0 || prev == t->bos);
    size_t n = 0;
    if (a & ATTR_USER_DEFINED) {
        if (lstrip && len && s[0] == ' ') { s++; len--; }
        return put(buf, cap, 0, s, len);
    }
    if (a & ATTR_NORMAL) {   /* U+2581 -> ' ' (llama_unescape_whitespace) */
        for (size_t i = 0; i < len;) {
            int esc = len - i >= 3 && memcmp(s + i, "\xe2\x96\x81", 3) == 0;
            const char *c = esc ? " " : s + i;
            if (!(lstrip && *c == ' ')) n = put(buf, cap, n, c, 1);
            lstrip = 0;
            i += esc ? 3 : 1;
        }
        return n;
    }
    if ((a & ATTR_BYTE) && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
        char hex[3] = {s[3], s[4], 0}, *end;
        long v = strtol(hex, &end, 16);
        if (*end) return 0;
        char c = (char)v;
        if (lstrip && c == ' ') return 0;
        return put(buf, cap, 0, &c, 1);
    }
    return 0;   /* unused / undefined types are not rendered */
}

size_t g4_tokenizer_decode(const g4_tokenizer *t, const int32_t *ids, size_t n, char *buf, size_t cap) {
    size_t at = 0;
    int32_t prev = -1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n) continue;
        size_t room = at < cap ? cap - at : 0;
        at += g4_tokenizer_piece(t, prev, ids[i], room ? buf + at : NULL, room);
        prev = ids[i];
    }
    return at;
}

/* ======================================================================
 * Accessors
 * ====================================================================== */

int32_t g4_tokenizer_n_vocab(const g4_tokenizer *t) { return t->n; }
int32_t g4_tokenizer_bos(const g4_tokenizer *t) { return t->bos; }
int32_t g4_tokenizer_eos(const g4_tokenizer *t) { return t->eos; }
int32_t g4_tokenizer_unk(const g4_tokenizer *t) { return t->unk; }
int g4_tokenizer_add_bos(const g4_tokenizer *t) { return t->add_bos; }
int g4_tokenizer_add_space_prefix(const g4_tokenizer *t) { return t->add_space_prefix; }
const char *g4_tokenizer_model(const g4_tokenizer *t) { return t->model; }

int32_t g4_tokenizer_find(const g4_tokenizer *t, const char *piece) {
    return piece ? lookup(t, piece, strlen(piece)) : -1;
}

int g4_tokenizer_is_control(const g4_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n && (t->attr[id] & ATTR_CONTROL);
}

int g4_tokenizer_is_eog(const g4_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n && (t->attr[id] & ATTR_EOG);
}

const char *g4_tokenizer_token(const g4_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n) { if (len) *len = 0; return NULL; }
    size_t n;
    const char *s = tok_str(t, id, &n);
    if (len) *len = n;
    return s;
}

int g4_tokenizer_token_type(const g4_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n ? t->type[id] : -1;
}
