/* The fingerprint's block chain in C: kvgate.routing.fingerprint's inner loop.
 *
 * A message's bytes are cut into fixed-size blocks, each hashed with xxh3-64 seeded by the
 * hash before it. The Python loop pays a slice, a call and an int per block (about 0.2 us);
 * this one calls the very xxh3 function the ``xxhash`` package wraps (found in its loaded
 * extension, so the hashes are the same to the bit: the module checks one at import and
 * refuses to load otherwise, and the tests compare whole chains), then appends the ints.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>

typedef uint64_t (*SeededHash)(const void *data, size_t length, uint64_t seed);

static SeededHash xxh3_64_seeded = NULL;

/* chain(data, start, end, size, parent, out, /) -> the last link's hash: appends to `out`
 * the hash of each block data[k:k+size] for k in range(start, end, size) (end - start a
 * multiple of size), each seeded by the one before (the first by `parent`). */
static PyObject *chain(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "chain(data, start, end, size, parent, out: list)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), end = PyLong_AsSsize_t(args[2]);
    Py_ssize_t size = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    uint64_t parent = PyLong_AsUnsignedLongLong(args[4]);
    if (parent == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = NULL;
    if (size <= 0 || start < 0 || end > view.len || start > end || (end - start) % size) {
        PyErr_SetString(PyExc_ValueError, "blocks out of the data's range");
        goto done;
    }
    const char *bytes = (const char *)view.buf;
    for (Py_ssize_t at = start; at + size <= end; at += size) {
        parent = xxh3_64_seeded(bytes + at, (size_t)size, parent);
        PyObject *link = PyLong_FromUnsignedLongLong(parent);
        if (link == NULL) goto done;
        int appended = PyList_Append(args[5], link);
        Py_DECREF(link);
        if (appended < 0) goto done;
    }
    result = PyLong_FromUnsignedLongLong(parent);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"chain", (PyCFunction)(void (*)(void))chain, METH_FASTCALL,
     "chain(data, start, end, size, parent, out, /): append the blocks' chained xxh3-64 "
     "hashes to out; the last one"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chain_native",
    "The fingerprint's block chain (kvgate.routing.fingerprint).", -1, methods,
    NULL, NULL, NULL, NULL,
};

/* xxh3-64 with a seed, from the xxhash package's extension (already a dependency and already
 * loaded by the fingerprint module): no second copy of the algorithm to keep equal. */
static int find_xxh3(void) {
    PyObject *wrapper = PyImport_ImportModule("xxhash._xxhash");
    if (wrapper == NULL) return -1;
    PyObject *path = PyObject_GetAttrString(wrapper, "__file__");
    Py_DECREF(wrapper);
    if (path == NULL) return -1;
    const char *file = PyUnicode_AsUTF8(path);
    void *library = file == NULL ? NULL : dlopen(file, RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);
    Py_DECREF(path);
    if (file == NULL) return -1;
    if (library != NULL) {
        xxh3_64_seeded = (SeededHash)dlsym(library, "XXH3_64bits_withSeed");
        /* The handle stays open: the function is used for the life of the process. */
    }
    if (xxh3_64_seeded == NULL) {
        PyErr_SetString(PyExc_ImportError,
                        "the xxhash package's extension does not export XXH3_64bits_withSeed");
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__chain_native(void) {
    if (find_xxh3() < 0) return NULL;
    return PyModule_Create(&module);
}
