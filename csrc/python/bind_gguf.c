/* bind_gguf.c - Python functions for csrc/gguf/. (placeholder table, filled by its owner) */
#include "g4py.h"

PyMethodDef g4py_gguf_methods[] = {
    {NULL, NULL, 0, NULL},
};
