/* kernels_neon.c - AArch64 kernels: plain Advanced SIMD and the dotprod extension.
 *
 * The kernels are written once in kernels_arm.h and instantiated twice:
 * with the 8-bit dot of Armv8.2 dotprod (sdot, and its by-lane form for the
 * repacked weights; Cortex-A55/A76 and later, Apple M1, Graviton 2+), and
 * with smull + addp + sadalp for cores without it (Cortex-A53/A72, e.g. the
 * Raspberry Pi 4). quant.c picks one from getauxval(AT_HWCAP) (HWCAP_ASIMDDP).
 * On other architectures this file compiles to nothing. The activation
 * quantizers stay the scalar references (their cost is one pass over x).
 */
#include "kernels.h"

#if defined(__aarch64__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")   /* the references' float steps, exactly */
#endif
#include <arm_neon.h>
#include <string.h>

/* plain NEON: s8 x s8 products in int16 (|q| <= 128, |x| <= 127, so a pair
   fits), pairwise added to int32 lanes */
static inline int32x4_t dot_plain(int32x4_t acc, int8x16_t a, int8x16_t b) {
    const int16x8_t p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t p1 = vmull_high_s8(a, b);
    return vpadalq_s16(acc, vpaddq_s16(p0, p1));
}
#define LDOT_PLAIN(acc, w, x, lane) \
    dot_plain((acc), (w), vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(x), (lane))))

#define TGT
#define SFX(name) name##_neon
#define DOT(acc, a, b) dot_plain((acc), (a), (b))
#define LDOT(acc, w, x, lane) LDOT_PLAIN(acc, w, x, lane)
#include "kernels_arm.h"
const g4_kernels g4_kernels_neon = {.isa = G4_ISA_NEON, ARM_KERNEL_ENTRIES};
#undef TGT
#undef SFX
#undef DOT
#undef LDOT

#define TGT __attribute__((target("arch=armv8.2-a+dotprod")))
#define SFX(name) name##_neondot
#define DOT(acc, a, b) vdotq_s32((acc), (a), (b))
#define LDOT(acc, w, x, lane) vdotq_laneq_s32((acc), (w), (x), (lane))
#include "kernels_arm.h"
const g4_kernels g4_kernels_neondot = {.isa = G4_ISA_NEONDOT, ARM_KERNEL_ENTRIES};

#endif
