/* tokcheck.h - what the tokenizer harnesses (fuzz_tokenizer.c, fuzz_vocab.c,
 * fuzz_chat.c) check on every encode, beyond the sanitizers.
 *
 * g4fuzz_encode_checked() runs g4_tokenizer_encode through the caller-retry
 * protocol of tokenizer.h (count with no buffer, a short buffer, an exact
 * one: the same ids each time), checks every id is in the vocab, decodes
 * them whole and piece by piece (same bytes, short buffers report the full
 * length), and checks that no text is lost or invented:
 *
 *   the token strings of the ids, concatenated, spell the text.
 *
 * Tokens are pieces of the text (llama.cpp tokenizer_st_partition then the
 * SPM/BPE merges), except byte-fallback tokens "<0xXX>" (one byte each) and
 * the space escape: ' ' becomes U+2581 in text fragments but not inside
 * special tokens, and SPM adds one U+2581 at the start of some fragments.
 * Both sides are compared with U+2581 read as ' ', and for SPM with the
 * bytes of both dropped (see g4fuzz_norm). The check is skipped where the vocab cannot spell the text
 * (a byte without a byte token gives UNK) or the text itself spells a
 * byte token ("<0x41>" may merge into the token for 'A').
 */
#ifndef G4_FUZZ_TOKCHECK_H
#define G4_FUZZ_TOKCHECK_H

#include "fuzz.h"

#include "../tokenizer/tokenizer.h"

/* 1 when every byte 0..255 has a "<0xXX>" token typed BYTE. */
static inline int g4fuzz_has_byte_tokens(const g4_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        int32_t id = g4_tokenizer_find(t, hex);
        if (id < 0 || g4_tokenizer_token_type(t, id) != G4_TOKEN_BYTE) return 0;
    }
    return 1;
}

/* Append s[0..n) to out with U+2581 read as ' ' (gemma4). For SPM, whose
 * prefix U+2581 may land between the bytes of a character cut by a special
 * token, the bytes of ' ' and U+2581 (20 e2 96 81) are dropped instead:
 * what is left must still match, in order. */
static inline size_t g4fuzz_norm(char *out, size_t at, const char *s, size_t n, int spm) {
    for (size_t i = 0; i < n;) {
        if (spm) {
            uint8_t c = (uint8_t)s[i++];
            if (c != 0x20 && c != 0xe2 && c != 0x96 && c != 0x81) out[at++] = (char)c;
            continue;
        }
        int esc = n - i >= 3 && memcmp(s + i, "\xe2\x96\x81", 3) == 0;
        out[at++] = esc ? ' ' : s[i];
        i += esc ? 3 : 1;
    }
    return at;
}

/* The raw spelling of one token: its string, or the byte of a byte token. */
static inline const char *g4fuzz_raw(const g4_tokenizer *t, int32_t id, size_t *len, char *byte) {
    const char *s = g4_tokenizer_token(t, id, len);
    if (g4_tokenizer_token_type(t, id) == G4_TOKEN_BYTE && *len == 6 && memcmp(s, "<0x", 3) == 0 &&
        s[5] == '>') {
        char hex[3] = {s[3], s[4], 0}, *end;
        long v = strtol(hex, &end, 16);
        if (!*end) { *byte = (char)v; *len = 1; return byte; }
    }
    return s;
}

static inline int g4fuzz_memmem(const char *s, size_t n, const char *pat) {
    return memmem(s, n, pat, strlen(pat)) != NULL;
}

static void g4fuzz_check_spelling(const g4_tokenizer *t, const char *text, size_t len,
                                  const int32_t *ids, size_t n, int skip_first) {
    int spm = strcmp(g4_tokenizer_model(t), "llama") == 0;
    if (g4fuzz_memmem(text, len, "<0x") || !g4fuzz_has_byte_tokens(t)) return;
    for (size_t i = 0; i < n; i++)
        if (ids[i] == g4_tokenizer_unk(t) && !(skip_first && i == 0)) return;
    size_t total = 0;
    for (size_t i = skip_first; i < n; i++) { size_t l; g4_tokenizer_token(t, ids[i], &l); total += l; }
    /* concatenate first: a byte token may hold one byte of a U+2581 */
    char *raw = malloc(total + 1), *a = malloc(total + 1), *b = malloc(len + 1);
    size_t nr = 0;
    for (size_t i = skip_first; i < n; i++) {
        size_t l;
        char byte;
        const char *s = g4fuzz_raw(t, ids[i], &l, &byte);
        memcpy(raw + nr, s, l);
        nr += l;
    }
    size_t na = g4fuzz_norm(a, 0, raw, nr, spm), nb = g4fuzz_norm(b, 0, text, len, spm);
    free(raw);
    if (na != nb || memcmp(a, b, na) != 0) {
        for (size_t i = skip_first; i < n && i < 256; i++) {
            size_t l;
            const char *s = g4_tokenizer_token(t, ids[i], &l);
            fprintf(stderr, "  id %d type %d '%.*s'\n", ids[i], g4_tokenizer_token_type(t, ids[i]), (int)l, s);
        }
        g4fuzz_fail("%s tokenizer: the tokens spell %zu bytes '%.*s', the text is %zu bytes '%.*s'",
                    g4_tokenizer_model(t), na, (int)(na < 200 ? na : 200), a, nb,
                    (int)(nb < 200 ? nb : 200), b);
    }
    free(a);
    free(b);
}

/* Decode whole, with a short buffer and piece by piece: same bytes. */
static void g4fuzz_check_decode(const g4_tokenizer *t, const int32_t *ids, size_t n) {
    size_t need = g4_tokenizer_decode(t, ids, n, NULL, 0);
    char *full = malloc(need + 1), *half = malloc(need / 2 + 1), *pieces = malloc(need + 1);
    G4FUZZ_CHECK(g4_tokenizer_decode(t, ids, n, full, need) == need, "decode length changed");
    G4FUZZ_CHECK(g4_tokenizer_decode(t, ids, n, half, need / 2) == need, "short decode length");
    G4FUZZ_CHECK(memcmp(full, half, need / 2) == 0, "short decode wrote other bytes");
    size_t at = 0;
    int32_t prev = -1;
    for (size_t i = 0; i < n; i++) {
        char tiny[1];
        size_t l = g4_tokenizer_piece(t, prev, ids[i], tiny, 0);
        G4FUZZ_CHECK(at + l <= need, "pieces longer than the decode");
        G4FUZZ_CHECK(g4_tokenizer_piece(t, prev, ids[i], pieces + at, l) == l, "piece length changed");
        at += l;
        prev = ids[i];
    }
    G4FUZZ_CHECK(at == need && memcmp(full, pieces, need) == 0, "pieces differ from the decode");
    free(full); free(half); free(pieces);
}

/* Encode through the retry protocol and run every check; returns the ids
 * (caller frees) and their count in *n_out, or NULL after a failed encode. */
static int32_t *g4fuzz_encode_checked(const g4_tokenizer *t, const char *text, size_t len,
                                      int add_bos, int parse_special, size_t *n_out) {
    g4_err err;
    size_t n = 0, n2 = 0, n3 = 0;
    if (g4_tokenizer_encode(t, text, len, add_bos, parse_special, NULL, 0, &n, &err)) {
        G4FUZZ_CHECK_ERR(err, "g4_tokenizer_encode");
        return NULL;
    }
    int32_t *ids = malloc((n + 1) * sizeof *ids), *part = malloc((n / 2 + 1) * sizeof *part);
    G4FUZZ_CHECK(!g4_tokenizer_encode(t, text, len, add_bos, parse_special, ids, n, &n2, &err) && n2 == n,
                 "encode gave %zu ids, then %zu", n, n2);
    G4FUZZ_CHECK(!g4_tokenizer_encode(t, text, len, add_bos, parse_special, part, n / 2, &n3, &err) && n3 == n,
                 "encode with a short buffer reported %zu ids, not %zu", n3, n);
    G4FUZZ_CHECK(memcmp(part, ids, n / 2 * sizeof *ids) == 0, "short buffer got other ids");
    free(part);
    int32_t nv = g4_tokenizer_n_vocab(t);
    for (size_t i = 0; i < n; i++) {
        G4FUZZ_CHECK(ids[i] >= 0 && ids[i] < nv, "id %d outside the vocab of %d", ids[i], nv);
        g4fuzz_sink += (uint64_t)g4_tokenizer_is_eog(t, ids[i]) + (uint64_t)g4_tokenizer_is_control(t, ids[i]);
    }
    int bos = add_bos && g4_tokenizer_bos(t) >= 0;
    G4FUZZ_CHECK(!bos || (n >= 1 && ids[0] == g4_tokenizer_bos(t)), "add_bos but no BOS first");
    G4FUZZ_CHECK(len || n == (size_t)bos, "empty text gave %zu ids", n);
    g4fuzz_check_decode(t, ids, n);
    g4fuzz_check_spelling(t, text, len, ids, n, bos);
    *n_out = n;
    return ids;
}

#endif
