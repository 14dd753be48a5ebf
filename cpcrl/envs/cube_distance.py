"""Exact quarter-turn distances of the pocket cube, and states drawn uniformly or at an exact distance.

Positions
---------
A *position* is a sticker state up to whole-cube rotation (``is_solved`` ignores orientation too). The cube
has 88,179,840 sticker states reachable by the 12 moves and every position is 24 of them (a rotation that
fixes a state fixes its DLB corner's place and twist, so it is the identity): 7! x 3^6 = 3,674,160
positions. A position's index is computed in the frame that brings the corner cubie coloured D, L, B
(its *reference cubie*) home to the DLB slot with its D sticker down:

    index = lehmer(permutation of the other 7 cubies) * 729 + base3(twists of the first 6 slots)

where a slot's twist is which of its three stickers (the U/D-facing one first, then the others in a
right-handed order) shows the cubie's U/D colour; the 7th twist follows from the sum being 0 mod 3. Index 0 is
solved. The corner model is derived from the sticker geometry and move tables of ``cube2x2`` (no second copy
of the cube's logic): the 24 rotations are closures of ``U+ D-``, ``R+ L-``, ``F+ B-``, and the BFS move
tables are ``apply_moves`` applied to decoded representatives.

Distance table
--------------
``distance_table()`` is int8[3,674,160], the quarter-turn (12 moves) distance of every position: a
breadth-first search over the coordinates with the moves U, R, F (they never move the DLB corner; each of D,
L, B is one of them followed by a rotation), ~1 s in numpy. It is cached at
``$XDG_CACHE_HOME/cpcrl/cube2x2_qtm_distances_v1.bin`` (``~/.cache/cpcrl/`` without XDG_CACHE_HOME): a
magic line, the sha256 of the table, the table. A file that is missing, truncated, fails its checksum or does
not have the published distance counts (OEIS A079762, ``DISTANCE_COUNTS``) is rebuilt; writes go to a temp
file in the same dir and ``os.replace`` it, so concurrent builders never leave a partial file.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cpcrl.envs.cube2x2 import MOVE_NAMES, MOVE_PERMS, SOLVED, _sticker_geometry, apply_moves

__all__ = [
    "N_POSITIONS", "DISTANCE_COUNTS", "GODS_NUMBER", "ROTATIONS", "position_index", "index_to_states",
    "distance_table", "optimal_distance", "sample_uniform", "sample_at_distance", "cache_path",
]

N_POSITIONS = math.factorial(7) * 3**6  # 3,674,160
# OEIS A079762: positions of the 2x2x2 cube at quarter-turn distance 0..14 (God's number 14).
DISTANCE_COUNTS = (1, 6, 27, 120, 534, 2256, 8969, 33058, 114149, 360508, 930588, 1350852, 782536, 90280, 276)
GODS_NUMBER = len(DISTANCE_COUNTS) - 1
_MOVE = {name: i for i, name in enumerate(MOVE_NAMES)}

# --------------------------------------------------------------------------------------------- corners


def _corner_model():
    """Corner slots (int[8,3] sticker indices, U/D sticker first, right-handed) with the DLB slot last."""
    pos, nrm = _sticker_geometry()
    slots = []
    for p in sorted({tuple(x) for x in pos}, key=lambda p: (p == (-1, -1, -1), p)):
        idx = [i for i in range(24) if tuple(pos[i]) == p]
        idx.sort(key=lambda i: nrm[i][1] == 0)  # the U/D sticker (normal +-y) first
        a, b, c = idx
        if np.linalg.det(np.array([nrm[a], nrm[b], nrm[c]])) < 0:
            b, c = c, b
        slots.append((a, b, c))
    return np.array(slots, dtype=np.intp)


CORNERS = _corner_model()
CORNERS.flags.writeable = False
_REF = 7  # the DLB slot, where the reference cubie lives in the canonical frame
_CUBIE_COLOURS = SOLVED[CORNERS]  # [cubie, k]: colour of cubie's k-th sticker (k = 0: its U/D colour)
_CODE_TO_CUBIE = np.full(64, -1, dtype=np.int8)
_CODE_TO_CUBIE[(1 << _CUBIE_COLOURS.astype(np.int64)).sum(1)] = np.arange(8)


def _compose(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The sticker permutation of "p, then q" (``state[p][q] == state[_compose(p, q)]``)."""
    return p[q]


def _rotations() -> np.ndarray:
    gens = [_compose(MOVE_PERMS[_MOVE[a]], MOVE_PERMS[_MOVE[b]]) for a, b in (("U+", "D-"), ("R+", "L-"), ("F+", "B-"))]
    seen = {tuple(range(24)): np.arange(24)}
    frontier = [np.arange(24)]
    while frontier:
        nxt = []
        for p in frontier:
            for g in gens:
                q = _compose(p, g)
                if tuple(q) not in seen:
                    seen[tuple(q)] = q
                    nxt.append(q)
        frontier = nxt
    rots = np.array(sorted(seen.values(), key=tuple), dtype=np.intp)
    assert len(rots) == 24
    return rots


ROTATIONS = _rotations()  # [24, 24]: ``state[ROTATIONS[r]]`` is the state turned as a whole; row 0 = identity
ROTATIONS.flags.writeable = False


def _ref_place(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slot and twist of the reference (DLB-coloured) cubie in each state."""
    ref = _CUBIE_COLOURS[_REF]
    cols = states[:, CORNERS]  # [N, 8, 3]
    code = (np.left_shift(1, cols, dtype=np.int16)).sum(-1)  # colour set of each slot
    is_ref = code == (1 << ref.astype(np.int16)).sum()
    if not is_ref.any(1).all():
        raise ValueError("states hold no corner coloured D, L, B (not a reachable 2x2 state)")
    slot = is_ref.argmax(1)
    twist = (cols[np.arange(len(states)), slot] == ref[0]).argmax(1)
    return slot, twist


def _canonical_rotations() -> np.ndarray:
    """[8, 3] -> the rotation (index into ROTATIONS) that brings a reference cubie at (slot, twist) home."""
    table = np.full((8, 3), -1, dtype=np.intp)
    inverse = np.argsort(ROTATIONS, axis=1)
    turned = SOLVED[ROTATIONS]  # solved, turned by each rotation
    slot, twist = _ref_place(turned)
    for r in range(24):  # each inverse rotation undoes one (slot, twist)
        table[slot[r], twist[r]] = int(np.flatnonzero((ROTATIONS == inverse[r]).all(1))[0])
    assert (table >= 0).all()
    return table


_CANON = _canonical_rotations()
_FACT = np.array([math.factorial(6 - i) for i in range(7)], dtype=np.int64)  # Lehmer weights 720 .. 1
_POW3 = 3 ** np.arange(5, -1, -1, dtype=np.int64)  # base-3 weights of twists of slots 0..5


def canonical(states: np.ndarray) -> np.ndarray:
    """uint8[N,24]: each state turned as a whole so its reference cubie sits at DLB, D sticker down."""
    states = np.asarray(states, dtype=np.uint8).reshape(-1, 24)
    slot, twist = _ref_place(states)
    return np.take_along_axis(states, ROTATIONS[_CANON[slot, twist]], axis=1)


def _coords(canon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permutation index (0..5039) and twist index (0..728) of canonical states."""
    cols = canon[:, CORNERS[:_REF]]  # [N, 7, 3]
    cubie = _CODE_TO_CUBIE[(np.left_shift(1, cols, dtype=np.int16)).sum(-1)].astype(np.int64)  # [N, 7]
    if (cubie < 0).any():
        raise ValueError("states hold a corner whose colours no cube corner has (not a reachable 2x2 state)")
    twist = (cols <= 1).argmax(-1).astype(np.int64)  # where the U/D colour (0 or 1) is
    lehmer = (cubie[:, :, None] > cubie[:, None, :]) & np.triu(np.ones((7, 7), dtype=bool), 1)
    perm_idx = lehmer.sum(-1) @ _FACT
    return perm_idx, twist[:, :6] @ _POW3


def position_index(states: np.ndarray) -> np.ndarray:
    """int64[N]: the position (0 .. N_POSITIONS - 1) of each sticker state, the same for all its rotations."""
    perm, twist = _coords(canonical(states))
    return perm * 729 + twist


def _decode(perm_idx: np.ndarray, twist_idx: np.ndarray) -> np.ndarray:
    """Canonical sticker states (reference cubie home) of coordinates."""
    perm_idx, twist_idx = np.asarray(perm_idx, dtype=np.int64), np.asarray(twist_idx, dtype=np.int64)
    n = len(perm_idx)
    cubies = np.empty((n, 8), dtype=np.int64)
    used = np.zeros((n, 7), dtype=bool)
    rest = perm_idx.copy()
    for i in range(7):  # the c-th smallest unused cubie, c the Lehmer digit
        c, rest = np.divmod(rest, _FACT[i])
        rank = np.cumsum(~used, axis=1) - 1
        pick = ((rank == c[:, None]) & ~used).argmax(1)
        cubies[:, i] = pick
        used[np.arange(n), pick] = True
    cubies[:, _REF] = _REF
    twists = np.zeros((n, 8), dtype=np.int64)
    twists[:, :6] = (twist_idx[:, None] // _POW3) % 3
    twists[:, 6] = (-twists[:, :6].sum(1)) % 3
    k = np.arange(3)
    states = np.empty((n, 24), dtype=np.uint8)
    # sticker k of slot j shows the cubie's colour (k - twist) mod 3
    states[:, CORNERS] = _CUBIE_COLOURS[cubies[:, :, None], (k - twists[:, :, None]) % 3]
    return states


def index_to_states(index: np.ndarray, rotation: np.ndarray | None = None) -> np.ndarray:
    """uint8[N,24] sticker states of positions ``index``, turned by ``ROTATIONS[rotation]`` (default: none)."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= N_POSITIONS):
        raise ValueError(f"position index out of range: expected 0..{N_POSITIONS - 1}")
    states = _decode(index // 729, index % 729)
    if rotation is not None:
        states = np.take_along_axis(states, ROTATIONS[np.asarray(rotation, dtype=np.intp).reshape(-1)], axis=1)
    return states


# ----------------------------------------------------------------------------------------- the table


def _move_tables() -> tuple[np.ndarray, np.ndarray]:
    """Coordinate move tables [5040, 6] and [729, 6] for U+ U- R+ R- F+ F-, from ``apply_moves``."""
    moves = [_MOVE[m] for m in ("U+", "U-", "R+", "R-", "F+", "F-")]
    perm_states = _decode(np.arange(5040), np.zeros(5040, np.int64))
    twist_states = _decode(np.zeros(729, np.int64), np.arange(729))
    pt, tt = np.empty((5040, 6), np.int64), np.empty((729, 6), np.int64)
    for j, m in enumerate(moves):
        pt[:, j] = _coords(canonical(apply_moves(perm_states, np.full(5040, m))))[0]
        tt[:, j] = _coords(canonical(apply_moves(twist_states, np.full(729, m))))[1]
    return pt, tt


def build_distance_table() -> np.ndarray:
    """int8[N_POSITIONS]: breadth-first search from solved, one whole frontier per numpy step."""
    pt, tt = _move_tables()
    dist = np.full(N_POSITIONS, -1, dtype=np.int8)
    dist[0] = 0
    frontier, d = np.zeros(1, dtype=np.int64), 0
    while len(frontier):
        d += 1
        p, t = np.divmod(frontier, 729)
        nb = (pt[p] * 729 + tt[t]).reshape(-1)
        fresh = np.zeros(N_POSITIONS, dtype=bool)
        fresh[nb] = True
        fresh &= dist < 0
        frontier = np.flatnonzero(fresh)
        dist[frontier] = d
    return dist


_MAGIC = b"cpcrl cube2x2 qtm distances v1\n"


def cache_path() -> Path:
    """Where the table is cached: ``$XDG_CACHE_HOME/cpcrl/`` (an absolute XDG_CACHE_HOME) or ``~/.cache/cpcrl/``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "cpcrl" / "cube2x2_qtm_distances_v1.bin"


def _valid(table: np.ndarray) -> bool:
    return table.shape == (N_POSITIONS,) and tuple(np.bincount(table.astype(np.int64) + 1, minlength=16)[1:]) == \
        DISTANCE_COUNTS


def read_table(path: Path) -> np.ndarray | None:
    """The cached table at ``path``, or None if it is missing, truncated, corrupt or wrong."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + 32
    if len(raw) != head + N_POSITIONS or not raw.startswith(_MAGIC):
        return None
    body = raw[head:]
    if hashlib.sha256(body).digest() != raw[len(_MAGIC) : head]:
        return None
    table = np.frombuffer(body, dtype=np.int8).copy()
    return table if _valid(table) else None


def write_table(path: Path, table: np.ndarray) -> None:
    """Write atomically: a temp file in the same dir, fsynced, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = np.ascontiguousarray(table, dtype=np.int8).tobytes()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(body).digest() + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_or_build(path: Path, build: Callable[[], np.ndarray] = build_distance_table) -> np.ndarray:
    """The table from ``path``; if that is not a valid table, ``build()`` it and write it there."""
    table = read_table(path)
    if table is not None:
        return table
    table = build()
    if not _valid(table):
        raise RuntimeError("the distance table built does not have the published counts (OEIS A079762)")
    try:
        write_table(path, table)
    except OSError as e:  # a read-only home: the table still works for this process
        warnings.warn(f"could not cache the cube distance table at {path}: {e}", stacklevel=2)
    return table


_TABLE: np.ndarray | None = None
_BY_DISTANCE: tuple[np.ndarray, np.ndarray] | None = None


def distance_table() -> np.ndarray:
    """int8[N_POSITIONS], read once per process (from the cache, else built and cached)."""
    global _TABLE
    if _TABLE is None:
        table = load_or_build(cache_path())
        table.flags.writeable = False
        _TABLE = table
    return _TABLE


def optimal_distance(states: np.ndarray) -> np.ndarray:
    """int64[N]: the fewest quarter turns that solve each state (uint8[N,24]), orientation-free like ``is_solved``."""
    return distance_table()[position_index(states)].astype(np.int64)


# ------------------------------------------------------------------------------------------ sampling


def _check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r} is invalid: expected an int >= 0")
    return int(n)


def sample_uniform(rng: np.random.Generator, n: int, exclude_solved: bool = True, rotate: bool = True) -> np.ndarray:
    """uint8[n,24] states uniform over all reachable sticker states: a uniform position (random permutation of
    7 corners, random twists of 6), then a uniform whole-cube rotation. No moves and no table involved.
    ``exclude_solved`` leaves out the solved position (probability 1 / 3,674,160). ``rotate=False`` keeps the
    canonical frame (the D-L-B corner home, D down: the frame that U, R, F turns alone never leave); the
    position drawn is the same either way."""
    n = _check_count(n)
    # one draw per state (position * 24 + rotation), so the first k of n states are the k states of n = k
    x = rng.integers(24 if exclude_solved else 0, N_POSITIONS * 24, size=n)
    return index_to_states(x // 24, x % 24 if rotate else None)


def _by_distance() -> tuple[np.ndarray, np.ndarray]:
    global _BY_DISTANCE
    if _BY_DISTANCE is None:
        order = np.argsort(distance_table(), kind="stable").astype(np.int32)
        _BY_DISTANCE = order, np.concatenate([[0], np.cumsum(DISTANCE_COUNTS)])
    return _BY_DISTANCE


def sample_at_distance(rng: np.random.Generator, distances, rotate: bool = True) -> np.ndarray:
    """uint8[N,24]: for each ``distances[i]`` (0..14) a state uniform among those exactly that far from solved
    (``rotate=False``: the position in the canonical frame, see ``sample_uniform``)."""
    d = np.asarray(distances, dtype=np.int64).reshape(-1)
    if d.size and (d.min() < 0 or d.max() > GODS_NUMBER):
        raise ValueError(f"distance {int(d.max() if d.max() > GODS_NUMBER else d.min())} is invalid: "
                         f"expected an int in 0..{GODS_NUMBER}")
    order, start = _by_distance()
    counts = np.asarray(DISTANCE_COUNTS, dtype=np.int64)
    pick = start[d] + rng.integers(counts[d])
    rot = rng.integers(24, size=len(d))  # drawn either way, so rotate does not change the positions
    return index_to_states(order[pick], rot if rotate else None)

