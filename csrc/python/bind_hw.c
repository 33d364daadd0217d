/* bind_hw.c - Python functions for csrc/hw/. (placeholder table, filled by its owner) */
#include "g4py.h"

PyMethodDef g4py_hw_methods[] = {
    {NULL, NULL, 0, NULL},
};
