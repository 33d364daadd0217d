/* fuzz_chat.c - libFuzzer harness for the chat input path: a list of
 * messages rendered in Gemma 4's turn format, then tokenized with
 * parse_special as Model.chat does (llama.cpp common_chat_apply_template,
 * then common_tokenize(..., parse_special = true)).
 *
 * Input: messages separated by NUL bytes; the first byte of each picks the
 * role ("system", "user", "model", "tool", or the next bytes up to '\n' as a
 * role of its own), the rest is the content: any bytes, including the
 * markers themselves ("<|turn>", "<turn|>", "<|channel>", ...), half of one,
 * U+2581 and invalid UTF-8. The rendering follows the template of the test
 * Gemma 4 tokenizer (tests/gemma4_ref.py CHAT_TEMPLATE):
 *     <bos>{for m}<|turn>{role}\n{content}<turn|>\n{end}<|turn>model\n
 *
 * Vocab: the "gemma4" toy vocab written by make_seeds.py
 * ($G4FUZZ_GEMMA4_VOCAB, default build/fuzz/gemma4-toy-vocab.gguf).
 * Checks: tokcheck.h on the whole prompt, and the template's own markers
 * survive whatever the content holds: the ids start with <bos>, and there are
 * at least as many <|turn> ids as turns and <turn|> ids as messages
 * (content can add markers, never remove the template's).
 */
#include "tokcheck.h"

static g4_tokenizer *tok;
static int32_t id_bos, id_turn, id_end;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *path = getenv("G4FUZZ_GEMMA4_VOCAB");
    if (!path || !*path) path = "build/fuzz/gemma4-toy-vocab.gguf";
    g4_err err;
    g4_gguf *g = g4_gguf_open(path, &err);
    if (g) tok = g4_tokenizer_from_gguf(g, &err);
    g4_gguf_close(g);
    if (!tok) {
        fprintf(stderr, "fuzz_chat: %s (run csrc/fuzz/make_seeds.py or set G4FUZZ_GEMMA4_VOCAB)\n", err.msg);
        exit(1);
    }
    id_bos = g4_tokenizer_find(tok, "<bos>");
    id_turn = g4_tokenizer_find(tok, "<|turn>");
    id_end = g4_tokenizer_find(tok, "<turn|>");
    if (id_bos < 0 || id_turn < 0 || id_end < 0) {
        fprintf(stderr, "fuzz_chat: %s lacks <bos>, <|turn> or <turn|>\n", path);
        exit(1);
    }
    return 0;
}

typedef struct buf { char *p; size_t n, cap; } buf;

static void put(buf *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const roles[] = {"system", "user", "model", "tool"};
    buf b = {0};
    size_t n_msg = 0;
    puts_(&b, "<bos>");
    for (size_t i = 0; i < size;) {
        const uint8_t *end = memchr(data + i, 0, size - i);
        size_t len = end ? (size_t)(end - (data + i)) : size - i;
        const uint8_t *m = data + i;
        puts_(&b, "<|turn>");
        if (len && m[0] < 0xfc) {
            puts_(&b, roles[m[0] & 3]);
            m++, len--;
        } else if (len) {   /* a role of the input's choosing, up to the newline */
            m++, len--;
            const uint8_t *nl = memchr(m, '\n', len);
            size_t rl = nl ? (size_t)(nl - m) : len;
            put(&b, m, rl);
            m += rl, len -= rl;
        }
        puts_(&b, "\n");
        put(&b, m, len);
        puts_(&b, "<turn|>\n");
        n_msg++;
        i += (size_t)(m - (data + i)) + len + 1;
    }
    puts_(&b, "<|turn>model\n");

    size_t n = 0;
    int32_t *ids = g4fuzz_encode_checked(tok, b.p, b.n, 0, 1, &n);
    G4FUZZ_CHECK(ids, "the rendered prompt did not encode");
    size_t turns = 0, ends = 0;
    for (size_t k = 0; k < n; k++) {
        turns += ids[k] == id_turn;
        ends += ids[k] == id_end;
    }
    G4FUZZ_CHECK(n >= 1 && ids[0] == id_bos, "the prompt does not start with <bos>");
    G4FUZZ_CHECK(turns >= n_msg + 1 && ends >= n_msg,
                 "%zu messages gave %zu <|turn> and %zu <turn|>: content hid a marker of the template",
                 n_msg, turns, ends);
    free(ids);
    free(b.p);
    return 0;
}
