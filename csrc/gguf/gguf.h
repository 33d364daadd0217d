/* gguf.h - read-only GGUF v2/v3 reader over mmap.
 *
 * Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
 * (header "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv key/value
 * pairs, then n_tensors tensor infos, then padding to general.alignment
 * (default 32), then tensor data). All integers little endian.
 *
 * The file is mapped read-only; every pointer handed out (strings, array
 * payloads, tensor data) points into the mapping and lives until
 * g4_gguf_close(). Every length, count and offset is bounds- and
 * overflow-checked at open time, so accessors never read past the map.
 */
#ifndef G4_GGUF_H
#define G4_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "../common/g4err.h"

/* Metadata value types, numbered as in the GGUF spec (gguf_type in ggml). */
typedef enum g4_gguf_vtype {
    G4_GGUF_UINT8 = 0, G4_GGUF_INT8 = 1, G4_GGUF_UINT16 = 2, G4_GGUF_INT16 = 3,
    G4_GGUF_UINT32 = 4, G4_GGUF_INT32 = 5, G4_GGUF_FLOAT32 = 6, G4_GGUF_BOOL = 7,
    G4_GGUF_STRING = 8, G4_GGUF_ARRAY = 9, G4_GGUF_UINT64 = 10, G4_GGUF_INT64 = 11,
    G4_GGUF_FLOAT64 = 12,
} g4_gguf_vtype;

/* A string inside the mapping: NOT NUL-terminated. */
typedef struct g4_str { const char *ptr; uint64_t len; } g4_str;

typedef struct g4_gguf_kv {
    g4_str key;
    g4_gguf_vtype type;        /* value type; G4_GGUF_ARRAY for arrays */
    g4_gguf_vtype arr_type;    /* element type when type == ARRAY */
    uint64_t arr_len;          /* element count when type == ARRAY */
    const uint8_t *data;       /* raw little-endian value, or first array element.
                                  For STRING values and STRING arrays: the
                                  (first) u64 length prefix. May be unaligned. */
} g4_gguf_kv;

#define G4_MAX_DIMS 4

typedef struct g4_tensor {
    g4_str name;
    uint32_t n_dims;
    int64_t ne[G4_MAX_DIMS];   /* elements per dim, ne[0] fastest (ggml order); unused dims = 1 */
    uint32_t type;             /* g4_type from quant/quant.h (ggml_type numbering) */
    uint64_t offset;           /* relative to the start of the data section */
    const void *data;          /* pointer into the mapping */
    uint64_t nbytes;           /* bytes of data, from g4_row_size() */
    uint32_t shard;            /* the file it is in (0 unless split); offset is within that file */
} g4_tensor;

typedef struct g4_gguf g4_gguf;  /* opaque */

/* Open and validate `path`. On failure returns NULL and fills err:
 * G4_ERR_IO (missing/unreadable; sys_errno ENOENT for a missing file),
 * G4_ERR_FORMAT (bad magic, truncated, out-of-range offsets, overflowing
 * sizes, duplicate keys/tensors, data past the end, unknown value type,
 * bad general.alignment, n_dims > 4, dims not positive, arrays nested deeper
 * than G4_GGUF_MAX_DEPTH), G4_ERR_UNSUPPORTED (version not 2 or 3, big-endian
 * file, unknown tensor type id), G4_ERR_LIMIT (a memory cap below was hit),
 * G4_ERR_INVALID (a cap's environment variable is not a positive integer).
 * Messages start with the path and name the key or tensor at fault.
 * Only the headers are read; tensor data is mapped but not touched. */
g4_gguf *g4_gguf_open(const char *path, g4_err *err);
/* Split models (llama.cpp gguf-split: <prefix>-00001-of-00003.gguf ...): when the
 * opened file has split.count > 1, every shard is opened and validated like a
 * single file, from any shard's path. The handle then has shard 0's metadata
 * (path, version, alignment, data offset, file size and kvs are shard 0's) and
 * the tensors of all shards, found by name, in shard order (g4_tensor.shard).
 * Extra errors: G4_ERR_FORMAT when the name does not end in
 * -%05d-of-%05d.gguf matching split.no + 1 / split.count, a shard disagrees on
 * split.no/split.count, split.tensors.count differs from the tensors found, or
 * a tensor name repeats across shards; a missing or broken shard fails with
 * that shard's own error, the message prefixed "shard i of n of <path>:" (a
 * missing one is G4_ERR_IO with ENOENT). */
void g4_gguf_close(g4_gguf *g);

uint32_t g4_gguf_version(const g4_gguf *g);
uint64_t g4_gguf_alignment(const g4_gguf *g);
uint64_t g4_gguf_file_size(const g4_gguf *g);

uint64_t g4_gguf_n_kv(const g4_gguf *g);
const g4_gguf_kv *g4_gguf_kv_at(const g4_gguf *g, uint64_t i);
/* NULL when the key is absent. */
const g4_gguf_kv *g4_gguf_find(const g4_gguf *g, const char *key);

/* Typed getters. Integers of any integer type convert when the value fits;
 * return G4_OK, or G4_ERR_FORMAT naming the key when absent/mistyped.
 * The *_or variants return `dflt` when the key is absent (still an error when
 * present with the wrong type). */
g4_status g4_gguf_get_u32(const g4_gguf *g, const char *key, uint32_t *out, g4_err *err);
g4_status g4_gguf_get_u32_or(const g4_gguf *g, const char *key, uint32_t dflt, uint32_t *out, g4_err *err);
g4_status g4_gguf_get_f32(const g4_gguf *g, const char *key, float *out, g4_err *err);
g4_status g4_gguf_get_f32_or(const g4_gguf *g, const char *key, float dflt, float *out, g4_err *err);
g4_status g4_gguf_get_bool_or(const g4_gguf *g, const char *key, int dflt, int *out, g4_err *err);
g4_status g4_gguf_get_str(const g4_gguf *g, const char *key, g4_str *out, g4_err *err);

/* Scalar helpers on a kv (no type coercion beyond integer widening). */
int g4_gguf_kv_as_i64(const g4_gguf_kv *kv, int64_t *out);   /* 1 on success */
int g4_gguf_kv_as_f64(const g4_gguf_kv *kv, double *out);

/* Array element access (kv->type == ARRAY). For STRING arrays, element i
 * is found by walking length prefixes; g4_gguf_arr_strings() builds an index
 * of all of them at once (caller frees with free()). */
int g4_gguf_arr_i64(const g4_gguf_kv *kv, uint64_t i, int64_t *out);
int g4_gguf_arr_f64(const g4_gguf_kv *kv, uint64_t i, double *out);
g4_str *g4_gguf_arr_strings(const g4_gguf_kv *kv, g4_err *err);

uint64_t g4_gguf_n_tensors(const g4_gguf *g);
const g4_tensor *g4_gguf_tensor_at(const g4_gguf *g, uint64_t i);
const g4_tensor *g4_gguf_find_tensor(const g4_gguf *g, const char *name);

int g4_str_eq(g4_str s, const char *cstr);

/* ---- additions (beyond the first draft of this header) -------------------- */

/* Absolute file offset of the tensor data section (a multiple of the
 * alignment; may lie past the end of a file without tensors). */
uint64_t g4_gguf_data_offset(const g4_gguf *g);
/* The path given to g4_gguf_open (for messages); shard 0's for a split model. */
const char *g4_gguf_path(const g4_gguf *g);
/* Number of files (1 unless split), the path of file i (NULL when out of
 * range), and the bytes of all files together. */
uint32_t g4_gguf_n_shards(const g4_gguf *g);
/* Shard i's own handle (its header fields, kvs and tensors; g itself for i = 0),
 * NULL when out of range. Owned by g. */
const g4_gguf *g4_gguf_shard(const g4_gguf *g, uint32_t i);
const char *g4_gguf_shard_path(const g4_gguf *g, uint32_t i);
uint64_t g4_gguf_total_size(const g4_gguf *g);
/* "UINT8", "STRING", ... as the spec names them; "?" when out of range. */
const char *g4_gguf_vtype_name(uint32_t vtype);

/* The string value of a STRING kv (or of a STRING array element from
 * g4_gguf_arr_next). 1 on success, 0 when kv is not a string. */
int g4_gguf_kv_str(const g4_gguf_kv *kv, g4_str *out);

/* Walk any array in order, including arrays of strings and arrays of arrays
 * (validated at open time; nesting depth <= G4_GGUF_MAX_DEPTH). Each element
 * is presented as a g4_gguf_kv with an empty key: type = the element type,
 * data = the element (a string's u64 length prefix; for a nested array,
 * arr_type/arr_len and data = its first element). O(1) per step for scalar
 * and string elements. */
#define G4_GGUF_MAX_DEPTH 8
typedef struct g4_gguf_arr_iter {
    const g4_gguf_kv *arr;
    uint64_t i;
    const uint8_t *p;
} g4_gguf_arr_iter;
void g4_gguf_arr_iter_init(g4_gguf_arr_iter *it, const g4_gguf_kv *arr);
int g4_gguf_arr_next(g4_gguf_arr_iter *it, g4_gguf_kv *elem);   /* 1 while elements remain */

/* Caps that protect memory, checked while parsing and before any allocation
 * sized by the file. Each can be raised with its environment variable;
 * exceeding one fails with G4_ERR_LIMIT naming the variable. */
#define G4_GGUF_MAX_TENSORS_ENV  "GEMMA4STACK_MAX_TENSORS"       /* default 262144 */
#define G4_GGUF_MAX_KV_ENV       "GEMMA4STACK_MAX_KV"            /* default 65536 */
#define G4_GGUF_MAX_ARRAY_ENV    "GEMMA4STACK_MAX_ARRAY_LEN"     /* default 16777216 elements */
#define G4_GGUF_MAX_STRING_ENV   "GEMMA4STACK_MAX_STRING_LEN"    /* default 64 MiB */
#define G4_GGUF_MAX_META_ENV     "GEMMA4STACK_MAX_METADATA_BYTES" /* default 1 GiB */

#endif
