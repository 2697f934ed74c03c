/* module.c — PyInit__engine: the snapfusion._engine extension module. */
#define SF_PY_MODULE_C
#include <stdarg.h>

#include "sf_py.h"

PyObject *sf_py_engine_error = NULL;

PyObject *sf_py_raise(sf_status st) {
    const char *msg = sf_last_error();
    if (!msg || !*msg)
        msg = sf_status_str(st);
    PyObject *type;
    switch (st) {
    case SF_ERR_INVALID_ARG:
    case SF_ERR_SHAPE:
    case SF_ERR_FORMAT:
    case SF_ERR_UNSUPPORTED:
        type = PyExc_ValueError;
        break;
    case SF_ERR_IO:
        type = PyExc_OSError;
        break;
    case SF_ERR_OOM:
        type = PyExc_MemoryError;
        break;
    default:
        type = sf_py_engine_error ? sf_py_engine_error : PyExc_RuntimeError;
        break;
    }
    PyErr_SetString(type, msg);
    return NULL;
}

PyObject *sf_py_finish(sf_status st, PyArrayObject *y, int n, ...) {
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        PyArrayObject *a = va_arg(ap, PyArrayObject *);
        Py_XDECREF(a);
    }
    va_end(ap);
    if (st == SF_OK)
        return (PyObject *)y;
    Py_XDECREF(y);
    if (st != SF_PY_RAISED)
        sf_py_raise(st);
    return NULL;
}

static PyArrayObject *sf_py_convert(PyObject *obj, const char *name, int ndim, int typenum,
                                    int allow_float) {
    PyArrayObject *tmp = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!tmp) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a numeric array, got %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    char kind = PyArray_DESCR(tmp)->kind;
    int ok = kind == 'i' || kind == 'u' || (allow_float && kind == 'f');
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: unsupported dtype '%c%d' (expected %s)", name, kind,
                     (int)PyArray_ITEMSIZE(tmp), allow_float ? "a real number dtype" : "integers");
        Py_DECREF(tmp);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(tmp) != ndim) {
        char buf[128];
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got shape %s", name, ndim,
                     sf_py_shape_str(tmp, buf, sizeof buf));
        Py_DECREF(tmp);
        return NULL;
    }
    for (int i = 0; i < PyArray_NDIM(tmp); i++) {
        if (PyArray_DIM(tmp, i) == 0) {
            char buf[128];
            PyErr_Format(PyExc_ValueError, "%s: empty dimension in shape %s", name,
                         sf_py_shape_str(tmp, buf, sizeof buf));
            Py_DECREF(tmp);
            return NULL;
        }
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROM_OTF(
        (PyObject *)tmp, typenum, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(tmp);
    return out;
}

PyArrayObject *sf_py_f32(PyObject *obj, const char *name, int ndim) {
    return sf_py_convert(obj, name, ndim, NPY_FLOAT32, 1);
}

PyArrayObject *sf_py_i64(PyObject *obj, const char *name, int ndim) {
    return sf_py_convert(obj, name, ndim, NPY_INT64, 0);
}

PyArrayObject *sf_py_new_f32(int ndim, const npy_intp *shape) {
    return (PyArrayObject *)PyArray_SimpleNew(ndim, (npy_intp *)shape, NPY_FLOAT32);
}

const char *sf_py_shape_str(PyArrayObject *a, char *buf, size_t size) {
    size_t pos = 0;
    int n = PyArray_NDIM(a);
    pos += (size_t)snprintf(buf + pos, size - pos, "(");
    for (int i = 0; i < n && pos < size; i++)
        pos += (size_t)snprintf(buf + pos, size - pos, i ? ", %ld" : "%ld",
                                (long)PyArray_DIM(a, i));
    if (n == 1 && pos < size)
        pos += (size_t)snprintf(buf + pos, size - pos, ",");
    if (pos < size)
        snprintf(buf + pos, size - pos, ")");
    return buf;
}

static int sf_py_exec(PyObject *m) {
    import_array1(-1);
    sf_py_engine_error = PyErr_NewExceptionWithDoc(
        "snapfusion._engine.EngineError",
        "An error inside the engine (XNNPACK failure, cancelled computation).",
        PyExc_RuntimeError, NULL);
    if (!sf_py_engine_error)
        return -1;
    if (PyModule_AddObjectRef(m, "EngineError", sf_py_engine_error) < 0)
        return -1;
    if (sf_py_init_runtime(m) < 0 || sf_py_init_ops(m) < 0 || sf_py_init_attention(m) < 0 ||
        sf_py_init_xnn(m) < 0 || sf_py_init_safetensors(m) < 0 || sf_py_init_models(m) < 0 ||
        sf_py_init_scheduler(m) < 0 || sf_py_init_quant(m) < 0 || sf_py_init_pipeline(m) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot sf_py_slots[] = {
    {Py_mod_exec, sf_py_exec},
    {0, NULL},
};

static struct PyModuleDef sf_py_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "snapfusion._engine",
    .m_doc = "The snapfusion C engine: XNNPACK-backed operators, kernels and model loading.\n"
             "Arrays are float32, NHWC for images; non-contiguous inputs are copied.",
    .m_size = 0,
    .m_slots = sf_py_slots,
};

PyMODINIT_FUNC PyInit__engine(void) {
    return PyModuleDef_Init(&sf_py_module);
}
