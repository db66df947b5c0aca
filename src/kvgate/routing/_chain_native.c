/* The fingerprint in C: kvgate.routing.fingerprint's block loop (`chain`) and, for the common
 * prompt shapes, its whole builder (`build`).
 *
 * A message's bytes are cut into fixed-size blocks, each hashed with xxh3-64 seeded by the
 * hash before it. The Python loop pays a slice, a call and an int per block (about 0.2 us);
 * this one calls the very xxh3 function the ``xxhash`` package wraps (found in its loaded
 * extension, so the hashes are the same to the bit: the module checks one at import and
 * refuses to load otherwise, and the tests compare whole chains), then appends the ints.
 *
 * `build` walks a chat body's messages as fingerprint.py's _ChainBuilder does, with the same
 * memo (called through its get/put), and hashes each string's UTF-8 bytes where they lie
 * (an ASCII string's own buffer: no encoded copy). Shapes it does not know (prompt fields
 * such as tools, tool calls, non-text parts, token-id prompts) return None: the Python
 * builder, which the tests hold it equal to, takes those.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

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

/* --- the whole builder ------------------------------------------------------------------- */

/* Set once by configure(): what fingerprint.py's builder reads from module constants. */
static PyObject *prompt_fields = NULL;  /* tuple of str: body fields the Python builder takes */
static PyObject *role_markers = NULL;   /* dict: role -> marker bytes */
static PyObject *unknown_marker = NULL; /* bytes: the marker of any other role */
static Py_ssize_t chars_per_token = 4;
static PyObject *str_messages, *str_prompt, *str_role, *str_content, *str_type, *str_text,
    *str_tool_calls, *str_get, *str_put, *str_min_bytes;

/* A fingerprint being built: fingerprint.py's _ChainBuilder, field for field. */
typedef struct {
    Py_ssize_t size;         /* block_chars */
    long long block_tokens;  /* a whole block's weight */
    uint64_t parent;
    char *tail;              /* the unfinished block: tail_len < size bytes */
    Py_ssize_t tail_len;
    Py_ssize_t tail_capacity; /* grown as needed: block_chars has no upper bound */
    PyObject **links;        /* owned ints, prompt order */
    long long *tokens;       /* each link's weight */
    Py_ssize_t num_links, capacity;
    long long total_tokens;
    PyObject *memo;          /* borrowed; NULL: none */
    Py_ssize_t memo_min_bytes;
} Builder;

static void builder_free(Builder *b) {
    for (Py_ssize_t i = 0; i < b->num_links; i++) Py_DECREF(b->links[i]);
    PyMem_Free(b->links);
    PyMem_Free(b->tokens);
    PyMem_Free(b->tail);
}

static int reserve_links(Builder *b, Py_ssize_t more) {
    if (b->num_links + more <= b->capacity) return 0;
    Py_ssize_t capacity = b->capacity * 2 > b->num_links + more ? b->capacity * 2
                                                                : b->num_links + more + 64;
    PyObject **links = PyMem_Realloc(b->links, (size_t)capacity * sizeof(PyObject *));
    if (links == NULL) goto fail;
    b->links = links;
    long long *tokens = PyMem_Realloc(b->tokens, (size_t)capacity * sizeof(long long));
    if (tokens == NULL) goto fail;
    b->tokens = tokens;
    b->capacity = capacity;
    return 0;
fail:
    PyErr_NoMemory();
    return -1;
}

/* Append a link (a new reference is taken to `link`). */
static int push_link(Builder *b, PyObject *link, long long num_tokens) {
    if (reserve_links(b, 1) < 0) return -1;
    Py_INCREF(link);
    b->links[b->num_links] = link;
    b->tokens[b->num_links++] = num_tokens;
    b->total_tokens += num_tokens;
    return 0;
}

static int push_hash(Builder *b, uint64_t hash, long long num_tokens) {
    PyObject *link = PyLong_FromUnsignedLongLong(hash);
    if (link == NULL) return -1;
    int pushed = push_link(b, link, num_tokens);
    Py_DECREF(link);
    if (pushed == 0) b->parent = hash;
    return pushed;
}

/* Room for `needed` bytes of tail (at most one block): grown on demand, so a huge
 * block_chars costs what the prompt fills, not a block's worth up front. */
static int ensure_tail(Builder *b, Py_ssize_t needed) {
    if (needed <= b->tail_capacity) return 0;
    Py_ssize_t capacity = b->tail_capacity * 2 > needed ? b->tail_capacity * 2 : needed;
    if (capacity > b->size) capacity = b->size;
    char *tail = PyMem_Realloc(b->tail, (size_t)capacity);
    if (tail == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->tail = tail;
    b->tail_capacity = capacity;
    return 0;
}

/* _ChainBuilder._hash_blocks: whole blocks hashed where they lie, the rest kept as the tail. */
static int hash_blocks(Builder *b, const char *data, Py_ssize_t length) {
    Py_ssize_t size = b->size, start = 0;
    if (b->tail_len) {
        start = size - b->tail_len;
        if (length < start) {
            if (ensure_tail(b, b->tail_len + length) < 0) return -1;
            memcpy(b->tail + b->tail_len, data, (size_t)length);
            b->tail_len += length;
            return 0;
        }
        if (ensure_tail(b, size) < 0) return -1;
        memcpy(b->tail + b->tail_len, data, (size_t)start);  /* the tail is one whole block */
        if (push_hash(b, xxh3_64_seeded(b->tail, (size_t)size, b->parent), b->block_tokens) < 0)
            return -1;
    } else if (length < size) {
        if (ensure_tail(b, length) < 0) return -1;
        memcpy(b->tail, data, (size_t)length);
        b->tail_len = length;
        return 0;
    }
    Py_ssize_t full_end = length - (length - start) % size;
    if (reserve_links(b, (full_end - start) / size) < 0) return -1;
    for (Py_ssize_t at = start; at < full_end; at += size) {
        if (push_hash(b, xxh3_64_seeded(data + at, (size_t)size, b->parent),
                      b->block_tokens) < 0) return -1;
    }
    if (ensure_tail(b, length - full_end) < 0) return -1;
    b->tail_len = length - full_end;
    memcpy(b->tail, data + full_end, (size_t)b->tail_len);
    return 0;
}

/* _ChainBuilder.add_text: long texts through the memo, keyed (parent, tail, xxh3 of the text
 * seeded by parent), its value (the text's links, the tail after them). */
static int add_text(Builder *b, const char *data, Py_ssize_t length) {
    if (b->memo == NULL || length < b->memo_min_bytes) return hash_blocks(b, data, length);
    int status = -1;
    PyObject *known = NULL, *links = NULL, *tail = NULL, *put = NULL;
    PyObject *key = Py_BuildValue("(Ky#K)", (unsigned long long)b->parent, b->tail,
                                  b->tail_len, (unsigned long long)xxh3_64_seeded(
                                      data, (size_t)length, b->parent));
    if (key == NULL) return -1;
    known = PyObject_CallMethodOneArg(b->memo, str_get, key);
    if (known == NULL) goto done;
    if (known == Py_None) {
        Py_ssize_t before = b->num_links;
        if (hash_blocks(b, data, length) < 0) goto done;
        links = PyTuple_New(b->num_links - before);
        if (links == NULL) goto done;
        for (Py_ssize_t i = before; i < b->num_links; i++) {
            Py_INCREF(b->links[i]);
            PyTuple_SET_ITEM(links, i - before, b->links[i]);
        }
        tail = PyBytes_FromStringAndSize(b->tail, b->tail_len);
        if (tail == NULL) goto done;
        put = PyObject_CallMethodObjArgs(b->memo, str_put, key, links, tail, NULL);
        status = put == NULL ? -1 : 0;
        goto done;
    }
    PyObject *known_links, *known_tail;
    if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 2
            || !PyTuple_Check(known_links = PyTuple_GET_ITEM(known, 0))
            || !PyBytes_Check(known_tail = PyTuple_GET_ITEM(known, 1))
            || PyBytes_GET_SIZE(known_tail) >= b->size) {
        PyErr_SetString(PyExc_TypeError, "the memo holds (links: tuple, tail: bytes) entries");
        goto done;
    }
    Py_ssize_t num = PyTuple_GET_SIZE(known_links);
    if (num) {
        uint64_t parent = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(known_links, num - 1));
        if (parent == (uint64_t)-1 && PyErr_Occurred()) goto done;
        if (reserve_links(b, num) < 0) goto done;
        for (Py_ssize_t i = 0; i < num; i++) {
            if (push_link(b, PyTuple_GET_ITEM(known_links, i), b->block_tokens) < 0) goto done;
        }
        b->parent = parent;
    }
    if (ensure_tail(b, PyBytes_GET_SIZE(known_tail)) < 0) goto done;
    b->tail_len = PyBytes_GET_SIZE(known_tail);
    memcpy(b->tail, PyBytes_AS_STRING(known_tail), (size_t)b->tail_len);
    status = 0;
done:
    Py_DECREF(key);
    Py_XDECREF(known);
    Py_XDECREF(links);
    Py_XDECREF(tail);
    Py_XDECREF(put);
    return status;
}

static int add_bytes(Builder *b, PyObject *data) {
    return add_text(b, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
}

/* A str's UTF-8 bytes, where they lie: an ASCII string's own buffer, otherwise the UTF-8 copy
 * CPython keeps with the string (what `.encode()` would make, once). */
static int add_str(Builder *b, PyObject *text) {
    Py_ssize_t length;
    const char *data = PyUnicode_AsUTF8AndSize(text, &length);
    return data == NULL ? -1 : add_text(b, data, length);
}

/* _ChainBuilder.add_image: the text before the image closes as a short link, then the
 * image's own link, keyed by its digest. */
static int add_image(Builder *b, PyObject *digest, long long num_tokens) {
    if (b->tail_len) {
        long long short_tokens = b->tail_len / chars_per_token;
        if (push_hash(b, xxh3_64_seeded(b->tail, (size_t)b->tail_len, b->parent),
                      short_tokens > 1 ? short_tokens : 1) < 0) return -1;
        b->tail_len = 0;
    }
    return push_hash(b, xxh3_64_seeded(PyBytes_AS_STRING(digest),
                                       (size_t)PyBytes_GET_SIZE(digest), b->parent),
                     num_tokens);
}

/* 1: done; 0: a shape for the Python builder; -1: an exception. */
enum { PYTHON = 0, DONE = 1, FAILED = -1 };

/* NOTE: the memo's get/put are Python calls, which could change the body under the walk; every
 * object the walk reads across one is held by a strong reference (a list item or a dict value
 * is only borrowed), so such a change can alter the fingerprint, never free what is read. */

static int add_part(Builder *b, PyObject *part, PyObject *digests, PyObject *image_tokens,
                    long long override_tokens, Py_ssize_t *image_index) {
    if (!PyDict_CheckExact(part)) return PYTHON;
    PyObject *type = PyDict_GetItemWithError(part, str_type);
    if (type == NULL && PyErr_Occurred()) return FAILED;
    if (type != NULL && PyUnicode_Check(type)
            && PyUnicode_CompareWithASCIIString(type, "image_url") == 0) {
        if (*image_index >= PyList_GET_SIZE(digests)
                || *image_index >= PyList_GET_SIZE(image_tokens)) return PYTHON;
        PyObject *digest = PyList_GET_ITEM(digests, *image_index);
        long long num_tokens = override_tokens;
        if (!num_tokens) {
            num_tokens = PyLong_AsLongLong(PyList_GET_ITEM(image_tokens, *image_index));
            if (num_tokens == -1 && PyErr_Occurred()) return FAILED;
        }
        if (!PyBytes_Check(digest)) return PYTHON;
        Py_INCREF(digest);
        int added = add_image(b, digest, num_tokens);
        Py_DECREF(digest);
        if (added < 0) return FAILED;
        *image_index += 1;
        return DONE;
    }
    PyObject *text = PyDict_GetItemWithError(part, str_text);
    if (text == NULL && PyErr_Occurred()) return FAILED;
    if (text == NULL || !PyUnicode_Check(text)) return PYTHON;  /* the part as JSON */
    Py_INCREF(text);
    int added = add_str(b, text);
    Py_DECREF(text);
    return added < 0 ? FAILED : DONE;
}

static int add_parts(Builder *b, PyObject *parts, PyObject *digests, PyObject *image_tokens,
                     long long override_tokens, Py_ssize_t *image_index) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts); i++) {
        PyObject *part = Py_NewRef(PyList_GET_ITEM(parts, i));
        int added = add_part(b, part, digests, image_tokens, override_tokens, image_index);
        Py_DECREF(part);
        if (added != DONE) return added;
    }
    return DONE;
}

static int add_message(Builder *b, PyObject *message, PyObject *digests,
                       PyObject *image_tokens, long long override_tokens,
                       Py_ssize_t *image_index) {
    if (!PyDict_CheckExact(message)) return PYTHON;
    PyObject *role = PyDict_GetItemWithError(message, str_role);
    if (role == NULL && PyErr_Occurred()) return FAILED;
    PyObject *marker = unknown_marker;
    if (role != NULL && role != Py_None) {
        if (!PyUnicode_CheckExact(role)) return PYTHON;
        PyObject *known = PyDict_GetItemWithError(role_markers, role);
        if (known == NULL && PyErr_Occurred()) return FAILED;
        if (known != NULL) marker = known;
    }
    Py_INCREF(marker);  /* configure() may replace the markers meanwhile */
    int marked = add_bytes(b, marker);
    Py_DECREF(marker);
    if (marked < 0) return FAILED;
    PyObject *content = PyDict_GetItemWithError(message, str_content);
    if (content == NULL && PyErr_Occurred()) return FAILED;
    if (content != NULL && (PyUnicode_Check(content) || PyList_Check(content))) {
        Py_INCREF(content);
        int added = PyUnicode_Check(content)
            ? (add_str(b, content) < 0 ? FAILED : DONE)
            : add_parts(b, content, digests, image_tokens, override_tokens, image_index);
        Py_DECREF(content);
        if (added != DONE) return added;
    }
    PyObject *tool_calls = PyDict_GetItemWithError(message, str_tool_calls);
    if (tool_calls == NULL && PyErr_Occurred()) return FAILED;
    if (tool_calls != NULL) {
        int truth = PyObject_IsTrue(tool_calls);
        if (truth < 0) return FAILED;
        if (truth) return PYTHON;  /* dumped as sorted JSON there */
    }
    return DONE;
}

static int add_messages(Builder *b, PyObject *messages, PyObject *digests,
                        PyObject *image_tokens, long long override_tokens) {
    Py_ssize_t image_index = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(messages); i++) {
        PyObject *message = Py_NewRef(PyList_GET_ITEM(messages, i));
        int added = add_message(b, message, digests, image_tokens, override_tokens,
                                &image_index);
        Py_DECREF(message);
        if (added != DONE) return added;
    }
    return DONE;
}

static int add_body(Builder *b, PyObject *body, PyObject *digests, PyObject *image_tokens,
                    long long override_tokens) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prompt_fields); i++) {
        PyObject *value = PyDict_GetItemWithError(body, PyTuple_GET_ITEM(prompt_fields, i));
        if (value == NULL && PyErr_Occurred()) return FAILED;
        if (value != NULL && value != Py_None) return PYTHON;
    }
    PyObject *messages = PyDict_GetItemWithError(body, str_messages);
    if (messages == NULL && PyErr_Occurred()) return FAILED;
    int added;
    if (messages == NULL || messages == Py_None) {
        PyObject *prompt = PyDict_GetItemWithError(body, str_prompt);
        if (prompt == NULL && PyErr_Occurred()) return FAILED;
        if (prompt == NULL || !PyUnicode_Check(prompt)) return PYTHON;
        Py_INCREF(prompt);
        added = add_str(b, prompt) < 0 ? FAILED : DONE;
        Py_DECREF(prompt);
        return added;
    }
    if (!PyList_Check(messages)) return PYTHON;
    Py_INCREF(messages);
    added = add_messages(b, messages, digests, image_tokens, override_tokens);
    Py_DECREF(messages);
    return added;
}

/* The links and their weights as two tuples (the builder's references move to the first). */
static PyObject *builder_result(Builder *b) {
    PyObject *hashes = PyTuple_New(b->num_links), *tokens = PyTuple_New(b->num_links);
    if (hashes == NULL || tokens == NULL) goto fail;
    PyObject *block_weight = PyLong_FromLongLong(b->block_tokens);
    if (block_weight == NULL) goto fail;
    for (Py_ssize_t i = 0; i < b->num_links; i++) {
        PyObject *weight;
        if (b->tokens[i] == b->block_tokens) {
            weight = Py_NewRef(block_weight);
        } else if ((weight = PyLong_FromLongLong(b->tokens[i])) == NULL) {
            Py_DECREF(block_weight);
            goto fail;
        }
        PyTuple_SET_ITEM(tokens, i, weight);
    }
    Py_DECREF(block_weight);
    for (Py_ssize_t i = 0; i < b->num_links; i++) PyTuple_SET_ITEM(hashes, i, b->links[i]);
    b->num_links = 0;
    PyObject *result = Py_BuildValue("(NNL)", hashes, tokens, b->total_tokens);
    return result;
fail:
    Py_XDECREF(hashes);
    Py_XDECREF(tokens);
    return NULL;
}

/* build(body, image_digests, image_tokens, override_tokens, block_chars, seed, memo, /)
 * -> (hashes, tokens, total_tokens), or None for a shape the Python builder takes. */
static PyObject *build(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (prompt_fields == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (nargs != 7 || !PyDict_Check(args[0]) || !PyList_Check(args[1])
            || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "build(body: dict, image_digests: list, "
                        "image_tokens: list, override_tokens, block_chars, seed, memo)");
        return NULL;
    }
    long long override_tokens = PyLong_AsLongLong(args[3]);
    Py_ssize_t size = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) return NULL;
    uint64_t seed = PyLong_AsUnsignedLongLong(args[5]);
    if (seed == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "block_chars must be positive");
        return NULL;
    }
    Builder b = {.size = size, .block_tokens = size / chars_per_token, .parent = seed};
    if (b.block_tokens < 1) b.block_tokens = 1;
    if (args[6] != Py_None) {
        b.memo = args[6];
        PyObject *min_bytes = PyObject_GetAttr(b.memo, str_min_bytes);
        if (min_bytes == NULL) return NULL;
        b.memo_min_bytes = PyLong_AsSsize_t(min_bytes);
        Py_DECREF(min_bytes);
        if (b.memo_min_bytes == -1 && PyErr_Occurred()) return NULL;
    }
    PyObject *result = NULL;
    if (ensure_tail(&b, size < 1024 ? size : 1024) < 0) goto done;
    int added = add_body(&b, args[0], args[1], args[2], override_tokens);
    if (added == DONE) {
        result = builder_result(&b);
    } else if (added == PYTHON) {
        result = Py_NewRef(Py_None);
    }
done:
    builder_free(&b);
    return result;
}

/* configure(prompt_fields, role_markers, unknown_marker, chars_per_token, /): the builder's
 * constants, from fingerprint.py (so they are written once). */
static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_Check(args[0]) || !PyDict_Check(args[1])
            || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "configure(prompt_fields: tuple, role_markers: dict, "
                        "unknown_marker: bytes, chars_per_token: int)");
        return NULL;
    }
    Py_ssize_t per_token = PyLong_AsSsize_t(args[3]);
    if (per_token == -1 && PyErr_Occurred()) return NULL;
    if (per_token <= 0) {
        PyErr_SetString(PyExc_ValueError, "chars_per_token must be positive");
        return NULL;
    }
    PyObject *markers = args[1];
    Py_ssize_t at = 0;
    PyObject *role, *marker;
    while (PyDict_Next(markers, &at, &role, &marker)) {
        if (!PyBytes_Check(marker)) {
            PyErr_SetString(PyExc_TypeError, "role markers are bytes");
            return NULL;
        }
    }
    Py_XSETREF(prompt_fields, Py_NewRef(args[0]));
    Py_XSETREF(role_markers, PyDict_Copy(markers));
    Py_XSETREF(unknown_marker, Py_NewRef(args[2]));
    chars_per_token = per_token;
    if (role_markers == NULL) return NULL;
    Py_RETURN_NONE;
}

static int intern_names(void) {
    struct { PyObject **name; const char *text; } names[] = {
        {&str_messages, "messages"}, {&str_prompt, "prompt"}, {&str_role, "role"},
        {&str_content, "content"}, {&str_type, "type"}, {&str_text, "text"},
        {&str_tool_calls, "tool_calls"}, {&str_get, "get"}, {&str_put, "put"},
        {&str_min_bytes, "min_bytes"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if ((*names[i].name = PyUnicode_InternFromString(names[i].text)) == NULL) return -1;
    }
    return 0;
}

static PyMethodDef methods[] = {
    {"chain", (PyCFunction)(void (*)(void))chain, METH_FASTCALL,
     "chain(data, start, end, size, parent, out, /): append the blocks' chained xxh3-64 "
     "hashes to out; the last one"},
    {"build", (PyCFunction)(void (*)(void))build, METH_FASTCALL,
     "build(body, image_digests, image_tokens, override_tokens, block_chars, seed, memo, /): "
     "(hashes, tokens, total_tokens), or None for a shape the Python builder takes"},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(prompt_fields, role_markers, unknown_marker, chars_per_token, /)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chain_native",
    "The fingerprint's block chain (kvgate.routing.fingerprint).", -1, methods,
    NULL, NULL, NULL, NULL,
};

/* xxh3-64 with a seed, from the xxhash package's extension (already a dependency and already
 * loaded by the fingerprint module): no second copy of the algorithm to keep equal.
 * NOTE: its `_dispatch` entry first, where the package exports one: the same function, whose
 * inputs over 240 bytes (every block, a memo's whole message) run the widest vector code
 * the CPU has (AVX2 here) instead of the build's baseline SSE2 (about 0.7 instructions a
 * byte). The hashes are the same whatever the width; fingerprint.py checks long and short
 * inputs against the package's Python function at import all the same. */
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
        xxh3_64_seeded = (SeededHash)dlsym(library, "XXH3_64bits_withSeed_dispatch");
        if (xxh3_64_seeded == NULL)
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
    if (find_xxh3() < 0 || intern_names() < 0) return NULL;
    return PyModule_Create(&module);
}
