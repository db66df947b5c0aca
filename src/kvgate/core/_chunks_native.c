/* A streamed answer's per-chunk work in C: kvgate.core.chunks' native half.
 *
 * A streamed request runs three loops over its chunks on every network read: the SSE split
 * of the bytes read into `data:` payloads (http_upstream.EventStream), their parse into
 * chunk objects (openai_compatible.ChunkStream) and the relay's look at each chunk for its
 * text, end and usage (stream_relay.StreamRelay). Here the split is one pass, and the parse
 * and the look are one pass over the payloads' bytes that builds no chunk objects (scan; the
 * API forwards the bytes, and parses them only where it must change a chunk); observe is
 * the look for chunk objects other providers make. In Python those loops were about half of
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

/* What a batch says so far (chunks.Observed). */
typedef struct {
    PyObject *texts, *usages; /* owned lists */
    int finished, tool_calls;
} Facts;

static int facts_open(Facts *facts) {
    facts->finished = facts->tool_calls = 0;
    facts->texts = PyList_New(0);
    facts->usages = PyList_New(0);
    return facts->texts != NULL && facts->usages != NULL ? 0 : -1;
}

static void facts_close(Facts *facts) {
    Py_CLEAR(facts->texts);
    Py_CLEAR(facts->usages);
}

static PyObject *facts_tuple(Facts *facts) {
    return PyTuple_Pack(4, facts->texts, facts->finished ? Py_True : Py_False,
                        facts->tool_calls ? Py_True : Py_False, facts->usages);
}

/* One chunk object into `facts` (chunks.py_observe's loop body): 0 done, 1 a shape left to
 * Python, -1 an error set. */
static int observe_one(PyObject *chunk, Facts *facts) {
    int truth;
    if (!PyDict_CheckExact(chunk)) return 1;
    PyObject *choices = PyDict_GetItemWithError(chunk, key_choices);
    if (choices == NULL && PyErr_Occurred()) return -1;
    if (choices != NULL && (truth = json_truth(choices)) != 0) {
        if (truth < 0 || !PyList_CheckExact(choices)) return 1;
        PyObject *choice = PyList_GET_ITEM(choices, 0);
        if (!PyDict_CheckExact(choice)) return 1;
        PyObject *finish = PyDict_GetItemWithError(choice, key_finish_reason);
        if (finish == NULL && PyErr_Occurred()) return -1;
        if (finish != NULL) {
            if ((truth = json_truth(finish)) < 0) return 1;
            facts->finished |= truth;
        }
        PyObject *text, *delta = PyDict_GetItemWithError(choice, key_delta);
        if (delta == NULL && PyErr_Occurred()) return -1;
        if (delta == NULL || delta == Py_None) {
            text = PyDict_GetItemWithError(choice, key_text);
        } else {
            if (!PyDict_CheckExact(delta)) return 1;
            text = PyDict_GetItemWithError(delta, key_content);
            if (text == NULL && PyErr_Occurred()) return -1;
            PyObject *calls = PyDict_GetItemWithError(delta, key_tool_calls);
            if (calls == NULL && PyErr_Occurred()) return -1;
            if (calls != NULL) {
                if ((truth = json_truth(calls)) < 0) return 1;
                facts->tool_calls |= truth;
            }
        }
        if (text == NULL && PyErr_Occurred()) return -1;
        if (text != NULL) {
            if ((truth = json_truth(text)) < 0) return 1;
            if (truth && PyList_Append(facts->texts, text) < 0) return -1;
        }
    }
    PyObject *usage = PyDict_GetItemWithError(chunk, key_usage);
    if (usage == NULL && PyErr_Occurred()) return -1;
    if (usage != NULL) {
        if ((truth = json_truth(usage)) < 0) return 1;
        if (truth && PyList_Append(facts->usages, usage) < 0) return -1;
    }
    return 0;
}

/* observe(batch) -> (texts, finished, tool_calls, usages) or None: see chunks.py_observe.
 * None: a chunk's shape is left to Python (nothing is half done: the lists are new). */
static PyObject *observe(PyObject *self, PyObject *batch) {
    if (!PyList_Check(batch)) Py_RETURN_NONE;
    Facts facts;
    PyObject *out = NULL;
    if (facts_open(&facts) < 0) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(batch); i++) {
        int status = observe_one(PyList_GET_ITEM(batch, i), &facts);
        if (status < 0) goto done;
        if (status > 0) {
            out = Py_NewRef(Py_None);
            goto done;
        }
    }
    out = facts_tuple(&facts);
done:
    facts_close(&facts);
    return out;
}

/* ---- The scanner: what the relay and the API read of a plain OpenAI chunk, from its bytes.
 *
 * Parsing a chunk into objects (orjson) was most of what a streamed request still cost beyond
 * a blocking one: about 8k instructions for a 150-byte chunk, for three dicts and a dozen
 * values of which the gateway reads four. The scanner validates the payload as JSON and reads
 * those (the first choice's text, finish_reason and tool calls, the usage, whether the chunk
 * is a closing usage chunk) without building the rest. It answers only where it is sure
 * orjson would parse the payload and the values read would be the same: anything else (a
 * number where it reads a truth, escaped or repeated keys among those it reads, a lone
 * surrogate, nesting deeper than MAX_DEPTH, a number orjson might read as infinity, invalid
 * UTF-8...) goes to orjson and the object path, whose answer is Python's.
 */

#define MAX_DEPTH 64

typedef struct {
    const char *start, *end; /* a value's bytes; start NULL: absent */
} Span;

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static inline int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Four hex digits at p (which has four bytes) as a code unit, or -1. */
static inline int hex4(const char *p) {
    int a = hex_digit(p[0]), b = hex_digit(p[1]), c = hex_digit(p[2]), d = hex_digit(p[3]);
    if ((a | b | c | d) < 0) return -1;
    return (a << 12) | (b << 8) | (c << 4) | d;
}

/* The length of the well-formed UTF-8 sequence at p (Unicode's Table 3-7: no overlong forms,
 * no surrogates, nothing past U+10FFFF), or 0. */
static inline int utf8_length(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) return end - p >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[2] & 0xC0) != 0x80) return 0;
        unsigned char low = c == 0xE0 ? 0xA0 : 0x80, high = c == 0xED ? 0x9F : 0xBF;
        return p[1] >= low && p[1] <= high ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        unsigned char low = c == 0xF0 ? 0x90 : 0x80, high = c == 0xF4 ? 0x8F : 0xBF;
        return p[1] >= low && p[1] <= high ? 4 : 0;
    }
    return 0;
}

/* The string at p (its opening quote): the byte after its closing quote, or NULL (not a
 * string the scanner is sure of). `escaped`: whether it has escapes. */
/* Bytes that a string holds as they are (printable ASCII but the quote and the backslash):
 * strings are mostly runs of them. */
static unsigned char plain[256];

static const char *scan_string(const char *p, const char *end, int *escaped) {
    *escaped = 0;
    for (p++; p < end;) {
        while (p < end && plain[(unsigned char)*p]) p++;
        if (p >= end) return NULL;
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c == '\\') {
            *escaped = 1;
            if (end - p < 2) return NULL;
            char e = p[1];
            if (e == 'u') {
                if (end - p < 6) return NULL;
                int unit = hex4(p + 2);
                p += 6;
                if (unit >= 0xD800 && unit <= 0xDBFF) { /* a pair, or nothing we are sure of */
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return NULL;
                    int low = hex4(p + 2);
                    if (low < 0xDC00 || low > 0xDFFF) return NULL;
                    p += 6;
                } else if (unit < 0 || (unit >= 0xDC00 && unit <= 0xDFFF)) {
                    return NULL;
                }
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                       e == 'r' || e == 't') {
                p += 2;
            } else {
                return NULL;
            }
        } else if (c < 0x20) {
            return NULL;
        } else if (c < 0x80) {
            p++;
        } else {
            int n = utf8_length((const unsigned char *)p, (const unsigned char *)end);
            if (n == 0) return NULL;
            p += n;
        }
    }
    return NULL;
}

static inline const char *scan_digits(const char *p, const char *end) {
    while (p < end && *p >= '0' && *p <= '9') p++;
    return p;
}

/* A number; NULL where it is not one, or where orjson might read it as infinity (more than 20
 * integer digits or 2 exponent digits; 1e119 at most is far from a double's limit). */
static const char *scan_number(const char *p, const char *end) {
    if (p < end && *p == '-') p++;
    const char *digits = p;
    if (p < end && *p == '0') {
        p++;
    } else if (p < end && *p >= '1' && *p <= '9') {
        p = scan_digits(p, end);
        if (p - digits > 20) return NULL;
    } else {
        return NULL;
    }
    if (p < end && *p == '.') {
        const char *fraction = ++p;
        p = scan_digits(p, end);
        if (p == fraction || p - fraction > 400) return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        const char *exponent = p;
        p = scan_digits(p, end);
        if (p == exponent || p - exponent > 2) return NULL;
    }
    return p;
}

static inline const char *scan_literal(const char *p, const char *end, const char *word,
                                       Py_ssize_t n) {
    return end - p >= n && memcmp(p, word, (size_t)n) == 0 ? p + n : NULL;
}

static const char *skip_value(const char *p, const char *end, int depth);

/* The members of the object or array opening at p, up to its `close`: the byte after it. */
static const char *skip_container(const char *p, const char *end, int depth, char close) {
    if (depth > MAX_DEPTH) return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == close) return p + 1;
    for (;;) {
        if (close == '}') {
            int escaped;
            if (p >= end || *p != '"' || (p = scan_string(p, end, &escaped)) == NULL)
                return NULL;
            p = skip_ws(p, end);
            if (p >= end || *p != ':') return NULL;
            p = skip_ws(p + 1, end);
        }
        if ((p = skip_value(p, end, depth + 1)) == NULL) return NULL;
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == close) return p + 1;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, end);
    }
}

/* Any value at p: the byte after it, or NULL. */
static const char *skip_value(const char *p, const char *end, int depth) {
    if (p >= end) return NULL;
    int escaped;
    switch (*p) {
    case '"': return scan_string(p, end, &escaped);
    case '{': return skip_container(p, end, depth, '}');
    case '[': return skip_container(p, end, depth, ']');
    case 't': return scan_literal(p, end, "true", 4);
    case 'f': return scan_literal(p, end, "false", 5);
    case 'n': return scan_literal(p, end, "null", 4);
    default: return scan_number(p, end);
    }
}

/* A scanned value's truth: 1, 0, or -1 for a number (left to the object path). */
static int span_truth(Span value) {
    switch (*value.start) {
    case 'n': case 'f': return 0;
    case 't': return 1;
    case '"': return value.end - value.start > 2;
    case '[': case '{': {
        char next = *skip_ws(value.start + 1, value.end);
        return next != ']' && next != '}';
    }
    default: return -1;
    }
}

/* The keys the scanner reads, each into its slot of a chunk's Span array; a key's value
 * that is an object (or, `first`, an array whose first item is one) is read for `nested`'s
 * keys as it is scanned (one pass over the payload). */
typedef struct Spec Spec;
typedef struct {
    const char *name;
    size_t length;
    int slot;
    const Spec *nested;
    int first;
} Key;
struct Spec {
    int n;
    const Key *keys;
};

enum { CHOICES, USAGE, ERROR, FINISH_REASON, DELTA, TEXT, CONTENT, TOOL_CALLS, SLOTS };
static const Key delta_keys[] = {{"content", 7, CONTENT, NULL, 0},
                                 {"tool_calls", 10, TOOL_CALLS, NULL, 0}};
static const Spec delta_spec = {2, delta_keys};
static const Key choice_keys[] = {{"finish_reason", 13, FINISH_REASON, NULL, 0},
                                  {"delta", 5, DELTA, &delta_spec, 0},
                                  {"text", 4, TEXT, NULL, 0}};
static const Spec choice_spec = {3, choice_keys};
static const Key top_keys[] = {{"choices", 7, CHOICES, &choice_spec, 1},
                               {"usage", 5, USAGE, NULL, 0},
                               {"error", 5, ERROR, NULL, 0}};
static const Spec top_spec = {3, top_keys};

static const char *scan_object(const char *p, const char *end, const Spec *spec, int depth,
                               Span *slots);

/* The value at p, read for `key` (NULL: for nothing): the byte after it, or NULL. */
static const char *scan_member(const char *p, const char *end, const Key *key, int depth,
                               Span *slots) {
    if (key == NULL || key->nested == NULL) return skip_value(p, end, depth);
    if (!key->first) {
        return *p == '{' ? scan_object(p, end, key->nested, depth, slots)
                         : skip_value(p, end, depth);
    }
    if (*p != '[') return skip_value(p, end, depth);
    /* An array: its first item read for the nested keys, the others skipped. */
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']') return p + 1;
    for (int item = 0;; item++) {
        p = item == 0 && p < end && *p == '{'
                ? scan_object(p, end, key->nested, depth + 1, slots)
                : skip_value(p, end, depth + 1);
        if (p == NULL) return NULL;
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == ']') return p + 1;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, end);
    }
}

/* The object opening at p, its values for `spec`'s keys in `slots` (start NULL where
 * absent): the byte after it, or NULL (not valid, or one of the keys repeated or spelled with
 * escapes: left to the object path). */
static const char *scan_object(const char *p, const char *end, const Spec *spec, int depth,
                               Span *slots) {
    if (depth > MAX_DEPTH) return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return p + 1;
    for (;;) {
        int escaped;
        const char *name = p + 1;
        if (p >= end || *p != '"' || (p = scan_string(p, end, &escaped)) == NULL) return NULL;
        if (escaped) return NULL; /* it could spell one of ours */
        size_t length = (size_t)(p - name - 1);
        const Key *key = NULL;
        for (int k = 0; k < spec->n; k++) {
            const Key *candidate = &spec->keys[k];
            if (length == candidate->length && name[0] == candidate->name[0] &&
                memcmp(name, candidate->name, length) == 0) {
                key = candidate;
                break;
            }
        }
        if (key != NULL && slots[key->slot].start != NULL) return NULL; /* orjson keeps the last */
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return NULL;
        p = skip_ws(p + 1, end);
        const char *value = p;
        if (p >= end || (p = scan_member(p, end, key, depth + 1, slots)) == NULL) return NULL;
        if (key != NULL) {
            slots[key->slot].start = value;
            slots[key->slot].end = p;
        }
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == '}') return p + 1;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, end);
    }
}

/* A validated string's value (its span, quotes included), as orjson decodes it. */
static PyObject *decode_string(Span value) {
    const char *p = value.start + 1, *end = value.end - 1;
    if (memchr(p, '\\', (size_t)(end - p)) == NULL)
        return PyUnicode_DecodeUTF8(p, end - p, "strict");
    char *buffer = PyMem_Malloc((size_t)(end - p)); /* an escape is never shorter in JSON */
    if (buffer == NULL) return PyErr_NoMemory();
    char *out = buffer;
    while (p < end) {
        if (*p != '\\') {
            *out++ = *p++;
            continue;
        }
        char e = p[1];
        p += 2;
        switch (e) {
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'u': {
            long point = hex4(p);
            p += 4;
            if (point >= 0xD800 && point <= 0xDBFF) { /* validated: a low surrogate follows */
                point = 0x10000 + ((point - 0xD800) << 10) + (hex4(p + 2) - 0xDC00);
                p += 6;
            }
            if (point < 0x80) {
                *out++ = (char)point;
            } else if (point < 0x800) {
                *out++ = (char)(0xC0 | (point >> 6));
                *out++ = (char)(0x80 | (point & 0x3F));
            } else if (point < 0x10000) {
                *out++ = (char)(0xE0 | (point >> 12));
                *out++ = (char)(0x80 | ((point >> 6) & 0x3F));
                *out++ = (char)(0x80 | (point & 0x3F));
            } else {
                *out++ = (char)(0xF0 | (point >> 18));
                *out++ = (char)(0x80 | ((point >> 12) & 0x3F));
                *out++ = (char)(0x80 | ((point >> 6) & 0x3F));
                *out++ = (char)(0x80 | (point & 0x3F));
            }
            break;
        }
        default: *out++ = e; /* " \ / */
        }
    }
    PyObject *text = PyUnicode_DecodeUTF8(buffer, out - buffer, "strict");
    PyMem_Free(buffer);
    return text;
}

/* What the API reads of a batch's last chunk. */
typedef struct {
    int has_usage;     /* a "usage" key */
    int choices_falsy; /* "choices" absent or falsy */
    int choices_empty; /* "choices" is [] */
} Chunk;

enum { SCANNED = 0, UNSURE = 1, STOP = 2 };

/* One payload into `facts` and `chunk`, from its bytes: SCANNED; UNSURE, nothing added (the
 * object path decides); STOP, an error chunk (Python raises it); or -1 with an error set. */
static int scan_one(const char *p, const char *end, Facts *facts, Chunk *chunk) {
    Span slots[SLOTS] = {{NULL, NULL}};
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return UNSURE;
    const char *after = scan_object(p, end, &top_spec, 0, slots);
    if (after == NULL || skip_ws(after, end) != end) return UNSURE;
    if (slots[ERROR].start != NULL) return STOP;
    Span choices = slots[CHOICES], usage = slots[USAGE], text = {NULL, NULL};
    int truth, finished = 0, tool_calls = 0;
    chunk->choices_falsy = 1;
    chunk->choices_empty = 0;
    if (choices.start != NULL) {
        if ((truth = span_truth(choices)) < 0) return UNSURE;
        chunk->choices_falsy = !truth;
        chunk->choices_empty = *choices.start == '[' && !truth;
        if (truth) {
            /* The first choice must be an object (its keys were read as it was scanned). */
            if (*choices.start != '[' || *skip_ws(choices.start + 1, choices.end) != '{')
                return UNSURE;
            if (slots[FINISH_REASON].start != NULL) {
                if ((truth = span_truth(slots[FINISH_REASON])) < 0) return UNSURE;
                finished = truth;
            }
            Span delta = slots[DELTA];
            if (delta.start == NULL || *delta.start == 'n') {
                text = slots[TEXT];
            } else {
                if (*delta.start != '{') return UNSURE;
                text = slots[CONTENT];
                if (slots[TOOL_CALLS].start != NULL) {
                    if ((truth = span_truth(slots[TOOL_CALLS])) < 0) return UNSURE;
                    tool_calls = truth;
                }
            }
        }
    }
    int text_truth = 0, usage_truth = 0;
    if (text.start != NULL) {
        text_truth = span_truth(text);
        if (text_truth < 0 || (text_truth && *text.start != '"')) return UNSURE;
    }
    if (usage.start != NULL && (usage_truth = span_truth(usage)) < 0) return UNSURE;
    /* Sure of it: from here on the facts change. */
    if (text_truth) {
        PyObject *value = decode_string(text);
        if (value == NULL) return -1;
        int failed = PyList_Append(facts->texts, value);
        Py_DECREF(value);
        if (failed) return -1;
    }
    if (usage_truth) {
        PyObject *raw = PyBytes_FromStringAndSize(usage.start, usage.end - usage.start);
        if (raw == NULL) return -1;
        PyObject *value = PyObject_CallOneArg(loads, raw);
        Py_DECREF(raw);
        if (value == NULL) return -1;
        int failed = PyList_Append(facts->usages, value);
        Py_DECREF(value);
        if (failed) return -1;
    }
    facts->finished |= finished;
    facts->tool_calls |= tool_calls;
    chunk->has_usage = usage.start != NULL;
    return SCANNED;
}

/* The object path for a payload the scanner was unsure of: orjson, then observe_one.
 * SCANNED; STOP (not a JSON object, or an error chunk: Python raises); or -1. `python`: set
 * when the chunk's shape is left to Python's observe. */
static int parse_one(PyObject *data, Facts *facts, Chunk *chunk, int *python) {
    PyObject *parsed = PyObject_CallOneArg(loads, data);
    if (parsed == NULL) {
        /* Python parses it again and says why; an exception beyond Exception (a
         * KeyboardInterrupt) is not ours to swallow. */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
        PyErr_Clear();
        return STOP;
    }
    int status = STOP, has;
    if (!PyDict_CheckExact(parsed)) goto done;
    if ((has = PyDict_Contains(parsed, key_error)) != 0) {
        status = has < 0 ? -1 : STOP;
        goto done;
    }
    status = -1;
    if ((chunk->has_usage = PyDict_Contains(parsed, key_usage)) < 0) goto done;
    PyObject *choices = PyDict_GetItemWithError(parsed, key_choices);
    if (choices == NULL && PyErr_Occurred()) goto done;
    /* orjson's values only: their truth runs no Python code. */
    chunk->choices_falsy = choices == NULL || json_truth(choices) == 0;
    chunk->choices_empty = choices != NULL && PyList_CheckExact(choices) &&
                           PyList_GET_SIZE(choices) == 0;
    if (!*python) {
        int seen = observe_one(parsed, facts);
        if (seen < 0) goto done;
        *python = seen;
    }
    status = SCANNED;
done:
    Py_DECREF(parsed);
    return status;
}

/* scan(payloads) -> (stop, usage_chunks, usage_last_alone, closing, observed or None): see
 * chunks.py_scan. */
static PyObject *scan(PyObject *self, PyObject *payloads) {
    if (!PyList_Check(payloads)) {
        PyErr_SetString(PyExc_TypeError, "scan(payloads: list)");
        return NULL;
    }
    Facts facts;
    PyObject *out = NULL;
    if (facts_open(&facts) < 0) goto done;
    Py_ssize_t index = 0, usage_chunks = 0;
    Chunk last = {0, 1, 0};
    int python = 0;
    for (; index < PyList_GET_SIZE(payloads); index++) {
        PyObject *data = PyList_GET_ITEM(payloads, index);
        if (!PyBytes_CheckExact(data)) break;
        const char *start = PyBytes_AS_STRING(data);
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        if (n == 6 && memcmp(start, "[DONE]", 6) == 0) break;
        Chunk chunk;
        Py_INCREF(data); /* held: the calls below may run Python code */
        int status = scan_one(start, start + n, &facts, &chunk);
        if (status == UNSURE) status = parse_one(data, &facts, &chunk, &python);
        Py_DECREF(data);
        if (status < 0) goto done;
        if (status == STOP) break;
        usage_chunks += chunk.has_usage;
        last = chunk;
    }
    PyObject *alone = PyBool_FromLong(index > 0 && last.has_usage && last.choices_falsy);
    PyObject *closing = PyBool_FromLong(index > 0 && last.choices_empty);
    PyObject *observed = python ? Py_NewRef(Py_None) : facts_tuple(&facts);
    if (observed != NULL)
        out = Py_BuildValue("(nnNNN)", index, usage_chunks, alone, closing, observed);
    else {
        Py_DECREF(alone);
        Py_DECREF(closing);
    }
done:
    facts_close(&facts);
    return out;
}

/* scan_status(data) -> "scanned" | "unsure" | "stop": how the scanner alone reads one
 * payload (for the tests: whether a shape is read from its bytes or by the object path). */
static PyObject *scan_status(PyObject *self, PyObject *data) {
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "scan_status(data: bytes)");
        return NULL;
    }
    Facts facts;
    Chunk chunk;
    PyObject *out = NULL;
    if (facts_open(&facts) == 0) {
        const char *start = PyBytes_AS_STRING(data);
        int status = scan_one(start, start + PyBytes_GET_SIZE(data), &facts, &chunk);
        if (status >= 0)
            out = PyUnicode_FromString(status == SCANNED ? "scanned"
                                       : status == UNSURE ? "unsure" : "stop");
    }
    facts_close(&facts);
    return out;
}

static PyMethodDef methods[] = {
    {"sse_events", (PyCFunction)(void (*)(void))sse_events, METH_FASTCALL,
     "The SSE data payloads of the lines a read ends, and the unterminated rest."},
    {"scan", scan, METH_O,
     "What the payloads up to the first [DONE] or error chunk say, read from their bytes."},
    {"scan_status", scan_status, METH_O,
     "How the scanner alone reads one payload: scanned, unsure or stop."},
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
    for (int c = 0x20; c < 0x80; c++) plain[c] = c != '"' && c != '\\';
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
