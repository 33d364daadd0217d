/* quant.h - tensor element types and their block formats.
 *
 * Type ids and block layouts are ggml's (ggml/include/ggml.h enum ggml_type,
 * ggml/src/ggml-common.h block_* structs), so GGUF files from llama.cpp,
 * Ollama and Unsloth load unchanged. A row of n elements of a block type
 * occupies n / blck_size * type_size bytes; n must be a multiple of blck_size.
 *
 * Each kernel has a plain scalar reference (the test oracle); vectorized
 * paths are selected at run time (see g4_quant_set_isa): kernels_avx2.c
 * (AVX2, AVX-VNNI), kernels_avx512.c (AVX-512, AVX-512 VNNI), kernels_neon.c
 * (NEON, NEON dotprod), with weights optionally repacked 8 rows at a time
 * (repack.c) for the fastest form of each.
 */
#ifndef G4_QUANT_H
#define G4_QUANT_H

#include <stddef.h>
#include <stdint.h>

typedef enum g4_type {
    G4_TYPE_F32 = 0, G4_TYPE_F16 = 1, G4_TYPE_Q4_0 = 2, G4_TYPE_Q4_1 = 3,
    G4_TYPE_Q5_0 = 6, G4_TYPE_Q5_1 = 7, G4_TYPE_Q8_0 = 8, G4_TYPE_Q8_1 = 9,
    G4_TYPE_Q2_K = 10, G4_TYPE_Q3_K = 11, G4_TYPE_Q4_K = 12, G4_TYPE_Q5_K = 13,
    G4_TYPE_Q6_K = 14, G4_TYPE_Q8_K = 15, G4_TYPE_I8 = 24, G4_TYPE_I16 = 25,
    G4_TYPE_I32 = 26, G4_TYPE_I64 = 27, G4_TYPE_F64 = 28, G4_TYPE_BF16 = 30,
    /* The i-quants (compute support), then types known to the table (names,
       block sizes) without compute support: ternary and fp4 formats. */
    G4_TYPE_IQ2_XXS = 16, G4_TYPE_IQ2_XS = 17, G4_TYPE_IQ3_XXS = 18, G4_TYPE_IQ1_S = 19,
    G4_TYPE_IQ4_NL = 20, G4_TYPE_IQ3_S = 21, G4_TYPE_IQ2_S = 22, G4_TYPE_IQ4_XS = 23,
    G4_TYPE_IQ1_M = 29, G4_TYPE_TQ1_0 = 34, G4_TYPE_TQ2_0 = 35, G4_TYPE_MXFP4 = 39,
    G4_TYPE_NVFP4 = 40, G4_TYPE_Q1_0 = 41,
    G4_TYPE_COUNT = 42,      /* one past the largest id (ggml's GGML_TYPE_COUNT) */
} g4_type;

typedef uint16_t g4_fp16;   /* IEEE 754 half, raw bits */
typedef uint16_t g4_bf16;   /* bfloat16, raw bits */

#define QK4_0 32
typedef struct { g4_fp16 d; uint8_t qs[QK4_0 / 2]; } block_q4_0;   /* 18 bytes */
#define QK8_0 32
typedef struct { g4_fp16 d; int8_t qs[QK8_0]; } block_q8_0;         /* 34 bytes */
/* x ~= d * q + m, q in [0,15]; byte j: element j (low nibble), j + 16 (high). */
#define QK4_1 32
typedef struct { g4_fp16 d; g4_fp16 m; uint8_t qs[QK4_1 / 2]; } block_q4_1;   /* 20 bytes */
/* x ~= d * (q - 16), q in [0,31]: low 4 bits as Q4_0, bit 4 of element j is
   bit j of the little-endian uint32 qh. Q5_1: x ~= d * q + m. */
#define QK5_0 32
typedef struct { g4_fp16 d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;   /* 22 bytes */
#define QK5_1 32
typedef struct { g4_fp16 d; g4_fp16 m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;   /* 24 bytes */
/* The activation type for Q4_1/Q5_1 weights: Q8_0 plus s = d * sum(qs)
   (rounded to fp16 from the fp32 d, as quantize_row_q8_1_ref does). */
#define QK8_1 32
typedef struct { g4_fp16 d; g4_fp16 s; int8_t qs[QK8_1]; } block_q8_1;   /* 36 bytes */

/* K-quants: super-blocks of QK_K = 256 (ggml-common.h; llama.cpp PR #1684).
 * Q4_K/Q5_K: 8 sub-blocks of 32, x ~= d * sc[j] * q - dmin * m[j], with the
 * 6-bit sc/m packed in 12 bytes (see g4_q4_K_scales). qs byte l of 32-byte
 * chunk c holds element 64c + l (low nibble) and 64c + 32 + l (high nibble).
 * Q5_K adds bit 4 of element 64c + l in bit 2c of qh[l], of 64c + 32 + l in
 * bit 2c + 1. Q6_K: 16 sub-blocks of 16 with int8 scales, x ~= d * sc * (q - 32);
 * in each 128-element half, ql byte l (l < 64) holds element l (low nibble)
 * and l + 64 (high), and qh byte l (l < 32) bits 2k..2k+1 the top two bits of
 * element l + 32k. */
#define QK_K 256
#define K_SCALE_SIZE 12
typedef struct { g4_fp16 d; g4_fp16 dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_K;   /* 144 */
typedef struct { g4_fp16 d; g4_fp16 dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8];
                 uint8_t qs[QK_K / 2]; } block_q5_K;                                                        /* 176 */
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; g4_fp16 d; } block_q6_K;  /* 210 */
/* The activation type for K-quant weights: fp32 d, 256 int8 and the sum of
   each 16 of them (bsums), so the weights' offsets (mins, -32) cost one
   small dot per block instead of one per element. */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;                       /* 292 */

/* Q2_K: 16 sub-blocks of 16, x ~= d * (scales[s] & 15) * q - dmin * (scales[s] >> 4),
 * q in [0,3]; qs byte l of 32-byte chunk h (0..1) holds element 128h + 32k + l in
 * bits 2k..2k+1. Q3_K: x ~= d * (sc[s] - 32) * q, q in [-4,3] = its 2 low bits (as
 * Q2_K's) minus 4 unless bit (element / 32) of hmask[element % 32] is set; the 16
 * 6-bit scales: low nibbles in scales[0..7] (s < 8: low nibble of byte s, else high
 * nibble of byte s - 8), top 2 bits in bits 2k..2k+1 of scales[8 + s % 4], k = s / 4.
 * (ggml-common.h block_q2_K / block_q3_K; gguf-py quants.py Q2_K / Q3_K.) */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; g4_fp16 d; g4_fp16 dmin; } block_q2_K;   /* 84 */
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; g4_fp16 d; } block_q3_K; /* 110 */

/* The i-quants (ggml-common.h block_iq*; tables in iq_tables.h). All use
 * super-blocks of 256 except IQ4_NL (32). Byte layouts, little endian:
 *   IQ4_NL  d, qs[16]: x = d * kvalues_iq4nl[nibble]; byte j = elements j (low), j + 16
 *   IQ4_XS  d, u16 scales_h, scales_l[4], qs[128]: 8 sub-blocks of 32 as IQ4_NL with
 *           scale d * (ls - 32), ls = 4 bits of scales_l + 2 bits of scales_h
 *   IQ2_XXS d, qs[64]: per 32: u32 of 4 grid indices (iq2xxs_grid), u32 of 4 x 7 sign
 *           bits (ksigns_iq2xs) + 4-bit scale ls (bits 28..31): x = d (ls + 1/2) / 4 * g
 *   IQ2_XS  d, u16 qs[32] (9-bit iq2xs_grid index + 7 sign bits), scales[8] (nibble
 *           per 16 elements): x = d (ls + 1/2) / 4 * g
 *   IQ2_S   d, qs[32] (low 8 index bits), signs[32] (one bit per element), qh[8]
 *           (2 high index bits each), scales[8]: as IQ2_XS over iq2s_grid
 *   IQ3_XXS d, qs[64] (iq3xxs_grid indices, 4 elements each), u32[8] (4 x 7 sign bits
 *           + 4-bit ls per 32): x = d (ls + 1/2) / 2 * g
 *   IQ3_S   d, qs[64], qh[8] (9th index bit), signs[32], scales[4] (nibble per 32):
 *           x = d (2 ls + 1) * g over iq3s_grid
 *   IQ1_S   d, qs[32], u16 qh[8]: per 32, qh bits 0..11 the 4 high index bits of 8
 *           elements each (iq1s_grid), 12..14 ls, 15 the delta's sign:
 *           x = d (2 ls + 1) (g +- 1/8)
 *   IQ1_M   qs[32], qh[16] (a nibble per 8: 3 index bits + delta sign), u16 scales[4]
 *           (3-bit ls per 16 elements; the fp16 d in their top nibbles) */
#define QK4_NL 32
typedef struct { g4_fp16 d; uint8_t qs[QK4_NL / 2]; } block_iq4_nl;                                     /* 18 */
typedef struct { g4_fp16 d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; } block_iq4_xs; /* 136 */
typedef struct { g4_fp16 d; uint16_t qs[QK_K / 8]; } block_iq2_xxs;                                    /* 66 */
typedef struct { g4_fp16 d; uint16_t qs[QK_K / 8]; uint8_t scales[QK_K / 32]; } block_iq2_xs;          /* 74 */
typedef struct { g4_fp16 d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t scales[QK_K / 32]; } block_iq2_s; /* 82 */
typedef struct { g4_fp16 d; uint8_t qs[3 * QK_K / 8]; } block_iq3_xxs;                                 /* 98 */
typedef struct { g4_fp16 d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t signs[QK_K / 8];
                 uint8_t scales[QK_K / 64]; } block_iq3_s;                                              /* 110 */
typedef struct { g4_fp16 d; uint8_t qs[QK_K / 8]; uint16_t qh[QK_K / 32]; } block_iq1_s;               /* 50 */
typedef struct { uint8_t qs[QK_K / 8]; uint8_t qh[QK_K / 16]; uint8_t scales[QK_K / 32]; } block_iq1_m;  /* 56 */

/* A block of Q2_K, Q3_K or an i-quant of 256 decoded to integers (quant_kq.c):
 * element j is d * sc[j / 16] * q[j] - dmin * mn[j / 16], exactly the float the
 * format defines when evaluated in that order. The constant factors of the
 * formats are folded in so everything stays integer: the i-quants' (ls + 1/2) / 4
 * becomes sc = 2 ls + 1 with d = d / 8, IQ1's g +- 1/8 becomes q = 8 g +- 1 with d / 8
 * (powers of two, so the products round exactly as the format's). Against Q8_K
 * activations a block's dot is then
 *   d * d_x * sum_g sc[g] * sum(q * x) - dmin * d_x * sum_g mn[g] * bsums[g]. */
typedef struct { float d, dmin; int16_t sc[QK_K / 16]; int16_t mn[QK_K / 16]; int8_t q[QK_K]; } g4_kq_block;
/* Decode one block of `type` (1), or return 0 for a type not decoded this way. */
int g4_kq_decode(uint32_t type, const void *block, g4_kq_block *out);

/* Name as ggml spells it ("Q4_0", "F32", ...), or NULL for an unknown id. */
const char *g4_type_name(uint32_t type);
/* 1 when this build can compute with `type` (dequantize and dot). */
int g4_type_supported(uint32_t type);
/* Elements per block (1 for float types) and bytes per block; 0 if unknown. */
size_t g4_blck_size(uint32_t type);
size_t g4_type_size(uint32_t type);
/* Bytes of a row of n elements; 0 when unknown type or n % blck_size != 0. */
size_t g4_row_size(uint32_t type, int64_t n);

float g4_fp16_to_fp32(g4_fp16 h);
g4_fp16 g4_fp32_to_fp16(float f);         /* round to nearest even */
float g4_bf16_to_fp32(g4_bf16 h);
g4_bf16 g4_fp32_to_bf16(float f);         /* round to nearest even */

/* Dequantize n elements of `type` at src into dst (float32). For a type
 * without compute support (g4_type_supported() == 0) dst is filled with NaN,
 * so a missed check shows up loudly instead of as plausible numbers. */
void g4_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);
/* Quantize n float32 values into `type` (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q8_1,
 * Q8_K, F16, BF16, F32); reference rounding as in ggml-quants.c
 * quantize_row_*_ref, bit-identical on every ISA. Returns 0 for a target type
 * without a quantizer (the K-quant weight types among them). */
int g4_quantize_row(uint32_t type, const float *src, void *dst, int64_t n);

/* y[r] = dot(W row r, x) for r in [r0, r1): W has `cols` columns of `type`,
 * rows stored contiguously (row stride g4_row_size(type, cols) bytes);
 * x is float32[cols], y float32[rows]. Scalar reference. */
void g4_matvec_rows(uint32_t type, const void *W, int64_t cols,
                    const float *x, float *y, int64_t r0, int64_t r1);

/* ---- dot products as llama.cpp computes them --------------------------------
 * ggml does not dot a quantized weight row with float activations: each weight
 * type has a "vec_dot_type" the activation row is converted to first
 * (ggml-cpu.c type_traits_cpu[].vec_dot_type). For Q4_0 and Q8_0 weights that
 * is Q8_0: x is quantized to Q8_0 blocks once, then every row is an integer
 * dot per 32-block scaled by d_w * d_x (ggml_vec_dot_q4_0_q8_0 /
 * ggml_vec_dot_q8_0_q8_0). We follow that, so our logits drift from an fp32
 * reference exactly as llama.cpp's do. Activation quantization uses the
 * reference rounding (quantize_row_q8_0_ref: roundf, i.e. half away from
 * zero); llama.cpp's AVX path rounds half to even, which differs only when
 * x*127/amax lands exactly on .5.
 * For F32/F16/BF16 weights x stays float32 (llama.cpp rounds x to F16/BF16
 * for those; keeping fp32 is at least as accurate); the reference sums in
 * double, the vector kernels in float (F32 prefill: OpenBLAS sgemm).
 *
 * Q5_0 pairs with Q8_0 too, Q4_1/Q5_1 with Q8_1, the K-quants with Q8_K.
 *
 * Callers that run many row ranges over the same x (threads splitting rows)
 * convert x once with g4_quantize_row(g4_vec_dot_type(type), ...) and call
 * g4_matvec_rows_vq (or g4_matmul_rows_vq for a batch of tokens), which use
 * the vectorized kernels of the active ISA; g4_matvec_rows is the scalar
 * reference and does the conversion itself on each call (in chunks on the
 * stack, no allocation). With the scalar ISA active both give bit-identical
 * results; otherwise they differ by float rounding only (see below). */

/* The type x must be in for g4_matvec_rows_vq / vec_dot with `type` weights:
 * G4_TYPE_Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL, G4_TYPE_Q8_1 for Q4_1/Q5_1, G4_TYPE_Q8_K
 * for Q2_K..Q6_K and the 256-element i-quants, G4_TYPE_F32 for F32/F16/BF16, or G4_TYPE_COUNT when
 * `type` has no compute support. */
uint32_t g4_vec_dot_type(uint32_t type);

/* Like g4_matvec_rows, with x already in g4_vec_dot_type(type) layout
 * (g4_row_size(g4_vec_dot_type(type), cols) bytes), on the active ISA
 * (g4_matmul_rows_vq with one token). */
void g4_matvec_rows_vq(uint32_t type, const void *W, int64_t cols,
                       const void *xq, float *y, int64_t r0, int64_t r1);

/* Scalar reference kernels; n is a multiple of 32 for the block types. */
void g4_quantize_row_q8_0(const float *x, block_q8_0 *y, int64_t n);
void g4_quantize_row_q4_0(const float *x, block_q4_0 *y, int64_t n);
void g4_dequantize_row_q8_0(const block_q8_0 *x, float *y, int64_t n);
void g4_dequantize_row_q4_0(const block_q4_0 *x, float *y, int64_t n);
float g4_vec_dot_q8_0_q8_0(int64_t n, const block_q8_0 *w, const block_q8_0 *x);
float g4_vec_dot_q4_0_q8_0(int64_t n, const block_q4_0 *w, const block_q8_0 *x);
float g4_vec_dot_f32(int64_t n, const float *w, const float *x);
float g4_vec_dot_f16_f32(int64_t n, const g4_fp16 *w, const float *x);
float g4_vec_dot_bf16_f32(int64_t n, const g4_bf16 *w, const float *x);

/* References for the other block types (quant_ref.c). Quantizers as
 * ggml-quants.c quantize_row_*_ref; Q8_K rounds half to even (nearest_int)
 * and maps the element of largest magnitude to -127 (iscale = -127 / max).
 * Dequantizers as dequantize_row_*. Dots: an exact int32 sum per block, then
 * float scaling and a sequential float sum over blocks:
 *   Q4_1.Q8_1, Q5_1.Q8_1: acc += sumi * (d_w * d_x) + m_w * s_x
 *   Q5_0.Q8_0: as Q4_0 with q - 16
 *   Q4_K/Q5_K.Q8_K: sumi = sum_j sc_j * sum(q * x), summ = sum_j m_j * bsum_j;
 *                   acc += (d_w * d_x) * sumi; acc -= (dmin_w * d_x) * summ
 *   Q6_K.Q8_K: sumi = sum_s sc_s * sum((q - 32) * x); acc += (d_w * d_x) * sumi */
void g4_quantize_row_q4_1(const float *x, block_q4_1 *y, int64_t n);
void g4_quantize_row_q5_0(const float *x, block_q5_0 *y, int64_t n);
void g4_quantize_row_q5_1(const float *x, block_q5_1 *y, int64_t n);
void g4_quantize_row_q8_1(const float *x, block_q8_1 *y, int64_t n);
void g4_quantize_row_q8_K(const float *x, block_q8_K *y, int64_t n);
void g4_dequantize_row_q4_1(const block_q4_1 *x, float *y, int64_t n);
void g4_dequantize_row_q5_0(const block_q5_0 *x, float *y, int64_t n);
void g4_dequantize_row_q5_1(const block_q5_1 *x, float *y, int64_t n);
void g4_dequantize_row_q8_1(const block_q8_1 *x, float *y, int64_t n);
void g4_dequantize_row_q4_K(const block_q4_K *x, float *y, int64_t n);
void g4_dequantize_row_q5_K(const block_q5_K *x, float *y, int64_t n);
void g4_dequantize_row_q6_K(const block_q6_K *x, float *y, int64_t n);
void g4_dequantize_row_q8_K(const block_q8_K *x, float *y, int64_t n);
float g4_vec_dot_q4_1_q8_1(int64_t n, const block_q4_1 *w, const block_q8_1 *x);
float g4_vec_dot_q5_0_q8_0(int64_t n, const block_q5_0 *w, const block_q8_0 *x);
float g4_vec_dot_q5_1_q8_1(int64_t n, const block_q5_1 *w, const block_q8_1 *x);
float g4_vec_dot_q4_K_q8_K(int64_t n, const block_q4_K *w, const block_q8_K *x);
float g4_vec_dot_q5_K_q8_K(int64_t n, const block_q5_K *w, const block_q8_K *x);
float g4_vec_dot_q6_K_q8_K(int64_t n, const block_q6_K *w, const block_q8_K *x);

/* Q2_K, Q3_K, IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M
 * (`type`; quant_kq.c): dequantize via g4_kq_block, and the reference dot with
 * Q8_K activations, per block acc += (d_w * d_x) * sumi, then, when the block
 * has mins (Q2_K), acc -= (dmin_w * d_x) * summ (see g4_kq_block).
 * IQ4_NL pairs with Q8_0 like Q4_0, with kvalues_iq4nl[q] for q - 8. */
void g4_dequantize_row_kq(uint32_t type, const void *src, float *dst, int64_t n);
float g4_vec_dot_kq_q8_K(uint32_t type, int64_t n, const void *w, const block_q8_K *x);
void g4_dequantize_row_iq4_nl(const block_iq4_nl *x, float *y, int64_t n);
float g4_vec_dot_iq4_nl_q8_0(int64_t n, const block_iq4_nl *w, const block_q8_0 *x);

/* The 8 6-bit scales and 8 6-bit mins of a Q4_K/Q5_K block, unpacked from
 * its 12 scale bytes (ggml-quants.c get_scale_min_k4). */
void g4_q4_K_scales(const uint8_t packed[K_SCALE_SIZE], uint8_t sc[8], uint8_t m[8]);

/* 1 when g4_quantize_row / g4_dequantize_row handle `type` (the compute
 * types plus the activation types Q8_1 and Q8_K, which are not weights). */
int g4_type_can_quantize(uint32_t type);
int g4_type_can_dequantize(uint32_t type);

/* ---- vectorized kernels, chosen at run time -----------------------------------
 * Every kernel has a scalar reference above; the vectorized paths compute the
 * same exact int32 per block (activations are quantized bit-identically on
 * every ISA) and differ from the reference only in the order of the float
 * scalings and additions. An ISA is used when this build has it and the CPU
 * reports it (__builtin_cpu_supports on x86, getauxval(AT_HWCAP) on Arm).
 * The environment variable GEMMA4STACK_ISA=<name> forces one at the first
 * kernel call; an unknown or unavailable name prints a warning on stderr and
 * the best available ISA is used instead. */
typedef enum g4_isa {
    G4_ISA_SCALAR = 0,      /* the references */
    G4_ISA_AVX2 = 1,        /* AVX2 + FMA + F16C: maddubs/madd */
    G4_ISA_AVXVNNI = 2,     /* AVX2 + AVX-VNNI (VEX vpdpbusd), 256-bit */
    G4_ISA_AVX512 = 3,      /* AVX-512 F/BW/VL: maddubs/madd, mask registers */
    G4_ISA_AVX512VNNI = 4,  /* AVX-512 + VNNI (EVEX vpdpbusd) */
    G4_ISA_NEON = 5,        /* AArch64 Advanced SIMD: smull/sadalp */
    G4_ISA_NEONDOT = 6,     /* AArch64 + dotprod (sdot) */
    G4_ISA_COUNT = 7,
} g4_isa;

const char *g4_isa_name(int isa);              /* "scalar", "avx2", ...; NULL if out of range */
int g4_isa_from_name(const char *name);        /* -1 for an unknown name */
int g4_isa_available(int isa);                 /* compiled in and supported by this CPU */
int g4_isa_best(void);                         /* the fastest available */
int g4_isa_active(void);                       /* the one in use */
/* Use `isa` from now on (tests, comparisons). Returns 0 and changes nothing
 * when it is not available. Not synchronized with kernels running on other
 * threads: switch between matmuls. */
int g4_quant_set_isa(int isa);

/* Y[t * ldy + r] = dot(W row r, activation row t) for r in [r0, r1) and
 * t in [0, nt), with the active ISA. xq holds nt activation rows in
 * g4_vec_dot_type(type) layout, x_stride bytes apart (at least
 * g4_row_size(g4_vec_dot_type(type), cols)). Tiled over rows and tokens so a
 * weight block is loaded once per tile of tokens (prefill) and an activation
 * block once per tile of rows (decode). */
void g4_matmul_rows_vq(uint32_t type, const void *W, int64_t cols, const void *xq, size_t x_stride,
                       int64_t nt, float *Y, int64_t ldy, int64_t r0, int64_t r1);

/* ---- weights repacked for the vectorized kernels ----------------------------
 * A weight matrix can be rearranged once at load into groups of 8 rows
 * interleaved 4 bytes at a time (repack.c explains the layouts), as llama.cpp
 * repacks Q4_0/Q4_K for its CPU kernels: each row's dot then accumulates in
 * its own vector lane and a block's 8 scales are one load. Same size as the
 * original. Supported: Q4_0, Q8_0, Q4_K, Q6_K with at least 8 rows; the
 * rows past the last full group of 8 (rows % 8) stay as they are, at their
 * GGUF offsets, and the plain kernels compute them. The layout does not
 * depend on the ISA (set_isa may switch between calls). */
#define G4_REPACK_ROWS 8
int g4_repack_supported(uint32_t type, int64_t rows, int64_t cols);
/* Whether the active ISA multiplies repacked `type` with its own vector
 * kernel (1 on the scalar ISA, whose repacked path is the tests' oracle):
 * 0 where only the scalar fallback would (Q5_0 on NEON), and there the
 * model keeps the plain layout, whose NEON kernel is faster. */
int g4_repack_fast(uint32_t type);
/* dst: g4_row_size(type, cols) * rows bytes (64-byte aligned is best).
 * Returns 0 (dst untouched) when not supported. g4_unrepack is the inverse. */
int g4_repack(uint32_t type, const void *W, int64_t rows, int64_t cols, void *dst);
int g4_unrepack(uint32_t type, const void *Wp, int64_t rows, int64_t cols, void *dst);

/* Activations for repacked weights, one row per token: the
 * g4_vec_dot_type(type) row followed, for Q8_0, by the int16 sum of each
 * block's 32 quants (the kernels fold Q4_0's -8 and the repacked Q8_0's -128
 * offsets into it), padded to a multiple of 64 bytes. g4_quantize_act
 * writes one such row (0 for a type without compute support). */
size_t g4_act_row_size(uint32_t type, int64_t cols);
int g4_quantize_act(uint32_t type, const float *x, int64_t cols, void *dst);

/* As g4_matmul_rows_vq for repacked weights Wp (all rows of the matrix) and
 * activation rows from g4_quantize_act, x_stride bytes apart
 * (>= g4_act_row_size). r0 must be a multiple of 8, and so must r1 unless it
 * is the matrix's row count (its last rows % 8 rows are not interleaved). */
void g4_matmul_rows_x8(uint32_t type, const void *Wp, int64_t cols, const void *xa, size_t x_stride,
                       int64_t nt, float *Y, int64_t ldy, int64_t r0, int64_t r1);

/* Float helpers on the active ISA, for attention over an F16 KV cache.
 * Conversions round to nearest even exactly as g4_fp32_to_fp16. */
float g4_dot_f32(int64_t n, const float *a, const float *b);
float g4_dot_f16_f32(int64_t n, const g4_fp16 *a, const float *b);
void g4_axpy_f16(int64_t n, float a, const g4_fp16 *x, float *y);   /* y += a * x */
void g4_axpy_f32(int64_t n, float a, const float *x, float *y);     /* y += a * x */
/* Many rows at once (one call per attention head instead of one per key):
 * out[p] = dot(row p of K, q) for p < n, and out[0..dim) = sum_p w[p] * row p
 * of V (out overwritten); rows are `dim` elements, ld elements apart. */
void g4_dot_f16_rows(int64_t n, int64_t dim, const g4_fp16 *K, int64_t ldk, const float *q, float *out);
void g4_wsum_f16_rows(int64_t n, int64_t dim, const g4_fp16 *V, int64_t ldv, const float *w, float *out);
void g4_dot_f32_rows(int64_t n, int64_t dim, const float *K, int64_t ldk, const float *q, float *out);
void g4_wsum_f32_rows(int64_t n, int64_t dim, const float *V, int64_t ldv, const float *w, float *out);
void g4_fp32_to_fp16_row(const float *x, g4_fp16 *y, int64_t n);
void g4_fp16_to_fp32_row(const g4_fp16 *x, float *y, int64_t n);

#endif

