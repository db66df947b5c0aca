/* The in-memory affinity index's tables in C: kvgate.routing.affinity_core's native core.
 *
 * Same meaning as the pure-Python core (PyAffinityCore, which tests hold it to): per
 * deployment slot, an LRU list of the blocks it served, each with the whole second it was last
 * served; per block, a bitmask of the slots holding it. What the Python core keeps as dicts of
 * Python ints is kept here as flat arrays, so a lookup or an insert is a probe into a
 * contiguous table instead of a chase through int and dict-entry objects; that is the gain
 * (issue 15: about 150 ns of dict work per link in Python).
 *
 * Layout:
 *   nodes   one per (slot, block) entry: hash, tick, LRU prev/next within its slot, slot, block
 *   ntab    open-addressed (linear probing) table of node indices keyed by (slot, hash)
 *   blocks  one per distinct hash: hash, holder count, `words` 64-bit words of holder bits
 *   btab    open-addressed table of block indices keyed by hash
 *   lanes   per slot: LRU head (oldest), tail (newest), entry count
 * Tables stay at most half full and grow by doubling; deletions shift entries back (no
 * tombstones). Freed nodes and blocks go to free lists and are reused.
 *
 * Single-threaded by design: the event loop is the only caller, and every method runs with
 * the GIL held from start to end (no Python code is called back while tables are changing).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "_native.h"

#define NIL ((int32_t)-1)
#define NO_TICK ((int64_t)1 << 62)
/* Marks the kept run's entries while a record runs (a tick record refuses: see Core_record). */
#define KEPT INT64_MIN
#define GOLDEN 0x9E3779B97F4A7C15ULL
/* How many links ahead record and match start loading table slots. */
#define PREFETCH_LINKS 8

typedef struct {
    uint64_t hash;
    int64_t tick;
    int32_t prev, next; /* LRU neighbours in the slot's lane; next doubles as the free list */
    int32_t slot, block;
} Node;

typedef struct {
    int32_t head, tail; /* head: least recently served */
    Py_ssize_t count;
} Lane;

/* An open-addressed table of entry indices (NIL: empty), `mask + 1` a power of two. */
typedef struct {
    int32_t *entries;
    uint64_t mask;
} Table;

typedef struct {
    PyObject_HEAD
    Py_ssize_t max_per_slot;
    Node *nodes;
    int32_t nodes_cap, nodes_top, free_node;
    Py_ssize_t live_nodes;
    Table ntab;
    uint64_t *bhash;
    int32_t *bcount;
    uint64_t *bmask;
    int32_t blocks_cap, blocks_top, free_block;
    Py_ssize_t live_blocks;
    int32_t words;
    Table btab;
    Lane *lanes;
    int32_t lanes_cap;
    int32_t *scratch_counts; /* words * 64 entries */
    uint64_t *scratch_alive; /* words entries */
} Core;

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline uint64_t node_home(uint64_t hash, int32_t slot) {
    return mix64(hash ^ ((uint64_t)(uint32_t)(slot + 1) * GOLDEN));
}

/* True when `home` lies in the cyclic range (hole, probe]: the entry at `probe` must stay. */
static inline int in_cyclic_range(uint64_t hole, uint64_t probe, uint64_t home) {
    return hole <= probe ? (hole < home && home <= probe) : (home > hole || home <= probe);
}

static int32_t *new_table(uint64_t cap) {
    int32_t *table = PyMem_Malloc(cap * sizeof(int32_t));
    if (table != NULL) memset(table, 0xff, cap * sizeof(int32_t)); /* every entry NIL */
    return table;
}

/* -- the two tables: (slot, hash) -> node and hash -> block --------------------------------- */

typedef uint64_t (*HomeFn)(const Core *c, int32_t entry);

static inline uint64_t node_entry_home(const Core *c, int32_t n) {
    return node_home(c->nodes[n].hash, c->nodes[n].slot);
}

static inline uint64_t block_entry_home(const Core *c, int32_t b) {
    return mix64(c->bhash[b]);
}

static int32_t node_find(Core *c, uint64_t hash, int32_t slot, uint64_t *pos) {
    uint64_t i = node_home(hash, slot) & c->ntab.mask;
    for (;;) {
        int32_t n = c->ntab.entries[i];
        if (n == NIL || (c->nodes[n].hash == hash && c->nodes[n].slot == slot)) {
            *pos = i;
            return n;
        }
        i = (i + 1) & c->ntab.mask;
    }
}

/* `home`: mix64(hash), where the caller has it. */
static int32_t block_find_from(Core *c, uint64_t hash, uint64_t home, uint64_t *pos) {
    uint64_t i = home & c->btab.mask;
    for (;;) {
        int32_t b = c->btab.entries[i];
        if (b == NIL || c->bhash[b] == hash) {
            *pos = i;
            return b;
        }
        i = (i + 1) & c->btab.mask;
    }
}

static int32_t block_find(Core *c, uint64_t hash, uint64_t *pos) {
    return block_find_from(c, hash, mix64(hash), pos);
}

/* Empty position `hole`, shifting back the entries after it that probing would no longer
 * reach (no tombstones). */
static inline void table_delete_at(const Core *c, Table *t, uint64_t hole, HomeFn home) {
    uint64_t probe = hole;
    for (;;) {
        probe = (probe + 1) & t->mask;
        int32_t entry = t->entries[probe];
        if (entry == NIL) break;
        if (!in_cyclic_range(hole, probe, home(c, entry) & t->mask)) {
            t->entries[hole] = entry;
            hole = probe;
        }
    }
    t->entries[hole] = NIL;
}

/* Keep the table at most a quarter full once it holds `used + 1` entries: double and rehash.
 * NOTE: a quarter, not a half: a probe that meets another entry reads that entry's node or
 * block (a cache miss on tables far larger than the caches); at a quarter a miss meets 0.4 of
 * them on average instead of 1.5 (a cold 128-link record at 256 deployments 21 -> 16 us),
 * for twice the tables' memory: 16-32 bytes per entry in each instead of 8-16 (a node is 40). */
static inline int table_reserve(const Core *c, Table *t, Py_ssize_t used, HomeFn home) {
    uint64_t cap = t->mask + 1;
    if ((uint64_t)(used + 1) * 4 <= cap) return 0;
    uint64_t new_mask = cap * 2 - 1;
    int32_t *entries = new_table(cap * 2);
    if (entries == NULL) return -1;
    for (uint64_t i = 0; i < cap; i++) {
        int32_t entry = t->entries[i];
        if (entry == NIL) continue;
        uint64_t j = home(c, entry) & new_mask;
        while (entries[j] != NIL) j = (j + 1) & new_mask;
        entries[j] = entry;
    }
    PyMem_Free(t->entries);
    t->entries = entries;
    t->mask = new_mask;
    return 0;
}

/* -- arenas -------------------------------------------------------------------------------- */

static int grow_nodes(Core *c) {
    if (c->free_node != NIL || c->nodes_top < c->nodes_cap) return 0;
    if (c->nodes_cap > INT32_MAX / 2) {
        PyErr_SetString(PyExc_MemoryError, "affinity index: too many entries");
        return -1;
    }
    int32_t cap = c->nodes_cap * 2;
    Node *nodes = PyMem_Realloc(c->nodes, (size_t)cap * sizeof(Node));
    if (nodes == NULL) return -1;
    c->nodes = nodes;
    c->nodes_cap = cap;
    return 0;
}

static int32_t take_node(Core *c) {
    int32_t n = c->free_node;
    if (n != NIL) {
        c->free_node = c->nodes[n].next;
        return n;
    }
    return c->nodes_top++;
}

static int grow_blocks(Core *c) {
    if (c->free_block != NIL || c->blocks_top < c->blocks_cap) return 0;
    if (c->blocks_cap > INT32_MAX / 2) {
        PyErr_SetString(PyExc_MemoryError, "affinity index: too many blocks");
        return -1;
    }
    size_t cap = (size_t)c->blocks_cap * 2;
    uint64_t *bhash = PyMem_Realloc(c->bhash, cap * sizeof(uint64_t));
    if (bhash == NULL) return -1;
    c->bhash = bhash;
    int32_t *bcount = PyMem_Realloc(c->bcount, cap * sizeof(int32_t));
    if (bcount == NULL) return -1;
    c->bcount = bcount;
    uint64_t *bmask = PyMem_Realloc(c->bmask, cap * (size_t)c->words * sizeof(uint64_t));
    if (bmask == NULL) return -1;
    c->bmask = bmask;
    c->blocks_cap = (int32_t)cap;
    return 0;
}

/* Room for holder bits of `slot` and a lane for it. */
static int reserve_slot(Core *c, int32_t slot) {
    if (slot >= c->lanes_cap) {
        int32_t cap = c->lanes_cap;
        while (cap <= slot) cap *= 2;
        Lane *lanes = PyMem_Realloc(c->lanes, (size_t)cap * sizeof(Lane));
        if (lanes == NULL) return -1;
        for (int32_t s = c->lanes_cap; s < cap; s++) {
            lanes[s].head = lanes[s].tail = NIL;
            lanes[s].count = 0;
        }
        c->lanes = lanes;
        c->lanes_cap = cap;
    }
    if (slot < c->words * 64) return 0;
    int32_t words = slot / 64 + 1;
    uint64_t *bmask = PyMem_Calloc((size_t)c->blocks_cap * (size_t)words, sizeof(uint64_t));
    int32_t *counts = PyMem_Calloc((size_t)words * 64, sizeof(int32_t));
    uint64_t *alive = PyMem_Calloc((size_t)words, sizeof(uint64_t));
    if (bmask == NULL || counts == NULL || alive == NULL) {
        PyMem_Free(bmask);
        PyMem_Free(counts);
        PyMem_Free(alive);
        PyErr_NoMemory();
        return -1;
    }
    for (int32_t b = 0; b < c->blocks_top; b++)
        memcpy(bmask + (size_t)b * words, c->bmask + (size_t)b * c->words,
               (size_t)c->words * sizeof(uint64_t));
    PyMem_Free(c->bmask);
    PyMem_Free(c->scratch_counts);
    PyMem_Free(c->scratch_alive);
    c->bmask = bmask;
    c->scratch_counts = counts;
    c->scratch_alive = alive;
    c->words = words;
    return 0;
}

/* -- lanes --------------------------------------------------------------------------------- */

static inline void lane_unlink(Core *c, int32_t n) {
    Node *node = &c->nodes[n];
    Lane *lane = &c->lanes[node->slot];
    if (node->prev != NIL) c->nodes[node->prev].next = node->next;
    else lane->head = node->next;
    if (node->next != NIL) c->nodes[node->next].prev = node->prev;
    else lane->tail = node->prev;
    lane->count--;
}

static inline void lane_append(Core *c, int32_t n) {
    Node *node = &c->nodes[n];
    Lane *lane = &c->lanes[node->slot];
    node->next = NIL;
    node->prev = lane->tail;
    if (lane->tail != NIL) c->nodes[lane->tail].next = n;
    else lane->head = n;
    lane->tail = n;
    lane->count++;
}

/* Put n just before `anchor` in its lane (NIL: at the newest end). */
static inline void lane_insert(Core *c, int32_t n, int32_t anchor) {
    if (anchor == NIL) {
        lane_append(c, n);
        return;
    }
    Node *node = &c->nodes[n];
    Lane *lane = &c->lanes[node->slot];
    node->next = anchor;
    node->prev = c->nodes[anchor].prev;
    if (node->prev != NIL) c->nodes[node->prev].next = n;
    else lane->head = n;
    c->nodes[anchor].prev = n;
    lane->count++;
}

/* -- entries ------------------------------------------------------------------------------- */

static void remove_node(Core *c, int32_t n) {
    uint64_t pos;
    Node node = c->nodes[n];
    node_find(c, node.hash, node.slot, &pos);
    table_delete_at(c, &c->ntab, pos, node_entry_home);
    lane_unlink(c, n);
    int32_t b = node.block;
    c->bmask[(size_t)b * c->words + (node.slot >> 6)] &= ~((uint64_t)1 << (node.slot & 63));
    if (--c->bcount[b] == 0) {
        block_find(c, node.hash, &pos);
        table_delete_at(c, &c->btab, pos, block_entry_home);
        c->bhash[b] = (uint64_t)(uint32_t)c->free_block;
        c->free_block = b;
        c->live_blocks--;
    }
    c->nodes[n].next = c->free_node;
    c->free_node = n;
    c->live_nodes--;
}

/* Move (slot, hash) just before `anchor` in the slot's lane (NIL: to the newest end), adding
 * it if new; an entry of the kept run (ticked KEPT, see Core_record) stays where it is. */
static int touch(Core *c, int32_t slot, uint64_t hash, int64_t tick, int32_t anchor) {
    uint64_t pos;
    int32_t n = node_find(c, hash, slot, &pos);
    if (n != NIL) {
        if (c->nodes[n].tick == KEPT) return 0;
        lane_unlink(c, n);
        c->nodes[n].tick = tick;
        lane_insert(c, n, anchor);
        return 0;
    }
    uint64_t node_mask = c->ntab.mask;
    if (table_reserve(c, &c->ntab, c->live_nodes, node_entry_home) < 0
            || table_reserve(c, &c->btab, c->live_blocks, block_entry_home) < 0
            || grow_nodes(c) < 0 || grow_blocks(c) < 0) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        return -1;
    }
    if (c->ntab.mask != node_mask) node_find(c, hash, slot, &pos); /* the table grew */
    uint64_t bpos;
    int32_t b = block_find(c, hash, &bpos);
    if (b == NIL) {
        if (c->free_block != NIL) {
            b = c->free_block;
            c->free_block = (int32_t)c->bhash[b];
        } else {
            b = c->blocks_top++;
        }
        c->bhash[b] = hash;
        c->bcount[b] = 0;
        memset(c->bmask + (size_t)b * c->words, 0, (size_t)c->words * sizeof(uint64_t));
        c->btab.entries[bpos] = b;
        c->live_blocks++;
    }
    c->bmask[(size_t)b * c->words + (slot >> 6)] |= (uint64_t)1 << (slot & 63);
    c->bcount[b]++;
    n = take_node(c);
    Node *node = &c->nodes[n];
    node->hash = hash;
    node->tick = tick;
    node->slot = slot;
    node->block = b;
    c->ntab.entries[pos] = n;
    c->live_nodes++;
    lane_insert(c, n, anchor);
    return 0;
}

/* -- Python methods ------------------------------------------------------------------------ */

/* PyLong_AsUnsignedLongLong's value and errors (TypeError, OverflowError for a negative int
 * or one over 64 bits) without its general path for the common case: on CPython 3.11 read
 * from the digits (small_u64); elsewhere the masked conversion once the int is known to fit
 * (the general one goes through _PyLong_AsByteArray, about 20 ns a link, a tenth of
 * recording one). */
static inline uint64_t hash_of(PyObject *item) {
    uint64_t hash;
    if (small_u64(item, &hash)) return hash;
    if (PyLong_CheckExact(item) && _PyLong_Sign(item) >= 0 && _PyLong_NumBits(item) <= 64)
        return PyLong_AsUnsignedLongLongMask(item);
    return PyLong_AsUnsignedLongLong(item);
}

static int parse_slot(PyObject *value, int32_t *slot) {
    long s = PyLong_AsLong(value);
    if (s == -1 && PyErr_Occurred()) return -1;
    if (s < 0 || s > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "affinity index: slot out of range");
        return -1;
    }
    *slot = (int32_t)s;
    return 0;
}

/* A FASTCALL method's arguments when the first is a slot: their number, then the slot. */
static int parse_slot_call(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected,
                           const char *usage, int32_t *slot) {
    if (nargs != expected) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    return parse_slot(args[0], slot);
}

/* The last `count` entries of the lane get `tick` (the kept run, which stays at the end). */
static void set_ticks(Core *c, const Lane *lane, Py_ssize_t count, int64_t tick) {
    for (int32_t n = lane->tail; count > 0; n = c->nodes[n].prev, count--) c->nodes[n].tick = tick;
}

static PyObject *Core_record(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    int32_t slot;
    if (parse_slot_call(args, nargs, 3, "record(slot, hashes, tick)", &slot) < 0) return NULL;
    int64_t tick = PyLong_AsLongLong(args[2]);
    if (tick == -1 && PyErr_Occurred()) return NULL;
    if (tick == KEPT) {
        PyErr_SetString(PyExc_OverflowError, "affinity index: tick out of range");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(args[1], "hashes must be a sequence");
    if (fast == NULL) return NULL;
    Py_ssize_t num = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    /* Every hash converted before anything changes: a bad one leaves the index as it was. */
    uint64_t stack_hashes[256];
    uint64_t *hashes = num <= 256 ? stack_hashes : PyMem_Malloc((size_t)num * sizeof(uint64_t));
    if (hashes == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < num; i++) {
        hashes[i] = hash_of(items[i]);
        if (hashes[i] == (uint64_t)-1 && PyErr_Occurred()) goto fail;
    }
    if (reserve_slot(c, slot) < 0) goto fail;
    /* Newest-last in LRU order, children before parents: when the bound evicts, a prompt's
     * tail goes before its head. A hash listed twice ends where its first listing puts it.
     * NOTE: that order is the slot's lane ending hashes[k-1], ..., hashes[1], hashes[0]. When
     * the lane already ends with the first `kept` of them so (a shared system prompt, a
     * conversation's earlier turns, recorded for this slot last time), moving each to the end
     * again would leave them where they are: they keep their places (their ticks are set),
     * and the other hashes go just before them, in the order moving each to the end would
     * give. A request then costs a step along the lane per kept link, not a table probe and
     * a move (most links of a long shared prompt). */
    Lane *lane = &c->lanes[slot];
    Py_ssize_t kept = 0;
    int32_t anchor = NIL; /* the kept run's oldest entry */
    for (int32_t n = lane->tail; n != NIL && kept < num && c->nodes[n].hash == hashes[kept];
            n = c->nodes[n].prev) {
        c->nodes[n].tick = KEPT;
        anchor = n;
        kept++;
    }
    for (Py_ssize_t i = num - 1; i >= kept; i--) {
        /* The links a few steps on: their table slots start loading while this one is
         * written (a prompt's links are scattered over tables far larger than the caches). */
        if (i >= PREFETCH_LINKS) {
            uint64_t next = hashes[i - PREFETCH_LINKS];
            __builtin_prefetch(&c->ntab.entries[node_home(next, slot) & c->ntab.mask]);
            __builtin_prefetch(&c->btab.entries[mix64(next) & c->btab.mask]);
        }
        if (touch(c, slot, hashes[i], tick, anchor) < 0) {
            set_ticks(c, lane, kept, tick);
            goto fail;
        }
    }
    set_ticks(c, lane, kept, tick);
    while (lane->count > c->max_per_slot) remove_node(c, lane->head);
    if (hashes != stack_hashes) PyMem_Free(hashes);
    Py_DECREF(fast);
    Py_RETURN_NONE;
fail:
    if (hashes != stack_hashes) PyMem_Free(hashes);
    Py_DECREF(fast);
    return NULL;
}

static PyObject *Core_prepare_query(Core *c, PyObject *slots) {
    PyObject *fast = PySequence_Fast(slots, "slots must be a sequence");
    if (fast == NULL) return NULL;
    Py_ssize_t num = PySequence_Fast_GET_SIZE(fast);
    PyObject *query = PyBytes_FromStringAndSize(NULL, num * (Py_ssize_t)sizeof(int32_t));
    if (query == NULL) {
        Py_DECREF(fast);
        return NULL;
    }
    int32_t *out = (int32_t *)PyBytes_AS_STRING(query);
    for (Py_ssize_t i = 0; i < num; i++) {
        if (parse_slot(PySequence_Fast_GET_ITEM(fast, i), &out[i]) < 0) {
            Py_DECREF(query);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    return query;
}

/* A link read once for everything a match does with it: its hash where small_u64 reads it
 * exactly (else the lookup converts it again, with the errors), or a hint for prefetching
 * (any int's low 64 bits), and the hash's home in the block table. */
typedef struct {
    uint64_t hash, home;
    int exact, hinted;
} Link;

/* More than PREFETCH_LINKS, a power of two: link k's entry lives until link k is looked up. */
#define LINK_RING 16

static inline void read_link(PyObject *item, Link *link) {
    link->exact = small_u64(item, &link->hash);
    link->hinted = link->exact || PyLong_CheckExact(item);
    if (!link->exact) link->hash = link->hinted ? PyLong_AsUnsignedLongLongMask(item) : 0;
    link->home = mix64(link->hash);
}

static PyObject *Core_match(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "match(hashes, query from prepare_query)");
        return NULL;
    }
    const int32_t *slots = (const int32_t *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t num_slots = PyBytes_GET_SIZE(args[1]) / (Py_ssize_t)sizeof(int32_t);
    PyObject *fast = PySequence_Fast(args[0], "hashes must be a sequence");
    if (fast == NULL) return NULL;
    Py_ssize_t num = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    int32_t words = c->words, capacity = words * 64;
    uint64_t *alive = c->scratch_alive;
    int32_t *counts = c->scratch_counts;
    memset(alive, 0, (size_t)words * sizeof(uint64_t));
    int any = 0;
    for (Py_ssize_t q = 0; q < num_slots; q++) {
        int32_t s = slots[q];
        if (s < capacity) {
            alive[s >> 6] |= (uint64_t)1 << (s & 63);
            any = 1;
        }
    }
    /* alive: the queried slots holding every link so far; a slot dropping out at link k
     * matched k links. Link k + PREFETCH_LINKS is read (and its block-table slot starts
     * loading) while link k is looked up; link k + PREFETCH_LINKS / 2's hash and holder mask
     * start loading from that slot. */
    Link ring[LINK_RING];
    for (Py_ssize_t j = 0; j < num && j < PREFETCH_LINKS; j++)
        read_link(items[j], &ring[j & (LINK_RING - 1)]);
    Py_ssize_t k = 0;
    for (; k < num && any; k++) {
        if (k + PREFETCH_LINKS < num) {
            Link *ahead = &ring[(k + PREFETCH_LINKS) & (LINK_RING - 1)];
            read_link(items[k + PREFETCH_LINKS], ahead);
            if (ahead->hinted) __builtin_prefetch(&c->btab.entries[ahead->home & c->btab.mask]);
        }
        if (k + PREFETCH_LINKS / 2 < num) {
            const Link *near = &ring[(k + PREFETCH_LINKS / 2) & (LINK_RING - 1)];
            int32_t hinted_block = near->hinted ? c->btab.entries[near->home & c->btab.mask]
                                                : NIL;
            if (hinted_block != NIL) {
                __builtin_prefetch(&c->bhash[hinted_block]);
                __builtin_prefetch(&c->bmask[(size_t)hinted_block * (size_t)c->words]);
            }
        }
        const Link *link = &ring[k & (LINK_RING - 1)];
        uint64_t hash = link->hash;
        if (!link->exact) {
            hash = hash_of(items[k]);
            if (hash == (uint64_t)-1 && PyErr_Occurred()) {
                /* A value no block can have (negative, or over 64 bits): held by nobody. */
                if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                    Py_DECREF(fast);
                    return NULL;
                }
                PyErr_Clear();
                break;
            }
        }
        uint64_t pos;
        int32_t b = block_find_from(c, hash, link->exact ? link->home : mix64(hash), &pos);
        if (b == NIL) break;
        const uint64_t *mask = c->bmask + (size_t)b * words;
        any = 0;
        for (int32_t w = 0; w < words; w++) {
            uint64_t dropped = alive[w] & ~mask[w];
            while (dropped) {
                counts[w * 64 + __builtin_ctzll(dropped)] = (int32_t)k;
                dropped &= dropped - 1;
            }
            alive[w] &= mask[w];
            any |= alive[w] != 0;
        }
    }
    for (int32_t w = 0; w < words; w++) {
        uint64_t left = alive[w];
        while (left) {
            counts[w * 64 + __builtin_ctzll(left)] = (int32_t)k;
            left &= left - 1;
        }
    }
    Py_DECREF(fast);
    PyObject *result = PyList_New(num_slots);
    if (result == NULL) return NULL;
    for (Py_ssize_t q = 0; q < num_slots; q++) {
        int32_t s = slots[q];
        PyObject *value = PyLong_FromLong(s < capacity ? counts[s] : 0);
        if (value == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, q, value);
    }
    return result;
}

static PyObject *Core_expire(Core *c, PyObject *arg) {
    int64_t oldest_fresh = PyLong_AsLongLong(arg);
    if (oldest_fresh == -1 && PyErr_Occurred()) return NULL;
    int64_t oldest_left = NO_TICK;
    for (int32_t s = 0; s < c->lanes_cap; s++) {
        Lane *lane = &c->lanes[s];
        while (lane->head != NIL && c->nodes[lane->head].tick < oldest_fresh)
            remove_node(c, lane->head);
        if (lane->head != NIL && c->nodes[lane->head].tick < oldest_left)
            oldest_left = c->nodes[lane->head].tick;
    }
    return PyLong_FromLongLong(oldest_left);
}

static PyObject *Core_forget(Core *c, PyObject *arg) {
    int32_t slot;
    if (parse_slot(arg, &slot) < 0) return NULL;
    if (slot < c->lanes_cap)
        while (c->lanes[slot].head != NIL) remove_node(c, c->lanes[slot].head);
    Py_RETURN_NONE;
}

static PyObject *Core_served(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    int32_t slot;
    if (parse_slot_call(args, nargs, 2, "served(slot, hash)", &slot) < 0) return NULL;
    uint64_t hash = hash_of(args[1]);
    if (hash == (uint64_t)-1 && PyErr_Occurred()) {
        /* A value no block can have (negative, or over 64 bits) is simply not held. */
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    uint64_t pos;
    int32_t n = node_find(c, hash, slot, &pos);
    if (n == NIL) Py_RETURN_NONE;
    return PyLong_FromLongLong(c->nodes[n].tick);
}

static PyObject *Core_size(Core *c, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(c->live_nodes);
}

static PyObject *Core_memory_bytes(Core *c, PyObject *Py_UNUSED(ignored)) {
    size_t total = sizeof(Core) + (size_t)c->nodes_cap * sizeof(Node)
        + (c->ntab.mask + 1) * sizeof(int32_t) + (c->btab.mask + 1) * sizeof(int32_t)
        + (size_t)c->blocks_cap * (sizeof(uint64_t) + sizeof(int32_t)
                                   + (size_t)c->words * sizeof(uint64_t))
        + (size_t)c->lanes_cap * sizeof(Lane)
        + (size_t)c->words * (64 * sizeof(int32_t) + sizeof(uint64_t));
    return PyLong_FromSize_t(total);
}

static void Core_dealloc(Core *c) {
    PyMem_Free(c->nodes);
    PyMem_Free(c->ntab.entries);
    PyMem_Free(c->bhash);
    PyMem_Free(c->bcount);
    PyMem_Free(c->bmask);
    PyMem_Free(c->btab.entries);
    PyMem_Free(c->lanes);
    PyMem_Free(c->scratch_counts);
    PyMem_Free(c->scratch_alive);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static int Core_init(Core *c, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"max_blocks_per_slot", NULL};
    Py_ssize_t max_per_slot;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n", keywords, &max_per_slot)) return -1;
    if (max_per_slot < 0) {
        PyErr_SetString(PyExc_ValueError, "max_blocks_per_slot must be >= 0");
        return -1;
    }
    if (c->nodes != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "NativeAffinityCore is initialised once");
        return -1;
    }
    const int32_t nodes = 1024, tables = 2048, lanes = 8;
    c->max_per_slot = max_per_slot;
    c->nodes = PyMem_Malloc(nodes * sizeof(Node));
    c->ntab.entries = new_table(tables);
    c->bhash = PyMem_Malloc(nodes * sizeof(uint64_t));
    c->bcount = PyMem_Malloc(nodes * sizeof(int32_t));
    c->bmask = PyMem_Calloc(nodes, sizeof(uint64_t));
    c->btab.entries = new_table(tables);
    c->lanes = PyMem_Malloc(lanes * sizeof(Lane));
    c->scratch_counts = PyMem_Calloc(64, sizeof(int32_t));
    c->scratch_alive = PyMem_Calloc(1, sizeof(uint64_t));
    if (!c->nodes || !c->ntab.entries || !c->bhash || !c->bcount || !c->bmask || !c->btab.entries
            || !c->lanes
            || !c->scratch_counts || !c->scratch_alive) {
        PyErr_NoMemory();
        return -1; /* dealloc frees what was allocated */
    }
    c->nodes_cap = nodes;
    c->nodes_top = 0;
    c->free_node = NIL;
    c->ntab.mask = tables - 1;
    c->blocks_cap = nodes;
    c->blocks_top = 0;
    c->free_block = NIL;
    c->words = 1;
    c->btab.mask = tables - 1;
    for (int32_t s = 0; s < lanes; s++) {
        c->lanes[s].head = c->lanes[s].tail = NIL;
        c->lanes[s].count = 0;
    }
    c->lanes_cap = lanes;
    return 0;
}

static PyMethodDef Core_methods[] = {
    {"record", (PyCFunction)(void (*)(void))Core_record, METH_FASTCALL,
     "record(slot, hashes, tick): the slot served hashes at tick (LRU order, then the bound)"},
    {"prepare_query", (PyCFunction)Core_prepare_query, METH_O,
     "prepare_query(slots) -> query for match (packed slots)"},
    {"match", (PyCFunction)(void (*)(void))Core_match, METH_FASTCALL,
     "match(hashes, query) -> leading links of hashes each queried slot holds"},
    {"expire", (PyCFunction)Core_expire, METH_O,
     "expire(oldest_fresh) -> oldest tick left: drop entries served before oldest_fresh"},
    {"forget", (PyCFunction)Core_forget, METH_O, "forget(slot): drop every entry of the slot"},
    {"served", (PyCFunction)(void (*)(void))Core_served, METH_FASTCALL,
     "served(slot, hash) -> the tick the slot last served hash, or None"},
    {"size", (PyCFunction)Core_size, METH_NOARGS, "size() -> (slot, block) entries"},
    {"memory_bytes", (PyCFunction)Core_memory_bytes, METH_NOARGS,
     "memory_bytes() -> bytes allocated for the tables"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvgate.routing._affinity_native.NativeAffinityCore",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The affinity index's tables in C (see kvgate.routing.affinity_core).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_affinity_native",
    "The in-memory affinity index's tables in C.", -1, NULL,
};

PyMODINIT_FUNC PyInit__affinity_native(void) {
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "NativeAffinityCore", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
