/* Passes over per-candidate number lists in C: kvgate.routing.floats' native half.
 *
 * The predicted-TTFT scorer (ttft_scorer.py) keeps its cost model in Python; what it does
 * per candidate is a dozen passes over lists of floats (costs, room, fill, ties). In Python
 * each pass boxes a float or an int per candidate: at 256 replicas that was most of a
 * decision (issue 15). These are the same passes over the lists' items read as doubles.
 * kvgate/routing/floats.py holds the Python versions, which the tests hold these to. Two
 * more serve a decision the same way: prefix_sums (each deployment's matched tokens,
 * floats.py) and explained (the explanation's candidate entries, explain.py).
 *
 * Items may be floats or ints (token counts): read as doubles, so ints beyond 2**53 compare
 * approximately (token counts never get there). NaN is not a value the scorer produces:
 * comparisons with it are false, as in Python, but which of several NaNs a minimum returns
 * is not specified. minimum/maximum return the list's own item (an int stays an int; an
 * array's item is a float). The arithmetic (add_scaled, add_product, multiply) returns an
 * array('d'), and every pass reads one in place: at 256 replicas, a float object per
 * candidate per pass cost more than the pass.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include "_native.h"

/* A sequence's items: a list's or tuple's borrowed, or an array('d')'s doubles read in
 * place (float outputs are such arrays: no float object per candidate); any other sequence
 * is copied into a list first. */
typedef struct {
    PyObject *fast;
    PyObject **items;
    const double *doubles; /* non-NULL: the items are these doubles (a buffer of format 'd') */
    Py_buffer view;
    Py_ssize_t n;
} Items;

static int items_open(PyObject *seq, Items *out, const char *what) {
    out->doubles = NULL;
    out->view.obj = NULL;
    out->fast = PySequence_Fast(seq, what);
    if (out->fast == NULL) return -1;
    out->items = PySequence_Fast_ITEMS(out->fast);
    out->n = PySequence_Fast_GET_SIZE(out->fast);
    return 0;
}

/* items_open, but numbers: an array('d') is read in place (item_value, item_object). */
static int numbers_open(PyObject *seq, Items *out, const char *what) {
    out->fast = NULL;
    out->items = NULL;
    out->doubles = NULL;
    out->view.obj = NULL;
    if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq) && PyObject_CheckBuffer(seq)) {
        if (PyObject_GetBuffer(seq, &out->view, PyBUF_FORMAT | PyBUF_ND) < 0) {
            /* not contiguous (a strided memoryview): read as a sequence, as Python does */
            PyErr_Clear();
            out->view.obj = NULL;
            return items_open(seq, out, what);
        }
        if (out->view.ndim == 1 && out->view.itemsize == sizeof(double)
                && out->view.format != NULL && strcmp(out->view.format, "d") == 0) {
            out->doubles = (const double *)out->view.buf;
            out->n = out->view.shape[0];
            return 0;
        }
        PyBuffer_Release(&out->view); /* another buffer (bytes, array('i')): as a sequence */
        out->view.obj = NULL;
    }
    return items_open(seq, out, what);
}

static void items_close(Items *items) {
    Py_XDECREF(items->fast);
    items->fast = NULL;
    if (items->view.obj != NULL) PyBuffer_Release(&items->view);
    items->view.obj = NULL;
}

/* -1.0 with an exception set means failure (callers check PyErr_Occurred only then). */
static inline double value_at(PyObject *item) {
    if (PyFloat_CheckExact(item)) return PyFloat_AS_DOUBLE(item);
    if (PyLong_CheckExact(item)) return PyLong_AsDouble(item);
    return PyFloat_AsDouble(item);
}

/* Item i as a double (the same failure rule as value_at). */
static inline double item_value(const Items *items, Py_ssize_t i) {
    return items->doubles != NULL ? items->doubles[i] : value_at(items->items[i]);
}

/* Item i as an object: a list's own item (new reference), or an array's double as a float. */
static inline PyObject *item_object(const Items *items, Py_ssize_t i) {
    return items->doubles != NULL ? PyFloat_FromDouble(items->doubles[i])
                                  : Py_NewRef(items->items[i]);
}

#define FAILED(v) ((v) == -1.0 && PyErr_Occurred())

/* array.array('d', [0.0]): every float output is a repeat of it (array's own C path: one
 * allocation and a copy), filled in place. */
static PyObject *one_double;

/* A new array('d') of n doubles, and its storage (valid while the array lives unresized). */
static PyObject *new_doubles(Py_ssize_t n, double **data) {
    PyObject *out = PySequence_Repeat(one_double, n);
    if (out == NULL) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(out, &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    *data = (double *)view.buf; /* the array owns it; the view only pinned its size */
    PyBuffer_Release(&view);
    return out;
}

/* `among`'s i-th index into a sequence of n items, Python's negative indices included;
 * -1 with IndexError set when out of range. */
static Py_ssize_t index_at(PyObject *item, Py_ssize_t n) {
    Py_ssize_t i;
    if (PyLong_CheckExact(item)) { /* the common case, without __index__'s detour */
        i = PyLong_AsSsize_t(item);
        if (i == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
            PyErr_Clear(); /* as PyNumber_AsSsize_t(item, IndexError) says it */
            PyErr_Format(PyExc_IndexError, "cannot fit 'int' into an index-sized integer");
            return -1;
        }
    } else {
        i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) return -1;
    }
    if (i < 0) i += n;
    if (i < 0 || i >= n) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    return i;
}

static int check_args(Py_ssize_t nargs, Py_ssize_t least, Py_ssize_t most, const char *name) {
    if (nargs < least || nargs > most) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)", name,
                     least, most, nargs);
        return -1;
    }
    return 0;
}

/* base[i] + rate[i] * x (x a number), or base[i] + (rate[i] * x[i]) * scale (x a list), or
 * without a base (NULL) rate[i] * x[i] * scale: the same operations in the same order as the
 * Python versions, so the same doubles (x 1.0 changes none). */
static PyObject *affine(PyObject *base_seq, PyObject *rate_seq, PyObject *x_seq, double scale,
                        int x_is_list) {
    Items base = {0}, rate = {0}, x = {0};
    PyObject *out = NULL;
    double x_value = 0.0;
    if (base_seq != NULL && numbers_open(base_seq, &base, "base must be a sequence") < 0)
        goto done;
    if (numbers_open(rate_seq, &rate, "rate must be a sequence") < 0) goto done;
    Py_ssize_t n = base_seq != NULL && base.n < rate.n ? base.n : rate.n; /* map(): shortest */
    if (x_is_list) {
        if (numbers_open(x_seq, &x, "x must be a sequence") < 0) goto done;
        if (x.n < n) n = x.n;
    } else {
        x_value = value_at(x_seq);
        if (FAILED(x_value)) goto done;
    }
    double *data;
    out = new_doubles(n, &data);
    if (out == NULL) goto done;
    /* Arrays only: no checks, the same operations in the same order as below. */
    const double *b = base.doubles, *r = rate.doubles, *xs = x.doubles;
    if (r != NULL && (base_seq == NULL || b != NULL) && (!x_is_list || xs != NULL)) {
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = x_is_list ? (r[i] * xs[i]) * scale : r[i] * x_value;
            data[i] = b != NULL ? b[i] + v : v;
        }
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        double r = item_value(&rate, i);
        if (FAILED(r)) goto fail;
        double v;
        if (x_is_list) {
            double xi = item_value(&x, i);
            if (FAILED(xi)) goto fail;
            v = (r * xi) * scale;
        } else {
            v = r * x_value;
        }
        if (base_seq != NULL) {
            double b = item_value(&base, i);
            if (FAILED(b)) goto fail;
            v = b + v;
        }
        data[i] = v;
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    items_close(&base);
    items_close(&rate);
    items_close(&x);
    return out;
}

static PyObject *add_scaled(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 3, 3, "add_scaled") < 0) return NULL;
    return affine(args[0], args[1], args[2], 1.0, 0);
}

static PyObject *add_product(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 4, 4, "add_product") < 0) return NULL;
    double scale = value_at(args[3]);
    if (FAILED(scale)) return NULL;
    return affine(args[0], args[1], args[2], scale, 1);
}

static PyObject *multiply(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 2, 2, "multiply") < 0) return NULL;
    return affine(NULL, args[0], args[1], 1.0, 1);
}

/* The first index of the least (sign 1) or greatest (sign -1) value, over every index or
 * those `among` lists; -1 with ValueError set when there are none. */
static Py_ssize_t extreme_index(Items *values, PyObject *among_seq, double sign,
                                const char *name) {
    Items among = {0};
    Py_ssize_t best = -1;
    double best_key = 0.0;
    Py_ssize_t count = values->n;
    if (among_seq != NULL && among_seq != Py_None) {
        if (items_open(among_seq, &among, "among must be a sequence") < 0) return -1;
        count = among.n;
    } else if (values->doubles != NULL && count > 0) { /* an array, every item: no checks */
        const double *v = values->doubles;
        best = 0;
        best_key = sign * v[0];
        for (Py_ssize_t i = 1; i < count; i++) {
            if (sign * v[i] < best_key) {
                best = i;
                best_key = sign * v[i];
            }
        }
        return best;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t i = k;
        if (among.fast != NULL) {
            i = index_at(among.items[k], values->n);
            if (i < 0) goto fail;
        }
        double v = item_value(values, i);
        if (FAILED(v)) goto fail;
        double key = sign * v;
        if (best < 0 || key < best_key) { /* ties keep the first, as min() and max() do */
            best = i;
            best_key = key;
        }
    }
    items_close(&among);
    if (best < 0) PyErr_Format(PyExc_ValueError, "%s() arg is an empty sequence", name);
    return best;
fail:
    items_close(&among);
    return -1;
}

static PyObject *extreme(PyObject *const *args, Py_ssize_t nargs, double sign,
                         const char *name) {
    if (check_args(nargs, 1, 2, name) < 0) return NULL;
    Items values;
    if (numbers_open(args[0], &values, "values must be a sequence") < 0) return NULL;
    Py_ssize_t i = extreme_index(&values, nargs > 1 ? args[1] : NULL, sign, name);
    PyObject *out = i < 0 ? NULL : item_object(&values, i);
    items_close(&values);
    return out;
}

/* A module function `name` that is `impl` with its last argument fixed. */
#define VARIANT(name, impl, fixed)                                                          \
    static PyObject *name(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {        \
        return impl(args, nargs, fixed, #name);                                             \
    }

VARIANT(minimum, extreme, 1.0)
VARIANT(maximum, extreme, -1.0)

static PyObject *argmin(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 1, 1, "argmin") < 0) return NULL;
    Items values;
    if (numbers_open(args[0], &values, "values must be a sequence") < 0) return NULL;
    Py_ssize_t i = extreme_index(&values, NULL, 1.0, "argmin");
    items_close(&values);
    return i < 0 ? NULL : PyLong_FromSsize_t(i);
}

enum { LE, GE, LT };

/* The indices i (of every item, or of those `among` lists, in that order) where
 * values[i] <op> limit; with LT, `limit` is a second sequence compared item by item. */
static PyObject *where(PyObject *const *args, Py_ssize_t nargs, int op, const char *name) {
    if (check_args(nargs, 2, op == LT ? 2 : 3, name) < 0) return NULL;
    Items values = {0}, limits = {0}, among = {0};
    PyObject *out = NULL;
    double limit = 0.0;
    if (numbers_open(args[0], &values, "values must be a sequence") < 0) goto done;
    Py_ssize_t count = values.n;
    if (op == LT) {
        if (numbers_open(args[1], &limits, "limits must be a sequence") < 0) goto done;
        if (limits.n < count) count = limits.n;
    } else {
        limit = value_at(args[1]);
        if (FAILED(limit)) goto done;
        if (nargs > 2 && args[2] != Py_None) {
            if (items_open(args[2], &among, "among must be a sequence") < 0) goto done;
            count = among.n;
        }
    }
    /* At most `count` kept: allocated once, cut to those kept (ties are often the fleet). */
    out = PyList_New(count);
    if (out == NULL) goto done;
    Py_ssize_t kept = 0;
    int array_pass = values.doubles != NULL && among.fast == NULL && op != LT;
    for (Py_ssize_t k = 0; array_pass && k < count; k++) { /* an array: no checks */
        double v = values.doubles[k];
        if (op == LE ? v <= limit : v >= limit) {
            PyObject *index = PyLong_FromSsize_t(k);
            if (index == NULL) goto fail;
            PyList_SET_ITEM(out, kept++, index);
        }
    }
    for (Py_ssize_t k = 0; !array_pass && k < count; k++) {
        Py_ssize_t i = k;
        if (among.fast != NULL) {
            i = index_at(among.items[k], values.n);
            if (i < 0) goto fail;
        }
        double v = item_value(&values, i);
        if (FAILED(v)) goto fail;
        int keep;
        if (op == LT) {
            double w = item_value(&limits, i);
            if (FAILED(w)) goto fail;
            keep = v < w;
        } else {
            keep = op == LE ? v <= limit : v >= limit;
        }
        if (keep) { /* an `among` item as given (a negative index stays negative) */
            PyObject *index = among.fast != NULL ? Py_NewRef(among.items[k])
                                                 : PyLong_FromSsize_t(i);
            if (index == NULL) goto fail;
            PyList_SET_ITEM(out, kept++, index);
        }
    }
    if (kept < count && PyList_SetSlice(out, kept, count, NULL) < 0) goto fail;
    goto done;
fail:
    Py_CLEAR(out);
done:
    items_close(&values);
    items_close(&limits);
    items_close(&among);
    return out;
}

VARIANT(where_le, where, LE)
VARIANT(where_ge, where, GE)
VARIANT(where_lt, where, LT)

/* The k best of `values` (sign 1: the least, -1: the greatest) into index[0..kept), earlier
 * ones first among equals: the k best so far are kept in order, and a later item enters only
 * when strictly better than the worst of them. `key`: room for k doubles. Returns kept (k, or
 * fewer items), -1 with an exception when an item is not a number. Not in index order yet. */
static Py_ssize_t best_indices(const Items *values, Py_ssize_t k, double sign, Py_ssize_t *index,
                               double *key) {
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < values->n && k > 0; i++) {
        double v = item_value(values, i);
        if (FAILED(v)) return -1;
        double x = sign * v;
        if (kept == k && !(x < key[k - 1])) continue;
        Py_ssize_t at = kept < k ? kept++ : k - 1; /* the slot freed: the worst's */
        while (at > 0 && x < key[at - 1]) { /* strictly: equals stay ahead */
            key[at] = key[at - 1];
            index[at] = index[at - 1];
            at--;
        }
        key[at] = x;
        index[at] = i;
    }
    return kept;
}

/* index[0..n) in increasing order (n is small: an insertion sort). */
static void index_order(Py_ssize_t *index, Py_ssize_t n) {
    for (Py_ssize_t a = 1; a < n; a++) {
        Py_ssize_t v = index[a], b = a;
        for (; b > 0 && index[b - 1] > v; b--) index[b] = index[b - 1];
        index[b] = v;
    }
}

/* The indices of the k least (sign 1) or greatest (sign -1) values, earlier ones first
 * among equals, in index order: sorted(heapq.nsmallest(k, range(n), key=values.__getitem__))
 * (nlargest for sign -1). O(n) for small k. */
static PyObject *best_k(PyObject *const *args, Py_ssize_t nargs, double sign, const char *name) {
    if (check_args(nargs, 2, 2, name) < 0) return NULL;
    Py_ssize_t k = PyLong_AsSsize_t(args[1]);
    if (k == -1 && PyErr_Occurred()) return NULL;
    Items values;
    if (numbers_open(args[0], &values, "values must be a sequence") < 0) return NULL;
    PyObject *out = NULL;
    if (k > values.n) k = values.n;
    if (k < 0) k = 0;
    Py_ssize_t *index = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(k ? k : 1));
    double *key = PyMem_Malloc(sizeof(double) * (size_t)(k ? k : 1));
    if (index == NULL || key == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t kept = best_indices(&values, k, sign, index, key);
    if (kept < 0) goto done;
    index_order(index, kept);
    out = int_list(index, kept);
done:
    PyMem_Free(index);
    PyMem_Free(key);
    items_close(&values);
    return out;
}

VARIANT(smallest, best_k, 1.0)
VARIANT(largest, best_k, -1.0)

/* prefix_sums(values, counts, /): [sum(values[:k]) for k in counts], values ints; IndexError
 * for a k outside 0..len(values). Each distinct sum is one int object, shared by every k
 * that names it (a fleet's counts take few values: who holds the prefix, who does not). */
static PyObject *prefix_sums(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 2, 2, "prefix_sums") < 0) return NULL;
    Items values = {0}, counts = {0};
    PyObject *out = NULL, **made = NULL;
    long long *sums = NULL;
    if (items_open(args[0], &values, "values must be a sequence") < 0) goto done;
    if (items_open(args[1], &counts, "counts must be a sequence") < 0) goto done;
    sums = PyMem_Malloc((size_t)(values.n + 1) * sizeof(long long));
    made = PyMem_Calloc((size_t)(values.n + 1), sizeof(PyObject *));
    if (sums == NULL || made == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    sums[0] = 0;
    for (Py_ssize_t i = 0; i < values.n; i++) {
        long long v = PyLong_AsLongLong(values.items[i]);
        if (v == -1 && PyErr_Occurred()) goto done;
        if (__builtin_add_overflow(sums[i], v, &sums[i + 1])) {
            PyErr_SetString(PyExc_OverflowError, "prefix_sums: sum too large");
            goto done;
        }
    }
    out = PyList_New(counts.n);
    if (out == NULL) goto done;
    for (Py_ssize_t k = 0; k < counts.n; k++) {
        Py_ssize_t i = PyNumber_AsSsize_t(counts.items[k], PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) goto fail;
        if (i < 0 || i > values.n) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            goto fail;
        }
        if (made[i] == NULL && (made[i] = PyLong_FromLongLong(sums[i])) == NULL) goto fail;
        PyList_SET_ITEM(out, k, Py_NewRef(made[i]));
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    if (made != NULL)
        for (Py_ssize_t i = 0; i <= values.n; i++) Py_XDECREF(made[i]);
    PyMem_Free(made);
    PyMem_Free(sums);
    items_close(&values);
    items_close(&counts);
    return out;
}

/* -- a decision's explanation -------------------------------------------------------------- */

/* Interned at import: the keys of every explained candidate's entry, and "id". */
static PyObject *key_id, *key_matched, *key_uncached, *key_cost;

/* A token count as the explanation writes it (explain.py's tokens_value): an int stays as is,
 * a whole float becomes an int, any other finite float keeps one decimal. */
static PyObject *tokens_object(const Items *items, Py_ssize_t i) {
    double v;
    if (items->doubles != NULL) {
        v = items->doubles[i];
    } else {
        PyObject *item = items->items[i];
        if (PyLong_CheckExact(item)) return Py_NewRef(item);
        v = PyFloat_CheckExact(item) ? PyFloat_AS_DOUBLE(item) : PyFloat_AsDouble(item);
        if (FAILED(v)) return NULL;
    }
    if (!isfinite(v)) return PyFloat_FromDouble(v);
    if (floor(v) == v) return PyLong_FromDouble(v);
    /* + 0.0: -0.0 becomes 0.0, as Python's int 0 does. */
    return PyFloat_FromDouble((rint(v * 10.0) + 0.0) / 10.0);
}

/* Seconds as milliseconds to the microsecond (explain.py's ms): rint rounds half to even
 * in the default rounding mode, as Python's round does. */
static inline double ms_value(double seconds) {
    double scaled = seconds * 1e6;
    return isfinite(scaled) ? (rint(scaled) + 0.0) / 1e3 : seconds * 1e3;
}

/* One candidate's entry: {"matched_tokens", "uncached_tokens", "predicted_cost_ms"}, in that
 * order (explained's, and the decision's, decide.h); NULL with an exception. */
static PyObject *candidate_entry(const Items *matched, const Items *uncached, double cost,
                                 Py_ssize_t i) {
    PyObject *entry = PyDict_New();
    if (entry == NULL) return NULL;
    PyObject *values[3] = {tokens_object(matched, i), tokens_object(uncached, i),
                           PyFloat_FromDouble(ms_value(cost))};
    PyObject *keys[3] = {key_matched, key_uncached, key_cost};
    int failed = 0;
    for (int v = 0; v < 3; v++) {
        if (values[v] == NULL || (!failed && PyDict_SetItem(entry, keys[v], values[v]) < 0))
            failed = 1;
        Py_XDECREF(values[v]);
    }
    if (failed) Py_CLEAR(entry);
    return entry;
}

/* explained(shown, candidates, matched, uncached, costs, /): {candidates[i].id:
 * {"matched_tokens", "uncached_tokens", "predicted_cost_ms"}} for i in shown, in that order. */
static PyObject *explained(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 5, 5, "explained") < 0) return NULL;
    Items shown = {0}, candidates = {0}, matched = {0}, uncached = {0}, costs = {0};
    PyObject *out = NULL;
    if (items_open(args[0], &shown, "shown must be a sequence") < 0
            || items_open(args[1], &candidates, "candidates must be a sequence") < 0
            || numbers_open(args[2], &matched, "matched must be a sequence") < 0
            || numbers_open(args[3], &uncached, "uncached must be a sequence") < 0
            || numbers_open(args[4], &costs, "costs must be a sequence") < 0) goto done;
    Py_ssize_t n = candidates.n;
    if (matched.n < n) n = matched.n;
    if (uncached.n < n) n = uncached.n;
    if (costs.n < n) n = costs.n;
    out = PyDict_New();
    if (out == NULL) goto done;
    for (Py_ssize_t k = 0; k < shown.n; k++) {
        Py_ssize_t i = index_at(shown.items[k], n);
        if (i < 0) goto fail;
        double cost = item_value(&costs, i);
        if (FAILED(cost)) goto fail;
        PyObject *entry = candidate_entry(&matched, &uncached, cost, i);
        if (entry == NULL) goto fail;
        int failed = 0;
        PyObject *id = PyObject_GetAttr(candidates.items[i], key_id);
        if (id == NULL || PyDict_SetItem(out, id, entry) < 0) failed = 1;
        Py_XDECREF(id);
        Py_DECREF(entry);
        if (failed) goto fail;
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    items_close(&shown);
    items_close(&candidates);
    items_close(&matched);
    items_close(&uncached);
    items_close(&costs);
    return out;
}

#include "_floats_decide.h"

#define FAST(name, doc) {#name, (PyCFunction)(void (*)(void))name, METH_FASTCALL, doc}

static PyMethodDef methods[] = {
    FAST(add_scaled, "add_scaled(base, rate, x, /): [b + r * x]"),
    FAST(add_product, "add_product(base, rate, x, scale, /): [b + (r * xi) * scale]"),
    FAST(multiply, "multiply(a, b, /): [ai * bi]"),
    FAST(minimum, "minimum(values, among=None, /): the least item (the first of equals)"),
    FAST(maximum, "maximum(values, among=None, /): the greatest item (the first of equals)"),
    FAST(argmin, "argmin(values, /): the first index of the least item"),
    FAST(where_le, "where_le(values, limit, among=None, /): indices i with values[i] <= limit"),
    FAST(where_ge, "where_ge(values, limit, among=None, /): indices i with values[i] >= limit"),
    FAST(where_lt, "where_lt(values, limits, /): indices i with values[i] < limits[i]"),
    FAST(smallest, "smallest(values, k, /): the k least items' indices, in index order"),
    FAST(largest, "largest(values, k, /): the k greatest items' indices, in index order"),
    FAST(prefix_sums, "prefix_sums(values, counts, /): [sum(values[:k]) for k in counts]"),
    FAST(explained, "explained(shown, candidates, matched, uncached, costs, /): the "
                    "explanation's entries of the shown candidates, by id"),
    FAST(decide, "decide(name, candidates, prompt_tokens, matched, best_match, known, base, "
                 "rate, room, ttft_base, factor, least_headroom, placed, capacity, "
                 "inverse_capacity, replicas, admission_wait_s, block_tokens, rotation, "
                 "details, /): "
                 "TTFTScorer.choose's common case, (pick, rotation, explanation, uncached)"),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_floats_native",
    "Passes over per-candidate number lists (kvgate.routing.floats, explain).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__floats_native(void) {
    key_id = PyUnicode_InternFromString("id");
    key_matched = PyUnicode_InternFromString("matched_tokens");
    key_uncached = PyUnicode_InternFromString("uncached_tokens");
    key_cost = PyUnicode_InternFromString("predicted_cost_ms");
    if (!key_id || !key_matched || !key_uncached || !key_cost) return NULL;
    struct { PyObject **to; const char *text; } words[] = {
        {&key_strategy, "strategy"}, {&key_outcome, "outcome"},
        {&key_predicted_ttft, "predicted_ttft_ms"}, {&key_runner_up, "runner_up_margin_ms"},
        {&key_candidates, "candidates"}, {&key_eviction, "eviction_ms"},
        {&key_wait, "kv_wait_ms"}, {&attr_error, "error_s"}, {&attr_prefill, "prefill"},
        {&attr_slope, "slope"}, {&word_cold, "cold"}, {&word_hit, "hit"},
        {&word_spill, "spill"},
    };
    for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++)
        if ((*words[w].to = PyUnicode_InternFromString(words[w].text)) == NULL) return NULL;
    PyObject *builtins = PyImport_ImportModule("builtins");
    if (builtins == NULL) return NULL;
    builtin_sum = PyObject_GetAttrString(builtins, "sum");
    Py_DECREF(builtins);
    if (builtin_sum == NULL) return NULL;
    PyObject *array = PyImport_ImportModule("array");
    if (array == NULL) return NULL;
    one_double = PyObject_CallMethod(array, "array", "s[d]", "d", 0.0);
    Py_DECREF(array);
    if (one_double == NULL) return NULL;
    return PyModule_Create(&module);
}
