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
 *
 * Placement: each worker is pinned (hwloc_set_thread_cpubind) to its own
 * physical core, one PU per core so SMT siblings are not doubled up, within
 * the CPUs this process may use, performance cores first when hwloc reports
 * CPU kinds (hybrid P/E parts: hwloc_cpukinds ranks kinds by efficiency).
 * The caller (share 0) is not pinned - it is the application's thread - and
 * the first core is left for it. GEMMA4STACK_PIN=0 turns pinning off.
 * A job may have more shares than threads (g4_pool_run_n): claiming shares
 * from the counter then balances cores of different speed (P/E) and cores
 * that other processes are using.
 */
#include "threadpool.h"

#include <hwloc.h>
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
    hwloc_bitmap_t cpuset;      /* the core it pins itself to, or NULL */
} g4_worker;

/* The job's function and argument. Two slots, used by alternate jobs: a
 * worker that read job k's slot late, while the caller was already filling
 * it for job k+2, fails to claim anything (the state's sequence has moved
 * on), so it never runs a half-written job. */
typedef struct job_slot {
    _Atomic(g4_pool_fn) fn;
    _Atomic(void *) ctx;
    atomic_int n;               /* shares of the job */
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

    hwloc_topology_t topo;      /* for pinning; NULL when not pinning */
    void *cache;                /* g4_pool_set_cache */
    void (*free_cache)(void *);
};

/* ------------------------------------------------------------- shares */

/* Claim and run shares of job `seq` until none is left. Returns 1 when this
 * thread finished the job's last share. */
static int run_shares(g4_pool *p, uint32_t seq, g4_pool_fn fn, void *ctx, int n) {
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
    if (w->cpuset) hwloc_set_thread_cpubind(p->topo, pthread_self(), w->cpuset, HWLOC_CPUBIND_THREAD);   /* best effort */
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
        const int n = atomic_load_explicit(&js->n, memory_order_relaxed);
        if (run_shares(p, seen, fn, ctx, n)) {
            /* the last share: wake the caller in case it went to sleep */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

/* --------------------------------------------------------------- placement */

/* One PU of each physical core this process may run on, most performant
 * kind first; fills sets[0..cap) and returns how many. */
static int core_sets(hwloc_topology_t topo, hwloc_bitmap_t *sets, int cap) {
    hwloc_bitmap_t allowed = hwloc_bitmap_alloc(), kind = hwloc_bitmap_alloc();
    int n = 0;
    if (!allowed || !kind) goto done;
    if (hwloc_get_cpubind(topo, allowed, HWLOC_CPUBIND_PROCESS) != 0)
        hwloc_bitmap_copy(allowed, hwloc_topology_get_allowed_cpuset(topo));
    /* kinds come least efficient (E cores) first, so walk them from the
       last; with one kind or unranked kinds, one pass in topology order */
    const int n_kinds = hwloc_cpukinds_get_nr(topo, 0);
    int eff = -1;
    const int ranked = n_kinds > 1 && hwloc_cpukinds_get_info(topo, (unsigned)n_kinds - 1, kind, &eff, NULL, NULL, 0) == 0
                       && eff >= 0;
    const int n_cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    for (int k = ranked ? n_kinds - 1 : 0; k >= 0 && n < cap; k--) {
        if (ranked && hwloc_cpukinds_get_info(topo, (unsigned)k, kind, NULL, NULL, NULL, 0) != 0) continue;
        for (int c = 0; c < n_cores && n < cap; c++) {
            hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, (unsigned)c);
            if (!core || !core->cpuset || !hwloc_bitmap_intersects(core->cpuset, allowed)) continue;
            if (ranked && !hwloc_bitmap_intersects(core->cpuset, kind)) continue;
            hwloc_bitmap_t set = hwloc_bitmap_alloc();
            if (!set) goto done;
            hwloc_bitmap_and(set, core->cpuset, allowed);
            hwloc_bitmap_singlify(set);   /* one PU: SMT siblings share the core's vector units */
            sets[n++] = set;
        }
        if (!ranked) break;
    }
done:
    hwloc_bitmap_free(kind);
    hwloc_bitmap_free(allowed);
    return n;
}

/* Give worker i (share i + 1) core i + 1: core 0 is left to the caller. */
static void place_workers(g4_pool *p) {
    const char *env = getenv("GEMMA4STACK_PIN");
    if (env && !strcmp(env, "0")) return;
    if (hwloc_topology_init(&p->topo) != 0) { p->topo = NULL; return; }
    if (hwloc_topology_load(p->topo) != 0) { hwloc_topology_destroy(p->topo); p->topo = NULL; return; }
    hwloc_bitmap_t sets[256];
    const int n = core_sets(p->topo, sets, 256);
    for (int i = 0; i < n; i++) {
        if (i >= 1 && i - 1 < p->n_threads - 1) p->workers[i - 1].cpuset = sets[i];
        else hwloc_bitmap_free(sets[i]);
    }
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
    for (int i = 0; i < 2; i++) {
        atomic_init(&p->slot[i].fn, NULL);
        atomic_init(&p->slot[i].ctx, NULL);
        atomic_init(&p->slot[i].n, 0);
    }
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
        place_workers(p);
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
    if (p->workers)
        for (int i = 0; i < p->n_threads - 1; i++) hwloc_bitmap_free(p->workers[i].cpuset);
    if (p->topo) hwloc_topology_destroy(p->topo);
    if (p->free_cache) p->free_cache(p->cache);
    free(p->workers);
    free(p);
}

void *g4_pool_cache(const g4_pool *p) { return p ? p->cache : NULL; }

void g4_pool_set_cache(g4_pool *p, void *cache, void (*free_cache)(void *)) {
    p->cache = cache;
    p->free_cache = free_cache;
}

int g4_pool_size(const g4_pool *p) { return p ? p->n_threads : 1; }

/* ------------------------------------------------------------------- run */

void g4_pool_run(g4_pool *p, g4_pool_fn fn, void *ctx) { g4_pool_run_n(p, fn, ctx, g4_pool_size(p)); }

void g4_pool_run_n(g4_pool *p, g4_pool_fn fn, void *ctx, int n) {
    if (n < 1) return;
    if (!p || p->n_threads == 1) {
        for (int i = 0; i < n; i++) fn(ctx, i, n);
        return;
    }

    /* only this thread writes state's sequence, so a plain read is current */
    const uint32_t seq = STATE_SEQ(atomic_load_explicit(&p->state, memory_order_relaxed)) + 1;
    job_slot *js = &p->slot[seq & 1];
    atomic_store_explicit(&js->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&js->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&js->n, n, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store(&p->state, STATE(seq, 0));          /* publish (seq_cst, see worker_main) */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_job);
        pthread_mutex_unlock(&p->mu);
    }

    run_shares(p, seq, fn, ctx, n);

    /* wait for shares that workers claimed and are still running */
    for (int i = 0; i < G4_POOL_SPIN; i++) {
        if (atomic_load_explicit(&p->done, memory_order_acquire) == n) return;
        G4_CPU_RELAX();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->done, memory_order_acquire) != n)
        pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
