/* quant.h - tensor element types and their block formats.
 *
 * Type ids and block layouts are ggml's (ggml/include/ggml.h enum ggml_type,
 * ggml/src/ggml-common.h block_* structs), so GGUF files from llama.cpp,
 * Ollama and Unsloth load unchanged. A row of n elements of a block type
 * occupies n / blck_size * type_size bytes; n must be a multiple of blck_size.
 *
 * Each kernel has a plain scalar reference (the test oracle); vectorized
 * paths are selected at run time (see g4_quant_set_isa).
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
    /* Known to the type table (names, block sizes) but without compute support:
       the i-quants, ternary and fp4 formats, so files using them still open. */
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
/* Quantize n float32 values into `type` (Q8_0, Q4_0, F16, BF16, F32);
 * reference rounding as in ggml-quants.c quantize_row_*_ref. Returns 0 for
 * an unsupported target type. */
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
 * for those; keeping fp32 is at least as accurate) and sums are in double.
 *
 * Callers that run many row ranges over the same x (threads splitting rows)
 * convert x once with g4_quantize_row(g4_vec_dot_type(type), ...) and call
 * g4_matvec_rows_vq; g4_matvec_rows does the conversion itself on each call
 * (in chunks on the stack, no allocation). Both give bit-identical results. */

/* The type x must be in for g4_matvec_rows_vq / vec_dot with `type` weights:
 * G4_TYPE_Q8_0 for Q4_0/Q8_0, G4_TYPE_F32 for F32/F16/BF16, or
 * G4_TYPE_COUNT when `type` has no compute support. */
uint32_t g4_vec_dot_type(uint32_t type);

/* Like g4_matvec_rows, with x already in g4_vec_dot_type(type) layout
 * (g4_row_size(g4_vec_dot_type(type), cols) bytes). */
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

#endif
