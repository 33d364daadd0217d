/* bandwidth.c - STREAM-style memory bandwidth probe (see bandwidth.h).
 *
 * Method, after John D. McCalpin's STREAM (https://www.cs.virginia.edu/stream/,
 * "STREAM: Sustainable Memory Bandwidth in High Performance Computers", and
 * its run rules in stream.c):
 *   - three double arrays, each at least 4x the total last-level cache, so no
 *     repetition finds its data in cache;
 *   - every thread initialises the slice it will later stream (first touch),
 *     so on NUMA machines each slice lives in its thread's local node;
 *   - one untimed warm-up pass, then `reps` timed passes; the best (shortest)
 *     time of each kernel is reported, as STREAM reports its best rate. A
 *     pass is timed from the earliest thread start to the latest thread end,
 *     each thread reading the clock itself: taking both stamps on one thread
 *     after the barriers let a preempted thread 0 miss part of the others'
 *     work, and best-of-N then picked that inflated rate (seen here once: 60
 *     GB/s read on a VM that sustains 33);
 *   - results are checked (the read sum, every triad element), so a compiler
 *     cannot drop the work and a wrong kernel cannot report a rate;
 *   - bytes are counted as STREAM counts them: read = 8 bytes per element,
 *     triad a[i] = b[i] + s*c[i] = 24 bytes per element (the write-allocate
 *     read of a[] is not counted). GB/s = 1e9 bytes per second.
 * "read" is not a STREAM kernel: it sums one array, which is the access
 * pattern of LLM decode (each weight streamed once per token), so it is the
 * roofline the recommendation uses. Its loop keeps several vector
 * accumulators so the adds never limit it: at one accumulator the
 * dependency chain, not memory, sets the speed on a wide core.
 *
 * Threads are plain pthreads, one per CPU this process may run on, pinned in
 * order, with a spinning barrier around each timed pass. The caller only waits, so
 * its own CPU affinity (inherited by threads it starts later) is untouched.
 */
#define _GNU_SOURCE
#include "bandwidth.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "../hw/hw.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define MIB (1024.0 * 1024.0)
#define BW_MIN_BYTES ((size_t)1 << 20)          /* below this we would time a cache */
#define BW_DEFAULT_MIN ((size_t)64 << 20)        /* default floor: 64 MiB per array */
#define BW_ALIGN ((size_t)2 << 20)               /* 2 MiB: lets the kernel back arrays with huge pages */
#define BW_MAX_THREADS 4096
#define TRIAD_SCALAR 3.0

/* ---- kernels: scalar reference, AVX2, AVX-512 --------------------------------- */

static double read_scalar(const double *x, size_t n) {
    double s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += x[i + k];
    for (; i < n; i++) s[0] += x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static void triad_scalar(double *a, const double *b, const double *c, double s, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static double read_avx2(const double *x, size_t n) {
    __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_add_pd(s0, _mm256_loadu_pd(x + i));
        s1 = _mm256_add_pd(s1, _mm256_loadu_pd(x + i + 4));
        s2 = _mm256_add_pd(s2, _mm256_loadu_pd(x + i + 8));
        s3 = _mm256_add_pd(s3, _mm256_loadu_pd(x + i + 12));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
    return (t[0] + t[1]) + (t[2] + t[3]) + read_scalar(x + i, n - i);
}

__attribute__((target("avx2"))) static void triad_avx2(double *a, const double *b, const double *c,
                                                        double s, size_t n) {
    __m256d vs = _mm256_set1_pd(s);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_pd(a + i, _mm256_add_pd(_mm256_loadu_pd(b + i), _mm256_mul_pd(vs, _mm256_loadu_pd(c + i))));
        _mm256_storeu_pd(a + i + 4,
                         _mm256_add_pd(_mm256_loadu_pd(b + i + 4), _mm256_mul_pd(vs, _mm256_loadu_pd(c + i + 4))));
    }
    triad_scalar(a + i, b + i, c + i, s, n - i);
}

__attribute__((target("avx512f"))) static double read_avx512(const double *x, size_t n) {
    __m512d s0 = _mm512_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_add_pd(s0, _mm512_loadu_pd(x + i));
        s1 = _mm512_add_pd(s1, _mm512_loadu_pd(x + i + 8));
        s2 = _mm512_add_pd(s2, _mm512_loadu_pd(x + i + 16));
        s3 = _mm512_add_pd(s3, _mm512_loadu_pd(x + i + 24));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s0, s1), _mm512_add_pd(s2, s3)));
    return sum + read_scalar(x + i, n - i);
}

__attribute__((target("avx512f"))) static void triad_avx512(double *a, const double *b, const double *c,
                                                             double s, size_t n) {
    __m512d vs = _mm512_set1_pd(s);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_pd(a + i, _mm512_add_pd(_mm512_loadu_pd(b + i), _mm512_mul_pd(vs, _mm512_loadu_pd(c + i))));
        _mm512_storeu_pd(a + i + 8,
                         _mm512_add_pd(_mm512_loadu_pd(b + i + 8), _mm512_mul_pd(vs, _mm512_loadu_pd(c + i + 8))));
    }
    triad_scalar(a + i, b + i, c + i, s, n - i);
}
#endif

typedef struct bw_kernels {
    const char *name;
    double (*read)(const double *, size_t);
    void (*triad)(double *, const double *, const double *, double, size_t);
} bw_kernels;

static bw_kernels pick_kernels(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return (bw_kernels){"avx512", read_avx512, triad_avx512};
    if (__builtin_cpu_supports("avx2")) return (bw_kernels){"avx2", read_avx2, triad_avx2};
#endif
    return (bw_kernels){"scalar", read_scalar, triad_scalar};
}

/* ---- the run: threads, barrier, timing -------------------------------------------- */

/* Sense-reversing spin barrier. A sleeping pthread barrier wakes its
   threads one by one (on a VM each wake-up is an inter-processor interrupt),
   so they start a pass up to a millisecond apart and the pass looks slower
   than the memory is; OpenMP STREAM builds avoid this by spinning too.
   Waiters yield the CPU after a while so oversubscription still progresses. */
typedef struct spin_barrier { atomic_int count; atomic_int sense; int n; } spin_barrier;

static void spin_barrier_wait(spin_barrier *b, int *local_sense) {
    int s = *local_sense = !*local_sense;
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->sense, s, memory_order_release);
        return;
    }
    for (unsigned spins = 0; atomic_load_explicit(&b->sense, memory_order_acquire) != s; spins++) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        if (spins > 4096) sched_yield();
    }
}

typedef struct bw_run {
    double *a, *b, *c;
    size_t n;                 /* elements per array */
    int nth, reps;
    bw_kernels k;
    int cpus[BW_MAX_THREADS]; int n_cpus;
    spin_barrier bar;
    pthread_mutex_t gate_mu; pthread_cond_t gate_cv; int gate;   /* 0 wait, 1 go, -1 abort */
    double best_read, best_triad;     /* seconds, written by thread 0 only */
    /* per-thread start/end of the current pass: a pass lasts from the first
       start to the last end, so a thread preempted between the barrier and
       its clock read can only lengthen the time, never shorten it */
    double *t_read0, *t_read1, *t_triad0, *t_triad1;
    int bad;                          /* a check failed */
    pthread_mutex_t bad_mu;
} bw_run;

typedef struct bw_worker { bw_run *run; int ith; } bw_worker;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Wall time of one pass over all threads: first start to last end. */
static double span(const double *t0, const double *t1, int n) {
    double lo = t0[0], hi = t1[0];
    for (int i = 1; i < n; i++) {
        if (t0[i] < lo) lo = t0[i];
        if (t1[i] > hi) hi = t1[i];
    }
    return hi - lo;
}

static void thread_body(bw_run *run, int ith) {
    if (run->n_cpus > 0) {     /* pin, so first touch and streaming happen on the same CPU */
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(run->cpus[ith % run->n_cpus], &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);   /* best effort */
    }
    /* slices aligned to 8 doubles (one cache line) */
    size_t per = (run->n / (size_t)run->nth) & ~(size_t)7;
    size_t lo = per * (size_t)ith, hi = ith == run->nth - 1 ? run->n : lo + per, m = hi - lo;
    double *a = run->a + lo, *b = run->b + lo, *c = run->c + lo;
    for (size_t i = 0; i < m; i++) { a[i] = 0.0; b[i] = 1.0; c[i] = 2.0; }

    int bad = 0, sense = 0;
    for (int r = 0; r <= run->reps; r++) {     /* r == 0 is the untimed warm-up */
        spin_barrier_wait(&run->bar, &sense);
        run->t_read0[ith] = now_s();
        double sum = run->k.read(b, m);
        run->t_read1[ith] = now_s();
        spin_barrier_wait(&run->bar, &sense);
        run->t_triad0[ith] = now_s();
        run->k.triad(a, b, c, TRIAD_SCALAR, m);
        run->t_triad1[ith] = now_s();
        spin_barrier_wait(&run->bar, &sense);
        if (sum != (double)m) bad = 1;         /* exact: integers below 2^53 */
        if (ith == 0 && r > 0) {               /* others wait at the next barrier meanwhile */
            double tr = span(run->t_read0, run->t_read1, run->nth);
            double tt = span(run->t_triad0, run->t_triad1, run->nth);
            if (tr < run->best_read) run->best_read = tr;
            if (tt < run->best_triad) run->best_triad = tt;
        }
    }
    for (size_t i = 0; i < m; i++)
        if (a[i] != 1.0 + TRIAD_SCALAR * 2.0) { bad = 1; break; }
    if (bad) { pthread_mutex_lock(&run->bad_mu); run->bad = 1; pthread_mutex_unlock(&run->bad_mu); }
}

static void *worker_main(void *arg) {
    bw_worker *w = arg;
    bw_run *run = w->run;
    pthread_mutex_lock(&run->gate_mu);
    while (run->gate == 0) pthread_cond_wait(&run->gate_cv, &run->gate_mu);
    int go = run->gate == 1;
    pthread_mutex_unlock(&run->gate_mu);
    if (go) thread_body(run, w->ith);
    return NULL;
}

static void open_gate(bw_run *run, int value) {
    pthread_mutex_lock(&run->gate_mu);
    run->gate = value;
    pthread_cond_broadcast(&run->gate_cv);
    pthread_mutex_unlock(&run->gate_mu);
}

/* ---- sizing and public entry ------------------------------------------------------ */

/* 4 x all last-level caches (STREAM's rule), at least 64 MiB, and no more
   than half the available memory for the three arrays together. */
static size_t default_bytes(void) {
    uint64_t llc = g4_hw_llc_total_bytes();
    uint64_t want = 4 * llc;
    if (want < BW_DEFAULT_MIN) want = BW_DEFAULT_MIN;
    uint64_t total, avail, limit;
    if (g4_hw_read_memory(NULL, &total, &avail, &limit, NULL) == G4_OK && avail / 6 >= BW_DEFAULT_MIN &&
        want > avail / 6)
        want = avail / 6;
    return (size_t)((want + BW_ALIGN - 1) / BW_ALIGN * BW_ALIGN);
}

static double *alloc_array(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, BW_ALIGN, bytes)) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);   /* fewer TLB misses; a hint, failure is fine */
#endif
    return p;
}

g4_status g4_bandwidth_measure(size_t bytes_per_array, int threads, int reps,
                               g4_bw_result *out, g4_err *err) {
    if (reps < 1 || reps > 1000) return g4_err_set(err, G4_ERR_INVALID, "bandwidth: reps must be 1..1000, got %d", reps);
    if (threads > BW_MAX_THREADS)
        return g4_err_set(err, G4_ERR_INVALID, "bandwidth: at most %d threads, got %d", BW_MAX_THREADS, threads);
    if (bytes_per_array == 0) bytes_per_array = default_bytes();
    if (bytes_per_array < BW_MIN_BYTES)
        return g4_err_set(err, G4_ERR_INVALID,
                          "bandwidth: %zu bytes per array is too small to leave the caches (minimum %zu)",
                          bytes_per_array, BW_MIN_BYTES);

    bw_run *run = calloc(1, sizeof *run);
    if (!run) return g4_err_set(err, G4_ERR_NOMEM, "bandwidth: out of memory");
    cpu_set_t aff;
    if (sched_getaffinity(0, sizeof aff, &aff) == 0)
        for (int c = 0; c < CPU_SETSIZE && run->n_cpus < BW_MAX_THREADS; c++)
            if (CPU_ISSET(c, &aff)) run->cpus[run->n_cpus++] = c;
    run->nth = threads > 0 ? threads : (run->n_cpus > 0 ? run->n_cpus : 1);
    run->reps = reps;
    run->n = bytes_per_array / sizeof(double);
    if (run->n < (size_t)run->nth * 8) run->nth = (int)(run->n / 8);
    run->k = pick_kernels();
    run->best_read = run->best_triad = INFINITY;

    g4_status st = G4_OK;
    size_t bytes = run->n * sizeof(double);
    double *times = calloc(4 * (size_t)run->nth, sizeof(double));
    if (!times) { st = g4_err_set(err, G4_ERR_NOMEM, "bandwidth: out of memory"); goto done; }
    run->t_read0 = times; run->t_read1 = times + run->nth;
    run->t_triad0 = times + 2 * run->nth; run->t_triad1 = times + 3 * run->nth;
    run->a = alloc_array(bytes); run->b = alloc_array(bytes); run->c = alloc_array(bytes);
    if (!run->a || !run->b || !run->c) {
        st = g4_err_set(err, G4_ERR_NOMEM, "bandwidth: cannot allocate 3 x %.0f MiB", (double)bytes / MIB);
        goto done;
    }
    run->bar.n = run->nth;
    pthread_mutex_init(&run->gate_mu, NULL); pthread_cond_init(&run->gate_cv, NULL);
    pthread_mutex_init(&run->bad_mu, NULL);

    pthread_t *tid = calloc((size_t)run->nth, sizeof *tid);
    bw_worker *wk = calloc((size_t)run->nth, sizeof *wk);
    int started = 0;
    if (!tid || !wk) st = g4_err_set(err, G4_ERR_NOMEM, "bandwidth: out of memory");
    for (; st == G4_OK && started < run->nth; started++) {
        wk[started] = (bw_worker){run, started};
        int e = pthread_create(&tid[started], NULL, worker_main, &wk[started]);
        if (e) { st = g4_err_set(err, G4_ERR_HW, "bandwidth: cannot start thread %d: %s", started, strerror(e)); break; }
    }
    /* all or nothing: on a failed start the others leave without touching the barrier */
    open_gate(run, st == G4_OK ? 1 : -1);
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    free(tid); free(wk);
    pthread_mutex_destroy(&run->gate_mu); pthread_cond_destroy(&run->gate_cv);
    pthread_mutex_destroy(&run->bad_mu);

    if (st == G4_OK && run->bad)
        st = g4_err_set(err, G4_ERR_HW, "bandwidth: result check failed (%s kernels)", run->k.name);
    if (st == G4_OK) {
        memset(out, 0, sizeof *out);
        out->read_gbs = (double)bytes / run->best_read / 1e9;
        out->triad_gbs = 3.0 * (double)bytes / run->best_triad / 1e9;
        out->bytes_per_array = bytes;
        out->threads = run->nth;
        out->reps = reps;
        snprintf(out->kernel, sizeof out->kernel, "%s", run->k.name);
    }
done:
    free(run->t_read0);
    free(run->a); free(run->b); free(run->c);
    free(run);
    return st;
}
