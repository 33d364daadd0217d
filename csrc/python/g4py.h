/* g4py.h - shared pieces of the CPython binding gemma4stack._core.
 *
 * The binding is thin: parse arguments, convert buffers, release the GIL
 * around C calls, map g4_err to exceptions. Each bind_*.c file exports a
 * NULL-terminated PyMethodDef table that module.c concatenates.
 */
#ifndef G4PY_H
#define G4PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../common/g4err.h"
#include "../sample/sample.h"

/* Exception types created in module init (see g4err.h for the mapping). */
extern PyObject *g4py_GGUFError;        /* ValueError subclass */
extern PyObject *g4py_UnsupportedError; /* GGUFError subclass */
extern PyObject *g4py_LimitError;       /* ValueError subclass */

/* Set the Python exception matching err->status; returns NULL for chaining. */
PyObject *g4py_raise(const g4_err *err);

/* Method tables, one per binding file. */
extern PyMethodDef g4py_hw_methods[];
extern PyMethodDef g4py_gguf_methods[];
extern PyMethodDef g4py_model_methods[];
extern PyMethodDef g4py_tokenizer_methods[];
extern PyMethodDef g4py_sample_methods[];

/* Sampler parameters parsed from Python (bind_sample.c): p, plus the bias
 * arrays p points into (PyMem, freed by g4py_sample_args_free). */
typedef struct g4py_sample_args {
    g4_sample_params p;
    int32_t *bias_ids;
    float *bias_vals;
} g4py_sample_args;
int g4py_sample_args_bias(g4py_sample_args *a, PyObject *logit_bias);
void g4py_sample_args_free(g4py_sample_args *a);
/* sample()/sample_ex() arguments (bind_sample.c): n=None -> 1 draw; a malloc'd copy of
 * float32 logits; a list of ids. NULL / -1 with an exception set. */
int g4py_draws_arg(PyObject *n_obj, Py_ssize_t *draws);
float *g4py_logits_copy(PyObject *obj, int32_t *n);
PyObject *g4py_id_list(const int32_t *ids, Py_ssize_t n);
/* A uint32 token mask covering n_vocab tokens; 0, or -1 with an exception. */
int g4py_mask_view(PyObject *obj, int32_t n_vocab, Py_buffer *view);

/* Types registered by binding files: called from module init; return 0 / -1. */
int g4py_model_register(PyObject *module);
int g4py_tokenizer_register(PyObject *module);

#endif
