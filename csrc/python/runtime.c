/* runtime.c — snapfusion._engine: versions, threads, CPU features. */
#include "sf_py.h"

#ifndef SF_XNNPACK_VERSION
#define SF_XNNPACK_VERSION "unknown"
#endif

static PyObject *py_version(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:s,s:s,s:s,s:i}", "engine", sf_version(), "xnnpack",
                         SF_XNNPACK_VERSION, "kernels", sf_kernel_isa(), "numpy_abi",
                         (int)NPY_ABI_VERSION);
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    if (PyBool_Check(arg) || !PyLong_Check(arg))
        return PyErr_Format(PyExc_TypeError, "thread count must be an int, got %.100s",
                            Py_TYPE(arg)->tp_name);
    int overflow = 0;
    long n = PyLong_AsLongAndOverflow(arg, &overflow);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || n < 1 || n > 1024)
        return PyErr_Format(PyExc_ValueError, "thread count must be in [1, 1024], got %S", arg);
    sf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sf_set_num_threads((int)n);
    Py_END_ALLOW_THREADS
    if (st != SF_OK)
        return sf_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    sf_status st = sf_init();
    if (st != SF_OK)
        return sf_py_raise(st);
    return PyLong_FromLong(sf_get_num_threads());
}

static PyObject *py_physical_cores(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(sf_physical_cores());
}

static PyObject *py_cpu_features(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    sf_cpu_features f;
    sf_get_cpu_features(&f);
    return Py_BuildValue(
        "{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O}", "avx2", f.avx2 ? Py_True : Py_False,
        "fma", f.fma ? Py_True : Py_False, "avx512f", f.avx512f ? Py_True : Py_False, "avx512bw",
        f.avx512bw ? Py_True : Py_False, "avx512vl", f.avx512vl ? Py_True : Py_False,
        "avx512vnni", f.avx512vnni ? Py_True : Py_False, "avx512bf16",
        f.avx512bf16 ? Py_True : Py_False, "avx512fp16", f.avx512fp16 ? Py_True : Py_False,
        "amx_int8", f.amx_int8 ? Py_True : Py_False, "neon", f.neon ? Py_True : Py_False,
        "neon_dot", f.neon_dot ? Py_True : Py_False, "neon_fp16",
        f.neon_fp16 ? Py_True : Py_False);
}

static PyObject *py_gemm_backend(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(sf_gemm_backend());
}

static PyObject *py_mac_counter(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromUnsignedLongLong(sf_mac_counter());
}

static PyObject *py_reset_mac_counter(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    sf_mac_counter_reset();
    Py_RETURN_NONE;
}

static PyMethodDef runtime_methods[] = {
    {"mac_counter", py_mac_counter, METH_NOARGS,
     "mac_counter() -> int\n\nMultiply-accumulates done by convolutions, linear layers and "
     "attention since the last reset."},
    {"reset_mac_counter", py_reset_mac_counter, METH_NOARGS,
     "reset_mac_counter() -> None\n\nReset the MAC counter."},
    {"version", py_version, METH_NOARGS,
     "version() -> dict\n\nVersions of the engine, XNNPACK and the kernel ISA in use."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n: int) -> None\n\nSet the engine's thread count (1..1024)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "get_num_threads() -> int\n\nThe engine's thread count (default: physical cores)."},
    {"physical_cores", py_physical_cores, METH_NOARGS,
     "physical_cores() -> int\n\nNumber of physical cores of this machine."},
    {"cpu_features", py_cpu_features, METH_NOARGS,
     "cpu_features() -> dict\n\nCPU features detected at run time."},
    {"gemm_backend", py_gemm_backend, METH_NOARGS,
     "gemm_backend() -> str\n\nThe back end of dense convolutions and linear layers created now: "
     "'own avx512' (the engine's own AVX-512 GEMM) or 'xnnpack' (other CPUs, or "
     "SNAPFUSION_GEMM=xnnpack)."},
    {NULL, NULL, 0, NULL},
};

int sf_py_init_runtime(PyObject *module) {
    return PyModule_AddFunctions(module, runtime_methods);
}
