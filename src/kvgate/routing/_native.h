/* What the routing's C extensions share (header-only: each is its own module). */
#ifndef KVGATE_ROUTING_NATIVE_H
#define KVGATE_ROUTING_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* A new list of `n` ints from `values`; NULL with an exception set on failure. */
static inline PyObject *int_list(const Py_ssize_t *values, Py_ssize_t n) {
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = PyLong_FromSsize_t(values[i]);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, value);
    }
    return out;
}

#endif
