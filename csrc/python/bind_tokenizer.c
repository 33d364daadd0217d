/* bind_tokenizer.c - a standalone Tokenizer type over csrc/tokenizer/ (for vocab-only GGUFs). (placeholder) */
#include "g4py.h"

PyMethodDef g4py_tokenizer_methods[] = {
    {NULL, NULL, 0, NULL},
};

int g4py_tokenizer_register(PyObject *module) { (void)module; return 0; }
