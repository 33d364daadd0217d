/* matvec_instructions.c - instructions per weight byte of one decode-shaped matvec, any type.
 *
 *   make tests/c/build/libg4.a
 *   cc -O2 -Icsrc benchmarks/matvec_instructions.c tests/c/build/libg4.a -lhwloc -lopenblas -lm \
 *      -lpthread -o /tmp/matvec_instructions
 *   valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect=g4_matvec_rows_vq \
 *      /tmp/matvec_instructions ISA TYPE        # ISA: scalar, avx2, ...; TYPE: ggml type id
 *   valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect=g4_matmul_rows_x8 \
 *      /tmp/matvec_instructions ISA TYPE x8 [TOKENS]   # the repacked weights (Q4_0, Q8_0, Q4_K,
 *                                     # Q6_K, Q5_0, Q5_K), times TOKENS activation rows (default 1; >1: prefill)
 *   valgrind ... --toggle-collect=g4_matmul_rows_vq /tmp/matvec_instructions ISA TYPE plain TOKENS
 *                                     # the plain rows times TOKENS activation rows
 *
 * A 256 x 4096 matrix of random bytes (unrepacked rows, as the Q2_K/Q3_K/i-quant kernels read
 * them; with "x8", the same bytes laid out by g4_repack, as the model multiplies the types that
 * have a repacked form) times one activation row already in the type's vec_dot_type (with "x8",
 * g4_quantize_act's layout); callgrind's "Collected" count over the toggled function divided by
 * the printed weight bytes is the kernels' instructions per byte, the figure that bounds decode
 * on a core that is not waiting for DRAM (issue 14: Zen 4). Instruction counts do not depend on
 * other load on the machine, unlike wall time. Random bytes make some fp16 scales inf/NaN; no
 * kernel branches on them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

int main(int argc, char **argv) {
    if (argc < 3 || argc > 5 || (argc >= 4 && strcmp(argv[3], "x8") && strcmp(argv[3], "plain"))) {
        fprintf(stderr, "usage: %s ISA TYPE [x8|plain [TOKENS]]\n", argv[0]);
        return 2;
    }
    const int isa = g4_isa_from_name(argv[1]);
    const uint32_t type = (uint32_t)atoi(argv[2]);
    const int x8 = argc >= 4 && !strcmp(argv[3], "x8"), nt = argc == 5 ? atoi(argv[4]) : 1;
    const int64_t rows = 256, cols = 4096;
    const size_t rs = g4_row_size(type, cols);
    const uint32_t vdt = g4_vec_dot_type(type);
    if (nt < 1 || nt > 64) {
        fprintf(stderr, "TOKENS must be 1..64\n");
        return 2;
    }
    if (!g4_type_supported(type) || !rs || (x8 && !g4_repack_supported(type, rows, cols))) {
        fprintf(stderr, "type %u has no %skernels\n", type, x8 ? "repacked " : "");
        return 2;
    }
    if (isa < 0 || !g4_quant_set_isa(isa)) {
        fprintf(stderr, "ISA %s is not available here\n", argv[1]);
        return 2;
    }
    const size_t xs = x8 ? g4_act_row_size(type, cols) : g4_row_size(vdt, cols);
    uint8_t *w = malloc(rs * rows), *wp = malloc(rs * rows), *xq = malloc(xs * nt);
    float *x = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * rows * nt);
    if (!w || !wp || !xq || !x || !y) return 1;
    srand(1);
    for (size_t i = 0; i < rs * rows; i++) w[i] = (uint8_t)rand();
    for (int64_t i = 0; i < cols; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    if (x8) {
        g4_repack(type, w, rows, cols, wp);
        for (int t = 0; t < nt; t++) g4_quantize_act(type, x, cols, xq + (size_t)t * xs);
        g4_matmul_rows_x8(type, wp, cols, xq, xs, nt, y, rows, 0, rows);
    } else {
        for (int t = 0; t < nt; t++) g4_quantize_row(vdt, x, xq + (size_t)t * xs, cols);
        if (nt == 1) g4_matvec_rows_vq(type, w, cols, xq, y, 0, rows);   /* calls g4_matmul_rows_vq */
        else g4_matmul_rows_vq(type, w, cols, xq, xs, nt, y, rows, 0, rows);
    }
    printf("%s %s%s, %d token(s): %zu weight bytes\n", g4_isa_name(isa), g4_type_name(type), x8 ? " repacked" : "",
           nt, rs * rows);
    free(w), free(wp), free(xq), free(x), free(y);
    return 0;
}
