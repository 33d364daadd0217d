/* kvcache.h - the paged KV cache: fixed-size blocks of G4_KV_BLOCK positions
 * from one pool sized in bytes, a block table per sequence, prefix sharing
 * by hash, least-recently-used reuse of freed blocks.
 *
 * The model of vLLM's block manager (Kwon et al. 2023, "Efficient Memory
 * Management for Large Language Model Serving with PagedAttention"; vLLM's
 * automatic prefix caching): a block is the unit of allocation for every
 * layer at once; a sequence's positions p live in block table[p / BLOCK],
 * row p % BLOCK. A full block is keyed by a hash of its tokens chained with
 * the hash of every block before it, so two sequences whose prompts start
 * alike share those blocks read-only (reference counts). A block whose last
 * user ends keeps its key and goes to the back of the free list; allocation
 * takes from the front, so cached prefixes are forgotten least-recently-used
 * first.
 *
 * Layers come in at most two groups with pools of their own: global layers
 * (the whole context) and sliding-window layers (Gemma 3/4). A
 * sliding-window layer's blocks that left every future query's window are
 * returned to its pool as the sequence advances, so a sequence holds at most
 * ceil((window + n_batch - 1) / BLOCK) + 1 of them (llama.cpp's iSWA cache
 * keeps n_swa + n_ubatch cells for the same reason).
 *
 * Admission is by reservation: a sequence that begins reserves every block it
 * can need for its longest run (prompt + max_tokens), so a running sequence
 * never finds the pool empty and nothing is preempted; a sequence that cannot
 * reserve waits (the engine's scheduler decides).
 *
 * Element types (ggml type numbers): F16 (default, as llama.cpp's
 * type_k = type_v = f16), Q8_0 (blocks of 32 along the row, head sizes a
 * multiple of 32), F32 (reference models). Not thread-safe: one caller at a
 * time (the engine's step, or a model's single-sequence forward).
 */
#ifndef G4_KVCACHE_H
#define G4_KVCACHE_H

#include <stdint.h>

#include "../common/g4err.h"
#include "../common/threadpool.h"
#include "../model/ops.h"

#define G4_KV_BLOCK 32          /* positions per block */
#define G4_KV_MAX_GROUPS 2      /* global, sliding-window */

enum { G4_KV_F32 = 0, G4_KV_F16 = 1, G4_KV_Q8_0 = 8 };   /* ggml type numbers */

/* One layer that stores K/V (KV-shared layers read another's and have none). */
typedef struct g4_kv_layer {
    int dim_k, dim_v;           /* n_head_kv * head_dim, floats per position */
    int window;                 /* > 0: sliding window in positions; 0: global */
} g4_kv_layer;

typedef struct g4_kvc_params {
    int n_seq;                  /* sequence slots, >= 1 */
    int32_t n_ctx;              /* positions per sequence at most */
    int32_t n_batch;            /* positions one sequence writes in one step at most */
    int type;                   /* G4_KV_F16, G4_KV_Q8_0 or G4_KV_F32 */
    uint64_t bytes;             /* pool size; 0: n_seq sequences of n_ctx positions, plus one
                                   window of sliding-window blocks per sequence (prefix reuse) */
    int n_threads;              /* attention scratch per thread */
    int keep_window;            /* nonzero: sliding-window blocks are never freed early
                                   (a single-sequence cache that may be rewound anywhere) */
    int32_t window_extra;       /* > 0: sliding-window layers also keep this many positions
                                   before the window (the Gemma 4 MTP assistant reads the last
                                   window + 1 keys before its query: model.h g4_mtp_window_extra);
                                   g4_kvc_seq_bytes does not count them */
} g4_kvc_params;

typedef struct g4_kvcache g4_kvcache;

/* Bytes of KV cache one sequence of n_ctx positions holds at most, for these
 * layers and element type: global layers ceil(n_ctx / BLOCK) blocks, sliding
 * ones min(that, ceil((window + n_batch - 1) / BLOCK) + 1) blocks, a block being
 * BLOCK positions x (dim_k + dim_v) elements per layer. The formula
 * gemma4stack.recommend uses for the same context and cache type. */
uint64_t g4_kvc_seq_bytes(const g4_kv_layer *layers, int n_layers, int32_t n_ctx, int32_t n_batch, int type);

/* Errors: G4_ERR_INVALID (no layers, two different windows, a Q8_0 row not a
 * multiple of 32, unknown type), G4_ERR_LIMIT (bytes too small for one
 * sequence), G4_ERR_NOMEM. */
g4_kvcache *g4_kvc_create(const g4_kv_layer *layers, int n_layers, const g4_kvc_params *p, g4_err *err);
void g4_kvc_free(g4_kvcache *kv);

/* ---- sequences ------------------------------------------------------------ */

/* Start sequence slot `seq` (unused) for a prompt of n_prompt tokens that may
 * grow to n_max positions (prompt + completion, <= n_ctx). Looks the prompt's
 * full blocks up in the prefix cache (at most n_prompt - 1 positions are
 * reused: the last prompt token is always run, for its logits), takes those,
 * and reserves what else the sequence can need. *n_cached: positions reused.
 * With use_prefix 0 nothing is looked up or later registered.
 * Returns 1 on success, 0 when the pool cannot promise the blocks now
 * (nothing changed: wait for others to finish), -1 on a bad argument (err). */
int g4_kvc_seq_begin(g4_kvcache *kv, int seq, const int32_t *prompt, int32_t n_prompt, int32_t n_max,
                     int use_prefix, int32_t *n_cached, g4_err *err);

/* Blocks a new sequence would need now (prefix hits not counted as free); for
 * a scheduler's view. */
int g4_kvc_seq_fits(const g4_kvcache *kv, const int32_t *prompt, int32_t n_prompt, int32_t n_max);

/* Before a forward writes positions pos0..pos0+n-1 of seq (pos0 <= its
 * current length; from pos0 on, earlier contents are dropped): makes their
 * blocks present and private (copy-on-write of a shared block) and records
 * the tokens. G4_ERR_LIMIT past n_max or n_ctx. */
g4_status g4_kvc_seq_prepare(g4_kvcache *kv, int seq, int32_t pos0, int32_t n, const int32_t *tokens,
                             g4_err *err);

/* After the forward: the sequence holds positions 0..n_pos-1; newly full
 * blocks enter the prefix cache; sliding-window blocks no later query sees
 * go back to the pool. */
void g4_kvc_seq_commit(g4_kvcache *kv, int seq, int32_t n_pos);

/* Release everything the sequence holds or reserved. */
void g4_kvc_seq_end(g4_kvcache *kv, int seq);

/* Start slot dst as a copy of src (n > 1 samples of one prompt): full blocks
 * shared, the partly filled last block copied, blocks for n_max positions
 * reserved. Returns 1, 0 (pool cannot promise them; nothing changed), -1. */
int g4_kvc_seq_fork(g4_kvcache *kv, int src, int dst, int32_t n_max, g4_err *err);

int32_t g4_kvc_seq_len(const g4_kvcache *kv, int seq);

/* ---- the forward pass's side ---------------------------------------------- */

/* Store the K and V rows of n tokens of cache layer li: token t is position
 * pos[t] of sequence seq[t] (prepared), k row t at k + t*ldk (dim_k floats). */
void g4_kvc_store(g4_kvcache *kv, int li, int n, const int32_t *seq, const int32_t *pos,
                  const float *k, int64_t ldk, const float *v, int64_t ldv);

/* Causal attention of n query tokens (token t: sequence seq[t], position
 * pos[t]; its keys 0..pos[t], or the last a->window of them, already stored)
 * over cache layer li. Layout as g4_attention (ops.h):
 *   q [n][n_head * head_dim_k] (stride ldq), out [n][n_head * head_dim_v] (ldo).
 * GQA: query head h reads kv head h / (n_head / n_head_kv). (token, head)
 * pairs are dealt round-robin to the pool's threads. */
void g4_kvc_attention(g4_pool *pool, g4_kvcache *kv, int li, const g4_attn *a, int n,
                      const int32_t *seq, const int32_t *pos, const float *q, int64_t ldq,
                      float *out, int64_t ldo);

/* ---- figures -------------------------------------------------------------- */

typedef struct g4_kvc_stats {
    int n_groups;
    int32_t blocks_total[G4_KV_MAX_GROUPS];
    int32_t blocks_used[G4_KV_MAX_GROUPS];     /* held by sequences */
    int32_t blocks_shared[G4_KV_MAX_GROUPS];   /* held by more than one sequence */
    int32_t blocks_cached[G4_KV_MAX_GROUPS];   /* free but still keyed (a prefix to reuse) */
    int32_t blocks_reserved[G4_KV_MAX_GROUPS]; /* promised to running sequences */
    uint64_t block_bytes[G4_KV_MAX_GROUPS];
    uint64_t bytes;                            /* the whole pool */
    uint64_t prefix_queried;                   /* prompt positions looked up */
    uint64_t prefix_hit;                       /* of them, reused */
    int type;
} g4_kvc_stats;

g4_kvc_stats g4_kvc_get_stats(const g4_kvcache *kv);

#endif
