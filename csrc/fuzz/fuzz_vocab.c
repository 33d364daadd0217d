/* fuzz_vocab.c - libFuzzer harness: vocabularies built from the input with
 * g4_tokenizer_from_vocab, then a text encoded and decoded with them.
 *
 * Input layout (every field optional: a short input ends the vocab early):
 *   u8 flags   bit 0 model "gemma4" (else "llama"), 1 add_bos, 2 add_space_prefix,
 *              3 no scores (NULL), 4 no types (NULL), 5 append the 256 "<0xXX>"
 *              byte tokens, 6 parse_special, 7 no merges
 *   u8 bos, eos, unk, eot   0xff = none; other values may be out of range
 *   u8 n_tokens, u8 n_merges
 *   n_tokens x { u8 meta: type = meta & 7 (7 is no valid type), score index = meta >> 3;
 *                u8 len (mod 32); len bytes }
 *   n_merges x { u8 sel: sel & 0x80 -> u8 len (mod 32) and len raw bytes,
 *                else u8 a, u8 b -> "tokens[a] tokens[b]" }
 *   the rest: the text to encode.
 * Scores include 0, negatives, equal runs (the flat-score path), +-inf and NaN.
 * Checks: a refused vocab sets an error; an accepted one answers find/token/
 * type for each id, and every encode passes tokcheck.h.
 */
#include "tokcheck.h"

#include <math.h>

#define MAX_TOK (255 + 256)
#define MAX_MERGE 255

static float score_of(unsigned k) {
    switch (k) {
    case 31: return NAN;
    case 30: return INFINITY;
    case 29: return -INFINITY;
    case 28: return -1000.0f;
    }
    return (float)k - 14.0f;
}

static int32_t special(uint8_t v) { return v == 0xff ? -1 : (int32_t)v; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    g4fuzz_in in = {data, size};
    static g4_str tokens[MAX_TOK], merges[MAX_MERGE];
    static float scores[MAX_TOK];
    static int32_t types[MAX_TOK];
    static char byte_names[256][8];
    static char merge_buf[MAX_MERGE][72];

    uint8_t flags = g4fuzz_u8(&in);
    g4_vocab_desc d = {
        .model = flags & 1 ? "gemma4" : "llama",
        .bos = special(g4fuzz_u8(&in)), .eos = special(g4fuzz_u8(&in)),
        .unk = special(g4fuzz_u8(&in)), .eot = special(g4fuzz_u8(&in)),
        .add_bos = flags >> 1 & 1, .add_space_prefix = flags >> 2 & 1,
    };
    int n_tok = g4fuzz_u8(&in), n_merge = g4fuzz_u8(&in), n = 0;
    for (int i = 0; i < n_tok && in.n; i++, n++) {
        uint8_t meta = g4fuzz_u8(&in);
        size_t got;
        const uint8_t *p = g4fuzz_take(&in, g4fuzz_u8(&in) % 32, &got);
        tokens[n] = (g4_str){(const char *)p, got};
        types[n] = meta & 7;
        scores[n] = score_of(meta >> 3);
    }
    if (flags & 32)
        for (int b = 0; b < 256; b++, n++) {
            snprintf(byte_names[b], sizeof byte_names[b], "<0x%02X>", b);
            tokens[n] = (g4_str){byte_names[b], 6};
            types[n] = G4_TOKEN_BYTE;
            scores[n] = 0.0f;
        }
    int m = 0;
    for (int r = 0; r < n_merge && in.n && !(flags & 128); r++, m++) {
        uint8_t sel = g4fuzz_u8(&in);
        if (sel & 0x80 || n == 0) {
            size_t got;
            const uint8_t *p = g4fuzz_take(&in, g4fuzz_u8(&in) % 32, &got);
            merges[m] = (g4_str){(const char *)p, got};
        } else {
            g4_str a = tokens[g4fuzz_u8(&in) % n], b = tokens[g4fuzz_u8(&in) % n];
            int len = snprintf(merge_buf[m], sizeof merge_buf[m], "%.*s %.*s", (int)a.len, a.ptr,
                               (int)b.len, b.ptr);
            merges[m] = (g4_str){merge_buf[m], (uint64_t)len};
        }
    }
    d.n_tokens = n;
    d.tokens = tokens;
    d.scores = flags & 8 ? NULL : scores;
    d.types = flags & 16 ? NULL : types;
    d.n_merges = m;
    d.merges = m ? merges : NULL;

    g4_err err;
    g4_tokenizer *t = g4_tokenizer_from_vocab(&d, &err);
    if (!t) { G4FUZZ_CHECK_ERR(err, "g4_tokenizer_from_vocab"); return 0; }

    G4FUZZ_CHECK(g4_tokenizer_n_vocab(t) == n, "n_vocab %d for %d tokens", g4_tokenizer_n_vocab(t), n);
    for (int32_t id = 0; id < n; id++) {
        size_t len;
        const char *s = g4_tokenizer_token(t, id, &len);
        G4FUZZ_CHECK(s, "no string for id %d", id);
        int ty = g4_tokenizer_token_type(t, id);
        G4FUZZ_CHECK(ty >= 0 && ty <= 6, "type %d", ty);
        char name[40];
        if (len < sizeof name && !memchr(s, 0, len)) {   /* strings are unique: find gives the id back */
            memcpy(name, s, len);
            name[len] = 0;
            G4FUZZ_CHECK(g4_tokenizer_find(t, name) == id, "find('%s') = %d, not %d", name,
                         g4_tokenizer_find(t, name), id);
        }
    }
    G4FUZZ_CHECK(!g4_tokenizer_token(t, n, NULL) && g4_tokenizer_token_type(t, -1) == -1, "id out of range");
    for (int ps = 0; ps < 2; ps++) {
        size_t k = 0;
        int32_t *ids = g4fuzz_encode_checked(t, (const char *)in.p, in.n, d.add_bos, ps ^ (flags >> 6 & 1), &k);
        free(ids);
    }
    g4_tokenizer_free(t);
    return 0;
}
