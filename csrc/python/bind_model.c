/* bind_model.c - _core.Model and _core.Generation over csrc/model/.
 *
 * Thin: argument conversion, GIL release around every C call that touches
 * the weights, errors through g4py_raise. A per-model lock serializes C
 * calls (g4_model_forward is one-at-a-time per model) and lets close()
 * wait for a running step. The KV cache belongs to whoever last used it:
 * each forward/reset/generate_iter bumps an epoch under the lock, and a
 * Generation whose epoch is stale refuses to continue instead of decoding
 * on top of someone else's cache.
 */
#include "g4py.h"

#include <pythread.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/engine.h"
#include "../model/model.h"
#include "../tokenizer/tokenizer.h"

typedef struct {
    PyObject_HEAD
    g4_model *m;               /* NULL once closed */
    PyThread_type_lock lock;
    uint64_t epoch;            /* read and written only under lock */
} ModelObject;

typedef struct {
    PyObject_HEAD
    ModelObject *model;        /* strong reference */
    g4_gen *gen;               /* NULL once closed */
    PyObject *mask_fn;         /* None or a callable: () -> uint32 mask | None, before each sample */
    uint64_t epoch;
    g4_gen_stats closed_stats; /* stats as they were at close() */
} GenObject;

static PyTypeObject ModelType;
static PyTypeObject GenType;

/* ------------------------------------------------------------- locking */

/* Take the model lock with the GIL released; fails (ValueError) when closed. */
static int lock_model(ModelObject *self) {
    if (!self->lock) { PyErr_SetString(PyExc_ValueError, "the model is not loaded"); return -1; }
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    if (!self->m) {
        PyThread_release_lock(self->lock);
        PyErr_SetString(PyExc_ValueError, "the model is closed");
        return -1;
    }
    return 0;
}

static void unlock_model(ModelObject *self) { PyThread_release_lock(self->lock); }

/* list/sequence of ints -> malloc'd int32 array (ValueError outside int32) */
static int32_t *ids_from_seq(PyObject *seq, Py_ssize_t *n_out) {
    /* fast path: a contiguous int32 buffer (numpy.int32 array, array('i')) */
    if (PyObject_CheckBuffer(seq)) {
        Py_buffer view;
        if (PyObject_GetBuffer(seq, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) == 0) {
            const char *fmt = view.format ? view.format : "B";
            if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
            if (view.itemsize == 4 && (fmt[0] == 'i' || fmt[0] == 'l') && fmt[1] == '\0') {
                Py_ssize_t n = view.len / 4;
                int32_t *ids = PyMem_Malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
                if (ids) memcpy(ids, view.buf, (size_t)view.len);
                PyBuffer_Release(&view);
                if (!ids) { PyErr_NoMemory(); return NULL; }
                *n_out = n;
                return ids;
            }
            PyBuffer_Release(&view);
        } else {
            PyErr_Clear();
        }
    }
    PyObject *fast = PySequence_Fast(seq, "token ids must be a sequence of ints");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    int32_t *ids = PyMem_Malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (!ids) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) { PyMem_Free(ids); Py_DECREF(fast); return NULL; }
        if (v < INT32_MIN || v > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "token id %ld (at index %zd) is out of range", v, i);
            PyMem_Free(ids); Py_DECREF(fast); return NULL;
        }
        ids[i] = (int32_t)v;
    }
    Py_DECREF(fast);
    *n_out = n;
    return ids;
}

/* ---------------------------------------------------------------- Model */

static int Model_init(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "n_ctx", "n_threads", "kv_type", NULL};
    PyObject *path_bytes = NULL;
    g4_model_params p = {0, 0, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|iiz:Model", kwlist, PyUnicode_FSConverter, &path_bytes,
                                     &p.n_ctx, &p.n_threads, &p.kv_type))
        return -1;
    if (self->m) { Py_DECREF(path_bytes); PyErr_SetString(PyExc_RuntimeError, "Model is already loaded"); return -1; }
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        Py_DECREF(path_bytes); PyErr_NoMemory(); return -1;
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    g4_err err;
    g4_model *m;
    Py_BEGIN_ALLOW_THREADS
    m = g4_model_load(path, &p, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (!m) { g4py_raise(&err); return -1; }
    self->m = m;
    return 0;
}

static void Model_dealloc(ModelObject *self) {
    g4_model_free(self->m);   /* Generations hold a reference, so none is running */
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Model_close(ModelObject *self, PyObject *unused) {
    if (!self->lock || !self->m) Py_RETURN_NONE;
    if (lock_model(self) < 0) { PyErr_Clear(); Py_RETURN_NONE; }
    g4_model *m = self->m;
    self->m = NULL;
    unlock_model(self);
    Py_BEGIN_ALLOW_THREADS
    g4_model_free(m);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Model_tokenize(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"text", "add_bos", "parse_special", NULL};
    const char *text;
    Py_ssize_t len;
    int add_bos = 1, parse_special = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s#|pp:tokenize", kwlist, &text, &len, &add_bos, &parse_special))
        return NULL;
    if (lock_model(self) < 0) return NULL;
    const g4_tokenizer *t = g4_model_tokenizer(self->m);
    size_t cap = (size_t)len + 8, n = 0;
    int32_t *ids = NULL;
    g4_status st = G4_OK;
    g4_err err;
    Py_BEGIN_ALLOW_THREADS
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *grown = realloc(ids, sizeof(int32_t) * cap);
        if (!grown) { st = g4_err_set(&err, G4_ERR_NOMEM, "tokenize: out of memory"); break; }
        ids = grown;
        st = g4_tokenizer_encode(t, text, (size_t)len, add_bos, parse_special, ids, cap, &n, &err);
        if (st != G4_OK || n <= cap) break;
        cap = n;
    }
    Py_END_ALLOW_THREADS
    unlock_model(self);
    if (st != G4_OK) { free(ids); return g4py_raise(&err); }
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out && i < n; i++) PyList_SET_ITEM(out, (Py_ssize_t)i, PyLong_FromLong(ids[i]));
    free(ids);
    return out;
}

static PyObject *Model_detokenize(ModelObject *self, PyObject *arg) {
    Py_ssize_t n;
    int32_t *ids = ids_from_seq(arg, &n);
    if (!ids) return NULL;
    if (lock_model(self) < 0) { PyMem_Free(ids); return NULL; }
    const g4_tokenizer *t = g4_model_tokenizer(self->m);
    size_t need = g4_tokenizer_decode(t, ids, (size_t)n, NULL, 0);
    char *buf = PyMem_Malloc(need + 1);
    if (buf) g4_tokenizer_decode(t, ids, (size_t)n, buf, need + 1);
    unlock_model(self);
    PyMem_Free(ids);
    if (!buf) return PyErr_NoMemory();
    PyObject *s = PyUnicode_DecodeUTF8(buf, (Py_ssize_t)need, "replace");
    PyMem_Free(buf);
    return s;
}

static PyObject *Model_piece(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"id", "prev", NULL};
    int id, prev = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|i:piece", kwlist, &id, &prev)) return NULL;
    if (lock_model(self) < 0) return NULL;
    const g4_tokenizer *t = g4_model_tokenizer(self->m);
    if (id < 0 || id >= g4_tokenizer_n_vocab(t)) {
        int nv = g4_tokenizer_n_vocab(t);
        unlock_model(self);
        return PyErr_Format(PyExc_ValueError, "token id %d is outside the vocabulary 0..%d", id, nv - 1);
    }
    char small[64];
    size_t need = g4_tokenizer_piece(t, prev, id, small, sizeof small);
    PyObject *out;
    if (need <= sizeof small) {
        out = PyBytes_FromStringAndSize(small, (Py_ssize_t)need);
    } else {
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)need);
        if (out) g4_tokenizer_piece(t, prev, id, PyBytes_AS_STRING(out), need);
    }
    unlock_model(self);
    return out;
}

/* A contiguous writable float32 buffer of at least `need` floats, or -1 with an exception. */
static int get_f32_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t need, const char *what, int writable) {
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    if (view->itemsize != 4 || fmt[0] != 'f' || fmt[1] != '\0') {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous%s float32 buffer", what, writable ? " writable" : "");
        return -1;
    }
    if (need >= 0 && view->len / 4 < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd floats, need %zd", what, view->len / 4, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *Model_forward(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tokens", "pos", "logits_out", "all_logits", "hidden_out", NULL};
    PyObject *tokens_obj, *out_obj, *hid_obj = Py_None;
    int pos, all_logits = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiO|pO:forward", kwlist, &tokens_obj, &pos, &out_obj, &all_logits,
                                     &hid_obj))
        return NULL;
    Py_ssize_t n;
    int32_t *ids = ids_from_seq(tokens_obj, &n);
    if (!ids) return NULL;
    Py_buffer view, hview;
    if (get_f32_buffer(out_obj, &view, -1, "logits_out", 1) < 0) { PyMem_Free(ids); return NULL; }
    if (lock_model(self) < 0) { PyBuffer_Release(&view); PyMem_Free(ids); return NULL; }
    const Py_ssize_t rows = all_logits ? n : 1;
    const Py_ssize_t need = rows * (Py_ssize_t)g4_model_n_vocab(self->m);
    if (view.len / 4 < need) {
        unlock_model(self); PyBuffer_Release(&view); PyMem_Free(ids);
        return PyErr_Format(PyExc_ValueError, "logits_out holds %zd floats, need %zd", view.len / 4, need);
    }
    int has_hidden = hid_obj != Py_None;
    if (has_hidden) {
        /* the final-normed hidden state of each logits row (model.h g4_model_set_hidden_out) */
        const int32_t width = g4_model_set_hidden_out(self->m, NULL);
        if (!width) {
            unlock_model(self); PyBuffer_Release(&view); PyMem_Free(ids);
            return PyErr_Format(PyExc_ValueError, "hidden_out: architecture %s has no hidden-state output",
                                g4_model_arch(self->m));
        }
        if (get_f32_buffer(hid_obj, &hview, rows * width, "hidden_out", 1) < 0) {
            unlock_model(self); PyBuffer_Release(&view); PyMem_Free(ids);
            return NULL;
        }
        g4_model_set_hidden_out(self->m, hview.buf);
    }
    if (n > INT32_MAX) n = INT32_MAX;   /* the C side reports the context limit */
    self->epoch++;
    g4_err err;
    g4_status st;
    Py_BEGIN_ALLOW_THREADS
    st = g4_model_forward(self->m, ids, (int32_t)n, pos, view.buf, all_logits, &err);
    Py_END_ALLOW_THREADS
    if (has_hidden) {
        g4_model_set_hidden_out(self->m, NULL);
        PyBuffer_Release(&hview);
    }
    unlock_model(self);
    PyBuffer_Release(&view);
    PyMem_Free(ids);
    if (st != G4_OK) return g4py_raise(&err);
    Py_RETURN_NONE;
}

/* assistant.mtp_step(target, tokens, pos, h, logits_out, h_out): one MTP draft
 * step (model.h g4_mtp_step) over the target's single-sequence cache. */
static PyObject *Model_mtp_step(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"target", "tokens", "pos", "h", "logits_out", "h_out", NULL};
    PyObject *target_obj, *tokens_obj, *h_obj, *lg_obj, *ho_obj;
    int pos;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OiOOO:mtp_step", kwlist, &ModelType, &target_obj, &tokens_obj,
                                     &pos, &h_obj, &lg_obj, &ho_obj))
        return NULL;
    ModelObject *tgt = (ModelObject *)target_obj;
    if (tgt == self) return PyErr_Format(PyExc_ValueError, "mtp_step: the target must be another model");
    if (!self->m || !tgt->m) return PyErr_Format(PyExc_ValueError, "mtp_step: a model is closed");
    const int32_t hb = g4_mtp_n_embd_backbone(self->m);
    if (!hb) return PyErr_Format(PyExc_ValueError, "mtp_step: %s is not a gemma4-assistant", g4_model_arch(self->m));
    Py_ssize_t n;
    int32_t *ids = ids_from_seq(tokens_obj, &n);
    if (!ids) return NULL;
    if (n <= 0 || n > 4096) { PyMem_Free(ids); return PyErr_Format(PyExc_ValueError, "mtp_step: 1..4096 rows"); }
    Py_buffer hv, lv, ov;
    if (get_f32_buffer(h_obj, &hv, n * hb, "h", 0) < 0) { PyMem_Free(ids); return NULL; }
    if (get_f32_buffer(lg_obj, &lv, n * (Py_ssize_t)g4_model_n_vocab(self->m), "logits_out", 1) < 0) {
        PyBuffer_Release(&hv); PyMem_Free(ids); return NULL;
    }
    if (get_f32_buffer(ho_obj, &ov, n * hb, "h_out", 1) < 0) {
        PyBuffer_Release(&hv); PyBuffer_Release(&lv); PyMem_Free(ids); return NULL;
    }
    int32_t *ps = PyMem_Malloc(sizeof(int32_t) * 2 * (size_t)n);
    g4_status st = G4_OK;
    g4_err err;
    if (!ps) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) { ps[i] = pos; ps[n + i] = 0; }
    if (lock_model(tgt) < 0) goto done;
    if (lock_model(self) < 0) { unlock_model(tgt); goto done; }
    g4_kvcache *kv = g4_model_kv1(tgt->m);
    if (!kv) {
        st = g4_err_set(&err, G4_ERR_INVALID, "mtp_step: run the target first (its cache is empty)");
    } else {
        const g4_mtp_batch b = { (int32_t)n, ids, ps, ps + n, hv.buf };
        Py_BEGIN_ALLOW_THREADS
        st = g4_mtp_step(self->m, tgt->m, &b, kv, lv.buf, ov.buf, &err);
        Py_END_ALLOW_THREADS
    }
    unlock_model(self);
    unlock_model(tgt);
done:
    PyMem_Free(ps);
    PyBuffer_Release(&hv); PyBuffer_Release(&lv); PyBuffer_Release(&ov);
    PyMem_Free(ids);
    if (PyErr_Occurred()) return NULL;
    if (st != G4_OK) return g4py_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *Model_reset(ModelObject *self, PyObject *unused) {
    if (lock_model(self) < 0) return NULL;
    self->epoch++;   /* the cache is overwritten from position 0 by the next user */
    unlock_model(self);
    Py_RETURN_NONE;
}

static PyObject *Model_memory(ModelObject *self, PyObject *unused) {
    if (lock_model(self) < 0) return NULL;
    g4_model_memory mem = g4_model_memory_usage(self->m);
    unlock_model(self);
    return Py_BuildValue("{s:K,s:K,s:K}", "weights_bytes", (unsigned long long)mem.weights_bytes,
                         "kv_bytes", (unsigned long long)mem.kv_bytes,
                         "scratch_bytes", (unsigned long long)mem.scratch_bytes);
}

static PyObject *Model_generate_iter(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"prompt_ids", "max_tokens", "temperature", "top_k", "top_p", "seed",
                             "n_keep", "epoch", "min_p", "repeat_penalty", "repeat_last_n",
                             "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
                             "mask_fn", NULL};
    PyObject *prompt_obj, *bias = Py_None, *mask_fn = Py_None;
    g4_gen_params p = { .max_tokens = 128, .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 0,
                        .repeat_penalty = 1.0f, .repeat_last_n = 64 };
    unsigned long long seed = 0, want_epoch = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ififKiKffiffOiO:generate_iter", kwlist, &prompt_obj,
                                     &p.max_tokens, &p.temperature, &p.top_k, &p.top_p, &seed, &p.n_keep,
                                     &want_epoch, &p.min_p, &p.repeat_penalty, &p.repeat_last_n,
                                     &p.presence_penalty, &p.frequency_penalty, &bias, &p.n_logprobs,
                                     &mask_fn))
        return NULL;
    p.seed = seed;
    if (mask_fn != Py_None && !PyCallable_Check(mask_fn)) {
        PyErr_SetString(PyExc_TypeError, "mask_fn must be None or a callable returning a uint32 mask or None");
        return NULL;
    }
    g4py_sample_args sa;
    memset(&sa, 0, sizeof sa);
    if (g4py_sample_args_bias(&sa, bias) < 0) return NULL;
    p.bias_ids = sa.bias_ids;
    p.bias_vals = sa.bias_vals;
    p.n_bias = sa.p.n_bias;
    Py_ssize_t n;
    int32_t *ids = ids_from_seq(prompt_obj, &n);
    if (!ids) { g4py_sample_args_free(&sa); return NULL; }
    if (n > INT32_MAX) n = INT32_MAX;
    if (lock_model(self) < 0) { PyMem_Free(ids); g4py_sample_args_free(&sa); return NULL; }
    if (p.n_keep > 0 && self->epoch != want_epoch) {
        /* someone used the cache since the caller looked: nothing to reuse */
        unlock_model(self);
        PyMem_Free(ids);
        g4py_sample_args_free(&sa);
        PyErr_SetString(PyExc_RuntimeError, "generate_iter: n_keep given but the KV cache changed "
                        "since `epoch` (another call used the model)");
        return NULL;
    }
    g4_err err;
    g4_gen *gen = g4_gen_create(self->m, ids, (int32_t)n, &p, &err);   /* copies the bias */
    uint64_t epoch = ++self->epoch;
    unlock_model(self);
    PyMem_Free(ids);
    g4py_sample_args_free(&sa);
    if (!gen) return g4py_raise(&err);
    GenObject *g = PyObject_New(GenObject, &GenType);
    if (!g) { g4_gen_free(gen); return NULL; }
    Py_INCREF(self);
    g->model = self;
    g->gen = gen;
    Py_INCREF(mask_fn);
    g->mask_fn = mask_fn;
    g->epoch = epoch;
    memset(&g->closed_stats, 0, sizeof g->closed_stats);
    return (PyObject *)g;
}

#define MODEL_INT_GETTER(name, expr)                                              \
    static PyObject *Model_get_##name(ModelObject *self, void *c) {               \
        if (lock_model(self) < 0) return NULL;                                    \
        long v = (long)(expr);                                                    \
        unlock_model(self);                                                       \
        return PyLong_FromLong(v);                                                \
    }
MODEL_INT_GETTER(n_vocab, g4_model_n_vocab(self->m))
MODEL_INT_GETTER(n_ctx, g4_model_n_ctx(self->m))
MODEL_INT_GETTER(n_threads, g4_model_n_threads(self->m))
MODEL_INT_GETTER(bos_id, g4_tokenizer_bos(g4_model_tokenizer(self->m)))
MODEL_INT_GETTER(eos_id, g4_tokenizer_eos(g4_model_tokenizer(self->m)))
MODEL_INT_GETTER(add_bos, g4_tokenizer_add_bos(g4_model_tokenizer(self->m)))

static PyObject *Model_get_arch(ModelObject *self, void *c) {
    if (lock_model(self) < 0) return NULL;
    PyObject *s = PyUnicode_FromString(g4_model_arch(self->m));
    unlock_model(self);
    return s;
}

static PyObject *Model_get_closed(ModelObject *self, void *c) { return PyBool_FromLong(self->m == NULL); }

static PyObject *Model_get_epoch(ModelObject *self, void *c) {
    if (lock_model(self) < 0) return NULL;
    unsigned long long e = self->epoch;
    unlock_model(self);
    return PyLong_FromUnsignedLongLong(e);
}

static PyObject *Model_is_eog(ModelObject *self, PyObject *arg) {
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    if (lock_model(self) < 0) return NULL;
    int r = id >= INT32_MIN && id <= INT32_MAX && g4_tokenizer_is_eog(g4_model_tokenizer(self->m), (int32_t)id);
    unlock_model(self);
    return PyBool_FromLong(r);
}

static PyObject *Model_kv_keep(ModelObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (lock_model(self) < 0) return NULL;
    int32_t k = g4_model_kv_keep(self->m, n < 0 ? 0 : n > INT32_MAX ? INT32_MAX : (int32_t)n);
    unlock_model(self);
    return PyLong_FromLong(k);
}

/* The raw vocabulary string of a token (control tokens included), or None. */
static PyObject *Model_token_text(ModelObject *self, PyObject *arg) {
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    if (lock_model(self) < 0) return NULL;
    const g4_tokenizer *t = g4_model_tokenizer(self->m);
    size_t len = 0;
    const char *s = id >= 0 && id < g4_tokenizer_n_vocab(t) ? g4_tokenizer_token(t, (int32_t)id, &len) : NULL;
    PyObject *out = s ? PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace") : (Py_INCREF(Py_None), Py_None);
    unlock_model(self);
    return out;
}

/* A string metadata value of the GGUF (e.g. tokenizer.chat_template), or None when absent. */
static PyObject *Model_gguf_str(ModelObject *self, PyObject *arg) {
    const char *key = PyUnicode_AsUTF8(arg);
    if (!key) return NULL;
    if (lock_model(self) < 0) return NULL;
    const g4_gguf_kv *kv = g4_gguf_find(g4_model_gguf(self->m), key);
    g4_str v;
    PyObject *out = kv && g4_gguf_kv_str(kv, &v) ? PyUnicode_DecodeUTF8(v.ptr, (Py_ssize_t)v.len, "replace")
                                                 : (Py_INCREF(Py_None), Py_None);
    unlock_model(self);
    return out;
}

static PyMethodDef Model_methods[] = {
    {"tokenize", (PyCFunction)(void (*)(void))Model_tokenize, METH_VARARGS | METH_KEYWORDS,
     "tokenize(text, add_bos=True, parse_special=False) -> list[int]"},
    {"detokenize", (PyCFunction)Model_detokenize, METH_O,
     "detokenize(ids) -> str (invalid UTF-8 replaced by U+FFFD)"},
    {"piece", (PyCFunction)(void (*)(void))Model_piece, METH_VARARGS | METH_KEYWORDS,
     "piece(id, prev=-1) -> bytes: the text bytes of one token after `prev` (may be a partial UTF-8 sequence)"},
    {"forward", (PyCFunction)(void (*)(void))Model_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(tokens, pos, logits_out, all_logits=False, hidden_out=None): run tokens at positions pos.. "
     "(GIL released);\nlogits_out: writable float32 buffer of n_vocab (or len(tokens) * n_vocab with "
     "all_logits) floats;\nhidden_out (gemma4 only): float32 [rows][embedding_length], each logits row's "
     "final-normed hidden state (the MTP assistant's input)"},
    {"generate_iter", (PyCFunction)(void (*)(void))Model_generate_iter, METH_VARARGS | METH_KEYWORDS,
     "generate_iter(prompt_ids, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95, seed=0, n_keep=0,\n"
     "              epoch=0, min_p=0, repeat_penalty=1, repeat_last_n=64, presence_penalty=0,\n"
     "              frequency_penalty=0, logit_bias=None, logprobs=0, mask_fn=None) -> Generation\n"
     "The sampler chain of csrc/sample/sample.h; the penalties count the generated tokens.\n"
     "logit_bias: {token id: bias}. logprobs: keep the top n (0..20) log-probabilities of each\n"
     "step (Generation.logprobs()). mask_fn: called before each sample, after the forward pass\n"
     "(which runs with the GIL released, so a mask computed in another thread overlaps it):\n"
     "returns None (no constraint) or a uint32 array of ceil(n_vocab/32) words, bit i%32 of\n"
     "word i/32 set = token i allowed.\n"
     "An iterator of generated token ids; each step runs with the GIL released. The prompt starts at\n"
     "position 0; with n_keep > 0 its first n_keep tokens are taken as already in the KV cache, which\n"
     "must not have been touched since `epoch` (the value of Model.epoch after the generation that\n"
     "left them there); otherwise RuntimeError."},
    {"mtp_step", (PyCFunction)(void (*)(void))Model_mtp_step, METH_VARARGS | METH_KEYWORDS,
     "mtp_step(target, tokens, pos, h, logits_out, h_out): one Gemma 4 MTP draft step of this "
     "gemma4-assistant over the target's single-sequence KV cache (positions 0..pos-1); rows: "
     "tokens[i] at position pos with hidden h[i] (float32 [n][n_embd_backbone]) -> logits_out "
     "[n][n_vocab], h_out [n][n_embd_backbone]"},
    {"reset", (PyCFunction)Model_reset, METH_NOARGS, "Forget the KV cache (invalidates running generations)."},
    {"memory", (PyCFunction)Model_memory, METH_NOARGS, "memory() -> dict(weights_bytes, kv_bytes, scratch_bytes)"},
    {"is_eog", (PyCFunction)Model_is_eog, METH_O, "is_eog(id) -> bool: generation stops at this token"},
    {"kv_keep", (PyCFunction)Model_kv_keep, METH_O,
     "kv_keep(n) -> int: how many of the first n cached positions a generation can reuse (n or fewer:\n"
     "a sliding-window ring buffer may have overwritten what position n looks back at)"},
    {"token_text", (PyCFunction)Model_token_text, METH_O,
     "token_text(id) -> str | None: the token's vocabulary string (control tokens included)"},
    {"gguf_str", (PyCFunction)Model_gguf_str, METH_O,
     "gguf_str(key) -> str | None: a string metadata value of the GGUF, None when absent or not a string"},
    {"close", (PyCFunction)Model_close, METH_NOARGS, "Free the weights mapping, KV cache and threads."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Model_getset[] = {
    {"n_vocab", (getter)Model_get_n_vocab, NULL, "vocabulary size (logits per token)", NULL},
    {"n_ctx", (getter)Model_get_n_ctx, NULL, "KV cache length in tokens", NULL},
    {"n_threads", (getter)Model_get_n_threads, NULL, "threads used by the forward pass", NULL},
    {"bos_id", (getter)Model_get_bos_id, NULL, "beginning-of-sequence id, -1 when none", NULL},
    {"eos_id", (getter)Model_get_eos_id, NULL, "end-of-sequence id, -1 when none", NULL},
    {"add_bos", (getter)Model_get_add_bos, NULL, "1 when the vocab prepends BOS by default", NULL},
    {"arch", (getter)Model_get_arch, NULL, "general.architecture", NULL},
    {"closed", (getter)Model_get_closed, NULL, "True after close()", NULL},
    {"epoch", (getter)Model_get_epoch, NULL,
     "KV cache owner counter: changes whenever forward/reset/generate_iter takes the cache", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gemma4stack._core.Model",
    .tp_doc = "Model(path, n_ctx=0, n_threads=0): a GGUF model loaded by the C core.\n"
              "n_ctx <= 0: the trained context capped at 4096; n_threads <= 0: physical cores.",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

/* ----------------------------------------------------------- Generation */

static void Gen_dealloc(GenObject *self) {
    g4_gen_free(self->gen);
    Py_XDECREF(self->mask_fn);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Gen_next(GenObject *self) {
    if (!self->gen) return NULL;   /* closed: StopIteration */
    ModelObject *mo = self->model;
    if (lock_model(mo) < 0) return NULL;
    if (mo->epoch != self->epoch) {
        unlock_model(mo);
        PyErr_SetString(PyExc_RuntimeError,
                        "the model was used by another call during this generation (its KV cache was overwritten)");
        return NULL;
    }
    int32_t tok;
    g4_err err;
    g4_status st;
    if (self->mask_fn == Py_None) {
        Py_BEGIN_ALLOW_THREADS
        st = g4_gen_next(self->gen, &tok, &err);
        Py_END_ALLOW_THREADS
        unlock_model(mo);
        if (st != G4_OK) return g4py_raise(&err);
        if (tok < 0) return NULL;      /* finished: StopIteration */
        return PyLong_FromLong(tok);
    }
    /* constrained: forward, then the mask (Python, GIL held), then the sample */
    int done;
    Py_BEGIN_ALLOW_THREADS
    st = g4_gen_forward(self->gen, &done, &err);
    Py_END_ALLOW_THREADS
    if (st != G4_OK) { unlock_model(mo); return g4py_raise(&err); }
    if (done) { unlock_model(mo); return NULL; }
    const int32_t n_vocab = g4_model_n_vocab(mo->m);
    unlock_model(mo);   /* mask_fn may use the model (its tokenizer) */
    PyObject *mask = PyObject_CallNoArgs(self->mask_fn);
    if (!mask) return NULL;
    Py_buffer view;
    int have = mask != Py_None;
    if (have && g4py_mask_view(mask, n_vocab, &view) < 0) { Py_DECREF(mask); return NULL; }
    if (lock_model(mo) < 0 || mo->epoch != self->epoch || !self->gen) {
        if (!PyErr_Occurred()) {
            unlock_model(mo);
            PyErr_SetString(PyExc_RuntimeError, "the model was used by another call during this generation "
                            "(its KV cache was overwritten)");
        }
        if (have) PyBuffer_Release(&view);
        Py_DECREF(mask);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    st = g4_gen_sample(self->gen, have ? view.buf : NULL, &tok, &err);
    Py_END_ALLOW_THREADS
    if (have) PyBuffer_Release(&view);
    Py_DECREF(mask);
    unlock_model(mo);
    if (st != G4_OK) return g4py_raise(&err);
    if (tok < 0) return NULL;
    return PyLong_FromLong(tok);
}

static PyObject *Gen_logprobs(GenObject *self, PyObject *unused) {
    if (!self->gen) Py_RETURN_NONE;
    float chosen;
    const int32_t *ids;
    const float *lps;
    int32_t n = g4_gen_logprobs(self->gen, &chosen, &ids, &lps);
    PyObject *top = PyList_New(0);
    for (int32_t k = 0; top && k < n && ids[k] >= 0; k++) {
        PyObject *t = Py_BuildValue("(if)", ids[k], lps[k]);
        if (!t || PyList_Append(top, t) < 0) { Py_XDECREF(t); Py_CLEAR(top); break; }
        Py_DECREF(t);
    }
    if (!top) return NULL;
    return Py_BuildValue("(fN)", chosen, top);
}

static PyObject *Gen_close(GenObject *self, PyObject *unused) {
    if (self->gen) self->closed_stats = g4_gen_get_stats(self->gen);
    g4_gen_free(self->gen);
    self->gen = NULL;
    Py_RETURN_NONE;
}

static PyObject *Gen_stats(GenObject *self, PyObject *unused) {
    g4_gen_stats s = self->gen ? g4_gen_get_stats(self->gen) : self->closed_stats;
    const char *finish = s.finish == G4_FINISH_STOP ? "stop" : s.finish == G4_FINISH_LENGTH ? "length" : NULL;
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:d,s:d,s:d,s:z,s:K}",
                         "prompt_tokens", s.n_prompt, "cached_tokens", s.n_cached, "n_past", s.n_past,
                         "completion_tokens", s.n_generated,
                         "decode_steps", s.n_decode, "prefill_ms", s.prefill_ms, "ttft_ms", s.ttft_ms,
                         "decode_ms", s.decode_ms, "finish_reason", finish,
                         "epoch", (unsigned long long)self->epoch);
}

static PyMethodDef Gen_methods[] = {
    {"stats", (PyCFunction)Gen_stats, METH_NOARGS,
     "stats() -> dict(prompt_tokens, cached_tokens, n_past, completion_tokens, decode_steps, prefill_ms,\n"
     "ttft_ms, decode_ms, finish_reason: None while running, 'stop' (end-of-generation token) or\n"
     "'length', epoch: the model epoch this generation owns). n_past: KV positions holding\n"
     "prompt + returned tokens, reusable with generate_iter(n_keep=..., epoch=...)."},
    {"logprobs", (PyCFunction)Gen_logprobs, METH_NOARGS,
     "logprobs() -> (chosen_logprob, [(id, logprob), ...]) of the last token returned (the top list\n"
     "holds generate_iter's `logprobs` entries, best first; csrc/sample/sample.h says what they are)."},
    {"close", (PyCFunction)Gen_close, METH_NOARGS, "Stop early and free the generation's buffers."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GenType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gemma4stack._core.Generation",
    .tp_doc = "Iterator of generated token ids from Model.generate_iter().",
    .tp_basicsize = sizeof(GenObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Gen_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Gen_next,
    .tp_methods = Gen_methods,
};


/* --------------------------------------------------------------- Engine */

typedef struct {
    PyObject_HEAD
    ModelObject *model;        /* strong reference */
    ModelObject *draft;        /* the draft model (strong reference) or NULL */
    g4_engine *e;              /* NULL once closed */
    g4_event *events;
} EngineObject;

static PyTypeObject EngineType;

/* Lock the model for an engine call; ValueError when either is closed. */
static int lock_engine(EngineObject *self) {
    if (!self->e) { PyErr_SetString(PyExc_ValueError, "the engine is closed"); return -1; }
    if (self->draft && !self->draft->m) {
        PyErr_SetString(PyExc_ValueError, "the engine's draft model is closed");
        return -1;
    }
    return lock_model(self->model);
}

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"model", "n_seq", "n_batch", "kv_bytes", "queue_max", "prefix_cache", "draft", NULL};
    PyObject *model, *draft = Py_None;
    g4_engine_params p = { .n_seq = 1, .n_batch = 0, .kv_bytes = 0, .queue_max = 0, .prefix_cache = 1 };
    unsigned long long kv_bytes = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|iiKipO:Engine", kwlist, &ModelType, &model, &p.n_seq,
                                     &p.n_batch, &kv_bytes, &p.queue_max, &p.prefix_cache, &draft))
        return -1;
    if (self->e) { PyErr_SetString(PyExc_RuntimeError, "Engine is already built"); return -1; }
    if (draft != Py_None && !PyObject_TypeCheck(draft, &ModelType)) {
        PyErr_SetString(PyExc_TypeError, "Engine: draft must be a Model or None");
        return -1;
    }
    if (draft == model) {
        PyErr_SetString(PyExc_ValueError, "Engine: the draft model must be a Model object of its own");
        return -1;
    }
    p.kv_bytes = kv_bytes;
    ModelObject *mo = (ModelObject *)model, *dmo = draft != Py_None ? (ModelObject *)draft : NULL;
    if (dmo && !dmo->m) { PyErr_SetString(PyExc_ValueError, "Engine: the draft model is closed"); return -1; }
    if (lock_model(mo) < 0) return -1;
    g4_err err;
    g4_engine *e;
    g4_status dst = G4_OK;
    Py_BEGIN_ALLOW_THREADS
    e = g4_engine_create(mo->m, &p, &err);
    if (e && dmo) {
        dst = g4_engine_set_drafter(e, dmo->m, &err);
        if (dst != G4_OK) { g4_engine_free(e); e = NULL; }
    }
    Py_END_ALLOW_THREADS
    unlock_model(mo);
    if (!e) { g4py_raise(&err); return -1; }
    if (dmo) { Py_INCREF(draft); self->draft = dmo; }
    self->events = PyMem_Malloc(sizeof(g4_event) * (size_t)g4_engine_max_events(e));
    if (!self->events) { g4_engine_free(e); PyErr_NoMemory(); return -1; }
    self->e = e;
    Py_INCREF(model);
    self->model = mo;
    return 0;
}

static void Engine_free_engine(EngineObject *self) {
    g4_engine_free(self->e);
    self->e = NULL;
    PyMem_Free(self->events);
    self->events = NULL;
}

static void Engine_dealloc(EngineObject *self) {
    Engine_free_engine(self);
    Py_XDECREF(self->model);
    Py_XDECREF(self->draft);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_close(EngineObject *self, PyObject *unused) {
    if (!self->e) Py_RETURN_NONE;
    if (self->model && self->model->lock) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->model->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
        Engine_free_engine(self);
        PyThread_release_lock(self->model->lock);
    } else {
        Engine_free_engine(self);
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_submit(EngineObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"prompt_ids", "max_tokens", "temperature", "top_k", "top_p", "seed",
                             "draft_max", "draft_ngram", "draft_model", "min_p", "repeat_penalty", "repeat_last_n",
                             "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
                             "constrained", NULL};
    PyObject *seq, *bias = Py_None, *logprobs = Py_None;
    g4_request_params rp = { .max_tokens = 128, .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 0,
                             .draft_max = 0, .draft_ngram = 3, .draft_model = 0, .repeat_penalty = 1.0f, .repeat_last_n = 64 };
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ififKiipffiffOOp:submit", kwlist, &seq, &rp.max_tokens,
                                     &rp.temperature, &rp.top_k, &rp.top_p, &seed, &rp.draft_max, &rp.draft_ngram,
                                     &rp.draft_model,
                                     &rp.min_p, &rp.repeat_penalty, &rp.repeat_last_n, &rp.presence_penalty,
                                     &rp.frequency_penalty, &bias, &logprobs, &rp.constrained))
        return NULL;
    rp.seed = seed;
    if (logprobs != Py_None) {
        long k = PyLong_AsLong(logprobs);
        if (k == -1 && PyErr_Occurred()) return NULL;
        if (k < 0 || k > G4_SAMPLE_MAX_TOP)
            return PyErr_Format(PyExc_ValueError, "logprobs %ld must be None or 0..%d (top alternatives)", k,
                                G4_SAMPLE_MAX_TOP);
        rp.logprobs = 1;
        rp.top_logprobs = (int32_t)k;
    }
    g4py_sample_args sa;
    memset(&sa, 0, sizeof sa);
    if (g4py_sample_args_bias(&sa, bias) < 0) return NULL;
    rp.bias_ids = sa.bias_ids;
    rp.bias_vals = sa.bias_vals;
    rp.n_bias = sa.p.n_bias;
    Py_ssize_t n;
    int32_t *ids = ids_from_seq(seq, &n);
    if (!ids) { g4py_sample_args_free(&sa); return NULL; }
    if (n > INT32_MAX) {
        PyMem_Free(ids); g4py_sample_args_free(&sa);
        PyErr_SetString(PyExc_ValueError, "prompt too long");
        return NULL;
    }
    if (lock_engine(self) < 0) { PyMem_Free(ids); g4py_sample_args_free(&sa); return NULL; }
    g4_err err;
    int64_t id = g4_engine_submit(self->e, ids, (int32_t)n, &rp, &err);   /* copies prompt and bias */
    unlock_model(self->model);
    PyMem_Free(ids);
    g4py_sample_args_free(&sa);
    if (id < 0) return g4py_raise(&err);
    return PyLong_FromLongLong(id);
}

static PyObject *Engine_set_mask(EngineObject *self, PyObject *args) {
    long long id;
    PyObject *mask;
    if (!PyArg_ParseTuple(args, "LO:set_mask", &id, &mask)) return NULL;
    Py_buffer view;
    if (g4py_mask_view(mask, 0, &view) < 0) return NULL;   /* its length is checked by the engine */
    if (view.len / 4 > INT32_MAX) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the token mask is too long");
        return NULL;
    }
    if (lock_engine(self) < 0) { PyBuffer_Release(&view); return NULL; }
    g4_err err;
    g4_status st = g4_engine_set_mask(self->e, id, view.buf, (int32_t)(view.len / 4), &err);
    unlock_model(self->model);
    PyBuffer_Release(&view);
    if (st != G4_OK) return g4py_raise(&err);
    Py_RETURN_NONE;
}

/* An event's log-probabilities as Generation.logprobs() gives them:
 * (chosen, [(id, logprob), ...]), or None when the request did not ask. */
static PyObject *event_logprobs(const g4_event *ev) {
    if (ev->n_top < 0 || ev->token < 0) Py_RETURN_NONE;
    PyObject *top = PyList_New(ev->n_top);
    if (!top) return NULL;
    for (int32_t k = 0; k < ev->n_top; k++) {
        PyObject *t = Py_BuildValue("(if)", ev->top_ids[k], ev->top_logprobs[k]);
        if (!t) { Py_DECREF(top); return NULL; }
        PyList_SET_ITEM(top, k, t);
    }
    return Py_BuildValue("(fN)", ev->logprob, top);
}

static PyObject *Engine_cancel(EngineObject *self, PyObject *arg) {
    long long id = PyLong_AsLongLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    if (!self->e) Py_RETURN_FALSE;      /* closed: nothing runs */
    if (lock_engine(self) < 0) return NULL;
    int found = g4_engine_cancel(self->e, id);
    unlock_model(self->model);
    return PyBool_FromLong(found);
}

static PyObject *Engine_step(EngineObject *self, PyObject *unused) {
    if (lock_engine(self) < 0) return NULL;
    g4_err err;
    g4_status st;
    int32_t n = 0;
    Py_BEGIN_ALLOW_THREADS
    st = g4_engine_step(self->e, self->events, &n, &err);
    Py_END_ALLOW_THREADS
    unlock_model(self->model);
    if (st != G4_OK) return g4py_raise(&err);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (int32_t i = 0; i < n; i++) {
        const g4_event *ev = &self->events[i];
        const g4_request_stats *s = &ev->stats;
        PyObject *lp = event_logprobs(ev);
        if (!lp) { Py_DECREF(out); return NULL; }
        PyObject *t = Py_BuildValue("(LiiiiidddiiiN)", (long long)ev->id, ev->token, ev->finish, s->n_prompt,
                                    s->n_cached, s->n_decode, s->queue_ms, s->prefill_ms, s->decode_ms,
                                    s->n_drafted, s->n_accepted, s->n_draft_steps, lp);
        if (!t) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *Engine_stats(EngineObject *self, PyObject *unused) {
    if (lock_engine(self) < 0) return NULL;
    g4_engine_stats s = g4_engine_get_stats(self->e);
    unlock_model(self->model);
    int32_t used = 0, total = 0, shared = 0, cached = 0, reserved = 0;
    for (int g = 0; g < s.kv.n_groups; g++) {
        used += s.kv.blocks_used[g]; total += s.kv.blocks_total[g]; shared += s.kv.blocks_shared[g];
        cached += s.kv.blocks_cached[g]; reserved += s.kv.blocks_reserved[g];
    }
    const char *type = s.kv.type == 1 ? "f16" : s.kv.type == 8 ? "q8_0" : "f32";
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:K,s:K,s:K,s:K,s:i,s:i,s:i,s:i,s:i,s:i,s:K,s:K,s:K,s:s}",
                         "running", s.n_running, "waiting", s.n_waiting, "parallel", s.n_seq,
                         "batch_tokens", s.n_batch, "queue_max", s.queue_max,
                         "steps", (unsigned long long)s.steps, "step_tokens", (unsigned long long)s.tokens,
                         "prompt_tokens", (unsigned long long)s.prompt_tokens,
                         "generated_tokens", (unsigned long long)s.generated_tokens,
                         "kv_blocks_total", total, "kv_blocks_used", used, "kv_blocks_free", total - used,
                         "kv_blocks_shared", shared, "kv_blocks_cached", cached, "kv_blocks_reserved", reserved,
                         "kv_bytes", (unsigned long long)s.kv.bytes,
                         "prefix_queried_tokens", (unsigned long long)s.kv.prefix_queried,
                         "prefix_hit_tokens", (unsigned long long)s.kv.prefix_hit, "kv_type", type);
}

static PyObject *Engine_seq_kv_bytes(EngineObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > INT32_MAX) { PyErr_SetString(PyExc_ValueError, "n_ctx must be a positive int32"); return NULL; }
    if (lock_engine(self) < 0) return NULL;
    uint64_t b = g4_engine_seq_kv_bytes(self->e, (int32_t)n);
    unlock_model(self->model);
    return PyLong_FromUnsignedLongLong(b);
}

static PyMethodDef Engine_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))Engine_submit, METH_VARARGS | METH_KEYWORDS,
     "submit(prompt_ids, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95, seed=0, draft_max=0,\n"
     "draft_ngram=3, draft_model=False, min_p=0, repeat_penalty=1, repeat_last_n=64, presence_penalty=0,\n"
     "frequency_penalty=0, logit_bias=None, logprobs=None, constrained=False) -> int id. draft_max > 0: speculative decoding, up to draft_max\n"
     "tokens per step, by prompt lookup (copied after the last draft_ngram..1 tokens' latest earlier\n"
     "match) or, with draft_model, from the Engine's draft model; greedy output unchanged, sampled\n"
     "output distributed as without drafts (rejection sampling; csrc/engine/engine.h); requests that are\n"
     "constrained or use logit_bias, penalties or logprobs do not draft.\n"
     "The sampler chain of csrc/sample/sample.h as generate_iter has it (the penalties count the\n"
     "generated tokens; logit_bias {token id: bias}). logprobs=N (0..20): each event carries the token's\n"
     "log-probability and the N best. constrained=True: the request samples only what set_mask allows\n"
     "and does not decode until a mask is set after each of its tokens.\n"
     "LimitError when the prompt leaves no room in the context or the waiting queue is full\n"
     "(message starts with 'queue full'); ValueError for ids outside the vocabulary (prompt or\n"
     "logit_bias), logprobs outside 0..20, repeat_last_n < -1."},
    {"set_mask", (PyCFunction)Engine_set_mask, METH_VARARGS,
     "set_mask(id, mask): the allowed tokens of a constrained request's next sample: a contiguous uint32\n"
     "array of exactly ceil(n_vocab/32) words, bit i%32 of word i/32 set = token i allowed (llguidance's\n"
     "layout); copied. ValueError for an unknown id, a request not submitted constrained, a mask of\n"
     "another length or one that allows no token; TypeError for a buffer that is not 4-byte ints."},
    {"cancel", (PyCFunction)Engine_cancel, METH_O, "cancel(id) -> bool: stop a request, its KV blocks freed now"},
    {"step", (PyCFunction)Engine_step, METH_NOARGS,
     "step() -> list of (id, token, finish, n_prompt, n_cached, n_decode, queue_ms, prefill_ms, decode_ms,\n"
     "n_drafted, n_accepted, n_draft_steps, logprobs): one scheduling step and batched forward with the GIL\n"
     "released. logprobs: None, or (chosen_logprob, [(id, logprob), ...]) for requests with logprobs. token -1:\n"
     "none; finish 0 running, 1 end-of-generation token, 2 length. n_decode: tokens sampled after the\n"
     "first; a speculating request may get several events (tokens in order) per step. [] when there was\n"
     "nothing to run."},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS,
     "stats() -> dict: running/waiting requests, steps, KV blocks total/used/free/shared/cached/reserved,\n"
     "kv_bytes, prefix_queried_tokens / prefix_hit_tokens (the prefix cache's hit rate), kv_type"},
    {"seq_kv_bytes", (PyCFunction)Engine_seq_kv_bytes, METH_O,
     "seq_kv_bytes(n_ctx) -> int: KV bytes one sequence of n_ctx positions holds at most"},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "Free the KV pool and every request."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gemma4stack._core.Engine",
    .tp_doc = "Engine(model, n_seq=1, n_batch=0, kv_bytes=0, queue_max=0, prefix_cache=True, draft=None):\n"
              "continuous batching over a Model (csrc/engine/engine.h): a paged KV pool of kv_bytes\n"
              "(0: n_seq sequences of the model's context), n_seq sequences per step, n_batch tokens\n"
              "per step (0: 128), queue_max waiting requests (0: 1024). draft: a Model with the same\n"
              "vocabulary that drafts for requests submitted with draft_model=True (ValueError when its\n"
              "vocabulary size differs); the engine uses it unlocked: nothing else may run on it.",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

/* ------------------------------------------------------------- register */

/* kv_seq_bytes(layers, n_ctx, n_batch, type) -> int: g4_kvc_seq_bytes. */
static PyObject *py_kv_seq_bytes(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"layers", "n_ctx", "n_batch", "type", NULL};
    PyObject *layers;
    int n_ctx, n_batch = 128;
    const char *type = "f16";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|is:kv_seq_bytes", kwlist, &layers, &n_ctx, &n_batch, &type))
        return NULL;
    const int t = !strcmp(type, "f16") ? G4_KV_F16 : !strcmp(type, "q8_0") ? G4_KV_Q8_0 : !strcmp(type, "f32") ? G4_KV_F32 : -1;
    if (t < 0) { PyErr_Format(PyExc_ValueError, "KV cache type '%s' is not one of f16, q8_0, f32", type); return NULL; }
    if (n_ctx < 1 || n_batch < 1) { PyErr_SetString(PyExc_ValueError, "n_ctx and n_batch must be positive"); return NULL; }
    PyObject *fast = PySequence_Fast(layers, "layers must be a sequence of (dim_k, dim_v, window)");
    if (!fast) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    g4_kv_layer *l = PyMem_Malloc(sizeof(g4_kv_layer) * (size_t)(n ? n : 1));
    if (!l) { Py_DECREF(fast); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iii", &l[i].dim_k, &l[i].dim_v, &l[i].window)) {
            PyMem_Free(l); Py_DECREF(fast); return NULL;
        }
    }
    uint64_t b = g4_kvc_seq_bytes(l, (int)n, n_ctx, n_batch, t);
    PyMem_Free(l);
    Py_DECREF(fast);
    return PyLong_FromUnsignedLongLong(b);
}

PyMethodDef g4py_model_methods[] = {
    {"kv_seq_bytes", (PyCFunction)(void (*)(void))py_kv_seq_bytes, METH_VARARGS | METH_KEYWORDS,
     "kv_seq_bytes(layers, n_ctx, n_batch=128, type='f16') -> int: bytes of paged KV cache one sequence of\n"
     "n_ctx positions holds at most (csrc/engine/kvcache.h g4_kvc_seq_bytes); layers: (dim_k, dim_v, window)\n"
     "per layer that stores K/V, dims = n_head_kv * head_dim, window 0 for a global layer."},
    {NULL, NULL, 0, NULL},
};

int g4py_model_register(PyObject *module) {
    if (PyType_Ready(&ModelType) < 0 || PyType_Ready(&GenType) < 0 || PyType_Ready(&EngineType) < 0) return -1;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(module, "Engine", (PyObject *)&EngineType) < 0) { Py_DECREF(&EngineType); return -1; }
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(module, "Model", (PyObject *)&ModelType) < 0) { Py_DECREF(&ModelType); return -1; }
    Py_INCREF(&GenType);
    if (PyModule_AddObject(module, "Generation", (PyObject *)&GenType) < 0) { Py_DECREF(&GenType); return -1; }
    return 0;
}
