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
    G4_TYPE_COUNT = 40,
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

/* Dequantize n elements of `type` at src into dst (float32). */
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

#endif
