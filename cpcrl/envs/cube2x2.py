"""The 2x2x2 Rubik's cube (pocket cube) as a single gymnasium env and a natively batched vector env.

Sticker convention
------------------
A state is ``uint8[24]``: 6 faces x 4 stickers, faces in the order U, D, L, R, F, B, and the value of a
sticker is its colour id (= index of the face it belongs to when solved, so ``SOLVED = [0]*4 + [1]*4 + ...``).

Within a face the stickers are in reading order ``0 1 / 2 3`` (row-major, top-left first) as the face
appears in the unfolded net printed by ``render()``::

          U0 U1
          U2 U3
    L0 L1 F0 F1 R0 R1 B0 B1
    L2 L3 F2 F3 R2 R3 B2 B3
          D0 D1
          D2 D3

i.e. L, F, R, B are seen from outside with U on top; U is seen from above with F below it; D is seen from
below with F above it. Adjacent cells in the net are adjacent on the cube (U2 U3 touch F0 F1, etc.).

Moves
-----
``MOVE_NAMES[a]``: ``X+`` turns face X a quarter clockwise looking at X from outside, ``X-`` anticlockwise.
``state[MOVE_PERMS[a]]`` is the state after move ``a``. The permutations are derived from 3D geometry
(see ``_build_move_perms``), not typed in. ``U+`` followed by ``D-`` (both turn the same way about the
vertical axis) is a whole-cube rotation, which ``is_solved`` treats as solved: it ignores orientation.

Start states (``scramble=``)
----------------------------
``moves`` (the default): ``scramble_depth`` random moves from solved (a scramble *length*, or *depth*; the
distance to solved can be shorter: only ~53% of depth-6 scrambles are 6 quarter turns away). ``distance``:
uniform among the states exactly ``scramble_depth`` quarter turns from solved (0..14), and the curriculum
raises that distance. ``uniform``: uniform over all reachable states (a fully scrambled cube), drawn directly
from the group (``cube_distance.sample_uniform``), not by moves. ``info["scramble_depth"]`` is the start's
level: the scramble length under ``moves``, the exact distance under ``distance`` and ``uniform``.
``optimal_distance(states)`` is the exact quarter-turn distance (table in ``cube_distance``).

Frame (``frame=``)
------------------
``free`` (the default): the cube is seen as it lies; a turn of any face can leave it in any of 24 orientations,
so each position shows up as 24 different sticker states. ``corner``: the cube is held by its D-L-B corner, as
a person holds a pocket cube: start states are turned as a whole so that corner sits at D-L-B with its D colour
down (``cube_distance.canonical``), and a turn of D, L or B is applied as the turn of the opposite face the same
way about the same axis (``CORNER_MOVE``; ``U+ D-`` is a whole-cube rotation, so ``D-`` and ``U-`` reach the
same position). The positions, solved states, rewards and distances are the same in both frames; ``corner``
shows each position as one sticker state (3,674,160 instead of 24x that), and the move history holds the turns
as applied. The action space stays Discrete(12) in both, so any agent runs in either.

Observation (192 float32): sticker ``i``'s colour one-hot at ``[6*i : 6*i+6]`` (144 values), then the one-hot
of the last 4 actions, most recent first, at ``144 + 12*k + a`` (48 values, all zero where there is no action
yet, e.g. right after a reset).

Hidden state (``cpcrl.probes``' targets, in ``info`` at reset and at every step, of the returned obs): the sticker
state, ``info["true_state"]`` float32 [24*6] as the colour one-hots (= the obs' first 144 values: the cube is fully
observed, so the probe on the observation is the ceiling) and ``info["true_class"]`` int64 [24] as colour ids;
the vector env also gives ``info["final_true_state"]``, that of ``final_obs``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from cpcrl.checks import choice, integer, number

__all__ = [
    "SOLVED", "MOVE_NAMES", "MOVE_PERMS", "INVERSE_MOVE", "OBS_DIM",
    "apply_moves", "is_solved", "scramble", "encode_obs", "render_net", "Cube2x2Env", "Cube2x2VectorEnv",
    "SCRAMBLES", "FRAMES", "CORNER_MOVE", "turns", "hold", "optimal_distance", "make_vector_env", "check_config",
]

FACES = "UDLRFB"
COLOURS = "WYORGB"  # standard scheme: U white, D yellow, L orange, R red, F green, B blue
MOVE_NAMES = ["U+", "U-", "D+", "D-", "L+", "L-", "R+", "R-", "F+", "F-", "B+", "B-"]
N_MOVES = 12
HISTORY = 4
OBS_DIM = 24 * 6 + HISTORY * N_MOVES  # 192

SOLVED = np.repeat(np.arange(6, dtype=np.uint8), 4)
SOLVED.flags.writeable = False
# Moves come in (X+, X-) pairs at (2f, 2f+1), so the inverse flips the lowest bit.
INVERSE_MOVE = np.arange(N_MOVES) ^ 1

# Axes: x to the right, y up, z towards the viewer (out of F). For each face: outward normal, and the
# directions of "right" and "down" in the net view described in the module docstring.
_FACE_FRAMES = {
    "U": ((0, 1, 0), (1, 0, 0), (0, 0, 1)),
    "D": ((0, -1, 0), (1, 0, 0), (0, 0, -1)),
    "L": ((-1, 0, 0), (0, 0, 1), (0, -1, 0)),
    "R": ((1, 0, 0), (0, 0, -1), (0, -1, 0)),
    "F": ((0, 0, 1), (1, 0, 0), (0, -1, 0)),
    "B": ((0, 0, -1), (-1, 0, 0), (0, -1, 0)),
}


def _sticker_geometry() -> tuple[np.ndarray, np.ndarray]:
    """Cubie position in {-1,1}^3 and outward normal of each of the 24 stickers."""
    pos, nrm = [], []
    for face in FACES:
        n, right, down = (np.array(v) for v in _FACE_FRAMES[face])
        for i in range(4):
            row, col = divmod(i, 2)
            pos.append(n + (2 * col - 1) * right + (2 * row - 1) * down)
            nrm.append(n)
    return np.array(pos), np.array(nrm)


def _build_move_perms() -> np.ndarray:
    pos, nrm = _sticker_geometry()
    where = {(tuple(p), tuple(n)): i for i, (p, n) in enumerate(zip(pos, nrm))}
    perms = np.empty((N_MOVES, 24), dtype=np.intp)
    for f, face in enumerate(FACES):
        axis = np.array(_FACE_FRAMES[face][0])
        cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        # Rodrigues at +-90 degrees: R = sin(t) [axis]_x + axis axis^T. Clockwise seen from outside the
        # face (from +axis) is a negative angle about the outward normal.
        for sign, s in ((0, -1), (1, 1)):
            rot = s * cross + np.outer(axis, axis)
            perm = np.arange(24)
            for i in np.flatnonzero(pos @ axis == 1):  # stickers on the turning layer
                perm[where[(tuple(rot @ pos[i]), tuple(rot @ nrm[i]))]] = i  # dest gets colour of src
            perms[2 * f + sign] = perm
    return perms


MOVE_PERMS = _build_move_perms()
MOVE_PERMS.flags.writeable = False
_PERMS_PAD = np.vstack([MOVE_PERMS, np.arange(24)])  # row 12 = "no move", pads short scrambles


def apply_moves(states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Return ``states`` (uint8[N,24]) after applying ``actions`` (int[N]), one move per cube."""
    states = np.asarray(states)
    return np.take_along_axis(states, MOVE_PERMS[np.asarray(actions)], axis=1)


_FACE_FIRST = np.repeat(np.arange(0, 24, 4), 4)  # sticker i -> first sticker of its face
_SOLVED_AFTER = SOLVED[_PERMS_PAD]  # row a: the solved cube after move a (or none)


def is_solved(states: np.ndarray) -> np.ndarray:
    """bool[N]: every face shows a single colour, whatever the cube's orientation."""
    states = np.asarray(states).reshape(-1, 24)
    firsts = states.take(_FACE_FIRST, axis=1)
    if states.dtype == np.uint8:  # whole rows as 24-byte strings, much faster (see _ROW_FIELDS)
        return np.ascontiguousarray(states).view("S24")[:, 0] == firsts.view("S24")[:, 0]
    return (states == firsts).all(axis=1)


def scramble(
    rng: np.random.Generator, depths: np.ndarray, *, return_moves: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Random states reached from solved by ``depths[i]`` moves, never undoing the previous move.

    Scrambles that end solved (e.g. ``U+ D-``, a whole-cube rotation) are re-drawn, so a cube with
    depth >= 1 is never solved. With ``return_moves`` also returns the moves, int[N, max depth], -1 padded.
    Note depth is the scramble length, not the distance to solved (which can be shorter).
    """
    depths = np.asarray(depths, dtype=np.int64).reshape(-1)
    n, d_max = len(depths), int(depths.max(initial=0))
    moves = np.full((n, d_max), -1, dtype=np.int64)
    states = np.broadcast_to(SOLVED, (n, 24)).copy()
    todo = np.flatnonzero(depths > 0)
    while len(todo):
        k, d = len(todo), depths[todo]
        m = np.empty((k, d_max), dtype=np.int64)
        m[:, 0] = rng.integers(N_MOVES, size=k)
        skip = rng.integers(1, N_MOVES, size=(k, d_max - 1))
        for t in range(1, d_max):  # anything but the inverse of the previous move: offset 1..11 from it
            m[:, t] = ((m[:, t - 1] ^ 1) + skip[:, t - 1]) % N_MOVES
        m[np.arange(d_max) >= d[:, None]] = N_MOVES  # past its depth a cube gets the identity "move"
        # A re-draw starts over from solved (not from the rotation it landed on). Flat gathers with row
        # offsets are much cheaper than take_along_axis.
        st = _SOLVED_AFTER.take(m[:, 0], axis=0)
        off = (np.arange(k) * 24)[:, None]
        for t in range(1, d_max):
            st = st.reshape(-1).take(_PERMS_PAD.take(m[:, t], axis=0) + off)
        states[todo], moves[todo] = st, np.where(m == N_MOVES, -1, m)
        todo = todo[is_solved(st)]
    return (states, moves) if return_moves else states


def _corner_moves() -> np.ndarray:
    """CORNER_MOVE[a]: the turn that move a is in the frame that holds the D-L-B corner (module docstring)."""
    kept = [2 * FACES.index(f) + s for f in "URF" for s in (0, 1)]  # turns that leave the D-L-B corner in place
    alias = np.arange(N_MOVES)
    for a in sorted(set(range(N_MOVES)) - set(kept)):
        after = SOLVED[MOVE_PERMS[a]]
        # the kept turn b with a = b up to a whole-cube rotation: undoing b after a leaves the cube solved
        alias[a] = next(b for b in kept if is_solved(after[MOVE_PERMS[INVERSE_MOVE[b]]])[0])
    return alias


FRAMES = ("free", "corner")  # how the cube is held, see the module docstring
CORNER_MOVE = _corner_moves()
CORNER_MOVE.flags.writeable = False


def turns(actions: np.ndarray, frame: str) -> np.ndarray:
    """The turns that ``actions`` (ints in 0..11) make in ``frame``: themselves for ``free``, ``CORNER_MOVE`` of
    them for ``corner``."""
    return actions if frame == "free" else CORNER_MOVE[actions]


def hold(states: np.ndarray, frame: str) -> np.ndarray:
    """States uint8[N,24] as seen in ``frame``: unchanged for ``free``, turned as a whole so the D-L-B corner is
    home for ``corner``."""
    if frame == "free":
        return states
    from cpcrl.envs.cube_distance import canonical  # lazy: cube_distance imports this module

    return canonical(states)


_STICKER_HOT = 6 * np.arange(24)  # obs index of sticker i's colour-0 float


def encode_obs(states: np.ndarray, history: np.ndarray) -> np.ndarray:
    """float32[N,192] observations from states uint8[N,24] and history int[N,4] (most recent first, -1 = none)."""
    states, history = np.asarray(states), np.asarray(history)
    n = len(states)
    out = np.zeros((n, OBS_DIM), dtype=np.float32)
    flat = out.reshape(-1)
    row = (np.arange(n) * OBS_DIM)[:, None]
    flat[row + _STICKER_HOT + states] = 1.0
    r, k = np.nonzero(history >= 0)
    flat[r * OBS_DIM + 144 + N_MOVES * k + history[r, k]] = 1.0
    return out


# A faster encoding, used by the vector env and the scramble pools. The 192 floats are 16 chunks of 12: chunk
# j < 12 is stickers 2j and 2j+1, chunk 12 + k is history slot k. Each chunk is a row of _OBS_TABLE picked by a
# uint16 code: for stickers, their two colour bytes read as one uint16, so no arithmetic is needed; for a history
# slot, _ACTION_CODE[a] or _NO_ACTION_CODE, both above every sticker-pair code. So the observation of a "head",
# the 32 bytes [24 sticker colours | 4 history codes], is one lookup of its uint16 view.


def _byte_pair(lo: int, hi: int) -> int:
    """The uint16 that bytes (lo, hi) read as, in native byte order."""
    return int(np.array([lo, hi], dtype=np.uint8).view(np.uint16)[0])


_ACTION_CODE = _byte_pair(5, 5) + 1 + np.arange(N_MOVES, dtype=np.uint16)
_NO_ACTION_CODE = _ACTION_CODE[-1] + 1
_OBS_TABLE = np.zeros((_NO_ACTION_CODE + 1, 12), dtype=np.float32)
for _c0 in range(6):
    for _c1 in range(6):
        _OBS_TABLE[_byte_pair(_c0, _c1), [_c0, 6 + _c1]] = 1.0
_OBS_TABLE[_ACTION_CODE, np.arange(N_MOVES)] = 1.0
_OBS_TABLE.flags.writeable = False
_NO_HISTORY = np.full(HISTORY, _NO_ACTION_CODE, dtype=np.uint16).view(np.uint8)
_HEAD = np.dtype((np.void, 32))
_OBS_ROW = np.dtype((np.void, 4 * OBS_DIM))  # a whole observation as one item, for cheap row writes


def _first_heads(states: np.ndarray) -> np.ndarray:
    """uint8[N,32] heads of states uint8[N,24] with an empty history."""
    heads = np.empty((len(states), 32), dtype=np.uint8)
    heads[:, :24], heads[:, 24:] = states, _NO_HISTORY
    return heads


def _encode_heads(heads: np.ndarray) -> np.ndarray:
    """float32[N,192] observations of heads uint8[N,32] (or their uint16[N,16] view), = ``encode_obs``."""
    codes = heads.view(np.uint16) if heads.dtype == np.uint8 else heads
    return _OBS_TABLE.take(codes, axis=0).reshape(len(codes), OBS_DIM)


def render_net(state: np.ndarray) -> str:
    """The unfolded net (see module docstring) with colours as letters W Y O R G B."""
    c = [COLOURS[v] for v in np.asarray(state)]
    f = {face: c[4 * i : 4 * i + 4] for i, face in enumerate(FACES)}
    pad = " " * 5  # width of the L column plus its separator
    lines = [pad + " ".join(f["U"][2 * r : 2 * r + 2]) for r in range(2)]
    lines += ["  ".join(" ".join(f[x][2 * r : 2 * r + 2]) for x in "LFRB") for r in range(2)]
    lines += [pad + " ".join(f["D"][2 * r : 2 * r + 2]) for r in range(2)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- config

SCRAMBLES = ("moves", "uniform", "distance")  # start-state kinds, see the module docstring
_MAX_DISTANCE = 14  # God's number in the quarter-turn metric


def optimal_distance(states: np.ndarray) -> np.ndarray:
    """int64[N]: the fewest quarter turns that solve each state (uint8[N,24]), whatever its orientation.

    Looked up in the exact table of all 3,674,160 positions (``cube_distance``; built in ~1 s at first use and
    cached on disk)."""
    from cpcrl.envs.cube_distance import optimal_distance as lookup  # lazy: cube_distance imports this module

    return lookup(states)


def _check_scramble(value: Any) -> str:
    return choice("env.scramble", value, SCRAMBLES)


def _check_actions(a: np.ndarray) -> None:
    if a.size and (a.min() < 0 or a.max() >= N_MOVES):
        raise ValueError(f"actions must be int[{a.size}] in [0, {N_MOVES}), got {a!r}")


_CURRICULUM_DEFAULTS = dict(enabled=True, start_depth=1, max_depth=14, threshold=0.8, window=1000, spread=1, mix=0.0)


def _check_int(name: str, value: Any, low: int) -> int:
    return integer(f"env.{name}", value, low)


class _Curriculum:
    """Raises the mean scramble depth when the recent solve rate is high enough.

    Keeps the outcomes of the last ``window`` finished episodes in a ring buffer; the depth goes up by one
    when their solve rate reaches ``threshold`` and ``window`` episodes have finished since the last raise
    (so the rate is measured entirely at the current depth).

    ``mix`` > 0 keeps the levels already learnt in training: that fraction of the starts is drawn uniformly
    from 1..depth instead of depth +- spread. Those easier episodes would inflate the window's solve rate, so
    with ``mix`` > 0 the window counts only the episodes that started at a level >= depth - spread (a
    mixed-back start that falls in the current band counts; it is the same episode as one drawn there).
    """

    def __init__(self, cfg: dict):
        unknown = set(cfg) - set(_CURRICULUM_DEFAULTS)
        if unknown:
            raise ValueError(f"curriculum has unknown keys {sorted(unknown)}; valid keys: {list(_CURRICULUM_DEFAULTS)}")
        c = {**_CURRICULUM_DEFAULTS, **cfg}
        self.enabled = bool(c["enabled"])
        self.max_depth = _check_int("curriculum.max_depth", c["max_depth"], 1)
        self.start_depth = _check_int("curriculum.start_depth", c["start_depth"], 1)
        if self.start_depth > self.max_depth:
            raise ValueError(
                f"curriculum.start_depth={self.start_depth} is invalid: expected <= max_depth={self.max_depth}"
            )
        self.window = _check_int("curriculum.window", c["window"], 1)
        self.spread = _check_int("curriculum.spread", c["spread"], 0)
        self.threshold = float(c["threshold"])
        number("env.curriculum.threshold", self.threshold, 0, 1, low_open=True)
        self.mix = float(number("env.curriculum.mix", c["mix"], 0, 1))
        self.depth = self.start_depth
        self.outcomes = np.zeros(self.window, dtype=bool)
        self.pos = 0  # next slot of the ring buffer
        self.since_raise = 0  # episodes finished since the last raise (capped at window)

    def record(self, solved: np.ndarray, levels: np.ndarray | None = None) -> bool:
        """Add finished episodes' outcomes (their start ``levels`` beside); returns True when this raised the
        depth."""
        solved = np.asarray(solved, dtype=bool).reshape(-1)
        if self.mix > 0 and levels is not None:
            solved = solved[np.asarray(levels).reshape(-1) >= self.depth - self.spread]
        solved = solved[-self.window :]
        k = len(solved)
        if k == 0:
            return False
        self.outcomes[(self.pos + np.arange(k)) % self.window] = solved
        self.pos = (self.pos + k) % self.window
        self.since_raise = min(self.since_raise + k, self.window)
        if self.since_raise >= self.window and self.depth < self.max_depth and self.outcomes.mean() >= self.threshold:
            self.depth += 1
            self.since_raise = 0
            return True
        return False

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.spread == 0:
            d = np.full(n, self.depth, dtype=np.int64)
        else:
            d = np.clip(self.depth + rng.integers(-self.spread, self.spread + 1, size=n), 1, self.max_depth)
        if self.mix > 0:  # no draw at all when off: fixed-seed runs without mix are unchanged
            back = rng.random(n) < self.mix
            d = np.where(back, rng.integers(1, self.depth + 1, size=n), d)
        return d

    def get_state(self) -> dict:
        return dict(
            enabled=self.enabled, depth=self.depth, outcomes=self.outcomes.copy(), pos=self.pos,
            since_raise=self.since_raise,
        )

    def set_state(self, s: dict) -> None:
        self.enabled, self.depth = bool(s["enabled"]), int(s["depth"])
        self.outcomes = np.asarray(s["outcomes"], dtype=bool).copy()
        self.pos, self.since_raise = int(s["pos"]), int(s["since_raise"])


class _DepthSchedule:
    """Shared by both envs: kwargs checks, fixed depth or curriculum, the scramble pool, checkpoint state.

    Resets take scrambles (with their encoded first observations) from a pool drawn ``_pool_size`` at a
    time: one batched ``scramble`` call is far cheaper than many tiny ones, and the few autoresets of every
    vector step would otherwise cost as much as the step itself. The pool is dropped whenever the depth
    distribution changes (curriculum raise, ``set_scramble_depth``) or the env is re-seeded, and is part
    of ``get_state`` so a restored env continues exactly.
    """

    _pool_size = 64

    def _init_schedule(self, scramble_depth, max_steps, solve_bonus, curriculum, render_mode, scramble_mode,
                       frame) -> None:
        self.scramble_mode = _check_scramble(scramble_mode)
        self.frame = choice("env.frame", frame, FRAMES)
        self.fixed_depth = self._check_level("scramble_depth", scramble_depth)
        self.max_steps = _check_int("max_steps", max_steps, 1)
        self.solve_bonus = float(solve_bonus)
        if curriculum is not None and not isinstance(curriculum, dict):
            raise ValueError(f"curriculum={curriculum!r} is invalid: expected a dict or None")
        self.curriculum = _Curriculum(curriculum) if curriculum is not None else None
        if self.curriculum is not None:
            self._check_curriculum_fits(self.curriculum)
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode={render_mode!r} is invalid: expected None or 'ansi'")
        self.render_mode = render_mode
        self._clear_pool()

    def _check_level(self, name: str, value: Any) -> int:
        if getattr(self, "scramble_mode", "moves") == "distance":
            return integer(f"env.{name}", value, 0, _MAX_DISTANCE)  # scramble=distance: none is farther than 14
        return _check_int(name, value, 0)

    def _check_curriculum_fits(self, cur: _Curriculum) -> None:
        if not cur.enabled:
            return
        if self.scramble_mode == "uniform":
            raise ValueError("curriculum.enabled=true is invalid with scramble=uniform (uniform states have no level "
                             "to raise): expected scramble=moves or scramble=distance")
        if self.scramble_mode == "distance" and cur.max_depth > _MAX_DISTANCE:
            raise ValueError(f"curriculum.max_depth={cur.max_depth} is invalid with scramble=distance: expected an "
                             f"int in 1..{_MAX_DISTANCE} (no state is farther than {_MAX_DISTANCE})")

    @property
    def _curriculum_on(self) -> bool:
        return self.curriculum is not None and self.curriculum.enabled

    @property
    def curriculum_depth(self) -> int:
        """Current mean scramble depth (the fixed depth when no curriculum is active)."""
        return self.curriculum.depth if self._curriculum_on else self.fixed_depth

    def set_scramble_depth(self, depth: int) -> None:
        """Use a fixed level from the next reset on, switching the curriculum off (for evaluation). The level
        is read in the current ``scramble_mode``: a scramble length (moves), a distance (distance), unused
        (uniform); ``set_start("moves", depth)`` asks for scramble lengths whatever the mode."""
        self.fixed_depth = self._check_level("scramble_depth", depth)
        if self.curriculum is not None:
            self.curriculum.enabled = False
        self._clear_pool()

    def set_start(self, scramble: str, depth: int | None = None) -> None:
        """Switch the start states to ``scramble`` (moves | uniform | distance) at fixed level ``depth`` (the
        current one if None) from the next reset on, curriculum off: e.g. ``set_start("moves", 6)`` for a
        scramble-length eval on an env that trains on distances, then ``set_start("distance", d)`` back."""
        self.scramble_mode = _check_scramble(scramble)
        self.set_scramble_depth(self.fixed_depth if depth is None else depth)

    def _draw_states(self, depths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start states for levels ``depths`` in the current mode, and the level each reports."""
        if self.scramble_mode == "moves":
            return depths, hold(scramble(self.np_random, depths), self.frame)
        from cpcrl.envs import cube_distance

        if self.scramble_mode == "distance":
            return depths, hold(cube_distance.sample_at_distance(self.np_random, depths), self.frame)
        states = hold(cube_distance.sample_uniform(self.np_random, len(depths)), self.frame)
        return cube_distance.optimal_distance(states), states

    def _record_outcomes(self, solved: np.ndarray, levels: np.ndarray | None = None) -> None:
        if self._curriculum_on and self.curriculum.record(solved, levels):
            self._clear_pool()

    def _clear_pool(self) -> None:
        self._fill_pool(np.zeros(0, dtype=np.int64), np.zeros((0, 24), dtype=np.uint8))

    def _fill_pool(self, depths: np.ndarray, states: np.ndarray) -> None:
        self._pool_d, self._pool_s, self._pool_i = np.ascontiguousarray(depths, dtype=np.int64), states, 0
        self._pool_hb = heads = _first_heads(states)
        self._pool_o = _encode_heads(heads)
        # Whole heads and observations as single items, which the vector env's resets write cheaply.
        self._pool_h, self._pool_or = heads.view(_HEAD)[:, 0], self._pool_o.view(_OBS_ROW)[:, 0]

    def _next_scrambles(self, k: int) -> slice:
        """Where in the pool (``_pool_d``, ``_pool_s``, ``_pool_o``, ...) the next k resets' scrambles are."""
        i = self._pool_i
        if i + k > len(self._pool_d):
            depths, states = self._draw_states(self._draw_depths(max(self._pool_size, k)))
            left = slice(i, None)  # keep unused leftovers so no drawn scramble is skipped
            self._fill_pool(
                np.concatenate([self._pool_d[left], depths]), np.vstack([self._pool_s[left], states])
            )
            i = 0
        self._pool_i = i + k
        return slice(i, i + k)

    def _draw_depths(self, n: int) -> np.ndarray:
        if self._curriculum_on:
            return self.curriculum.draw(self.np_random, n)
        return np.full(n, self.fixed_depth, dtype=np.int64)

    def get_state(self) -> dict:
        """Curriculum, fixed depth, RNG and pending scrambles as plain Python/numpy values (for checkpoints)."""
        i = self._pool_i
        return dict(
            scramble=self.scramble_mode,
            fixed_depth=self.fixed_depth,
            curriculum=None if self.curriculum is None else self.curriculum.get_state(),
            rng=self.np_random.bit_generator.state,
            pool_depths=self._pool_d[i:].copy(),
            pool_states=self._pool_s[i:].copy(),
        )

    def set_state(self, state: dict) -> None:
        if "scramble" in state:  # checkpoints from before scramble= are moves
            self.scramble_mode = _check_scramble(str(state["scramble"]))
        self.fixed_depth = int(state["fixed_depth"])
        if state["curriculum"] is not None:
            if self.curriculum is None:
                raise ValueError("set_state: the saved state has a curriculum but this env was built without one")
            self.curriculum.set_state(state["curriculum"])
        elif self.curriculum is not None:
            self.curriculum.enabled = False
        rng = np.random.Generator(getattr(np.random, state["rng"]["bit_generator"])())
        rng.bit_generator.state = state["rng"]
        self.np_random = rng
        states = np.asarray(state["pool_states"], dtype=np.uint8).reshape(-1, 24)
        if states.size and states.max() > 5:
            raise ValueError("set_state: pool_states has colours outside 0..5")
        self._fill_pool(state["pool_depths"], states)


# ------------------------------------------------------------------------------------------ single env


class Cube2x2Env(_DepthSchedule, gym.Env):
    """One pocket cube. Reward -1 per step plus ``solve_bonus`` on the solving step.

    ``terminated`` when solved; ``truncated`` after ``max_steps`` steps unless that step solved.
    ``reset`` options: ``state`` (uint8[24], start there; reported depth -1) or ``scramble_depth`` (this reset only).
    ``scramble``: moves | uniform | distance, the start states; ``frame``: free | corner (module docstring).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        scramble_depth: int = 1,
        max_steps: int = 20,
        solve_bonus: float = 10.0,
        curriculum: dict | None = None,
        render_mode: str | None = None,
        scramble: str = "moves",
        frame: str = "free",
    ):
        self._init_schedule(scramble_depth, max_steps, solve_bonus, curriculum, render_mode, scramble, frame)
        self.observation_space = spaces.Box(0.0, 1.0, (OBS_DIM,), np.float32)
        self.action_space = spaces.Discrete(N_MOVES)
        self.state = SOLVED.copy()
        self._obs = encode_obs(self.state[None], np.full((1, HISTORY), -1))[0]
        self._steps = 0
        self._depth = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._clear_pool()
        options = options or {}
        if "state" in options:
            state = np.asarray(options["state"], dtype=np.uint8)
            if state.shape != (24,):
                raise ValueError(f"options['state'] has shape {state.shape}; expected (24,)")
            self.state, self._depth = hold(state[None], self.frame)[0].copy(), -1
            self._obs[:] = encode_obs(self.state[None], np.full((1, HISTORY), -1))[0]
        elif "scramble_depth" in options:
            d = self._check_level("scramble_depth", options["scramble_depth"])
            depths, states = self._draw_states(np.array([d], dtype=np.int64))
            self._depth, self.state = int(depths[0]), states[0]
            self._obs[:] = encode_obs(self.state[None], np.full((1, HISTORY), -1))[0]
        else:
            i = self._next_scrambles(1).start
            self._depth, self.state, self._obs[:] = int(self._pool_d[i]), self._pool_s[i].copy(), self._pool_o[i]
        self._steps = 0
        return self._obs.copy(), {"solved": False, "scramble_depth": self._depth, **self._hidden()}

    def _hidden(self) -> dict:
        return {"true_state": self._obs[:144].copy(), "true_class": self.state.astype(np.int64)}

    def step(self, action):
        a = int(action)
        if not 0 <= a < N_MOVES:
            raise ValueError(f"action={action!r} is invalid: expected an int in [0, {N_MOVES})")
        a = int(turns(a, self.frame))
        self.state = self.state[MOVE_PERMS[a]]
        obs = self._obs
        obs[144 + N_MOVES :] = obs[144:-N_MOVES]  # shift the history (numpy buffers the overlap)
        obs[: 144 + N_MOVES] = 0.0
        obs[_STICKER_HOT + self.state] = 1.0
        obs[144 + a] = 1.0
        self._steps += 1
        solved = bool((self.state == self.state[_FACE_FIRST]).all())
        truncated = not solved and self._steps >= self.max_steps
        if solved or truncated:
            self._record_outcomes([solved], [self._depth])
        reward = -1.0 + (self.solve_bonus if solved else 0.0)
        return obs.copy(), reward, solved, truncated, {"solved": solved, "scramble_depth": self._depth,
                                                       **self._hidden()}

    def render(self):
        if self.render_mode == "ansi":
            return render_net(self.state)
        return None


# ------------------------------------------------------------------------------------------ vector env


try:  # the optional C step (_cube_step.c); without a C compiler at install time the numpy path runs
    from cpcrl.envs import _cube_step
except ImportError:
    _cube_step = None
else:
    _cube_step.configure(MOVE_PERMS.astype(np.uint8), int(_ACTION_CODE[0]))

_ZERO = np.zeros((), dtype=np.float32)  # 0-d arrays as ufunc operands: a Python or numpy scalar costs ~0.5 us more


def _copy(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A copy of float32 ``x`` (into ``out`` if given) by a ufunc rather than memcpy.

    Measured on the dev machine (glibc 2.36, AMD EPYC Zen 3): memcpy of 48 KiB takes ~17 us instead of
    ~1.5 us when the destination starts 1..31 bytes after the source modulo 4096. malloc puts a block
    there when it follows one of the same size that is a multiple of 4 KiB (64 x 192 float32 is 48 KiB),
    e.g. the final-obs buffer allocated right after the obs buffer; per-step copies land there or not
    depending on the heap. ``x + 0`` costs ~1 us more than a good memcpy and never hits the cliff.
    """
    return np.add(x, _ZERO, out=out)


# A cube's row in the vector env's state buffer: bytes [0:32] its head (see _OBS_TABLE), [32:56] the colour of
# the first sticker of each sticker's face. Stickers and faces are compared as S24: numpy compares fixed-width
# byte strings ~2x faster than voids, and for equal widths that is exactly bytewise equality (NULs included).
_ROW = 56
_ROW_FIELDS = np.dtype(
    {"names": ["head", "stickers", "faces"], "formats": [_HEAD, "S24", "S24"], "offsets": [0, 0, 32], "itemsize": _ROW}
)
# Head code that an invalid action gets (see Cube2x2VectorEnv.step): out of _OBS_TABLE's range.
_BAD_ACTION_CODE = np.array([len(_OBS_TABLE)], dtype=np.uint16)


class _RowBuffer(NamedTuple):
    """Views of one of the vector env's two state buffers, and what a gather into it reads."""

    src: np.ndarray  # uint8, flat: the other buffer's N rows, then the head-code constants
    rows: np.ndarray  # uint8[N, _ROW]
    codes: np.ndarray  # uint16[N, 16]: the observations' chunk codes
    heads: np.ndarray  # _HEAD[N]: stickers and history, what a reset writes
    stickers: np.ndarray  # S24[N]
    faces: np.ndarray  # S24[N]


def _hidden_state(obs: np.ndarray) -> dict:
    """The sticker state of observations float32[N,192]: `true_state` (colour one-hots), `true_class` (colour ids)."""
    one_hots = obs[:, :144].copy()
    return {"true_state": one_hots, "true_class": one_hots.reshape(-1, 24, 6).argmax(-1)}


class Cube2x2VectorEnv(_DepthSchedule, VectorEnv):
    """``num_envs`` pocket cubes stepped together with numpy, gymnasium SAME_STEP autoreset.

    A finished env's returned obs is already its next episode's first obs; ``info["final_obs"]`` (float32[N,192])
    holds the terminal obs where ``info["_final_obs"]`` is True and the returned obs elsewhere.
    ``info["solved"]`` bool[N] and ``info["scramble_depth"]`` int[N] (of the episode the step belonged to).
    ``copy=False`` returns the obs in an internal buffer, valid until the next ``step``/``reset``, instead of a new
    array (``final_obs`` is always a new array).
    ``reset`` options: ``states`` (uint8[N,24]; reported depth -1) or ``scramble_depth`` (this reset only).
    ``scramble``: moves | uniform | distance, the start states; ``frame``: free | corner (module docstring).
    """

    metadata = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 64,
        scramble_depth: int = 1,
        max_steps: int = 20,
        solve_bonus: float = 10.0,
        curriculum: dict | None = None,
        render_mode: str | None = None,
        copy: bool = True,
        scramble: str = "moves",
        frame: str = "free",
    ):
        self.num_envs = n = _check_int("num_envs", num_envs, 1)
        self._pool_size = max(4096, 2 * n)
        self._init_schedule(scramble_depth, max_steps, solve_bonus, curriculum, render_mode, scramble, frame)
        self.copy = bool(copy)
        self.single_observation_space = spaces.Box(0.0, 1.0, (OBS_DIM,), np.float32)
        self.single_action_space = spaces.Discrete(N_MOVES)
        self.observation_space = spaces.Box(0.0, 1.0, (n, OBS_DIM), np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(n, N_MOVES))
        self._depths = np.zeros(n, dtype=np.int64)
        # Steps are counted for all envs together and an episode's length is _t - _start, so only resets write
        # per env. _now and _last_start mirror _t and _t - max_steps as 0-d arrays (see _ZERO).
        self._t = 0
        self._start = np.zeros(n, dtype=np.int64)
        self._now = np.zeros((), dtype=np.int64)
        self._last_start = np.zeros((), dtype=np.int64)
        self._reward_table = np.array([-1.0, -1.0 + self.solve_bonus], dtype=np.float32)  # indexed by solved
        self._win = float(self._reward_table[1])
        self._kernel = _cube_step

        # At small N the number of numpy calls, not their size, is the cost of a step, so one gather builds each
        # whole new row from the previous one: the stickers move, the history codes shift by one slot, the head
        # code comes from constants stored after the rows, and the face-first colours follow the stickers. Every
        # face is uniform exactly when the stickers equal the face-first colours (one 24-byte compare). Two
        # buffers take turns as source and destination.
        consts = np.concatenate([_ACTION_CODE, _BAD_ACTION_CODE]).view(np.uint8)
        # Row 1 + a: source byte of each byte of the new row after action a; rows 0 and 13 catch invalid actions.
        table = np.empty((N_MOVES + 2, _ROW), dtype=np.intp)
        table[1:-1, :24] = MOVE_PERMS
        table[[0, -1], :24] = np.arange(24)
        code_bytes = n * _ROW + 2 * np.r_[N_MOVES, np.arange(N_MOVES), N_MOVES]  # absolute: the constants
        table[:, 24], table[:, 25] = code_bytes, code_bytes + 1
        table[:, 26:32] = np.arange(24, 30)
        table[:, 32:] = table[:, _FACE_FIRST]
        self._table = table
        self._off = np.repeat(np.arange(n) * _ROW, _ROW).reshape(n, _ROW)
        self._off[:, 24:26] = 0
        self._one = np.ones(n, dtype=np.int64)
        self._sel = np.empty(n, dtype=np.int64)
        self._idx = np.empty((n, _ROW), dtype=np.intp)
        flats = [np.concatenate([np.zeros(n * _ROW, np.uint8), consts]) for _ in range(2)]
        self._bufs = []
        for flat, src in zip(flats, flats[::-1]):
            rows = flat[: n * _ROW].reshape(n, _ROW)
            fields = rows.view(_ROW_FIELDS)[:, 0]
            self._bufs.append(
                _RowBuffer(src, rows, rows.view(np.uint16)[:, :16], fields["head"], fields["stickers"], fields["faces"])
            )
        self._cur = 0
        self._obs = np.zeros((n, OBS_DIM), dtype=np.float32)

    @property
    def states(self) -> np.ndarray:
        """Copy of the current sticker states, uint8[N,24]."""
        return self._bufs[self._cur].rows[:, :24].copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._clear_pool()
        options = options or {}
        n, rows = self.num_envs, self._bufs[self._cur].rows
        if "states" in options:
            states = np.asarray(options["states"], dtype=np.uint8)
            if states.shape != (n, 24):
                raise ValueError(f"options['states'] has shape {states.shape}; expected ({n}, 24)")
            if states.max() > 5:  # a colour code outside _OBS_TABLE would make step reject every action
                raise ValueError("options['states'] has colours outside 0..5")
            rows[:, :24], self._depths[:] = hold(states, self.frame), -1
        elif "scramble_depth" in options:
            d = self._check_level("scramble_depth", options["scramble_depth"])
            depths, rows[:, :24] = self._draw_states(np.full(n, d, dtype=np.int64))
            self._depths[:] = depths
        else:
            sl = self._next_scrambles(n)
            rows[:, :24], self._depths[:] = self._pool_s[sl], self._pool_d[sl]
        rows[:, 24:32] = _NO_HISTORY
        self._start[:] = self._t
        obs = _encode_heads(rows[:, :32])
        if not self.copy:
            obs = _copy(obs, self._obs)
        info = {"solved": np.zeros(n, dtype=bool), "scramble_depth": self._depths.copy(), **_hidden_state(obs)}
        return obs, info

    def step(self, actions):
        n = self.num_envs
        a = np.asarray(actions)
        if a.dtype != np.int64:
            if a.dtype.kind not in "iu":
                raise ValueError(f"actions must be integers in [0, {N_MOVES}), got dtype {a.dtype}")
            a = a.astype(np.int64)
        if a.shape != (n,):
            raise ValueError(f"actions must be int[{n}] in [0, {N_MOVES}), got {a!r}")
        if self.frame == "corner":  # the turn as applied; the step's own range check would see only mapped ones
            _check_actions(a)
            a = turns(a, self.frame)
        if self._kernel is not None:
            final, obs, rewards, solved, truncated, done, depths, to_reset = self._advance_kernel(a)
        else:
            final, obs, rewards, solved, truncated, done, depths, to_reset = self._advance_numpy(a)
        ended = done.nonzero()[0] if to_reset != 0 else ()  # None: not counted (numpy path)
        if len(ended):
            if self._curriculum_on:
                self._record_outcomes(solved[ended], depths[ended])
            sl = self._next_scrambles(len(ended))
            self._bufs[self._cur].heads[ended] = self._pool_h[sl]
            self._depths[ended] = self._pool_d[sl]
            self._start[ended] = self._now
            obs.view(_OBS_ROW)[:, 0][ended] = self._pool_or[sl]
        info = {"final_obs": final, "_final_obs": done, "solved": solved.copy(), "scramble_depth": depths,
                **_hidden_state(obs), "final_true_state": final[:, :144].copy()}
        return obs, rewards, solved, truncated, info

    def _tick(self) -> None:
        self._t = t = self._t + 1
        self._now[()], self._last_start[()] = t, t - self.max_steps

    def _advance_kernel(self, a: np.ndarray):
        """The step by the C kernel (_cube_step.c), with the autoresets when the pool holds enough scrambles and no
        curriculum has to see the outcomes first; returns how many resets are left to ``step`` (0 or None: none)."""
        n, cur = self.num_envs, self._cur ^ 1
        final = np.empty((n, OBS_DIM), dtype=np.float32)
        obs = np.empty_like(final) if self.copy else self._obs
        rewards, depths = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.int64)
        solved, truncated, done = np.empty(n, dtype=bool), np.empty(n, dtype=bool), np.empty(n, dtype=bool)
        pool = None if self._curriculum_on else self._pool_hb
        k = self._kernel.step(a, self._bufs[self._cur].rows, self._bufs[cur].rows, self._start, self._depths, depths,
                              final, obs, rewards, solved, truncated, done, self._t + 1, self.max_steps, -1.0,
                              self._win, pool, self._pool_o, self._pool_d, self._pool_i)
        if k == -1:
            raise ValueError(f"actions must be int[{n}] in [0, {N_MOVES}), got {a!r}")
        self._cur = cur
        self._tick()
        if k >= 0:
            self._pool_i += k
            return final, obs, rewards, solved, truncated, done, depths, 0
        return final, obs, rewards, solved, truncated, done, depths, -2 - k

    def _advance_numpy(self, a: np.ndarray):
        """The step before autoresets: new rows, observations, rewards and flags (the kernel's reference)."""
        n = self.num_envs
        # Range check without a reduction: table row a + 1, clipped, is a poison row for an invalid action (the
        # largest int64 wraps around), and its head code makes the observation lookup raise. The new rows go to
        # the spare buffer, so nothing is committed before that.
        idx = self._table.take(np.add(a, self._one, out=self._sel), axis=0, out=self._idx, mode="clip")
        idx += self._off
        cur = self._cur ^ 1
        src, rows, codes, _, stickers, faces = self._bufs[cur]
        src.take(idx, out=rows, mode="clip")  # in range; "raise" would buffer
        try:
            final = _OBS_TABLE.take(codes, axis=0)  # a new array: copy=True needs no copy of it
        except IndexError:
            raise ValueError(f"actions must be int[{n}] in [0, {N_MOVES}), got {a!r}") from None
        self._cur = cur
        final = final.reshape(n, OBS_DIM)
        solved = stickers == faces
        self._tick()
        timeout = self._start <= self._last_start
        truncated = timeout > solved  # a solving step is not also truncated
        done = timeout | solved
        rewards = self._reward_table.take(solved)
        obs = _copy(final, None if self.copy else self._obs)
        return final, obs, rewards, solved, truncated, done, self._depths.copy(), None

    def render(self):
        if self.render_mode == "ansi":
            return tuple(render_net(s) for s in self.states)
        return None


# ------------------------------------------------------------------------------------------- factory


def make_vector_env(num_envs: int, scramble_depth: int, max_steps: int, solve_bonus: float,
                    curriculum: dict | None = None, scramble: str = "moves", name: str = "cube2x2",
                    frame: str = "free") -> Cube2x2VectorEnv:
    """``conf/env/cube2x2.yaml``'s target: the config's keys -> a vector env (a curriculum that is not enabled
    is dropped, as in ``cpcrl.envs.factory.make_cube_env``, which has no ``scramble``)."""
    curriculum = dict(curriculum) if curriculum else None
    if curriculum is not None and not curriculum.get("enabled", False):
        curriculum = None
    return Cube2x2VectorEnv(num_envs=num_envs, scramble_depth=scramble_depth, max_steps=max_steps,
                            solve_bonus=solve_bonus, curriculum=curriculum, scramble=scramble, frame=frame)


def check_config(**env_kwargs) -> None:
    """Raise ``ConfigError`` (one line: what is wrong, what is valid) if ``make_vector_env(**env_kwargs)`` would
    fail on a value, without drawing any state: for ``config.validate`` before a run dir exists."""
    from cpcrl.errors import ConfigError

    kwargs = {k: v for k, v in env_kwargs.items() if k != "_target_"}
    try:
        make_vector_env(**{**kwargs, "num_envs": 1})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"env={kwargs.get('name', 'cube2x2')}: {e}") from None
