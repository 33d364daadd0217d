/* sample.h - next-token sampling: the llama.cpp sampler chain in plain C.
 *
 * Chain order as llama.cpp's common_sampler_init (common/sampling.cpp): the
 * token mask (a grammar, applied first as with grammar_first), logit bias,
 * then the default sampler order "penalties; top_k; top_p; min_p;
 * temperature" and one draw (llama_sampler_init_dist). temperature <= 0
 * means greedy: the argmax (lowest id on ties) after mask, bias and
 * penalties. Random numbers from xorshift64*, seeded, so a given seed
 * reproduces the same tokens.
 *
 * Formulas (each with its reference test in tests/c/test_sample.c and
 * tests/test_sample.py):
 *   logit bias      l[i] += bias[i]                (llama_sampler_logit_bias_apply)
 *   penalties       over the counts c[i] of each token in the last
 *                   repeat_last_n tokens of the history
 *                   (llama_sampler_penalties_apply, src/llama-sampling.cpp):
 *                   l[i] = l[i] <= 0 ? l[i] * repeat_penalty : l[i] / repeat_penalty
 *                   l[i] -= c[i] * frequency_penalty + (c[i] > 0) * presence_penalty
 *                   (the second line is OpenAI's definition, "Frequency and
 *                   presence penalties" in the API guide: mu[j] - c[j] * alpha_frequency
 *                   - float(c[j] > 0) * alpha_presence)
 *   top-k / top-p   as before (top-p at temperature 1, min_keep 1)
 *   min-p           keep p[i] >= min_p * max p, i.e. l[i] >= l_max + log(min_p)
 *                   at temperature 1 (llama_sampler_min_p_apply, min_keep 1)
 *   temperature     softmax(l / T), one inverse-CDF draw
 *
 * Log-probabilities (for OpenAI's logprobs / top_logprobs): the log-softmax
 * over the whole vocabulary of the logits after mask, bias and penalties and
 * before temperature and truncation (top-k/top-p/min-p), i.e. the model's
 * distribution as the request shaped it, not the one a draw used. vLLM's
 * default (logprobs_mode raw_logprobs) reports the model's output before any
 * processing; we include the request's own processing so that a masked or
 * banned token reports -inf, which is what a client checking a constrained
 * output expects. Masked tokens never appear in top_logprobs.
 */
#ifndef G4_SAMPLE_H
#define G4_SAMPLE_H

#include <stdint.h>

/* Everything a request can ask of the sampler. Zero-initialised fields are
 * "off" except repeat_penalty, where 1 is off (0 is treated as 1). */
typedef struct g4_sample_params {
    float temperature;          /* <= 0: greedy */
    int32_t top_k;              /* <= 0 or >= n_vocab: off */
    float top_p;                /* >= 1: off (start from g4_sample_params_default()) */
    float min_p;                /* <= 0: off */
    float repeat_penalty;       /* 1 (or <= 0): off */
    int32_t repeat_last_n;      /* window of the history the penalties count; 0: off, -1: all of it */
    float presence_penalty;     /* 0: off; OpenAI range -2..2 */
    float frequency_penalty;    /* 0: off; OpenAI range -2..2 */
    const int32_t *bias_ids;    /* n_bias token ids (ids outside the vocabulary are ignored) */
    const float *bias_vals;     /* n_bias additive biases; -INFINITY bans a token */
    int32_t n_bias;
    uint64_t seed;
} g4_sample_params;

typedef struct g4_sampler {
    float temperature;   /* <= 0: greedy */
    int32_t top_k;       /* <= 0 or >= n_vocab: disabled */
    float top_p;         /* >= 1: disabled */
    uint64_t rng_state;  /* set by g4_sampler_init */
    /* scratch owned by the sampler, grown on demand */
    void *scratch;
    int32_t scratch_n;
    /* set by g4_sampler_init_ex (g4_sampler_init leaves them off) */
    float min_p;
    float repeat_penalty;
    int32_t repeat_last_n;
    float presence_penalty;
    float frequency_penalty;
    int32_t *bias_ids;   /* owned copies */
    float *bias_vals;
    int32_t n_bias;
    int32_t *hist;       /* scratch: the sorted penalty window */
    int32_t hist_n;
} g4_sampler;

/* The defaults of g4_sample_params: greedy off (temperature 1), no filters,
 * no penalties (repeat_penalty 1, repeat_last_n 64 as llama.cpp), no bias. */
g4_sample_params g4_sample_params_default(void);

void g4_sampler_init(g4_sampler *s, float temperature, int32_t top_k, float top_p, uint64_t seed);
/* Initialise from params; copies the bias lists (the caller's may go away).
 * Returns 0, or -1 when out of memory (s is then a valid sampler without
 * bias, safe to free). */
int g4_sampler_init_ex(g4_sampler *s, const g4_sample_params *p);
void g4_sampler_free(g4_sampler *s);

/* Pick the next token from logits[n_vocab] (float32; may be modified).
 * Returns the id, or -1 when scratch allocation fails. */
int32_t g4_sample(g4_sampler *s, float *logits, int32_t n_vocab);

/* The whole chain. logits[n_vocab] float32 (modified: mask, bias and
 * penalties are applied in place). history[n_history]: earlier tokens of this
 * sequence, oldest first, for the penalties (NULL when n_history is 0; the
 * generation loop passes the generated tokens, OpenAI's "tokens sampled so
 * far"). allowed: NULL (every token allowed) or a bitmask of
 * ceil(n_vocab / 32) uint32 words, bit (i % 32) of word i / 32 set = token i
 * allowed (llguidance's and xgrammar's layout). n_top (0..G4_SAMPLE_MAX_TOP):
 * fill top_ids/top_logprobs[n_top] with the best tokens by log-probability
 * (best first, lowest id on ties; fewer than n_top when fewer are allowed:
 * the rest get id -1 and -INFINITY). chosen_logprob: when not NULL, the
 * log-probability of the returned token. Both as described at the top.
 * Returns the token id; -1 when out of memory; -2 when the mask allows no
 * token of the vocabulary. */
#define G4_SAMPLE_MAX_TOP 20
int32_t g4_sample_ex(g4_sampler *s, float *logits, int32_t n_vocab,
                     const int32_t *history, int32_t n_history, const uint32_t *allowed,
                     int32_t n_top, int32_t *top_ids, float *top_logprobs, float *chosen_logprob);

/* Set logits[i] = -INFINITY for every token whose bit in `allowed` is clear
 * (words of all ones are skipped, so a mask allowing most of a 262,144-token
 * vocabulary costs 8192 word reads). Returns how many tokens stay allowed. */
int32_t g4_apply_mask(float *logits, int32_t n_vocab, const uint32_t *allowed);

int32_t g4_argmax(const float *x, int32_t n);

/* For speculative decoding's rejection rule (engine.c): the distribution
 * g4_sample draws from, written out. probs[n_vocab] float32 receives, for
 * logits[n_vocab] (not modified), softmax(logit / T) over the candidates
 * top-k, top-p and min-p keep, 0 elsewhere (sums to 1 up to rounding); a
 * greedy sampler (T <= 0), or logits with no finite value, give a point mass
 * on the token g4_sample returns. Draws nothing. Returns 0, -1 when out of
 * memory (or n_vocab <= 0). */
int g4_sample_probs(g4_sampler *s, const float *logits, int32_t n_vocab, float *probs);

/* One uniform number in [0, 1) from the sampler's own stream (the request's
 * seed), so speculation's accept/reject draws are reproducible too. */
double g4_sampler_uniform(g4_sampler *s);

/* Draw i with probability w[i] / sum(w) from non-negative weights w[n]
 * (not normalised; entries <= 0 or NaN never drawn), one number from the
 * sampler's stream. Returns -1 when no weight is positive. */
int32_t g4_sample_weights(g4_sampler *s, const float *w, int32_t n);

#endif
