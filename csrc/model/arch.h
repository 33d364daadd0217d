/* arch.h - internal contract between model.c and each architecture file.
 *
 * model.c opens the GGUF, builds the tokenizer and the thread pool, picks the
 * g4_arch whose name equals general.architecture, and calls its hooks.
 * An architecture (llama.c, gemma4.c, gemma3.c, ...) reads its hyperparameters
 * and tensors from m->gguf in load(), keeps everything it allocates (weights
 * views, KV cache, scratch) behind m->impl, and frees it in free().
 * Shared numeric building blocks (RMSNorm, RoPE, softmax, threaded matmul)
 * live in ops.h so architectures are added beside each other, not bolted on.
 */
#ifndef G4_ARCH_H
#define G4_ARCH_H

#include "model.h"
#include "../common/threadpool.h"

typedef struct g4_arch g4_arch;

struct g4_model {
    g4_gguf *gguf;
    g4_tokenizer *tok;
    g4_pool *pool;
    const g4_arch *arch;
    void *impl;              /* architecture-specific state */
    int32_t n_vocab;         /* set by arch->load */
    int32_t n_ctx;           /* requested (params) before load; final after load */
    int32_t n_ctx_train;     /* set by arch->load from <arch>.context_length */
    int32_t n_threads;
};

struct g4_arch {
    const char *name;        /* general.architecture value, e.g. "llama" */
    g4_status (*load)(g4_model *m, g4_err *err);
    void (*free)(g4_model *m);
    g4_status (*forward)(g4_model *m, const int32_t *tokens, int32_t n, int32_t pos,
                         float *logits, int all_logits, g4_err *err);
    g4_model_memory (*memory)(const g4_model *m);
};

/* Architectures known to this build (defined in their own files). */
extern const g4_arch g4_arch_llama;

#endif
