/* kernels.h - the per-ISA kernel table (internal to csrc/quant/).
 *
 * Each ISA file (kernels_avx2.c, kernels_avx512.c, kernels_neon.c) defines
 * one or two g4_kernels tables; quant.c picks one at run time and falls back
 * to the scalar table (kernels_scalar in quant.c) for any NULL entry. The ISA
 * files are compiled with the same flags as everything else (setup.py has one
 * set of flags for all of csrc/): every function in them carries its own
 * __attribute__((target(...))), and a file for another architecture compiles
 * to nothing, so only dispatch decides what runs.
 */
#ifndef G4_QUANT_KERNELS_H
#define G4_QUANT_KERNELS_H

#include "quant.h"

/* y[t * ldy + r] = dot(weight row r, activation row t) for r < nr, t < nt.
 * Weight row r starts at w + r * w_stride, activation row t at x + t * x_stride
 * (in the weight type's vec_dot_type layout); n = columns. */
typedef void (*g4_gemm_fn)(int64_t n, const uint8_t *w, size_t w_stride, int64_t nr,
                           const uint8_t *x, size_t x_stride, int64_t nt, float *y, int64_t ldy);

typedef struct g4_kernels {
    int isa;                                   /* g4_isa */
    /* activation quantizers; must be bit-identical to the references */
    void (*quantize_q8_0)(const float *x, block_q8_0 *y, int64_t n);
    void (*quantize_q8_K)(const float *x, block_q8_K *y, int64_t n);
    g4_gemm_fn gemm[G4_TYPE_COUNT];            /* by weight type */
    /* repacked weights (repack.c): w = the first group of 8 rows, w_stride =
       bytes per group, nr a multiple of 8, x rows from g4_quantize_act */
    g4_gemm_fn gemm_x8[G4_TYPE_COUNT];
    float (*dot_f32)(int64_t n, const float *a, const float *b);
    float (*dot_f16_f32)(int64_t n, const g4_fp16 *a, const float *b);
    void (*axpy_f16)(int64_t n, float a, const g4_fp16 *x, float *y);
    void (*axpy_f32)(int64_t n, float a, const float *x, float *y);
    void (*dot_f16_rows)(int64_t n, int64_t dim, const g4_fp16 *K, int64_t ldk, const float *q, float *out);
    void (*wsum_f16_rows)(int64_t n, int64_t dim, const g4_fp16 *V, int64_t ldv, const float *w, float *out);
    void (*dot_f32_rows)(int64_t n, int64_t dim, const float *K, int64_t ldk, const float *q, float *out);
    void (*wsum_f32_rows)(int64_t n, int64_t dim, const float *V, int64_t ldv, const float *w, float *out);
    void (*fp32_to_fp16)(const float *x, g4_fp16 *y, int64_t n);
    void (*fp16_to_fp32)(const g4_fp16 *x, float *y, int64_t n);
} g4_kernels;

#if defined(__x86_64__)
extern const g4_kernels g4_kernels_avx2, g4_kernels_avxvnni, g4_kernels_avx512, g4_kernels_avx512vnni;
#endif
#if defined(__aarch64__)
extern const g4_kernels g4_kernels_neon, g4_kernels_neondot;
#endif

/* Partial reference dots continuing from `acc` over nb blocks (quant_ref.c),
 * so a row can be computed in chunks with the reference's float order. */
float g4_ref_dot_q8_0_q8_0_acc(float acc, int64_t nb, const block_q8_0 *w, const block_q8_0 *x);
float g4_ref_dot_q4_0_q8_0_acc(float acc, int64_t nb, const block_q4_0 *w, const block_q8_0 *x);
float g4_ref_dot_q4_1_q8_1_acc(float acc, int64_t nb, const block_q4_1 *w, const block_q8_1 *x);
float g4_ref_dot_q5_0_q8_0_acc(float acc, int64_t nb, const block_q5_0 *w, const block_q8_0 *x);
float g4_ref_dot_q5_1_q8_1_acc(float acc, int64_t nb, const block_q5_1 *w, const block_q8_1 *x);
float g4_ref_dot_q4_K_q8_K_acc(float acc, int64_t nb, const block_q4_K *w, const block_q8_K *x);
float g4_ref_dot_q5_K_q8_K_acc(float acc, int64_t nb, const block_q5_K *w, const block_q8_K *x);
float g4_ref_dot_q6_K_q8_K_acc(float acc, int64_t nb, const block_q6_K *w, const block_q8_K *x);

/* Q2_K, Q3_K and the 256-element i-quants (quant_kq.c): one decoder per type
 * into g4_kq_block, and the generic gemm over decoded blocks. An ISA supplies
 * only the integer part of the block dot (`dot`: the exact sumi, and summ, as
 * g4_kq_dot_ref), so every ISA gives the reference's floats bit for bit. */
typedef void (*g4_kq_decode_fn)(const uint8_t *block, g4_kq_block *out);
typedef int32_t (*g4_kq_dot_fn)(const g4_kq_block *k, const block_q8_K *x, int32_t *summ);
g4_kq_decode_fn g4_kq_decoder(uint32_t type);   /* NULL for other types */
int32_t g4_kq_dot_ref(const g4_kq_block *k, const block_q8_K *x, int32_t *summ);
float g4_kq_block_finish(float acc, const g4_kq_block *k, float dx, int32_t sumi, int32_t summ);
float g4_ref_dot_kq_acc(uint32_t type, float acc, int64_t nb, const void *w, const block_q8_K *x);
void g4_gemm_kq(uint32_t type, g4_kq_decode_fn dec, g4_kq_dot_fn dot, int64_t n, const uint8_t *w, size_t ws,
                int64_t nr, const uint8_t *x, size_t xs, int64_t nt, float *y, int64_t ldy);
float g4_ref_dot_iq4_nl_q8_0_acc(float acc, int64_t nb, const block_iq4_nl *w, const block_q8_0 *x);
const int8_t *g4_iq4nl_values(void);   /* kvalues_iq4nl[16] */
/* The i-quant tables of iq_tables.h, for the vector decoders (one copy, in quant_kq.c). */
typedef struct g4_iq_tables {
    const uint64_t *iq2xxs, *iq2xs, *iq2s, *iq1s;
    const uint32_t *iq3xxs, *iq3s;
    const uint8_t *ksigns;
} g4_iq_tables;
extern const g4_iq_tables g4_iq_grids;

/* gemm entries for the kq types from an ISA's integer block dot */
#define KQ_GEMM_WRAP(isa, dotfn, name, TYPE)                                                         \
    static void gemm_##name##_##isa(int64_t n, const uint8_t *w, size_t ws, int64_t nr,              \
                                    const uint8_t *x, size_t xs, int64_t nt, float *y, int64_t ldy) { \
        g4_gemm_kq(TYPE, g4_kq_decoder(TYPE), dotfn, n, w, ws, nr, x, xs, nt, y, ldy);               \
    }
#define KQ_GEMM_ALL(isa, dotfn)                                                                      \
    KQ_GEMM_WRAP(isa, dotfn, q2_K, G4_TYPE_Q2_K) KQ_GEMM_WRAP(isa, dotfn, q3_K, G4_TYPE_Q3_K)         \
    KQ_GEMM_WRAP(isa, dotfn, iq4_xs, G4_TYPE_IQ4_XS) KQ_GEMM_WRAP(isa, dotfn, iq3_xxs, G4_TYPE_IQ3_XXS) \
    KQ_GEMM_WRAP(isa, dotfn, iq3_s, G4_TYPE_IQ3_S) KQ_GEMM_WRAP(isa, dotfn, iq2_xxs, G4_TYPE_IQ2_XXS) \
    KQ_GEMM_WRAP(isa, dotfn, iq2_xs, G4_TYPE_IQ2_XS) KQ_GEMM_WRAP(isa, dotfn, iq2_s, G4_TYPE_IQ2_S)   \
    KQ_GEMM_WRAP(isa, dotfn, iq1_s, G4_TYPE_IQ1_S) KQ_GEMM_WRAP(isa, dotfn, iq1_m, G4_TYPE_IQ1_M)
#define KQ_GEMM_ENTRIES(isa)                                                                         \
    [G4_TYPE_Q2_K] = gemm_q2_K_##isa, [G4_TYPE_Q3_K] = gemm_q3_K_##isa,                              \
    [G4_TYPE_IQ4_XS] = gemm_iq4_xs_##isa, [G4_TYPE_IQ3_XXS] = gemm_iq3_xxs_##isa,                    \
    [G4_TYPE_IQ3_S] = gemm_iq3_s_##isa, [G4_TYPE_IQ2_XXS] = gemm_iq2_xxs_##isa,                      \
    [G4_TYPE_IQ2_XS] = gemm_iq2_xs_##isa, [G4_TYPE_IQ2_S] = gemm_iq2_s_##isa,                        \
    [G4_TYPE_IQ1_S] = gemm_iq1_s_##isa, [G4_TYPE_IQ1_M] = gemm_iq1_m_##isa

/* The scalar kernel for repacked weights (repack.c). */
void g4_gemm_x8_scalar(uint32_t type, int64_t n, const uint8_t *w, int64_t nr,
                       const uint8_t *x, size_t xs, int64_t nt, float *y, int64_t ldy);

#endif
