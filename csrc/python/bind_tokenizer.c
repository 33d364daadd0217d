/* bind_tokenizer.c - _core.Tokenizer over csrc/tokenizer/ (any GGUF with a
 * vocab, including vocab-only files) and _core.sample over csrc/sample/. */
#include "g4py.h"

#include <stdlib.h>
#include <string.h>

#include "../sample/sample.h"
#include "../tokenizer/tokenizer.h"

/* texts longer than this are encoded with the GIL released */
#define RELEASE_GIL_BYTES 4096

typedef struct {
    PyObject_HEAD
    g4_tokenizer *tok;
} TokenizerObject;

static int tokenizer_init(TokenizerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", NULL};
    PyObject *path_bytes = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&:Tokenizer", kwlist, PyUnicode_FSConverter, &path_bytes))
        return -1;
    const char *path = PyBytes_AS_STRING(path_bytes);
    g4_err err = {0};
    g4_tokenizer *t = NULL;
    Py_BEGIN_ALLOW_THREADS
    g4_gguf *g = g4_gguf_open(path, &err);
    if (g) {
        t = g4_tokenizer_from_gguf(g, &err);
        g4_gguf_close(g);
    }
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (!t) { g4py_raise(&err); return -1; }
    g4_tokenizer_free(self->tok);
    self->tok = t;
    return 0;
}

static void tokenizer_dealloc(TokenizerObject *self) {
    g4_tokenizer_free(self->tok);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(TokenizerObject *self) {
    if (self->tok) return 1;
    PyErr_SetString(PyExc_ValueError, "Tokenizer is not initialized");
    return 0;
}

static int check_id(TokenizerObject *self, long long id) {
    int32_t n = g4_tokenizer_n_vocab(self->tok);
    if (id >= 0 && id < n) return 1;
    PyErr_Format(PyExc_ValueError, "token id %lld is out of range [0, %d)", id, n);
    return 0;
}

static PyObject *tokenizer_encode(TokenizerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"text", "add_bos", "parse_special", NULL};
    PyObject *text;
    int add_bos = 1, parse_special = 0;
    if (!ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kw, "U|pp:encode", kwlist, &text, &add_bos, &parse_special))
        return NULL;
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(text, &len);
    if (!s) return NULL;
    size_t cap = (size_t)len + 16, n = 0;
    int32_t *ids = NULL;
    g4_err err = {0};
    g4_status st = G4_OK;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *grown = realloc(ids, cap * sizeof *ids);
        if (!grown) { free(ids); return PyErr_NoMemory(); }
        ids = grown;
        if (len > RELEASE_GIL_BYTES) {
            Py_BEGIN_ALLOW_THREADS
            st = g4_tokenizer_encode(self->tok, s, (size_t)len, add_bos, parse_special, ids, cap, &n, &err);
            Py_END_ALLOW_THREADS
        } else {
            st = g4_tokenizer_encode(self->tok, s, (size_t)len, add_bos, parse_special, ids, cap, &n, &err);
        }
        if (st || n <= cap) break;
        cap = n;   /* rare: more ids than bytes + 16 (byte fallback of spaces) */
    }
    if (st) { free(ids); return g4py_raise(&err); }
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *v = PyLong_FromLong(ids[i]);
        if (!v) { Py_CLEAR(list); break; }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    free(ids);
    return list;
}

static PyObject *tokenizer_decode(TokenizerObject *self, PyObject *arg) {
    if (!ready(self)) return NULL;
    PyObject *seq = PySequence_Fast(arg, "decode() expects a sequence of token ids");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int32_t *ids = malloc((size_t)(n ? n : 1) * sizeof *ids);
    if (!ids) { Py_DECREF(seq); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if ((v == -1 && PyErr_Occurred()) || !check_id(self, v)) {
            free(ids); Py_DECREF(seq); return NULL;
        }
        ids[i] = (int32_t)v;
    }
    Py_DECREF(seq);
    size_t need = g4_tokenizer_decode(self->tok, ids, (size_t)n, NULL, 0);
    char *buf = malloc(need ? need : 1);
    if (!buf) { free(ids); return PyErr_NoMemory(); }
    g4_tokenizer_decode(self->tok, ids, (size_t)n, buf, need);
    free(ids);
    PyObject *s = PyUnicode_DecodeUTF8(buf, (Py_ssize_t)need, "replace");
    free(buf);
    return s;
}

static PyObject *tokenizer_piece(TokenizerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"id", "prev", NULL};
    long long id;
    PyObject *prev_obj = Py_None;
    if (!ready(self) || !PyArg_ParseTupleAndKeywords(args, kw, "L|O:piece", kwlist, &id, &prev_obj) ||
        !check_id(self, id))
        return NULL;
    /* no prev: the piece as it appears inside a text (nothing stripped) */
    int32_t prev = INT32_MAX;
    if (prev_obj != Py_None) {
        long p = PyLong_AsLong(prev_obj);
        if (p == -1 && PyErr_Occurred()) return NULL;
        prev = p < -1 || p > INT32_MAX ? INT32_MAX : (int32_t)p;
    }
    char small[64];
    size_t need = g4_tokenizer_piece(self->tok, prev, (int32_t)id, small, sizeof small);
    if (need <= sizeof small) return PyBytes_FromStringAndSize(small, (Py_ssize_t)need);
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)need);
    if (b) g4_tokenizer_piece(self->tok, prev, (int32_t)id, PyBytes_AS_STRING(b), need);
    return b;
}

static PyObject *tokenizer_token(TokenizerObject *self, PyObject *arg) {
    long long id = PyLong_AsLongLong(arg);
    if ((id == -1 && PyErr_Occurred()) || !ready(self) || !check_id(self, id)) return NULL;
    size_t len;
    const char *s = g4_tokenizer_token(self->tok, (int32_t)id, &len);
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "surrogateescape");
}

static PyObject *tokenizer_find(TokenizerObject *self, PyObject *arg) {
    if (!ready(self)) return NULL;
    if (!PyUnicode_Check(arg)) { PyErr_SetString(PyExc_TypeError, "find() expects a str"); return NULL; }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &len);
    if (!s) return NULL;
    if ((size_t)len != strlen(s)) return PyLong_FromLong(-1);   /* embedded NUL */
    return PyLong_FromLong(g4_tokenizer_find(self->tok, s));
}

static PyObject *tokenizer_is_eog(TokenizerObject *self, PyObject *arg) {
    long long id = PyLong_AsLongLong(arg);
    if ((id == -1 && PyErr_Occurred()) || !ready(self) || !check_id(self, id)) return NULL;
    return PyBool_FromLong(g4_tokenizer_is_eog(self->tok, (int32_t)id));
}

static PyObject *tokenizer_is_control(TokenizerObject *self, PyObject *arg) {
    long long id = PyLong_AsLongLong(arg);
    if ((id == -1 && PyErr_Occurred()) || !ready(self) || !check_id(self, id)) return NULL;
    return PyBool_FromLong(g4_tokenizer_is_control(self->tok, (int32_t)id));
}

static PyObject *tokenizer_token_type(TokenizerObject *self, PyObject *arg) {
    long long id = PyLong_AsLongLong(arg);
    if ((id == -1 && PyErr_Occurred()) || !ready(self) || !check_id(self, id)) return NULL;
    return PyLong_FromLong(g4_tokenizer_token_type(self->tok, (int32_t)id));
}

static PyMethodDef tokenizer_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))tokenizer_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]\n"
     "Token ids of `text` (llama.cpp SPM / Gemma 4 BPE). parse_special maps control-token\n"
     "strings such as '<end_of_turn>' to their ids."},
    {"decode", (PyCFunction)tokenizer_decode, METH_O,
     "decode(ids: list[int]) -> str\nText of the ids (invalid UTF-8 replaced by U+FFFD); control\n"
     "tokens render as nothing. ValueError names an out-of-range id."},
    {"piece", (PyCFunction)(void (*)(void))tokenizer_piece, METH_VARARGS | METH_KEYWORDS,
     "piece(id: int, prev: int | None = None) -> bytes\nBytes one token adds to the text after `prev`\n"
     "(-1: start of text, where the SPM space prefix is dropped; None: mid-text)."},
    {"token", (PyCFunction)tokenizer_token, METH_O, "token(id: int) -> str\nThe raw vocabulary string."},
    {"find", (PyCFunction)tokenizer_find, METH_O, "find(piece: str) -> int\nId of an exact token string, or -1."},
    {"is_eog", (PyCFunction)tokenizer_is_eog, METH_O, "is_eog(id: int) -> bool\nTrue for end-of-generation tokens."},
    {"is_control", (PyCFunction)tokenizer_is_control, METH_O, "is_control(id: int) -> bool"},
    {"token_type", (PyCFunction)tokenizer_token_type, METH_O,
     "token_type(id: int) -> int\nGGUF token type: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte."},
    {NULL, NULL, 0, NULL},
};

static PyObject *get_n_vocab(TokenizerObject *s, void *c) { return ready(s) ? PyLong_FromLong(g4_tokenizer_n_vocab(s->tok)) : NULL; }
static PyObject *get_bos(TokenizerObject *s, void *c) { return ready(s) ? PyLong_FromLong(g4_tokenizer_bos(s->tok)) : NULL; }
static PyObject *get_eos(TokenizerObject *s, void *c) { return ready(s) ? PyLong_FromLong(g4_tokenizer_eos(s->tok)) : NULL; }
static PyObject *get_unk(TokenizerObject *s, void *c) { return ready(s) ? PyLong_FromLong(g4_tokenizer_unk(s->tok)) : NULL; }
static PyObject *get_add_bos(TokenizerObject *s, void *c) { return ready(s) ? PyBool_FromLong(g4_tokenizer_add_bos(s->tok)) : NULL; }
static PyObject *get_add_space_prefix(TokenizerObject *s, void *c) {
    return ready(s) ? PyBool_FromLong(g4_tokenizer_add_space_prefix(s->tok)) : NULL;
}
static PyObject *get_model(TokenizerObject *s, void *c) { return ready(s) ? PyUnicode_FromString(g4_tokenizer_model(s->tok)) : NULL; }

static PyGetSetDef tokenizer_getset[] = {
    {"n_vocab", (getter)get_n_vocab, NULL, "number of tokens", NULL},
    {"bos_id", (getter)get_bos, NULL, "BOS id, -1 when none", NULL},
    {"eos_id", (getter)get_eos, NULL, "EOS id, -1 when none", NULL},
    {"unk_id", (getter)get_unk, NULL, "unknown-token id, -1 when none", NULL},
    {"add_bos", (getter)get_add_bos, NULL, "whether the vocab asks for BOS (tokenizer.ggml.add_bos_token)", NULL},
    {"add_space_prefix", (getter)get_add_space_prefix, NULL, "SPM space prefix (tokenizer.ggml.add_space_prefix)", NULL},
    {"model", (getter)get_model, NULL, "tokenizer.ggml.model: 'llama' or 'gemma4'", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TokenizerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gemma4stack._core.Tokenizer",
    .tp_basicsize = sizeof(TokenizerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Tokenizer(path)\n\nThe vocabulary of a GGUF file (tokenizer.ggml.* keys; vocab-only files work).\n"
              "Raises FileNotFoundError/OSError, GGUFError for malformed metadata, UnsupportedError\n"
              "for tokenizer models other than 'llama' (SentencePiece) and 'gemma4'.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tokenizer_init,
    .tp_dealloc = (destructor)tokenizer_dealloc,
    .tp_methods = tokenizer_methods,
    .tp_getset = tokenizer_getset,
};

/* ---- sampling ---------------------------------------------------------- */

static PyObject *py_sample(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"logits", "temperature", "top_k", "top_p", "seed", "n", NULL};
    PyObject *obj, *n_obj = Py_None;
    float temperature = 1.0f, top_p = 1.0f;
    int top_k = 0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|fifKO:sample", kwlist, &obj, &temperature, &top_k,
                                     &top_p, &seed, &n_obj))
        return NULL;
    Py_ssize_t draws;
    if (g4py_draws_arg(n_obj, &draws) < 0) return NULL;
    int32_t n;
    float *copy = g4py_logits_copy(obj, &n);   /* g4_sample may modify its input */
    if (!copy) return NULL;

    g4_sampler s;
    g4_sampler_init(&s, temperature, top_k, top_p, (uint64_t)seed);
    int32_t *out = malloc((size_t)(draws ? draws : 1) * sizeof *out);
    int32_t failed = !out;
    if (out) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < draws && !failed; i++) {
            out[i] = g4_sample(&s, copy, n);
            failed = out[i] < 0;
        }
        Py_END_ALLOW_THREADS
    }
    g4_sampler_free(&s);
    free(copy);
    if (failed) { free(out); return PyErr_NoMemory(); }
    PyObject *res;
    if (n_obj == Py_None) {
        res = PyLong_FromLong(out[0]);
    } else {
        res = g4py_id_list(out, draws);
    }
    free(out);
    return res;
}

PyMethodDef g4py_tokenizer_methods[] = {
    {"sample", (PyCFunction)(void (*)(void))py_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(logits, temperature=1.0, top_k=0, top_p=1.0, seed=0, n=None) -> int | list[int]\n"
     "Draw a token id from float32 logits[n_vocab] (csrc/sample): temperature <= 0 is greedy,\n"
     "top_k <= 0 and top_p >= 1 disable the filters. With n, return n draws of one seeded sampler."},
    {NULL, NULL, 0, NULL},
};

int g4py_tokenizer_register(PyObject *module) {
    if (PyType_Ready(&TokenizerType) < 0) return -1;
    Py_INCREF(&TokenizerType);
    if (PyModule_AddObject(module, "Tokenizer", (PyObject *)&TokenizerType) < 0) {
        Py_DECREF(&TokenizerType);
        return -1;
    }
    return 0;
}
