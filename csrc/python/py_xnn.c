/*
 * py_xnn.c — snapfusion._engine: convolution and fully connected layers (Conv2d, Linear and
 * the functional conv2d, linear).
 *
 * Weights are given in PyTorch layouts; activations are NHWC (convolution) or (..., features)
 * (linear), float32 C-contiguous (other real dtypes and layouts are converted). The GIL is
 * released while weights are packed and while a layer runs. A layer object runs one call at a
 * time: a second Python thread calling it meanwhile gets a RuntimeError instead of a race.
 */
#include <stdint.h>
#include <string.h>

#include "sf_py.h"

/* Largest stride/padding accepted (far beyond any real network; keeps size math trivial). */
#define PYXNN_MAX_GEOM (1u << 20)

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* One non-negative int from a Python integer (bool and float are TypeError). */
static int parse_uint(PyObject *o, const char *fn, const char *name, uint32_t lo, uint32_t *out) {
    if (PyBool_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be an int or a tuple of ints, got %.100s", fn,
                     name, Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *idx = PyNumber_Index(o);
    if (!idx)
        return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < (long long)lo || v > (long long)PYXNN_MAX_GEOM) {
        PyErr_Format(PyExc_ValueError, "%s: %s value %lld out of range [%u, %u]", fn, name,
                     overflow ? (long long)-1 : v, lo, PYXNN_MAX_GEOM);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* An int or a tuple/list of ints whose length is one of `lens` (0-terminated; `expected`
 * spells them for messages). Returns the number of values read into out[], or -1. */
static int parse_ints(PyObject *o, const char *fn, const char *name, uint32_t lo,
                      const int *lens, const char *expected, uint32_t *out) {
    if (!PyTuple_Check(o) && !PyList_Check(o)) {
        if (parse_uint(o, fn, name, lo, &out[0]) < 0)
            return -1;
        return 1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
    int ok = 0;
    for (int i = 0; lens[i]; i++)
        ok |= n == lens[i];
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "%s: %s has %zd values, expected an int or %s", fn,
                     name, n, expected);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (parse_uint(PySequence_Fast_GET_ITEM(o, i), fn, name, lo, &out[i]) < 0)
            return -1;
    return (int)n;
}

/* stride: int or (sh, sw). */
static int parse_stride(PyObject *o, const char *fn, uint32_t *sh, uint32_t *sw) {
    static const int lens[] = {2, 0};
    uint32_t v[2];
    int n = parse_ints(o, fn, "stride", 1, lens, "2 values (sh, sw)", v);
    if (n < 0)
        return -1;
    *sh = v[0];
    *sw = n == 1 ? v[0] : v[1];
    return 0;
}

/* padding: int, (ph, pw) or (top, left, bottom, right). */
static int parse_padding(PyObject *o, const char *fn, uint32_t pad[4]) {
    static const int lens[] = {2, 4, 0};
    uint32_t v[4];
    int n = parse_ints(o, fn, "padding", 0, lens,
                       "(ph, pw) or (top, left, bottom, right)", v);
    if (n < 0)
        return -1;
    if (n == 1) {
        pad[0] = pad[1] = pad[2] = pad[3] = v[0];
    } else if (n == 2) {
        pad[0] = pad[2] = v[0];
        pad[1] = pad[3] = v[1];
    } else {
        memcpy(pad, v, sizeof v);
    }
    return 0;
}

/* Optional bias: None -> NULL, else a (n,) float32 array (new reference in *out). */
static int parse_bias(PyObject *o, const char *fn, size_t n, PyArrayObject **out) {
    *out = NULL;
    if (!o || o == Py_None)
        return 0;
    PyArrayObject *b = sf_py_f32(o, "bias", 1);
    if (!b)
        return -1;
    if ((size_t)PyArray_DIM(b, 0) != n) {
        char buf[64];
        PyErr_Format(PyExc_ValueError, "%s: bias has shape %s, expected (%zu,)", fn,
                     sf_py_shape_str(b, buf, sizeof buf), n);
        Py_DECREF(b);
        return -1;
    }
    *out = b;
    return 0;
}

/* XNNPACK may read up to 16 bytes past the end of an input. Reading within the page of the
 * array's last byte can never fault; otherwise run on a padded copy. Returns the pointer to
 * use and sets *copy to a buffer the caller frees with PyMem_RawFree (NULL if none). */
static const float *padded_input(PyArrayObject *a, float **copy) {
    const char *data = PyArray_DATA(a);
    size_t nbytes = (size_t)PyArray_NBYTES(a);
    uintptr_t last = (uintptr_t)(data + nbytes - 1), past = (uintptr_t)(data + nbytes + 63);
    *copy = NULL;
    if ((last & ~(uintptr_t)4095) == (past & ~(uintptr_t)4095))
        return (const float *)data;
    float *buf = PyMem_RawMalloc(nbytes + 64);
    if (!buf) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(buf, data, nbytes);
    memset((char *)buf + nbytes, 0, 64);
    *copy = buf;
    return buf;
}

/* ------------------------------------------------------------------------------------------ */
/* Conv2d                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    sf_conv2d *conv;
    sf_conv2d_params p;
    int busy; /* a call is running (read and written with the GIL held) */
} ConvObject;

/* Build the operator from Python arguments (shared by Conv2d() and conv2d()). */
static int conv_setup(const char *fn, PyObject *wo, PyObject *bo, PyObject *so, PyObject *po,
                      PyObject *go, sf_conv2d_params *p, sf_conv2d **conv) {
    PyArrayObject *w = NULL, *b = NULL;
    uint32_t groups = 1, pad[4];
    int ret = -1;
    sf_conv2d_params_default(p);
    if (go && parse_uint(go, fn, "groups", 1, &groups) < 0)
        return -1;
    if (so && parse_stride(so, fn, &p->stride_h, &p->stride_w) < 0)
        return -1;
    if (po) {
        if (parse_padding(po, fn, pad) < 0)
            return -1;
        p->pad_top = pad[0];
        p->pad_left = pad[1];
        p->pad_bottom = pad[2];
        p->pad_right = pad[3];
    }
    w = sf_py_f32(wo, "weight", 4);
    if (!w)
        goto done;
    size_t out_ch = (size_t)PyArray_DIM(w, 0), gin = (size_t)PyArray_DIM(w, 1);
    npy_intp kh = PyArray_DIM(w, 2), kw = PyArray_DIM(w, 3);
    if (out_ch % groups != 0) {
        char buf[96];
        PyErr_Format(PyExc_ValueError, "%s: weight of shape %s has %zu output channels, not a "
                     "multiple of groups=%u", fn, sf_py_shape_str(w, buf, sizeof buf), out_ch,
                     groups);
        goto done;
    }
    if (kh > (npy_intp)PYXNN_MAX_GEOM || kw > (npy_intp)PYXNN_MAX_GEOM) {
        char buf[96];
        PyErr_Format(PyExc_ValueError, "%s: kernel of weight %s is too large", fn,
                     sf_py_shape_str(w, buf, sizeof buf));
        goto done;
    }
    p->in_channels = gin * groups;
    p->out_channels = out_ch;
    p->kernel_h = (uint32_t)kh;
    p->kernel_w = (uint32_t)kw;
    p->groups = groups;
    if (parse_bias(bo, fn, out_ch, &b) < 0)
        goto done;
    sf_status st;
    const float *wd = PyArray_DATA(w), *bd = b ? (const float *)PyArray_DATA(b) : NULL;
    Py_BEGIN_ALLOW_THREADS
    st = sf_conv2d_create(p, wd, bd, conv);
    Py_END_ALLOW_THREADS
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    ret = 0;
done:
    Py_XDECREF(w);
    Py_XDECREF(b);
    return ret;
}

/* Run on x (B, H, W, C); returns a new (B, OH, OW, O) array. */
static PyObject *conv_apply(const char *fn, sf_conv2d *conv, const sf_conv2d_params *p,
                            PyObject *xo) {
    PyArrayObject *x = NULL, *y = NULL;
    float *copy = NULL;
    char buf[96];
    size_t oh, ow;
    sf_status st;
    x = sf_py_f32(xo, "x", 4);
    if (!x)
        return NULL;
    if ((size_t)PyArray_DIM(x, 3) != p->in_channels) {
        PyErr_Format(PyExc_ValueError, "%s: x of shape %s (NHWC) has %zd channels, the layer "
                     "expects %zu", fn, sf_py_shape_str(x, buf, sizeof buf),
                     (Py_ssize_t)PyArray_DIM(x, 3), p->in_channels);
        goto fail;
    }
    size_t batch = (size_t)PyArray_DIM(x, 0), h = (size_t)PyArray_DIM(x, 1),
           w = (size_t)PyArray_DIM(x, 2);
    st = sf_conv2d_output_size(conv, h, w, &oh, &ow);
    if (st != SF_OK) {
        PyErr_Format(PyExc_ValueError, "%s: x of shape %s: %s", fn,
                     sf_py_shape_str(x, buf, sizeof buf), sf_last_error());
        goto fail;
    }
    npy_intp shape[4] = {(npy_intp)batch, (npy_intp)oh, (npy_intp)ow, (npy_intp)p->out_channels};
    y = sf_py_new_f32(4, shape);
    if (!y)
        goto fail;
    const float *xd = padded_input(x, &copy);
    if (!xd)
        goto fail;
    float *yd = PyArray_DATA(y);
    Py_BEGIN_ALLOW_THREADS
    st = sf_conv2d_run(conv, xd, batch, h, w, yd);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(copy);
    return sf_py_finish(st, y, 1, x);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 1, x);
}

static PyObject *Conv_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"weight", "bias", "stride", "padding", "groups", NULL};
    PyObject *wo, *bo = Py_None, *so = NULL, *po = NULL, *go = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOOO:Conv2d", kwlist, &wo, &bo, &so, &po,
                                     &go))
        return NULL;
    ConvObject *self = (ConvObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    if (conv_setup("Conv2d", wo, bo, so, po, go, &self->p, &self->conv) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Conv_dealloc(PyObject *op) {
    ConvObject *self = (ConvObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    sf_conv2d_destroy(self->conv);
    self->conv = NULL;
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Conv_call(PyObject *op, PyObject *args, PyObject *kwargs) {
    ConvObject *self = (ConvObject *)op;
    static char *kwlist[] = {"x", NULL};
    PyObject *xo;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Conv2d.__call__", kwlist, &xo))
        return NULL;
    if (self->busy)
        return PyErr_Format(PyExc_RuntimeError, "Conv2d: this layer is already running in "
                            "another thread; use one layer object per thread");
    self->busy = 1;
    PyObject *y = conv_apply("Conv2d", self->conv, &self->p, xo);
    self->busy = 0;
    return y;
}

static PyObject *Conv_repr(PyObject *op) {
    ConvObject *self = (ConvObject *)op;
    const sf_conv2d_params *p = &self->p;
    return PyUnicode_FromFormat("Conv2d(in_channels=%zu, out_channels=%zu, kernel_size=(%u, %u), "
                                "stride=(%u, %u), padding=(%u, %u, %u, %u), groups=%u)",
                                p->in_channels, p->out_channels, p->kernel_h, p->kernel_w,
                                p->stride_h, p->stride_w, p->pad_top, p->pad_left,
                                p->pad_bottom, p->pad_right, p->groups);
}

static PyObject *Conv_get_in(PyObject *op, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(((ConvObject *)op)->p.in_channels);
}
static PyObject *Conv_get_out(PyObject *op, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(((ConvObject *)op)->p.out_channels);
}
static PyObject *Conv_get_kernel(PyObject *op, void *closure) {
    (void)closure;
    const sf_conv2d_params *p = &((ConvObject *)op)->p;
    return Py_BuildValue("(II)", p->kernel_h, p->kernel_w);
}
static PyObject *Conv_get_stride(PyObject *op, void *closure) {
    (void)closure;
    const sf_conv2d_params *p = &((ConvObject *)op)->p;
    return Py_BuildValue("(II)", p->stride_h, p->stride_w);
}
static PyObject *Conv_get_padding(PyObject *op, void *closure) {
    (void)closure;
    const sf_conv2d_params *p = &((ConvObject *)op)->p;
    return Py_BuildValue("(IIII)", p->pad_top, p->pad_left, p->pad_bottom, p->pad_right);
}
static PyObject *Conv_get_groups(PyObject *op, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(((ConvObject *)op)->p.groups);
}

static PyGetSetDef Conv_getset[] = {
    {"in_channels", Conv_get_in, NULL, "Input channels.", NULL},
    {"out_channels", Conv_get_out, NULL, "Output channels.", NULL},
    {"kernel_size", Conv_get_kernel, NULL, "(kh, kw).", NULL},
    {"stride", Conv_get_stride, NULL, "(sh, sw).", NULL},
    {"padding", Conv_get_padding, NULL, "(top, left, bottom, right).", NULL},
    {"groups", Conv_get_groups, NULL, "Groups (1: dense; in_channels: depthwise).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Conv_slots[] = {
    {Py_tp_new, Conv_new},
    {Py_tp_dealloc, Conv_dealloc},
    {Py_tp_call, Conv_call},
    {Py_tp_repr, Conv_repr},
    {Py_tp_getset, Conv_getset},
    {Py_tp_doc,
     "Conv2d(weight, bias=None, stride=1, padding=0, groups=1)\n\n"
     "2-D convolution on NHWC float32 activations.\n\n"
     "weight: (out, in/groups, kh, kw) as PyTorch; bias: (out,) or None; stride: int or\n"
     "(sh, sw); padding: int, (ph, pw) or (top, left, bottom, right); groups: 1 (dense),\n"
     "in_channels (depthwise) or any divisor of both channel counts.\n"
     "Call with x of shape (B, H, W, in) -> (B, OH, OW, out) float32."},
    {0, NULL},
};

static PyType_Spec Conv_spec = {
    .name = "snapfusion._engine.Conv2d",
    .basicsize = sizeof(ConvObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Conv_slots,
};

/* ------------------------------------------------------------------------------------------ */
/* Linear                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    sf_linear *lin;
    size_t in, out;
    int busy;
} LinearObject;

static int linear_setup(const char *fn, PyObject *wo, PyObject *bo, size_t *in, size_t *out,
                        sf_linear **lin) {
    PyArrayObject *w = NULL, *b = NULL;
    int ret = -1;
    w = sf_py_f32(wo, "weight", 2);
    if (!w)
        return -1;
    *out = (size_t)PyArray_DIM(w, 0);
    *in = (size_t)PyArray_DIM(w, 1);
    if (parse_bias(bo, fn, *out, &b) < 0)
        goto done;
    sf_status st;
    const float *wd = PyArray_DATA(w), *bd = b ? (const float *)PyArray_DATA(b) : NULL;
    size_t nin = *in, nout = *out;
    Py_BEGIN_ALLOW_THREADS
    st = sf_linear_create(nin, nout, wd, bd, lin);
    Py_END_ALLOW_THREADS
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    ret = 0;
done:
    Py_XDECREF(w);
    Py_XDECREF(b);
    return ret;
}

/* Run on x (..., in); returns a new (..., out) array. */
static PyObject *linear_apply(const char *fn, sf_linear *lin, size_t in, size_t out,
                              PyObject *xo) {
    PyArrayObject *x = NULL, *y = NULL;
    float *copy = NULL;
    char buf[96];
    x = sf_py_f32(xo, "x", -1);
    if (!x)
        return NULL;
    int nd = PyArray_NDIM(x);
    if (nd < 1 || nd > NPY_MAXDIMS || (size_t)PyArray_DIM(x, nd - 1) != in) {
        PyErr_Format(PyExc_ValueError, "%s: x of shape %s must have a last dimension of %zu "
                     "(the layer's in_features)", fn, sf_py_shape_str(x, buf, sizeof buf), in);
        goto fail;
    }
    npy_intp shape[NPY_MAXDIMS];
    size_t rows = 1;
    for (int i = 0; i < nd - 1; i++) {
        shape[i] = PyArray_DIM(x, i);
        rows *= (size_t)PyArray_DIM(x, i); /* no overflow: the array exists */
    }
    shape[nd - 1] = (npy_intp)out;
    y = sf_py_new_f32(nd, shape);
    if (!y)
        goto fail;
    const float *xd = padded_input(x, &copy);
    if (!xd)
        goto fail;
    float *yd = PyArray_DATA(y);
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_linear_run(lin, xd, rows, yd);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(copy);
    return sf_py_finish(st, y, 1, x);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 1, x);
}

static PyObject *Linear_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"weight", "bias", NULL};
    PyObject *wo, *bo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:Linear", kwlist, &wo, &bo))
        return NULL;
    LinearObject *self = (LinearObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    if (linear_setup("Linear", wo, bo, &self->in, &self->out, &self->lin) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Linear_dealloc(PyObject *op) {
    LinearObject *self = (LinearObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    sf_linear_destroy(self->lin);
    self->lin = NULL;
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Linear_call(PyObject *op, PyObject *args, PyObject *kwargs) {
    LinearObject *self = (LinearObject *)op;
    static char *kwlist[] = {"x", NULL};
    PyObject *xo;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Linear.__call__", kwlist, &xo))
        return NULL;
    if (self->busy)
        return PyErr_Format(PyExc_RuntimeError, "Linear: this layer is already running in "
                            "another thread; use one layer object per thread");
    self->busy = 1;
    PyObject *y = linear_apply("Linear", self->lin, self->in, self->out, xo);
    self->busy = 0;
    return y;
}

static PyObject *Linear_repr(PyObject *op) {
    LinearObject *self = (LinearObject *)op;
    return PyUnicode_FromFormat("Linear(in_features=%zu, out_features=%zu)", self->in,
                                self->out);
}

static PyObject *Linear_get_in(PyObject *op, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(((LinearObject *)op)->in);
}
static PyObject *Linear_get_out(PyObject *op, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(((LinearObject *)op)->out);
}

static PyGetSetDef Linear_getset[] = {
    {"in_features", Linear_get_in, NULL, "Input features.", NULL},
    {"out_features", Linear_get_out, NULL, "Output features.", NULL},
    {"in_channels", Linear_get_in, NULL, "Same as in_features.", NULL},
    {"out_channels", Linear_get_out, NULL, "Same as out_features.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Linear_slots[] = {
    {Py_tp_new, Linear_new},
    {Py_tp_dealloc, Linear_dealloc},
    {Py_tp_call, Linear_call},
    {Py_tp_repr, Linear_repr},
    {Py_tp_getset, Linear_getset},
    {Py_tp_doc, "Linear(weight, bias=None)\n\n"
                "Fully connected layer y = x W^T + b. weight: (out, in) as PyTorch; bias:\n"
                "(out,) or None. Call with x of shape (..., in) -> (..., out) float32."},
    {0, NULL},
};

static PyType_Spec Linear_spec = {
    .name = "snapfusion._engine.Linear",
    .basicsize = sizeof(LinearObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Linear_slots,
};

/* ------------------------------------------------------------------------------------------ */
/* Functional forms                                                                           */
/* ------------------------------------------------------------------------------------------ */

static PyObject *py_conv2d(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "weight", "bias", "stride", "padding", "groups", NULL};
    PyObject *xo, *wo, *bo = Py_None, *so = NULL, *po = NULL, *go = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|OOOO:conv2d", kwlist, &xo, &wo, &bo, &so,
                                     &po, &go))
        return NULL;
    sf_conv2d_params p;
    sf_conv2d *conv = NULL;
    if (conv_setup("conv2d", wo, bo, so, po, go, &p, &conv) < 0)
        return NULL;
    PyObject *y = conv_apply("conv2d", conv, &p, xo);
    sf_conv2d_destroy(conv);
    return y;
}

static PyObject *py_linear(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "weight", "bias", NULL};
    PyObject *xo, *wo, *bo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:linear", kwlist, &xo, &wo, &bo))
        return NULL;
    size_t in, out;
    sf_linear *lin = NULL;
    if (linear_setup("linear", wo, bo, &in, &out, &lin) < 0)
        return NULL;
    PyObject *y = linear_apply("linear", lin, in, out, xo);
    sf_linear_destroy(lin);
    return y;
}

static PyMethodDef xnn_methods[] = {
    {"conv2d", (PyCFunction)(void (*)(void))py_conv2d, METH_VARARGS | METH_KEYWORDS,
     "conv2d(x, weight, bias=None, stride=1, padding=0, groups=1) -> ndarray\n\n"
     "2-D convolution of x (B, H, W, in) NHWC with weight (out, in/groups, kh, kw);\n"
     "returns (B, OH, OW, out) float32. See Conv2d."},
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_VARARGS | METH_KEYWORDS,
     "linear(x, weight, bias=None) -> ndarray\n\n"
     "x (..., in) times weight (out, in) transposed plus bias: (..., out) float32."},
    {NULL, NULL, 0, NULL},
};

int sf_py_init_xnn(PyObject *module) {
    if (PyModule_AddFunctions(module, xnn_methods) < 0)
        return -1;
    PyObject *conv_type = PyType_FromModuleAndSpec(module, &Conv_spec, NULL);
    if (!conv_type)
        return -1;
    int rc = PyModule_AddObjectRef(module, "Conv2d", conv_type);
    Py_DECREF(conv_type);
    if (rc < 0)
        return -1;
    PyObject *lin_type = PyType_FromModuleAndSpec(module, &Linear_spec, NULL);
    if (!lin_type)
        return -1;
    rc = PyModule_AddObjectRef(module, "Linear", lin_type);
    Py_DECREF(lin_type);
    return rc < 0 ? -1 : 0;
}
