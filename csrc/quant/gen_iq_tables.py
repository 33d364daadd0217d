"""Write csrc/quant/iq_tables.h: the grid and sign tables of the i-quant formats.

The tables are format data defined in llama.cpp's ggml/src/ggml-common.h (iq2xxs_grid,
iq2xs_grid, iq2s_grid, iq3xxs_grid, iq3s_grid, iq1s_grid, ksigns_iq2xs, kvalues_iq4nl).
gguf-py (the `gguf` package, gguf/quants.py) carries the same grids packed 2 or 3 bits per
element; this script expands them to ggml-common.h's layout (one byte per grid element, the
bytes of an entry little-endian in a uint64/uint32), so the header can be checked against either
source. Run: python3 csrc/quant/gen_iq_tables.py > csrc/quant/iq_tables.h
"""
import numpy as np
from gguf.quants import IQ1_S, IQ2_S, IQ2_XS, IQ2_XXS, IQ3_S, IQ3_XXS, IQ4_NL


def grid_bytes(cls) -> np.ndarray:
    cls.init_grid()
    return cls.grid.reshape(cls.grid_shape).astype(np.int64)


def words(values: np.ndarray, width: int) -> list[str]:
    """Rows of byte values -> little-endian words of `width` bytes, as hex literals."""
    out = []
    for row in values:
        w = 0
        for i, b in enumerate(row):
            w |= (int(b) & 0xFF) << (8 * i)
        out.append(f"0x{w:0{2 * width}x}")
    return out


def emit(ctype: str, name: str, items: list[str], per_line: int, comment: str) -> None:
    print(f"/* {comment} */")
    print(f"static const {ctype} {name}[{len(items)}] = {{")
    for i in range(0, len(items), per_line):
        print("    " + ", ".join(items[i:i + per_line]) + ",")
    print("};\n")


print("""/* iq_tables.h - grids and sign tables of the i-quant formats (generated, do not edit).
 *
 * Format data from llama.cpp ggml/src/ggml-common.h (iq2xxs_grid, iq2xs_grid, iq2s_grid,
 * iq3xxs_grid, iq3s_grid, iq1s_grid, ksigns_iq2xs, kvalues_iq4nl; the i-quants were
 * designed by Iwan Kawrakow for llama.cpp, 2024), expanded by
 * csrc/quant/gen_iq_tables.py from the packed copies in gguf-py's gguf/quants.py.
 * Each grid entry holds its 8 (or 4) elements as bytes, element 0 in the lowest byte:
 * unsigned magnitudes for IQ2/IQ3 (signs are stored separately), int8 -1/0/+1 for IQ1.
 */
#ifndef G4_IQ_TABLES_H
#define G4_IQ_TABLES_H
#include <stdint.h>
""")
emit("uint64_t", "g4_iq2xxs_grid", words(grid_bytes(IQ2_XXS), 8), 4, "IQ2_XXS: 256 entries of 8 magnitudes in {8, 25, 43}")
emit("uint64_t", "g4_iq2xs_grid", words(grid_bytes(IQ2_XS), 8), 4, "IQ2_XS: 512 entries of 8 magnitudes in {8, 25, 43}")
emit("uint64_t", "g4_iq2s_grid", words(grid_bytes(IQ2_S), 8), 4, "IQ2_S: 1024 entries of 8 magnitudes in {8, 25, 43}")
emit("uint32_t", "g4_iq3xxs_grid", words(grid_bytes(IQ3_XXS), 4), 8, "IQ3_XXS: 256 entries of 4 magnitudes in {4, 12, ..., 62}")
emit("uint32_t", "g4_iq3s_grid", words(grid_bytes(IQ3_S), 4), 8, "IQ3_S: 512 entries of 4 magnitudes in {1, 3, ..., 15}")
emit("uint64_t", "g4_iq1s_grid", words(grid_bytes(IQ1_S), 8), 4, "IQ1_S/IQ1_M: 2048 entries of 8 int8 in {-1, 0, 1}")
ks = np.frombuffer(IQ2_XXS.ksigns, np.uint8)
emit("uint8_t", "g4_ksigns_iq2xs", [f"0x{v:02x}" for v in ks], 16,
     "ksigns_iq2xs: 7 sign bits -> 8 (bit 7 makes the count of minus signs even)")
emit("int8_t", "g4_kvalues_iq4nl", [str(v) for v in IQ4_NL.kvalues], 16, "IQ4_NL/IQ4_XS: the 16 non-linear levels")
print("#endif")
