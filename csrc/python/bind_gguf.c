/* bind_gguf.c - Python functions for csrc/gguf/ and csrc/quant/.
 *
 *   gguf_read(path) -> dict(version, alignment, file_size, data_offset,
 *                           metadata={key: value}, tensors=[{name, type, type_name,
 *                           shape, offset, nbytes, shard}], shards=[paths])
 *                      (a split model: shard 0's header fields, every shard's tensors)
 *   type_info(type) -> (name, blck_size, type_size, supported)
 *   dequantize(type, data, n) -> bytes (n float32)
 *   quantize(type, data) -> bytes (data: a float32 buffer)
 *   matvec(type, w, rows, cols, x) -> bytes (rows float32), the scalar reference
 *   matmul(type, w, rows, cols, x, nt) -> bytes (nt x rows float32), the active ISA
 *   repack(type, w, rows, cols, inverse=False) -> bytes; matmul_x8(type, wp, rows, cols, x, nt)
 *   vec_dot_type(type) -> int
 *   isa() -> str; set_isa(name); isas() -> {name: available}
 *
 * Thin by design: the C core validates; here we only convert.
 */
#include "g4py.h"

#include "../gguf/gguf.h"
#include "../quant/quant.h"

#include <string.h>

/* ---- metadata values -> Python objects ---- */

static PyObject *str_to_py(g4_str s) {
    /* GGUF strings are UTF-8; surrogateescape keeps a bad byte losslessly. */
    return PyUnicode_DecodeUTF8(s.ptr, (Py_ssize_t)s.len, "surrogateescape");
}

static PyObject *value_to_py(const g4_gguf_kv *v);

static PyObject *scalar_to_py(uint32_t type, const uint8_t *p) {
    switch (type) {
    case G4_GGUF_UINT8: return PyLong_FromUnsignedLong(p[0]);
    case G4_GGUF_INT8: return PyLong_FromLong((int8_t)p[0]);
    case G4_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); return PyLong_FromUnsignedLong(x); }
    case G4_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); return PyLong_FromLong(x); }
    case G4_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); return PyLong_FromUnsignedLong(x); }
    case G4_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); return PyLong_FromLong(x); }
    case G4_GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); return PyLong_FromUnsignedLongLong(x); }
    case G4_GGUF_INT64: { int64_t x; memcpy(&x, p, 8); return PyLong_FromLongLong(x); }
    case G4_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); return PyFloat_FromDouble(x); }
    case G4_GGUF_FLOAT64: { double x; memcpy(&x, p, 8); return PyFloat_FromDouble(x); }
    case G4_GGUF_BOOL: return PyBool_FromLong(p[0] != 0);
    }
    PyErr_Format(PyExc_RuntimeError, "unexpected GGUF value type %u", type);
    return NULL;
}

static PyObject *value_to_py(const g4_gguf_kv *v) {
    if (v->type == G4_GGUF_STRING) {
        g4_str s;
        g4_gguf_kv_str(v, &s);
        return str_to_py(s);
    }
    if (v->type != G4_GGUF_ARRAY) return scalar_to_py(v->type, v->data);
    PyObject *list = PyList_New((Py_ssize_t)v->arr_len);
    if (!list) return NULL;
    g4_gguf_arr_iter it;
    g4_gguf_kv e;
    g4_gguf_arr_iter_init(&it, v);
    for (Py_ssize_t i = 0; g4_gguf_arr_next(&it, &e); i++) {
        PyObject *o = value_to_py(&e);
        if (!o) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, o);
    }
    return list;
}

/* ---- gguf_read ---- */

static int set_item(PyObject *d, const char *k, PyObject *v) {
    if (!v) return -1;
    int rc = PyDict_SetItemString(d, k, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *tensor_to_py(const g4_tensor *t) {
    PyObject *d = PyDict_New(), *shape = PyList_New(t->n_dims);
    if (!d || !shape) goto fail;
    for (uint32_t j = 0; j < t->n_dims; j++) PyList_SET_ITEM(shape, j, PyLong_FromLongLong(t->ne[j]));
    const char *tn = g4_type_name(t->type);
    int rc = set_item(d, "shape", shape);   /* set_item takes the reference either way */
    shape = NULL;
    if (rc || set_item(d, "name", str_to_py(t->name)) ||
        set_item(d, "type", PyLong_FromUnsignedLong(t->type)) ||
        set_item(d, "type_name", PyUnicode_FromString(tn ? tn : "?")) ||
        set_item(d, "offset", PyLong_FromUnsignedLongLong(t->offset)) ||
        set_item(d, "nbytes", PyLong_FromUnsignedLongLong(t->nbytes)) ||
        set_item(d, "shard", PyLong_FromUnsignedLong(t->shard)))
        goto fail;
    return d;
fail:
    Py_XDECREF(shape);
    Py_XDECREF(d);
    return NULL;
}

static PyObject *build_result(const g4_gguf *g) {
    PyObject *res = PyDict_New(), *meta = PyDict_New(), *tensors = PyList_New((Py_ssize_t)g4_gguf_n_tensors(g));
    if (!res || !meta || !tensors) goto fail;
    for (uint64_t i = 0; i < g4_gguf_n_kv(g); i++) {
        const g4_gguf_kv *kv = g4_gguf_kv_at(g, i);
        PyObject *k = str_to_py(kv->key), *v = k ? value_to_py(kv) : NULL;
        int rc = v ? PyDict_SetItem(meta, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (rc) goto fail;
    }
    for (uint64_t i = 0; i < g4_gguf_n_tensors(g); i++) {
        PyObject *t = tensor_to_py(g4_gguf_tensor_at(g, i));
        if (!t) goto fail;
        PyList_SET_ITEM(tensors, (Py_ssize_t)i, t);
    }
    if (set_item(res, "path", PyUnicode_DecodeFSDefault(g4_gguf_path(g))) ||
        set_item(res, "version", PyLong_FromUnsignedLong(g4_gguf_version(g))) ||
        set_item(res, "alignment", PyLong_FromUnsignedLongLong(g4_gguf_alignment(g))) ||
        set_item(res, "file_size", PyLong_FromUnsignedLongLong(g4_gguf_file_size(g))) ||
        set_item(res, "data_offset", PyLong_FromUnsignedLongLong(g4_gguf_data_offset(g))))
        goto fail;
    PyObject *shards = PyList_New((Py_ssize_t)g4_gguf_n_shards(g));   /* the files of a split model */
    if (!shards) goto fail;
    for (uint32_t i = 0; i < g4_gguf_n_shards(g); i++) {
        PyObject *p = PyUnicode_DecodeFSDefault(g4_gguf_shard_path(g, i));
        if (!p) { Py_DECREF(shards); goto fail; }
        PyList_SET_ITEM(shards, (Py_ssize_t)i, p);
    }
    if (set_item(res, "shards", shards)) goto fail;
    int rc = set_item(res, "metadata", meta);
    meta = NULL;
    if (rc) goto fail;
    rc = set_item(res, "tensors", tensors);
    tensors = NULL;
    if (rc) goto fail;
    return res;
fail:
    Py_XDECREF(res);
    Py_XDECREF(meta);
    Py_XDECREF(tensors);
    return NULL;
}

static PyObject *py_gguf_read(PyObject *self, PyObject *args) {
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "O&:gguf_read", PyUnicode_FSConverter, &path_obj)) return NULL;
    const char *path = PyBytes_AS_STRING(path_obj);
    g4_err err;
    g4_gguf *g;
    Py_BEGIN_ALLOW_THREADS
    g = g4_gguf_open(path, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_obj);
    if (!g) return g4py_raise(&err);
    PyObject *res = build_result(g);
    g4_gguf_close(g);
    return res;
}

/* ---- quant helpers (for tests and tools) ---- */

static PyObject *py_type_info(PyObject *self, PyObject *args) {
    unsigned int type;
    if (!PyArg_ParseTuple(args, "I:type_info", &type)) return NULL;
    const char *name = g4_type_name(type);
    if (!name) return PyErr_Format(PyExc_ValueError, "unknown ggml type id %u", type);
    return Py_BuildValue("(snnO)", name, (Py_ssize_t)g4_blck_size(type), (Py_ssize_t)g4_type_size(type),
                         g4_type_supported(type) ? Py_True : Py_False);
}

/* Check `ok` (the type has the needed support) and that n fits its blocks;
 * 0 with an exception set otherwise. */
static int check_type_n(unsigned int type, Py_ssize_t n, int ok, const char *what) {
    if (!ok) {
        g4_err err;
        const char *name = g4_type_name(type);
        g4_err_set(&err, G4_ERR_UNSUPPORTED, "no %s for type %s (id %u)", what, name ? name : "?", type);
        g4py_raise(&err);
        return 0;
    }
    if (n < 0 || n % (Py_ssize_t)g4_blck_size(type)) {
        PyErr_Format(PyExc_ValueError, "%zd elements is not a multiple of the %s block size %zu",
                     n, g4_type_name(type), g4_blck_size(type));
        return 0;
    }
    return 1;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    unsigned int type;
    Py_buffer src;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "Iy*n:dequantize", &type, &src, &n)) return NULL;
    PyObject *out = NULL;
    if (!check_type_n(type, n, g4_type_can_dequantize(type), "dequantizer")) goto done;
    size_t need = g4_row_size(type, n);
    if ((size_t)src.len < need) {
        PyErr_Format(PyExc_ValueError, "%zd %s elements need %zu bytes, got %zd", n, g4_type_name(type), need, src.len);
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(float));
    if (!out) goto done;
    float *dst = (float *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    g4_dequantize_row(type, src.buf, dst, n);
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&src);
    return out;
}

static PyObject *py_quantize(PyObject *self, PyObject *args) {
    unsigned int type;
    Py_buffer src;
    if (!PyArg_ParseTuple(args, "Iy*:quantize", &type, &src)) return NULL;
    PyObject *out = NULL;
    Py_ssize_t n = src.len / (Py_ssize_t)sizeof(float);
    if (src.len % (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "quantize: data must be a float32 buffer");
        goto done;
    }
    if (!check_type_n(type, n, g4_type_can_quantize(type), "quantizer")) goto done;
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)g4_row_size(type, n));
    if (!out) goto done;
    void *dst = PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    g4_quantize_row(type, src.buf, dst, n);
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&src);
    return out;
}

static PyObject *py_matvec(PyObject *self, PyObject *args) {
    unsigned int type;
    Py_buffer w, x;
    Py_ssize_t rows, cols;
    if (!PyArg_ParseTuple(args, "Iy*nny*:matvec", &type, &w, &rows, &cols, &x)) return NULL;
    PyObject *out = NULL;
    if (!check_type_n(type, cols, g4_type_supported(type), "compute support")) goto done;
    size_t row = g4_row_size(type, cols), need;
    if (rows < 0 || __builtin_mul_overflow(row, (size_t)rows, &need) || (size_t)w.len < need ||
        x.len != cols * (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "matvec: need %zd x %zd %s weights and %zd float32 inputs",
                     rows, cols, g4_type_name(type), cols);
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, rows * (Py_ssize_t)sizeof(float));
    if (!out) goto done;
    float *y = (float *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    g4_matvec_rows(type, w.buf, cols, x.buf, y, 0, rows);
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&x);
    return out;
}

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    unsigned int type;
    Py_buffer w, x;
    Py_ssize_t rows, cols, nt;
    if (!PyArg_ParseTuple(args, "Iy*nny*n:matmul", &type, &w, &rows, &cols, &x, &nt)) return NULL;
    PyObject *out = NULL;
    void *xq = NULL;
    if (!check_type_n(type, cols, g4_type_supported(type), "compute support")) goto done;
    const uint32_t vdt = g4_vec_dot_type(type);
    size_t row = g4_row_size(type, cols), xrow = g4_row_size(vdt, cols), need, xneed;
    if (rows < 0 || nt < 1 || __builtin_mul_overflow(row, (size_t)rows, &need) || (size_t)w.len < need ||
        __builtin_mul_overflow((size_t)nt, (size_t)cols * sizeof(float), &xneed) || (size_t)x.len != xneed) {
        PyErr_Format(PyExc_ValueError, "matmul: need %zd x %zd %s weights and %zd x %zd float32 inputs",
                     rows, cols, g4_type_name(type), nt, cols);
        goto done;
    }
    xq = PyMem_Malloc(xrow * (size_t)nt + 64);
    out = PyBytes_FromStringAndSize(NULL, nt * rows * (Py_ssize_t)sizeof(float));
    if (!xq || !out) { Py_CLEAR(out); PyErr_NoMemory(); goto done; }
    float *y = (float *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < nt; t++)   /* activations quantized once, on the active ISA */
        g4_quantize_row(vdt, (const float *)x.buf + t * cols, (uint8_t *)xq + (size_t)t * xrow, cols);
    g4_matmul_rows_vq(type, w.buf, cols, xq, xrow, nt, y, rows, 0, rows);
    Py_END_ALLOW_THREADS
done:
    PyMem_Free(xq);
    PyBuffer_Release(&w);
    PyBuffer_Release(&x);
    return out;
}

/* repack(type, w, rows, cols, inverse=False) -> bytes */
static PyObject *py_repack(PyObject *self, PyObject *args) {
    unsigned int type;
    Py_buffer w;
    Py_ssize_t rows, cols;
    int inverse = 0;
    if (!PyArg_ParseTuple(args, "Iy*nn|p:repack", &type, &w, &rows, &cols, &inverse)) return NULL;
    PyObject *out = NULL;
    size_t need = g4_row_size(type, cols) * (size_t)(rows > 0 ? rows : 0);
    if (!g4_repack_supported(type, rows, cols) || (size_t)w.len != need) {
        PyErr_Format(PyExc_ValueError, "repack: %zd x %zd %s (%zd bytes) has no repacked form", rows, cols,
                     g4_type_name(type) ? g4_type_name(type) : "?", w.len);
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)need);
    if (!out) goto done;
    void *dst = PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    if (inverse) g4_unrepack(type, w.buf, rows, cols, dst);
    else g4_repack(type, w.buf, rows, cols, dst);
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&w);
    return out;
}

/* matmul_x8(type, wp, rows, cols, x, nt) -> bytes, wp from repack() */
static PyObject *py_matmul_x8(PyObject *self, PyObject *args) {
    unsigned int type;
    Py_buffer w, x;
    Py_ssize_t rows, cols, nt;
    if (!PyArg_ParseTuple(args, "Iy*nny*n:matmul_x8", &type, &w, &rows, &cols, &x, &nt)) return NULL;
    PyObject *out = NULL;
    void *xa = NULL;
    const size_t arow = g4_act_row_size(type, cols);
    if (!g4_repack_supported(type, rows, cols) || (size_t)w.len != g4_row_size(type, cols) * (size_t)rows ||
        nt < 1 || (size_t)x.len != (size_t)nt * (size_t)cols * sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "matmul_x8: need repacked %zd x %zd weights and %zd x %zd float32 inputs",
                     rows, cols, nt, cols);
        goto done;
    }
    xa = PyMem_Malloc(arow * (size_t)nt);
    out = PyBytes_FromStringAndSize(NULL, nt * rows * (Py_ssize_t)sizeof(float));
    if (!xa || !out) { Py_CLEAR(out); PyErr_NoMemory(); goto done; }
    float *y = (float *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < nt; t++) g4_quantize_act(type, (const float *)x.buf + t * cols, cols, (uint8_t *)xa + (size_t)t * arow);
    g4_matmul_rows_x8(type, w.buf, cols, xa, arow, nt, y, rows, 0, rows);
    Py_END_ALLOW_THREADS
done:
    PyMem_Free(xa);
    PyBuffer_Release(&w);
    PyBuffer_Release(&x);
    return out;
}

static PyObject *py_vec_dot_type(PyObject *self, PyObject *args) {
    unsigned int type;
    if (!PyArg_ParseTuple(args, "I:vec_dot_type", &type)) return NULL;
    return PyLong_FromUnsignedLong(g4_vec_dot_type(type));
}

/* ---- ISA selection ---- */

static PyObject *py_isa(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(g4_isa_name(g4_isa_active()));
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_isa", &name)) return NULL;
    int isa = g4_isa_from_name(name);
    if (isa < 0) return PyErr_Format(PyExc_ValueError, "unknown ISA %R (scalar, avx2, avxvnni, avx512, "
                                     "avx512vnni, neon, neondot)", PyTuple_GET_ITEM(args, 0));
    if (!g4_quant_set_isa(isa)) {
        g4_err err;
        g4_err_set(&err, G4_ERR_UNSUPPORTED, "ISA %s is not available on this CPU or build", name);
        return g4py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *py_isas(PyObject *self, PyObject *noargs) {
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < G4_ISA_COUNT; i++)
        if (PyDict_SetItemString(d, g4_isa_name(i), g4_isa_available(i) ? Py_True : Py_False) < 0) Py_CLEAR(d);
    return d;
}

PyMethodDef g4py_gguf_methods[] = {
    {"gguf_read", py_gguf_read, METH_VARARGS,
     "gguf_read(path) -> dict: header, metadata and tensor index of a GGUF file.\n"
     "Raises FileNotFoundError/OSError, GGUFError, UnsupportedError, LimitError."},
    {"type_info", py_type_info, METH_VARARGS,
     "type_info(type) -> (name, blck_size, type_size, supported) for a ggml type id."},
    {"dequantize", py_dequantize, METH_VARARGS,
     "dequantize(type, data, n) -> bytes: n float32 values decoded from `type` blocks."},
    {"quantize", py_quantize, METH_VARARGS,
     "quantize(type, data) -> bytes: float32 buffer encoded as `type` (ggml reference rounding)."},
    {"matvec", py_matvec, METH_VARARGS,
     "matvec(type, w, rows, cols, x) -> bytes: rows float32 dot products, the scalar reference\n"
     "(x quantized to g4_vec_dot_type(type), as llama.cpp does)."},
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(type, w, rows, cols, x, nt) -> bytes: nt x rows float32, token t row r at [t * rows + r];\n"
     "x (nt x cols float32) quantized once, then the tiled kernels of the active ISA."},
    {"repack", py_repack, METH_VARARGS,
     "repack(type, w, rows, cols, inverse=False) -> bytes: weights interleaved 8 rows at a time\n"
     "for the vectorized kernels (or back to GGUF order); ValueError when the type has no such form."},
    {"matmul_x8", py_matmul_x8, METH_VARARGS,
     "matmul_x8(type, wp, rows, cols, x, nt) -> bytes: as matmul, with weights from repack()."},
    {"vec_dot_type", py_vec_dot_type, METH_VARARGS,
     "vec_dot_type(type) -> int: the type activations are quantized to for `type` weights."},
    {"isa", py_isa, METH_NOARGS, "isa() -> str: the instruction set the kernels use now."},
    {"set_isa", py_set_isa, METH_VARARGS,
     "set_isa(name): use that ISA's kernels (tests, comparisons). ValueError for an unknown name,\n"
     "UnsupportedError when this CPU or build lacks it."},
    {"isas", py_isas, METH_NOARGS, "isas() -> {name: available} for every ISA name."},
    {NULL, NULL, 0, NULL},
};
