/* A whole decision of the predicted-TTFT scorer in one call: _floats_native's decide.
 *
 * Included by _floats_native.c (one translation unit: it uses that file's Items helpers,
 * best_indices, index_order, candidate_entry, tokens_object and ms_value). TTFTScorer.choose
 * (ttft_scorer.py) keeps the cost model, the tie rule and the explanation in Python, and calls
 * this for its common case instead: every deployment a candidate in the ledger's order, no
 * CPU-tier tokens, every KV size known or none (precise mode's per-candidate details are
 * merged into the explanation as in Python). It computes exactly what that Python does, the
 * same operations in the same order on the same doubles, so the same pick and the same
 * explanation; the tests hold it to the Python path (tests/routing/test_decide_native.py).
 *
 * NOTE (issue 15): at 64 deployments the Python decision took ~25 us per request, the largest
 * single part of what KV-aware routing adds to round robin: a dozen C passes, but each behind a
 * call, a list of indices and a float object per result. Here the passes share the loops and
 * the scratch memory. What stays Python is called back: the wait for KV space of a candidate
 * without room (Ledger.admission_wait_s; rare), the replicas' error and prefill slope (read
 * from their objects, for the one or few candidates that need them) and builtins.sum for the
 * fleet's mean placed tokens (its rounding is the Python version's on every release).
 */

/* Interned at import (see PyInit__floats_native). */
static PyObject *key_strategy, *key_outcome, *key_predicted_ttft, *key_runner_up,
    *key_candidates, *key_eviction, *key_wait, *attr_error, *attr_prefill, *attr_slope,
    *word_cold, *word_hit, *word_spill, *builtin_sum;

/* Python code runs during a decision (a wait's callback, the replicas' attributes, sum):
 * a list it changed must not be read through a stale pointer. Each list's items are fetched
 * again after such a call, and a list whose length changed is an error. (The arrays cannot
 * change size while their buffers are held; the ledger's callbacks change nothing.) */
static int items_recheck(Items *items, Py_ssize_t n) {
    if (items->fast == NULL) return 0;
    if (PySequence_Fast_GET_SIZE(items->fast) != n) {
        PyErr_SetString(PyExc_RuntimeError, "decide: a sequence changed during the decision");
        return -1;
    }
    items->items = PySequence_Fast_ITEMS(items->fast);
    return 0;
}

/* obj.name (.name2) as a double; -1.0 with an exception on failure. */
static double attr_double(PyObject *obj, PyObject *name, PyObject *name2) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) return -1.0;
    if (name2 != NULL) {
        PyObject *inner = PyObject_GetAttr(value, name2);
        Py_DECREF(value);
        if (inner == NULL) return -1.0;
        value = inner;
    }
    double out = value_at(value);
    Py_DECREF(value);
    return out;
}

typedef struct {
    const double *u, *g, *placed, *capacity;
    PyObject *replicas;
    double fair;
} Eviction;

/* TTFTScorer._eviction_s for candidate i (every size known); -1.0 with an exception. */
static double eviction_s(const Eviction *e, Py_ssize_t i) {
    double capacity = e->capacity[i];
    if (isinf(capacity)) return 0.0;
    double over = e->placed[i] + e->g[i] - capacity;
    if (over <= 0.0) return 0.0;
    if (i >= PyList_GET_SIZE(e->replicas)) {
        PyErr_SetString(PyExc_RuntimeError, "decide: a list changed during the decision");
        return -1.0;
    }
    double slope = attr_double(PyList_GET_ITEM(e->replicas, i), attr_prefill, attr_slope);
    if (FAILED(slope)) return -1.0;
    double least = over < e->u[i] ? over : e->u[i]; /* min(uncached, over) */
    double larger = e->fair > capacity ? e->fair : capacity; /* max(capacity, fair) */
    return slope * least * (e->placed[i] + e->g[i]) / larger;
}

/* Keep those of tied[0..count) (ascending) with values[i] <= limit (le) or >= limit (!le). */
static Py_ssize_t keep_where(Py_ssize_t *tied, Py_ssize_t count, const double *values,
                             double limit, int le) {
    Py_ssize_t kept = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        double v = values[tied[k]];
        if (le ? v <= limit : v >= limit) tied[kept++] = tied[k];
    }
    return kept;
}

/* The least (sign 1) or greatest (sign -1) of values over tied[0..count), the first of
 * equals (floats.minimum / maximum over `among`). */
static double extreme_of(const Py_ssize_t *tied, Py_ssize_t count, const double *values,
                         double sign) {
    double best = values[tied[0]];
    for (Py_ssize_t k = 1; k < count; k++)
        if (sign * values[tied[k]] < sign * best) best = values[tied[k]];
    return best;
}

/* explain.shown_candidates(costs, pick, all_tied, lowest=True) into shown; their count. */
static Py_ssize_t shown_of(const double *costs, Py_ssize_t n, Py_ssize_t pick, int all_tied,
                           Py_ssize_t *shown) {
    enum { EXPLAINED = 8 }; /* explain.EXPLAINED_CANDIDATES */
    Py_ssize_t kept = 0;
    if (n <= EXPLAINED) {
        for (Py_ssize_t i = 0; i < n; i++) shown[kept++] = i;
        return kept;
    }
    if (all_tied) {
        for (Py_ssize_t i = 0; i < EXPLAINED - 1; i++) shown[kept++] = i;
    } else { /* the EXPLAINED - 1 least (floats.smallest; doubles: it cannot fail) */
        Items values = {0};
        values.doubles = costs;
        values.n = n;
        double key[EXPLAINED];
        kept = best_indices(&values, EXPLAINED - 1, 1.0, shown, key);
    }
    int has_pick = 0;
    for (Py_ssize_t k = 0; k < kept; k++) has_pick |= shown[k] == pick;
    if (!has_pick) shown[kept++] = pick;
    index_order(shown, kept);
    return kept;
}

/* d[key] = value, value's reference taken; -1 on failure. */
static int set_new(PyObject *d, PyObject *key, PyObject *value) {
    if (value == NULL) return -1;
    int status = PyDict_SetItem(d, key, value);
    Py_DECREF(value);
    return status;
}

/* The explanation's "candidates": TTFTScorer._shown_entries without details. */
static PyObject *entries_of(const Py_ssize_t *shown, Py_ssize_t count, PyObject *candidates,
                            Items *matched, Py_ssize_t n, const Items *uncached,
                            const double *costs, const double *evict, const double *wait,
                            const char *waits, PyObject *details) {
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t i = shown[k];
        PyObject *entry = candidate_entry(matched, uncached, costs[i], i);
        if (entry == NULL) goto fail;
        int failed = (evict[i] != 0.0 /* a zero eviction is not listed */
                && set_new(entry, key_eviction, PyFloat_FromDouble(ms_value(evict[i]))) < 0)
            || (waits[i] && set_new(entry, key_wait, PyFloat_FromDouble(ms_value(wait[i]))) < 0);
        if (!failed && details != NULL) { /* precise mode's extra fields, after the rest */
            PyObject *extra = PyDict_GetItemWithError(details, PyList_GET_ITEM(candidates, i));
            if (extra == NULL) {
                failed = PyErr_Occurred() != NULL;
            } else {
                Py_INCREF(extra); /* the merge may run Python code */
                int truth = PyObject_IsTrue(extra);
                failed = truth < 0 || (truth && PyDict_Merge(entry, extra, 1) < 0);
                Py_DECREF(extra);
            }
        }
        PyObject *id = failed ? NULL : PyObject_GetAttr(PyList_GET_ITEM(candidates, i), key_id);
        if (id == NULL || PyDict_SetItem(out, id, entry) < 0) failed = 1;
        Py_XDECREF(id);
        Py_DECREF(entry);
        /* the id's lookup, the details' hash and merge may have run Python code */
        if (failed || items_recheck(matched, n) < 0) goto fail;
        if (PyList_GET_SIZE(candidates) != n) {
            PyErr_SetString(PyExc_RuntimeError, "decide: a list changed during the decision");
            goto fail;
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

enum {
    D_NAME, D_CANDIDATES, D_PROMPT, D_MATCHED, D_BEST_MATCH, D_KNOWN, D_BASE, D_RATE, D_ROOM,
    D_TTFT_BASE, D_FACTOR, D_LEAST_HEADROOM, D_PLACED, D_CAPACITY, D_INVERSE, D_REPLICAS,
    D_WAIT, D_BLOCK, D_ROTATION, D_DETAILS, D_ARGS
};

/* decide(name, candidates, prompt_tokens, matched, best_match, known, base, rate, room,
 *        ttft_base, factor, least_headroom, placed, capacity, inverse_capacity, replicas,
 *        admission_wait_s, block_tokens, rotation, details, /)
 * -> (pick, rotation, explanation, the pick's uncached tokens): see TTFTScorer.choose. */
static PyObject *decide(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, D_ARGS, D_ARGS, "decide") < 0) return NULL;
    PyObject *candidates = args[D_CANDIDATES], *replicas = args[D_REPLICAS];
    if (!PyList_CheckExact(candidates) || !PyList_CheckExact(replicas)) {
        PyErr_SetString(PyExc_TypeError, "decide: candidates and replicas must be lists");
        return NULL;
    }
    PyObject *details = args[D_DETAILS] == Py_None ? NULL : args[D_DETAILS];
    if (details != NULL && !PyDict_Check(details)) {
        PyErr_SetString(PyExc_TypeError, "decide: details must be a dict or None");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(candidates);
    Items matched = {0}, known = {0}, base = {0}, rate = {0}, room = {0}, ttft_base = {0},
          placed = {0}, capacity = {0}, inverse = {0}, uncached_items = {0};
    PyObject *out = NULL, *explanation = NULL;
    Items *lists[] = {&matched, &known, &base, &rate, &room, &ttft_base, &placed, &capacity,
                      &inverse};
    double *scratch = NULL;
    Py_ssize_t *tied = NULL;
    int has_known = args[D_KNOWN] != Py_None;
    /* inverse_capacity None: no KV size is known (no room to check, nothing priced as an
     * eviction: least_headroom is inf, and the fill is the tokens placed), room None too. */
    int sized = args[D_INVERSE] != Py_None;
    /* After Python code ran: the lists' items again, the candidates and replicas unchanged. */
#define RECHECK()                                                                          \
    do {                                                                                   \
        for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++)                      \
            if (items_recheck(lists[l], n) < 0) goto done;                                 \
        if (PyList_GET_SIZE(candidates) != n || PyList_GET_SIZE(replicas) != n) {          \
            PyErr_SetString(PyExc_RuntimeError, "decide: a list changed during the decision"); \
            goto done;                                                                     \
        }                                                                                  \
    } while (0)
    if (numbers_open(args[D_MATCHED], &matched, "matched must be a sequence") < 0
            || (has_known && numbers_open(args[D_KNOWN], &known, "known must be a sequence") < 0)
            || numbers_open(args[D_BASE], &base, "base must be a sequence") < 0
            || numbers_open(args[D_RATE], &rate, "rate must be a sequence") < 0
            || (sized && numbers_open(args[D_ROOM], &room, "room must be a sequence") < 0)
            || numbers_open(args[D_TTFT_BASE], &ttft_base, "ttft_base must be a sequence") < 0
            || numbers_open(args[D_PLACED], &placed, "placed must be a sequence") < 0
            || numbers_open(args[D_CAPACITY], &capacity, "capacity must be a sequence") < 0
            || (sized
                && numbers_open(args[D_INVERSE], &inverse, "inverse must be a sequence") < 0))
        goto done;
    if (n == 0 || matched.n != n || (has_known && known.n != n) || base.n != n || rate.n != n
            || (sized && (room.n != n || inverse.n != n)) || ttft_base.n != n || placed.n != n
            || capacity.n != n || PyList_GET_SIZE(replicas) != n) {
        PyErr_SetString(PyExc_ValueError, "decide: one figure per candidate, and a candidate");
        goto done;
    }
    double prompt = value_at(args[D_PROMPT]), best_match = value_at(args[D_BEST_MATCH]);
    double factor = value_at(args[D_FACTOR]), least_headroom = value_at(args[D_LEAST_HEADROOM]);
    double block = value_at(args[D_BLOCK]);
    long long rotation = PyLong_AsLongLong(args[D_ROTATION]);
    if (FAILED(prompt) || FAILED(best_match) || FAILED(factor) || FAILED(least_headroom)
            || FAILED(block) || (rotation == -1 && PyErr_Occurred()))
        goto done;
    /* m u c g p cap fill evict wait: one allocation; the flags as chars after the doubles. */
    scratch = PyMem_Malloc((size_t)n * (9 * sizeof(double) + 2));
    tied = PyMem_Malloc((size_t)n * sizeof(Py_ssize_t));
    if (scratch == NULL || tied == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    double *m = scratch, *u = m + n, *c = u + n, *g = c + n, *p = g + n, *cap = p + n,
           *fill = cap + n, *evict = fill + n, *wait = evict + n;
    char *waits = (char *)(wait + n), *priced = waits + n;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = item_value(&matched, i), pl = item_value(&placed, i);
        double cp = item_value(&capacity, i);
        if (FAILED(v) || FAILED(pl) || FAILED(cp)) goto done;
        m[i] = v;
        p[i] = pl;
        cap[i] = cp;
        evict[i] = 0.0;
        waits[i] = priced[i] = 0;
    }
    int uniform = 1;
    for (Py_ssize_t i = 1; i < n && uniform; i++) uniform = m[i] == m[0];
    /* uncached: prompt - matched (prompt + matched x -1.0 in the Python: the same double) */
    for (Py_ssize_t i = 0; i < n; i++) u[i] = uniform ? prompt - m[0] : prompt + m[i] * -1.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double b = item_value(&base, i), r = item_value(&rate, i);
        if (FAILED(b) || FAILED(r)) goto done;
        c[i] = uniform ? b + r * (u[0] * factor) : b + (r * u[i]) * factor;
    }
    /* Room: only where the uncached tokens do not fit in what is left. */
    for (Py_ssize_t i = 0; sized && i < n; i++) {
        double left = item_value(&room, i);
        if (FAILED(left)) goto done;
        if (!(left < u[i])) continue;
        PyObject *position = PyLong_FromSsize_t(i), *tokens = PyFloat_FromDouble(u[i]);
        PyObject *w_obj = position == NULL || tokens == NULL ? NULL
            : PyObject_CallFunctionObjArgs(args[D_WAIT], position, tokens, NULL);
        Py_XDECREF(position);
        Py_XDECREF(tokens);
        if (w_obj == NULL) goto done;
        double w = value_at(w_obj);
        Py_DECREF(w_obj);
        if (FAILED(w)) goto done;
        if (w > 0.0) {
            wait[i] = w;
            waits[i] = 1;
            c[i] += w;
        }
        RECHECK();
    }
    /* growth: what the replica must hold beyond what it was sent within the horizon */
    for (Py_ssize_t i = 0; i < n; i++) {
        double k = has_known ? item_value(&known, i) : 0.0;
        if (FAILED(k)) goto done;
        g[i] = !has_known ? u[i] : (u[i] - k > 0.0 ? u[i] - k : 0.0);
    }
    double least_matched = m[0];
    for (Py_ssize_t i = 1; i < n && !uniform; i++)
        if (m[i] < least_matched) least_matched = m[i];
    if (prompt - least_matched > least_headroom) { /* somebody would evict */
        PyObject *total = PyObject_CallOneArg(builtin_sum, args[D_PLACED]);
        if (total == NULL) goto done;
        double sum = value_at(total);
        Py_DECREF(total);
        if (FAILED(sum)) goto done;
        Eviction e = {u, g, p, cap, replicas, sum / (double)n};
        Py_ssize_t first = 0;
        for (Py_ssize_t i = 1; i < n; i++)
            if (c[i] < c[first]) first = i;
        if ((evict[first] = eviction_s(&e, first)) == -1.0 && PyErr_Occurred()) goto done;
        priced[first] = 1;
        double bound = c[first] + evict[first];
        /* Only those already below the cheapest one's total that would overflow (the costs
         * before any eviction is added, as the Python reads them). */
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i == first || !(cap[i] + p[i] * -1.0 < g[i]) || !(c[i] <= bound)) continue;
            if ((evict[i] = eviction_s(&e, i)) == -1.0 && PyErr_Occurred()) goto done;
            priced[i] = 1;
        }
        for (Py_ssize_t i = 0; i < n; i++)
            if (priced[i]) c[i] += evict[i];
        RECHECK();
    }
    Py_ssize_t first = 0;
    for (Py_ssize_t i = 1; i < n; i++)
        if (c[i] < c[first]) first = i;
    double best = c[first];
    double error = attr_double(PyList_GET_ITEM(replicas, first), attr_error, NULL);
    if (FAILED(error)) goto done;
    RECHECK();
    double limit = best + 2.0 * error + fabs(best) * 1e-9; /* ttft_scorer._SAME */
    Py_ssize_t ties = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (c[i] <= limit) tied[ties++] = i;
    Py_ssize_t pick, count = ties;
    if (ties == 1) {
        pick = tied[0];
    } else {
        if (!uniform) { /* the most of the prompt held */
            double most = extreme_of(tied, count, m, -1.0);
            count = keep_where(tied, count, m, most - block, 0);
        }
        if (count > 1) { /* the emptiest KV (the share of it placed, with the growth) */
            for (Py_ssize_t i = 0; i < n; i++) {
                if (!sized) { /* each taken to hold the fleet's mean: ordered as placed */
                    fill[i] = p[i];
                    continue;
                }
                double inv = item_value(&inverse, i);
                if (FAILED(inv)) goto done;
                fill[i] = (has_known ? p[i] + g[i] * 1.0 : p[i]) * inv;
            }
            count = keep_where(tied, count, fill, extreme_of(tied, count, fill, 1.0), 1);
        }
        if (count > 1) {
            double lowest = extreme_of(tied, count, c, 1.0);
            count = keep_where(tied, count, c, lowest + fabs(lowest) * 1e-9, 1);
        }
        rotation += 1;
        pick = tied[rotation % count];
    }
    double chosen = c[pick], runner_up = chosen;
    if (n > 1) {
        c[pick] = INFINITY;
        runner_up = c[0];
        for (Py_ssize_t i = 1; i < n; i++)
            if (c[i] < runner_up) runner_up = c[i];
        c[pick] = chosen;
    }
    PyObject *outcome = best_match < 0.5 * (m[pick] + u[pick]) ? word_cold
        : m[pick] >= best_match - block ? word_hit : word_spill;
    double predicted = item_value(&ttft_base, pick), pick_rate = item_value(&rate, pick);
    if (FAILED(predicted) || FAILED(pick_rate)) goto done;
    predicted = predicted + pick_rate * u[pick] + 0.0; /* (ttft_base + rate x u) + 0.0 */
    Py_ssize_t shown[8]; /* explain.EXPLAINED_CANDIDATES */
    Py_ssize_t shown_count = shown_of(c, n, pick, ties == n, shown);
    uncached_items.doubles = u; /* the entries read the uncached tokens as doubles */
    uncached_items.n = n;
    explanation = PyDict_New();
    if (explanation == NULL
            || PyDict_SetItem(explanation, key_strategy, args[D_NAME]) < 0
            || PyDict_SetItem(explanation, key_outcome, outcome) < 0
            || set_new(explanation, key_matched, tokens_object(&matched, pick)) < 0
            || set_new(explanation, key_predicted_ttft,
                       PyFloat_FromDouble(ms_value(predicted))) < 0
            || set_new(explanation, key_runner_up,
                       PyFloat_FromDouble(ms_value(runner_up - chosen))) < 0
            || set_new(explanation, key_candidates,
                       entries_of(shown, shown_count, candidates, &matched, n, &uncached_items,
                                  c, evict, wait, waits, details)) < 0)
        goto done;
    out = Py_BuildValue("nLOd", pick, rotation, explanation, u[pick]);
#undef RECHECK
done:
    Py_XDECREF(explanation);
    PyMem_Free(scratch);
    PyMem_Free(tied);
    for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) items_close(lists[l]);
    return out;
}
