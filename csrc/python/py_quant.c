/*
 * py_quant.c — snapfusion._engine: int8 layers and calibration.
 *
 * - QConv2d: a quantized convolution (or linear layer) from int8 weights with per-output-channel
 *   scales, run on float32 NHWC activations (W8A8, see csrc/sf_quant.h).
 * - ActivationObserver: while started, every convolution and linear layer of the engine's models
 *   records histograms of its inputs and outputs (calibration).
 * - quantize_rows, int8_backends, observer_bin_edges: helpers.
 * The GIL is released while weights are packed and while a layer runs; a QConv2d runs one call
 * at a time (a second thread gets RuntimeError).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "sf_py.h"
#include "sf_quant.h"

#define PYQ_MAX_GEOM (1u << 20)

/* ---- argument helpers ---- */

/* A C-contiguous int8 array (new reference); other dtypes are TypeError. */
static PyArrayObject *as_int8(PyObject *obj, const char *name) {
    PyArrayObject *tmp = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!tmp) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected an int8 array, got %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (PyArray_TYPE(tmp) != NPY_INT8) {
        PyErr_Format(PyExc_TypeError, "%s: expected dtype int8, got '%c%d'", name,
                     PyArray_DESCR(tmp)->kind, (int)PyArray_ITEMSIZE(tmp));
        Py_DECREF(tmp);
        return NULL;
    }
    for (int i = 0; i < PyArray_NDIM(tmp); i++)
        if (PyArray_DIM(tmp, i) == 0) {
            PyErr_Format(PyExc_ValueError, "%s: empty dimension", name);
            Py_DECREF(tmp);
            return NULL;
        }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)tmp, NPY_INT8,
                                                           NPY_ARRAY_IN_ARRAY);
    Py_DECREF(tmp);
    return out;
}

static int parse_u32(PyObject *o, const char *name, uint32_t lo, uint32_t *out) {
    if (PyBool_Check(o) || !PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "QConv2d: %s must be an int or a tuple of ints, got "
                     "%.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < (long long)lo || v > (long long)PYQ_MAX_GEOM) {
        PyErr_Format(PyExc_ValueError, "QConv2d: %s value out of range [%u, %u]", name, lo,
                     PYQ_MAX_GEOM);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* int, or a tuple of 2 (or 4 if allow4) ints. Returns the count read, or -1. */
static int parse_geom(PyObject *o, const char *name, uint32_t lo, int allow4, uint32_t *v) {
    if (!PyTuple_Check(o) && !PyList_Check(o))
        return parse_u32(o, name, lo, &v[0]) < 0 ? -1 : 1;
    Py_ssize_t n = PySequence_Size(o);
    if (n != 2 && !(allow4 && n == 4)) {
        PyErr_Format(PyExc_ValueError, "QConv2d: %s must be an int or a tuple of 2%s ints", name,
                     allow4 ? " or 4" : "");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_GetItem(o, i);
        if (!item)
            return -1;
        int rc = parse_u32(item, name, lo, &v[i]);
        Py_DECREF(item);
        if (rc < 0)
            return -1;
    }
    return (int)n;
}

/* Optional (scale, zero_point) pair: both None or both given. */
static int parse_qparams(PyObject *scale, PyObject *zp, const char *what, sf_qparams *out) {
    memset(out, 0, sizeof *out);
    int has_s = scale && scale != Py_None, has_z = zp && zp != Py_None;
    if (!has_s && !has_z)
        return 0;
    if (has_s != has_z) {
        PyErr_Format(PyExc_ValueError, "QConv2d: %s_scale and %s_zero_point go together", what,
                     what);
        return -1;
    }
    double s = PyFloat_AsDouble(scale);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (PyBool_Check(zp) || !PyLong_Check(zp)) {
        PyErr_Format(PyExc_TypeError, "QConv2d: %s_zero_point must be an int", what);
        return -1;
    }
    long z = PyLong_AsLong(zp);
    if (z == -1 && PyErr_Occurred())
        return -1;
    if (!(s > 0.0) || !isfinite(s) || s > 3.0e38 || s < 1e-30) {
        PyErr_Format(PyExc_ValueError, "QConv2d: %s_scale must be finite and > 0, got %g", what,
                     s);
        return -1;
    }
    if (z < -128 || z > 127) {
        PyErr_Format(PyExc_ValueError, "QConv2d: %s_zero_point must be in [-128, 127], got %ld",
                     what, z);
        return -1;
    }
    out->enabled = 1;
    out->scale = (float)s;
    out->zero_point = (int)z;
    return 0;
}

/* ================================ QConv2d ================================ */

typedef struct {
    PyObject_HEAD
    sf_qconv *q;
    int busy;
    int linear; /* created from a 2-D weight */
} PyQConv;

static int qconv_init(PyQConv *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"weight", "weight_scale", "bias", "stride", "padding",
                             "input_scale", "input_zero_point", "output_scale",
                             "output_zero_point", "backend", NULL};
    PyObject *wo, *so, *bo = Py_None, *stride = NULL, *padding = NULL;
    PyObject *is = Py_None, *iz = Py_None, *os = Py_None, *oz = Py_None;
    const char *backend = "auto";
    PyArrayObject *w = NULL, *s = NULL, *b = NULL;
    int rc = -1;
    char buf[96];
    if (self->q) {
        PyErr_SetString(PyExc_RuntimeError, "QConv2d is already initialized");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O$OOOOOOs", kwlist, &wo, &so, &bo, &stride,
                                     &padding, &is, &iz, &os, &oz, &backend))
        return -1;
    sf_qconv_params p;
    sf_qconv_params_default(&p);
    if (sf_qbackend_from_name(backend, &p.backend) != SF_OK) {
        sf_py_raise(SF_ERR_INVALID_ARG);
        return -1;
    }
    w = as_int8(wo, "weight");
    if (!w)
        goto done;
    if (PyArray_NDIM(w) != 2 && PyArray_NDIM(w) != 4) {
        PyErr_Format(PyExc_ValueError, "weight: expected (out, in) or (out, in, kh, kw), got %s",
                     sf_py_shape_str(w, buf, sizeof buf));
        goto done;
    }
    self->linear = PyArray_NDIM(w) == 2;
    p.out_channels = (size_t)PyArray_DIM(w, 0);
    p.in_channels = (size_t)PyArray_DIM(w, 1);
    if (!self->linear) {
        if (PyArray_DIM(w, 2) > PYQ_MAX_GEOM || PyArray_DIM(w, 3) > PYQ_MAX_GEOM) {
            PyErr_SetString(PyExc_ValueError, "weight: kernel too large");
            goto done;
        }
        p.kernel_h = (uint32_t)PyArray_DIM(w, 2);
        p.kernel_w = (uint32_t)PyArray_DIM(w, 3);
    }
    s = sf_py_f32(so, "weight_scale", 1);
    if (!s)
        goto done;
    if ((size_t)PyArray_DIM(s, 0) != p.out_channels) {
        PyErr_Format(PyExc_ValueError, "weight_scale: expected (%zu,), got %s", p.out_channels,
                     sf_py_shape_str(s, buf, sizeof buf));
        goto done;
    }
    if (bo != Py_None) {
        b = sf_py_f32(bo, "bias", 1);
        if (!b)
            goto done;
        if ((size_t)PyArray_DIM(b, 0) != p.out_channels) {
            PyErr_Format(PyExc_ValueError, "bias: expected (%zu,), got %s", p.out_channels,
                         sf_py_shape_str(b, buf, sizeof buf));
            goto done;
        }
    }
    if (stride) {
        uint32_t v[2];
        int n = parse_geom(stride, "stride", 1, 0, v);
        if (n < 0)
            goto done;
        p.stride_h = v[0];
        p.stride_w = n == 1 ? v[0] : v[1];
    }
    if (padding) {
        uint32_t v[4];
        int n = parse_geom(padding, "padding", 0, 1, v);
        if (n < 0)
            goto done;
        if (n == 1)
            p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = v[0];
        else if (n == 2) {
            p.pad_top = p.pad_bottom = v[0];
            p.pad_left = p.pad_right = v[1];
        } else {
            p.pad_top = v[0];
            p.pad_left = v[1];
            p.pad_bottom = v[2];
            p.pad_right = v[3];
        }
    }
    if (self->linear && (p.stride_h != 1 || p.stride_w != 1 || p.pad_top || p.pad_left ||
                         p.pad_bottom || p.pad_right)) {
        PyErr_SetString(PyExc_ValueError, "QConv2d: a 2-D (linear) weight takes no stride or "
                        "padding");
        goto done;
    }
    if (parse_qparams(is, iz, "input", &p.input) < 0 ||
        parse_qparams(os, oz, "output", &p.output) < 0)
        goto done;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_qconv_create(&p, PyArray_DATA(w), PyArray_DATA(s), b ? PyArray_DATA(b) : NULL,
                         &self->q);
    Py_END_ALLOW_THREADS
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(w);
    Py_XDECREF(s);
    Py_XDECREF(b);
    return rc;
}

static void qconv_dealloc(PyQConv *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sf_qconv_destroy(self->q);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int qconv_ready(PyQConv *self) {
    if (!self->q) {
        PyErr_SetString(PyExc_RuntimeError, "QConv2d is not initialized");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this layer is already running in another thread");
        return -1;
    }
    return 0;
}

/* The output array: `out` if given (float32, C-contiguous, writeable, of the given shape; a new
 * reference), else a new array. */
static PyArrayObject *output_array(PyObject *out, int ndim, const npy_intp *shape) {
    if (!out || out == Py_None)
        return sf_py_new_f32(ndim, shape);
    if (!PyArray_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "out must be a numpy array");
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)out;
    int ok = PyArray_TYPE(a) == NPY_FLOAT32 && PyArray_IS_C_CONTIGUOUS(a) &&
             PyArray_ISWRITEABLE(a) && PyArray_ISALIGNED(a) && PyArray_NDIM(a) == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = PyArray_DIM(a, i) == shape[i];
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "out must be a writeable C-contiguous float32 array "
                        "of the output's shape");
        return NULL;
    }
    return (PyArrayObject *)Py_NewRef(out);
}

/* qconv(x (B, H, W, in), out=None) -> (B, OH, OW, out) */
static PyObject *qconv_call(PyQConv *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "out", NULL};
    PyObject *xo, *oo = NULL;
    char buf[96];
    if (qconv_ready(self) < 0)
        return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$O", kwlist, &xo, &oo))
        return NULL;
    const sf_qconv_params *p = sf_qconv_get_params(self->q);
    PyArrayObject *x = sf_py_f32(xo, "x", 4), *y = NULL;
    if (!x)
        return NULL;
    if ((size_t)PyArray_DIM(x, 3) != p->in_channels) {
        PyErr_Format(PyExc_ValueError, "x: expected (B, H, W, %zu), got %s", p->in_channels,
                     sf_py_shape_str(x, buf, sizeof buf));
        goto fail;
    }
    size_t oh, ow;
    sf_status st = sf_qconv_output_size(self->q, (size_t)PyArray_DIM(x, 1),
                                        (size_t)PyArray_DIM(x, 2), &oh, &ow);
    if (st != SF_OK) {
        sf_py_raise(st);
        goto fail;
    }
    npy_intp shape[4] = {PyArray_DIM(x, 0), (npy_intp)oh, (npy_intp)ow,
                         (npy_intp)p->out_channels};
    y = output_array(oo, 4, shape);
    if (!y)
        goto fail;
    if (qconv_ready(self) < 0)
        goto fail;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = sf_qconv_run(self->q, PyArray_DATA(x), (size_t)PyArray_DIM(x, 0),
                      (size_t)PyArray_DIM(x, 1), (size_t)PyArray_DIM(x, 2), PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    return sf_py_finish(st, y, 1, x);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 1, x);
}

/* qconv.linear(x (rows, in)) -> (rows, out) for a 1x1 layer */
static PyObject *qconv_linear(PyQConv *self, PyObject *xo) {
    char buf[96];
    if (qconv_ready(self) < 0)
        return NULL;
    const sf_qconv_params *p = sf_qconv_get_params(self->q);
    PyArrayObject *x = sf_py_f32(xo, "x", 2), *y = NULL;
    if (!x)
        return NULL;
    if ((size_t)PyArray_DIM(x, 1) != p->in_channels) {
        PyErr_Format(PyExc_ValueError, "x: expected (rows, %zu), got %s", p->in_channels,
                     sf_py_shape_str(x, buf, sizeof buf));
        goto fail;
    }
    npy_intp shape[2] = {PyArray_DIM(x, 0), (npy_intp)p->out_channels};
    y = sf_py_new_f32(2, shape);
    if (!y)
        goto fail;
    if (qconv_ready(self) < 0)
        goto fail;
    self->busy = 1;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_qconv_run_linear(self->q, PyArray_DATA(x), (size_t)PyArray_DIM(x, 0),
                             PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    return sf_py_finish(st, y, 1, x);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 1, x);
}

static PyObject *qconv_get_backend(PyQConv *self, void *closure) {
    (void)closure;
    if (!self->q)
        Py_RETURN_NONE;
    return PyUnicode_FromString(sf_qbackend_name(sf_qconv_backend(self->q)));
}

static PyObject *qconv_get_bytes(PyQConv *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(self->q ? sf_qconv_packed_bytes(self->q) : 0);
}

static PyMethodDef qconv_methods[] = {
    {"linear", (PyCFunction)qconv_linear, METH_O,
     "linear(x (rows, in)) -> (rows, out): a 1x1 layer applied to rows of features."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef qconv_getset[] = {
    {"backend", (getter)qconv_get_backend, NULL,
     "str: the back end that runs the layer ('amx', 'vnni', 'xnnpack' or 'reference').", NULL},
    {"packed_bytes", (getter)qconv_get_bytes, NULL,
     "int: bytes of packed weights and per-channel constants.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot qconv_slots[] = {
    {Py_tp_doc,
     "QConv2d(weight, weight_scale, bias=None, *, stride=1, padding=0, input_scale=None, "
     "input_zero_point=None, output_scale=None, output_zero_point=None, backend='auto')\n\n"
     "An int8 (W8A8) convolution: weight int8 (out, in, kh, kw) — or (out, in) for a linear "
     "layer —, weight_scale float32 (out,) (w = scale * q), bias float32 (out,). Activations "
     "are quantized per tensor with (input_scale, input_zero_point) (int8 asymmetric), or from "
     "each input's min/max when not given. output_scale/output_zero_point are needed by the "
     "'xnnpack' back end (its int8 output). padding: int, (ph, pw) or (top, left, bottom, "
     "right).\n"
     "Call: layer(x (B, H, W, in) float32 NHWC, *, out=None) -> (B, OH, OW, out) float32 "
     "(written into `out`, a float32 C-contiguous array of that shape, when given)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, qconv_init},
    {Py_tp_dealloc, qconv_dealloc},
    {Py_tp_call, qconv_call},
    {Py_tp_methods, qconv_methods},
    {Py_tp_getset, qconv_getset},
    {0, NULL},
};

static PyType_Spec qconv_spec = {"snapfusion._engine.QConv2d", sizeof(PyQConv), 0,
                                 Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, qconv_slots};

/* =========================== ActivationObserver =========================== */

typedef struct {
    PyObject_HEAD
    sf_qobserver *o;
    int running;
} PyObserver;

static int observer_init(PyObserver *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    if (self->o) {
        PyErr_SetString(PyExc_RuntimeError, "ActivationObserver is already initialized");
        return -1;
    }
    sf_status st = sf_qobserver_create(&self->o);
    if (st != SF_OK) {
        sf_py_raise(st);
        return -1;
    }
    return 0;
}

static void observer_dealloc(PyObserver *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sf_qobserver *o = self->o;
    self->o = NULL;
    if (o) {
        Py_BEGIN_ALLOW_THREADS
        sf_qobserver_destroy(o); /* uninstalls, waiting for running observations */
        Py_END_ALLOW_THREADS
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *observer_start(PyObserver *self, PyObject *noargs) {
    (void)noargs;
    if (!self->o) {
        PyErr_SetString(PyExc_RuntimeError, "ActivationObserver is not initialized");
        return NULL;
    }
    sf_status st = sf_qobserver_install(self->o);
    if (st != SF_OK) {
        PyErr_SetString(PyExc_RuntimeError, "another ActivationObserver is already started");
        return NULL;
    }
    self->running = 1;
    Py_RETURN_NONE;
}

static PyObject *observer_stop(PyObserver *self, PyObject *noargs) {
    (void)noargs;
    if (self->o) {
        sf_qobserver *o = self->o;
        Py_BEGIN_ALLOW_THREADS
        sf_qobserver_uninstall(o);
        Py_END_ALLOW_THREADS
    }
    self->running = 0;
    Py_RETURN_NONE;
}

static PyObject *observer_enter(PyObserver *self, PyObject *noargs) {
    PyObject *r = observer_start(self, noargs);
    if (!r)
        return NULL;
    Py_DECREF(r);
    return Py_NewRef(self);
}

static PyObject *observer_exit(PyObserver *self, PyObject *args) {
    (void)args;
    PyObject *r = observer_stop(self, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *stats_dict(const sf_qstats *s) {
    npy_intp n = SF_QHIST_BINS;
    PyArrayObject *pos = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_UINT64);
    PyArrayObject *neg = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_UINT64);
    PyObject *d = NULL;
    if (!pos || !neg)
        goto done;
    memcpy(PyArray_DATA(pos), s->pos, sizeof s->pos);
    memcpy(PyArray_DATA(neg), s->neg, sizeof s->neg);
    d = Py_BuildValue("{s:K,s:K,s:d,s:d,s:O,s:O}", "count", (unsigned long long)s->count,
                      "nan_count", (unsigned long long)s->nan_count, "min", (double)s->min,
                      "max", (double)s->max, "pos", pos, "neg", neg);
done:
    Py_XDECREF(pos);
    Py_XDECREF(neg);
    return d;
}

static PyObject *observer_layers(PyObserver *self, PyObject *noargs) {
    (void)noargs;
    if (!self->o) {
        PyErr_SetString(PyExc_RuntimeError, "ActivationObserver is not initialized");
        return NULL;
    }
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "stop the observer before reading its statistics");
        return NULL;
    }
    size_t n = sf_qobserver_count(self->o);
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *name, *kind;
        const sf_qstats *in, *out;
        sf_status st = sf_qobserver_layer(self->o, i, &name, &kind, &in, &out);
        if (st != SF_OK) {
            Py_DECREF(list);
            return sf_py_raise(st);
        }
        PyObject *di = stats_dict(in), *dout = stats_dict(out), *item = NULL;
        if (di && dout)
            item = Py_BuildValue("{s:s,s:s,s:O,s:O}", "name", name, "kind", kind, "input", di,
                                 "output", dout);
        Py_XDECREF(di);
        Py_XDECREF(dout);
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

static PyMethodDef observer_methods[] = {
    {"start", (PyCFunction)observer_start, METH_NOARGS,
     "start()\n\nInstall as the process-wide observer (RuntimeError if another one is)."},
    {"stop", (PyCFunction)observer_stop, METH_NOARGS, "stop()\n\nUninstall."},
    {"layers", (PyCFunction)observer_layers, METH_NOARGS,
     "layers() -> list of dict\n\nPer layer, in registration order: 'name' (the file name of "
     "the layer; fused layers joined by '|'), 'kind' ('conv' or 'linear'), 'input' and "
     "'output' statistics: 'count', 'nan_count', 'min', 'max' (finite values) and the "
     "histograms 'pos'/'neg' of |x| (uint64, bins of observer_bin_edges())."},
    {"__enter__", (PyCFunction)observer_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)observer_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot observer_slots[] = {
    {Py_tp_doc,
     "ActivationObserver()\n\nCalibration: while started (start() or a with block), every "
     "convolution and linear layer the engine's models build registers itself when created "
     "and records the statistics of its inputs and outputs on every run. One observer at a "
     "time per process."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, observer_init},
    {Py_tp_dealloc, observer_dealloc},
    {Py_tp_methods, observer_methods},
    {0, NULL},
};

static PyType_Spec observer_spec = {"snapfusion._engine.ActivationObserver", sizeof(PyObserver),
                                    0, Py_TPFLAGS_DEFAULT, observer_slots};

/* ============================== functions ============================== */

static PyObject *py_observer_bin_edges(PyObject *mod, PyObject *noargs) {
    (void)mod;
    (void)noargs;
    npy_intp n = SF_QHIST_BINS + 1;
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT64);
    if (!a)
        return NULL;
    double *d = PyArray_DATA(a);
    for (npy_intp i = 0; i < n; i++)
        d[i] = sf_qhist_edge((size_t)i);
    return (PyObject *)a;
}

static PyObject *py_quantize_rows(PyObject *mod, PyObject *wo) {
    (void)mod;
    PyArrayObject *w = sf_py_f32(wo, "weight", 2), *q = NULL, *s = NULL;
    if (!w)
        return NULL;
    npy_intp rows = PyArray_DIM(w, 0), cols = PyArray_DIM(w, 1);
    q = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(w), NPY_INT8);
    s = sf_py_new_f32(1, &rows);
    PyObject *r = NULL;
    if (q && s) {
        sf_status st;
        Py_BEGIN_ALLOW_THREADS
        st = sf_quantize_rows(PyArray_DATA(w), (size_t)rows, (size_t)cols, PyArray_DATA(q),
                              PyArray_DATA(s));
        Py_END_ALLOW_THREADS
        if (st != SF_OK)
            sf_py_raise(st);
        else
            r = Py_BuildValue("(OO)", q, s);
    }
    Py_DECREF(w);
    Py_XDECREF(q);
    Py_XDECREF(s);
    return r;
}

static PyObject *py_int8_backends(PyObject *mod, PyObject *noargs) {
    (void)mod;
    (void)noargs;
    return Py_BuildValue("{s:O,s:O,s:O,s:O,s:s,s:s}", "amx",
                         sf_qbackend_available(SF_QBACKEND_AMX) ? Py_True : Py_False, "vnni",
                         sf_qbackend_available(SF_QBACKEND_VNNI) ? Py_True : Py_False,
                         "xnnpack", Py_True, "reference", Py_True, "auto_static",
                         sf_qbackend_name(sf_qbackend_resolve(SF_QBACKEND_AUTO, 1)),
                         "auto_dynamic",
                         sf_qbackend_name(sf_qbackend_resolve(SF_QBACKEND_AUTO, 0)));
}

static PyMethodDef quant_functions[] = {
    {"observer_bin_edges", py_observer_bin_edges, METH_NOARGS,
     "observer_bin_edges() -> float64 array (bins + 1,)\n\nLower edges of the histogram bins "
     "of ActivationObserver statistics (the last value is the upper edge of the last bin; bin 0 "
     "also counts smaller magnitudes, the last bin larger ones)."},
    {"quantize_rows", py_quantize_rows, METH_O,
     "quantize_rows(w (rows, cols) float) -> (int8 (rows, cols), float32 scales (rows,))\n\n"
     "Symmetric per-row quantization: scale = max|w| / 127 (1 for a zero row), q = round(w / "
     "scale) in [-127, 127]. Non-finite weights raise ValueError."},
    {"int8_backends", py_int8_backends, METH_NOARGS,
     "int8_backends() -> dict\n\nWhich int8 back ends run here ('amx', 'vnni', 'xnnpack', "
     "'reference': bool) and what 'auto' picks for layers with static ('auto_static') and "
     "dynamic ('auto_dynamic') activation parameters (after SNAPFUSION_INT8)."},
    {NULL, NULL, 0, NULL},
};

static int add_type(PyObject *module, PyType_Spec *spec, const char *name) {
    PyObject *t = PyType_FromModuleAndSpec(module, spec, NULL);
    if (!t)
        return -1;
    int rc = PyModule_AddObjectRef(module, name, t);
    Py_DECREF(t);
    return rc;
}

int sf_py_init_quant(PyObject *module) {
    if (PyModule_AddFunctions(module, quant_functions) < 0)
        return -1;
    if (add_type(module, &qconv_spec, "QConv2d") < 0 ||
        add_type(module, &observer_spec, "ActivationObserver") < 0)
        return -1;
    return 0;
}
