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
#include "../engine/kvcache.h"

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
    int32_t kv_type;         /* G4_KV_* of caches built for this model */
    struct g4_kvcache *kv1;  /* the single-sequence API's cache, NULL until used */
    float *hidden_out;       /* g4_model_set_hidden_out: when set, a forward also writes the
                                final-normed hidden state of every logits row here */
};

struct g4_arch {
    const char *name;        /* general.architecture value, e.g. "llama" */
    g4_status (*load)(g4_model *m, g4_err *err);
    void (*free)(g4_model *m);
    /* g4_model_forward_batch after the argument checks; tokens are in range */
    g4_status (*forward)(g4_model *m, const g4_batch *b, struct g4_kvcache *kv, float *logits, g4_err *err);
    g4_model_memory (*memory)(const g4_model *m);   /* kv_bytes: 0 (caches are the engine's) */
    /* g4_model_kv_layers: the cache layers, in the order the forward
     * indexes them (its g4_kvc_store / g4_kvc_attention `li`) */
    int (*kv_layers)(const g4_model *m, struct g4_kv_layer *out);
};

/* Architectures known to this build (defined in their own files). */
extern const g4_arch g4_arch_llama;
extern const g4_arch g4_arch_gemma4;
extern const g4_arch g4_arch_gemma3;
extern const g4_arch g4_arch_gemma4_assistant;

/* What the Gemma 4 MTP assistant (gemma4_assistant.c) reads of its gemma4
 * target (gemma4.c): the token embedding it concatenates with the target's
 * hidden state, and the cache layers of the last sliding-window and the last
 * global layer that compute K/V (transformers Gemma4TextConfig.kv_sharing_modes
 * "store": the last non-shared layer of each type; llama.cpp
 * llama-model.cpp's gemma4-assistant share(): target layers n-2 / n-1, which
 * the target's own KV sharing maps to the same layers in every release). */
typedef struct g4_mtp_source {
    const g4_tensor *token_embd;   /* [n_embd][n_vocab] */
    int32_t n_embd, n_vocab;
    int kv_slot[2];                /* cache layer index: [0] global, [1] sliding; -1 none */
    int n_head_kv[2], head_dim[2]; /* of those layers */
    int window;                    /* the target's attention.sliding_window */
} g4_mtp_source;
/* G4_ERR_UNSUPPORTED when m is not a gemma4 model. */
g4_status g4_gemma4_mtp_source(const g4_model *m, g4_mtp_source *out, g4_err *err);

/* ---- loader helpers for architecture files (model.c) ---------------------
 * Hyperparameters are read as "<general.architecture>.<suffix>" (llama.cpp's
 * LLM_KV names: "llama.embedding_length", "gemma4.attention.sliding_window"),
 * so one arch file serves every file of its architecture. Errors name the key. */
g4_status g4_hp_u32(const g4_model *m, const char *suffix, uint32_t *out, g4_err *err);
g4_status g4_hp_u32_or(const g4_model *m, const char *suffix, uint32_t dflt, uint32_t *out, g4_err *err);
g4_status g4_hp_f32(const g4_model *m, const char *suffix, float *out, g4_err *err);
g4_status g4_hp_f32_or(const g4_model *m, const char *suffix, float dflt, float *out, g4_err *err);

/* Look up a tensor and check it at load time: present (unless optional, then
 * *out = NULL), of a type this build computes with (g4_type_supported), row
 * length a whole number of blocks, and shape ne0 x ne1 (ne1 <= 0: a 1-D
 * tensor of ne0). Errors name the tensor and give expected vs found shape:
 * G4_ERR_FORMAT (missing, wrong shape), G4_ERR_UNSUPPORTED (type). */
g4_status g4_model_tensor(const g4_model *m, const char *name, int64_t ne0, int64_t ne1,
                          int optional, const g4_tensor **out, g4_err *err);
/* The same for "blk.<il>.<suffix>" (llama.cpp's per-layer naming, e.g. "attn_q.weight"). */
g4_status g4_model_blk_tensor(const g4_model *m, int il, const char *suffix, int64_t ne0, int64_t ne1,
                              int optional, const g4_tensor **out, g4_err *err);
/* A 1-D F32 vector of n floats (norm weights; llama.cpp never quantizes 1-D
 * tensors) as a pointer into the mapping. NULL without error when optional and absent. */
g4_status g4_model_vec(const g4_model *m, const char *name, int64_t n, int optional,
                       const float **out, g4_err *err);
g4_status g4_model_blk_vec(const g4_model *m, int il, const char *suffix, int64_t n, int optional,
                           const float **out, g4_err *err);

/* A per-layer hyperparameter that llama.cpp reads with get_key_or_arr
 * ("gemma4.feed_forward_length", "gemma4.attention.head_count_kv"): a scalar
 * for every layer or an array of n_layer integers (any integer type, BOOL
 * arrays as 0/1). Absent: dflt[il] when dflt is given, else an error naming
 * the key; an array of another length is an error too. */
g4_status g4_hp_u32_layers(const g4_model *m, const char *suffix, int n_layer, const uint32_t *dflt,
                           uint32_t *out, g4_err *err);

/* As g4_model_blk_tensor for a 3-D tensor ne0 x ne1 x ne2 (expert stacks). */
g4_status g4_model_blk_tensor3(const g4_model *m, int il, const char *suffix, int64_t ne0, int64_t ne1,
                               int64_t ne2, int optional, const g4_tensor **out, g4_err *err);

/* Final context length from the requested m->n_ctx and m->n_ctx_train
 * (<= 0: n_ctx_train capped at G4_DEFAULT_CTX_CAP). G4_ERR_LIMIT above G4_MAX_CTX
 * or $GEMMA4STACK_MAX_CONTEXT, before the KV cache is allocated. */
#define G4_DEFAULT_CTX_CAP 4096
#define G4_MAX_CTX (1 << 20)
#define G4_MAX_CTX_ENV "GEMMA4STACK_MAX_CONTEXT"   /* raises or lowers G4_MAX_CTX */
g4_status g4_model_resolve_ctx(g4_model *m, g4_err *err);

/* Bytes of all tensor data in the file (what the mapping holds for weights). */
uint64_t g4_model_weights_bytes(const g4_model *m);

#endif
