/* threadpool.h - persistent worker pool for data-parallel loops.
 *
 * g4_pool_run(pool, fn, ctx) calls fn(ctx, ith, nth) exactly once for each
 * share ith = 0..nth-1 (nth = the pool size) and returns when all are done.
 * The caller takes part: shares go to whichever thread claims them first, so
 * a share may run on any thread (index per-share scratch by ith, never by
 * thread) and a worker that is asleep or descheduled does not hold the job
 * up. Workers spin briefly then sleep on a condition variable between jobs.
 * No allocation per job.
 */
#ifndef G4_THREADPOOL_H
#define G4_THREADPOOL_H

#include "g4err.h"

typedef struct g4_pool g4_pool;
typedef void (*g4_pool_fn)(void *ctx, int ith, int nth);

/* n_threads >= 1 (1 means no workers: jobs run on the caller). */
g4_pool *g4_pool_create(int n_threads, g4_err *err);
void g4_pool_free(g4_pool *p);
int g4_pool_size(const g4_pool *p);
void g4_pool_run(g4_pool *p, g4_pool_fn fn, void *ctx);

/* As g4_pool_run with n_shares shares: fn(ctx, ith, n_shares) runs once for
 * each ith, on whichever thread claims it. More shares than threads balance
 * cores of different speed (P/E cores) and cores busy with other work. */
void g4_pool_run_n(g4_pool *p, g4_pool_fn fn, void *ctx, int n_shares);

/* One slot for data that lives as long as the pool (the model): ops.c keeps
 * the model's repacked weights there. free_cache(cache) runs at
 * g4_pool_free. */
void *g4_pool_cache(const g4_pool *p);
void g4_pool_set_cache(g4_pool *p, void *cache, void (*free_cache)(void *));

#endif
