/* threadpool.c - persistent worker pool for data-parallel loops.
 *
 * One job at a time: g4_pool_run() publishes (fn, ctx) and bumps a job
 * counter; each worker notices the new counter value, runs fn(ctx, ith, nth)
 * and decrements `pending`; the caller runs the ith == 0 share itself and
 * then waits for pending == 0.
 *
 * A decode step issues several jobs per layer a few microseconds apart, so
 * waking a sleeping thread (a futex syscall, ~5-50 us) on every job would
 * cost more than the job. Workers and the caller therefore spin on the
 * counters for a short while (the same idea as ggml's ggml_barrier and
 * thread-pool polling) and only then sleep on a condition variable, so an
 * idle model costs no CPU.
 *
 * Nothing is allocated per job; the only allocation is the thread array at
 * create time.
 */
#include "threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define G4_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define G4_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define G4_CPU_RELAX() ((void)0)
#endif

/* Spin iterations before sleeping. One pause is ~10-140 cycles depending on
 * the core, so this is roughly 50-500 us: longer than the gap between two
 * matmuls of a decode step, far shorter than the gap between two requests. */
#define G4_POOL_SPIN 8192

typedef struct g4_worker {
    struct g4_pool *pool;
    int ith;
    pthread_t thread;
} g4_worker;

struct g4_pool {
    int n_threads;
    int n_started;              /* workers successfully created */
    g4_worker *workers;         /* n_threads - 1 entries */

    /* current job, published before `job_seq` is incremented */
    g4_pool_fn fn;
    void *ctx;

    /* Each on its own cache line: workers poll job_seq while the caller
     * polls pending; sharing a line would make them fight over it. */
    _Alignas(64) atomic_uint job_seq;     /* incremented once per job */
    _Alignas(64) atomic_int pending;      /* workers not yet done with the job */
    _Alignas(64) atomic_int stop;

    pthread_mutex_t mu;
    pthread_cond_t cv_job;      /* workers sleep here between jobs */
    pthread_cond_t cv_done;     /* the caller sleeps here waiting for pending == 0 */
};

/* ---------------------------------------------------------------- workers */

static void *worker_main(void *arg) {
    g4_worker *w = arg;
    g4_pool *p = w->pool;
    /* job_seq starts at 0 and no job can complete without this worker, so
     * 0 is the last job it has seen even if it starts after the first
     * g4_pool_run (reading job_seq here would skip that job forever) */
    unsigned seen = 0;
    for (;;) {
        /* wait for a new job: spin, then sleep */
        unsigned seq = seen;
        for (int i = 0; i < G4_POOL_SPIN; i++) {
            seq = atomic_load_explicit(&p->job_seq, memory_order_acquire);
            if (seq != seen || atomic_load_explicit(&p->stop, memory_order_acquire)) break;
            G4_CPU_RELAX();
        }
        if (seq == seen) {
            pthread_mutex_lock(&p->mu);
            while ((seq = atomic_load_explicit(&p->job_seq, memory_order_acquire)) == seen &&
                   !atomic_load_explicit(&p->stop, memory_order_acquire))
                pthread_cond_wait(&p->cv_job, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        seen = seq;

        p->fn(p->ctx, w->ith, p->n_threads);

        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            /* last one out: wake the caller in case it went to sleep */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ build/free */

g4_pool *g4_pool_create(int n_threads, g4_err *err) {
    if (n_threads < 1) {
        g4_err_set(err, G4_ERR_INVALID, "thread pool: n_threads must be >= 1 (got %d)", n_threads);
        return NULL;
    }
    g4_pool *p = calloc(1, sizeof *p);
    if (!p) { g4_err_set(err, G4_ERR_NOMEM, "thread pool: out of memory"); return NULL; }
    p->n_threads = n_threads;
    atomic_init(&p->job_seq, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_job, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            g4_pool_free(p);
            g4_err_set(err, G4_ERR_NOMEM, "thread pool: out of memory");
            return NULL;
        }
        for (int i = 1; i < n_threads; i++) {
            g4_worker *w = &p->workers[i - 1];
            w->pool = p;
            w->ith = i;
            int rc = pthread_create(&w->thread, NULL, worker_main, w);
            if (rc != 0) {
                g4_pool_free(p);
                g4_err_set(err, G4_ERR_HW, "thread pool: cannot start thread %d of %d: %s",
                           i, n_threads, strerror(rc));
                return NULL;
            }
            p->n_started++;
        }
    }
    return p;
}

void g4_pool_free(g4_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv_job);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->workers[i].thread, NULL);
    pthread_cond_destroy(&p->cv_job);
    pthread_cond_destroy(&p->cv_done);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p);
}

int g4_pool_size(const g4_pool *p) { return p ? p->n_threads : 1; }

/* ------------------------------------------------------------------- run */

void g4_pool_run(g4_pool *p, g4_pool_fn fn, void *ctx) {
    if (!p || p->n_threads == 1) { fn(ctx, 0, 1); return; }

    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
    /* The increment under the mutex pairs with the sleeping workers' check,
     * so a worker cannot miss the job between its check and its wait. The
     * release ordering publishes fn/ctx/pending to the spinning workers. */
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->job_seq, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv_job);
    pthread_mutex_unlock(&p->mu);

    fn(ctx, 0, p->n_threads);

    for (int i = 0; i < G4_POOL_SPIN; i++) {
        if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0) return;
        G4_CPU_RELAX();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0)
        pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
