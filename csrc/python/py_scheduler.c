/*
 * py_scheduler.c — snapfusion._engine.Scheduler: the C noise schedulers (sf_scheduler_*).
 *
 * Scheduler(config_json: str) takes the text of a diffusers scheduler_config.json (with its
 * "_class_name"). Samples are float32 arrays of any shape (other real dtypes are converted);
 * model outputs and noise must have the sample's shape. The GIL is released while a step
 * runs; a scheduler runs one call at a time (a second thread gets a RuntimeError).
 */
#include <string.h>

#include "sf_py.h"

typedef struct {
    PyObject_HEAD
    sf_scheduler *s;
    int busy; /* a call is running (read and written with the GIL held) */
} SchedObject;

static int sched_ready(SchedObject *self) {
    if (!self->s) {
        PyErr_SetString(PyExc_RuntimeError, "Scheduler: not initialized");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Scheduler: already running a call in another "
                        "thread");
        return 0;
    }
    return 1;
}

static int sched_init(SchedObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config_json", NULL};
    const char *text;
    Py_ssize_t len;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s#:Scheduler", kwlist, &text, &len))
        return -1;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Scheduler: already running a call");
        return -1;
    }
    sf_scheduler *s = NULL;
    sf_status st = sf_scheduler_create_from_json(text, (size_t)len, &s);
    if (st != SF_OK) {
        sf_py_raise(st);
        return -1;
    }
    sf_scheduler_destroy(self->s);
    self->s = s;
    return 0;
}

static void sched_dealloc(SchedObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sf_scheduler_destroy(self->s);
    self->s = NULL;
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(self);
    Py_DECREF(tp);
}

/* A Python int >= 0 (bool refused) into size_t. */
static int parse_index(PyObject *o, const char *what, size_t *out) {
    if (PyBool_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "Scheduler: %s must be an int, got %.100s", what,
                     Py_TYPE(o)->tp_name);
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
    if (overflow || v < 0) {
        PyErr_Format(PyExc_ValueError, "Scheduler: %s must be a non-negative int", what);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static PyObject *sched_set_timesteps(SchedObject *self, PyObject *arg) {
    if (!sched_ready(self))
        return NULL;
    size_t n;
    if (parse_index(arg, "num_inference_steps", &n) < 0)
        return NULL;
    sf_status st = sf_scheduler_set_timesteps(self->s, n);
    if (st != SF_OK)
        return sf_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *sched_reset(SchedObject *self, PyObject *Py_UNUSED(arg)) {
    if (!sched_ready(self))
        return NULL;
    sf_status st = sf_scheduler_reset(self->s);
    if (st != SF_OK)
        return sf_py_raise(st);
    Py_RETURN_NONE;
}

/* A float timestep from a Python number or a one-element array/tensor. */
static int parse_timestep(PyObject *o, double *out) {
    double t = PyFloat_AsDouble(o);
    if (t == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "Scheduler: timestep must be a number, got %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    *out = t;
    return 0;
}

static PyObject *sched_index_for_timestep(SchedObject *self, PyObject *arg) {
    if (!sched_ready(self))
        return NULL;
    double t;
    if (parse_timestep(arg, &t) < 0)
        return NULL;
    size_t idx;
    sf_status st = sf_scheduler_index_for_timestep(self->s, t, &idx);
    if (st != SF_OK)
        return sf_py_raise(st);
    return PyLong_FromSize_t(idx);
}

/* New float32 array with the shape of `like`. */
static PyArrayObject *new_like(PyArrayObject *like) {
    return sf_py_new_f32(PyArray_NDIM(like), PyArray_DIMS(like));
}

/* The array must have the shape of `ref` (ValueError naming both otherwise). */
static int same_shape(PyArrayObject *a, const char *name, PyArrayObject *ref,
                      const char *ref_name) {
    if (PyArray_NDIM(a) == PyArray_NDIM(ref) &&
        PyArray_CompareLists(PyArray_DIMS(a), PyArray_DIMS(ref), PyArray_NDIM(a)))
        return 0;
    char b1[128], b2[128];
    PyErr_Format(PyExc_ValueError, "Scheduler: %s has shape %s but %s has shape %s", name,
                 sf_py_shape_str(a, b1, sizeof b1), ref_name, sf_py_shape_str(ref, b2, sizeof b2));
    return -1;
}

static PyObject *sched_scale_model_input(SchedObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"sample", "step_index", NULL};
    PyObject *xo, *io;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:scale_model_input", kwlist, &xo, &io))
        return NULL;
    if (!sched_ready(self))
        return NULL;
    size_t index;
    if (parse_index(io, "step_index", &index) < 0)
        return NULL;
    PyArrayObject *x = sf_py_f32(xo, "sample", -1), *y = NULL;
    if (!x)
        return NULL;
    y = new_like(x);
    if (!y) {
        Py_DECREF(x);
        return NULL;
    }
    sf_status st;
    const float *xd = PyArray_DATA(x);
    float *yd = PyArray_DATA(y);
    size_t n = (size_t)PyArray_SIZE(x);
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = sf_scheduler_scale_model_input(self->s, index, xd, n, yd);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_DECREF(x);
    if (st != SF_OK) {
        Py_DECREF(y);
        return sf_py_raise(st);
    }
    return (PyObject *)y;
}

static PyObject *sched_step(SchedObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"model_output", "sample", "noise", "return_pred", NULL};
    PyObject *mo_o, *x_o, *noise_o = Py_None;
    int want_pred = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|Op:step", kwlist, &mo_o, &x_o, &noise_o,
                                     &want_pred))
        return NULL;
    if (!sched_ready(self))
        return NULL;
    PyArrayObject *mo = NULL, *x = NULL, *nz = NULL, *out = NULL, *pred = NULL;
    PyObject *result = NULL;
    mo = sf_py_f32(mo_o, "model_output", -1);
    if (!mo)
        goto done;
    x = sf_py_f32(x_o, "sample", -1);
    if (!x)
        goto done;
    if (same_shape(mo, "model_output", x, "sample") < 0)
        goto done;
    if (noise_o != Py_None) {
        nz = sf_py_f32(noise_o, "noise", -1);
        if (!nz || same_shape(nz, "noise", x, "sample") < 0)
            goto done;
    }
    out = new_like(x);
    if (!out)
        goto done;
    if (want_pred) {
        pred = new_like(x);
        if (!pred)
            goto done;
    }
    sf_status st;
    const float *mod = PyArray_DATA(mo), *xd = PyArray_DATA(x);
    const float *nd = nz ? (const float *)PyArray_DATA(nz) : NULL;
    float *od = PyArray_DATA(out), *pd = pred ? (float *)PyArray_DATA(pred) : NULL;
    size_t n = (size_t)PyArray_SIZE(x);
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = sf_scheduler_step_ex(self->s, mod, xd, n, nd, od, pd);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    if (want_pred)
        result = PyTuple_Pack(2, (PyObject *)out, (PyObject *)pred);
    else
        result = Py_NewRef((PyObject *)out);
done:
    Py_XDECREF(mo);
    Py_XDECREF(x);
    Py_XDECREF(nz);
    Py_XDECREF(out);
    Py_XDECREF(pred);
    return result;
}

static PyObject *sched_add_noise(SchedObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"original", "noise", "timestep", NULL};
    PyObject *x_o, *n_o, *t_o;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:add_noise", kwlist, &x_o, &n_o, &t_o))
        return NULL;
    if (!sched_ready(self))
        return NULL;
    double t;
    if (parse_timestep(t_o, &t) < 0)
        return NULL;
    PyArrayObject *x = NULL, *nz = NULL, *out = NULL;
    PyObject *result = NULL;
    x = sf_py_f32(x_o, "original", -1);
    if (!x)
        goto done;
    nz = sf_py_f32(n_o, "noise", -1);
    if (!nz || same_shape(nz, "noise", x, "original") < 0)
        goto done;
    out = new_like(x);
    if (!out)
        goto done;
    sf_status st;
    const float *xd = PyArray_DATA(x), *nd = PyArray_DATA(nz);
    float *od = PyArray_DATA(out);
    size_t n = (size_t)PyArray_SIZE(x);
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = sf_scheduler_add_noise(self->s, xd, nd, n, t, od);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    result = Py_NewRef((PyObject *)out);
done:
    Py_XDECREF(x);
    Py_XDECREF(nz);
    Py_XDECREF(out);
    return result;
}

/* ---- properties ---- */

static PyObject *f64_array(const double *v, size_t n) {
    npy_intp dim = (npy_intp)n;
    PyObject *a = PyArray_SimpleNew(1, &dim, NPY_FLOAT64);
    if (a && n)
        memcpy(PyArray_DATA((PyArrayObject *)a), v, n * sizeof *v);
    return a;
}

static PyObject *f32_array(const float *v, size_t n) {
    npy_intp dim = (npy_intp)n;
    PyArrayObject *a = sf_py_new_f32(1, &dim);
    if (a && n)
        memcpy(PyArray_DATA(a), v, n * sizeof *v);
    return (PyObject *)a;
}

static PyObject *get_timesteps(SchedObject *self, void *Py_UNUSED(c)) {
    if (!self->s)
        Py_RETURN_NONE;
    size_t n;
    const double *t = sf_scheduler_timesteps(self->s, &n);
    if (!t)
        Py_RETURN_NONE;
    return f64_array(t, n);
}

static PyObject *get_sigmas(SchedObject *self, void *Py_UNUSED(c)) {
    if (!self->s)
        Py_RETURN_NONE;
    size_t n;
    const float *v = sf_scheduler_sigmas(self->s, &n);
    if (!v)
        Py_RETURN_NONE;
    return f32_array(v, n);
}

static PyObject *get_betas(SchedObject *self, void *Py_UNUSED(c)) {
    if (!self->s)
        Py_RETURN_NONE;
    size_t n;
    const float *v = sf_scheduler_betas(self->s, &n);
    return f32_array(v, n);
}

static PyObject *get_alphas_cumprod(SchedObject *self, void *Py_UNUSED(c)) {
    if (!self->s)
        Py_RETURN_NONE;
    size_t n;
    const float *v = sf_scheduler_alphas_cumprod(self->s, &n);
    return f32_array(v, n);
}

static PyObject *get_init_noise_sigma(SchedObject *self, void *Py_UNUSED(c)) {
    return PyFloat_FromDouble(self->s ? sf_scheduler_init_noise_sigma(self->s) : 1.0);
}

static PyObject *get_num_inference_steps(SchedObject *self, void *Py_UNUSED(c)) {
    return PyLong_FromSize_t(self->s ? sf_scheduler_num_inference_steps(self->s) : 0);
}

static PyObject *get_num_train_timesteps(SchedObject *self, void *Py_UNUSED(c)) {
    return PyLong_FromLongLong(self->s ? (long long)sf_scheduler_get_config(self->s)
                                             ->num_train_timesteps : 0);
}

static PyObject *get_class_name(SchedObject *self, void *Py_UNUSED(c)) {
    if (!self->s)
        Py_RETURN_NONE;
    return PyUnicode_FromString(sf_scheduler_type_name(sf_scheduler_get_config(self->s)->type));
}

static PyObject *get_needs_noise(SchedObject *self, void *Py_UNUSED(c)) {
    return PyBool_FromLong(self->s ? sf_scheduler_step_needs_noise(self->s) : 0);
}

static PyObject *get_step_index(SchedObject *self, void *Py_UNUSED(c)) {
    return PyLong_FromSize_t(self->s ? sf_scheduler_step_index(self->s) : 0);
}

static int set_step_index(SchedObject *self, PyObject *v, void *Py_UNUSED(c)) {
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "Scheduler: step_index cannot be deleted");
        return -1;
    }
    if (!sched_ready(self))
        return -1;
    size_t idx;
    if (parse_index(v, "step_index", &idx) < 0)
        return -1;
    sf_status st = sf_scheduler_set_step_index(self->s, idx);
    if (st != SF_OK) {
        sf_py_raise(st);
        return -1;
    }
    return 0;
}

static PyMethodDef sched_methods[] = {
    {"set_timesteps", (PyCFunction)sched_set_timesteps, METH_O,
     "set_timesteps(num_inference_steps: int) -> None\n\nCompute the inference schedule and "
     "start a new trajectory."},
    {"reset", (PyCFunction)sched_reset, METH_NOARGS,
     "reset() -> None\n\nBack to step 0 of the current schedule, history cleared."},
    {"index_for_timestep", (PyCFunction)sched_index_for_timestep, METH_O,
     "index_for_timestep(t: float) -> int\n\nIndex of t in the schedule (the second match if it "
     "repeats)."},
    {"scale_model_input", (PyCFunction)(void (*)(void))sched_scale_model_input,
     METH_VARARGS | METH_KEYWORDS,
     "scale_model_input(sample, step_index: int) -> ndarray\n\nThe UNet input at a step (float32, "
     "the sample's shape)."},
    {"step", (PyCFunction)(void (*)(void))sched_step, METH_VARARGS | METH_KEYWORDS,
     "step(model_output, sample, noise=None, return_pred=False) -> ndarray | (ndarray, ndarray)"
     "\n\nOne step at the current index (float32 arrays of one shape); returns prev_sample, and "
     "the predicted clean sample if return_pred."},
    {"add_noise", (PyCFunction)(void (*)(void))sched_add_noise, METH_VARARGS | METH_KEYWORDS,
     "add_noise(original, noise, timestep: float) -> ndarray\n\nForward diffusion of a sample to "
     "one timestep."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sched_getset[] = {
    {"timesteps", (getter)get_timesteps, NULL, "float64 timesteps (None before set_timesteps)",
     NULL},
    {"sigmas", (getter)get_sigmas, NULL, "float32 sigmas of sigma-based schedulers, else None",
     NULL},
    {"betas", (getter)get_betas, NULL, "float32 training betas", NULL},
    {"alphas_cumprod", (getter)get_alphas_cumprod, NULL, "float32 cumulative alphas", NULL},
    {"init_noise_sigma", (getter)get_init_noise_sigma, NULL, "std of the initial noise", NULL},
    {"num_inference_steps", (getter)get_num_inference_steps, NULL,
     "steps of the last set_timesteps (0 before)", NULL},
    {"num_train_timesteps", (getter)get_num_train_timesteps, NULL, "training timesteps", NULL},
    {"class_name", (getter)get_class_name, NULL, "diffusers class name", NULL},
    {"needs_noise", (getter)get_needs_noise, NULL, "whether the next step takes noise", NULL},
    {"step_index", (getter)get_step_index, (setter)set_step_index, "index of the next step",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot sched_slots[] = {
    {Py_tp_doc, "Scheduler(config_json: str)\n\nA diffusers noise scheduler (PNDM, DDIM, Euler, "
                "Euler ancestral, DPM-Solver multistep, LCM, LMS) configured by the text of a "
                "scheduler_config.json with its \"_class_name\"."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, sched_init},
    {Py_tp_dealloc, sched_dealloc},
    {Py_tp_methods, sched_methods},
    {Py_tp_getset, sched_getset},
    {0, NULL},
};

static PyType_Spec sched_spec = {"snapfusion._engine.Scheduler", sizeof(SchedObject), 0,
                                 Py_TPFLAGS_DEFAULT, sched_slots};

int sf_py_init_scheduler(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &sched_spec, NULL);
    if (!type)
        return -1;
    int rc = PyModule_AddObjectRef(module, "Scheduler", type);
    Py_DECREF(type);
    return rc < 0 ? -1 : 0;
}
