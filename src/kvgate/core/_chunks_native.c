/* A streamed answer's per-chunk work in C: kvgate.core.chunks' native half.
 *
 * A streamed request runs three loops over its chunks on every network read: the SSE split
 * of the bytes read into `data:` payloads (http_upstream.EventStream), their parse into
 * chunk objects (openai_compatible.ChunkStream) and the relay's look at each chunk for its
 * text, end and usage (stream_relay.StreamRelay). In Python those loops were about half of
 * what a streamed request costs beyond a blocking one (issue 15: a streamed request's CPU
 * <= 1.3x a blocking one's). These are the same loops; kvgate/core/chunks.py holds the
 * Python versions, which serve where no compiler built this and which the tests hold these
 * to (tests/core/test_chunks_native.py).
 *
 * Each function either does exactly what its Python version does or, for a shape it does
 * not handle (a value no JSON parser makes, an odd chunk), stops and leaves the rest to
 * Python, never a different answer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *loads; /* orjson.loads, as http_upstream.json_object parses */
static PyObject *key_error, *key_usage, *key_choices, *key_finish_reason, *key_delta,
    *key_text, *key_content, *key_tool_calls;

/* Python's bytes.strip() whitespace (Py_ISSPACE). */
static inline int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* sse_events(pending, chunk) -> (events, pending): see chunks.py_sse_events. */
static PyObject *sse_events(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "sse_events(pending: bytes, chunk: bytes)");
        return NULL;
    }
    PyObject *pending = args[0], *chunk = args[1];
    Py_ssize_t pending_n = PyBytes_GET_SIZE(pending), chunk_n = PyBytes_GET_SIZE(chunk);
    PyObject *buffer;
    if (pending_n == 0) {
        buffer = Py_NewRef(chunk);
    } else if (chunk_n == 0) {
        buffer = Py_NewRef(pending);
    } else {
        if (pending_n > PY_SSIZE_T_MAX - chunk_n) return PyErr_NoMemory();
        buffer = PyBytes_FromStringAndSize(NULL, pending_n + chunk_n);
        if (buffer == NULL) return NULL;
        memcpy(PyBytes_AS_STRING(buffer), PyBytes_AS_STRING(pending), (size_t)pending_n);
        memcpy(PyBytes_AS_STRING(buffer) + pending_n, PyBytes_AS_STRING(chunk), (size_t)chunk_n);
    }
    PyObject *events = PyList_New(0), *rest = NULL, *out = NULL;
    if (events == NULL) goto done;
    if (chunk_n == 0 || memchr(PyBytes_AS_STRING(chunk), '\n', (size_t)chunk_n) == NULL) {
        out = PyTuple_Pack(2, events, buffer); /* no line ended in this read */
        goto done;
    }
    const char *line = PyBytes_AS_STRING(buffer);
    const char *end = line + PyBytes_GET_SIZE(buffer);
    for (;;) {
        const char *newline = memchr(line, '\n', (size_t)(end - line));
        if (newline == NULL) break;
        if (newline - line >= 5 && memcmp(line, "data:", 5) == 0) {
            const char *first = line + 5, *last = newline;
            while (first < last && is_space(*first)) first++;
            while (last > first && is_space(last[-1])) last--;
            PyObject *event = PyBytes_FromStringAndSize(first, last - first);
            if (event == NULL) goto done;
            int failed = PyList_Append(events, event);
            Py_DECREF(event);
            if (failed) goto done;
        }
        line = newline + 1;
    }
    rest = PyBytes_FromStringAndSize(line, end - line);
    if (rest == NULL) goto done;
    out = PyTuple_Pack(2, events, rest);
done:
    Py_XDECREF(rest);
    Py_XDECREF(events);
    Py_DECREF(buffer);
    return out;
}

/* leading_chunks(payloads, batch) -> (stop, usage_chunks): see chunks.py. */
static PyObject *leading_chunks(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "leading_chunks(payloads: list, batch: list)");
        return NULL;
    }
    PyObject *payloads = args[0], *batch = args[1];
    Py_ssize_t index = 0, usage_chunks = 0;
    for (; index < PyList_GET_SIZE(payloads); index++) {
        PyObject *data = PyList_GET_ITEM(payloads, index);
        if (!PyBytes_CheckExact(data)) break;
        if (PyBytes_GET_SIZE(data) == 6 && memcmp(PyBytes_AS_STRING(data), "[DONE]", 6) == 0)
            break;
        Py_INCREF(data);
        PyObject *chunk = PyObject_CallOneArg(loads, data);
        Py_DECREF(data);
        if (chunk == NULL) {
            /* Not JSON (or not parsable here): Python parses it again and says why. An
             * exception beyond Exception (KeyboardInterrupt) is not ours to swallow. */
            if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
            PyErr_Clear();
            break;
        }
        if (!PyDict_CheckExact(chunk)) {
            Py_DECREF(chunk);
            break;
        }
        int has = PyDict_Contains(chunk, key_error);
        if (has != 0) { /* an error chunk (or a failed lookup): Python raises it */
            Py_DECREF(chunk);
            if (has < 0) return NULL;
            break;
        }
        has = PyDict_Contains(chunk, key_usage);
        if (has < 0 || PyList_Append(batch, chunk) < 0) {
            Py_DECREF(chunk);
            return NULL;
        }
        Py_DECREF(chunk);
        usage_chunks += has;
    }
    return Py_BuildValue("(nn)", index, usage_chunks);
}

/* A JSON value's truth (1 or 0); -1 for a type no JSON parser makes, whose truth could run
 * Python code (the caller then leaves the batch to Python). */
static inline int json_truth(PyObject *value) {
    if (value == Py_None || value == Py_False) return 0;
    if (value == Py_True) return 1;
    if (PyUnicode_CheckExact(value)) return PyUnicode_GET_LENGTH(value) != 0;
    if (PyList_CheckExact(value)) return PyList_GET_SIZE(value) != 0;
    if (PyDict_CheckExact(value)) return PyDict_GET_SIZE(value) != 0;
    if (PyLong_CheckExact(value) || PyFloat_CheckExact(value)) return PyObject_IsTrue(value);
    return -1;
}

/* A dict's value for a key, borrowed, or NULL when absent (the key's hash is cached: the
 * keys are interned strings). */
static inline PyObject *get(PyObject *dict, PyObject *key) {
    return PyDict_GetItemWithError(dict, key);
}

/* observe(batch) -> (texts, finished, tool_calls, usages) or None: see chunks.py_observe. */
static PyObject *observe(PyObject *self, PyObject *batch) {
    if (!PyList_Check(batch)) Py_RETURN_NONE;
    PyObject *texts = PyList_New(0), *usages = PyList_New(0);
    if (texts == NULL || usages == NULL) goto fail;
    int finished = 0, tool_calls = 0, truth;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(batch); i++) {
        PyObject *chunk = PyList_GET_ITEM(batch, i);
        if (!PyDict_CheckExact(chunk)) goto python;
        PyObject *choices = get(chunk, key_choices);
        if (choices == NULL && PyErr_Occurred()) goto fail;
        if (choices != NULL && (truth = json_truth(choices)) != 0) {
            if (truth < 0 || !PyList_CheckExact(choices)) goto python;
            PyObject *choice = PyList_GET_ITEM(choices, 0);
            if (!PyDict_CheckExact(choice)) goto python;
            PyObject *finish = get(choice, key_finish_reason);
            if (finish == NULL && PyErr_Occurred()) goto fail;
            if (finish != NULL) {
                if ((truth = json_truth(finish)) < 0) goto python;
                finished |= truth;
            }
            PyObject *text, *delta = get(choice, key_delta);
            if (delta == NULL && PyErr_Occurred()) goto fail;
            if (delta == NULL || delta == Py_None) {
                text = get(choice, key_text);
            } else {
                if (!PyDict_CheckExact(delta)) goto python;
                text = get(delta, key_content);
                if (text == NULL && PyErr_Occurred()) goto fail;
                PyObject *calls = get(delta, key_tool_calls);
                if (calls == NULL && PyErr_Occurred()) goto fail;
                if (calls != NULL) {
                    if ((truth = json_truth(calls)) < 0) goto python;
                    tool_calls |= truth;
                }
            }
            if (text == NULL && PyErr_Occurred()) goto fail;
            if (text != NULL) {
                if ((truth = json_truth(text)) < 0) goto python;
                if (truth && PyList_Append(texts, text) < 0) goto fail;
            }
        }
        PyObject *usage = get(chunk, key_usage);
        if (usage == NULL && PyErr_Occurred()) goto fail;
        if (usage != NULL) {
            if ((truth = json_truth(usage)) < 0) goto python;
            if (truth && PyList_Append(usages, usage) < 0) goto fail;
        }
    }
    PyObject *out = PyTuple_Pack(4, texts, finished ? Py_True : Py_False,
                                 tool_calls ? Py_True : Py_False, usages);
    Py_DECREF(texts);
    Py_DECREF(usages);
    return out;
python:
    Py_DECREF(texts);
    Py_DECREF(usages);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(texts);
    Py_XDECREF(usages);
    return NULL;
}

static PyMethodDef methods[] = {
    {"sse_events", (PyCFunction)(void (*)(void))sse_events, METH_FASTCALL,
     "The SSE data payloads of the lines a read ends, and the unterminated rest."},
    {"leading_chunks", (PyCFunction)(void (*)(void))leading_chunks, METH_FASTCALL,
     "Parse the payloads up to the first [DONE], error or unparsable one into batch."},
    {"observe", observe, METH_O,
     "A batch's texts, whether a choice finished or called tools, and its usages."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chunks_native",
    "A streamed answer's per-chunk work (kvgate.core.chunks).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__chunks_native(void) {
    PyObject *orjson = PyImport_ImportModule("orjson");
    if (orjson == NULL) return NULL;
    loads = PyObject_GetAttrString(orjson, "loads");
    Py_DECREF(orjson);
    if (loads == NULL) return NULL;
    key_error = PyUnicode_InternFromString("error");
    key_usage = PyUnicode_InternFromString("usage");
    key_choices = PyUnicode_InternFromString("choices");
    key_finish_reason = PyUnicode_InternFromString("finish_reason");
    key_delta = PyUnicode_InternFromString("delta");
    key_text = PyUnicode_InternFromString("text");
    key_content = PyUnicode_InternFromString("content");
    key_tool_calls = PyUnicode_InternFromString("tool_calls");
    if (!key_error || !key_usage || !key_choices || !key_finish_reason || !key_delta ||
        !key_text || !key_content || !key_tool_calls)
        return NULL;
    return PyModule_Create(&module);
}
