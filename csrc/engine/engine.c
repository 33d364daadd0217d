/* engine.c - the scheduler of continuous batching (see engine.h).
 *
 * Requests live in one array of slots: waiting ones in a FIFO (by id order),
 * running ones bound to a KV sequence slot. A step builds a g4_batch from
 * them, prepares the KV blocks of every position it writes, runs the
 * model's batched forward, and samples each sequence whose logits came out.
 */
#include "engine.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../sample/sample.h"

enum { R_FREE = 0, R_WAITING, R_PREFILL, R_DECODE };

typedef struct request {
    int state;
    int64_t id;
    int32_t *prompt, n_prompt;
    int32_t n_done;             /* prompt tokens in the KV cache */
    int32_t n_max;              /* positions the sequence may reach */
    int32_t seq;                /* KV slot while running */
    int32_t last;               /* last sampled token, fed back next step */
    int32_t max_tokens;
    g4_sampler sampler;
    g4_request_stats st;
    double t_submit, t_admit, t_first;
    /* prompt lookup (draft_max > 0) */
    int32_t draft_max, draft_ngram;
    int32_t k_cur;              /* draft length now, 1..draft_max */
    int32_t skip, misses;       /* steps left without drafting; drafts in a row with none accepted */
    int32_t n_draft;            /* drafts in this step's batch */
    int32_t *hist, n_hist;      /* prompt + generated tokens [n_max + 1] */
    /* the full sampler and the token mask (see engine.h) */
    int32_t *out, n_out;        /* generated tokens, the penalties' history (NULL: no penalty) */
    int32_t logprobs, n_top;    /* the request's logprobs / top_logprobs */
    int32_t constrained;
    int32_t mask_set;           /* mask holds the next sample's mask */
    uint32_t *mask;             /* [ceil(n_vocab / 32)] when constrained */
    /* draft model (rp->draft_model): see the "draft model" section */
    int use_model;
    int32_t dlen;               /* drafter KV positions 0..dlen-1 equal hist[0..dlen) */
    int32_t dn_max;             /* positions the drafter's sequence may reach */
    int32_t dpos0;              /* this step: the target position of `last` */
    int32_t k_plan, n_dtok;     /* this step: drafts wanted, drafted */
    int32_t *dtok;              /* [draft_max] this step's drafts */
    float *dq;                  /* [draft_max][n_vocab] their drafter distributions (sampled requests) */
    float *mh;                  /* MTP drafter: [n_embd] the target's final-normed hidden state of
                                   the row that sampled `last` */
} request;

struct g4_engine {
    g4_model *m;
    g4_kvcache *kv;
    g4_engine_params p;
    request *req;               /* [n_req] */
    int32_t n_req;
    int32_t *seq_req;           /* [n_seq] request index running in the slot, -1 */
    int64_t next_id;
    /* the step's batch */
    int32_t *tok, *pos, *seq, *ridx;
    int8_t *want;
    float *logits;              /* [logits_rows][n_vocab]: one row per flagged token */
    int32_t logits_rows;
    float *probs;               /* [n_vocab] the target distribution of one row (rejection sampling) */
    uint64_t steps, tokens, prompt_tokens, generated_tokens;
    /* the draft model (g4_engine_set_drafter), its own KV pool and batch */
    g4_model *dm;
    g4_kvcache *dkv;
    int32_t *dtk, *dps, *dsq, *dri;
    int8_t *dwant;
    float *dlogits;             /* [n_seq][n_vocab] */
    /* Gemma 4 MTP assistant as the drafter (dm is a gemma4-assistant): no KV of its own */
    int mtp;
    int32_t mtp_hb;             /* the target's hidden size */
    float *hid;                 /* [logits_rows][mtp_hb] the target's hidden state per logits row */
    float *mh_in, *mh_tmp;      /* [n_seq][mtp_hb] a draft step's hidden states in / out (batch order) */
    float *mh_out;              /* [n_seq][mtp_hb] the last step's h_out, by slot */
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ---------------------------------------------- sampling and token masks */

static int32_t mask_words(const g4_engine *e) { return (int32_t)(((int64_t)g4_model_n_vocab(e->m) + 31) / 32); }

static void request_free_sampling(request *r) {
    g4_sampler_free(&r->sampler);
    free(r->out);
    free(r->mask);
    r->out = NULL;
    r->mask = NULL;
    r->n_out = 0;
    r->mask_set = 0;
}

/* Check the sampler fields of rp (G4_ERR_INVALID with a message naming the
 * field) and set up r's sampler, penalty history and mask buffer; on error
 * r holds nothing to free. */
static g4_status request_init_sampling(g4_engine *e, request *r, const g4_request_params *rp, g4_err *err) {
    const int32_t n_vocab = g4_model_n_vocab(e->m);
    if (rp->logprobs && (rp->top_logprobs < 0 || rp->top_logprobs > G4_SAMPLE_MAX_TOP))
        return g4_err_set(err, G4_ERR_INVALID, "submit: top_logprobs %d must be in 0..%d", rp->top_logprobs,
                          G4_SAMPLE_MAX_TOP);
    if (rp->n_bias < 0 || (rp->n_bias > 0 && (!rp->bias_ids || !rp->bias_vals)))
        return g4_err_set(err, G4_ERR_INVALID, "submit: logit bias of %d entries without its arrays", rp->n_bias);
    for (int32_t i = 0; i < rp->n_bias; i++)
        if (rp->bias_ids[i] < 0 || rp->bias_ids[i] >= n_vocab)
            return g4_err_set(err, G4_ERR_INVALID, "submit: logit bias token id %d is outside the vocabulary 0..%d",
                              rp->bias_ids[i], n_vocab - 1);
    if (rp->repeat_last_n < -1)
        return g4_err_set(err, G4_ERR_INVALID, "submit: repeat_last_n %d must be -1 (all), 0 (off) or more",
                          rp->repeat_last_n);
    g4_sample_params sp = g4_sample_params_default();
    sp.temperature = rp->temperature;
    sp.top_k = rp->top_k;
    sp.top_p = rp->top_p;
    sp.seed = rp->seed;
    sp.min_p = rp->min_p;
    sp.repeat_penalty = rp->repeat_penalty;
    sp.repeat_last_n = rp->repeat_last_n;
    sp.presence_penalty = rp->presence_penalty;
    sp.frequency_penalty = rp->frequency_penalty;
    sp.bias_ids = rp->bias_ids;
    sp.bias_vals = rp->bias_vals;
    sp.n_bias = rp->n_bias;
    const int penalties = rp->repeat_last_n != 0 &&
        ((rp->repeat_penalty > 0.0f && rp->repeat_penalty != 1.0f) ||
         rp->presence_penalty != 0.0f || rp->frequency_penalty != 0.0f);
    int fail = g4_sampler_init_ex(&r->sampler, &sp) < 0;
    /* a request returns at most n_max - n_prompt tokens */
    if (!fail && penalties) fail = !(r->out = malloc(sizeof(int32_t) * ((size_t)(r->n_max - r->n_prompt) + 1)));
    if (!fail && rp->constrained) fail = !(r->mask = malloc(sizeof(uint32_t) * (size_t)mask_words(e)));
    if (fail) {
        request_free_sampling(r);
        return g4_err_set(err, G4_ERR_NOMEM, "submit: out of memory");
    }
    r->n_out = 0;
    r->logprobs = rp->logprobs != 0;
    r->n_top = r->logprobs ? rp->top_logprobs : 0;
    r->constrained = rp->constrained != 0;
    r->mask_set = 0;
    return G4_OK;
}

/* Whether a running request can take part in this step's decode (a
 * constrained one needs the mask of its next token). */
static int can_decode(const request *r) {
    return r->state == R_DECODE && (!r->constrained || r->mask_set);
}

/* Prompt tokens a prefilling request may have in the cache after this step:
 * all of them, except that a constrained request without its first mask
 * keeps the last one back (its logits would need the mask). */
static int32_t prefill_limit(const request *r) {
    return r->n_prompt - (r->constrained && !r->mask_set ? 1 : 0);
}

/* One sample of request r from its logits row lg[n_vocab] (modified): the
 * whole chain with r's history, mask and logprobs into ev. Returns the id,
 * -1 out of memory, -2 a mask that allows nothing (set_mask refuses those). */
static int32_t sample_request(request *r, float *lg, int32_t n_vocab, g4_event *ev) {
    float chosen = 0.0f;
    const int32_t id = g4_sample_ex(&r->sampler, lg, n_vocab, r->out, r->n_out,
                                    r->constrained ? r->mask : NULL, r->n_top, ev->top_ids, ev->top_logprobs,
                                    r->logprobs ? &chosen : NULL);
    ev->logprob = chosen;
    ev->n_top = -1;
    if (id >= 0 && r->logprobs) {
        int32_t k = 0;
        while (k < r->n_top && ev->top_ids[k] >= 0) k++;
        ev->n_top = k;
    }
    if (r->constrained) r->mask_set = 0;   /* used: the next token needs a new one */
    return id;
}

g4_status g4_engine_set_mask(g4_engine *e, int64_t id, const uint32_t *mask, int32_t n_words, g4_err *err) {
    request *r = NULL;
    for (int32_t i = 0; i < e->n_req && !r; i++)
        if (e->req[i].state != R_FREE && e->req[i].id == id) r = &e->req[i];
    if (!r) return g4_err_set(err, G4_ERR_INVALID, "set_mask: no waiting or running request has id %lld", (long long)id);
    if (!r->constrained)
        return g4_err_set(err, G4_ERR_INVALID, "set_mask: request %lld was not submitted as constrained",
                          (long long)id);
    const int32_t need = mask_words(e), n_vocab = g4_model_n_vocab(e->m);
    if (!mask || n_words != need)
        return g4_err_set(err, G4_ERR_INVALID, "set_mask: the mask has %d words, %d are needed for %d tokens",
                          mask ? n_words : 0, need, n_vocab);
    int64_t allowed = 0;
    for (int32_t w = 0; w < need; w++) {
        const int32_t left = n_vocab - w * 32;
        const uint32_t bits = left < 32 ? mask[w] & ((1u << left) - 1u) : mask[w];
        allowed += __builtin_popcount(bits);
    }
    if (!allowed)
        return g4_err_set(err, G4_ERR_INVALID, "set_mask: the mask allows no token of the vocabulary");
    memcpy(r->mask, mask, sizeof(uint32_t) * (size_t)need);
    r->mask_set = 1;
    return G4_OK;
}

/* ------------------------------------------------------------ lifetime */

void g4_engine_free(g4_engine *e) {
    if (!e) return;
    if (e->req)
        for (int32_t i = 0; i < e->n_req; i++) {
            free(e->req[i].prompt);
            free(e->req[i].hist);
            request_free_sampling(&e->req[i]);
            free(e->req[i].dtok);
            free(e->req[i].dq);
            free(e->req[i].mh);
        }
    g4_kvc_free(e->kv);
    g4_kvc_free(e->dkv);
    free(e->dtk); free(e->dps); free(e->dsq); free(e->dri); free(e->dwant);
    free(e->dlogits);
    free(e->hid); free(e->mh_in); free(e->mh_tmp); free(e->mh_out);
    free(e->probs);
    free(e->req);
    free(e->seq_req);
    free(e->tok); free(e->pos); free(e->seq); free(e->ridx); free(e->want);
    free(e->logits);
    free(e);
}

/* The target's KV pool; window_extra > 0 for an MTP drafter (kvcache.h). */
static g4_kvcache *build_kv(g4_engine *e, int32_t window_extra, g4_err *err) {
    g4_kv_layer *layers = malloc(sizeof(g4_kv_layer) * 4096);
    if (!layers) { g4_err_set(err, G4_ERR_NOMEM, "engine: out of memory"); return NULL; }
    const int nl = g4_model_kv_layers(e->m, layers);
    if (nl == 0) {   /* a gemma4-assistant: it only reads its target's cache */
        free(layers);
        g4_err_set(err, G4_ERR_UNSUPPORTED, "engine: a %s model cannot run on its own (an MTP assistant drafts "
                   "for a gemma4 model: Model(target, draft=\"mtp:PATH\"))", g4_model_arch(e->m));
        return NULL;
    }
    const g4_kvc_params kp = { .n_seq = e->p.n_seq, .n_ctx = g4_model_n_ctx(e->m), .n_batch = e->p.n_batch,
                               .type = g4_model_kv_type(e->m), .bytes = e->p.kv_bytes,
                               .n_threads = g4_model_n_threads(e->m), .keep_window = 0,
                               .window_extra = window_extra };
    g4_kvcache *kv = g4_kvc_create(layers, nl, &kp, err);
    free(layers);
    return kv;
}

g4_engine *g4_engine_create(g4_model *m, const g4_engine_params *p, g4_err *err) {
    if (!m || !p || p->n_seq < 1 || p->n_seq > 4096) {
        g4_err_set(err, G4_ERR_INVALID, "engine: parallel sequences must be in 1..4096");
        return NULL;
    }
    g4_engine *e = calloc(1, sizeof *e);
    if (!e) { g4_err_set(err, G4_ERR_NOMEM, "engine: out of memory"); return NULL; }
    e->m = m;
    e->p = *p;
    if (e->p.n_batch <= 0) e->p.n_batch = 128;
    if (e->p.n_batch < e->p.n_seq) e->p.n_batch = e->p.n_seq;
    if (e->p.queue_max <= 0) e->p.queue_max = 1024;
    e->next_id = 1;

    if (!(e->kv = build_kv(e, 0, err))) { g4_engine_free(e); return NULL; }

    e->n_req = e->p.n_seq + e->p.queue_max;
    const size_t B = (size_t)e->p.n_batch, V = (size_t)g4_model_n_vocab(m);
    e->req = calloc((size_t)e->n_req, sizeof *e->req);
    e->seq_req = malloc(sizeof(int32_t) * (size_t)p->n_seq);
    e->tok = malloc(sizeof(int32_t) * B);
    e->pos = malloc(sizeof(int32_t) * B);
    e->seq = malloc(sizeof(int32_t) * B);
    e->ridx = malloc(sizeof(int32_t) * B);
    e->want = malloc(B);
    e->logits_rows = p->n_seq;
    e->logits = malloc(sizeof(float) * V * (size_t)p->n_seq);
    e->probs = malloc(sizeof(float) * V);
    if (!e->req || !e->seq_req || !e->tok || !e->pos || !e->seq || !e->ridx || !e->want || !e->logits ||
        !e->probs) {
        g4_engine_free(e);
        g4_err_set(err, G4_ERR_NOMEM, "engine: out of memory");
        return NULL;
    }
    for (int32_t s = 0; s < p->n_seq; s++) e->seq_req[s] = -1;
    return e;
}

/* ------------------------------------------------------------ draft model */

static g4_status set_mtp_drafter(g4_engine *e, g4_model *dm, g4_err *err);

g4_status g4_engine_set_drafter(g4_engine *e, g4_model *dm, g4_err *err) {
    if (!dm) return g4_err_set(err, G4_ERR_INVALID, "engine: no draft model given");
    if (e->dm) return g4_err_set(err, G4_ERR_INVALID, "engine: it has a draft model already");
    for (int32_t i = 0; i < e->n_req; i++)
        if (e->req[i].state != R_FREE)
            return g4_err_set(err, G4_ERR_INVALID, "engine: a draft model must be set before any request");
    const int32_t V = g4_model_n_vocab(e->m);
    if (g4_model_n_vocab(dm) != V)
        return g4_err_set(err, G4_ERR_INVALID, "engine: the draft model's vocabulary has %d tokens, the model's %d",
                          g4_model_n_vocab(dm), V);
    if (g4_mtp_n_embd_backbone(dm) > 0) return set_mtp_drafter(e, dm, err);
    g4_kv_layer *layers = malloc(sizeof(g4_kv_layer) * 4096);
    if (!layers) return g4_err_set(err, G4_ERR_NOMEM, "engine: out of memory");
    const int nl = g4_model_kv_layers(dm, layers);
    /* keep_window: a drafter's sequence is rewound by up to draft_max
     * positions after every verification, so no sliding-window block may
     * be released early by its tentative length */
    const g4_kvc_params kp = { .n_seq = e->p.n_seq, .n_ctx = g4_model_n_ctx(dm), .n_batch = e->p.n_batch,
                               .type = g4_model_kv_type(dm), .bytes = 0,
                               .n_threads = g4_model_n_threads(dm), .keep_window = 1 };
    e->dkv = g4_kvc_create(layers, nl, &kp, err);
    free(layers);
    if (!e->dkv) return err->status;
    const size_t B = (size_t)e->p.n_batch;
    e->dtk = malloc(sizeof(int32_t) * B);
    e->dps = malloc(sizeof(int32_t) * B);
    e->dsq = malloc(sizeof(int32_t) * B);
    e->dri = malloc(sizeof(int32_t) * B);
    e->dwant = malloc(B);
    e->dlogits = malloc(sizeof(float) * (size_t)V * (size_t)e->p.n_seq);
    if (!e->dtk || !e->dps || !e->dsq || !e->dri || !e->dwant || !e->dlogits) {
        g4_kvc_free(e->dkv);
        e->dkv = NULL;
        free(e->dtk); free(e->dps); free(e->dsq); free(e->dri); free(e->dwant); free(e->dlogits);
        e->dtk = e->dps = e->dsq = e->dri = NULL;
        e->dwant = NULL;
        e->dlogits = NULL;
        return g4_err_set(err, G4_ERR_NOMEM, "engine: out of memory for the draft model's batch");
    }
    e->dm = dm;
    return G4_OK;
}

/* The drafter's sequence of a request being admitted into slot seq (its
 * pool holds n_seq whole contexts, so this only fails on a bug). */
static int drafter_begin(g4_engine *e, request *r, int32_t seq) {
    if (e->mtp) return 1;   /* the MTP assistant reads the target's sequence */
    int32_t cached = 0;
    g4_err err;
    if (g4_kvc_seq_begin(e->dkv, seq, r->prompt, r->n_prompt, r->dn_max, 0, &cached, &err) != 1) return 0;
    r->dlen = 0;
    return 1;
}

/* Draft tokens a decoding request may carry this step, its `last` at
 * position p: k_cur, within the step's spare budget, and such that the
 * yielded n_draft + 1 tokens stay within max_tokens and n_max. */
static int32_t draft_room(const request *r, int32_t p, int32_t spare) {
    int32_t k = r->k_cur;
    if (k > spare) k = spare;
    if (k > r->max_tokens - r->st.n_generated - 1) k = r->max_tokens - r->st.n_generated - 1;
    if (k > r->n_max - p - 1) k = r->n_max - p - 1;
    return k;
}

/* The KV blocks of every position a batch b writes in kv, per sequence (a
 * sequence's tokens are consecutive in a batch). */
static g4_status prepare_batch(g4_kvcache *kv, const g4_batch *b, g4_err *err) {
    for (int32_t t = 0; t < b->n;) {
        int32_t u = t;
        while (u < b->n && b->seq[u] == b->seq[t]) u++;
        g4_status st = g4_kvc_seq_prepare(kv, b->seq[t], b->pos[t], u - t, b->token + t, err);
        if (st != G4_OK) return st;
        t = u;
    }
    return G4_OK;
}

/* Run a drafter batch of n tokens (e->dtk...): prepare, forward, commit; each
 * sequence then holds positions up to its last token's, r->dlen follows. */
static g4_status drafter_forward(g4_engine *e, int32_t n, g4_err *err) {
    const g4_batch b = { n, e->dtk, e->dps, e->dsq, e->dwant };
    g4_status pst = prepare_batch(e->dkv, &b, err);
    if (pst != G4_OK) return pst;
    g4_status st = g4_model_forward_batch(e->dm, &b, e->dkv, e->dlogits, err);
    if (st != G4_OK) return st;
    for (int32_t t = 0; t < n;) {
        int32_t u = t;
        while (u < n && e->dsq[u] == e->dsq[t]) u++;
        g4_kvc_seq_commit(e->dkv, e->dsq[t], e->dps[u - 1] + 1);
        e->req[e->dri[t]].dlen = e->dps[u - 1] + 1;
        t = u;
    }
    return G4_OK;
}

/* The next draft token of r from a drafter's logits lg [V]: the argmax
 * (greedy requests) or a draw from q = the request's sampler chain over lg,
 * kept in r->dq for the rejection rule (sampled ones). A drafted
 * end-of-generation token ends r's draft. -1 when out of memory. */
static int take_draft(request *r, const float *lg, int32_t V, const g4_tokenizer *tk) {
    int32_t d;
    if (r->dq) {
        float *q = r->dq + (size_t)r->n_dtok * (size_t)V;
        if (g4_sample_probs(&r->sampler, lg, V, q) < 0) return -1;
        d = g4_sample_weights(&r->sampler, q, V);
        if (d < 0) d = g4_argmax(lg, V);
    } else {
        d = g4_argmax(lg, V);
    }
    r->dtok[r->n_dtok++] = d;
    if (g4_tokenizer_is_eog(tk, d)) r->k_plan = r->n_dtok;
    return 0;
}

/* ------------------------------------------------------ MTP assistant */

/* A gemma4-assistant drafter (model.h g4_mtp_step): it reads the target's
 * cache, which is rebuilt to keep the keys its sliding layers see before the
 * window; its hidden-state input comes from the target's forward. */
static g4_status set_mtp_drafter(g4_engine *e, g4_model *dm, g4_err *err) {
    g4_status st = g4_mtp_check(dm, e->m, err);
    if (st != G4_OK) return st;
    const int32_t extra = g4_mtp_window_extra(dm, e->m);
    if (extra > 0) {
        g4_kvcache *kv = build_kv(e, extra, err);
        if (!kv) return err->status;
        g4_kvc_free(e->kv);
        e->kv = kv;
    }
    const size_t B = (size_t)e->p.n_batch, S = (size_t)e->p.n_seq, Hb = (size_t)g4_mtp_n_embd_backbone(dm);
    const size_t V = (size_t)g4_model_n_vocab(e->m);
    e->dtk = malloc(sizeof(int32_t) * B);
    e->dps = malloc(sizeof(int32_t) * B);
    e->dsq = malloc(sizeof(int32_t) * B);
    e->dri = malloc(sizeof(int32_t) * B);
    e->dlogits = malloc(sizeof(float) * V * S);
    e->hid = malloc(sizeof(float) * Hb * (size_t)e->logits_rows);
    e->mh_in = malloc(sizeof(float) * Hb * S);
    e->mh_tmp = malloc(sizeof(float) * Hb * S);
    e->mh_out = malloc(sizeof(float) * Hb * S);
    if (!e->dtk || !e->dps || !e->dsq || !e->dri || !e->dlogits || !e->hid || !e->mh_in || !e->mh_tmp ||
        !e->mh_out)
        return g4_err_set(err, G4_ERR_NOMEM, "engine: out of memory for the MTP drafter");   /* freed by g4_engine_free */
    e->mtp_hb = (int32_t)Hb;
    e->mtp = 1;
    e->dm = dm;
    return G4_OK;
}

/* MTP drafts (before the step's batch is built) for every decoding request
 * that drafts: draft step j runs, for all of them in one g4_mtp_step, the
 * last token (j = 0: `last`, with the target's hidden state of the row that
 * sampled it, at position P; then d_j with the assistant's own h_out) at the
 * same position P (transformers Gemma4AssistantCandidateGenerator; llama.cpp
 * common/speculative.cpp). d_j is the argmax (greedy) or a draw from q_j,
 * the request's sampler chain over the assistant's logits (kept in r->dq).
 * A drafted end-of-generation token ends that request's draft. */
static g4_status mtp_drafts(g4_engine *e, int32_t spare, g4_err *err) {
    const int32_t V = g4_model_n_vocab(e->m), Hb = e->mtp_hb;
    const g4_tokenizer *tk = g4_model_tokenizer(e->m);
    for (int32_t s = 0; s < e->p.n_seq; s++) {
        const int32_t ri = e->seq_req[s];
        if (ri < 0 || e->req[ri].state != R_DECODE || !e->req[ri].use_model) continue;
        request *r = &e->req[ri];
        r->k_plan = r->n_dtok = 0;
        if (r->skip > 0) continue;
        const int32_t P = g4_kvc_seq_len(e->kv, s);
        const int32_t k = draft_room(r, P, spare);
        if (k <= 0) continue;
        r->k_plan = k;
        r->dpos0 = P;
        spare -= k;
    }
    for (int32_t j = 0;; j++) {
        int32_t n = 0;
        for (int32_t s = 0; s < e->p.n_seq; s++) {
            const int32_t ri = e->seq_req[s];
            if (ri < 0 || e->req[ri].state != R_DECODE || !e->req[ri].use_model) continue;
            request *r = &e->req[ri];
            if (r->k_plan <= r->n_dtok || r->n_dtok != j) continue;
            e->dtk[n] = j ? r->dtok[j - 1] : r->last;
            e->dps[n] = r->dpos0;
            e->dsq[n] = s;
            e->dri[n] = ri;
            memcpy(e->mh_in + (size_t)n * Hb, j ? e->mh_out + (size_t)s * Hb : r->mh, sizeof(float) * (size_t)Hb);
            n++;
        }
        if (!n) return G4_OK;
        const g4_mtp_batch b = { n, e->dtk, e->dps, e->dsq, e->mh_in };
        g4_status st = g4_mtp_step(e->dm, e->m, &b, e->kv, e->dlogits, e->mh_tmp, err);
        if (st != G4_OK) return st;
        for (int32_t t = 0; t < n; t++) {
            request *r = &e->req[e->dri[t]];
            memcpy(e->mh_out + (size_t)e->dsq[t] * Hb, e->mh_tmp + (size_t)t * Hb, sizeof(float) * (size_t)Hb);
            if (take_draft(r, e->dlogits + (size_t)t * (size_t)V, V, tk) < 0)
                return g4_err_set(err, G4_ERR_NOMEM, "engine: sampler out of memory");
        }
    }
}

/* Drafts from the draft model for every decoding request that uses it
 * (before the step's batch is built; spare: the step's budget left after
 * one decode token per decoder). Forward 1 runs each such sequence's tokens
 * the drafter has not seen yet, hist[dlen..P] with hist[P] = `last` (the
 * whole prompt at its first decode step; chunks of it when the budget is
 * short, and such a sequence drafts from a later step on); forward j + 1
 * runs d_j at P + j for the sequences still drafting: all sequences in one
 * batch per draft position, k forwards for drafts of k. d_j is the argmax
 * (greedy requests) or a draw from q_j = the request's sampler chain over
 * the drafter's logits, kept in r->dq for the rejection rule. A draft of an
 * end-of-generation token ends that sequence's draft. Leaves r->dtok[0..n_dtok). */
static g4_status model_drafts(g4_engine *e, int32_t spare, g4_err *err) {
    if (!e->dm) return G4_OK;
    if (e->mtp) return mtp_drafts(e, spare, err);
    const int32_t V = g4_model_n_vocab(e->dm), budget = e->p.n_batch;
    const g4_tokenizer *tk = g4_model_tokenizer(e->m);
    int32_t n = 0;
    for (int32_t s = 0; s < e->p.n_seq; s++) {
        const int32_t ri = e->seq_req[s];
        if (ri < 0 || e->req[ri].state != R_DECODE || !e->req[ri].use_model) continue;
        request *r = &e->req[ri];
        r->k_plan = r->n_dtok = 0;
        if (r->skip > 0 || n >= budget) continue;
        const int32_t P = g4_kvc_seq_len(e->kv, s);
        int32_t k = draft_room(r, P, spare);
        if (k > r->dn_max - P) k = r->dn_max - P;
        if (k <= 0) continue;
        int32_t c = P + 1 - r->dlen;
        const int whole = c <= budget - n;
        if (!whole) c = budget - n;
        for (int32_t i = 0; i < c; i++) {
            e->dtk[n] = r->hist[r->dlen + i]; e->dps[n] = r->dlen + i; e->dsq[n] = s; e->dri[n] = ri;
            e->dwant[n] = whole && i == c - 1;
            n++;
        }
        r->dpos0 = P;
        if (whole) { r->k_plan = k; spare -= k; }
    }
    while (n > 0) {
        g4_status st = drafter_forward(e, n, err);
        if (st != G4_OK) return st;
        int32_t row = 0;
        for (int32_t t = 0; t < n; t++) {
            if (!e->dwant[t]) continue;
            request *r = &e->req[e->dri[t]];
            if (take_draft(r, e->dlogits + (size_t)row++ * (size_t)V, V, tk) < 0)
                return g4_err_set(err, G4_ERR_NOMEM, "engine: sampler out of memory");
        }
        n = 0;
        for (int32_t s = 0; s < e->p.n_seq; s++) {
            const int32_t ri = e->seq_req[s];
            if (ri < 0 || e->req[ri].state != R_DECODE || !e->req[ri].use_model) continue;
            request *r = &e->req[ri];
            if (r->n_dtok == 0 || r->n_dtok >= r->k_plan) continue;
            e->dtk[n] = r->dtok[r->n_dtok - 1]; e->dps[n] = r->dpos0 + r->n_dtok; e->dsq[n] = s; e->dri[n] = ri;
            e->dwant[n] = 1;
            n++;
        }
    }
    return G4_OK;
}

/* ------------------------------------------------- rejection sampling */

/* The token a sampled request yields at a row that has a draft d after it
 * (speculative sampling: Leviathan et al. 2023, "Fast Inference from
 * Transformers via Speculative Decoding", Algorithm 1; Chen et al. 2023,
 * "Accelerating Large Language Model Decoding with Speculative Sampling",
 * Algorithm 2). p = the target's distribution at this row after the
 * request's sampler chain (the one g4_sample draws from; g4_sample_probs),
 * q = the drafter's distribution d was drawn from (q[V]), or NULL for a
 * deterministic proposal (prompt lookup: q = point mass on d). d is kept
 * with probability min(1, p(d) / q(d)); otherwise the token is drawn from
 * norm(max(p - q, 0)), which is p without d, renormalised, for a point mass.
 * Either way the yielded token is distributed as p exactly. Returns d when
 * it was accepted (the residual never gives d back: a rejection means
 * p(d) < q(d)), the drawn token otherwise; -1 when out of memory. Uses the
 * request's own random stream. */
static int32_t spec_sample(g4_engine *e, request *r, float *lg, int32_t V, int32_t d, const float *q) {
    float *p = e->probs;
    if (g4_sample_probs(&r->sampler, lg, V, p) < 0) return -1;
    const double qd = q ? (double)q[d] : 1.0;
    const double u = g4_sampler_uniform(&r->sampler);
    if (u * qd < (double)p[d]) return d;
    if (q) {
        for (int32_t v = 0; v < V; v++) p[v] = p[v] > q[v] ? p[v] - q[v] : 0.0f;
    } else {
        p[d] = 0.0f;
    }
    p[d] = 0.0f;   /* rounding: a rejected draft is never the residual's pick */
    const int32_t id = g4_sample_weights(&r->sampler, p, V);
    return id >= 0 ? id : g4_sample(&r->sampler, lg, V);   /* no residual mass (p == q up to rounding) */
}

/* ---------------------------------------------------------------- requests */

static void finish(g4_engine *e, request *r) {
    if (r->state == R_PREFILL || r->state == R_DECODE) {
        g4_kvc_seq_end(e->kv, r->seq);
        if (r->use_model && e->dkv) g4_kvc_seq_end(e->dkv, r->seq);
        e->seq_req[r->seq] = -1;
    }
    free(r->prompt);
    r->prompt = NULL;
    free(r->hist);
    r->hist = NULL;
    request_free_sampling(r);
    free(r->dtok);
    r->dtok = NULL;
    free(r->dq);
    r->dq = NULL;
    free(r->mh);
    r->mh = NULL;
    r->state = R_FREE;
}

int64_t g4_engine_submit(g4_engine *e, const int32_t *prompt, int32_t n_prompt, const g4_request_params *rp,
                         g4_err *err) {
    const int32_t n_ctx = g4_model_n_ctx(e->m), n_vocab = g4_model_n_vocab(e->m);
    if (!prompt || n_prompt <= 0) { g4_err_set(err, G4_ERR_INVALID, "submit: the prompt is empty"); return -1; }
    if (!rp || rp->max_tokens < 1) {
        g4_err_set(err, G4_ERR_INVALID, "submit: max_tokens must be at least 1");
        return -1;
    }
    if (n_prompt > n_ctx) {
        g4_err_set(err, G4_ERR_LIMIT, "submit: a prompt of %d tokens is longer than the context of %d tokens",
                   n_prompt, n_ctx);
        return -1;
    }
    for (int32_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= n_vocab) {
            g4_err_set(err, G4_ERR_INVALID, "submit: token id %d (at index %d) is outside the vocabulary 0..%d",
                       prompt[i], i, n_vocab - 1);
            return -1;
        }
    /* no drafts for a request whose rows would each need their own prefix's mask,
     * penalty history or logprobs (engine.h) */
    const int plain = !rp->constrained && rp->n_bias == 0 && !rp->logprobs &&
                      (rp->repeat_penalty <= 0.0f || rp->repeat_penalty == 1.0f || rp->repeat_last_n == 0) &&
                      rp->presence_penalty == 0.0f && rp->frequency_penalty == 0.0f;
    const int draft = rp->draft_max > 0 && plain, use_model = draft && rp->draft_model;
    if (rp->draft_max < 0 || rp->draft_max > G4_DRAFT_MAX ||
        (draft && !use_model && (rp->draft_ngram < 1 || rp->draft_ngram > 16))) {
        g4_err_set(err, G4_ERR_INVALID, "submit: draft_max must be in 0..%d and draft_ngram in 1..16 (got %d, %d)",
                   G4_DRAFT_MAX, rp->draft_max, rp->draft_ngram);
        return -1;
    }
    if (use_model && !e->dm) {
        g4_err_set(err, G4_ERR_INVALID, "submit: draft_model asked of an engine without a draft model");
        return -1;
    }
    int32_t waiting = 0, slot = -1;
    for (int32_t i = 0; i < e->n_req; i++) {
        if (e->req[i].state == R_WAITING) waiting++;
        else if (e->req[i].state == R_FREE && slot < 0) slot = i;
    }
    if (waiting >= e->p.queue_max || slot < 0) {
        g4_err_set(err, G4_ERR_LIMIT, "queue full: %d requests are waiting (queue_max %d) behind %d running",
                   waiting, e->p.queue_max, e->p.n_seq);
        return -1;
    }
    request *r = &e->req[slot];
    memset(r, 0, sizeof *r);
    if (!(r->prompt = malloc(sizeof(int32_t) * (size_t)n_prompt))) {
        g4_err_set(err, G4_ERR_NOMEM, "submit: out of memory");
        return -1;
    }
    memcpy(r->prompt, prompt, sizeof(int32_t) * (size_t)n_prompt);
    r->n_prompt = n_prompt;
    r->max_tokens = rp->max_tokens;
    const int64_t n_max = (int64_t)n_prompt + rp->max_tokens;
    r->n_max = n_max < n_ctx ? (int32_t)n_max : n_ctx;
    if (draft) {
        /* the last token (sampled at position n_max - 1) is never fed back: n_max + 1 */
        r->hist = malloc(sizeof(int32_t) * ((size_t)r->n_max + 1));
        if (use_model) {
            r->use_model = 1;
            r->dn_max = r->n_max < g4_model_n_ctx(e->dm) || e->mtp ? r->n_max : g4_model_n_ctx(e->dm);
            r->dtok = malloc(sizeof(int32_t) * (size_t)rp->draft_max);
            if (rp->temperature > 0.0f) r->dq = malloc(sizeof(float) * (size_t)rp->draft_max * (size_t)n_vocab);
            if (e->mtp) r->mh = malloc(sizeof(float) * (size_t)e->mtp_hb);
        }
        if (!r->hist || (use_model && (!r->dtok || (rp->temperature > 0.0f && !r->dq) || (e->mtp && !r->mh)))) {
            free(r->prompt); free(r->hist); free(r->dtok); free(r->dq); free(r->mh);
            r->prompt = NULL; r->hist = NULL; r->dtok = NULL; r->dq = NULL; r->mh = NULL;
            g4_err_set(err, G4_ERR_NOMEM, "submit: out of memory");
            return -1;
        }
        memcpy(r->hist, prompt, sizeof(int32_t) * (size_t)n_prompt);
        r->n_hist = n_prompt;
        r->draft_max = rp->draft_max;
        r->draft_ngram = rp->draft_ngram;
        r->k_cur = rp->draft_max;
    }
    if (request_init_sampling(e, r, rp, err) != G4_OK) {
        free(r->prompt);
        free(r->hist);
        free(r->dtok);
        free(r->dq);
        free(r->mh);
        memset(r, 0, sizeof *r);
        return -1;
    }
    r->id = e->next_id++;
    r->seq = -1;
    r->state = R_WAITING;
    r->st.n_prompt = n_prompt;
    r->t_submit = now_ms();
    return r->id;
}

int g4_engine_cancel(g4_engine *e, int64_t id) {
    for (int32_t i = 0; i < e->n_req; i++)
        if (e->req[i].state != R_FREE && e->req[i].id == id) {
            finish(e, &e->req[i]);
            return 1;
        }
    return 0;
}

/* Whether a prompt shares at least one full KV block with a prompt still
 * being prefilled: admitted after that one's prefill, it finds those blocks
 * in the prefix cache instead of computing them a second time (n samples of
 * one prompt, many requests with one system prompt arriving together). */
static int prefix_in_flight(const g4_engine *e, const request *r) {
    if (!e->p.prefix_cache || r->n_prompt <= G4_KV_BLOCK) return 0;
    for (int32_t s = 0; s < e->p.n_seq; s++) {
        const int32_t ri = e->seq_req[s];
        if (ri < 0 || e->req[ri].state != R_PREFILL) continue;
        const request *o = &e->req[ri];
        if (o->n_prompt > G4_KV_BLOCK && !memcmp(o->prompt, r->prompt, sizeof(int32_t) * G4_KV_BLOCK)) return 1;
    }
    return 0;
}

/* The oldest waiting request (ids grow) not held back by a prefix in flight. */
static int32_t oldest_waiting(const g4_engine *e) {
    int32_t best = -1;
    for (int32_t i = 0; i < e->n_req; i++)
        if (e->req[i].state == R_WAITING && (best < 0 || e->req[i].id < e->req[best].id) &&
            !prefix_in_flight(e, &e->req[i]))
            best = i;
    return best;
}

static void admit(g4_engine *e) {
    for (;;) {
        int32_t slot = -1;
        for (int32_t s = 0; s < e->p.n_seq && slot < 0; s++)
            if (e->seq_req[s] < 0) slot = s;
        if (slot < 0) return;
        const int32_t ri = oldest_waiting(e);
        if (ri < 0) return;
        request *r = &e->req[ri];
        int32_t cached = 0;
        g4_err err;
        /* FIFO: when the oldest does not fit, later ones wait behind it */
        if (g4_kvc_seq_begin(e->kv, slot, r->prompt, r->n_prompt, r->n_max, e->p.prefix_cache, &cached, &err) != 1)
            return;
        if (r->use_model && !drafter_begin(e, r, slot)) {
            g4_kvc_seq_end(e->kv, slot);
            return;
        }
        r->seq = slot;
        r->n_done = cached;
        r->st.n_cached = cached;
        r->state = R_PREFILL;
        r->t_admit = now_ms();
        r->st.queue_ms = r->t_admit - r->t_submit;
        e->seq_req[slot] = ri;
    }
}

int32_t g4_engine_max_events(const g4_engine *e) { return e->p.n_seq * (G4_DRAFT_MAX + 1); }

/* ------------------------------------------------------- prompt lookup */

/* Drafts for history h[0..L): the most recent earlier occurrence of its last
 * n tokens (n = ngram down to 1) and up to k tokens that followed it, to
 * out. Returns how many (0: no match). */
static int32_t lookup_draft(const int32_t *h, int32_t L, int32_t ngram, int32_t k, int32_t *out) {
    for (int32_t n = ngram < L - 1 ? ngram : L - 1; n >= 1; n--) {
        const int32_t *pat = h + L - n;
        for (int32_t j = L - n - 1; j >= 0; j--) {
            if (h[j] != pat[0] || memcmp(h + j, pat, sizeof(int32_t) * (size_t)n)) continue;
            int32_t m = L - (j + n);
            if (m > k) m = k;
            memcpy(out, h + j + n, sizeof(int32_t) * (size_t)m);
            return m;
        }
    }
    return 0;
}

/* Draft length after a verified draft of n tokens of which a were accepted:
 * +2 when all were, -1 otherwise (transformers' AssistedCandidateGenerator,
 * num_assistant_tokens_schedule="heuristic"), halved when none was; nothing
 * accepted also pauses drafting for 2, 4, 8, 16 steps (misses in a row), so
 * drafts that never match end up as one draft token every 17 steps. */
static void adapt_draft(request *r, int32_t n, int32_t a) {
    if (a == n) r->k_cur = r->k_cur + 2 < r->draft_max ? r->k_cur + 2 : r->draft_max;
    else if (a == 0) r->k_cur = r->k_cur > 1 ? r->k_cur / 2 : 1;
    else if (r->k_cur > 1) r->k_cur--;
    if (a == 0) {
        if (r->misses < 4) r->misses++;
        r->skip = 1 << r->misses;
    } else {
        r->misses = 0;
    }
}

/* ------------------------------------------------------------------- step */

g4_status g4_engine_step(g4_engine *e, g4_event *events, int32_t *n_events, g4_err *err) {
    *n_events = 0;
    admit(e);
    const int32_t budget = e->p.n_batch;
    int32_t n = 0;

    /* one decode token per decoding sequence (slot order), each followed by
     * its drafts while the budget leaves one token for every other decoder */
    int32_t spare = budget;
    for (int32_t s = 0; s < e->p.n_seq; s++)
        if (e->seq_req[s] >= 0 && can_decode(&e->req[e->seq_req[s]])) spare--;
    g4_status dst = model_drafts(e, spare, err);
    if (dst != G4_OK) return dst;
    for (int32_t s = 0; s < e->p.n_seq && n < budget; s++) {
        const int32_t ri = e->seq_req[s];
        if (ri < 0 || !can_decode(&e->req[ri])) continue;
        request *r = &e->req[ri];
        const int32_t p = g4_kvc_seq_len(e->kv, s);
        e->tok[n] = r->last; e->pos[n] = p; e->seq[n] = s; e->ridx[n] = ri; e->want[n] = 1;
        n++;
        r->n_draft = 0;
        if (!r->hist) continue;
        if (r->skip > 0) { r->skip--; continue; }
        /* a step yields at most n_draft + 1 tokens: within max_tokens and n_max */
        const int32_t k = draft_room(r, p, spare);
        if (k <= 0) continue;
        int32_t nd;
        if (r->use_model) {
            nd = r->n_dtok < k ? r->n_dtok : k;
            memcpy(e->tok + n, r->dtok, sizeof(int32_t) * (size_t)nd);
        } else {
            nd = lookup_draft(r->hist, r->n_hist, r->draft_ngram, k, e->tok + n);
        }
        for (int32_t i = 0; i < nd; i++) {
            e->pos[n] = p + 1 + i; e->seq[n] = s; e->ridx[n] = ri; e->want[n] = 1;
            n++;
        }
        r->n_draft = nd;
        spare -= nd;
    }
    /* then prompt chunks, oldest admission first */
    for (;;) {
        int32_t best = -1;
        for (int32_t s = 0; s < e->p.n_seq; s++) {
            const int32_t ri = e->seq_req[s];
            if (ri < 0 || e->req[ri].state != R_PREFILL || prefill_limit(&e->req[ri]) <= e->req[ri].n_done) continue;
            int taken = 0;
            for (int32_t t = 0; t < n; t++) taken |= e->ridx[t] == ri;
            if (!taken && (best < 0 || e->req[ri].t_admit < e->req[best].t_admit ||
                           (e->req[ri].t_admit == e->req[best].t_admit && e->req[ri].id < e->req[best].id)))
                best = ri;
        }
        if (best < 0 || n >= budget) break;
        request *r = &e->req[best];
        int32_t k = prefill_limit(r) - r->n_done;
        if (k > budget - n) k = budget - n;
        for (int32_t i = 0; i < k; i++) {
            e->tok[n] = r->prompt[r->n_done + i];
            e->pos[n] = r->n_done + i;
            e->seq[n] = r->seq;
            e->ridx[n] = best;
            e->want[n] = r->n_done + i == r->n_prompt - 1;
            n++;
        }
    }
    if (n == 0) return G4_OK;
    int32_t rows = 0;
    for (int32_t t = 0; t < n; t++) rows += e->want[t] != 0;
    const size_t V_ = (size_t)g4_model_n_vocab(e->m);
    if (rows > e->logits_rows) {
        float *lg = realloc(e->logits, sizeof(float) * V_ * (size_t)rows);
        if (!lg) return g4_err_set(err, G4_ERR_NOMEM, "engine: out of memory for %d logits rows", rows);
        e->logits = lg;
        if (e->mtp) {
            float *hd = realloc(e->hid, sizeof(float) * (size_t)e->mtp_hb * (size_t)rows);
            if (!hd) return g4_err_set(err, G4_ERR_NOMEM, "engine: out of memory for %d hidden rows", rows);
            e->hid = hd;
        }
        e->logits_rows = rows;
    }

    const g4_batch b = { n, e->tok, e->pos, e->seq, e->want };
    g4_status st = prepare_batch(e->kv, &b, err);
    if (st != G4_OK) return st;
    if (e->mtp) g4_model_set_hidden_out(e->m, e->hid);   /* the MTP drafter's input */
    st = g4_model_forward_batch(e->m, &b, e->kv, e->logits, err);
    if (e->mtp) g4_model_set_hidden_out(e->m, NULL);
    if (st != G4_OK) return st;
    e->steps++;
    e->tokens += (uint64_t)n;
    const double t_now = now_ms();

    /* commit, then sample each sequence that has logits (a sequence's tokens
     * are consecutive in the batch) */
    const g4_tokenizer *tk = g4_model_tokenizer(e->m);
    const int32_t V = g4_model_n_vocab(e->m), n_ctx = g4_model_n_ctx(e->m);
    int32_t row = 0;
    for (int32_t t = 0; t < n;) {
        int32_t u = t;
        while (u < n && e->seq[u] == e->seq[t]) u++;
        request *r = &e->req[e->ridx[t]];
        const int prefill = r->state == R_PREFILL;
        if (prefill) {
            r->n_done += u - t;
            e->prompt_tokens += (uint64_t)(u - t);
            g4_kvc_seq_commit(e->kv, e->seq[t], e->pos[u - 1] + 1);
            if (!e->want[u - 1]) { t = u; continue; }
            r->state = R_DECODE;
            r->t_first = t_now;
            r->st.prefill_ms = t_now - r->t_admit;
        }
        /* rows: the last prompt token's (prefill), or [last, d1..dk] (decode):
         * token i is yielded, and row i + 1 is looked at while it equals d_{i+1} */
        const int32_t nd = prefill ? 0 : r->n_draft, t0 = prefill ? u - 1 : t;
        r->st.n_drafted += nd;
        r->st.n_draft_steps += nd > 0;
        int32_t i = 0, fin = G4_FINISH_NONE, yrow = row;
        for (;; i++) {
            yrow = row;
            float *lg = e->logits + (size_t)row++ * (size_t)V;
            if (!prefill) r->st.n_decode++;
            r->st.decode_ms = t_now - r->t_first;
            g4_event *ev = &events[*n_events];
            int32_t id;
            if (i < nd && r->sampler.temperature > 0.0f) {
                /* a sampled request's row with a draft after it: the rejection rule
                 * (drafting requests have no mask, bias, penalties or logprobs) */
                id = spec_sample(e, r, lg, V, e->tok[t0 + i + 1], r->dq ? r->dq + (size_t)i * (size_t)V : NULL);
                ev->logprob = 0.0f;
                ev->n_top = -1;
            } else {
                id = sample_request(r, lg, V, ev);
                if (id == -2) return g4_err_set(err, G4_ERR_INVALID, "engine: request %lld's mask allows no token",
                                                (long long)r->id);
            }
            if (id < 0) return g4_err_set(err, G4_ERR_NOMEM, "engine: sampler out of memory");
            (*n_events)++;
            ev->id = r->id;
            ev->token = -1;
            if (g4_tokenizer_is_eog(tk, id)) {
                fin = G4_FINISH_STOP;
                ev->n_top = -1;
            } else {
                if (r->out) r->out[r->n_out++] = id;
                ev->token = id;
                r->last = id;
                if (r->hist) r->hist[r->n_hist++] = id;
                r->st.n_generated++;
                e->generated_tokens++;
                const int32_t at = e->pos[t0 + i];
                if (r->st.n_generated >= r->max_tokens || at + 1 >= n_ctx || at + 1 >= r->n_max)
                    fin = G4_FINISH_LENGTH;
            }
            const int go_on = !fin && i < nd && id == e->tok[t0 + i + 1];
            if (go_on) r->st.n_accepted++;
            ev->finish = fin;
            ev->stats = r->st;
            if (!go_on) break;
        }
        row += prefill ? 0 : (u - t) - (i + 1);   /* rows of drafts after the first rejected one */
        if (nd > 0) adapt_draft(r, nd, i);
        /* the MTP drafter starts from the hidden state of the row that sampled `last` */
        if (r->mh) memcpy(r->mh, e->hid + (size_t)yrow * (size_t)e->mtp_hb, sizeof(float) * (size_t)e->mtp_hb);
        if (!prefill) g4_kvc_seq_commit(e->kv, e->seq[t], e->pos[t] + i + 1);
        /* the drafter keeps what the target committed: last, d1..d_i */
        if (r->use_model && !prefill && r->dlen > e->pos[t] + i + 1) r->dlen = e->pos[t] + i + 1;
        if (fin != G4_FINISH_NONE) finish(e, r);
        t = u;
    }
    return G4_OK;
}

/* ------------------------------------------------------------------ stats */

g4_engine_stats g4_engine_get_stats(const g4_engine *e) {
    g4_engine_stats s;
    memset(&s, 0, sizeof s);
    for (int32_t i = 0; i < e->n_req; i++) {
        if (e->req[i].state == R_WAITING) s.n_waiting++;
        else if (e->req[i].state != R_FREE) s.n_running++;
    }
    s.n_seq = e->p.n_seq;
    s.n_batch = e->p.n_batch;
    s.queue_max = e->p.queue_max;
    s.steps = e->steps;
    s.tokens = e->tokens;
    s.prompt_tokens = e->prompt_tokens;
    s.generated_tokens = e->generated_tokens;
    s.kv = g4_kvc_get_stats(e->kv);
    return s;
}

uint64_t g4_engine_seq_kv_bytes(const g4_engine *e, int32_t n_ctx) {
    g4_kv_layer layers[4096];
    const int nl = g4_model_kv_layers(e->m, layers);
    return g4_kvc_seq_bytes(layers, nl, n_ctx, e->p.n_batch, g4_model_kv_type(e->m));
}
