/* What the routing's C extensions share (header-only: each is its own module). */
#ifndef KVGATE_ROUTING_NATIVE_H
#define KVGATE_ROUTING_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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

/* A non-negative int below 2**64 read straight from its digits: 1 with `*out` set, or 0 for
 * anything else (another type, a negative or larger int, another CPython), which the caller
 * converts the general way. CPython 3.11 converts an int through _PyLong_AsByteArray or a
 * digit loop behind two checks, about 40 instructions; a prompt's fingerprint is hundreds of
 * them, read several times per request (issue 15). */
static inline int small_u64(PyObject *item, uint64_t *out) {
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30
    /* 3.11's layout: |ob_size| digits of 30 bits, least significant first, its sign the
     * int's. Three digits hold 90 bits: below 2**64 the top one is under 2**4. */
    if (!PyLong_CheckExact(item)) return 0;
    Py_ssize_t size = Py_SIZE(item);
    const digit *d = ((PyLongObject *)item)->ob_digit;
    switch (size) {
    case 0: *out = 0; return 1;
    case 1: *out = d[0]; return 1;
    case 2: *out = (uint64_t)d[0] | (uint64_t)d[1] << 30; return 1;
    case 3:
        if (d[2] >> 4) return 0;
        *out = (uint64_t)d[0] | (uint64_t)d[1] << 30 | (uint64_t)d[2] << 60;
        return 1;
    default: return 0;
    }
#else
    (void)item;
    (void)out;
    return 0;
#endif
}

#endif
