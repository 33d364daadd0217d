/* clang_compat.h - force-included (-include) when the C core is compiled by
 * clang for the fuzz builds (make fuzz, fuzz-smoke).
 *
 * csrc/quant/quant.c asks __builtin_cpu_supports("avxvnni"), which GCC 11+
 * knows but clang 14 and 16 (Debian bookworm) reject at compile time
 * ("invalid cpu feature string"). Here the builtin is replaced by a cpuid
 * reading of the same bits, so the core builds unchanged with clang.
 * Bits: Intel SDM vol. 2A, CPUID leaf 1 (ECX: FMA 12, OSXSAVE 27) and leaf 7
 * (sub-leaf 0 EBX: AVX2 5, AVX512F 16, AVX512BW 30, AVX512VL 31; ECX:
 * AVX512_VNNI 11; sub-leaf 1 EAX: AVX-VNNI 4); XCR0 says whether the OS saves
 * the YMM (bits 1-2) and ZMM (bits 5-7) state, as libgcc's checks do.
 */
#ifndef G4_FUZZ_CLANG_COMPAT_H
#define G4_FUZZ_CLANG_COMPAT_H

#if defined(__clang__) && defined(__x86_64__)
#include <cpuid.h>   /* freestanding: no libc header here, before the file's own _GNU_SOURCE */

static inline int g4fuzz_streq(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static inline int g4fuzz_cpu_supports(const char *f) {
    unsigned a, b, c, d, a7 = 0, b7 = 0, c7 = 0, d7 = 0, a71 = 0, b71, c71, d71;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    unsigned long long xcr0 = 0;
    if (c & (1u << 27)) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = (unsigned long long)hi << 32 | lo;
    }
    int ymm = (xcr0 & 0x6) == 0x6, zmm = ymm && (xcr0 & 0xe0) == 0xe0;
    __get_cpuid_count(7, 0, &a7, &b7, &c7, &d7);
    __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71);
    if (g4fuzz_streq(f, "fma")) return ymm && (c >> 12 & 1);
    if (g4fuzz_streq(f, "avx2")) return ymm && (b7 >> 5 & 1);
    if (g4fuzz_streq(f, "avxvnni")) return ymm && (a71 >> 4 & 1);
    if (g4fuzz_streq(f, "avx512f")) return zmm && (b7 >> 16 & 1);
    if (g4fuzz_streq(f, "avx512bw")) return zmm && (b7 >> 30 & 1);
    if (g4fuzz_streq(f, "avx512vl")) return zmm && (b7 >> 31 & 1);
    if (g4fuzz_streq(f, "avx512vnni")) return zmm && (c7 >> 11 & 1);
    return 0;   /* unknown here: the caller falls back to a slower path */
}

#define __builtin_cpu_supports(f) g4fuzz_cpu_supports(f)
#endif

#endif
