/* tokenizer.h - SentencePiece-style tokenizer read from GGUF metadata.
 *
 * Keys (llama.cpp spelling): tokenizer.ggml.model ("llama" = SPM, "gemma4"),
 * tokenizer.ggml.tokens (string[]), tokenizer.ggml.scores (f32[]),
 * tokenizer.ggml.token_type (i32[]: 1 normal, 2 unknown, 3 control,
 * 4 user defined, 5 unused, 6 byte), tokenizer.ggml.bos_token_id,
 * tokenizer.ggml.eos_token_id, tokenizer.ggml.unknown_token_id,
 * tokenizer.ggml.add_bos_token, tokenizer.ggml.add_space_prefix.
 * SPM encoding follows llama.cpp's llm_tokenizer_spm (src/llama-vocab.cpp):
 * spaces become U+2581, symbols are merged greedily by score, unknown
 * pieces fall back to <0xXX> byte tokens. "gemma4" is llama.cpp's BPE with
 * the GEMMA4 pre-tokenizer: spaces become U+2581 (no prefix), the text is
 * split into newline / non-newline runs, merged by tokenizer.ggml.merges
 * rank, with the same <0xXX> byte fallback.
 */
#ifndef G4_TOKENIZER_H
#define G4_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../common/g4err.h"
#include "../gguf/gguf.h"

typedef struct g4_tokenizer g4_tokenizer;  /* opaque; copies what it needs */

g4_tokenizer *g4_tokenizer_from_gguf(const g4_gguf *g, g4_err *err);
void g4_tokenizer_free(g4_tokenizer *t);

int32_t g4_tokenizer_n_vocab(const g4_tokenizer *t);
int32_t g4_tokenizer_bos(const g4_tokenizer *t);   /* -1 when none */
int32_t g4_tokenizer_eos(const g4_tokenizer *t);   /* -1 when none */
int g4_tokenizer_add_bos(const g4_tokenizer *t);
/* Id of an exact token string (e.g. "<end_of_turn>"), or -1. */
int32_t g4_tokenizer_find(const g4_tokenizer *t, const char *piece);
/* 1 when id is a control token (not rendered by decode). */
int g4_tokenizer_is_control(const g4_tokenizer *t, int32_t id);

/* Encode UTF-8 `text` (len bytes). `add_bos` prepends BOS. Writes at most
 * `cap` ids to `out` and the full count to *n_out; when *n_out > cap the
 * caller retries with a larger buffer. parse_special: when nonzero, control
 * token strings in the text map to their ids. */
g4_status g4_tokenizer_encode(const g4_tokenizer *t, const char *text, size_t len,
                              int add_bos, int parse_special,
                              int32_t *out, size_t cap, size_t *n_out, g4_err *err);

/* Text bytes of one token as it appears in output: U+2581 -> ' ',
 * <0xXX> -> the raw byte, control tokens -> "" . `prev` is the preceding id
 * (or -1): the leading space of the first piece after BOS is dropped when
 * the vocab adds a space prefix. Writes up to cap bytes; returns the length
 * needed (which may exceed cap). Bytes may be a partial UTF-8 sequence.
 * (prev = -1, the start of the text, drops that space too, as SentencePiece's
 * decode and llama.cpp's detokenize without BOS do; user-defined tokens are
 * rendered verbatim; unused/unknown/out-of-range ids give "".) */
size_t g4_tokenizer_piece(const g4_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t cap);

/* ---- additions (tokenizer owner) -------------------------------------- */

/* GGUF tokenizer.ggml.token_type values (llama.cpp llama_token_type). */
typedef enum g4_token_type {
    G4_TOKEN_UNDEFINED = 0, G4_TOKEN_NORMAL = 1, G4_TOKEN_UNKNOWN = 2, G4_TOKEN_CONTROL = 3,
    G4_TOKEN_USER_DEFINED = 4, G4_TOKEN_UNUSED = 5, G4_TOKEN_BYTE = 6,
} g4_token_type;

/* An in-memory vocabulary, as the GGUF keys above describe it. Used by
 * g4_tokenizer_from_gguf internally and by tests. Everything is copied. */
typedef struct g4_vocab_desc {
    const char *model;          /* tokenizer.ggml.model: "llama" or "gemma4" */
    int32_t n_tokens;
    const g4_str *tokens;       /* n_tokens strings (need not be NUL-terminated) */
    const float *scores;        /* n_tokens, or NULL (all 0) */
    const int32_t *types;       /* n_tokens g4_token_type, or NULL (all normal) */
    int32_t n_merges;           /* tokenizer.ggml.merges ("left right"), BPE only */
    const g4_str *merges;
    int32_t bos, eos, unk, eot; /* -1 when none; out-of-range ids are an error */
    int add_bos;                /* prepend BOS by default (g4_tokenizer_add_bos) */
    int add_space_prefix;       /* SPM: prefix the text with one space */
} g4_vocab_desc;

/* Build a tokenizer from a description. G4_ERR_UNSUPPORTED for models other
 * than "llama"/"gemma4", G4_ERR_FORMAT for duplicate tokens, missing merges
 * or bad special ids, G4_ERR_NOMEM. */
g4_tokenizer *g4_tokenizer_from_vocab(const g4_vocab_desc *d, g4_err *err);

const char *g4_tokenizer_model(const g4_tokenizer *t);   /* "llama" or "gemma4" */
int32_t g4_tokenizer_unk(const g4_tokenizer *t);         /* -1 when none */
int g4_tokenizer_add_space_prefix(const g4_tokenizer *t);
/* Raw vocab string of `id` (not NUL-terminated; *len set), or NULL when out of range. */
const char *g4_tokenizer_token(const g4_tokenizer *t, int32_t id, size_t *len);
/* g4_token_type of `id`, or -1 when out of range. */
int g4_tokenizer_token_type(const g4_tokenizer *t, int32_t id);
/* 1 when generation should stop at `id`: EOS, EOT, and the end-of-turn
 * tokens llama.cpp treats as end-of-generation (<end_of_turn>, <turn|>, ...). */
int g4_tokenizer_is_eog(const g4_tokenizer *t, int32_t id);

/* Decode ids[n] to UTF-8 bytes (maybe invalid UTF-8 if the ids cut a
 * character): the concatenation of g4_tokenizer_piece over the sequence,
 * starting with prev = -1. Out-of-range ids are skipped. Writes up to cap
 * bytes; returns the length needed. */
size_t g4_tokenizer_decode(const g4_tokenizer *t, const int32_t *ids, size_t n, char *buf, size_t cap);

#endif
