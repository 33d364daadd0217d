/* model.h - a loaded model: GGUF weights, architecture, KV cache, forward pass.
 *
 * Architectures are registered in a table (model.c); each lives in its own
 * file (llama.c, gemma4.c, ...) and provides a g4_arch vtable. Data flows one
 * way: GGUF -> tensors -> forward -> logits; sampling and text are above this.
 */
#ifndef G4_MODEL_H
#define G4_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../common/g4err.h"
#include "../gguf/gguf.h"
#include "../tokenizer/tokenizer.h"

typedef struct g4_model g4_model;  /* opaque */

typedef struct g4_model_params {
    int32_t n_ctx;       /* KV cache length in tokens; <= 0: the model's trained context, capped at 4096 */
    int32_t n_threads;   /* <= 0: number of physical cores */
} g4_model_params;

typedef struct g4_model_memory {
    uint64_t weights_bytes;   /* tensor bytes mapped from the file */
    uint64_t kv_bytes;        /* KV cache allocated */
    uint64_t scratch_bytes;   /* activations and other buffers */
} g4_model_memory;

/* Load a GGUF model. Errors: see gguf.h; G4_ERR_UNSUPPORTED for an unknown
 * general.architecture or tensor type; G4_ERR_FORMAT naming a missing key or
 * a tensor of the wrong shape. */
g4_model *g4_model_load(const char *path, const g4_model_params *params, g4_err *err);
void g4_model_free(g4_model *m);

const g4_gguf *g4_model_gguf(const g4_model *m);
const g4_tokenizer *g4_model_tokenizer(const g4_model *m);
const char *g4_model_arch(const g4_model *m);
int32_t g4_model_n_vocab(const g4_model *m);
int32_t g4_model_n_ctx(const g4_model *m);
int32_t g4_model_n_threads(const g4_model *m);
g4_model_memory g4_model_memory_usage(const g4_model *m);

/* Run tokens[0..n) at positions pos..pos+n-1, appending to the KV cache
 * (entries at >= pos are overwritten). logits: float32, either
 * [n][n_vocab] when all_logits is nonzero or [n_vocab] for the last token.
 * G4_ERR_LIMIT when pos + n > n_ctx; G4_ERR_INVALID for an id outside the
 * vocab. Thread-safe only per model (one forward at a time). */
g4_status g4_model_forward(g4_model *m, const int32_t *tokens, int32_t n, int32_t pos,
                           float *logits, int all_logits, g4_err *err);

#endif
