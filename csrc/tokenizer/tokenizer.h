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
 * pieces fall back to <0xXX> byte tokens.
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
 * needed (which may exceed cap). Bytes may be a partial UTF-8 sequence. */
size_t g4_tokenizer_piece(const g4_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t cap);

#endif
