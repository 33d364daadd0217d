/* kernels_avx2.c - 256-bit x86 kernels: AVX2 (+FMA, F16C) and AVX-VNNI.
 *
 * The kernels are written once in kernels_x86.h and instantiated here twice:
 * with vpmaddubsw + vpmaddwd as the 8-bit dot (any AVX2 CPU: Haswell, Zen),
 * and with the VEX vpdpbusd / vpdpwssd of AVX-VNNI (Alder Lake and later),
 * which fuse the multiply, the pairwise add and the accumulate. Functions
 * carry target attributes, so this file builds without -march flags; quant.c
 * only selects these tables when __builtin_cpu_supports says the CPU has them.
 */
#include "kernels.h"

/* The repacked kernels promise the references' float steps exactly: no
   contraction of a separate multiply and add into an FMA. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

/* 16 registers: 4 rows x 2 tokens of accumulators for the 32-blocks, 2 x 2
   for the K-quants (they also hold int32 partial sums per pair) */
#define RT 4
#define TT 2
#define RT_K 2
#define TT_K 2
#define HAVE_AVX512VL 0

#define TGT __attribute__((target("avx2,fma,f16c")))
#define SFX(name) name##_avx2
#define HAVE_VNNI 0
/* tokens per repacked tile; Q4_K and Q6_K went from 2 to 4 (+35% at 4
   tokens) once the running sums were kept in order (REG_BARRIER) */
#define TX32 4
#define TXK4 4
#define TXK6 4
/* Q5_0 tokens per tile: 4 tokens beat 2 by 31% (matmul_stream, 4 rows of
   activations, one core, AMD EPYC AVX2) once the sums were kept in order */
#define TXQ5 4
/* Q4_0 and Q8_0: a lone token after full tiles joins the last one (5 tokens,
   a k = 4 verification: +9% for both, matmul_stream; 4 and 9 level) */
#define X8_PLUS1 1
#define DPBUSD(acc, u, s) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define DPWSSD(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#include "kernels_x86.h"
const g4_kernels g4_kernels_avx2 = {.isa = G4_ISA_AVX2, X86_KERNEL_ENTRIES};
#undef TGT
#undef SFX
#undef DPBUSD
#undef DPWSSD
#undef HAVE_VNNI
#undef TX32
#undef TXK4
#undef TXK6

#define TGT __attribute__((target("avx2,fma,f16c,avxvnni")))
#define SFX(name) name##_avxvnni
#define HAVE_VNNI 1
#define TX32 4
#define TXK4 2
#define TXK6 1
#define DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#define DPWSSD(acc, a, b) _mm256_dpwssd_avx_epi32((acc), (a), (b))
#include "kernels_x86.h"
const g4_kernels g4_kernels_avxvnni = {.isa = G4_ISA_AVXVNNI, X86_KERNEL_ENTRIES};

#endif
