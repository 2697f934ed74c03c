/* py_attention.c — snapfusion._engine: attention (filled in by its owner). */
#include "sf_py.h"

int sf_py_init_attention(PyObject *module) {
    (void)module;
    return 0;
}
