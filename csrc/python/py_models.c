/* py_models.c — snapfusion._engine: the models (UNet, VAE, TextEncoder) as Python types. */
#include "sf_py.h"

/* ---- shared: open weights with an optional prefix and renames ---- */

/* Returns 0, or -1 with a Python exception set. */
static int open_weights(const char *path, const char *prefix, PyObject *renames,
                        sf_weights **out) {
    sf_status st = SF_OK;
    Py_BEGIN_ALLOW_THREADS
    st = sf_weights_open(path, out);
    Py_END_ALLOW_THREADS
    if (st != SF_OK) {
        sf_py_raise(st);
        return -1;
    }
    if (prefix && *prefix && (st = sf_weights_set_prefix(*out, prefix)) != SF_OK)
        goto fail;
    if (renames && renames != Py_None) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(renames, &pos, &key, &value)) {
            const char *k = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
            const char *v = PyUnicode_Check(value) ? PyUnicode_AsUTF8(value) : NULL;
            if (!k || !v) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "renames must map str to str");
                sf_weights_close(*out);
                *out = NULL;
                return -1;
            }
            if ((st = sf_weights_add_rename(*out, k, v)) != SF_OK)
                goto fail;
        }
    }
    return 0;
fail:
    sf_weights_close(*out);
    *out = NULL;
    sf_py_raise(st);
    return -1;
}

static int parse_common(PyObject *args, PyObject *kwds, const char **config, Py_ssize_t *clen,
                        PyObject **path_obj, const char **prefix, PyObject **renames, int *strict,
                        int *encoder, int *decoder) {
    static char *kwlist[] = {"config", "weights", "prefix", "renames", "strict", "encoder",
                             "decoder", NULL};
    *prefix = "";
    *renames = NULL;
    *strict = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s#O&|$sOppp", kwlist, config, clen,
                                     PyUnicode_FSConverter, path_obj, prefix, renames, strict,
                                     encoder, decoder))
        return -1;
    if (*renames && *renames != Py_None && !PyDict_Check(*renames)) {
        Py_DECREF(*path_obj);
        PyErr_SetString(PyExc_TypeError, "renames must be a dict or None");
        return -1;
    }
    return 0;
}

/* ---- hooks: collect named activations into a dict (NCHW copies) ---- */

static void collect_hook(void *user, const char *name, const float *x, size_t batch, size_t h,
                         size_t w, size_t c) {
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *dict = user;
    npy_intp shape[4] = {(npy_intp)batch, (npy_intp)c, (npy_intp)h, (npy_intp)w};
    PyArrayObject *arr = sf_py_new_f32(4, shape);
    if (arr) {
        float *dst = PyArray_DATA(arr);
        for (size_t b = 0; b < batch; b++)
            for (size_t i = 0; i < h * w; i++)
                for (size_t k = 0; k < c; k++)
                    dst[(b * c + k) * h * w + i] = x[(b * h * w + i) * c + k];
        if (PyDict_SetItemString(dict, name, (PyObject *)arr) < 0)
            PyErr_Clear();
        Py_DECREF(arr);
    } else {
        PyErr_Clear();
    }
    PyGILState_Release(g);
}

/* Busy flag: one computation per object at a time (checked and set under the GIL). */
static int acquire(int *busy) {
    if (*busy) {
        PyErr_SetString(PyExc_RuntimeError, "this model is already running in another thread");
        return -1;
    }
    *busy = 1;
    return 0;
}

/* The shared part of the three models' __init__: parse the arguments, parse the config text,
 * open the weights, build the model (GIL released), close the weights (they are packed: the
 * file is unmapped). Returns 0, or -1 with an exception set. */
typedef enum { MODEL_UNET, MODEL_VAE, MODEL_CLIP } model_kind;

static int model_init(model_kind kind, const char *type_name, void **handle, PyObject *args,
                      PyObject *kwds) {
    const char *config, *prefix;
    Py_ssize_t clen;
    PyObject *path = NULL, *renames;
    int strict, enc = 1, dec = 1;
    if (*handle) {
        PyErr_Format(PyExc_RuntimeError, "%s is already initialized", type_name);
        return -1;
    }
    if (parse_common(args, kwds, &config, &clen, &path, &prefix, &renames, &strict, &enc,
                     &dec) < 0)
        return -1;
    union {
        sf_unet_config unet;
        sf_vae_config vae;
        sf_clip_config clip;
    } cfg;
    sf_status st = kind == MODEL_UNET  ? sf_unet_config_from_json(config, (size_t)clen, &cfg.unet)
                   : kind == MODEL_VAE ? sf_vae_config_from_json(config, (size_t)clen, &cfg.vae)
                                       : sf_clip_config_from_json(config, (size_t)clen, &cfg.clip);
    if (st != SF_OK) {
        Py_DECREF(path);
        sf_py_raise(st);
        return -1;
    }
    sf_weights *w = NULL;
    int rc = open_weights(PyBytes_AS_STRING(path), prefix, renames, &w);
    Py_DECREF(path);
    if (rc < 0)
        return -1;
    sf_unet *u = NULL;
    sf_vae *v = NULL;
    sf_clip *c = NULL;
    Py_BEGIN_ALLOW_THREADS
    if (kind == MODEL_UNET)
        st = sf_unet_create(&cfg.unet, w, strict, &u);
    else if (kind == MODEL_VAE)
        st = sf_vae_create(&cfg.vae, w, enc, dec, strict, &v);
    else
        st = sf_clip_create(&cfg.clip, w, strict, &c);
    Py_END_ALLOW_THREADS
    sf_weights_close(w);
    if (st != SF_OK) {
        sf_py_raise(st);
        return -1;
    }
    *handle = kind == MODEL_UNET ? (void *)u : kind == MODEL_VAE ? (void *)v : (void *)c;
    return 0;
}

/* release_memory(): give a model's activation memory back between calls. */
#define SF_PY_TRIM_METHOD(fname, pytype, field, trim)                                           \
    static PyObject *fname(pytype *self, PyObject *unused) {                                    \
        (void)unused;                                                                           \
        if (!self->field) {                                                                     \
            PyErr_SetString(PyExc_RuntimeError, "model is not initialized");                    \
            return NULL;                                                                        \
        }                                                                                       \
        if (acquire(&self->busy) < 0)                                                           \
            return NULL;                                                                        \
        sf_status st = trim(self->field);                                                       \
        self->busy = 0;                                                                         \
        if (st != SF_OK)                                                                        \
            return sf_py_raise(st);                                                             \
        Py_RETURN_NONE;                                                                         \
    }

#define SF_PY_TRIM_DOC                                                                          \
    "release_memory() -> None: free the activation memory (the next call allocates it again)."

/* ================================ UNet ================================ */

typedef struct {
    PyObject_HEAD
    sf_unet *unet;
    int busy;
} PyUNet;

static int unet_init(PyUNet *self, PyObject *args, PyObject *kwds) {
    void *h = self->unet;
    int rc = model_init(MODEL_UNET, "UNet", &h, args, kwds);
    self->unet = h;
    return rc;
}

static void unet_dealloc(PyUNet *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sf_unet_destroy(self->unet);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* unet(sample (B,H,W,C), timesteps (B,), ctx (B,L,D), hooks=False) */
static PyObject *unet_call(PyUNet *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"sample", "timesteps", "encoder_hidden_states", "hooks", NULL};
    PyObject *so, *to, *co;
    int want_hooks = 0;
    if (!self->unet) {
        PyErr_SetString(PyExc_RuntimeError, "UNet is not initialized");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|p", kwlist, &so, &to, &co, &want_hooks))
        return NULL;
    const sf_unet_config *cfg = sf_unet_get_config(self->unet);
    PyArrayObject *s = NULL, *t = NULL, *c = NULL, *out = NULL;
    PyObject *hooks = NULL, *result = NULL;
    char b1[96], b2[96];
    s = sf_py_f32(so, "sample", 4);
    if (!s)
        goto done;
    t = sf_py_f32(to, "timesteps", 1);
    if (!t)
        goto done;
    c = sf_py_f32(co, "encoder_hidden_states", 3);
    if (!c)
        goto done;
    npy_intp B = PyArray_DIM(s, 0), H = PyArray_DIM(s, 1), W = PyArray_DIM(s, 2);
    if ((size_t)PyArray_DIM(s, 3) != cfg->in_channels) {
        PyErr_Format(PyExc_ValueError, "sample: expected (B, H, W, %zu), got %s",
                     cfg->in_channels, sf_py_shape_str(s, b1, sizeof b1));
        goto done;
    }
    if (PyArray_DIM(t, 0) != B || PyArray_DIM(c, 0) != B ||
        (size_t)PyArray_DIM(c, 2) != cfg->cross_attention_dim) {
        PyErr_Format(PyExc_ValueError,
                     "timesteps %s and encoder_hidden_states %s must have batch %ld and width "
                     "%zu",
                     sf_py_shape_str(t, b1, sizeof b1), sf_py_shape_str(c, b2, sizeof b2),
                     (long)B, cfg->cross_attention_dim);
        goto done;
    }
    npy_intp shape[4] = {B, H, W, (npy_intp)cfg->out_channels};
    out = sf_py_new_f32(4, shape);
    if (!out)
        goto done;
    if (acquire(&self->busy) < 0)
        goto done;
    if (want_hooks) {
        hooks = PyDict_New();
        if (!hooks) {
            self->busy = 0;
            goto done;
        }
        sf_unet_set_hook(self->unet, collect_hook, hooks);
    }
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_unet_run(self->unet, PyArray_DATA(s), (size_t)B, (size_t)H, (size_t)W,
                     PyArray_DATA(t), PyArray_DATA(c), (size_t)PyArray_DIM(c, 1),
                     PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    sf_unet_set_hook(self->unet, NULL, NULL);
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    if (want_hooks)
        result = Py_BuildValue("(OO)", out, hooks);
    else
        result = Py_NewRef(out);
done:
    Py_XDECREF(s);
    Py_XDECREF(t);
    Py_XDECREF(c);
    Py_XDECREF(out);
    Py_XDECREF(hooks);
    return result;
}

static PyObject *unet_get_config(PyUNet *self, void *closure) {
    (void)closure;
    if (!self->unet)
        Py_RETURN_NONE;
    const sf_unet_config *c = sf_unet_get_config(self->unet);
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:O}", "in_channels", (Py_ssize_t)c->in_channels,
                         "out_channels", (Py_ssize_t)c->out_channels, "cross_attention_dim",
                         (Py_ssize_t)c->cross_attention_dim, "n_blocks",
                         (Py_ssize_t)c->n_blocks, "time_embed_dim",
                         (Py_ssize_t)c->time_embed_dim, "has_mid_block",
                         c->has_mid_block ? Py_True : Py_False);
}

static PyObject *unet_get_arena(PyUNet *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(self->unet ? sf_unet_arena_bytes(self->unet) : 0);
}

SF_PY_TRIM_METHOD(unet_release, PyUNet, unet, sf_unet_trim)

static PyMethodDef unet_methods[] = {
    {"release_memory", (PyCFunction)unet_release, METH_NOARGS, SF_PY_TRIM_DOC},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef unet_getset[] = {
    {"arena_bytes", (getter)unet_get_arena, NULL, "Bytes of the activation arena.", NULL},
    {"config", (getter)unet_get_config, NULL, "A summary of the parsed configuration.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot unet_slots[] = {
    {Py_tp_doc, "UNet(config: str, weights: path, *, prefix='', renames=None, strict=True)\n\n"
                "A diffusers UNet2DConditionModel (with the optional elastic block list) built "
                "from its config.json text and a safetensors file.\n"
                "Call: unet(sample (B, H, W, C) NHWC, timesteps (B,), encoder_hidden_states "
                "(B, L, D), hooks=False) -> (B, H, W, out) [, dict of stage outputs (NCHW)]."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, unet_init},
    {Py_tp_dealloc, unet_dealloc},
    {Py_tp_call, unet_call},
    {Py_tp_methods, unet_methods},
    {Py_tp_getset, unet_getset},
    {0, NULL},
};

static PyType_Spec unet_spec = {"snapfusion._engine.UNet", sizeof(PyUNet), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, unet_slots};

/* ================================ VAE ================================ */

typedef struct {
    PyObject_HEAD
    sf_vae *vae;
    int busy;
} PyVAE;

static int vae_init(PyVAE *self, PyObject *args, PyObject *kwds) {
    void *h = self->vae;
    int rc = model_init(MODEL_VAE, "VAE", &h, args, kwds);
    self->vae = h;
    return rc;
}

static void vae_dealloc(PyVAE *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sf_vae_destroy(self->vae);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *vae_decode(PyVAE *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"latents", "hooks", NULL};
    PyObject *zo, *result = NULL, *hooks = NULL;
    int want_hooks = 0;
    char b1[96];
    if (!self->vae) {
        PyErr_SetString(PyExc_RuntimeError, "VAE is not initialized");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p", kwlist, &zo, &want_hooks))
        return NULL;
    const sf_vae_config *cfg = sf_vae_get_config(self->vae);
    PyArrayObject *z = sf_py_f32(zo, "latents", 4), *out = NULL;
    if (!z)
        return NULL;
    if ((size_t)PyArray_DIM(z, 3) != cfg->latent_channels) {
        PyErr_Format(PyExc_ValueError, "latents: expected (B, h, w, %zu), got %s",
                     cfg->latent_channels, sf_py_shape_str(z, b1, sizeof b1));
        goto done;
    }
    size_t oh, ow;
    sf_vae_decoded_size(self->vae, (size_t)PyArray_DIM(z, 1), (size_t)PyArray_DIM(z, 2), &oh,
                        &ow);
    npy_intp shape[4] = {PyArray_DIM(z, 0), (npy_intp)oh, (npy_intp)ow,
                         (npy_intp)cfg->out_channels};
    out = sf_py_new_f32(4, shape);
    if (!out)
        goto done;
    if (acquire(&self->busy) < 0)
        goto done;
    if (want_hooks) {
        hooks = PyDict_New();
        if (!hooks) {
            self->busy = 0;
            goto done;
        }
        sf_vae_set_hook(self->vae, collect_hook, hooks);
    }
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_vae_decode(self->vae, PyArray_DATA(z), (size_t)PyArray_DIM(z, 0),
                       (size_t)PyArray_DIM(z, 1), (size_t)PyArray_DIM(z, 2), PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    sf_vae_set_hook(self->vae, NULL, NULL);
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    result = want_hooks ? Py_BuildValue("(OO)", out, hooks) : Py_NewRef(out);
done:
    Py_XDECREF(z);
    Py_XDECREF(out);
    Py_XDECREF(hooks);
    return result;
}

static PyObject *vae_encode(PyVAE *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"images", "hooks", NULL};
    PyObject *xo, *result = NULL, *hooks = NULL;
    int want_hooks = 0;
    char b1[96];
    if (!self->vae) {
        PyErr_SetString(PyExc_RuntimeError, "VAE is not initialized");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p", kwlist, &xo, &want_hooks))
        return NULL;
    const sf_vae_config *cfg = sf_vae_get_config(self->vae);
    PyArrayObject *x = sf_py_f32(xo, "images", 4), *mean = NULL, *std = NULL, *logvar = NULL;
    if (!x)
        return NULL;
    if ((size_t)PyArray_DIM(x, 3) != cfg->in_channels) {
        PyErr_Format(PyExc_ValueError, "images: expected (B, H, W, %zu), got %s",
                     cfg->in_channels, sf_py_shape_str(x, b1, sizeof b1));
        goto done;
    }
    size_t lh, lw;
    sf_vae_encoded_size(self->vae, (size_t)PyArray_DIM(x, 1), (size_t)PyArray_DIM(x, 2), &lh,
                        &lw);
    if (!lh || !lw) {
        PyErr_Format(PyExc_ValueError, "images: %s is too small to encode",
                     sf_py_shape_str(x, b1, sizeof b1));
        goto done;
    }
    npy_intp shape[4] = {PyArray_DIM(x, 0), (npy_intp)lh, (npy_intp)lw,
                         (npy_intp)cfg->latent_channels};
    mean = sf_py_new_f32(4, shape);
    std = sf_py_new_f32(4, shape);
    logvar = sf_py_new_f32(4, shape);
    if (!mean || !std || !logvar)
        goto done;
    if (acquire(&self->busy) < 0)
        goto done;
    if (want_hooks) {
        hooks = PyDict_New();
        if (!hooks) {
            self->busy = 0;
            goto done;
        }
        sf_vae_set_hook(self->vae, collect_hook, hooks);
    }
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_vae_encode(self->vae, PyArray_DATA(x), (size_t)PyArray_DIM(x, 0),
                       (size_t)PyArray_DIM(x, 1), (size_t)PyArray_DIM(x, 2), PyArray_DATA(mean),
                       PyArray_DATA(std), PyArray_DATA(logvar));
    Py_END_ALLOW_THREADS
    self->busy = 0;
    sf_vae_set_hook(self->vae, NULL, NULL);
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    if (want_hooks)
        result = Py_BuildValue("(OOOO)", mean, std, logvar, hooks);
    else
        result = Py_BuildValue("(OOO)", mean, std, logvar);
done:
    Py_XDECREF(x);
    Py_XDECREF(mean);
    Py_XDECREF(std);
    Py_XDECREF(logvar);
    Py_XDECREF(hooks);
    return result;
}

static PyObject *vae_get_scaling(PyVAE *self, void *closure) {
    (void)closure;
    if (!self->vae)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(sf_vae_get_config(self->vae)->scaling_factor);
}

static PyObject *vae_get_factor(PyVAE *self, void *closure) {
    (void)closure;
    if (!self->vae)
        Py_RETURN_NONE;
    return PyLong_FromSize_t((size_t)1 << (sf_vae_get_config(self->vae)->n_blocks - 1));
}

SF_PY_TRIM_METHOD(vae_release, PyVAE, vae, sf_vae_trim)

static PyMethodDef vae_methods[] = {
    {"release_memory", (PyCFunction)vae_release, METH_NOARGS, SF_PY_TRIM_DOC},
    {"decode", (PyCFunction)(void (*)(void))vae_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(latents (B, h, w, L) NHWC, hooks=False) -> images (B, H, W, C), unclamped.\n"
     "The caller divides latents by scaling_factor first, as with diffusers."},
    {"encode", (PyCFunction)(void (*)(void))vae_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(images (B, H, W, C) NHWC in [-1, 1], hooks=False) -> (mean, std, logvar), each "
     "(B, h, w, L)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef vae_getset[] = {
    {"scaling_factor", (getter)vae_get_scaling, NULL, "config scaling_factor", NULL},
    {"downscale_factor", (getter)vae_get_factor, NULL, "image size / latent size", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot vae_slots[] = {
    {Py_tp_doc, "VAE(config: str, weights: path, *, prefix='', renames=None, strict=True, "
                "encoder=True, decoder=True)\n\nA diffusers AutoencoderKL."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, vae_init},
    {Py_tp_dealloc, vae_dealloc},
    {Py_tp_methods, vae_methods},
    {Py_tp_getset, vae_getset},
    {0, NULL},
};

static PyType_Spec vae_spec = {"snapfusion._engine.VAE", sizeof(PyVAE), 0,
                               Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, vae_slots};

/* ============================= TextEncoder ============================= */

typedef struct {
    PyObject_HEAD
    sf_clip *clip;
    int busy;
} PyClip;

static int clip_init(PyClip *self, PyObject *args, PyObject *kwds) {
    void *h = self->clip;
    int rc = model_init(MODEL_CLIP, "TextEncoder", &h, args, kwds);
    self->clip = h;
    return rc;
}

static void clip_dealloc(PyClip *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sf_clip_destroy(self->clip);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *clip_call(PyClip *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"input_ids", "clip_skip", "pooled", NULL};
    PyObject *io, *result = NULL;
    Py_ssize_t clip_skip = 0;
    int want_pooled = 0;
    char b1[96];
    if (!self->clip) {
        PyErr_SetString(PyExc_RuntimeError, "TextEncoder is not initialized");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|np", kwlist, &io, &clip_skip, &want_pooled))
        return NULL;
    const sf_clip_config *cfg = sf_clip_get_config(self->clip);
    if (clip_skip < 0 || (size_t)clip_skip >= cfg->num_layers) {
        PyErr_Format(PyExc_ValueError, "clip_skip must be in [0, %zu), got %zd", cfg->num_layers,
                     clip_skip);
        return NULL;
    }
    PyArrayObject *ids = sf_py_i64(io, "input_ids", 2), *hidden = NULL, *pooled = NULL;
    if (!ids)
        return NULL;
    npy_intp B = PyArray_DIM(ids, 0), L = PyArray_DIM(ids, 1);
    if ((size_t)L > cfg->max_positions) {
        PyErr_Format(PyExc_ValueError, "input_ids: %s has more than %zu tokens",
                     sf_py_shape_str(ids, b1, sizeof b1), cfg->max_positions);
        goto done;
    }
    npy_intp hs[3] = {B, L, (npy_intp)cfg->hidden_size}, ps[2] = {B, (npy_intp)cfg->hidden_size};
    hidden = sf_py_new_f32(3, hs);
    if (!hidden)
        goto done;
    if (want_pooled && !(pooled = sf_py_new_f32(2, ps)))
        goto done;
    if (acquire(&self->busy) < 0)
        goto done;
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_clip_run(self->clip, PyArray_DATA(ids), (size_t)B, (size_t)L, (size_t)clip_skip,
                     PyArray_DATA(hidden), pooled ? PyArray_DATA(pooled) : NULL);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != SF_OK) {
        sf_py_raise(st);
        goto done;
    }
    result = pooled ? Py_BuildValue("(OO)", hidden, pooled) : Py_NewRef(hidden);
done:
    Py_XDECREF(ids);
    Py_XDECREF(hidden);
    Py_XDECREF(pooled);
    return result;
}

static PyObject *clip_get_dim(PyClip *self, void *closure) {
    (void)closure;
    if (!self->clip)
        Py_RETURN_NONE;
    return PyLong_FromSize_t(sf_clip_get_config(self->clip)->hidden_size);
}

SF_PY_TRIM_METHOD(clip_release, PyClip, clip, sf_clip_trim)

static PyMethodDef clip_methods[] = {
    {"release_memory", (PyCFunction)clip_release, METH_NOARGS, SF_PY_TRIM_DOC},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef clip_getset[] = {
    {"hidden_size", (getter)clip_get_dim, NULL, "width of the hidden states", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot clip_slots[] = {
    {Py_tp_doc, "TextEncoder(config: str, weights: path, *, prefix='', renames=None, "
                "strict=True)\n\nA transformers CLIPTextModel.\n"
                "Call: enc(input_ids (B, L) int, clip_skip=0, pooled=False) -> hidden (B, L, D) "
                "[, pooled (B, D)]."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, clip_init},
    {Py_tp_dealloc, clip_dealloc},
    {Py_tp_call, clip_call},
    {Py_tp_methods, clip_methods},
    {Py_tp_getset, clip_getset},
    {0, NULL},
};

static PyType_Spec clip_spec = {"snapfusion._engine.TextEncoder", sizeof(PyClip), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, clip_slots};

static int add_type(PyObject *module, PyType_Spec *spec, const char *name) {
    PyObject *t = PyType_FromModuleAndSpec(module, spec, NULL);
    if (!t)
        return -1;
    int rc = PyModule_AddObjectRef(module, name, t);
    Py_DECREF(t);
    return rc;
}

int sf_py_init_models(PyObject *module) {
    if (add_type(module, &unet_spec, "UNet") < 0 || add_type(module, &vae_spec, "VAE") < 0 ||
        add_type(module, &clip_spec, "TextEncoder") < 0)
        return -1;
    return 0;
}
