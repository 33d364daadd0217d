/* kernels_avx512.c - x86 kernels for AVX-512 (F, BW, VL) and AVX-512 VNNI.
 *
 * The same kernels as kernels_avx2.c (kernels_x86.h), instantiated with the
 * AVX-512 additions they can use: 32 vector registers (bigger register
 * tiles), mask registers for the Q5 high bits (one vmovdqu8 with a mask
 * instead of a shuffle/compare sequence), vpermw for the Q6_K scale pairs,
 * and for the VNNI table the EVEX vpdpbusd / vpdpwssd. The vectors are kept
 * 256 bits wide: a 32-element block is one ymm of int8, and on the CPUs that
 * split zmm operations in two (Zen 4) the wider form buys no throughput.
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

#define RT 4
#define TT 4
#define RT_K 2
#define TT_K 4
#define HAVE_AVX512VL 1

#define TGT __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
#define SFX(name) name##_avx512
#define HAVE_VNNI 0
#define TX32 8
#define TXK4 4
#define TXK6 4
#define DPBUSD(acc, u, s) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define DPWSSD(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#include "kernels_x86.h"
const g4_kernels g4_kernels_avx512 = {.isa = G4_ISA_AVX512, X86_KERNEL_ENTRIES};
#undef TGT
#undef SFX
#undef DPBUSD
#undef DPWSSD
#undef HAVE_VNNI
#undef TX32
#undef TXK4
#undef TXK6

#define TGT __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define SFX(name) name##_avx512vnni
#define HAVE_VNNI 1
#define TX32 8
#define TXK4 6
#define TXK6 4
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define DPWSSD(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#include "kernels_x86.h"
const g4_kernels g4_kernels_avx512vnni = {.isa = G4_ISA_AVX512VNNI, X86_KERNEL_ENTRIES};

#endif
