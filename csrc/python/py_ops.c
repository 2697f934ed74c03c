/*
 * py_ops.c — snapfusion._engine: our own kernels on NumPy arrays (norms, activations, softmax,
 * upsampling, elementwise ops, embeddings).
 *
 * Every function takes array-likes of any real dtype (cast to float32; non-contiguous input is
 * copied), returns a new float32 C-contiguous array, and releases the GIL while it computes.
 */
#include <math.h>
#include <string.h>

#include "sf_py.h"

/* Number of elements of a (already validated: no zero dims), as size_t. */
static size_t numel(PyArrayObject *a) {
    return (size_t)PyArray_SIZE(a);
}

/* Product of the leading ndim-1 dimensions. */
static size_t leading_rows(PyArrayObject *a) {
    size_t r = 1;
    for (int i = 0; i + 1 < PyArray_NDIM(a); i++)
        r *= (size_t)PyArray_DIM(a, i);
    return r;
}

static size_t last_dim(PyArrayObject *a) {
    return (size_t)PyArray_DIM(a, PyArray_NDIM(a) - 1);
}

/* New float32 array with the shape of `a`. */
static PyArrayObject *new_like(PyArrayObject *a) {
    return sf_py_new_f32(PyArray_NDIM(a), PyArray_DIMS(a));
}

/* ValueError unless `a` has at least one dimension. */
static int require_ndim_at_least_1(PyArrayObject *a, const char *fn, const char *name) {
    if (PyArray_NDIM(a) >= 1)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: %s must have at least one dimension, got a scalar", fn,
                 name);
    return -1;
}

/* Optional per-channel vector (gamma/beta): None -> *out NULL; else a (n,) float32 array. */
static int optional_vector(PyObject *obj, const char *fn, const char *name, size_t n,
                           PyArrayObject **out) {
    *out = NULL;
    if (obj == NULL || obj == Py_None)
        return 0;
    PyArrayObject *a = sf_py_f32(obj, name, 1);
    if (!a)
        return -1;
    if ((size_t)PyArray_DIM(a, 0) != n) {
        char buf[64];
        PyErr_Format(PyExc_ValueError, "%s: %s has shape %s, expected (%zu,)", fn, name,
                     sf_py_shape_str(a, buf, sizeof buf), n);
        Py_DECREF(a);
        return -1;
    }
    *out = a;
    return 0;
}

static const float *data_or_null(PyArrayObject *a) {
    return a ? (const float *)PyArray_DATA(a) : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Norms                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static PyObject *py_group_norm(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "groups", "gamma", "beta", "eps", "silu", NULL};
    PyObject *xo, *go = Py_None, *bo = Py_None;
    Py_ssize_t groups;
    double eps = 1e-5;
    int silu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "On|OOdp:group_norm", kwlist, &xo, &groups,
                                     &go, &bo, &eps, &silu))
        return NULL;
    PyArrayObject *x = NULL, *gamma = NULL, *beta = NULL, *y = NULL;
    x = sf_py_f32(xo, "x", -1);
    if (!x)
        goto fail;
    if (PyArray_NDIM(x) != 3 && PyArray_NDIM(x) != 4) {
        char buf[128];
        PyErr_Format(PyExc_ValueError,
                     "group_norm: x must be (B, H, W, C) or (B, L, C) (channels last), got "
                     "shape %s",
                     sf_py_shape_str(x, buf, sizeof buf));
        goto fail;
    }
    size_t c = last_dim(x);
    if (groups <= 0 || c % (size_t)groups != 0) {
        PyErr_Format(PyExc_ValueError,
                     "group_norm: groups must be a positive divisor of the channel count %zu, "
                     "got %zd",
                     c, groups);
        goto fail;
    }
    if (!(eps > 0.0) || !isfinite(eps)) {
        PyErr_Format(PyExc_ValueError, "group_norm: eps must be finite and > 0, got %g", eps);
        goto fail;
    }
    if (optional_vector(go, "group_norm", "gamma", c, &gamma) < 0 ||
        optional_vector(bo, "group_norm", "beta", c, &beta) < 0)
        goto fail;
    y = new_like(x);
    if (!y)
        goto fail;
    size_t batch = (size_t)PyArray_DIM(x, 0);
    size_t hw = numel(x) / batch / c;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_group_norm(PyArray_DATA(x), batch, hw, c, (size_t)groups, (float)eps,
                       data_or_null(gamma), data_or_null(beta), silu, PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 3, x, gamma, beta);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 3, x, gamma, beta);
}

static PyObject *py_layer_norm(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "gamma", "beta", "eps", NULL};
    PyObject *xo, *go = Py_None, *bo = Py_None;
    double eps = 1e-5;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOd:layer_norm", kwlist, &xo, &go, &bo,
                                     &eps))
        return NULL;
    PyArrayObject *x = NULL, *gamma = NULL, *beta = NULL, *y = NULL;
    x = sf_py_f32(xo, "x", -1);
    if (!x || require_ndim_at_least_1(x, "layer_norm", "x") < 0)
        goto fail;
    if (!(eps > 0.0) || !isfinite(eps)) {
        PyErr_Format(PyExc_ValueError, "layer_norm: eps must be finite and > 0, got %g", eps);
        goto fail;
    }
    size_t dim = last_dim(x);
    if (optional_vector(go, "layer_norm", "gamma", dim, &gamma) < 0 ||
        optional_vector(bo, "layer_norm", "beta", dim, &beta) < 0)
        goto fail;
    y = new_like(x);
    if (!y)
        goto fail;
    size_t rows = leading_rows(x);
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_layer_norm(PyArray_DATA(x), rows, dim, (float)eps, data_or_null(gamma),
                       data_or_null(beta), PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 3, x, gamma, beta);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 3, x, gamma, beta);
}

/* ------------------------------------------------------------------------------------------ */
/* Activations                                                                                */
/* ------------------------------------------------------------------------------------------ */

static PyObject *run_activation(PyObject *xo, sf_activation act) {
    PyArrayObject *x = sf_py_f32(xo, "x", -1);
    if (!x)
        return NULL;
    PyArrayObject *y = new_like(x);
    if (!y) {
        Py_DECREF(x);
        return NULL;
    }
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_activation_run(act, PyArray_DATA(x), numel(x), PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    if (st != SF_OK) {
        Py_DECREF(y);
        return sf_py_raise(st);
    }
    return (PyObject *)y;
}

/* "none" -> 0, "tanh" -> 1, else ValueError (-1). */
static int parse_approximate(const char *fn, const char *s) {
    if (strcmp(s, "none") == 0)
        return 0;
    if (strcmp(s, "tanh") == 0)
        return 1;
    PyErr_Format(PyExc_ValueError, "%s: approximate must be 'none' or 'tanh', got '%.50s'", fn,
                 s);
    return -1;
}

static PyObject *py_silu(PyObject *self, PyObject *x) {
    (void)self;
    return run_activation(x, SF_ACT_SILU);
}

static PyObject *py_quick_gelu(PyObject *self, PyObject *x) {
    (void)self;
    return run_activation(x, SF_ACT_QUICK_GELU);
}

static PyObject *py_sigmoid(PyObject *self, PyObject *x) {
    (void)self;
    return run_activation(x, SF_ACT_SIGMOID);
}

static PyObject *py_gelu(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "approximate", NULL};
    PyObject *xo;
    const char *approx = "none";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|s:gelu", kwlist, &xo, &approx))
        return NULL;
    int a = parse_approximate("gelu", approx);
    if (a < 0)
        return NULL;
    return run_activation(xo, a ? SF_ACT_GELU_TANH : SF_ACT_GELU);
}

static PyObject *py_geglu(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "approximate", NULL};
    PyObject *xo;
    const char *approx = "none";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|s:geglu", kwlist, &xo, &approx))
        return NULL;
    int a = parse_approximate("geglu", approx);
    if (a < 0)
        return NULL;
    PyArrayObject *x = sf_py_f32(xo, "x", -1), *y = NULL;
    if (!x || require_ndim_at_least_1(x, "geglu", "x") < 0)
        goto fail;
    size_t two_d = last_dim(x);
    if (two_d % 2 != 0) {
        char buf[128];
        PyErr_Format(PyExc_ValueError, "geglu: the last dimension of x must be even, got shape %s",
                     sf_py_shape_str(x, buf, sizeof buf));
        goto fail;
    }
    npy_intp shape[NPY_MAXDIMS];
    int nd = PyArray_NDIM(x);
    memcpy(shape, PyArray_DIMS(x), (size_t)nd * sizeof(npy_intp));
    shape[nd - 1] /= 2;
    y = sf_py_new_f32(nd, shape);
    if (!y)
        goto fail;
    size_t rows = leading_rows(x);
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_geglu(PyArray_DATA(x), rows, two_d / 2, a, PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 1, x);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 1, x);
}

static PyObject *py_softmax(PyObject *self, PyObject *xo) {
    (void)self;
    PyArrayObject *x = sf_py_f32(xo, "x", -1), *y = NULL;
    if (!x || require_ndim_at_least_1(x, "softmax", "x") < 0)
        goto fail;
    y = new_like(x);
    if (!y)
        goto fail;
    size_t rows = leading_rows(x), n = last_dim(x);
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_softmax(PyArray_DATA(x), rows, n, PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 1, x);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 1, x);
}

/* ------------------------------------------------------------------------------------------ */
/* Upsampling and elementwise                                                                 */
/* ------------------------------------------------------------------------------------------ */

static PyObject *py_upsample_nearest2x(PyObject *self, PyObject *xo) {
    (void)self;
    PyArrayObject *x = sf_py_f32(xo, "x", 4), *y = NULL;
    if (!x)
        return NULL;
    npy_intp shape[4] = {PyArray_DIM(x, 0), PyArray_DIM(x, 1) * 2, PyArray_DIM(x, 2) * 2,
                         PyArray_DIM(x, 3)};
    y = sf_py_new_f32(4, shape);
    if (!y) {
        Py_DECREF(x);
        return NULL;
    }
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_upsample_nearest2x(PyArray_DATA(x), (size_t)shape[0], (size_t)PyArray_DIM(x, 1),
                               (size_t)PyArray_DIM(x, 2), (size_t)shape[3], PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    if (st != SF_OK) {
        Py_DECREF(y);
        return sf_py_raise(st);
    }
    return (PyObject *)y;
}

/* ValueError unless a and b have the same shape. */
static int require_same_shape(const char *fn, PyArrayObject *a, const char *an, PyArrayObject *b,
                              const char *bn) {
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        PyArray_CompareLists(PyArray_DIMS(a), PyArray_DIMS(b), PyArray_NDIM(a)))
        return 0;
    char ba[128], bb[128];
    PyErr_Format(PyExc_ValueError, "%s: %s and %s must have the same shape, got %s and %s", fn,
                 an, bn, sf_py_shape_str(a, ba, sizeof ba), sf_py_shape_str(b, bb, sizeof bb));
    return -1;
}

static PyObject *binary(const char *fn, PyObject *ao, PyObject *bo, int axpby, float alpha,
                        float beta) {
    PyArrayObject *a = NULL, *b = NULL, *y = NULL;
    a = sf_py_f32(ao, "a", -1);
    if (!a)
        goto fail;
    b = sf_py_f32(bo, "b", -1);
    if (!b || require_same_shape(fn, a, "a", b, "b") < 0)
        goto fail;
    y = new_like(a);
    if (!y)
        goto fail;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    if (axpby)
        st = sf_axpby(alpha, PyArray_DATA(a), beta, PyArray_DATA(b), numel(a), PyArray_DATA(y));
    else
        st = sf_add(PyArray_DATA(a), PyArray_DATA(b), numel(a), PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 2, a, b);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 2, a, b);
}

static PyObject *py_add(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"a", "b", NULL};
    PyObject *ao, *bo;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:add", kwlist, &ao, &bo))
        return NULL;
    return binary("add", ao, bo, 0, 1.0f, 1.0f);
}

static PyObject *py_axpby(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"alpha", "a", "beta", "b", NULL};
    PyObject *ao, *bo;
    float alpha, beta;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "fOfO:axpby", kwlist, &alpha, &ao, &beta,
                                     &bo))
        return NULL;
    return binary("axpby", ao, bo, 1, alpha, beta);
}

static PyObject *py_add_rows(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "v", NULL};
    PyObject *xo, *vo;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:add_rows", kwlist, &xo, &vo))
        return NULL;
    PyArrayObject *x = NULL, *v = NULL, *y = NULL;
    x = sf_py_f32(xo, "x", -1);
    if (!x)
        goto fail;
    if (PyArray_NDIM(x) != 3 && PyArray_NDIM(x) != 4) {
        char buf[128];
        PyErr_Format(PyExc_ValueError,
                     "add_rows: x must be (B, L, C) or (B, H, W, C), got shape %s",
                     sf_py_shape_str(x, buf, sizeof buf));
        goto fail;
    }
    v = sf_py_f32(vo, "v", 2);
    if (!v)
        goto fail;
    size_t batch = (size_t)PyArray_DIM(x, 0), c = last_dim(x);
    if ((size_t)PyArray_DIM(v, 0) != batch || (size_t)PyArray_DIM(v, 1) != c) {
        char bx[128], bv[128];
        PyErr_Format(PyExc_ValueError, "add_rows: v must be (B, C) = (%zu, %zu) for x of shape "
                     "%s, got shape %s",
                     batch, c, sf_py_shape_str(x, bx, sizeof bx),
                     sf_py_shape_str(v, bv, sizeof bv));
        goto fail;
    }
    y = new_like(x);
    if (!y)
        goto fail;
    size_t rows = numel(x) / batch / c;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_add_rows(PyArray_DATA(x), batch, rows, c, PyArray_DATA(v), PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 2, x, v);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 2, x, v);
}

static PyObject *py_concat_channels(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"a", "b", NULL};
    PyObject *ao, *bo;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:concat_channels", kwlist, &ao, &bo))
        return NULL;
    PyArrayObject *a = NULL, *b = NULL, *y = NULL;
    a = sf_py_f32(ao, "a", -1);
    if (!a || require_ndim_at_least_1(a, "concat_channels", "a") < 0)
        goto fail;
    b = sf_py_f32(bo, "b", -1);
    if (!b)
        goto fail;
    int nd = PyArray_NDIM(a);
    if (PyArray_NDIM(b) != nd ||
        !PyArray_CompareLists(PyArray_DIMS(a), PyArray_DIMS(b), nd - 1)) {
        char ba[128], bb[128];
        PyErr_Format(PyExc_ValueError,
                     "concat_channels: a and b must agree in all but the last dimension, got %s "
                     "and %s",
                     sf_py_shape_str(a, ba, sizeof ba), sf_py_shape_str(b, bb, sizeof bb));
        goto fail;
    }
    npy_intp shape[NPY_MAXDIMS];
    memcpy(shape, PyArray_DIMS(a), (size_t)nd * sizeof(npy_intp));
    shape[nd - 1] += PyArray_DIM(b, nd - 1);
    y = sf_py_new_f32(nd, shape);
    if (!y)
        goto fail;
    size_t rows = leading_rows(a);
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_concat_channels(PyArray_DATA(a), last_dim(a), PyArray_DATA(b), last_dim(b), rows,
                            PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 2, a, b);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 2, a, b);
}

/* ------------------------------------------------------------------------------------------ */
/* Embeddings                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static PyObject *py_embedding(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"table", "ids", NULL};
    PyObject *to, *io;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:embedding", kwlist, &to, &io))
        return NULL;
    PyArrayObject *table = NULL, *ids = NULL, *y = NULL;
    table = sf_py_f32(to, "table", 2);
    if (!table)
        goto fail;
    ids = sf_py_i64(io, "ids", -1);
    if (!ids)
        goto fail;
    int nd = PyArray_NDIM(ids);
    if (nd + 1 > NPY_MAXDIMS) {
        PyErr_Format(PyExc_ValueError, "embedding: ids has too many dimensions (%d)", nd);
        goto fail;
    }
    npy_intp shape[NPY_MAXDIMS];
    memcpy(shape, PyArray_DIMS(ids), (size_t)nd * sizeof(npy_intp));
    shape[nd] = PyArray_DIM(table, 1);
    y = sf_py_new_f32(nd + 1, shape);
    if (!y)
        goto fail;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_embedding(PyArray_DATA(table), (size_t)PyArray_DIM(table, 0),
                      (size_t)PyArray_DIM(table, 1), PyArray_DATA(ids), numel(ids),
                      PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 2, table, ids);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 2, table, ids);
}

static PyObject *py_timestep_embedding(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"t", "dim", "flip_sin_to_cos", "downscale_freq_shift", "scale",
                             "max_period", NULL};
    PyObject *to;
    Py_ssize_t dim;
    int flip = 0;
    double shift = 1.0, scale = 1.0, max_period = 10000.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "On|pddd:timestep_embedding", kwlist, &to,
                                     &dim, &flip, &shift, &scale, &max_period))
        return NULL;
    if (dim <= 0)
        return PyErr_Format(PyExc_ValueError, "timestep_embedding: dim must be > 0, got %zd",
                            dim);
    PyArrayObject *t = sf_py_f32(to, "t", -1), *y = NULL;
    if (!t)
        return NULL;
    if (PyArray_NDIM(t) > 1) {
        char buf[128];
        PyErr_Format(PyExc_ValueError, "timestep_embedding: t must be (N,) or a scalar, got "
                     "shape %s",
                     sf_py_shape_str(t, buf, sizeof buf));
        goto fail;
    }
    npy_intp shape[2] = {(npy_intp)numel(t), (npy_intp)dim};
    y = sf_py_new_f32(2, shape);
    if (!y)
        goto fail;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_timestep_embedding(PyArray_DATA(t), numel(t), (size_t)dim, flip, (float)shift,
                               (float)scale, (float)max_period, PyArray_DATA(y));
    Py_END_ALLOW_THREADS
    return sf_py_finish(st, y, 1, t);
fail:
    return sf_py_finish(SF_PY_RAISED, y, 1, t);
}

/* ------------------------------------------------------------------------------------------ */

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) ((PyCFunction)(void (*)(void))(f))

static PyMethodDef ops_methods[] = {
    {"group_norm", FN(py_group_norm), KW,
     "group_norm(x, groups, gamma=None, beta=None, eps=1e-5, silu=False) -> ndarray\n\n"
     "Group normalization of channels-last x: (B, H, W, C) or (B, L, C), float32 out of the\n"
     "same shape. `groups` must divide C; gamma, beta: (C,) or None. With silu=True the\n"
     "result is silu(group_norm(x)) (fused)."},
    {"layer_norm", FN(py_layer_norm), KW,
     "layer_norm(x, gamma=None, beta=None, eps=1e-5) -> ndarray\n\n"
     "Layer normalization over the last dimension D of x (..., D); gamma, beta: (D,) or None.\n"
     "float32 out of the same shape."},
    {"silu", py_silu, METH_O,
     "silu(x) -> ndarray\n\nx * sigmoid(x) elementwise, any shape; float32 out."},
    {"gelu", FN(py_gelu), KW,
     "gelu(x, approximate='none') -> ndarray\n\n"
     "GELU elementwise, any shape: exact (erf) for 'none', tanh approximation for 'tanh'."},
    {"quick_gelu", py_quick_gelu, METH_O,
     "quick_gelu(x) -> ndarray\n\nx * sigmoid(1.702 x) elementwise, any shape; float32 out."},
    {"sigmoid", py_sigmoid, METH_O,
     "sigmoid(x) -> ndarray\n\n1 / (1 + exp(-x)) elementwise, any shape; float32 out."},
    {"geglu", FN(py_geglu), KW,
     "geglu(x, approximate='none') -> ndarray\n\n"
     "GEGLU as diffusers: x (..., 2*D) = [hidden | gate] -> hidden * gelu(gate), (..., D)."},
    {"softmax", py_softmax, METH_O,
     "softmax(x) -> ndarray\n\nSoftmax over the last dimension of x (..., N); same shape."},
    {"upsample_nearest2x", py_upsample_nearest2x, METH_O,
     "upsample_nearest2x(x) -> ndarray\n\n"
     "Nearest-neighbour 2x upsampling of NHWC x: (B, H, W, C) -> (B, 2H, 2W, C)."},
    {"add", FN(py_add), KW,
     "add(a, b) -> ndarray\n\na + b for arrays of the same shape; float32 out."},
    {"axpby", FN(py_axpby), KW,
     "axpby(alpha, a, beta, b) -> ndarray\n\n"
     "alpha * a + beta * b for arrays of the same shape; float32 out."},
    {"add_rows", FN(py_add_rows), KW,
     "add_rows(x, v) -> ndarray\n\n"
     "Broadcast add of a per-(batch, channel) vector: x (B, L, C) or (B, H, W, C) plus\n"
     "v (B, C) over all positions; same shape as x."},
    {"concat_channels", FN(py_concat_channels), KW,
     "concat_channels(a, b) -> ndarray\n\n"
     "Concatenate a (..., Ca) and b (..., Cb) along the last dimension -> (..., Ca + Cb)."},
    {"embedding", FN(py_embedding), KW,
     "embedding(table, ids) -> ndarray\n\n"
     "Rows of table (V, D) for integer ids of any shape (each in [0, V)) -> ids.shape + (D,)."},
    {"timestep_embedding", FN(py_timestep_embedding), KW,
     "timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1.0, scale=1.0,\n"
     "                   max_period=10000.0) -> ndarray\n\n"
     "Sinusoidal timestep embedding as diffusers' get_timestep_embedding: t (N,) or a scalar\n"
     "-> (N, dim) float32 ([sin, cos], or [cos, sin] if flip_sin_to_cos; odd dim adds a zero\n"
     "column)."},
    {NULL, NULL, 0, NULL},
};

int sf_py_init_ops(PyObject *module) {
    return PyModule_AddFunctions(module, ops_methods);
}
