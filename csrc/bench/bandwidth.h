/* bandwidth.h - STREAM-style memory bandwidth probe.
 *
 * After McCalpin's STREAM (https://www.cs.virginia.edu/stream/): arrays far
 * larger than the last-level cache, every core busy, best of N repetitions.
 * "read" sums one array (the access pattern of LLM decode: weights streamed
 * once); "triad" is a[i] = b[i] + s*c[i], counted as 3 x 8 bytes per element
 * as STREAM counts it. GB/s = 10^9 bytes per second.
 */
#ifndef G4_BANDWIDTH_H
#define G4_BANDWIDTH_H

#include <stddef.h>
#include "../common/g4err.h"

typedef struct g4_bw_result {
    double read_gbs;
    double triad_gbs;
    size_t bytes_per_array;
    int threads;
    int reps;
    char kernel[16];    /* added: "avx512", "avx2" or "scalar" (the loops that ran) */
} g4_bw_result;

/* bytes_per_array: 0 = 4 x last-level cache (at least 64 MiB); threads <= 0: all cores.
 * Each array is rounded down to whole doubles; three arrays are allocated.
 * The default shrinks to keep the three arrays within half of the available
 * memory (never below 64 MiB). Errors: G4_ERR_INVALID (reps outside 1..1000,
 * arrays under 1 MiB, more than 4096 threads), G4_ERR_NOMEM, G4_ERR_HW
 * (a thread could not start, or a result check failed). */
g4_status g4_bandwidth_measure(size_t bytes_per_array, int threads, int reps,
                               g4_bw_result *out, g4_err *err);

#endif
