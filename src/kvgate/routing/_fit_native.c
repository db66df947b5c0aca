/* The TTFT model's online line fits in C: kvgate.routing.calibration.LineFit, operation for
 * operation.
 *
 * Every KV-aware request's release feeds one or two fits (a TTFT sample, a decode-step
 * sample), and the scorer's periodic refresh fades and re-solves every replica's two: in
 * Python a sample cost about 6 us on this project's slower host, most of it interpreter
 * overhead around a dozen float operations. The arithmetic here is the Python version's, in
 * the same order, on IEEE doubles (built with -ffp-contract=off, so no fused multiply-add
 * changes a rounding), so both give the same figures to the bit: the tests compare them on
 * random sequences of samples, fades and priors. Python's min and max are written out as its
 * comparisons (they differ from fmin / fmax on NaN).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <structmember.h>

/* Smallest slope the fit reports (calibration._MIN_S_PER_TOKEN). */
#define MIN_S_PER_TOKEN 1e-9

typedef struct {
    PyObject_HEAD
    double forget;
    double half_life_s;
    double prior_intercept;
    double prior_slope;
    double weight;
    double slope_weight;
    double sums[5];  /* fading weighted sums of the samples: w, wx, wy, wxx, wxy */
    double sampled_s;
    Py_ssize_t samples;
    double slope;
    double intercept;
} LineFit;

/* Python's max(a, b) and min(a, b): the first unless the second compares greater / less. */
static inline double py_max(double a, double b) { return b > a ? b : a; }
static inline double py_min(double a, double b) { return b < a ? b : a; }

static void solve(LineFit *f) {
    double sw = f->sums[0], swx = f->sums[1], swy = f->sums[2], swxx = f->sums[3],
           swxy = f->sums[4];
    double lam = f->slope_weight, prior_slope = f->prior_slope;
    if (sw <= 0.0) return;
    double mean_x = swx / sw, mean_y = swy / sw;
    double spread = py_max(0.0, swxx - sw * mean_x * mean_x);
    double covariance = swxy - sw * mean_x * mean_y;
    double slope = (covariance + lam * prior_slope) / (spread + lam);
    double prior_level = f->prior_intercept + prior_slope * mean_x;
    double level = (sw * mean_y + f->weight * prior_level) / (sw + f->weight);
    double intercept = level - slope * mean_x;
    if (intercept < 0.0) {
        intercept = 0.0;
        if (mean_x > 0) slope = level / mean_x;
    }
    f->slope = py_max(slope, MIN_S_PER_TOKEN);
    f->intercept = intercept;
}

static void fade(LineFit *f, double now_s, double factor) {
    double factor_now = factor * exp2(-py_max(0.0, now_s - f->sampled_s) / f->half_life_s);
    f->sampled_s = now_s;
    for (int i = 0; i < 5; i++) f->sums[i] = f->sums[i] * factor_now;
}

/* A Python number as a double (an int exactly as float(int) would round it). */
static int as_double(PyObject *value, double *out) {
    *out = PyFloat_AsDouble(value);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* A keyword-only argument without a default (the format's "$" needs defaults for all). */
static int required(PyObject *value, const char *name, double *out) {
    if (value == NULL) {
        PyErr_Format(PyExc_TypeError, "missing required keyword-only argument: '%s'", name);
        return -1;
    }
    return as_double(value, out);
}

static PyObject *observe(LineFit *f, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"x", "y", "now_s", NULL};
    double x, y, now_s;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ddd:observe", keywords, &x, &y, &now_s))
        return NULL;
    if (x < 0 || y < 0) Py_RETURN_NONE;
    y = py_min(y, 3.0 * (f->intercept + f->slope * x) + 0.01);
    fade(f, now_s, f->forget);
    f->sums[0] += 1.0;
    f->sums[1] += x;
    f->sums[2] += y;
    f->sums[3] += x * x;
    f->sums[4] += x * y;
    f->samples += 1;
    solve(f);
    Py_RETURN_NONE;
}

static PyObject *relax(LineFit *f, PyObject *arg) {
    double now_s;
    if (as_double(arg, &now_s) < 0) return NULL;
    if (f->sums[0] != 0.0 && now_s > f->sampled_s) {
        fade(f, now_s, 1.0);
        solve(f);
    }
    Py_RETURN_NONE;
}

static PyObject *set_prior(LineFit *f, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"slope", "intercept", NULL};
    PyObject *slope_arg = NULL, *intercept_arg = NULL;
    double slope, intercept;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OO:set_prior", keywords, &slope_arg,
                                     &intercept_arg)) return NULL;
    if (required(slope_arg, "slope", &slope) < 0
            || required(intercept_arg, "intercept", &intercept) < 0) return NULL;
    f->prior_slope = slope;
    f->prior_intercept = intercept;
    if (f->sums[0] > 0.0) {
        solve(f);
    } else {
        f->slope = slope;
        f->intercept = intercept;
    }
    Py_RETURN_NONE;
}

static PyObject *predict(LineFit *f, PyObject *arg) {
    double x;
    if (as_double(arg, &x) < 0) return NULL;
    return PyFloat_FromDouble(f->intercept + f->slope * x);
}

static PyObject *measured_weight(LineFit *f, void *closure) {
    return PyFloat_FromDouble(f->sums[0]);
}

static int init(LineFit *f, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"slope", "intercept", "span", "prior_weight", "forget",
                               "half_life_s", NULL};
    PyObject *slope_arg = NULL, *intercept_arg = NULL, *span_arg = NULL;
    double slope, intercept, span, prior_weight = 2.0, forget = 0.95, half_life_s = 60.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOddd:LineFit", keywords, &slope_arg,
                                     &intercept_arg, &span_arg, &prior_weight, &forget,
                                     &half_life_s)) return -1;
    if (required(slope_arg, "slope", &slope) < 0
            || required(intercept_arg, "intercept", &intercept) < 0
            || required(span_arg, "span", &span) < 0) return -1;
    f->forget = forget;
    f->half_life_s = half_life_s;
    f->prior_intercept = intercept;
    f->prior_slope = slope;
    f->weight = prior_weight;
    f->slope_weight = prior_weight * span * span;
    for (int i = 0; i < 5; i++) f->sums[i] = 0.0;
    f->sampled_s = 0.0;
    f->samples = 0;
    f->slope = slope;
    f->intercept = intercept;
    return 0;
}

static PyMethodDef methods[] = {
    {"observe", (PyCFunction)(void (*)(void))observe, METH_VARARGS | METH_KEYWORDS,
     "observe(x, y, now_s): one sample; now_s on any clock"},
    {"relax", (PyCFunction)relax, METH_O,
     "relax(now_s): let time pass without a sample (old samples fade)"},
    {"set_prior", (PyCFunction)(void (*)(void))set_prior, METH_VARARGS | METH_KEYWORDS,
     "set_prior(*, slope, intercept): move the prior"},
    {"predict", (PyCFunction)predict, METH_O, "predict(x) -> intercept + slope * x"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef members[] = {
    {"slope", T_DOUBLE, offsetof(LineFit, slope), 0, "the fitted slope"},
    {"intercept", T_DOUBLE, offsetof(LineFit, intercept), 0, "the fitted intercept"},
    {"samples", T_PYSSIZET, offsetof(LineFit, samples), 0, "samples observed"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef getset[] = {
    {"measured_weight", (getter)measured_weight, NULL,
     "the faded weight of the samples (0: nothing measured, or all of it long ago)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LineFitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvgate.routing._fit_native.LineFit",
    .tp_basicsize = sizeof(LineFit),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "y ~ intercept + slope x x by ridge regression with forgetting "
              "(kvgate.routing.calibration.PyLineFit in C)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)init,
    .tp_methods = methods,
    .tp_members = members,
    .tp_getset = getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fit_native",
    "The TTFT model's line fits (kvgate.routing.calibration).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fit_native(void) {
    if (PyType_Ready(&LineFitType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "LineFit", (PyObject *)&LineFitType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
