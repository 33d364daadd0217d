/* fuzz_tokenizer.c - libFuzzer harness: arbitrary bytes as text for fixed,
 * real vocabularies (csrc/tokenizer/).
 *
 * Input: byte 0 picks the vocab (low bits) and the flags add_bos (bit 6)
 * and parse_special (bit 7); the rest is the text, any bytes (invalid
 * UTF-8, NULs, special-token strings, U+2581).
 *
 * Vocabs, loaded once from GGUF files through g4_tokenizer_from_gguf:
 *   0 ggml-vocab-llama-spm.gguf   Llama 2 SentencePiece, 32000 tokens (shared/models)
 *   1 stories260K.gguf            llama2.c SPM, 512 tokens (shared/models)
 *   2 TinyStories-656K-Q8_0.gguf  HF BPE as SPM with flat scores (shared/models)
 *   3 gemma4-toy-vocab.gguf       "gemma4" BPE with Gemma 4's turn/channel
 *                                 markers, written by csrc/fuzz/make_seeds.py
 *                                 ($G4FUZZ_GEMMA4_VOCAB; skipped when absent)
 * Checks: tokcheck.h (ids in range, retry protocol, decode, spelling).
 */
#include "tokcheck.h"

#define N_VOCABS 4
static g4_tokenizer *vocabs[N_VOCABS];

static g4_tokenizer *load(const char *path) {
    g4_err err;
    g4_gguf *g = g4_gguf_open(path, &err);
    if (!g) { fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg); return NULL; }
    g4_tokenizer *t = g4_tokenizer_from_gguf(g, &err);
    if (!t) fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
    g4_gguf_close(g);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char buf[1024];
    vocabs[0] = load(g4fuzz_shared(buf, sizeof buf, "models/ggml-vocab-llama-spm.gguf"));
    vocabs[1] = load(g4fuzz_shared(buf, sizeof buf, "models/stories260K.gguf"));
    vocabs[2] = load(g4fuzz_shared(buf, sizeof buf, "models/TinyStories-656K-Q8_0.gguf"));
    const char *toy = getenv("G4FUZZ_GEMMA4_VOCAB");
    vocabs[3] = load(toy && *toy ? toy : "build/fuzz/gemma4-toy-vocab.gguf");
    if (!vocabs[0] || !vocabs[1] || !vocabs[2]) {
        fprintf(stderr, "fuzz_tokenizer: the shared vocabs are missing (set GEMMA4STACK_SHARED)\n");
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const g4_tokenizer *t = vocabs[data[0] % N_VOCABS];
    if (!t) t = vocabs[0];
    int add_bos = data[0] >> 6 & 1, parse_special = data[0] >> 7;
    size_t n = 0;
    int32_t *ids = g4fuzz_encode_checked(t, (const char *)data + 1, size - 1, add_bos, parse_special, &n);
    free(ids);
    return 0;
}
