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
    const char *kv_type; /* KV cache elements: "f16", "q8_0" or "f32"; NULL or "": f16, or f32
                            when the K projection is F32 (an unquantized reference model) */
} g4_model_params;

/* One forward over tokens of several sequences (llama.cpp's llama_batch):
 * token t is id token[t] at position pos[t] of KV sequence seq[t]; logits[t]
 * nonzero asks for its logits. A sequence's tokens appear in increasing,
 * consecutive positions, and its KV cache holds every position before its
 * first one. */
typedef struct g4_batch {
    int32_t n;
    const int32_t *token, *pos, *seq;
    const int8_t *logits;
} g4_batch;

struct g4_kvcache;   /* engine/kvcache.h */

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
int32_t g4_model_kv_type(const g4_model *m);

/* The layers that store K/V (KV-shared layers have none), as the paged cache
 * (engine/kvcache.h) is built for them: out[0..n) when out is not NULL, at
 * most 4096 entries; returns n. */
struct g4_kv_layer;
int g4_model_kv_layers(const g4_model *m, struct g4_kv_layer *out);

/* Run a batch (see g4_batch) over kv, whose sequences the caller prepared
 * (g4_kvc_seq_prepare) for the batch's positions. logits: float32
 * [n_out][n_vocab], one row per token with logits[t] set, in batch order.
 * G4_ERR_INVALID for an id outside the vocab. Every matrix multiplies all the
 * batch's tokens at once (each weight block is read once per tile of
 * tokens); attention runs per token over its own sequence's blocks.
 * One forward at a time per model. */
g4_status g4_model_forward_batch(g4_model *m, const g4_batch *b, struct g4_kvcache *kv, float *logits,
                                 g4_err *err);

/* Prefix reuse: of the positions 0..n_keep-1 the single-sequence KV cache
 * holds from earlier forwards, how many a forward starting at n_keep can
 * build on (all of them: that cache keeps every position). */
int32_t g4_model_kv_keep(const g4_model *m, int32_t n_keep);

/* The single-sequence API, a batch of one over a private paged cache of one
 * sequence (allocated on first use, every position kept so any rewind works).
 * Runs tokens[0..n) at positions pos..pos+n-1, appending to that cache
 * (entries at >= pos are dropped first; pos may not be past what it holds).
 * logits: float32, either [n][n_vocab] when all_logits is nonzero or
 * [n_vocab] for the last token. G4_ERR_LIMIT when pos + n > n_ctx;
 * G4_ERR_INVALID for an id outside the vocab or a position past the cache's
 * end. Thread-safe only per model (one forward at a time). */
g4_status g4_model_forward(g4_model *m, const int32_t *tokens, int32_t n, int32_t pos,
                           float *logits, int all_logits, g4_err *err);

/* The final-normed hidden state of every logits row (the lm_head's input;
 * transformers' hidden_states[-1], llama.cpp's h_nextn), which the Gemma 4
 * MTP assistant reads: while buf is set, each forward also writes
 * [n_out][width] float32 rows to it, in the order of the logits rows (buf
 * must hold as many rows as the forward's logits). NULL stops it. Returns
 * the row width (embedding_length), or 0 (and nothing is set) for an
 * architecture without it (only gemma4 has it). */
int32_t g4_model_set_hidden_out(g4_model *m, float *buf);

/* ---- Gemma 4 MTP assistant (gemma4_assistant.c) ------------------------------
 * A `gemma4-assistant` model (llama.cpp's arch name; transformers
 * Gemma4AssistantForCausalLM) drafts tokens for a gemma4 target from the
 * target's own KV cache: every layer of it attends over the target's cache
 * layers of the last sliding-window and the last global layer. One draft
 * step of row t: input the token tok[t] at position pos[t] and the hidden
 * state h[t] ([n_embd_backbone]: the target's final-normed hidden state of
 * the row that sampled tok[t], or the assistant's own h_out of the previous
 * step); out its logits and h_out[t], the next step's h. Within a draft
 * round the position stays that of the last token the target sampled (P):
 * the target's cache holds 0..P-1 of sequence seq[t] and is not written. */
typedef struct g4_mtp_batch {
    int32_t n;
    const int32_t *token;   /* [n] token ids (target vocabulary) */
    const int32_t *pos;     /* [n] positions P >= 1 */
    const int32_t *seq;     /* [n] target KV sequence of each row */
    const float *h;         /* [n][n_embd_backbone] */
} g4_mtp_batch;

/* Whether asst can draft for target: asst is a gemma4-assistant whose
 * embedding_length_out equals the target's embedding_length, vocabularies
 * match, and its layers' head sizes and KV heads match the target layers
 * they read. G4_ERR_INVALID / G4_ERR_UNSUPPORTED naming the mismatch. */
g4_status g4_mtp_check(const g4_model *asst, const g4_model *target, g4_err *err);

/* n_embd_backbone (embedding_length_out) of an assistant, 0 for other models. */
int32_t g4_mtp_n_embd_backbone(const g4_model *asst);

/* Keys before a target sliding-window layer's usual window that the
 * assistant also reads (its sliding layers see the last window + 1 cached
 * positions: transformers' bidirectional sliding mask |q - k| <= window,
 * flipped, in Gemma4AssistantForCausalLM.create_attention_masks), so a
 * target cache it reads must keep them (g4_kvc_params.window_extra). */
int32_t g4_mtp_window_extra(const g4_model *asst, const g4_model *target);

/* One draft step for b->n rows (see above) over kv, the target's cache
 * (g4_model_kv_layers(target) layout). logits: float32 [n][n_vocab];
 * h_out: float32 [n][n_embd_backbone]. Errors: G4_ERR_INVALID (a token
 * outside the vocabulary, a position < 1 or past what kv holds for the
 * sequence, asst / target not a pair: g4_mtp_check). One forward at a time
 * per assistant and target. */
g4_status g4_mtp_step(g4_model *asst, g4_model *target, const g4_mtp_batch *b, struct g4_kvcache *kv,
                      float *logits, float *h_out, g4_err *err);

/* The target's single-sequence cache (g4_model_forward's; NULL before the
 * first forward), for g4_mtp_step on sequence 0 outside an engine. */
struct g4_kvcache *g4_model_kv1(g4_model *m);

/* ---- generation loop (generate.c) ------------------------------------------
 * Prefill the prompt, then sample and feed back one token at a time, so a
 * caller (the Python binding) makes one call per token with no per-token
 * allocation. Stops at an end-of-generation token (g4_tokenizer_is_eog: EOS,
 * EOT, <end_of_turn>...), which is not returned, at max_tokens, or when the
 * context is full. The generation owns the model's KV cache while it runs:
 * nothing else may call g4_model_forward on the model in between. */

typedef struct g4_gen_params {
    int32_t max_tokens;      /* >= 0 */
    float temperature;       /* <= 0: greedy */
    int32_t top_k;           /* <= 0: off */
    float top_p;             /* >= 1: off */
    uint64_t seed;
    int32_t n_keep;          /* prompt tokens [0, n_keep) are already in the KV cache at
                                their positions (prefix reuse); 0 <= n_keep < n_prompt */
    /* the rest of the sampler chain (csrc/sample/sample.h); zero = off. The
       penalties count the generated tokens (OpenAI: tokens sampled so far). */
    float min_p;
    float repeat_penalty;    /* 0 or 1: off */
    int32_t repeat_last_n;   /* 0: off, -1: all generated tokens */
    float presence_penalty;
    float frequency_penalty;
    const int32_t *bias_ids; /* copied by g4_gen_create */
    const float *bias_vals;
    int32_t n_bias;
    int32_t n_logprobs;      /* 0..G4_SAMPLE_MAX_TOP top log-probabilities kept per step */
} g4_gen_params;

typedef enum g4_finish {
    G4_FINISH_NONE = 0,      /* still running */
    G4_FINISH_STOP = 1,      /* end-of-generation token */
    G4_FINISH_LENGTH = 2,    /* max_tokens reached or the context is full */
} g4_finish;

typedef struct g4_gen_stats {
    int32_t n_prompt;        /* prompt tokens (n_cached of them reused from the cache) */
    int32_t n_cached;        /* prompt tokens not recomputed (g4_gen_params.n_keep) */
    int32_t n_generated;     /* tokens returned so far */
    int32_t n_decode;        /* single-token forward passes after the prefill */
    double prefill_ms;       /* the forward pass of the n_prompt - n_cached new prompt tokens */
    double ttft_ms;          /* prefill + first sample: time to the first token */
    double decode_ms;        /* the n_decode forward passes and their sampling */
    g4_finish finish;
    int32_t n_past;          /* KV positions 0..n_past-1 now hold prompt + returned tokens
                                (the last returned token is only there if it was fed back) */
} g4_gen_stats;

typedef struct g4_gen g4_gen;

/* Copies the prompt (n_prompt >= 1; G4_ERR_LIMIT when longer than n_ctx,
 * G4_ERR_INVALID for ids outside the vocab). Nothing runs until g4_gen_next. */
g4_gen *g4_gen_create(g4_model *m, const int32_t *prompt, int32_t n_prompt,
                      const g4_gen_params *p, g4_err *err);
/* Next token id in *token, or -1 when finished (see g4_gen_stats.finish).
 * The first call runs the prompt. */
g4_status g4_gen_next(g4_gen *g, int32_t *token, g4_err *err);
/* g4_gen_next in two halves, so that a token mask (constrained decoding) can
 * be computed while the forward pass runs and applied to the sample:
 * g4_gen_forward runs the prompt or the last token (sets *done when the
 * generation is finished: nothing to sample), g4_gen_sample draws from its
 * logits. allowed: NULL or ceil(n_vocab / 32) uint32 words (sample.h);
 * G4_ERR_INVALID when the mask allows no token. */
g4_status g4_gen_forward(g4_gen *g, int *done, g4_err *err);
g4_status g4_gen_sample(g4_gen *g, const uint32_t *allowed, int32_t *token, g4_err *err);
/* The log-probabilities of the last sampled token (sample.h: after mask,
 * bias, penalties; before temperature): *chosen, and the best n_logprobs
 * ids/logprobs (id -1 past the allowed ones). Returns n_logprobs. */
int32_t g4_gen_logprobs(const g4_gen *g, float *chosen, const int32_t **top_ids, const float **top_logprobs);
g4_gen_stats g4_gen_get_stats(const g4_gen *g);
void g4_gen_free(g4_gen *g);

#endif
