/* py_xnn.c — snapfusion._engine: xnn (filled in by its owner). */
#include "sf_py.h"

int sf_py_init_xnn(PyObject *module) {
    (void)module;
    return 0;
}
