/* repack.c - weights interleaved 8 rows at a time, and the activations that go with them.
 *
 * Why: in GGUF order a row's blocks are contiguous, so a SIMD dot product
 * of one row ends with a horizontal sum and every block's fp16 scale is
 * loaded, converted and broadcast on its own - per 18-byte Q4_0 block that
 * bookkeeping costs more than the multiply-adds. Interleaving 8 rows
 * 4 bytes at a time (one ymm = the same 4 columns of 8 rows) lets each row's
 * integer dot accumulate in its own 32-bit lane against broadcast
 * activations, the 8 scales of a block column become one vector load, and
 * the 8 results are stored without any horizontal sum. This is what
 * llama.cpp does at load time for its CPU_REPACK buffers
 * (ggml-cpu/repack.cpp, block_q4_0x8 and friends); the layouts here are our
 * own, chosen so that one layout serves AVX2, AVX-512 and NEON. A block
 * column keeps its size (8 x the GGUF block), so a repacked matrix is as big
 * as the original.
 *
 * Layouts, per group of 8 rows g and block column b, stored at
 * (g * nb + b) * 8 * type_size (a group's blocks are contiguous, so a thread
 * streams memory in order). "chunk k" = 32 bytes = 4 bytes of each of the 8
 * rows, row r at byte 4r.
 *   Q4_0 (144 B): d[8] fp16 | chunk k=0..3: qs[4k..4k+3] (low nibbles =
 *       elements 4k.., high = 16+4k..)
 *   Q8_0 (272 B): d[8] fp16 | chunk k=0..7: qs[4k..4k+3] + 128 as uint8, so
 *       the kernels multiply unsigned x signed and subtract 128 * sum(x)
 *   Q5_0 (176 B): d[8] | hb[32] | chunk k=0..3: qs[4k..4k+3] at 48 + 32k (as
 *       Q4_0). hb byte 4r + i holds the fifth bits of row r's elements
 *       4k + i (bit 2k) and 16 + 4k + i (bit 2k + 1), k = 0..3: the bits
 *       chunk k needs sit at one bit position of every byte, so one shift
 *       and one mask put them at bit 4 (block_q5_0's qh has them in element
 *       order, bit j of a 32-bit word, which would take a shuffle per chunk)
 *   Q4_K (1152 B): d[8] | dmin[8] | the 3 little-endian words of each row's
 *       12 scale bytes, word i of the 8 rows at 32 + 32i | chunk m=0..31 of qs
 *       at 128 + 32m (bytes 4m..4m+3: elements 64c + l.. and 64c + 32 + l..,
 *       c = m / 8, l = 4 (m % 8))
 *   Q5_K (1408 B): as Q4_K (d, dmin, scale words at 0, 16, 32) | qh chunks
 *       k=0..7 at 128 + 32k: qh[4k..4k+3] of each row, as GGUF stores them
 *       | qs chunks m=0..31 at 384 + 32m (as Q4_K's). Bit j of qh[l] is the
 *       fifth bit of element 32j + l, so qs chunk m = 8c + k takes its bits
 *       from qh chunk k, bit 2c (low nibbles) and 2c + 1 (high): one bit
 *       position of every byte, moved to bit 4 by one shift and one mask,
 *       like Q5_0's hb; the interleave alone makes the layout.
 *   Q6_K (1680 B): d[8] | scales[16][8] int8 (sub-block s of row r at
 *       16 + 8s + r) | ql' chunks m=0..31 at 144 + 32m | qh' chunks m=0..15 at
 *       1168 + 32m, where per row ql'[i] = q(i) & 15 | (q(i+128) & 15) << 4
 *       for i < 128 and qh'[i] = the top 2 bits of q(i), q(i+64), q(i+128),
 *       q(i+192) in bits 0-1, 2-3, 4-5, 6-7 for i < 64 (q = the 6-bit value
 *       0..63 of element e of the block).
 * The scalar path (and the tests) undo the interleave block by block and use
 * the reference dots, so on the scalar ISA repacked results are bit-identical
 * to g4_matmul_rows_vq on the original weights.
 */
#include "quant.h"
#include "kernels.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * One block column of 8 rows <-> 8 GGUF blocks
 * ------------------------------------------------------------------------- */

static void chunks_out(uint8_t *dst, const uint8_t *const src[8], size_t off, int nchunks) {
    for (int k = 0; k < nchunks; k++)
        for (int r = 0; r < 8; r++) memcpy(dst + 32 * k + 4 * r, src[r] + off + 4 * k, 4);
}

static void chunks_in(uint8_t *const dst[8], size_t off, const uint8_t *src, int nchunks) {
    for (int k = 0; k < nchunks; k++)
        for (int r = 0; r < 8; r++) memcpy(dst[r] + off + 4 * k, src + 32 * k + 4 * r, 4);
}

/* The 256 6-bit values (0..63) of a Q6_K block, and back (dequantize_row_q6_K's layout). */
static void q6_decode(const block_q6_K *b, uint8_t q[QK_K]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        uint8_t *o = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = (uint8_t)((ql[l] & 0x0f) | (qh[l] & 3) << 4);
            o[l + 32] = (uint8_t)((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
        }
    }
}

static void q6_encode(const uint8_t q[QK_K], block_q6_K *b) {
    for (int h = 0; h < 2; h++) {
        uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        const uint8_t *o = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            ql[l] = (uint8_t)((o[l] & 0x0f) | (o[l + 64] & 0x0f) << 4);
            ql[l + 32] = (uint8_t)((o[l + 32] & 0x0f) | (o[l + 96] & 0x0f) << 4);
            qh[l] = (uint8_t)(o[l] >> 4 | (o[l + 32] >> 4) << 2 | (o[l + 64] >> 4) << 4 | (o[l + 96] >> 4) << 6);
        }
    }
}

/* Q5_0's qh (bit j: element j) <-> the 4 hb bytes of one row (layout above) */
static void q5_hb_out(const uint8_t qh[4], uint8_t hb[4]) {
    const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    for (int i = 0; i < 4; i++) {
        uint8_t v = 0;
        for (int k = 0; k < 4; k++)
            v |= (uint8_t)(((h >> (4 * k + i)) & 1) << (2 * k) | ((h >> (16 + 4 * k + i)) & 1) << (2 * k + 1));
        hb[i] = v;
    }
}

static void q5_hb_in(const uint8_t hb[4], uint8_t qh[4]) {
    uint32_t h = 0;
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 4; k++)
            h |= (uint32_t)((hb[i] >> (2 * k)) & 1) << (4 * k + i) | (uint32_t)((hb[i] >> (2 * k + 1)) & 1) << (16 + 4 * k + i);
    for (int i = 0; i < 4; i++) qh[i] = (uint8_t)(h >> (8 * i));
}

/* Q4_K and Q5_K: d[8], dmin[8] and the scale words (the first 128 bytes of
   the layout above) <-> the first 16 bytes of each row's block */
static void k_head_out(const uint8_t *const src[8], uint8_t *dst) {
    for (int r = 0; r < 8; r++) {
        memcpy(dst + 2 * r, src[r], 2);
        memcpy(dst + 16 + 2 * r, src[r] + 2, 2);
    }
    chunks_out(dst + 32, src, 4, 3);
}

static void k_head_in(const uint8_t *src, uint8_t *const dst[8]) {
    for (int r = 0; r < 8; r++) {
        memcpy(dst[r], src + 2 * r, 2);
        memcpy(dst[r] + 2, src + 16 + 2 * r, 2);
    }
    chunks_in(dst, 4, src + 32, 3);
}

/* src[r] -> one repacked block column at dst */
static void pack_column(uint32_t type, const uint8_t *const src[8], uint8_t *dst) {
    switch (type) {
    case G4_TYPE_Q5_0:
        for (int r = 0; r < 8; r++) {
            memcpy(dst + 2 * r, src[r], 2);
            q5_hb_out(src[r] + 2, dst + 16 + 4 * r);
        }
        chunks_out(dst + 48, src, 6, 4);
        return;
    case G4_TYPE_Q4_0:
        for (int r = 0; r < 8; r++) memcpy(dst + 2 * r, src[r], 2);
        chunks_out(dst + 16, src, 2, 4);
        return;
    case G4_TYPE_Q8_0:
        for (int r = 0; r < 8; r++) memcpy(dst + 2 * r, src[r], 2);
        chunks_out(dst + 16, src, 2, 8);
        for (int i = 16; i < 272; i++) dst[i] ^= 0x80;   /* int8 q -> uint8 q + 128 */
        return;
    case G4_TYPE_Q4_K:
        k_head_out(src, dst);
        chunks_out(dst + 128, src, 16, 32);
        return;
    case G4_TYPE_Q5_K:
        k_head_out(src, dst);
        chunks_out(dst + 128, src, 16, 8);
        chunks_out(dst + 384, src, 48, 32);
        return;
    case G4_TYPE_Q6_K: {
        uint8_t ql[8][128], qh[8][64], q[QK_K];
        for (int r = 0; r < 8; r++) {
            const block_q6_K *b = (const block_q6_K *)src[r];
            memcpy(dst + 2 * r, &b->d, 2);
            for (int s = 0; s < 16; s++) dst[16 + 8 * s + r] = (uint8_t)b->scales[s];
            q6_decode(b, q);
            for (int i = 0; i < 128; i++) ql[r][i] = (uint8_t)((q[i] & 15) | (q[i + 128] & 15) << 4);
            for (int i = 0; i < 64; i++)
                qh[r][i] = (uint8_t)(q[i] >> 4 | (q[i + 64] >> 4) << 2 | (q[i + 128] >> 4) << 4 | (q[i + 192] >> 4) << 6);
        }
        const uint8_t *pl[8], *ph[8];
        for (int r = 0; r < 8; r++) { pl[r] = ql[r]; ph[r] = qh[r]; }
        chunks_out(dst + 144, pl, 0, 32);
        chunks_out(dst + 1168, ph, 0, 16);
        return;
    }
    }
}

/* the inverse of pack_column */
static void unpack_column(uint32_t type, const uint8_t *src, uint8_t *const dst[8]) {
    switch (type) {
    case G4_TYPE_Q5_0:
        for (int r = 0; r < 8; r++) {
            memcpy(dst[r], src + 2 * r, 2);
            q5_hb_in(src + 16 + 4 * r, dst[r] + 2);
        }
        chunks_in(dst, 6, src + 48, 4);
        return;
    case G4_TYPE_Q4_0:
        for (int r = 0; r < 8; r++) memcpy(dst[r], src + 2 * r, 2);
        chunks_in(dst, 2, src + 16, 4);
        return;
    case G4_TYPE_Q8_0:
        for (int r = 0; r < 8; r++) memcpy(dst[r], src + 2 * r, 2);
        chunks_in(dst, 2, src + 16, 8);
        for (int r = 0; r < 8; r++)
            for (int i = 2; i < 34; i++) dst[r][i] ^= 0x80;
        return;
    case G4_TYPE_Q4_K:
        k_head_in(src, dst);
        chunks_in(dst, 16, src + 128, 32);
        return;
    case G4_TYPE_Q5_K:
        k_head_in(src, dst);
        chunks_in(dst, 16, src + 128, 8);
        chunks_in(dst, 48, src + 384, 32);
        return;
    case G4_TYPE_Q6_K: {
        uint8_t ql[8][128], qh[8][64];
        uint8_t *pl[8], *ph[8];
        for (int r = 0; r < 8; r++) { pl[r] = ql[r]; ph[r] = qh[r]; }
        chunks_in(pl, 0, src + 144, 32);
        chunks_in(ph, 0, src + 1168, 16);
        for (int r = 0; r < 8; r++) {
            block_q6_K *b = (block_q6_K *)dst[r];
            memcpy(&b->d, src + 2 * r, 2);
            for (int s = 0; s < 16; s++) b->scales[s] = (int8_t)src[16 + 8 * s + r];
            uint8_t q[QK_K];
            for (int i = 0; i < 64; i++)
                for (int k = 0; k < 4; k++) {
                    const int e = i + 64 * k;
                    const int lo = e < 128 ? ql[r][e] & 15 : ql[r][e - 128] >> 4;
                    q[e] = (uint8_t)(lo | ((qh[r][i] >> (2 * k)) & 3) << 4);
                }
            q6_encode(q, b);
        }
        return;
    }
    }
}

/* ---------------------------------------------------------------------------
 * Whole matrices
 * ------------------------------------------------------------------------- */

int g4_repack_supported(uint32_t type, int64_t rows, int64_t cols) {
    if (type != G4_TYPE_Q4_0 && type != G4_TYPE_Q8_0 && type != G4_TYPE_Q4_K && type != G4_TYPE_Q6_K &&
        type != G4_TYPE_Q5_0 && type != G4_TYPE_Q5_K)
        return 0;
    return rows >= G4_REPACK_ROWS && g4_row_size(type, cols) != 0;
}

/* The last rows % 8 rows: copied as they are, to their own offsets (a group
 * of 8 repacked rows takes the bytes of the 8 rows it holds). */
static void copy_tail(uint32_t type, const void *src, int64_t rows, int64_t cols, void *dst) {
    const size_t rs = g4_row_size(type, cols), at = (size_t)(rows / G4_REPACK_ROWS * G4_REPACK_ROWS) * rs;
    memcpy((uint8_t *)dst + at, (const uint8_t *)src + at, (size_t)(rows % G4_REPACK_ROWS) * rs);
}

int g4_repack(uint32_t type, const void *W, int64_t rows, int64_t cols, void *dst) {
    if (!g4_repack_supported(type, rows, cols)) return 0;
    const size_t rs = g4_row_size(type, cols), bsz = g4_type_size(type);
    const int64_t nb = cols / (int64_t)g4_blck_size(type);
    for (int64_t g = 0; g < rows / 8; g++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *src[8];
            for (int r = 0; r < 8; r++) src[r] = (const uint8_t *)W + (size_t)(8 * g + r) * rs + (size_t)b * bsz;
            pack_column(type, src, (uint8_t *)dst + ((size_t)g * nb + b) * 8 * bsz);
        }
    copy_tail(type, W, rows, cols, dst);
    return 1;
}

int g4_unrepack(uint32_t type, const void *Wp, int64_t rows, int64_t cols, void *dst) {
    if (!g4_repack_supported(type, rows, cols)) return 0;
    const size_t rs = g4_row_size(type, cols), bsz = g4_type_size(type);
    const int64_t nb = cols / (int64_t)g4_blck_size(type);
    for (int64_t g = 0; g < rows / 8; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *out[8];
            for (int r = 0; r < 8; r++) out[r] = (uint8_t *)dst + (size_t)(8 * g + r) * rs + (size_t)b * bsz;
            unpack_column(type, (const uint8_t *)Wp + ((size_t)g * nb + b) * 8 * bsz, out);
        }
    copy_tail(type, Wp, rows, cols, dst);
    return 1;
}

/* ---------------------------------------------------------------------------
 * Activations for repacked weights
 * ------------------------------------------------------------------------- */

size_t g4_act_row_size(uint32_t type, int64_t cols) {
    const uint32_t vdt = g4_vec_dot_type(type);
    size_t n = g4_row_size(vdt, cols);
    if (!n) return 0;
    if (vdt == G4_TYPE_Q8_0) n += (size_t)(cols / QK8_0) * sizeof(int16_t);
    return (n + 63) / 64 * 64;
}

int g4_quantize_act(uint32_t type, const float *x, int64_t cols, void *dst) {
    const uint32_t vdt = g4_vec_dot_type(type);
    if (vdt == G4_TYPE_COUNT || !g4_quantize_row(vdt, x, dst, cols)) return 0;
    if (vdt == G4_TYPE_Q8_0) {
        /* int16 sums of each block's 32 int8 (|sum| <= 32 * 127) after the blocks */
        const int64_t nb = cols / QK8_0;
        const block_q8_0 *q = dst;
        int16_t *sums = (int16_t *)((uint8_t *)dst + (size_t)nb * sizeof(block_q8_0));
        for (int64_t b = 0; b < nb; b++) {
            int s = 0;
            for (int j = 0; j < QK8_0; j++) s += q[b].qs[j];
            int16_t v = (int16_t)s;
            memcpy(sums + b, &v, 2);
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------------
 * The scalar kernel for repacked weights: undo the interleave of each block
 * column and run the reference dots in the reference's order.
 * ------------------------------------------------------------------------- */

void g4_gemm_x8_scalar(uint32_t type, int64_t n, const uint8_t *w, int64_t nr,
                       const uint8_t *x, size_t xs, int64_t nt, float *y, int64_t ldy) {
    const size_t bsz = g4_type_size(type), xbsz = g4_type_size(g4_vec_dot_type(type));
    const int64_t nb = n / (int64_t)g4_blck_size(type);
    _Alignas(8) uint8_t blk[8][sizeof(block_q6_K) + 2];
    uint8_t *out[8];
    for (int r = 0; r < 8; r++) out[r] = blk[r];
    for (int64_t g = 0; g < nr / 8; g++)
        for (int64_t t = 0; t < nt; t++) {
            float acc[8] = {0};
            for (int64_t b = 0; b < nb; b++) {
                unpack_column(type, w + ((size_t)g * nb + b) * 8 * bsz, out);
                const uint8_t *xb = x + (size_t)t * xs + (size_t)b * xbsz;
                for (int r = 0; r < 8; r++) {
                    switch (type) {
                    case G4_TYPE_Q4_0: acc[r] = g4_ref_dot_q4_0_q8_0_acc(acc[r], 1, (const block_q4_0 *)blk[r], (const block_q8_0 *)xb); break;
                    case G4_TYPE_Q8_0: acc[r] = g4_ref_dot_q8_0_q8_0_acc(acc[r], 1, (const block_q8_0 *)blk[r], (const block_q8_0 *)xb); break;
                    case G4_TYPE_Q5_0: acc[r] = g4_ref_dot_q5_0_q8_0_acc(acc[r], 1, (const block_q5_0 *)blk[r], (const block_q8_0 *)xb); break;
                    case G4_TYPE_Q4_K: acc[r] = g4_ref_dot_q4_K_q8_K_acc(acc[r], 1, (const block_q4_K *)blk[r], (const block_q8_K *)xb); break;
                    case G4_TYPE_Q5_K: acc[r] = g4_ref_dot_q5_K_q8_K_acc(acc[r], 1, (const block_q5_K *)blk[r], (const block_q8_K *)xb); break;
                    case G4_TYPE_Q6_K: acc[r] = g4_ref_dot_q6_K_q8_K_acc(acc[r], 1, (const block_q6_K *)blk[r], (const block_q8_K *)xb); break;
                    default: acc[r] = NAN;
                    }
                }
            }
            for (int r = 0; r < 8; r++) y[t * ldy + 8 * g + r] = acc[r];
        }
}
