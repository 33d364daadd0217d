/* generate.c - the token loop: prefill, sample, feed back (llama2.c's
 * generate(), llama.cpp's common decode loop), timed for tokens/s figures.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"
#include "../sample/sample.h"

struct g4_gen {
    g4_model *m;
    int32_t *prompt;
    float *logits;           /* [n_vocab] */
    g4_sampler sampler;
    int32_t max_tokens;
    int32_t pos;             /* next KV position to fill */
    int32_t last;            /* last sampled token, fed back next step */
    int started;
    int forwarded;           /* logits hold a forward pass not yet sampled */
    int32_t *out;            /* [max_tokens] generated ids: the penalties' history */
    int32_t n_logprobs;
    float chosen_lp;
    int32_t top_ids[G4_SAMPLE_MAX_TOP];
    float top_lps[G4_SAMPLE_MAX_TOP];
    g4_gen_stats st;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

g4_gen *g4_gen_create(g4_model *m, const int32_t *prompt, int32_t n_prompt,
                      const g4_gen_params *p, g4_err *err) {
    const int32_t n_vocab = g4_model_n_vocab(m), n_ctx = g4_model_n_ctx(m);
    if (n_prompt <= 0 || !prompt) {
        g4_err_set(err, G4_ERR_INVALID, "generate: the prompt needs at least one token");
        return NULL;
    }
    if (n_prompt > n_ctx) {
        g4_err_set(err, G4_ERR_LIMIT, "generate: prompt of %d tokens is longer than the context of %d tokens",
                   n_prompt, n_ctx);
        return NULL;
    }
    if (p->n_keep < 0 || p->n_keep >= n_prompt) {
        g4_err_set(err, G4_ERR_INVALID, "generate: n_keep %d must be in 0..%d (at least one prompt "
                   "token is run to get logits)", p->n_keep, n_prompt - 1);
        return NULL;
    }
    if (p->max_tokens < 0) {
        g4_err_set(err, G4_ERR_INVALID, "generate: max_tokens %d is negative", p->max_tokens);
        return NULL;
    }
    for (int32_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= n_vocab) {
            g4_err_set(err, G4_ERR_INVALID, "generate: token id %d (at index %d) is outside the vocabulary 0..%d",
                       prompt[i], i, n_vocab - 1);
            return NULL;
        }
    if (p->n_logprobs < 0 || p->n_logprobs > G4_SAMPLE_MAX_TOP) {
        g4_err_set(err, G4_ERR_INVALID, "generate: n_logprobs %d must be in 0..%d", p->n_logprobs,
                   G4_SAMPLE_MAX_TOP);
        return NULL;
    }
    g4_gen *g = calloc(1, sizeof *g);
    const int32_t n_out = p->max_tokens < n_ctx ? p->max_tokens : n_ctx;
    g4_sample_params sp = g4_sample_params_default();
    sp.temperature = p->temperature;
    sp.top_k = p->top_k;
    sp.top_p = p->top_p;
    sp.seed = p->seed;
    sp.min_p = p->min_p;
    sp.repeat_penalty = p->repeat_penalty;
    sp.repeat_last_n = p->repeat_last_n;
    sp.presence_penalty = p->presence_penalty;
    sp.frequency_penalty = p->frequency_penalty;
    sp.bias_ids = p->bias_ids;
    sp.bias_vals = p->bias_vals;
    sp.n_bias = p->n_bias;
    if (g) {
        g->prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
        g->logits = malloc(sizeof(float) * (size_t)n_vocab);
        g->out = malloc(sizeof(int32_t) * (size_t)(n_out > 0 ? n_out : 1));
    }
    if (!g || !g->prompt || !g->logits || !g->out || g4_sampler_init_ex(&g->sampler, &sp) < 0) {
        if (g) { g4_sampler_free(&g->sampler); free(g->prompt); free(g->logits); free(g->out); free(g); }
        g4_err_set(err, G4_ERR_NOMEM, "generate: out of memory");
        return NULL;
    }
    memcpy(g->prompt, prompt, sizeof(int32_t) * (size_t)n_prompt);
    g->m = m;
    g->max_tokens = p->max_tokens;
    g->n_logprobs = p->n_logprobs;
    g->st.n_prompt = n_prompt;
    g->st.n_cached = p->n_keep;
    return g;
}

g4_status g4_gen_forward(g4_gen *g, int *done, g4_err *err) {
    *done = 1;
    if (g->st.finish != G4_FINISH_NONE) return G4_OK;
    if (g->forwarded) { *done = 0; return G4_OK; }   /* sampled yet: nothing to run */
    if (g->st.n_generated >= g->max_tokens) { g->st.finish = G4_FINISH_LENGTH; return G4_OK; }

    const double t0 = now_ms();
    g4_status s;
    if (!g->started) {
        const int32_t k = g->st.n_cached;
        s = g4_model_forward(g->m, g->prompt + k, g->st.n_prompt - k, k, g->logits, 0, err);
        if (s != G4_OK) return s;
        g->started = 1;
        g->pos = g->st.n_prompt;
        g->st.prefill_ms = now_ms() - t0;
        g->st.ttft_ms = g->st.prefill_ms;
    } else {
        if (g->pos >= g4_model_n_ctx(g->m)) { g->st.finish = G4_FINISH_LENGTH; return G4_OK; }
        s = g4_model_forward(g->m, &g->last, 1, g->pos, g->logits, 0, err);
        if (s != G4_OK) return s;
        g->pos++;
        g->st.n_decode++;
        g->st.decode_ms += now_ms() - t0;
    }
    g->forwarded = 1;
    *done = 0;
    return G4_OK;
}

g4_status g4_gen_sample(g4_gen *g, const uint32_t *allowed, int32_t *token, g4_err *err) {
    *token = -1;
    if (!g->forwarded) return G4_OK;   /* finished (or g4_gen_forward not called) */
    const double t0 = now_ms();
    const int32_t id = g4_sample_ex(&g->sampler, g->logits, g4_model_n_vocab(g->m), g->out, g->st.n_generated,
                                    allowed, g->n_logprobs, g->top_ids, g->top_lps, &g->chosen_lp);
    if (id == -2)
        return g4_err_set(err, G4_ERR_INVALID, "generate: the token mask allows no token of the vocabulary");
    if (id < 0) return g4_err_set(err, G4_ERR_NOMEM, "generate: sampler out of memory");
    g->forwarded = 0;
    const double dt = now_ms() - t0;
    if (g->st.n_decode == 0) g->st.ttft_ms += dt;
    else g->st.decode_ms += dt;

    if (g4_tokenizer_is_eog(g4_model_tokenizer(g->m), id)) { g->st.finish = G4_FINISH_STOP; return G4_OK; }
    g->last = id;
    g->out[g->st.n_generated++] = id;
    *token = id;
    return G4_OK;
}

g4_status g4_gen_next(g4_gen *g, int32_t *token, g4_err *err) {
    int done;
    *token = -1;
    g4_status s = g4_gen_forward(g, &done, err);
    if (s != G4_OK || done) return s;
    return g4_gen_sample(g, NULL, token, err);
}

int32_t g4_gen_logprobs(const g4_gen *g, float *chosen, const int32_t **top_ids, const float **top_logprobs) {
    *chosen = g->chosen_lp;
    *top_ids = g->top_ids;
    *top_logprobs = g->top_lps;
    return g->n_logprobs;
}

g4_gen_stats g4_gen_get_stats(const g4_gen *g) {
    g4_gen_stats s = g->st;
    s.n_past = g->started ? g->pos : g->st.n_cached;
    return s;
}

void g4_gen_free(g4_gen *g) {
    if (!g) return;
    g4_sampler_free(&g->sampler);
    free(g->prompt);
    free(g->logits);
    free(g->out);
    free(g);
}
