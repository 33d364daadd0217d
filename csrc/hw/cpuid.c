/* cpuid.c - SIMD features of the CPU running this code.
 *
 * x86: CPUID leaves 1 and 7 (Intel SDM vol. 2A, "CPUID"; AMD APM vol. 3,
 * appendix E) say what the silicon has; XGETBV(0) says which register state
 * the OS saves on context switch (XCR0). A feature counts only when both
 * agree: AVX needs XCR0 bits 1-2 (SSE, AVX), AVX-512 also bits 5-7
 * (opmask, ZMM_Hi256, Hi16_ZMM). Without the XCR0 check a VM that hides
 * AVX-512 state would still advertise it and our kernels would fault.
 *
 * Arm (aarch64): the kernel publishes features in the auxiliary vector
 * (getauxval(AT_HWCAP), linux/arch/arm64/include/uapi/asm/hwcap.h):
 * HWCAP_ASIMD is NEON, HWCAP_ASIMDDP the SDOT/UDOT dot-product instructions.
 */
#include "hw.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    /* xgetbv with ecx=0; encoded as bytes so no -mxsave is needed */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

void g4_hw_detect_simd(g4_hw_report *out) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int osxsave = (c >> 27) & 1;
    int fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    int os_avx = (xcr0 & 0x6) == 0x6;
    int os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;

    out->fma = os_avx && avx && fma;
    out->f16c = os_avx && avx && f16c;

    unsigned max_leaf = __get_cpuid_max(0, NULL);
    if (max_leaf < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    unsigned max_sub7 = a;
    out->avx2 = os_avx && ((b >> 5) & 1);
    out->avx512f = os_avx512 && ((b >> 16) & 1);
    out->avx512bw = os_avx512 && ((b >> 30) & 1);
    out->avx512vnni = os_avx512 && ((c >> 11) & 1);
    if (max_sub7 >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        out->avxvnni = os_avx && ((a >> 4) & 1);     /* AVX-VNNI (VEX encoded) */
        out->avx512bf16 = os_avx512 && ((a >> 5) & 1);
    }
}

#elif defined(__aarch64__)
#include <sys/auxv.h>

#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif

void g4_hw_detect_simd(g4_hw_report *out) {
    unsigned long hw = getauxval(AT_HWCAP);
    out->neon = (hw & HWCAP_ASIMD) != 0;
    out->dotprod = (hw & HWCAP_ASIMDDP) != 0;
}

#else
void g4_hw_detect_simd(g4_hw_report *out) { (void)out; }
#endif
