/* bind_model.c - the Model type over csrc/model/. (placeholder, filled by its owner) */
#include "g4py.h"

PyMethodDef g4py_model_methods[] = {
    {NULL, NULL, 0, NULL},
};

int g4py_model_register(PyObject *module) { (void)module; return 0; }
