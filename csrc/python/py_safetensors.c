/*
 * py_safetensors.c — snapfusion._engine.SafeTensors: a strict, zero-copy safetensors reader.
 *
 * Two objects:
 * - _SafeTensorsStorage (internal, not exported) owns the C handle: the file mapping, or the
 *   exported buffer of from_bytes. It is the `base` of every zero-copy array handed out, so the
 *   mapping is unmapped only when the last of those arrays and the SafeTensors object are gone.
 * - SafeTensors holds a reference to its storage; close() drops it (later accesses raise
 *   ValueError, arrays handed out earlier stay valid).
 */
#include <errno.h>
#include <string.h>

#include "sf_py.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors views assume a little-endian host (the format is little-endian)"
#endif

typedef struct {
    PyObject_HEAD
    sf_safetensors *st;
    Py_buffer buf; /* from_bytes: the exported buffer (buf.obj != NULL) */
} StorageObject;

typedef struct {
    PyObject_HEAD
    StorageObject *storage; /* NULL once closed */
    PyObject *source;       /* the path as given (str) or "<memory>", for repr */
} SafeTensorsObject;

static PyTypeObject *storage_type = NULL;

/* ---- storage ------------------------------------------------------------------------------ */

static void storage_dealloc(StorageObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sf_safetensors_close(self->st);
    self->st = NULL;
    if (self->buf.obj)
        PyBuffer_Release(&self->buf);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot storage_slots[] = {
    {Py_tp_doc, "Owner of a safetensors mapping; the base of the arrays SafeTensors returns."},
    {Py_tp_dealloc, (void *)storage_dealloc},
    {0, NULL},
};

static PyType_Spec storage_spec = {"snapfusion._engine._SafeTensorsStorage",
                                   sizeof(StorageObject), 0, Py_TPFLAGS_DEFAULT, storage_slots};

static StorageObject *storage_new(void) {
    StorageObject *s = PyObject_New(StorageObject, storage_type);
    if (!s)
        return NULL;
    s->st = NULL;
    memset(&s->buf, 0, sizeof s->buf);
    return s;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static int check_open(SafeTensorsObject *self) {
    if (!self->storage || !self->storage->st) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed SafeTensors");
        return -1;
    }
    return 0;
}

/* The tensor named `key`; NULL with KeyError/TypeError/ValueError set. */
static const sf_st_tensor *lookup(SafeTensorsObject *self, PyObject *key) {
    if (check_open(self) < 0)
        return NULL;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "tensor names are str, got %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    Py_ssize_t n = 0;
    const char *s = PyUnicode_AsUTF8AndSize(key, &n);
    const sf_st_tensor *t = NULL;
    if (!s)
        PyErr_Clear(); /* not encodable (lone surrogates): cannot be a tensor name */
    else if ((size_t)n == strlen(s))
        t = sf_safetensors_find(self->storage->st, s);
    if (!t)
        PyErr_SetObject(PyExc_KeyError, key);
    return t;
}

/* Raise the error of a failed open: OSError(errno, message) for I/O errors (so that a missing
 * file raises FileNotFoundError), the usual mapping otherwise. */
static PyObject *raise_open_error(sf_status st, int err) {
    if (st == SF_ERR_IO && err != 0) {
        PyObject *args = Py_BuildValue("(is)", err, sf_last_error());
        if (args) {
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
        }
        return NULL;
    }
    return sf_py_raise(st);
}

/* Array of tensor `t` (which belongs to `storage`). to_f32: always return float32. Every
 * returned array is read-only. */
static PyObject *tensor_array(StorageObject *storage, const sf_st_tensor *t, int to_f32) {
    npy_intp dims[SF_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++)
        dims[i] = (npy_intp)t->shape[i];
    int typenum;
    switch (t->dtype) {
    case SF_DTYPE_F32: typenum = NPY_FLOAT32; break;
    case SF_DTYPE_F16: typenum = NPY_FLOAT16; break;
    case SF_DTYPE_I8: typenum = NPY_INT8; break;
    default: typenum = -1; break; /* BF16: numpy has no bfloat16 */
    }
    PyArrayObject *arr = NULL;
    if (typenum < 0 || (to_f32 && typenum != NPY_FLOAT32)) {
        arr = (PyArrayObject *)PyArray_SimpleNew(t->ndim, dims, NPY_FLOAT32);
        if (!arr)
            return NULL;
        sf_status st;
        /* `storage` is referenced by the caller: the data stays mapped without the GIL */
        Py_BEGIN_ALLOW_THREADS
        st = sf_convert_to_f32(t->dtype, t->data, t->numel, (float *)PyArray_DATA(arr));
        Py_END_ALLOW_THREADS
        if (st != SF_OK) {
            Py_DECREF(arr);
            return sf_py_raise(st);
        }
    } else {
        size_t align = sf_dtype_size(t->dtype);
        if ((uintptr_t)t->data % align == 0) {
            PyArray_Descr *descr = PyArray_DescrFromType(typenum);
            if (!descr)
                return NULL;
            /* no NPY_ARRAY_WRITEABLE: a read-only view into the mapping */
            arr = (PyArrayObject *)PyArray_NewFromDescr(
                &PyArray_Type, descr, t->ndim, dims, NULL, (void *)(uintptr_t)t->data,
                NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
            if (!arr)
                return NULL;
            Py_INCREF(storage);
            if (PyArray_SetBaseObject(arr, (PyObject *)storage) < 0) { /* steals storage */
                Py_DECREF(arr);
                return NULL;
            }
            return (PyObject *)arr;
        }
        /* misaligned for its dtype inside the file: an aligned copy */
        arr = (PyArrayObject *)PyArray_SimpleNew(t->ndim, dims, typenum);
        if (!arr)
            return NULL;
        if (t->nbytes)
            memcpy(PyArray_DATA(arr), t->data, t->nbytes);
    }
    PyArray_CLEARFLAGS(arr, NPY_ARRAY_WRITEABLE);
    return (PyObject *)arr;
}

static PyObject *get_array(SafeTensorsObject *self, PyObject *key, int to_f32) {
    const sf_st_tensor *t = lookup(self, key);
    if (!t)
        return NULL;
    StorageObject *storage = self->storage;
    Py_INCREF(storage); /* close() from another thread must not unmap under us */
    PyObject *r = tensor_array(storage, t, to_f32);
    Py_DECREF(storage);
    return r;
}

/* ---- SafeTensors ------------------------------------------------------------------------ */

static PyObject *safetensors_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", NULL};
    PyObject *path_arg = NULL, *path_bytes = NULL, *source = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:SafeTensors", kwlist, &path_arg))
        return NULL;
    if (!PyUnicode_FSConverter(path_arg, &path_bytes)) /* str, bytes, os.PathLike */
        return NULL;
    source = PyOS_FSPath(path_arg);
    if (!source) {
        Py_DECREF(path_bytes);
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    sf_safetensors *st = NULL;
    sf_status status;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    errno = 0;
    status = sf_safetensors_open(path, &st);
    err = errno;
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (status != SF_OK) {
        Py_DECREF(source);
        return raise_open_error(status, err);
    }
    StorageObject *storage = storage_new();
    if (!storage) {
        sf_safetensors_close(st);
        Py_DECREF(source);
        return NULL;
    }
    storage->st = st;
    SafeTensorsObject *self = (SafeTensorsObject *)type->tp_alloc(type, 0);
    if (!self) {
        Py_DECREF(storage);
        Py_DECREF(source);
        return NULL;
    }
    self->storage = storage;
    self->source = source;
    return (PyObject *)self;
}

static PyObject *safetensors_from_bytes(PyObject *cls, PyObject *data) {
    StorageObject *storage = storage_new();
    if (!storage)
        return NULL;
    if (PyObject_GetBuffer(data, &storage->buf, PyBUF_SIMPLE) < 0) {
        memset(&storage->buf, 0, sizeof storage->buf);
        Py_DECREF(storage);
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError,
                            "SafeTensors.from_bytes: the buffer must be C-contiguous bytes");
        }
        return NULL;
    }
    sf_status status;
    sf_safetensors *st = NULL;
    const void *ptr = storage->buf.buf;
    size_t len = (size_t)storage->buf.len;
    if (storage->buf.readonly) {
        Py_BEGIN_ALLOW_THREADS
        status = sf_safetensors_open_memory(ptr, len, &st);
        Py_END_ALLOW_THREADS
    } else {
        /* a mutable buffer: keep the GIL so that no Python code changes it while it is parsed */
        status = sf_safetensors_open_memory(ptr, len, &st);
    }
    if (status != SF_OK) {
        Py_DECREF(storage);
        return sf_py_raise(status);
    }
    storage->st = st;
    PyTypeObject *type = (PyTypeObject *)cls;
    SafeTensorsObject *self = (SafeTensorsObject *)type->tp_alloc(type, 0);
    if (!self) {
        Py_DECREF(storage);
        return NULL;
    }
    self->storage = storage;
    self->source = PyUnicode_FromString("<memory>");
    if (!self->source) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void safetensors_dealloc(SafeTensorsObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(self->storage);
    Py_CLEAR(self->source);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *safetensors_repr(SafeTensorsObject *self) {
    if (!self->storage || !self->storage->st)
        return PyUnicode_FromFormat("<SafeTensors %R (closed)>", self->source);
    return PyUnicode_FromFormat("<SafeTensors %R (%zu tensors)>", self->source,
                                sf_safetensors_count(self->storage->st));
}

static PyObject *safetensors_keys(SafeTensorsObject *self, PyObject *noargs) {
    (void)noargs;
    if (check_open(self) < 0)
        return NULL;
    const sf_safetensors *st = self->storage->st;
    size_t n = sf_safetensors_count(st);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(sf_safetensors_at(st, i)->name);
        if (!s) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return list;
}

static PyObject *safetensors_iter(SafeTensorsObject *self) {
    PyObject *keys = safetensors_keys(self, NULL);
    if (!keys)
        return NULL;
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static Py_ssize_t safetensors_len(SafeTensorsObject *self) {
    if (check_open(self) < 0)
        return -1;
    return (Py_ssize_t)sf_safetensors_count(self->storage->st);
}

static int safetensors_contains(SafeTensorsObject *self, PyObject *key) {
    if (check_open(self) < 0)
        return -1;
    if (!PyUnicode_Check(key))
        return 0;
    Py_ssize_t n = 0;
    const char *s = PyUnicode_AsUTF8AndSize(key, &n);
    if (!s) {
        PyErr_Clear();
        return 0;
    }
    return (size_t)n == strlen(s) && sf_safetensors_find(self->storage->st, s) != NULL;
}

static PyObject *safetensors_getitem(SafeTensorsObject *self, PyObject *key) {
    return get_array(self, key, 0);
}

static PyObject *safetensors_get(SafeTensorsObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", "dtype", NULL};
    PyObject *name = NULL, *dtype = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:get", kwlist, &name, &dtype))
        return NULL;
    int to_f32 = 0;
    if (dtype != Py_None) {
        PyArray_Descr *descr = NULL;
        if (!PyArray_DescrConverter(dtype, &descr))
            return NULL;
        int typenum = descr->type_num;
        Py_DECREF(descr);
        if (typenum != NPY_FLOAT32)
            return PyErr_Format(PyExc_ValueError,
                                "SafeTensors.get: dtype must be None or float32, got %R", dtype);
        to_f32 = 1;
    }
    return get_array(self, name, to_f32);
}

static PyObject *safetensors_info(SafeTensorsObject *self, PyObject *name) {
    const sf_st_tensor *t = lookup(self, name);
    if (!t)
        return NULL;
    PyObject *shape = PyTuple_New(t->ndim);
    if (!shape)
        return NULL;
    for (int i = 0; i < t->ndim; i++) {
        PyObject *d = PyLong_FromLongLong((long long)t->shape[i]);
        if (!d) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, i, d);
    }
    return Py_BuildValue("(sN)", sf_dtype_name(t->dtype), shape);
}

static PyObject *safetensors_metadata(SafeTensorsObject *self, void *closure) {
    (void)closure;
    if (check_open(self) < 0)
        return NULL;
    const sf_safetensors *st = self->storage->st;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    for (size_t i = 0; i < sf_safetensors_metadata_count(st); i++) {
        const char *k = NULL, *v = NULL;
        if (sf_safetensors_metadata_at(st, i, &k, &v) != SF_OK) {
            Py_DECREF(d);
            return sf_py_raise(SF_ERR_INVALID_ARG);
        }
        PyObject *vs = PyUnicode_FromString(v);
        if (!vs || PyDict_SetItemString(d, k, vs) < 0) {
            Py_XDECREF(vs);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(vs);
    }
    return d;
}

static PyObject *safetensors_closed(SafeTensorsObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(!self->storage);
}

static PyObject *safetensors_close(SafeTensorsObject *self, PyObject *noargs) {
    (void)noargs;
    Py_CLEAR(self->storage);
    Py_RETURN_NONE;
}

static PyObject *safetensors_enter(SafeTensorsObject *self, PyObject *noargs) {
    (void)noargs;
    if (check_open(self) < 0)
        return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *safetensors_exit(SafeTensorsObject *self, PyObject *args) {
    (void)args;
    Py_CLEAR(self->storage);
    Py_RETURN_FALSE;
}

static PyMethodDef safetensors_methods[] = {
    {"from_bytes", (PyCFunction)safetensors_from_bytes, METH_O | METH_CLASS,
     "from_bytes(data) -> SafeTensors\n\nRead a safetensors file held in a bytes-like object "
     "(bytes, bytearray, memoryview, mmap, C-contiguous numpy array). The buffer is not "
     "copied: the object keeps it exported (a bytearray cannot be resized meanwhile) until "
     "it and every array it returned are gone."},
    {"keys", (PyCFunction)safetensors_keys, METH_NOARGS,
     "keys() -> list[str]\n\nTensor names, sorted (code point order)."},
    {"get", (PyCFunction)(void (*)(void))safetensors_get, METH_VARARGS | METH_KEYWORDS,
     "get(name, dtype=None) -> numpy.ndarray\n\nLike self[name]; with dtype='float32' (or "
     "numpy.float32) every dtype is converted to float32. Other dtypes raise ValueError."},
    {"info", (PyCFunction)safetensors_info, METH_O,
     "info(name) -> tuple[str, tuple[int, ...]]\n\nStorage dtype name ('F32', 'F16', 'BF16', "
     "'I8') and shape of a tensor, without reading its data."},
    {"close", (PyCFunction)safetensors_close, METH_NOARGS,
     "close()\n\nRelease the file. Later accesses raise ValueError; arrays returned earlier stay "
     "valid (the mapping is released when the last of them is gone)."},
    {"__enter__", (PyCFunction)safetensors_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)safetensors_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef safetensors_getset[] = {
    {"metadata", (getter)safetensors_metadata, NULL,
     "dict[str, str]: the file's __metadata__ (a new dict each time; {} if none).", NULL},
    {"closed", (getter)safetensors_closed, NULL, "bool: whether close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot safetensors_slots[] = {
    {Py_tp_doc,
     "SafeTensors(path: str | bytes | os.PathLike)\n\n"
     "A strict, memory-mapped reader of a safetensors file. The whole header is validated on "
     "opening (dtypes, shapes, byte ranges inside the file and not overlapping, no duplicate "
     "names, valid UTF-8); a malformed file raises ValueError with the reason, a file that "
     "cannot be read raises OSError.\n\n"
     "self[name] returns a read-only numpy array of the tensor's shape: float32 (F32), float16 "
     "(F16) and int8 (I8) tensors are zero-copy views into the mapping (a copy when the data is "
     "not aligned for its dtype inside the file), BF16 tensors are converted to float32 copies "
     "(numpy has no bfloat16). Views keep the mapping alive after close().\n\n"
     "Also: len(), `in`, iteration over the names, keys(), get(name, dtype=None), info(name), "
     "metadata, close() and use as a context manager. Missing names raise KeyError."},
    {Py_tp_new, (void *)safetensors_new},
    {Py_tp_dealloc, (void *)safetensors_dealloc},
    {Py_tp_repr, (void *)safetensors_repr},
    {Py_tp_iter, (void *)safetensors_iter},
    {Py_tp_methods, safetensors_methods},
    {Py_tp_getset, safetensors_getset},
    {Py_mp_subscript, (void *)safetensors_getitem},
    {Py_mp_length, (void *)safetensors_len},
    {Py_sq_contains, (void *)safetensors_contains},
    {0, NULL},
};

static PyType_Spec safetensors_spec = {"snapfusion._engine.SafeTensors", sizeof(SafeTensorsObject),
                                       0, Py_TPFLAGS_DEFAULT, safetensors_slots};

int sf_py_init_safetensors(PyObject *module) {
    if (!storage_type) {
        storage_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &storage_spec, NULL);
        if (!storage_type)
            return -1;
    }
    PyObject *type = PyType_FromModuleAndSpec(module, &safetensors_spec, NULL);
    if (!type)
        return -1;
    int rc = PyModule_AddObjectRef(module, "SafeTensors", type);
    Py_DECREF(type);
    return rc;
}
