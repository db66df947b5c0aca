/* The shared-memory affinity index's lookup and record in C: the kernel of
 * kvgate.routing.affinity_shm (``kvgate run --workers N``).
 *
 * Same table, same steps, same stores as the Python methods it stands in for
 * (SharedMemoryAffinityIndex._match_py / _record_py, which the tests hold it to byte for byte):
 * the layout and the concurrency rules are that module's docstring. Every access to the
 * segment is one aligned 8-byte load or store (atomic: another worker may write the same
 * words at any time), in the Python version's order; bucket searches read bytes, as its
 * ``mmap.find`` does. What the Python version spends per link (slicing, translating and
 * converting bytes to ints, an mmap.find call) is a few word loads here.
 *
 * Little-endian hosts only (a tick byte's place in its word): elsewhere the module refuses to
 * load and the Python methods serve.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_native.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#define KVGATE_SHM_UNSUPPORTED 1
#endif

#define SLOTS_PER_BUCKET 8
#define CHECK_MASK ((UINT64_C(1) << 24) - 1)
#define SECOND_MASK UINT64_C(0xFFFFFFFF)

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* the whole mapping, writable; held while the kernel lives */
    uint64_t *words;
    Py_ssize_t num_words;
    Py_ssize_t first_key, first_record, stride, tick_words, tick_bytes;
    uint64_t bucket_mask, model_tag;
    /* Scratch, tick_bytes + 1 bytes each (the last: untracked columns, always 0). */
    uint8_t *alive, *left, *probe_left;
    Py_ssize_t *outlived;
    Py_ssize_t *ends; /* at most one per tracked column + 2 */
    uint64_t *ticks;  /* tick_words: a record's tick words as one probe read them */
} Kernel;

static inline uint64_t load(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static inline void store(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

static inline uint64_t key_of(uint64_t block_hash, uint64_t model_tag) {
    uint64_t key = block_hash ^ model_tag;
    return key ? key : 1;
}

/* A tick byte written within the TTL: its quantum is at most max_age behind now's, mod 255. */
static inline int fresh(unsigned value, int tick, int max_age) {
    return value != 0 && (((tick - (int)value) % 255 + 255) % 255) <= max_age;
}

/* The key's slot, or -1: the bucket's first slot, else the first place its 8 bytes occur in
 * the bucket's 64 (mmap.find's answer: an occurrence straddling two keys means absent). */
static Py_ssize_t slot_of(Kernel *k, uint64_t key) {
    Py_ssize_t bucket = (Py_ssize_t)(key & k->bucket_mask) * SLOTS_PER_BUCKET;
    uint64_t *keys = k->words + k->first_key + bucket;
    if (load(keys) == key) return bucket;
    const uint8_t *bytes = (const uint8_t *)keys;
    uint8_t pattern[8];
    memcpy(pattern, &key, 8);
    for (int offset = 0; offset <= 8 * SLOTS_PER_BUCKET - 8; offset++) {
        if (bytes[offset] == pattern[0] && memcmp(bytes + offset, pattern, 8) == 0) {
            return offset & 7 ? -1 : bucket + offset / 8;
        }
    }
    return -1;
}

/* left = alive & (1 per column holding the block fresh); whether left equals alive. */
static int probe(Kernel *k, uint64_t block_hash, int64_t oldest_fresh, int tick, int max_age,
                 const uint8_t *alive, uint8_t *left) {
    uint64_t key = key_of(block_hash, k->model_tag);
    Py_ssize_t slot = slot_of(k, key);
    int held = 0;
    if (slot >= 0) {
        uint64_t *record = k->words + k->first_record + slot * k->stride;
        uint64_t meta = load(record);
        for (Py_ssize_t w = 0; w < k->tick_words; w++) k->ticks[w] = load(record + 1 + w);
        /* Re-read the key after the record: a writer replacing the slot clears it first. */
        held = load(k->words + k->first_key + slot) == key
               && (meta & CHECK_MASK) == key >> 40 && (int64_t)(meta >> 32) >= oldest_fresh;
    }
    int same = 1;
    /* Eight columns at a time: once most have dropped out, their words are all zero. */
    for (Py_ssize_t w = 0; w < k->tick_words; w++) {
        uint64_t alive_word, left_word = 0;
        memcpy(&alive_word, alive + 8 * w, 8);
        if (held && alive_word) {
            uint64_t ticks = k->ticks[w];
            for (int b = 0; b < 8; b++) {
                if ((alive_word >> (8 * b)) & 0xFF
                    && fresh((unsigned)(ticks >> (8 * b)) & 0xFF, tick, max_age))
                    left_word |= (alive_word >> (8 * b) & 0xFF) << (8 * b);
            }
        }
        memcpy(left + 8 * w, &left_word, 8);
        same &= left_word == alive_word;
    }
    left[k->tick_bytes] = 0; /* untracked columns: never alive */
    same &= alive[k->tick_bytes] == 0;
    return same;
}

static int any_alive(const uint8_t *alive, Py_ssize_t n) {
    for (Py_ssize_t b = 0; b < n; b++)
        if (alive[b]) return 1;
    return 0;
}

/* A sequence's item as the low 64 bits of an int (the Python version's ``& 2**64 - 1``). */
static int hash_at(PyObject *item, uint64_t *out) {
    if (small_u64(item, out)) return 0;
    if (!PyLong_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "block hashes must be ints");
        return -1;
    }
    *out = (uint64_t)PyLong_AsUnsignedLongLongMask(item);
    return *out == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

/* The sequence's hashes as an array (PyMem_Free it), converted before anything is read or
 * stored, so bad input changes nothing; NULL with an exception set. */
static uint64_t *hashes_of(PyObject *sequence, Py_ssize_t *num) {
    PyObject *fast = PySequence_Fast(sequence, "hashes must be a sequence");
    if (fast == NULL) return NULL;
    *num = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    uint64_t *values = PyMem_Malloc(sizeof(uint64_t) * (size_t)(*num ? *num : 1));
    if (values == NULL) {
        PyErr_NoMemory();
    } else {
        for (Py_ssize_t i = 0; i < *num; i++) {
            if (hash_at(items[i], &values[i]) < 0) {
                PyMem_Free(values);
                values = NULL;
                break;
            }
        }
    }
    Py_DECREF(fast);
    return values;
}

static int parse_clock(PyObject *const *args, int64_t *oldest_fresh, int *tick, int *max_age) {
    long long oldest = PyLong_AsLongLong(args[0]);
    long t = PyLong_AsLong(args[1]), age = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) return -1;
    if (t < 1 || t > 255 || age < 0) {
        PyErr_SetString(PyExc_ValueError, "tick must be 1..255 and max_age >= 0");
        return -1;
    }
    *oldest_fresh = oldest;
    *tick = (int)t;
    *max_age = (int)age;
    return 0;
}

/* match(hashes, columns, oldest_fresh, tick, max_age) -> leading links each column holds. */
static PyObject *Kernel_match(Kernel *k, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "match takes 5 arguments");
        return NULL;
    }
    int64_t oldest_fresh;
    int tick, max_age;
    if (parse_clock(args + 2, &oldest_fresh, &tick, &max_age) < 0) return NULL;
    PyObject *columns = PySequence_Fast(args[1], "columns must be a sequence");
    if (columns == NULL) return NULL;
    PyObject *out = NULL;
    Py_ssize_t num_links = 0, num_columns = PySequence_Fast_GET_SIZE(columns);
    PyObject **cols = PySequence_Fast_ITEMS(columns);
    Py_ssize_t *picked = NULL;
    uint64_t *values = hashes_of(args[0], &num_links);
    if (values == NULL) goto done;
    picked = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(num_columns ? num_columns : 1));
    if (picked == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(k->alive, 0, (size_t)k->tick_bytes + 1);
    for (Py_ssize_t c = 0; c < num_columns; c++) {
        Py_ssize_t column = PyLong_AsSsize_t(cols[c]);
        if (column == -1 && PyErr_Occurred()) goto done;
        if (column < 0 || column > k->tick_bytes) {
            PyErr_SetString(PyExc_ValueError, "column out of range");
            goto done;
        }
        picked[c] = column;
        if (column < k->tick_bytes) k->alive[column] = 1;
    }
    /* The Python version's loop: gallop while every alive column holds the links, bisect to
     * the first link one lacks, note who is left and where the others stopped. */
    for (Py_ssize_t b = 0; b <= k->tick_bytes; b++) k->outlived[b] = k->alive[b];
    Py_ssize_t num_ends = 1, held = 0;
    k->ends[0] = 0;
    while (any_alive(k->alive, k->tick_bytes) && held < num_links) {
        Py_ssize_t step = 1, lost_at = 0;
        while (!lost_at && held < num_links) {
            Py_ssize_t at = held + step < num_links ? held + step : num_links;
            if (probe(k, values[at - 1], oldest_fresh, tick, max_age, k->alive, k->left)) {
                held = at;
                step *= 2;
            } else {
                lost_at = at;
            }
        }
        if (!lost_at) break;
        while (lost_at - held > 1) {
            Py_ssize_t middle = (held + lost_at) / 2;
            if (probe(k, values[middle - 1], oldest_fresh, tick, max_age, k->alive,
                      k->probe_left)) {
                held = middle;
            } else {
                lost_at = middle;
                memcpy(k->left, k->probe_left, (size_t)k->tick_bytes + 1);
            }
        }
        for (Py_ssize_t b = 0; b <= k->tick_bytes; b++) k->outlived[b] += k->left[b];
        k->ends[num_ends++] = held;
        memcpy(k->alive, k->left, (size_t)k->tick_bytes + 1);
        held = lost_at;
    }
    k->ends[num_ends++] = held;
    for (Py_ssize_t c = 0; c < num_columns; c++) picked[c] = k->ends[k->outlived[picked[c]]];
    out = int_list(picked, num_columns);
done:
    PyMem_Free(values);
    PyMem_Free(picked);
    Py_DECREF(columns);
    return out;
}

/* Zero the record's expired tick bytes (all of them when its newest second expired). */
static void keep_fresh(Kernel *k, uint64_t *record, int all_expired, int tick, int max_age) {
    for (Py_ssize_t w = 0; w < k->tick_words; w++) {
        uint64_t ticks = load(record + 1 + w), kept = 0;
        if (!all_expired) {
            for (int b = 0; b < 8; b++) {
                unsigned byte = (unsigned)(ticks >> (8 * b)) & 0xFF;
                if (fresh(byte, tick, max_age)) kept |= (uint64_t)byte << (8 * b);
            }
        }
        if (kept != ticks) store(record + 1 + w, kept);
    }
}

/* record(column, hashes, now_s, oldest_fresh, tick, max_age): the column served the chain. */
static PyObject *Kernel_record(Kernel *k, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "record takes 6 arguments");
        return NULL;
    }
    Py_ssize_t column = PyLong_AsSsize_t(args[0]);
    long long now_s = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (column < 0 || column >= k->tick_bytes) {
        PyErr_SetString(PyExc_ValueError, "column out of range");
        return NULL;
    }
    int64_t oldest_fresh;
    int tick, max_age;
    if (parse_clock(args + 3, &oldest_fresh, &tick, &max_age) < 0) return NULL;
    Py_ssize_t num_links = 0;
    uint64_t *hashes = hashes_of(args[1], &num_links);
    if (hashes == NULL) return NULL;
    Py_ssize_t own_word = 1 + column / 8;
    int shift = 8 * (int)(column % 8);
    uint64_t own_clear = ~(UINT64_C(0xFF) << shift), own_tick = (uint64_t)tick << shift;
    uint64_t second = (uint64_t)now_s & SECOND_MASK;
    for (Py_ssize_t depth = 0; depth < num_links; depth++) {
        uint64_t block_hash = hashes[depth];
        /* The deeper the link, the lower its rank: a bucket evicts tails before heads. */
        uint64_t rank = depth < 255 ? (uint64_t)(255 - depth) << 24 : 0;
        uint64_t key = key_of(block_hash, k->model_tag);
        uint64_t meta = second << 32 | rank | key >> 40;
        Py_ssize_t bucket = (Py_ssize_t)(key & k->bucket_mask) * SLOTS_PER_BUCKET;
        Py_ssize_t slot = load(k->words + k->first_key + bucket) == key ? bucket
                                                                         : slot_of(k, key);
        if (slot >= 0) {
            uint64_t *record = k->words + k->first_record + slot * k->stride;
            uint64_t old_meta = load(record), own = load(record + own_word);
            if (old_meta >> 32 != second) {
                keep_fresh(k, record, (int64_t)(old_meta >> 32) < oldest_fresh, tick, max_age);
                own = load(record + own_word);
            } else if (old_meta == meta && ((own >> shift) & 0xFF) == (uint64_t)tick) {
                continue; /* written this second already */
            }
            store(record + own_word, (own & own_clear) | own_tick);
            if (old_meta != meta) store(record, meta);
            continue;
        }
        /* The stalest slot: empty ones have meta 0; else the oldest second, then the lowest
         * rank (the deepest link); the first of equals. */
        uint64_t *first = k->words + k->first_record + bucket * k->stride;
        Py_ssize_t stalest = 0;
        uint64_t least = load(first);
        for (Py_ssize_t s = 1; s < SLOTS_PER_BUCKET; s++) {
            uint64_t m = load(first + s * k->stride);
            if (m < least) {
                least = m;
                stalest = s;
            }
        }
        slot = bucket + stalest;
        uint64_t *record = k->words + k->first_record + slot * k->stride;
        uint64_t *key_word = k->words + k->first_key + slot;
        store(key_word, 0); /* readers skip the slot while its record changes */
        for (Py_ssize_t w = 1; w < k->stride; w++) store(record + w, 0);
        store(record + own_word, own_tick);
        store(record, meta);
        store(key_word, key);
    }
    PyMem_Free(hashes);
    Py_RETURN_NONE;
}

static int Kernel_init(Kernel *k, PyObject *args, PyObject *kwds) {
    PyObject *buffer;
    Py_ssize_t first_key, first_record, tick_words, num_buckets;
    unsigned long long model_tag;
    static char *names[] = {"buffer", "first_key", "first_record", "tick_words", "num_buckets",
                            "model_tag", NULL};
    if (k->words != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ShmKernel is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnnnK", names, &buffer, &first_key,
                                     &first_record, &tick_words, &num_buckets, &model_tag))
        return -1;
    if (tick_words < 1 || num_buckets < 1 || (num_buckets & (num_buckets - 1)) || first_key < 0
        || first_record < 0) {
        PyErr_SetString(PyExc_ValueError, "bad table layout");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &k->view, PyBUF_WRITABLE) < 0) return -1;
    Py_ssize_t slots = num_buckets * SLOTS_PER_BUCKET, stride = 1 + tick_words;
    Py_ssize_t num_words = k->view.len / 8;
    if ((uintptr_t)k->view.buf % 8 || first_key + slots > num_words
        || first_record + slots * stride > num_words) {
        PyBuffer_Release(&k->view);
        PyErr_SetString(PyExc_ValueError, "the table does not fit the buffer");
        return -1;
    }
    k->num_words = num_words;
    k->first_key = first_key;
    k->first_record = first_record;
    k->tick_words = tick_words;
    k->tick_bytes = 8 * tick_words;
    k->stride = stride;
    k->bucket_mask = (uint64_t)num_buckets - 1;
    k->model_tag = (uint64_t)model_tag;
    size_t bytes = (size_t)k->tick_bytes + 1;
    k->alive = PyMem_Calloc(bytes, 3);
    k->outlived = PyMem_Calloc(bytes, sizeof(Py_ssize_t));
    k->ends = PyMem_Calloc(bytes + 2, sizeof(Py_ssize_t));
    k->ticks = PyMem_Calloc((size_t)tick_words, sizeof(uint64_t));
    if (k->alive == NULL || k->outlived == NULL || k->ends == NULL || k->ticks == NULL) {
        PyBuffer_Release(&k->view);
        PyErr_NoMemory();
        return -1;
    }
    k->left = k->alive + bytes;
    k->probe_left = k->alive + 2 * bytes;
    k->words = (uint64_t *)k->view.buf;
    return 0;
}

static void Kernel_dealloc(Kernel *k) {
    if (k->words != NULL) PyBuffer_Release(&k->view);
    PyMem_Free(k->alive);
    PyMem_Free(k->outlived);
    PyMem_Free(k->ends);
    PyMem_Free(k->ticks);
    Py_TYPE(k)->tp_free((PyObject *)k);
}

static PyObject *Kernel_uninitialised(Kernel *k) {
    PyErr_SetString(PyExc_RuntimeError, "ShmKernel.__init__ was not called");
    return NULL;
}

static PyObject *Kernel_match_checked(Kernel *k, PyObject *const *args, Py_ssize_t nargs) {
    return k->words == NULL ? Kernel_uninitialised(k) : Kernel_match(k, args, nargs);
}

static PyObject *Kernel_record_checked(Kernel *k, PyObject *const *args, Py_ssize_t nargs) {
    return k->words == NULL ? Kernel_uninitialised(k) : Kernel_record(k, args, nargs);
}

static PyMethodDef Kernel_methods[] = {
    {"match", (PyCFunction)(void (*)(void))Kernel_match_checked, METH_FASTCALL,
     "match(hashes, columns, oldest_fresh, tick, max_age, /): leading links per column"},
    {"record", (PyCFunction)(void (*)(void))Kernel_record_checked, METH_FASTCALL,
     "record(column, hashes, now_s, oldest_fresh, tick, max_age, /)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvgate.routing._shm_native.ShmKernel",
    .tp_basicsize = sizeof(Kernel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The shared-memory affinity table's match and record (affinity_shm.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Kernel_init,
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_methods = Kernel_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_shm_native",
    "The shared-memory affinity index's kernel (kvgate.routing.affinity_shm).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__shm_native(void) {
#ifdef KVGATE_SHM_UNSUPPORTED
    PyErr_SetString(PyExc_ImportError, "the shared-memory kernel needs a little-endian host");
    return NULL;
#else
    if (PyType_Ready(&KernelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "ShmKernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
#endif
}
