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
static uint16_t action_code0;  /* history code of action 0; the no-action code is outside the 12 */
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

/* configure(perms: uint8[12*24], action_code0: int) */
static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "configure takes 2 arguments");
        return NULL;
    }
    Py_buffer p;
    if (get_buffer(args[0], &p, N_MOVES * 24, 0, "perms") < 0) return NULL;
    memcpy(perms, p.buf, sizeof perms);
    PyBuffer_Release(&p);
    long code0 = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    action_code0 = (uint16_t)code0;
    configured = 1;
    Py_RETURN_NONE;
}

/* The observation of a row (the numpy path's _OBS_TABLE lookup). Out-of-range colours or codes write nothing: a
 * bad state can then give a wrong observation but never a write outside the row. */
static void encode(const uint8_t *row, float *out) {
    memset(out, 0, OBS_DIM * sizeof(float));
    for (int j = 0; j < 24; j++)
        if (row[j] < 6) out[6 * j + row[j]] = 1.0f;
    for (int k = 0; k < 4; k++) {
        uint16_t code;
        memcpy(&code, row + 24 + 2 * k, 2);
        const unsigned a = (unsigned)code - action_code0;
        if (a < N_MOVES) out[144 + N_MOVES * k + a] = 1.0f;
    }
}

/* step(actions int64[N], src rows, dst rows, start int64[N], depths int64[N], depths_out int64[N],
 *      final float32[N,192], obs float32[N,192], rewards float32[N], solved, truncated, done bool[N],
 *      t: int, max_steps: int, lose: float, win: float,
 *      pool_heads uint8[P,32] or None, pool_obs float32[P,192], pool_depths int64[P], pool_i: int)
 *
 * Step t: writes the new rows into dst, the observations into final and obs, rewards and flags, and the depth of
 * each env's episode into depths_out. Then, given a pool with room for every finished episode, the same-step
 * autoresets: the next pool entries, in env order, go to the finished envs (head into dst, first observation into
 * obs, depth, start = t). Returns the number of finished episodes k when the resets were done (or k = 0),
 * -2 - k when they were left to the caller, and -1 (having written nothing) if an action is outside [0, 12). */
static PyObject *step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 20) {
        PyErr_SetString(PyExc_TypeError, "step takes 20 arguments");
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_cube_step.configure was not called");
        return NULL;
    }
    Py_buffer act, src, dst, start, dep, dep_out, fin, obs, rew, sol, trunc, done, p_heads, p_obs, p_dep;
    Py_buffer *views[] = {&act, &src, &dst, &start, &dep, &dep_out, &fin, &obs, &rew, &sol, &trunc, &done,
                          &p_heads, &p_obs, &p_dep};
    const int arg_of[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18};
    const char *names[] = {"actions", "src", "dst", "start", "depths", "depths_out", "final", "obs", "rewards",
                           "solved", "truncated", "done", "pool_heads", "pool_obs", "pool_depths"};
    const int has_pool = args[16] != Py_None, n_views = has_pool ? 15 : 12;
    Py_ssize_t n = 0, pool_len = 0;
    {
        Py_buffer probe;
        if (PyObject_GetBuffer(args[0], &probe, PyBUF_C_CONTIGUOUS) < 0) return NULL;
        n = probe.len / 8;
        PyBuffer_Release(&probe);
        if (has_pool) {
            if (PyObject_GetBuffer(args[18], &probe, PyBUF_C_CONTIGUOUS) < 0) return NULL;
            pool_len = probe.len / 8;
            PyBuffer_Release(&probe);
        }
    }
    const Py_ssize_t sizes[] = {8 * n, ROW * n, ROW * n, 8 * n, 8 * n, 8 * n, 4 * OBS_DIM * n, 4 * OBS_DIM * n,
                                4 * n, n, n, n, 32 * pool_len, 4 * OBS_DIM * pool_len, 8 * pool_len};
    const int read_only[] = {1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1};
    int got = 0;
    for (; got < n_views; got++) {
        if (get_buffer(args[arg_of[got]], views[got], sizes[got], !read_only[got], names[got]) < 0) break;
    }
    PyObject *result = NULL;
    if (got < n_views) goto release;
    if (fin.buf == obs.buf) {
        PyErr_SetString(PyExc_ValueError, "_cube_step: final and obs must be different arrays");
        goto release;
    }
    const long long t = PyLong_AsLongLong(args[12]), max_steps = PyLong_AsLongLong(args[13]);
    const double lose = PyFloat_AsDouble(args[14]), win = PyFloat_AsDouble(args[15]);
    const Py_ssize_t pool_i = has_pool ? PyLong_AsSsize_t(args[19]) : 0;
    if (PyErr_Occurred()) goto release;

    const int64_t *a = act.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (a[i] < 0 || a[i] >= N_MOVES) {
            result = PyLong_FromLong(-1);
            goto release;
        }
    }
    int64_t *st = start.buf, *depths = dep.buf, *depths_out = dep_out.buf;
    uint8_t *solved = sol.buf, *tr = trunc.buf, *dn = done.buf;
    float *r = rew.buf;
    const long long last_start = t - max_steps;
    long ended = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *s = (const uint8_t *)src.buf + ROW * i, *perm = perms[a[i]];
        uint8_t *d = (uint8_t *)dst.buf + ROW * i;
        for (int j = 0; j < 24; j++) d[j] = s[perm[j]];
        const uint16_t code = (uint16_t)(action_code0 + a[i]);
        memcpy(d + 26, s + 24, 6);  /* the history moves one slot back */
        memcpy(d + 24, &code, 2);
        int is_solved = 1;  /* every face is uniform; the face-first bytes are written 4 at a time */
        for (int k = 0; k < 6; k++) {
            uint32_t word, uniform = d[4 * k] * 0x01010101u;
            memcpy(&word, d + 4 * k, 4);
            memcpy(d + 32 + 4 * k, &uniform, 4);
            is_solved &= word == uniform;
        }
        const int timeout = st[i] <= last_start;
        solved[i] = (uint8_t)is_solved;
        tr[i] = (uint8_t)(timeout && !is_solved);  /* a solving step is not also truncated */
        dn[i] = (uint8_t)(timeout || is_solved);
        r[i] = (float)(is_solved ? win : lose);
        depths_out[i] = depths[i];
        ended += dn[i];
        float *f = (float *)fin.buf + OBS_DIM * i;
        encode(d, f);
        memcpy((float *)obs.buf + OBS_DIM * i, f, OBS_DIM * sizeof(float));
    }
    if (ended == 0 || !has_pool || pool_i < 0 || pool_i + ended > pool_len) {
        result = PyLong_FromLong(ended == 0 ? 0 : -2 - ended);
        goto release;
    }
    Py_ssize_t j = pool_i;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!dn[i]) continue;
        memcpy((uint8_t *)dst.buf + ROW * i, (const uint8_t *)p_heads.buf + 32 * j, 32);
        memcpy((float *)obs.buf + OBS_DIM * i, (const float *)p_obs.buf + OBS_DIM * j, OBS_DIM * sizeof(float));
        depths[i] = ((const int64_t *)p_dep.buf)[j];
        st[i] = t;
        j++;
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

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cube_step", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cube_step(void) { return PyModule_Create(&module); }
