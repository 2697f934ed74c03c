/* py_safetensors.c — snapfusion._engine: safetensors (filled in by its owner). */
#include "sf_py.h"

int sf_py_init_safetensors(PyObject *module) {
    (void)module;
    return 0;
}
