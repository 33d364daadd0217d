"""Write the malformed-GGUF corpus tests/data/bad-gguf/*.gguf and its MANIFEST.txt.

    python tests/data/make_bad_gguf.py [OUT_DIR]     # default: tests/data/bad-gguf

A valid base file is written with the `gguf` package's GGUFWriter (llama.cpp's own
Python writer, independent of our reader); each case then corrupts a few bytes of it at
an offset found by the small layout walker below. The output is deterministic, so the
committed files can be checked against a fresh run (tests/test_gguf.py does).

MANIFEST.txt has one line per case: `file<TAB>status<TAB>keyword`, where status is
the g4_status name our reader must return (FORMAT -> GGUFError, UNSUPPORTED ->
UnsupportedError, LIMIT -> LimitError; OK for the valid_*.gguf controls) and keyword
is a word the error message must contain. tests/c/test_gguf.c and tests/test_gguf.py both read it.

MODEL_MANIFEST.txt lists the model_*.gguf files: valid GGUF files (the reader opens them) whose
metadata contradicts their tensors (token_embd rows vs the vocab, head counts that do not
divide, block_count beyond the tensors, ...), with the Python exception gemma4stack.Model must
raise and a keyword of its message: `file<TAB>exception<TAB>keyword` (OK for the control).
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.quants import quantize

HERE = Path(__file__).resolve().parent
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")


# ---- the valid base file -------------------------------------------------------------------

def make_base(path: Path) -> None:
    w = GGUFWriter(path, arch="llama")
    w.add_custom_alignment(32)
    w.add_key_value("test.u32", 7, GGUFValueType.UINT32)
    w.add_key_value("test.f32", 0.5, GGUFValueType.FLOAT32)
    w.add_key_value("test.bool", True, GGUFValueType.BOOL)
    w.add_key_value("test.str", "hello", GGUFValueType.STRING)
    w.add_key_value("test.aaaa", 1, GGUFValueType.UINT32)
    w.add_key_value("test.bbbb", 2, GGUFValueType.UINT32)
    w.add_key_value("test.ints", [1, -2, 3], GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    w.add_key_value("test.strs", ["a", "bc", "def"], GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
    rng = np.random.default_rng(0)
    w.add_tensor("tensor_a", rng.standard_normal((4, 8)).astype(np.float32))          # ne [8, 4]
    q = quantize(rng.standard_normal((2, 32)).astype(np.float32), GGMLQuantizationType.Q8_0)
    w.add_tensor("tensor_b", q, raw_dtype=GGMLQuantizationType.Q8_0)                  # ne [32, 2]
    w.add_tensor("tensor_c", rng.standard_normal(16).astype(np.float16))              # ne [16]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- where things are: a minimal walker over a known-good file -------------------------------

FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def layout(b: bytes) -> dict:
    """Byte offsets of every field of a valid little-endian GGUF v3 file."""
    pos = 24
    n_tensors, n_kv = U64.unpack_from(b, 8)[0], U64.unpack_from(b, 16)[0]

    def skip(t: int, pos: int) -> int:
        if t in FIXED:
            return pos + FIXED[t]
        if t == 8:
            return pos + 8 + U64.unpack_from(b, pos)[0]
        et, n = U32.unpack_from(b, pos)[0], U64.unpack_from(b, pos + 4)[0]
        pos += 12
        for _ in range(n):
            pos = skip(et, pos)
        return pos

    kvs = {}
    for _ in range(n_kv):
        klen = U64.unpack_from(b, pos)[0]
        key = b[pos + 8:pos + 8 + klen].decode()
        kv = {"start": pos, "key": pos + 8, "type": pos + 8 + klen, "value": pos + 12 + klen}
        kvs[key] = kv
        pos = skip(U32.unpack_from(b, kv["type"])[0], kv["value"])
    kv_end = pos
    tensors = {}
    for _ in range(n_tensors):
        nlen = U64.unpack_from(b, pos)[0]
        name = b[pos + 8:pos + 8 + nlen].decode()
        t = {"start": pos, "name": pos + 8, "n_dims": pos + 8 + nlen}
        nd = U32.unpack_from(b, t["n_dims"])[0]
        t["ne"] = [t["n_dims"] + 4 + 8 * i for i in range(nd)]
        t["type"] = t["n_dims"] + 4 + 8 * nd
        t["offset"] = t["type"] + 4
        t["offset_value"] = U64.unpack_from(b, t["offset"])[0]
        tensors[name] = t
        pos = t["offset"] + 8
    return {"kvs": kvs, "kv_end": kv_end, "tensors": tensors, "infos_end": pos,
            "data_start": (pos + 31) // 32 * 32}


# ---- the cases ---------------------------------------------------------------------------------

def put32(b: bytearray, off: int, v: int) -> bytearray:
    U32.pack_into(b, off, v)
    return b


def put64(b: bytearray, off: int, v: int) -> bytearray:
    U64.pack_into(b, off, v & 0xFFFFFFFFFFFFFFFF)
    return b


def cases(base: bytes) -> dict[str, tuple[bytes, str, str]]:
    """name -> (file bytes, expected status, keyword in the message)."""
    L = layout(base)
    kv, ti = L["kvs"], L["tensors"]
    B = lambda: bytearray(base)
    last = ti["tensor_c"]
    c: dict[str, tuple[bytes, str, str]] = {}

    # not a GGUF / header
    c["not_gguf"] = (b"PK\x03\x04 this is a zip file, not a model" + bytes(40), "FORMAT", "not a GGUF")
    c["empty"] = (b"", "FORMAT", "not a GGUF")
    c["magic_only"] = (b"GGUF", "FORMAT", "truncated")
    c["trunc_header"] = (base[:14], "FORMAT", "truncated")
    c["version_1"] = (bytes(put32(B(), 4, 1)), "UNSUPPORTED", "version 1")
    c["version_99"] = (bytes(put32(B(), 4, 99)), "UNSUPPORTED", "version 99")
    c["big_endian"] = (bytes(put32(B(), 4, 3 << 24)), "UNSUPPORTED", "big-endian")

    # truncated inside each section
    c["trunc_kv_key"] = (base[:kv["test.str"]["key"] + 3], "FORMAT", "truncated")
    c["trunc_kv_value"] = (base[:kv["test.bbbb"]["value"] + 2], "FORMAT", "truncated")
    c["trunc_kv_array"] = (base[:kv["test.strs"]["value"] + 20], "FORMAT", "truncated")
    c["trunc_tensor_info"] = (base[:ti["tensor_b"]["ne"][1] + 4], "FORMAT", "truncated")
    c["trunc_data"] = (base[:L["data_start"] + last["offset_value"] + 5], "FORMAT", "past end of file")
    c["trunc_before_data"] = (base[:L["infos_end"]], "FORMAT", "past end of file")

    # counts and lengths that overflow 64-bit arithmetic or the file
    c["kv_count_huge"] = (bytes(put64(B(), 16, 1 << 63)), "FORMAT", "kv count")
    c["tensor_count_huge"] = (bytes(put64(B(), 8, -1)), "FORMAT", "tensor count")
    c["key_length_huge"] = (bytes(put64(B(), kv["test.u32"]["start"], -1)), "FORMAT", "string without end")
    c["string_without_end"] = (bytes(put64(B(), kv["test.str"]["value"], len(base))), "FORMAT",
                               "string without end")
    c["string_in_array_without_end"] = (bytes(put64(B(), kv["test.strs"]["value"] + 12 + 9, 1 << 40)),
                                        "FORMAT", "string without end")
    # INT32 array of 2^62 + 1 elements: 4 * n wraps around to 4 in 64-bit arithmetic
    c["array_length_overflow"] = (bytes(put64(B(), kv["test.ints"]["value"] + 4, (1 << 62) + 1)),
                                  "FORMAT", "array")
    c["array_length_huge"] = (bytes(put64(B(), kv["test.strs"]["value"] + 4, 1 << 40)), "FORMAT",
                              "array length")
    c["tensor_name_without_end"] = (bytes(put64(B(), ti["tensor_a"]["start"], 1 << 62)), "FORMAT",
                                    "string without end")

    # tensor infos
    c["offset_past_end"] = (bytes(put64(B(), last["offset"], 1 << 20)), "FORMAT", "past end of file")
    c["offset_overflow"] = (bytes(put64(B(), last["offset"], (1 << 64) - 32)), "FORMAT", "past end of file")
    c["offset_unaligned"] = (bytes(put64(B(), last["offset"], last["offset_value"] + 4)), "FORMAT",
                             "unaligned")
    b = B()
    for off in ti["tensor_a"]["ne"]:
        put64(b, off, 1 << 32)               # 2^32 * 2^32 = 2^64: the element count overflows
    c["dims_overflow"] = (bytes(b), "FORMAT", "overflows")
    # product fits int64 but the byte size (x4 for F32) does not
    c["nbytes_overflow"] = (bytes(put64(put64(B(), ti["tensor_a"]["ne"][0], 1 << 31),
                                        ti["tensor_a"]["ne"][1], 1 << 31)), "FORMAT", "overflows")
    c["dim_negative"] = (bytes(put64(B(), ti["tensor_a"]["ne"][1], -4)), "FORMAT", "positive")
    c["dim_zero"] = (bytes(put64(B(), ti["tensor_a"]["ne"][0], 0)), "FORMAT", "positive")
    c["n_dims_5"] = (bytes(put32(B(), ti["tensor_a"]["n_dims"], 5)), "FORMAT", "n_dims")
    c["block_size_mismatch"] = (bytes(put64(B(), ti["tensor_b"]["ne"][0], 48)), "FORMAT", "block size")
    c["unknown_tensor_type"] = (bytes(put32(B(), ti["tensor_a"]["type"], 99)), "UNSUPPORTED", "unknown type")
    c["removed_tensor_type"] = (bytes(put32(B(), ti["tensor_a"]["type"], 4)), "UNSUPPORTED", "unknown type")
    dup = B()
    dup[ti["tensor_b"]["name"]:ti["tensor_b"]["name"] + 8] = b"tensor_a"
    c["duplicate_tensor_name"] = (bytes(dup), "FORMAT", "duplicate tensor")

    # metadata values
    c["unknown_value_type"] = (bytes(put32(B(), kv["test.u32"]["type"], 13)), "FORMAT", "unknown value type")
    c["unknown_array_type"] = (bytes(put32(B(), kv["test.ints"]["value"], 42)), "FORMAT",
                               "unknown array element type")
    dup = B()
    dup[kv["test.bbbb"]["key"]:kv["test.bbbb"]["key"] + 9] = b"test.aaaa"
    c["duplicate_key"] = (bytes(dup), "FORMAT", "duplicate key")
    c["alignment_zero"] = (bytes(put32(B(), kv["general.alignment"]["value"], 0)), "FORMAT", "power of two")
    c["alignment_not_power_of_two"] = (bytes(put32(B(), kv["general.alignment"]["value"], 48)), "FORMAT",
                                       "power of two")
    # a power of two, but tensors at 2-byte boundaries hand misaligned floats to the kernels
    # (found by csrc/fuzz/fuzz_gguf.c); the spec asks for a multiple of 8
    c["alignment_2"] = (bytes(put32(B(), kv["general.alignment"]["value"], 2)), "FORMAT", "multiple of 8")
    c["alignment_wrong_type"] = (bytes(put32(B(), kv["general.alignment"]["type"], GGUFValueType.FLOAT32)),
                                 "FORMAT", "general.alignment")
    return c


def make_nested(path: Path, depth: int) -> bytes:
    """A tensor-less file whose only extra key is an array nested `depth` levels deep."""
    v: list = [7]
    for _ in range(depth - 1):
        v = [v]
    w = GGUFWriter(path, arch="llama")
    w.add_array("test.nested", v)
    w.add_array("test.nested_strs", [["a", "b"], ["c"]])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    path.unlink()
    return data


# ---- models whose metadata contradicts their tensors (checked by Model, not the reader) ------

TINY = {"n_embd": 8, "n_head": 2, "n_head_kv": 1, "n_ff": 16, "n_layer": 1, "n_vocab": 16}


def make_tiny_llama(path: Path, arch: str = "llama", hp: dict | None = None, vocab_size: int | None = None,
                    embd_rows: int | None = None, n_layer_tensors: int | None = None,
                    ffn_up_cols: int | None = None, norm_f16: bool = False) -> bytes:
    """A 1-layer llama (dim 8, 2 heads / 1 KV head, ffn 16, SPM vocab of 16) with random F32
    weights, written by GGUFWriter; the keyword arguments make its metadata and tensors disagree."""
    h = dict(TINY, **(hp or {}))
    rng = np.random.default_rng(1)
    f32 = lambda *shape: (rng.standard_normal(shape) * 0.1).astype(np.float32)
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "c", "d", "e", "\u2581a", "\u2581b", "ab", "cd",
              "\u2581ab", "de", "\u2581cd"]
    w = GGUFWriter(path, arch=arch)
    w.add_context_length(64)
    w.add_embedding_length(h["n_embd"])
    w.add_block_count(h["n_layer"])
    w.add_feed_forward_length(h["n_ff"])
    w.add_head_count(h["n_head"])
    w.add_head_count_kv(h["n_head_kv"])
    w.add_layer_norm_rms_eps(1e-5)
    if vocab_size is not None:
        w.add_vocab_size(vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0, 0.0, 0.0] + [-float(i) for i in range(len(tokens) - 3)])
    w.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))
    E, F, V = TINY["n_embd"], TINY["n_ff"], embd_rows or len(tokens)
    Q, KV = E, E // TINY["n_head"] * TINY["n_head_kv"]
    w.add_tensor("token_embd.weight", f32(V, E))
    norm = f32(E).astype(np.float16) if norm_f16 else f32(E)
    w.add_tensor("output_norm.weight", norm)
    for il in range(TINY["n_layer"] if n_layer_tensors is None else n_layer_tensors):
        w.add_tensor(f"blk.{il}.attn_norm.weight", f32(E))
        w.add_tensor(f"blk.{il}.attn_q.weight", f32(Q, E))
        w.add_tensor(f"blk.{il}.attn_k.weight", f32(KV, E))
        w.add_tensor(f"blk.{il}.attn_v.weight", f32(KV, E))
        w.add_tensor(f"blk.{il}.attn_output.weight", f32(E, Q))
        w.add_tensor(f"blk.{il}.ffn_norm.weight", f32(E))
        w.add_tensor(f"blk.{il}.ffn_gate.weight", f32(F, E))
        w.add_tensor(f"blk.{il}.ffn_up.weight", f32(ffn_up_cols or F, E))
        w.add_tensor(f"blk.{il}.ffn_down.weight", f32(E, F))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    path.unlink()
    return data


def model_cases(tmp: Path) -> dict[str, tuple[bytes, str, str]]:
    """name -> (file bytes, Python exception Model(path) must raise, keyword in its message).
    Each file is a valid GGUF (the reader opens it); only loading it as a model must fail."""
    m = lambda **kw: make_tiny_llama(tmp, **kw)
    return {
        "model_embd_rows_not_vocab": (m(embd_rows=20), "GGUFError", "token_embd.weight"),
        "model_vocab_size_not_embd": (m(vocab_size=32), "GGUFError", "token_embd.weight"),
        "model_heads_do_not_divide_embd": (m(hp={"n_head": 3}), "GGUFError", "head_count 3"),
        "model_kv_heads_do_not_divide": (m(hp={"n_head_kv": 3}), "GGUFError", "head_count_kv 3"),
        "model_head_count_zero": (m(hp={"n_head": 0}), "GGUFError", "head_count"),
        "model_block_count_beyond_tensors": (m(hp={"n_layer": 3}), "GGUFError", "blk.1."),
        "model_ffn_shape_not_ff_length": (m(ffn_up_cols=12), "GGUFError", "blk.0.ffn_up.weight"),
        "model_norm_not_f32": (m(norm_f16=True), "UnsupportedError", "output_norm.weight"),
        "model_unknown_architecture": (m(arch="mamba"), "UnsupportedError", "mamba"),
    }


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base_path = out / "_base.tmp"
    make_base(base_path)
    base = base_path.read_bytes()
    base_path.unlink()
    lines = []
    for name, (data, status, keyword) in cases(base).items():
        (out / f"{name}.gguf").write_bytes(data)
        lines.append(f"{name}.gguf\t{status}\t{keyword}\n")
    # arrays of arrays: up to G4_GGUF_MAX_DEPTH (8) levels are read, deeper is refused
    (out / "nested_too_deep.gguf").write_bytes(make_nested(out / "_nested.tmp", 9))
    lines.append("nested_too_deep.gguf\tFORMAT\tnested\n")
    # files that must open (status OK): the uncorrupted base and legal nesting
    (out / "valid_base.gguf").write_bytes(base)
    (out / "valid_nested.gguf").write_bytes(make_nested(out / "_nested.tmp", 8))
    lines += ["valid_base.gguf\tOK\t-\n", "valid_nested.gguf\tOK\t-\n"]
    # models: readable files (so not in MANIFEST.txt) that Model must refuse, listed with the
    # exception and keyword in MODEL_MANIFEST.txt (tests/test_fuzz_regress.py reads it)
    model_lines = []
    (out / "valid_tiny_llama.gguf").write_bytes(make_tiny_llama(out / "_model.tmp"))
    model_lines.append("valid_tiny_llama.gguf\tOK\t-\n")
    for name, (data, exc, keyword) in model_cases(out / "_model.tmp").items():
        (out / f"{name}.gguf").write_bytes(data)
        model_lines.append(f"{name}.gguf\t{exc}\t{keyword}\n")
    (out / "MANIFEST.txt").write_text("".join(lines))
    (out / "MODEL_MANIFEST.txt").write_text("".join(model_lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "bad-gguf")
