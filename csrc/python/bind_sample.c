/* bind_sample.c - the sampler's request parameters from Python objects, and
 * _core.sample_ex over g4_sample_ex (csrc/sample/). The parsers are shared
 * with Model.generate_iter (bind_model.c). */
#include "g4py.h"

#include <stdlib.h>
#include <string.h>

#include "../sample/sample.h"

void g4py_sample_args_free(g4py_sample_args *a) {
    PyMem_Free(a->bias_ids);
    PyMem_Free(a->bias_vals);
    a->bias_ids = NULL;
    a->bias_vals = NULL;
    a->p.bias_ids = NULL;
    a->p.bias_vals = NULL;
    a->p.n_bias = 0;
}

/* logit_bias: None or a mapping {token id: bias} (OpenAI's shape; keys may be
 * strings of digits as JSON sends them). */
int g4py_sample_args_bias(g4py_sample_args *a, PyObject *bias) {
    if (!bias || bias == Py_None) return 0;
    if (!PyDict_Check(bias)) {
        PyErr_SetString(PyExc_TypeError, "logit_bias must be a dict {token id: bias}");
        return -1;
    }
    Py_ssize_t n = PyDict_Size(bias), pos = 0, i = 0;
    if (n > INT32_MAX) { PyErr_SetString(PyExc_ValueError, "logit_bias is too long"); return -1; }
    a->bias_ids = PyMem_Malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    a->bias_vals = PyMem_Malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!a->bias_ids || !a->bias_vals) { g4py_sample_args_free(a); PyErr_NoMemory(); return -1; }
    PyObject *k, *v;
    while (PyDict_Next(bias, &pos, &k, &v)) {
        PyObject *key = PyUnicode_Check(k) ? PyLong_FromUnicodeObject(k, 10) : (Py_INCREF(k), k);
        long id = key ? PyLong_AsLong(key) : -1;
        Py_XDECREF(key);
        if (id == -1 && PyErr_Occurred()) { g4py_sample_args_free(a); return -1; }
        double val = PyFloat_AsDouble(v);
        if (val == -1.0 && PyErr_Occurred()) { g4py_sample_args_free(a); return -1; }
        if (id < 0 || id > INT32_MAX) {
            g4py_sample_args_free(a);
            PyErr_Format(PyExc_ValueError, "logit_bias: token id %ld is negative or too large", id);
            return -1;
        }
        a->bias_ids[i] = (int32_t)id;
        a->bias_vals[i] = (float)val;
        i++;
    }
    a->p.bias_ids = a->bias_ids;
    a->p.bias_vals = a->bias_vals;
    a->p.n_bias = (int32_t)i;
    return 0;
}

/* A token mask for n_vocab tokens: a contiguous buffer of at least
 * ceil(n_vocab / 32) 4-byte unsigned words (numpy uint32). Fills view
 * (release it with PyBuffer_Release) and returns 0; -1 with TypeError /
 * ValueError otherwise. */
int g4py_mask_view(PyObject *obj, int32_t n_vocab, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    if (view->itemsize != 4 || (fmt[0] != 'I' && fmt[0] != 'i') || fmt[1] != '\0') {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "a token mask must be a contiguous uint32 array");
        return -1;
    }
    const Py_ssize_t need = ((Py_ssize_t)n_vocab + 31) / 32;
    if (view->len / 4 < need) {
        Py_ssize_t have = view->len / 4;
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "the token mask has %zd words, %zd are needed for %d tokens",
                     have, need, n_vocab);
        return -1;
    }
    return 0;
}

/* n=None -> 1 draw (*draws = 1, returns 0), else n >= 0; -1 with ValueError. */
int g4py_draws_arg(PyObject *n_obj, Py_ssize_t *draws) {
    *draws = 1;
    if (n_obj == Py_None) return 0;
    *draws = PyLong_AsSsize_t(n_obj);
    if (*draws == -1 && PyErr_Occurred()) return -1;
    if (*draws < 0) { PyErr_SetString(PyExc_ValueError, "n must be >= 0"); return -1; }
    return 0;
}

/* A malloc'd copy of a non-empty contiguous float32 buffer (the sampler modifies its
 * input) and its length; NULL with ValueError / MemoryError. */
float *g4py_logits_copy(PyObject *obj, int32_t *n) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (view.itemsize != 4 || !view.format || strcmp(view.format, "f") != 0 || view.len / 4 > INT32_MAX ||
        view.len == 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "logits must be a non-empty contiguous float32 buffer");
        return NULL;
    }
    *n = (int32_t)(view.len / 4);
    float *copy = malloc((size_t)view.len);
    if (copy) memcpy(copy, view.buf, (size_t)view.len);
    else PyErr_NoMemory();
    PyBuffer_Release(&view);
    return copy;
}

/* list[int] of ids[n] */
PyObject *g4py_id_list(const int32_t *ids, Py_ssize_t n) {
    PyObject *res = PyList_New(n);
    for (Py_ssize_t i = 0; res && i < n; i++) {
        PyObject *v = PyLong_FromLong(ids[i]);
        if (!v) { Py_CLEAR(res); break; }
        PyList_SET_ITEM(res, i, v);
    }
    return res;
}

/* ---- _core.sample_ex -------------------------------------------------- */

static PyObject *top_list(const int32_t *ids, const float *lps, int32_t n) {
    PyObject *out = PyList_New(0);
    for (int32_t k = 0; out && k < n && ids[k] >= 0; k++) {
        PyObject *t = Py_BuildValue("(if)", ids[k], lps[k]);
        if (!t || PyList_Append(out, t) < 0) { Py_XDECREF(t); Py_CLEAR(out); break; }
        Py_DECREF(t);
    }
    return out;
}

static PyObject *py_sample_ex(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"logits", "temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                             "repeat_last_n", "presence_penalty", "frequency_penalty", "logit_bias",
                             "seed", "history", "mask", "n_top", "n", NULL};
    PyObject *obj, *bias = Py_None, *hist_obj = Py_None, *mask_obj = Py_None, *n_obj = Py_None;
    g4py_sample_args a;
    memset(&a, 0, sizeof a);
    a.p = g4_sample_params_default();
    unsigned long long seed = 0;
    int n_top = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|fifffiffOKOOiO:sample_ex", kwlist, &obj, &a.p.temperature,
                                     &a.p.top_k, &a.p.top_p, &a.p.min_p, &a.p.repeat_penalty,
                                     &a.p.repeat_last_n, &a.p.presence_penalty, &a.p.frequency_penalty,
                                     &bias, &seed, &hist_obj, &mask_obj, &n_top, &n_obj))
        return NULL;
    a.p.seed = seed;
    if (n_top < 0 || n_top > G4_SAMPLE_MAX_TOP)
        return PyErr_Format(PyExc_ValueError, "n_top must be in 0..%d", G4_SAMPLE_MAX_TOP);
    Py_ssize_t draws;
    if (g4py_draws_arg(n_obj, &draws) < 0) return NULL;
    int32_t n;
    float *orig = g4py_logits_copy(obj, &n);
    if (!orig) return NULL;
    float *work = malloc(sizeof(float) * (size_t)n);
    int32_t *hist = NULL;
    Py_ssize_t n_hist = 0;
    Py_buffer mview = {0};
    int have_mask = 0;
    PyObject *res = NULL;
    if (!work) { PyErr_NoMemory(); goto done; }
    if (hist_obj != Py_None) {
        PyObject *fast = PySequence_Fast(hist_obj, "history must be a sequence of token ids");
        if (!fast) goto done;
        n_hist = PySequence_Fast_GET_SIZE(fast);
        hist = PyMem_Malloc(sizeof(int32_t) * (size_t)(n_hist ? n_hist : 1));
        for (Py_ssize_t i = 0; hist && i < n_hist; i++) {
            long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
            hist[i] = v < INT32_MIN || v > INT32_MAX ? -1 : (int32_t)v;
        }
        Py_DECREF(fast);
        if (!hist) { PyErr_NoMemory(); goto done; }
        if (PyErr_Occurred()) goto done;
    }
    if (mask_obj != Py_None) {
        if (g4py_mask_view(mask_obj, n, &mview) < 0) goto done;
        have_mask = 1;
    }
    if (g4py_sample_args_bias(&a, bias) < 0) goto done;
    g4_sampler s;
    if (g4_sampler_init_ex(&s, &a.p) < 0) { g4_sampler_free(&s); PyErr_NoMemory(); goto done; }
    int32_t ids[G4_SAMPLE_MAX_TOP];
    float lps[G4_SAMPLE_MAX_TOP], chosen = 0.0f;
    int32_t *out = PyMem_Malloc(sizeof(int32_t) * (size_t)(draws ? draws : 1));
    int32_t bad = out ? 0 : -1;
    if (out) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < draws && !bad; i++) {
            memcpy(work, orig, sizeof(float) * (size_t)n);
            out[i] = g4_sample_ex(&s, work, n, hist, (int32_t)n_hist, have_mask ? mview.buf : NULL,
                                  n_top, ids, lps, &chosen);
            if (out[i] < 0) bad = out[i];
        }
        Py_END_ALLOW_THREADS
    }
    g4_sampler_free(&s);
    if (bad == -2) PyErr_SetString(PyExc_ValueError, "the mask allows no token of the vocabulary");
    else if (bad) PyErr_NoMemory();
    else if (n_obj == Py_None) {
        PyObject *top = top_list(ids, lps, n_top);
        res = top ? Py_BuildValue("(ifN)", out[0], chosen, top) : NULL;
    } else {
        res = g4py_id_list(out, draws);
    }
    PyMem_Free(out);
done:
    if (have_mask) PyBuffer_Release(&mview);
    g4py_sample_args_free(&a);
    PyMem_Free(hist);
    free(orig);
    free(work);
    return res;
}

PyMethodDef g4py_sample_methods[] = {
    {"sample_ex", (PyCFunction)(void (*)(void))py_sample_ex, METH_VARARGS | METH_KEYWORDS,
     "sample_ex(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,\n"
     "          repeat_last_n=64, presence_penalty=0.0, frequency_penalty=0.0, logit_bias=None,\n"
     "          seed=0, history=None, mask=None, n_top=0, n=None)\n"
     "    -> (id, chosen_logprob, [(id, logprob), ...n_top]) | list[int] (with n)\n"
     "The whole sampler chain of csrc/sample/sample.h over float32 logits[n_vocab] (not modified):\n"
     "mask (uint32 words, bit i%32 of word i/32 = token i allowed), logit_bias {id: bias}, the\n"
     "repeat/presence/frequency penalties over the last repeat_last_n ids of history (-1: all),\n"
     "top-k, top-p, min-p, temperature (<= 0: greedy). Log-probabilities: log-softmax after mask,\n"
     "bias and penalties, before temperature and truncation. With n: n draws of one seeded sampler.\n"
     "ValueError when the mask allows no token."},
    {NULL, NULL, 0, NULL},
};
