/* matmul_stream.c - GB/s of one decode-shaped matmul (one token, repacked weights) on one core.
 *
 *   make tests/c/build/libg4.a
 *   cc -O2 -Icsrc benchmarks/matmul_stream.c tests/c/build/libg4.a -lhwloc -lopenblas -lm -lpthread \
 *      -o /tmp/matmul_stream
 *   /tmp/matmul_stream TYPE ROWS REPS [TOKENS] [plain]   # TYPE: ggml type id (2 Q4_0, 6 Q5_0,
 *        # 8 Q8_0, 12 Q4_K, 14 Q6_K); TOKENS activation rows (default 1, decode; 8: a prefill
 *        # batch, GB/s then counts the weights once); plain: GGUF row order, the plain kernel
 *
 * Decode streams every weight once per token, so its speed per core is how fast a kernel pulls
 * repacked weights from DRAM: this measures exactly that, for a ROWS x 2048 matrix of random
 * weights (make ROWS large enough that the matrix is several times the last-level cache; 200000
 * rows of Q4_0 are 230 MB), laid out by g4_repack in 2 MiB-aligned memory with MADV_HUGEPAGE as
 * the model's arena is (csrc/model/ops.c), multiplied by one quantized activation row with the
 * active ISA (GEMMA4STACK_ISA to force one). Prints bytes of weights read per second (1e9 B/s; and
 * per second of this thread's CPU time, which a descheduling on a shared machine does not inflate),
 * and how fast one thread repacked them (g4_repack, CPU time, page faults of the copy included), the
 * cost a model pays once at load. The first is to be set beside the bandwidth probe's one-thread read figure
 * (python -c "from gemma4stack import hardware; print(hardware.measure_bandwidth(threads=1))").
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "quant/quant.h"

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }

/* n bytes on a 2 MiB boundary, huge pages asked for (a hint) */
static uint8_t *alloc_huge(size_t n) {
    const size_t huge = (size_t)2 << 20;
    uint8_t *p = mmap(NULL, n + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    p = (uint8_t *)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
#ifdef MADV_HUGEPAGE
    madvise(p, n, MADV_HUGEPAGE);
#endif
    return p;
}

int main(int argc, char **argv) {
    int plain = 0, nt = 1;
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "plain")) plain = 1;
        else nt = atoi(argv[i]);
    }
    if (argc < 4 || argc > 6 || nt < 1 || nt > 64) {
        fprintf(stderr, "usage: %s TYPE ROWS REPS [TOKENS 1..64] [plain]\n", argv[0]);
        return 2;
    }
    const uint32_t type = (uint32_t)atoi(argv[1]);
    const int64_t cols = 2048, rows = atoll(argv[2]);
    const int reps = atoi(argv[3]);
    if (rows <= 0 || rows % G4_REPACK_ROWS || reps <= 0 || (!plain && !g4_repack_supported(type, rows, cols)) ||
        !g4_row_size(type, cols)) {
        fprintf(stderr, "type %u with %lld rows cannot be repacked (rows must be a multiple of %d)\n",
                type, (long long)rows, G4_REPACK_ROWS);
        return 2;
    }
    const size_t rs = g4_row_size(type, cols), bytes = rs * (size_t)rows;
    uint8_t *W = malloc(bytes), *Wp = alloc_huge(bytes);
    float *row = malloc(sizeof(float) * cols), *Y = malloc(sizeof(float) * rows * nt);
    const size_t as = g4_act_row_size(type, cols);
    uint8_t *xa = aligned_alloc(64, as * nt);
    if (!W || !Wp || !row || !Y || !xa) {
        fprintf(stderr, "out of memory for %zu bytes of weights\n", bytes);
        return 1;
    }
    srand(1);
    for (int64_t r = 0; r < rows; r++) {   /* quantized from random floats: valid scales */
        for (int64_t i = 0; i < cols; i++) row[i] = (float)(rand() % 200 - 100) / 50.0f;
        g4_quantize_row(type, row, W + (size_t)r * rs, cols);
    }
    /* this thread's CPU time, not wall time: on a shared machine the repack is short enough for
       a descheduling to double it; the first touch of Wp (the kernel zeroing pages) is included */
    const double r0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    if (plain) memcpy(Wp, W, bytes);
    else g4_repack(type, W, rows, cols, Wp);
    const double repack_s = clock_s(CLOCK_THREAD_CPUTIME_ID) - r0;
    free(W);
    for (int t = 0; t < nt; t++) {
        for (int64_t i = 0; i < cols; i++) row[i] = (float)(rand() % 200 - 100) / 50.0f;
        g4_quantize_act(type, row, cols, xa + (size_t)t * as);
    }

    double t0 = 0, c0 = 0;
    for (int i = -1; i < reps; i++) {   /* i = -1: warm-up (page faults) */
        if (i == 0) t0 = now(), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
        if (plain) g4_matmul_rows_vq(type, Wp, cols, xa, as, nt, Y, rows, 0, rows);
        else g4_matmul_rows_x8(type, Wp, cols, xa, as, nt, Y, rows, 0, rows);
    }
    const double dt = now() - t0, dc = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    printf("%s type %u%s, %d token(s), %lld x %lld, %.1f MB: %.2f GB/s (%.1f us per matmul; per CPU second "
           "%.2f GB/s); %s %.2f GB/s\n",
           g4_isa_name(g4_isa_active()), type, plain ? " plain" : "", nt, (long long)rows, (long long)cols,
           bytes / 1e6, bytes * (double)reps / dt / 1e9, dt / reps * 1e6, bytes * (double)reps / dc / 1e9,
           plain ? "copy" : "repack", bytes / repack_s / 1e9);
    return 0;
}
