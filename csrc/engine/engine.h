/* engine.h - continuous batching: many requests decoded together, one
 * weight stream per step for every running sequence.
 *
 * Three parts, each readable alone (after vLLM's scheduler / block manager /
 * model runner split): the paged KV cache (kvcache.h) holds blocks and
 * prefixes; this file's scheduler decides which tokens run in a step; the
 * model's batched forward (model.h g4_model_forward_batch) runs them. Nothing
 * here knows about text or HTTP.
 *
 * A request's life: submitted (waiting, FIFO) -> admitted when a sequence
 * slot is free and the KV pool can promise every block it may need
 * (prompt + max_tokens) -> prefilling, a chunk of its prompt per step ->
 * decoding, one token per step -> finished (end-of-generation token,
 * max_tokens, context full) or cancelled. Every exit returns its blocks.
 *
 * Each step (g4_engine_step): one decode token for every decoding sequence
 * (plus its draft tokens when it speculates, below), then prompt tokens of prefilling sequences in admission order up to the
 * step's token budget (chunked prefill: a long prompt does not stall the
 * others' streams), one batched forward, one sample per sequence whose
 * logits were computed.
 *
 * Speculative decoding by prompt lookup (a request's draft_max > 0 without
 * draft_model): before its decode token the engine looks the last n tokens
 * of the request's history (prompt + generated) up earlier in that history,
 * n = draft_ngram down to 1, most recent match first, and proposes the up to
 * k tokens that followed the match as drafts (Saxena 2023, "Prompt Lookup
 * Decoding"; transformers' prompt_lookup_num_tokens). [last, d1..dk] run in
 * the step's forward with logits for all k + 1. Greedy requests: d_i is
 * accepted while it equals the argmax after d_{i-1} (Leviathan et al. 2023,
 * greedy case), so the step yields the accepted drafts plus the model's own
 * next token, the same tokens plain greedy decoding gives. Sampled requests
 * (temperature > 0): speculative sampling (Leviathan et al. 2023, Algorithm
 * 1; Chen et al. 2023, "Accelerating Large Language Model Decoding with
 * Speculative Sampling"): with p_i the target's distribution at row i after
 * the request's sampler chain (temperature, top-k, top-p, min-p: the very
 * distribution the plain path draws from, sample.h g4_sample_probs) and q_i
 * the proposal's, d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i));
 * the first rejected one is replaced by a draw from norm(max(p_i - q_i, 0));
 * when all k are accepted the bonus token is drawn from p_{k+1}. Prompt
 * lookup's drafts are deterministic (q_i = point mass on d_i): accept with
 * probability p_i(d_i), else draw from p_i without d_i. Each yielded token
 * is then distributed exactly as the plain sampler's (tests/test_spec.py
 * checks it with a chi-square test); the draws use the request's own
 * random stream, so a seed still reproduces its output, though not the same
 * output as the same seed without speculation. The sequence's KV length is
 * committed past the accepted tokens only; rejected drafts' rows are
 * overwritten by the next step (its prepare starts there), and
 * sliding-window blocks are released by the committed length, so nothing a
 * later query needs was freed. k adapts per request (transformers'
 * "heuristic" schedule: +2 after a fully accepted draft, -1 otherwise; halved
 * when nothing was accepted), and after a draft with nothing accepted the
 * request drafts no more for 2, 4, .. 16 steps, so drafts that are always
 * rejected end up as one token every 17 steps.
 *
 * Speculative decoding with a draft model (g4_engine_set_drafter: a smaller
 * model with the same vocabulary; a request's draft_model nonzero): the
 * drafter has its own paged KV pool (n_seq whole contexts of its n_ctx,
 * sliding-window blocks kept, since it is rewound after every verification)
 * with one sequence per running request in the same slot. Before the
 * step's batch is built, the drafter runs k batched forwards, all
 * speculating sequences in each: the first runs each sequence's tokens it
 * has not seen (the whole prompt at the first decode step, in chunks of the
 * step budget; `last` every step after), forward j + 1 runs d_j. d_j is the
 * drafter's argmax (greedy) or a draw from q_j, the request's sampler chain
 * over the drafter's logits (sampled; q_j kept for the rule above). After
 * verification the drafter's sequence is cut back to the tokens the target
 * committed (last, d_1..d_a), so its next forward rewrites from there. The
 * draft length adapts as for prompt lookup.
 *
 * Speculative decoding with Gemma 4's MTP assistant (g4_engine_set_drafter
 * with a `gemma4-assistant` model for a gemma4 target; model.h g4_mtp_step):
 * the assistant has no KV cache; each of its layers attends over the
 * target's cache layer of the last sliding-window or the last global layer,
 * of the request's own sequence, positions 0..P-1 (P: the position of
 * `last`). Draft j (j = 0..k-1) is one g4_mtp_step for all speculating
 * sequences at once, at position P every time (transformers
 * Gemma4AssistantCandidateGenerator; llama.cpp common/speculative.cpp): the
 * first from `last` and the target's final-normed hidden state of the row
 * that sampled it (the forward writes every logits row's hidden state:
 * g4_model_set_hidden_out), the next ones from d_j and the assistant's own
 * projected hidden state. d_j is chosen as for a draft model (argmax, or a
 * draw from q_j kept for the rejection rule), verification and rollback are
 * the same; nothing of the assistant needs rewinding. Since its sliding
 * layers read window + 1 keys before P, the target's pool is rebuilt with
 * that many more sliding positions kept (kvcache.h window_extra).
 *
 * Sampling is csrc/sample's chain (g4_sample_ex, sample.h: mask, logit bias,
 * penalties, top-k, top-p, min-p, temperature), per request: each request has
 * its own g4_sampler (seeded), logit bias, penalty history (its generated
 * tokens, as the single-sequence path counts them) and optional logprobs.
 *
 * Constrained decoding (llguidance in Python, gemma4stack/constrain.py): a
 * request submitted with constrained = 1 samples only tokens its mask allows.
 * The caller sets the mask of the next token with g4_engine_set_mask between
 * steps (after the event of the previous token); a step leaves out a
 * constrained request whose mask has not been set since its last token (it
 * keeps its slot and its KV blocks and decodes in a later step), and holds
 * back the last prompt token of one whose first mask is not set yet. So the
 * masks can be computed asynchronously, each sequence waiting only for its
 * own. Constrained requests, and those with a logit bias, penalties or
 * logprobs, do not draft: each verification row would need the mask,
 * penalty history and logprobs of its own accepted prefix, which the
 * verifier does not build (they decode one token per step).
 *
 * Not thread-safe: the caller serialises every call on an engine (and on
 * its model: g4_model_forward shares the architecture's scratch).
 */
#ifndef G4_ENGINE_H
#define G4_ENGINE_H

#include <stdint.h>

#include "../model/model.h"
#include "../sample/sample.h"
#include "kvcache.h"

typedef struct g4_engine g4_engine;

typedef struct g4_engine_params {
    int32_t n_seq;          /* sequences running at once (>= 1; llama-server's --parallel) */
    int32_t n_batch;        /* tokens per step at most, decode + prompt chunks (<= 0: 128;
                               raised to n_seq so every running sequence decodes each step) */
    uint64_t kv_bytes;      /* KV pool in bytes; 0: n_seq sequences of the model's n_ctx */
    int32_t queue_max;      /* waiting requests at most (<= 0: 1024); past it submit fails */
    int prefix_cache;       /* nonzero: full prompt blocks are shared between requests */
} g4_engine_params;

typedef struct g4_request_params {
    int32_t max_tokens;     /* >= 1 */
    float temperature;      /* <= 0: greedy */
    int32_t top_k;          /* <= 0: off */
    float top_p;            /* >= 1: off */
    uint64_t seed;
    int32_t draft_max;      /* draft tokens per step at most, 0..G4_DRAFT_MAX; 0: no speculation */
    int32_t draft_ngram;    /* n-gram size matched (1..16) when draft_max > 0 (prompt lookup) */
    int32_t draft_model;    /* nonzero (with draft_max > 0): drafts from the engine's draft
                               model (g4_engine_set_drafter) instead of prompt lookup */
    /* The rest of the sampler chain, as g4_sample_params (csrc/sample/sample.h, where
     * each formula's source is); zero-initialised fields are off. */
    float min_p;            /* <= 0: off; else keep p >= min_p * p_max (0..1) */
    float repeat_penalty;   /* 1 or <= 0: off; llama.cpp's repeat penalty (> 0) */
    int32_t repeat_last_n;  /* penalty window in generated tokens; 0: off, -1: all of them */
    float presence_penalty;  /* 0: off; OpenAI's range -2..2 (not checked) */
    float frequency_penalty; /* 0: off; OpenAI's range -2..2 (not checked) */
    const int32_t *bias_ids; /* n_bias token ids, each in 0..n_vocab-1 (copied at submit) */
    const float *bias_vals;  /* n_bias additive logit biases; -INFINITY bans a token */
    int32_t n_bias;
    int32_t logprobs;       /* nonzero: each event carries its token's log-probability */
    int32_t top_logprobs;   /* with logprobs: also the best 0..G4_SAMPLE_MAX_TOP alternatives */
    int32_t constrained;    /* nonzero: sample only what g4_engine_set_mask allows (above) */
} g4_request_params;

#define G4_DRAFT_MAX 32     /* draft tokens per request and step at most */

typedef struct g4_request_stats {
    int32_t n_prompt, n_cached;  /* prompt tokens, of them reused from the prefix cache */
    int32_t n_generated;         /* tokens returned so far */
    double queue_ms;             /* submit -> admission */
    double prefill_ms;           /* admission -> first token */
    double decode_ms;            /* first token -> this event */
    int32_t n_decode;            /* tokens sampled in decode steps after the first token
                                    (one per step, more when drafts were accepted) */
    int32_t n_drafted;           /* draft tokens proposed (prompt lookup or draft model) */
    int32_t n_accepted;          /* of them, accepted (each is a generated token) */
    int32_t n_draft_steps;       /* decode steps that carried drafts */
} g4_request_stats;

/* One step's news about a request: a token (>= 0), and/or the end
 * (finish != G4_FINISH_NONE; token -1 when it ended on an end-of-generation
 * token, which is not returned, or by cancellation). */
typedef struct g4_event {
    int64_t id;
    int32_t token;
    int32_t finish;              /* g4_finish */
    g4_request_stats stats;
    /* Log-probabilities of a sampled token (requests with logprobs; sample.h says which
     * distribution: after mask, bias and penalties, before temperature and truncation).
     * n_top: -1 when the request did not ask (or no token was returned), else how many
     * of top_ids / top_logprobs are filled, best first (natural log, <= 0). */
    float logprob;
    int32_t n_top;
    int32_t top_ids[G4_SAMPLE_MAX_TOP];
    float top_logprobs[G4_SAMPLE_MAX_TOP];
} g4_event;

#define G4_FINISH_CANCELLED 3

/* Errors: G4_ERR_INVALID (bad params), G4_ERR_LIMIT (a KV pool smaller than
 * one sequence), G4_ERR_NOMEM. */
g4_engine *g4_engine_create(g4_model *m, const g4_engine_params *p, g4_err *err);
void g4_engine_free(g4_engine *e);

/* Give the engine a draft model for requests with draft_model set (see the
 * top). dm: a loaded model whose vocabulary is the engine model's (same
 * n_vocab here; the caller checks the token strings); the engine does not
 * own it: free it after the engine, and run nothing else on it meanwhile.
 * Its KV pool: n_seq sequences of dm's n_ctx (g4_model_params.n_ctx), every
 * position kept. A gemma4-assistant dm is the MTP drafter (see the top): no
 * pool of its own; the engine's own pool is rebuilt (kv_bytes as given).
 * Before any submit. Errors: G4_ERR_INVALID (a draft model already set,
 * requests present, vocabulary sizes differ, an assistant made for another
 * model: g4_mtp_check), G4_ERR_UNSUPPORTED (an assistant for a non-gemma4
 * model), G4_ERR_LIMIT (kv_bytes too small once window_extra is added),
 * G4_ERR_NOMEM. */
g4_status g4_engine_set_drafter(g4_engine *e, g4_model *dm, g4_err *err);

/* Queue a request (the prompt and the logit bias are copied). Returns its id
 * (> 0), or -1 with err: G4_ERR_INVALID (empty prompt, id outside the vocab,
 * max_tokens < 1, draft_max outside 0..G4_DRAFT_MAX, draft_ngram outside
 * 1..16 with prompt lookup, draft_model without a draft model, top_logprobs
 * outside 0..G4_SAMPLE_MAX_TOP, n_bias < 0 or a bias id outside the
 * vocabulary, repeat_last_n < -1), G4_ERR_NOMEM,
 * G4_ERR_LIMIT (prompt + 1 longer than the context; or the waiting queue is
 * full: err->msg starts with "queue full"). */
int64_t g4_engine_submit(g4_engine *e, const int32_t *prompt, int32_t n_prompt, const g4_request_params *rp,
                         g4_err *err);

/* Cancel a waiting or running request now: its blocks go back to the pool.
 * Returns 1 when it existed. */
int g4_engine_cancel(g4_engine *e, int64_t id);

/* The token mask of a constrained request's next sample: mask[n_words]
 * uint32 words, n_words = ceil(n_vocab / 32), bit (i % 32) of word i / 32 set
 * = token i allowed (llguidance's and xgrammar's layout; bits past n_vocab are
 * ignored). Copied; replaces a mask set before and not used yet. The next
 * step that samples the request uses it (disallowed logits -> -inf) and
 * consumes it: until it is set again the request does not decode (engine.h's
 * top). Errors (G4_ERR_INVALID, nothing changed): no waiting or running
 * request with this id, a request not submitted with constrained = 1, n_words
 * not ceil(n_vocab / 32), a mask that allows no token of the vocabulary. */
g4_status g4_engine_set_mask(g4_engine *e, int64_t id, const uint32_t *mask, int32_t n_words, g4_err *err);

/* Run one step. events[0..*n_events) receive what happened (at most
 * g4_engine_max_events(): a speculating request gets one event per token it
 * yields, in order). Nothing to do: *n_events = 0 and no forward. */
g4_status g4_engine_step(g4_engine *e, g4_event *events, int32_t *n_events, g4_err *err);
int32_t g4_engine_max_events(const g4_engine *e);

typedef struct g4_engine_stats {
    int32_t n_running, n_waiting;     /* requests */
    int32_t n_seq, n_batch, queue_max;
    uint64_t steps, tokens;           /* forward steps run, tokens through them */
    uint64_t prompt_tokens, generated_tokens;
    g4_kvc_stats kv;
} g4_engine_stats;

g4_engine_stats g4_engine_get_stats(const g4_engine *e);

/* KV bytes one sequence of n_ctx positions needs in this engine's pool. */
uint64_t g4_engine_seq_kv_bytes(const g4_engine *e, int32_t n_ctx);

#endif
