/* threadpool.c - persistent worker pool for data-parallel loops.
 *
 * A job is fn(ctx, ith, nth) for the nth "shares" ith = 0..nth-1. Shares
 * are not pinned to threads: the caller and every awake worker claim the
 * next unclaimed share from one atomic counter until none is left, and the
 * caller returns once all shares are finished. So when a worker is asleep
 * or descheduled (another process holds its core), the caller does that
 * share itself instead of waiting a scheduler time slice for it; a static
 * split made a 6-token prefill take 19 ms instead of 1 on a loaded 2-core
 * machine. Each share still runs exactly once, so per-share scratch
 * (indexed by ith) stays private.
 *
 * A decode step issues several jobs per layer a few microseconds apart, so
 * waking a sleeping thread (a futex syscall) on every job would cost more
 * than the job. Workers therefore spin on the job counter for a short while
 * (as ggml's threads poll) and only then sleep on a condition variable, so
 * an idle model costs no CPU.
 *
 * Nothing is allocated per job; the only allocation is the thread array at
 * create time.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
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

/* state = job sequence number << 32 | next share to claim */
#define STATE(seq, next) ((uint64_t)(seq) << 32 | (uint32_t)(next))
#define STATE_SEQ(s) ((uint32_t)((s) >> 32))
#define STATE_NEXT(s) ((uint32_t)(s))

typedef struct g4_worker {
    struct g4_pool *pool;
    pthread_t thread;
} g4_worker;

/* The job's function and argument. Two slots, used by alternate jobs: a
 * worker that read job k's slot late, while the caller was already filling
 * it for job k+2, fails to claim anything (the state's sequence has moved
 * on), so it never runs a half-written job. */
typedef struct job_slot {
    _Atomic(g4_pool_fn) fn;
    _Atomic(void *) ctx;
} job_slot;

struct g4_pool {
    int n_threads;
    int n_started;              /* workers successfully created */
    g4_worker *workers;         /* n_threads - 1 entries */
    job_slot slot[2];

    /* Each on its own cache line: workers poll `state` while the caller
     * polls `done`; sharing a line would make them fight over it. */
    _Alignas(64) _Atomic uint64_t state;
    _Alignas(64) atomic_int done;         /* shares finished in the current job */
    _Alignas(64) atomic_int stop;
    atomic_int n_sleeping;                /* workers waiting on cv_job */

    pthread_mutex_t mu;
    pthread_cond_t cv_job;      /* workers sleep here between jobs */
    pthread_cond_t cv_done;     /* the caller sleeps here waiting for the last share */
};

/* ------------------------------------------------------------- shares */

/* Claim and run shares of job `seq` until none is left. Returns 1 when this
 * thread finished the job's last share. */
static int run_shares(g4_pool *p, uint32_t seq, g4_pool_fn fn, void *ctx) {
    const int n = p->n_threads;
    int finished_last = 0;
    uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
    while (STATE_SEQ(s) == seq && STATE_NEXT(s) < (uint32_t)n) {
        if (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;   /* s was reloaded: someone else claimed or a new job began */
        fn(ctx, (int)STATE_NEXT(s), n);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == n) finished_last = 1;
        s = atomic_load_explicit(&p->state, memory_order_acquire);
    }
    return finished_last;
}

/* ---------------------------------------------------------------- workers */

static void *worker_main(void *arg) {
    g4_worker *w = arg;
    g4_pool *p = w->pool;
    /* the sequence starts at 0 and job 1 is the first real one */
    uint32_t seen = 0;
    for (;;) {
        /* wait for a new job: spin, then sleep */
        uint64_t s = 0;
        int fresh = 0;
        for (int i = 0; i < G4_POOL_SPIN; i++) {
            s = atomic_load_explicit(&p->state, memory_order_acquire);
            if (STATE_SEQ(s) != seen || atomic_load_explicit(&p->stop, memory_order_acquire)) { fresh = 1; break; }
            G4_CPU_RELAX();
        }
        if (!fresh) {
            pthread_mutex_lock(&p->mu);
            /* seq_cst increment then check, paired with the caller's seq_cst
             * publish then check of n_sleeping: one of us sees the other */
            atomic_fetch_add(&p->n_sleeping, 1);
            while (STATE_SEQ(s = atomic_load(&p->state)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_job, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        seen = STATE_SEQ(s);

        const job_slot *js = &p->slot[seen & 1];
        g4_pool_fn fn = atomic_load_explicit(&js->fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&js->ctx, memory_order_relaxed);
        if (run_shares(p, seen, fn, ctx)) {
            /* the last share: wake the caller in case it went to sleep */
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
    atomic_init(&p->state, STATE(0, 0));
    atomic_init(&p->done, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->n_sleeping, 0);
    for (int i = 0; i < 2; i++) { atomic_init(&p->slot[i].fn, NULL); atomic_init(&p->slot[i].ctx, NULL); }
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
        for (int i = 0; i < n_threads - 1; i++) {
            g4_worker *w = &p->workers[i];
            w->pool = p;
            int rc = pthread_create(&w->thread, NULL, worker_main, w);
            if (rc != 0) {
                g4_pool_free(p);
                g4_err_set(err, G4_ERR_HW, "thread pool: cannot start thread %d of %d: %s",
                           i + 1, n_threads, strerror(rc));
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
    atomic_store(&p->stop, 1);
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

    /* only this thread writes state's sequence, so a plain read is current */
    const uint32_t seq = STATE_SEQ(atomic_load_explicit(&p->state, memory_order_relaxed)) + 1;
    job_slot *js = &p->slot[seq & 1];
    atomic_store_explicit(&js->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&js->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store(&p->state, STATE(seq, 0));          /* publish (seq_cst, see worker_main) */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_job);
        pthread_mutex_unlock(&p->mu);
    }

    run_shares(p, seq, fn, ctx);

    /* wait for shares that workers claimed and are still running */
    const int n = p->n_threads;
    for (int i = 0; i < G4_POOL_SPIN; i++) {
        if (atomic_load_explicit(&p->done, memory_order_acquire) == n) return;
        G4_CPU_RELAX();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->done, memory_order_acquire) != n)
        pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
