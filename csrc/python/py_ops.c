/* py_ops.c — snapfusion._engine: ops (filled in by its owner). */
#include "sf_py.h"

int sf_py_init_ops(PyObject *module) {
    (void)module;
    return 0;
}
