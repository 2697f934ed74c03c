/* py_attention.c — snapfusion._engine: multi-head scaled-dot-product attention. */
#include <math.h>

#include "sf_py.h"

/* A positive int argument (bool and non-integers rejected). -1 with an exception on failure. */
static Py_ssize_t att_py_size(PyObject *obj, const char *name, int allow_zero) {
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(obj);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s is out of range: %S", name, obj);
        return -1;
    }
    if (n < 0 || (n == 0 && !allow_zero)) {
        PyErr_Format(PyExc_ValueError, "%s must be %s, got %zd", name,
                     allow_zero ? ">= 0" : "> 0", n);
        return -1;
    }
    return n;
}

static PyObject *py_attention(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"q", "k", "v", "heads", "causal", "scale", "bf16", NULL};
    PyObject *q_obj, *k_obj, *v_obj, *heads_obj, *scale_obj = Py_None;
    int causal = 0, bf16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|pOp:attention", kwlist, &q_obj, &k_obj,
                                     &v_obj, &heads_obj, &causal, &scale_obj, &bf16))
        return NULL;
    Py_ssize_t heads = att_py_size(heads_obj, "heads", 0);
    if (heads < 0)
        return NULL;
    float scale = 0.0f;
    if (scale_obj != Py_None) {
        if (PyBool_Check(scale_obj) || !(PyFloat_Check(scale_obj) || PyLong_Check(scale_obj)))
            return PyErr_Format(PyExc_TypeError, "scale must be a float or None, got %.100s",
                                Py_TYPE(scale_obj)->tp_name);
        double s = PyFloat_AsDouble(scale_obj);
        if (s == -1.0 && PyErr_Occurred())
            return NULL;
        if (!isfinite(s) || s == 0.0 || !isfinite((float)s) || (float)s == 0.0f)
            return PyErr_Format(PyExc_ValueError,
                                "scale must be a finite nonzero float32 number, got %R",
                                scale_obj);
        scale = (float)s;
    }

    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *out = NULL;
    char b1[96], b2[96], b3[96];
    q = sf_py_f32(q_obj, "q", 3);
    if (!q)
        goto fail;
    k = sf_py_f32(k_obj, "k", 3);
    if (!k)
        goto fail;
    v = sf_py_f32(v_obj, "v", 3);
    if (!v)
        goto fail;
    npy_intp batch = PyArray_DIM(q, 0), q_len = PyArray_DIM(q, 1), width = PyArray_DIM(q, 2);
    npy_intp kv_len = PyArray_DIM(k, 1);
    if (PyArray_DIM(k, 0) != batch || PyArray_DIM(v, 0) != batch ||
        PyArray_DIM(k, 2) != width || PyArray_DIM(v, 2) != width) {
        PyErr_Format(PyExc_ValueError,
                     "attention: q %s, k %s and v %s must agree in batch and width",
                     sf_py_shape_str(q, b1, sizeof b1), sf_py_shape_str(k, b2, sizeof b2),
                     sf_py_shape_str(v, b3, sizeof b3));
        goto fail;
    }
    if (PyArray_DIM(v, 1) != kv_len) {
        PyErr_Format(PyExc_ValueError, "attention: k %s and v %s must have the same length",
                     sf_py_shape_str(k, b2, sizeof b2), sf_py_shape_str(v, b3, sizeof b3));
        goto fail;
    }
    if (width % heads != 0) {
        PyErr_Format(PyExc_ValueError, "attention: width %zd of q %s is not divisible by "
                     "heads = %zd", (Py_ssize_t)width, sf_py_shape_str(q, b1, sizeof b1), heads);
        goto fail;
    }
    if (causal && q_len != kv_len) {
        PyErr_Format(PyExc_ValueError, "attention: causal needs q_len == kv_len, got q %s, k %s",
                     sf_py_shape_str(q, b1, sizeof b1), sf_py_shape_str(k, b2, sizeof b2));
        goto fail;
    }
    npy_intp shape[3] = {batch, q_len, width};
    out = sf_py_new_f32(3, shape);
    if (!out)
        goto fail;

    sf_attention_params p = {0};
    p.batch = (size_t)batch;
    p.heads = (size_t)heads;
    p.q_len = (size_t)q_len;
    p.kv_len = (size_t)kv_len;
    p.head_dim = (size_t)(width / heads);
    p.scale = scale;
    p.causal = causal;
    p.bf16 = bf16;
    const float *qd = PyArray_DATA(q), *kd = PyArray_DATA(k), *vd = PyArray_DATA(v);
    float *od = PyArray_DATA(out);
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_attention(&p, qd, kd, vd, od, NULL);
    Py_END_ALLOW_THREADS
    if (st != SF_OK) {
        sf_py_raise(st);
        goto fail;
    }
    Py_DECREF(q);
    Py_DECREF(k);
    Py_DECREF(v);
    return (PyObject *)out;

fail:
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(v);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_attention_workspace_size(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[5];
    if (!PyArg_ParseTuple(args, "OOOOO:attention_workspace_size", &o[0], &o[1], &o[2], &o[3],
                          &o[4]))
        return NULL;
    static const char *names[5] = {"batch", "heads", "q_len", "kv_len", "head_dim"};
    Py_ssize_t n[5];
    for (int i = 0; i < 5; i++) {
        n[i] = att_py_size(o[i], names[i], 1);
        if (n[i] < 0)
            return NULL;
    }
    sf_attention_params p = {0};
    p.batch = (size_t)n[0];
    p.heads = (size_t)n[1];
    p.q_len = (size_t)n[2];
    p.kv_len = (size_t)n[3];
    p.head_dim = (size_t)n[4];
    size_t bytes = 0;
    sf_status st = sf_attention_workspace_size(&p, &bytes);
    if (st != SF_OK)
        return sf_py_raise(st);
    return PyLong_FromSize_t(bytes);
}

static PyMethodDef attention_methods[] = {
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_VARARGS | METH_KEYWORDS,
     "attention(q, k, v, heads, causal=False, scale=None, bf16=False) -> ndarray\n\n"
     "Multi-head scaled-dot-product attention, softmax(q k^T * scale) v per head.\n"
     "q: (batch, q_len, heads * head_dim); k, v: (batch, kv_len, heads * head_dim); any real\n"
     "dtype (computed in float32). causal masks keys j > i (q_len == kv_len). scale defaults\n"
     "to 1 / sqrt(head_dim). bf16: bfloat16 products on AMX tiles where the CPU has them\n"
     "(not with causal; float32 elsewhere), as the engine's int8 models run it. Returns\n"
     "(batch, q_len, heads * head_dim) float32."},
    {"attention_workspace_size", py_attention_workspace_size, METH_VARARGS,
     "attention_workspace_size(batch, heads, q_len, kv_len, head_dim) -> int\n\n"
     "Bytes of scratch the attention kernel uses at the current thread count."},
    {NULL, NULL, 0, NULL},
};

int sf_py_init_attention(PyObject *module) {
    return PyModule_AddFunctions(module, attention_methods);
}
