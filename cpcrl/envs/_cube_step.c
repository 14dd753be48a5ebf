/* One step of Cube2x2VectorEnv in C: the same result as its numpy path (Cube2x2VectorEnv._advance_numpy in
 * cube2x2.py, the reference), without numpy's per-call overhead, which is most of a step at small N.
 *
 * Built as an optional extension (pyproject.toml): where no C compiler is found the env runs the numpy path.
 * Only the buffer protocol is used (no numpy headers), so the module builds against any numpy.
 *
 * A cube's row (56 bytes, see _ROW in cube2x2.py): [0:24] sticker colours, [24:32] four uint16 history codes
 * (most recent first; an action code or the no-action code), [32:56] the colour of the first sticker of each
 * sticker's face. Every face is uniform exactly when bytes [0:24] equal bytes [32:56].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define N_MOVES 12
#define ROW 56
#define OBS_DIM 192

static uint8_t perms[N_MOVES][24];  /* perms[a][j]: source sticker of sticker j after move a */
static uint8_t face_first[24];
static uint16_t action_code0, no_action_code;
static int configured = 0;

static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t len, int writable, const char *name) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len != len) {
        PyErr_Format(PyExc_ValueError, "_cube_step: %s has %zd bytes, expected %zd", name, view->len, len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* configure(perms: uint8[12*24], face_first: uint8[24], action_code0: int, no_action_code: int) */
static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "configure takes 4 arguments");
        return NULL;
    }
    Py_buffer p, f;
    if (get_buffer(args[0], &p, N_MOVES * 24, 0, "perms") < 0) return NULL;
    if (get_buffer(args[1], &f, 24, 0, "face_first") < 0) { PyBuffer_Release(&p); return NULL; }
    memcpy(perms, p.buf, sizeof perms);
    memcpy(face_first, f.buf, sizeof face_first);
    PyBuffer_Release(&p);
    PyBuffer_Release(&f);
    long code0 = PyLong_AsLong(args[2]), none = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    action_code0 = (uint16_t)code0;
    no_action_code = (uint16_t)none;
    configured = 1;
    Py_RETURN_NONE;
}

static void encode(const uint8_t *row, float *out) {
    memset(out, 0, OBS_DIM * sizeof(float));
    for (int j = 0; j < 24; j++) out[6 * j + row[j]] = 1.0f;
    for (int k = 0; k < 4; k++) {
        uint16_t code;
        memcpy(&code, row + 24 + 2 * k, 2);
        if (code != no_action_code) out[144 + N_MOVES * k + (code - action_code0)] = 1.0f;
    }
}

/* step(actions int64[N], src rows, dst rows, start int64[N], last_start: int, lose: float, win: float,
 *      final float32[N,192], obs float32[N,192] (may be final), rewards float32[N], solved, truncated, done bool[N])
 * Writes the new rows into dst and fills the outputs; returns the number of finished episodes, or -1 (and
 * writes nothing) if an action is outside [0, 12). */
static PyObject *step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "step takes 13 arguments");
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_cube_step.configure was not called");
        return NULL;
    }
    Py_buffer act, src, dst, start, fin, obs, rew, sol, trunc, done;
    Py_buffer *views[] = {&act, &src, &dst, &start, &fin, &obs, &rew, &sol, &trunc, &done};
    const int arg_of[] = {0, 1, 2, 3, 7, 8, 9, 10, 11, 12};
    const char *names[] = {"actions", "src", "dst", "start", "final", "obs", "rewards", "solved", "truncated", "done"};
    Py_ssize_t n = 0;
    {
        Py_buffer probe;
        if (PyObject_GetBuffer(args[0], &probe, PyBUF_C_CONTIGUOUS) < 0) return NULL;
        n = probe.len / 8;
        PyBuffer_Release(&probe);
    }
    const Py_ssize_t sizes[] = {8 * n, ROW * n, ROW * n, 8 * n, 4 * OBS_DIM * n, 4 * OBS_DIM * n, 4 * n, n, n, n};
    int got = 0;
    for (; got < 10; got++) {
        if (get_buffer(args[arg_of[got]], views[got], sizes[got], got != 0 && got != 1 && got != 3, names[got]) < 0)
            break;
    }
    PyObject *result = NULL;
    if (got < 10) goto release;
    long long last_start = PyLong_AsLongLong(args[4]);
    double lose = PyFloat_AsDouble(args[5]), win = PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred()) goto release;

    const int64_t *a = act.buf, *st = start.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (a[i] < 0 || a[i] >= N_MOVES) {
            result = PyLong_FromLong(-1);
            goto release;
        }
    }
    const uint8_t *s = src.buf;
    uint8_t *d = dst.buf, *solved = sol.buf, *tr = trunc.buf, *dn = done.buf;
    float *f = fin.buf, *o = obs.buf, *r = rew.buf;
    const int separate_obs = obs.buf != fin.buf;
    long ended = 0;
    for (Py_ssize_t i = 0; i < n; i++, s += ROW, d += ROW, f += OBS_DIM, o += OBS_DIM) {
        const uint8_t *perm = perms[a[i]];
        for (int j = 0; j < 24; j++) d[j] = s[perm[j]];
        uint16_t code = (uint16_t)(action_code0 + a[i]);
        memcpy(d + 26, s + 24, 6);  /* the history moves one slot back */
        memcpy(d + 24, &code, 2);
        for (int j = 0; j < 24; j++) d[32 + j] = d[face_first[j]];
        const int is_solved = memcmp(d, d + 32, 24) == 0, timeout = st[i] <= last_start;
        solved[i] = (uint8_t)is_solved;
        tr[i] = (uint8_t)(timeout && !is_solved);  /* a solving step is not also truncated */
        dn[i] = (uint8_t)(timeout || is_solved);
        r[i] = (float)(is_solved ? win : lose);
        ended += dn[i];
        encode(d, f);
        if (separate_obs) encode(d, o);  /* writing it again is cheaper than copying (see _copy in cube2x2.py) */
    }
    result = PyLong_FromLong(ended);
release:
    for (int k = 0; k < got; k++) PyBuffer_Release(views[k]);
    return result;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, "Set the move permutations and codes."},
    {"step", (PyCFunction)(void (*)(void))step, METH_FASTCALL, "One vector-env step; see the file's comment."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cube_step", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cube_step(void) { return PyModule_Create(&module); }
