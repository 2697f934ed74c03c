/*
 * sf_py.h — helpers shared by the files of the Python extension snapfusion._engine.
 *
 * Each glue file owns one part of the module and exposes an init function that module.c calls
 * from the module's exec slot: it adds the part's functions (PyModule_AddFunctions) and types.
 */
#ifndef SF_PY_H
#define SF_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL SF_ARRAY_API
#ifndef SF_PY_MODULE_C
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "snapfusion.h"

/* snapfusion._engine.EngineError (a RuntimeError subclass), set by module.c. */
extern PyObject *sf_py_engine_error;

/* Raise the Python exception matching `st` with the C message (sf_last_error()) and return
 * NULL. INVALID_ARG, SHAPE, FORMAT, UNSUPPORTED -> ValueError; IO -> OSError; OOM ->
 * MemoryError; XNNPACK, CANCELLED -> EngineError. */
PyObject *sf_py_raise(sf_status st);

/* Status for sf_py_finish: a Python exception is already set. */
#define SF_PY_RAISED ((sf_status)-1)

/* The end of a binding that computed y from n input arrays (the varargs, PyArrayObject *,
 * NULL allowed): drops the inputs; returns y when st is SF_OK, else drops y too and returns
 * NULL, raising the status's exception unless st is SF_PY_RAISED. */
PyObject *sf_py_finish(sf_status st, PyArrayObject *y, int n, ...);

/* Convert `obj` to a C-contiguous, aligned float32 ndarray (new reference), copying when it is
 * not already one (non-contiguous input is accepted by copying). Real numeric dtypes (integer,
 * float) are cast; bool, complex, object and string arrays raise TypeError naming `name`.
 * If ndim >= 0 the array must have exactly that many dimensions (ValueError otherwise). Any
 * dimension of size 0 raises ValueError. Returns NULL with an exception set on failure. */
PyArrayObject *sf_py_f32(PyObject *obj, const char *name, int ndim);

/* Same for int64 index arrays (integer dtypes only). */
PyArrayObject *sf_py_i64(PyObject *obj, const char *name, int ndim);

/* New float32 C-contiguous array of the given shape (NULL + MemoryError on failure). */
PyArrayObject *sf_py_new_f32(int ndim, const npy_intp *shape);

/* Shape as a string "(2, 3, 4)" into buf (for messages). */
const char *sf_py_shape_str(PyArrayObject *a, char *buf, size_t size);

/* Parts of the module (one per glue file). Each returns 0, or -1 with an exception set. */
int sf_py_init_runtime(PyObject *module);    /* runtime.c: threads, versions, CPU features */
int sf_py_init_ops(PyObject *module);        /* py_ops.c: elementwise, norms, embeddings */
int sf_py_init_attention(PyObject *module);  /* py_attention.c: attention */
int sf_py_init_xnn(PyObject *module);        /* py_xnn.c: Conv2d, Linear */
int sf_py_init_safetensors(PyObject *module);/* py_safetensors.c: SafeTensors reader */
int sf_py_init_models(PyObject *module);     /* py_models.c: UNet, VAE, TextEncoder */
int sf_py_init_scheduler(PyObject *module);  /* py_scheduler.c: Scheduler */
int sf_py_init_quant(PyObject *module);      /* py_quant.c: QConv2d, ActivationObserver */
int sf_py_init_pipeline(PyObject *module);   /* py_pipeline.c: CPipeline, randn */

#endif /* SF_PY_H */
