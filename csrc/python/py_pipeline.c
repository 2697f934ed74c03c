/*
 * py_pipeline.c — snapfusion._engine.CPipeline: the C text-to-image pipeline (sf_pipeline_*)
 * as a thin Python type, and snapfusion._engine.randn (sf_randn).
 *
 * CPipeline(folder, scheduler=None) loads a diffusers-layout folder; .generate(...) runs a whole
 * generation with the GIL released, taking it back only to call the progress callable (whose
 * exceptions propagate). One generation per object at a time (a second thread gets a
 * RuntimeError).
 */
#include <math.h>

#include "sf_py.h"

typedef struct {
    PyObject_HEAD
    sf_pipeline *p;
    int busy; /* a call is running (read and written with the GIL held) */
} PipeObject;

static int pipe_ready(PipeObject *self) {
    if (!self->p) {
        PyErr_SetString(PyExc_RuntimeError, "CPipeline: not initialized");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "CPipeline: already running a call in another "
                        "thread");
        return 0;
    }
    return 1;
}

static int pipe_init(PipeObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"folder", "scheduler", NULL};
    PyObject *path = NULL;
    const char *sched = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|z:CPipeline", kwlist,
                                     PyUnicode_FSConverter, &path, &sched))
        return -1;
    if (self->busy) {
        Py_DECREF(path);
        PyErr_SetString(PyExc_RuntimeError, "CPipeline: already running a call");
        return -1;
    }
    sf_pipeline *p = NULL;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_pipeline_load(PyBytes_AS_STRING(path), &p);
    if (st == SF_OK && sched)
        st = sf_pipeline_set_scheduler(p, sched);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (st != SF_OK) {
        sf_pipeline_destroy(p);
        sf_py_raise(st);
        return -1;
    }
    sf_pipeline_destroy(self->p);
    self->p = p;
    return 0;
}

static void pipe_dealloc(PipeObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sf_pipeline_destroy(self->p);
    self->p = NULL;
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(self);
    Py_DECREF(tp);
}

/* An optional non-negative int argument (None: `dflt`). */
static int opt_size(PyObject *o, const char *what, size_t dflt, size_t *out) {
    if (!o || o == Py_None) {
        *out = dflt;
        return 0;
    }
    if (PyBool_Check(o) || !PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "CPipeline.generate: %s must be an int, got %.100s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < 0) {
        PyErr_Format(PyExc_ValueError, "CPipeline.generate: %s must be a non-negative int", what);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

/* Token ids: (L,) or (B, L) integers. */
static PyArrayObject *ids_array(PyObject *o, const char *what, size_t *rows, size_t *len) {
    PyArrayObject *a = sf_py_i64(o, what, -1);
    if (!a)
        return NULL;
    if (PyArray_NDIM(a) == 1) {
        *rows = 1;
        *len = (size_t)PyArray_DIM(a, 0);
    } else if (PyArray_NDIM(a) == 2) {
        *rows = (size_t)PyArray_DIM(a, 0);
        *len = (size_t)PyArray_DIM(a, 1);
    } else {
        char buf[96];
        PyErr_Format(PyExc_ValueError, "%s: expected (L,) or (B, L) ids, got shape %s", what,
                     sf_py_shape_str(a, buf, sizeof buf));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

typedef struct {
    PyObject *callable;
    int raised; /* the callable raised: its exception is set on this thread */
} progress_ctx;

/* Runs on the generating thread, which released the GIL: take it for the call. */
static int progress_trampoline(void *user, size_t step, size_t total, double timestep) {
    progress_ctx *c = user;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = 0;
    PyObject *res = PyObject_CallFunction(c->callable, "nnd", (Py_ssize_t)step,
                                          (Py_ssize_t)total, timestep);
    if (!res) {
        c->raised = 1;
        stop = 1;
    } else {
        int t = PyObject_IsTrue(res);
        Py_DECREF(res);
        if (t < 0) {
            c->raised = 1;
            stop = 1;
        } else {
            stop = t;
        }
    }
    PyGILState_Release(g);
    return stop;
}

static PyObject *pipe_generate(PipeObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"cond_ids", "uncond_ids", "steps", "guidance", "latents", "seed",
                             "height", "width", "clip_skip", "progress", NULL};
    PyObject *co, *uo = Py_None, *steps_o = Py_None, *guid_o = Py_None, *lat_o = Py_None;
    PyObject *seed_o = NULL, *h_o = Py_None, *w_o = Py_None, *cs_o = NULL, *prog = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O$OOOOOOOO:generate", kwlist, &co, &uo,
                                     &steps_o, &guid_o, &lat_o, &seed_o, &h_o, &w_o, &cs_o,
                                     &prog))
        return NULL;
    if (!pipe_ready(self))
        return NULL;
    sf_pipeline_info info;
    sf_pipeline_get_info(self->p, &info);
    sf_generate_params g;
    sf_generate_params_default(&g);
    PyArrayObject *cond = NULL, *uncond = NULL, *lat = NULL, *out = NULL;
    PyObject *result = NULL;
    size_t rows = 0, urows = 0;
    char b1[96];

    if (opt_size(steps_o, "steps", info.recommended_steps ? info.recommended_steps : 50,
                 &g.num_inference_steps) < 0 ||
        opt_size(h_o, "height", info.default_height, &g.height) < 0 ||
        opt_size(w_o, "width", info.default_width, &g.width) < 0 ||
        opt_size(cs_o, "clip_skip", 0, &g.clip_skip) < 0)
        return NULL;
    if (guid_o == Py_None) {
        g.guidance_scale = isnan(info.recommended_guidance) ? 7.5 : info.recommended_guidance;
    } else {
        g.guidance_scale = PyFloat_AsDouble(guid_o);
        if (g.guidance_scale == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (seed_o && seed_o != Py_None) {
        if (PyBool_Check(seed_o) || !PyLong_Check(seed_o)) {
            PyErr_Format(PyExc_TypeError, "CPipeline.generate: seed must be an int, got %.100s",
                         Py_TYPE(seed_o)->tp_name);
            return NULL;
        }
        g.seed = PyLong_AsUnsignedLongLong(seed_o);
        if (g.seed == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "CPipeline.generate: seed must be an int in "
                            "[0, 2**64)");
            return NULL;
        }
    }
    if (prog != Py_None && !PyCallable_Check(prog)) {
        PyErr_Format(PyExc_TypeError, "CPipeline.generate: progress must be callable, got "
                     "%.100s", Py_TYPE(prog)->tp_name);
        return NULL;
    }

    cond = ids_array(co, "cond_ids", &rows, &g.cond_len);
    if (!cond)
        goto done;
    g.batch = rows;
    g.cond_ids = PyArray_DATA(cond);
    if (uo != Py_None) {
        uncond = ids_array(uo, "uncond_ids", &urows, &g.uncond_len);
        if (!uncond)
            goto done;
        if (urows != rows) {
            PyErr_Format(PyExc_ValueError, "uncond_ids: %zu rows for %zu rows of cond_ids", urows,
                         rows);
            goto done;
        }
        g.uncond_ids = PyArray_DATA(uncond);
    }
    size_t f = info.vae_scale_factor;
    if (g.height == 0)
        g.height = info.default_height;
    if (g.width == 0)
        g.width = info.default_width;
    if (lat_o != Py_None && (g.height % f || g.width % f)) {
        /* sizes the engine refuses before reading the latents: let it say so */
        lat = sf_py_f32(lat_o, "latents", 4);
        if (!lat)
            goto done;
        g.latents = PyArray_DATA(lat);
    } else if (lat_o != Py_None) {
        lat = sf_py_f32(lat_o, "latents", 4);
        if (!lat)
            goto done;
        if ((size_t)PyArray_DIM(lat, 0) != rows ||
            (size_t)PyArray_DIM(lat, 1) != info.latent_channels ||
            (size_t)PyArray_DIM(lat, 2) != g.height / f ||
            (size_t)PyArray_DIM(lat, 3) != g.width / f) {
            PyErr_Format(PyExc_ValueError, "latents: expected (%zu, %zu, %zu, %zu) (NCHW) for "
                         "%zux%zu images, got %s", rows, info.latent_channels, g.height / f,
                         g.width / f, g.height, g.width, sf_py_shape_str(lat, b1, sizeof b1));
            goto done;
        }
        g.latents = PyArray_DATA(lat);
    }
    if (g.height > 8192 || g.width > 8192) { /* before allocating the output */
        PyErr_Format(PyExc_ValueError, "height and width must be at most 8192, got %zux%zu",
                     g.height, g.width);
        goto done;
    }
    npy_intp shape[4] = {(npy_intp)rows, (npy_intp)g.height, (npy_intp)g.width,
                         (npy_intp)info.image_channels};
    out = sf_py_new_f32(4, shape);
    if (!out)
        goto done;
    progress_ctx pc = {prog, 0};
    if (prog != Py_None) {
        g.progress = progress_trampoline;
        g.progress_user = &pc;
    }
    self->busy = 1;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_pipeline_generate(self->p, &g, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (pc.raised) {
        /* the callable's exception is the one to see */
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "CPipeline.generate: progress callback failed");
        goto done;
    }
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    result = Py_NewRef(out);
done:
    Py_XDECREF(cond);
    Py_XDECREF(uncond);
    Py_XDECREF(lat);
    Py_XDECREF(out);
    return result;
}

static PyObject *pipe_get_info(PipeObject *self, void *closure) {
    (void)closure;
    if (!self->p)
        Py_RETURN_NONE;
    sf_pipeline_info i;
    sf_pipeline_get_info(self->p, &i);
    PyObject *steps = i.recommended_steps ? PyLong_FromSize_t(i.recommended_steps)
                                          : Py_NewRef(Py_None);
    PyObject *guid = isnan(i.recommended_guidance) ? Py_NewRef(Py_None)
                                                   : PyFloat_FromDouble(i.recommended_guidance);
    PyObject *d = NULL;
    if (steps && guid)
        d = Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:O,s:O,s:s}", "max_text_len",
                          (Py_ssize_t)i.max_text_len, "vocab_size", (Py_ssize_t)i.vocab_size,
                          "latent_channels", (Py_ssize_t)i.latent_channels, "vae_scale_factor",
                          (Py_ssize_t)i.vae_scale_factor, "default_height",
                          (Py_ssize_t)i.default_height, "default_width",
                          (Py_ssize_t)i.default_width, "image_channels",
                          (Py_ssize_t)i.image_channels, "recommended_steps", steps,
                          "recommended_guidance", guid, "scheduler", i.scheduler);
    Py_XDECREF(steps);
    Py_XDECREF(guid);
    return d;
}

static PyObject *pipe_get_timings(PipeObject *self, void *closure) {
    (void)closure;
    if (!self->p)
        Py_RETURN_NONE;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "CPipeline.timings: a generation is running");
        return NULL;
    }
    sf_pipeline_timings t;
    sf_pipeline_get_timings(self->p, &t);
    PyObject *unet = PyList_New((Py_ssize_t)t.steps);
    if (!unet)
        return NULL;
    for (size_t k = 0; k < t.steps; k++) {
        PyObject *v = PyFloat_FromDouble(t.unet_step_s[k]);
        if (!v) {
            Py_DECREF(unet);
            return NULL;
        }
        PyList_SET_ITEM(unet, (Py_ssize_t)k, v);
    }
    PyObject *d = Py_BuildValue("{s:d,s:N,s:d,s:d,s:d,s:d,s:n}", "text_encoder",
                                t.text_encoder_s, "unet", unet, "unet_total", t.unet_s,
                                "scheduler", t.scheduler_s, "decoder", t.decoder_s, "total",
                                t.total_s, "steps", (Py_ssize_t)t.steps);
    return d;
}

static PyObject *pipe_set_scheduler(PipeObject *self, PyObject *arg) {
    if (!pipe_ready(self))
        return NULL;
    const char *name = NULL;
    if (arg != Py_None) {
        if (!PyUnicode_Check(arg)) {
            PyErr_Format(PyExc_TypeError, "set_scheduler: expected a class name or None, got "
                         "%.100s", Py_TYPE(arg)->tp_name);
            return NULL;
        }
        name = PyUnicode_AsUTF8(arg);
        if (!name)
            return NULL;
    }
    sf_status st = sf_pipeline_set_scheduler(self->p, name);
    if (st != SF_OK)
        return sf_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *pipe_set_scheduler_config(PipeObject *self, PyObject *arg) {
    if (!pipe_ready(self))
        return NULL;
    Py_ssize_t len;
    const char *text = PyUnicode_Check(arg) ? PyUnicode_AsUTF8AndSize(arg, &len) : NULL;
    if (!text) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "set_scheduler_config: expected the JSON text of a "
                         "scheduler_config.json, got %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    sf_status st = sf_pipeline_set_scheduler_json(self->p, text, (size_t)len);
    if (st != SF_OK)
        return sf_py_raise(st);
    Py_RETURN_NONE;
}

static PyMethodDef pipe_methods[] = {
    {"generate", (PyCFunction)(void (*)(void))pipe_generate, METH_VARARGS | METH_KEYWORDS,
     "generate(cond_ids, uncond_ids=None, *, steps=None, guidance=None, latents=None, seed=0, "
     "height=None, width=None, clip_skip=0, progress=None) -> float32 (B, H, W, 3) in [0, 1]\n\n"
     "cond_ids / uncond_ids: (L,) or (B, L) token ids (uncond: those of \"\" or a negative "
     "prompt; needed when guidance > 1). steps / guidance: None takes the model's recommended "
     "values (snapfusion_model.json), else 50 and 7.5. latents: (B, C, h, w) NCHW initial noise "
     "(as diffusers' latents=), or None to draw it with randn(seed, 0). height / width: None "
     "for the model's default size. progress(step, total_steps, timestep) is called after each "
     "step with the GIL held; a true return value stops the generation (EngineError), an "
     "exception it raises propagates."},
    {"set_scheduler", (PyCFunction)pipe_set_scheduler, METH_O,
     "set_scheduler(class_name or None): use another scheduler class with the folder's "
     "scheduler configuration (None: the folder's own class)."},
    {"set_scheduler_config", (PyCFunction)pipe_set_scheduler_config, METH_O,
     "set_scheduler_config(json_text): use the scheduler that a scheduler_config.json text "
     "describes (its _class_name picks the class)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pipe_getset[] = {
    {"info", (getter)pipe_get_info, NULL, "What the loaded model needs and recommends (dict).",
     NULL},
    {"timings", (getter)pipe_get_timings, NULL,
     "Seconds per stage of the last generate (dict; 'unet' lists the steps).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot pipe_slots[] = {
    {Py_tp_doc, "CPipeline(folder, scheduler=None)\n\nThe C text-to-image pipeline "
                "(sf_pipeline_*) on a diffusers-layout model folder; scheduler: another "
                "scheduler class name for the folder's scheduler configuration."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, pipe_init},
    {Py_tp_dealloc, pipe_dealloc},
    {Py_tp_methods, pipe_methods},
    {Py_tp_getset, pipe_getset},
    {0, NULL},
};

static PyType_Spec pipe_spec = {"snapfusion._engine.CPipeline", sizeof(PipeObject), 0,
                                Py_TPFLAGS_DEFAULT, pipe_slots};

/* randn(seed, stream, n) -> float32 (n,) */
static PyObject *py_randn(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long seed, stream;
    Py_ssize_t n;
    PyObject *so, *to;
    if (!PyArg_ParseTuple(args, "OOn:randn", &so, &to, &n))
        return NULL;
    seed = PyLong_Check(so) ? PyLong_AsUnsignedLongLong(so) : (unsigned long long)-1;
    if (seed == (unsigned long long)-1 && (PyErr_Occurred() || !PyLong_Check(so))) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "randn: seed must be an int in [0, 2**64)");
        return NULL;
    }
    stream = PyLong_Check(to) ? PyLong_AsUnsignedLongLong(to) : (unsigned long long)-1;
    if (stream == (unsigned long long)-1 && (PyErr_Occurred() || !PyLong_Check(to))) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "randn: stream must be an int in [0, 2**64)");
        return NULL;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "randn: n must be >= 0");
        return NULL;
    }
    npy_intp shape[1] = {(npy_intp)n};
    PyArrayObject *out = sf_py_new_f32(1, shape);
    if (!out)
        return NULL;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_randn(seed, stream, (size_t)n, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (st != SF_OK) {
        Py_DECREF(out);
        return sf_py_raise(st);
    }
    return (PyObject *)out;
}

static PyMethodDef pipeline_functions[] = {
    {"randn", py_randn, METH_VARARGS,
     "randn(seed, stream, n) -> float32 (n,): the engine's Gaussian noise (sf_randn); the "
     "C pipeline draws its initial latents (NCHW order) from stream 0 and the noise of step i "
     "of stochastic schedulers from stream i + 1."},
    {NULL, NULL, 0, NULL},
};

int sf_py_init_pipeline(PyObject *module) {
    if (PyModule_AddFunctions(module, pipeline_functions) < 0)
        return -1;
    PyObject *t = PyType_FromModuleAndSpec(module, &pipe_spec, NULL);
    if (!t)
        return -1;
    int rc = PyModule_AddObjectRef(module, "CPipeline", t);
    Py_DECREF(t);
    return rc;
}
