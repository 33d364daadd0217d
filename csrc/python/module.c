/* module.c - gemma4stack._core: module init, exceptions, error mapping. */
#include "g4py.h"

#include <dlfcn.h>
#include <errno.h>

PyObject *g4py_GGUFError;
PyObject *g4py_UnsupportedError;
PyObject *g4py_LimitError;

PyObject *g4py_raise(const g4_err *err) {
    const char *msg = err->msg[0] ? err->msg : "unknown error";
    switch (err->status) {
    case G4_ERR_IO:
        if (err->sys_errno)
            PyErr_SetObject(err->sys_errno == ENOENT ? PyExc_FileNotFoundError : PyExc_OSError,
                            Py_BuildValue("(is)", err->sys_errno, msg));
        else
            PyErr_SetString(PyExc_OSError, msg);
        break;
    case G4_ERR_FORMAT: PyErr_SetString(g4py_GGUFError, msg); break;
    case G4_ERR_UNSUPPORTED: PyErr_SetString(g4py_UnsupportedError, msg); break;
    case G4_ERR_NOMEM: PyErr_SetString(PyExc_MemoryError, msg); break;
    case G4_ERR_LIMIT: PyErr_SetString(g4py_LimitError, msg); break;
    case G4_ERR_INVALID: PyErr_SetString(PyExc_ValueError, msg); break;
    default: PyErr_SetString(PyExc_RuntimeError, msg); break;
    }
    return NULL;
}

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "gemma4stack._core",
    "C core of gemma4stack: hardware detection, GGUF reader, quantized inference.",
    -1, NULL, NULL, NULL, NULL, NULL,
};

static int add_methods(PyObject *m, PyMethodDef *defs) {
    for (PyMethodDef *d = defs; d && d->ml_name; d++) {
        PyObject *f = PyCFunction_NewEx(d, NULL, PyModule_GetNameObject(m));
        if (!f || PyModule_AddObject(m, d->ml_name, f) < 0) { Py_XDECREF(f); return -1; }
    }
    return 0;
}

PyMODINIT_FUNC PyInit__core(void) {
    /* hwloc loads its plugins with dlopen; they resolve symbols against a
       globally visible libhwloc, which an extension module's libraries are
       not (RTLD_LOCAL). Re-open it RTLD_GLOBAL first (hwloc FAQ, "plugins"). */
    dlopen("libhwloc.so.15", RTLD_NOW | RTLD_GLOBAL);

    PyObject *m = PyModule_Create(&core_module);
    if (!m) return NULL;
    g4py_GGUFError = PyErr_NewExceptionWithDoc("gemma4stack.GGUFError",
        "A GGUF file is malformed; the message names the problem.", PyExc_ValueError, NULL);
    g4py_UnsupportedError = PyErr_NewExceptionWithDoc("gemma4stack.UnsupportedError",
        "A well-formed file uses an architecture or tensor type this build does not support.",
        g4py_GGUFError, NULL);
    g4py_LimitError = PyErr_NewExceptionWithDoc("gemma4stack.LimitError",
        "A request exceeds a limit (context length, a size cap); the message says which.",
        PyExc_ValueError, NULL);
    if (!g4py_GGUFError || !g4py_UnsupportedError || !g4py_LimitError) goto fail;
    Py_INCREF(g4py_GGUFError); Py_INCREF(g4py_UnsupportedError); Py_INCREF(g4py_LimitError);
    if (PyModule_AddObject(m, "GGUFError", g4py_GGUFError) < 0 ||
        PyModule_AddObject(m, "UnsupportedError", g4py_UnsupportedError) < 0 ||
        PyModule_AddObject(m, "LimitError", g4py_LimitError) < 0)
        goto fail;
    if (add_methods(m, g4py_hw_methods) < 0 || add_methods(m, g4py_gguf_methods) < 0 ||
        add_methods(m, g4py_model_methods) < 0 || add_methods(m, g4py_tokenizer_methods) < 0 ||
        add_methods(m, g4py_sample_methods) < 0)
        goto fail;
    if (g4py_model_register(m) < 0 || g4py_tokenizer_register(m) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
