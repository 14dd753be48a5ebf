"""Behaviour of the 2x2 cube: group structure of the moves, hand-checked stickers, env semantics."""

import hashlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import cpcrl.envs  # noqa: F401  (registers cpcrl/Cube2x2-v0)
from cpcrl.envs import cube2x2
from cpcrl.envs.cube2x2 import (
    INVERSE_MOVE,
    MOVE_NAMES,
    MOVE_PERMS,
    SOLVED,
    Cube2x2Env,
    Cube2x2VectorEnv,
    apply_moves,
    encode_obs,
    is_solved,
    scramble,
)

M = {name: i for i, name in enumerate(MOVE_NAMES)}
U, D, L, R, F, B = range(6)  # face (and solved colour) ids


def run(state, *names):
    """Apply named moves to one state."""
    for name in names:
        state = apply_moves(state[None], [M[name]])[0]
    return state


def face(state, f):
    return state[4 * f : 4 * f + 4]


@pytest.fixture(params=["c", "numpy"])
def step_path(request, monkeypatch):
    """Runs a vector-env test with the C step (_cube_step.c) and again with the numpy path it must equal."""
    if request.param == "numpy":
        monkeypatch.setattr(cube2x2, "_cube_step", None)
    elif cube2x2._cube_step is None:
        pytest.skip("the C step was not built (no C compiler at install time)")
    return request.param


@pytest.fixture
def random_state():
    return scramble(np.random.default_rng(0), [20])[0]


# ----------------------------------------------------------------------------------------- move group


def test_moves_are_permutations_and_inverse_table():
    assert MOVE_PERMS.shape == (12, 24)
    for p in MOVE_PERMS:
        assert sorted(p) == list(range(24))
    assert [MOVE_NAMES[INVERSE_MOVE[i]] for i in range(12)] == [
        "U-", "U+", "D-", "D+", "L-", "L+", "R-", "R+", "F-", "F+", "B-", "B+"
    ]


@pytest.mark.parametrize("a", range(12))
def test_order_four_and_inverse(a, random_state):
    s = random_state
    assert not np.array_equal(run(s, MOVE_NAMES[a]), s)
    assert np.array_equal(run(s, *[MOVE_NAMES[a]] * 4), s)
    assert np.array_equal(run(s, MOVE_NAMES[a], MOVE_NAMES[INVERSE_MOVE[a]]), s)


@pytest.mark.parametrize("x,y", [("U", "D"), ("L", "R"), ("F", "B")])
def test_opposite_faces_commute(x, y, random_state):
    for sx in "+-":
        for sy in "+-":
            assert np.array_equal(run(random_state, x + sx, y + sy), run(random_state, y + sy, x + sx))


@pytest.mark.parametrize("x,y", [(x, y) for x in "UDLRFB" for y in "UDLRFB" if x < y and {x, y} not in
                                 ({"U", "D"}, {"L", "R"}, {"F", "B"})])
def test_adjacent_faces_do_not_commute(x, y):
    assert not np.array_equal(run(SOLVED, x + "+", y + "+"), run(SOLVED, y + "+", x + "+"))


@pytest.mark.parametrize("a", range(12))
def test_quarter_turn_moves_twelve_stickers(a, random_state):
    moved = np.flatnonzero(MOVE_PERMS[a] != np.arange(24))
    assert len(moved) == 12
    turned = a // 2
    opposite = turned ^ 1  # U/D, L/R, F/B are face pairs (0,1), (2,3), (4,5)
    per_face = np.bincount(moved // 4, minlength=6)
    assert per_face[turned] == 4 and per_face[opposite] == 0
    assert sorted(per_face[[f for f in range(6) if f not in (turned, opposite)]]) == [2, 2, 2, 2]
    after = apply_moves(random_state[None], [a])[0]
    assert sorted(after) == sorted(random_state)  # colour multiset kept


def test_bfs_quarter_turn_distribution():
    # Pocket cube, quarter-turn metric, generators U, R, F (the DLB corner stays put, so distinct sticker
    # states = distinct positions). Published counts: 1, 6, 27, 120, 534, 2256, 8969, ...
    gens = MOVE_PERMS[[M[n] for n in ("U+", "U-", "R+", "R-", "F+", "F-")]]
    seen = {SOLVED.tobytes()}
    frontier = SOLVED[None]
    counts = [1]
    for _ in range(5):
        nxt = frontier[:, gens].reshape(-1, 24)  # every state x every generator
        uniq = np.unique(nxt, axis=0)
        fresh = np.array([s for s in uniq if s.tobytes() not in seen])
        seen.update(s.tobytes() for s in fresh)
        counts.append(len(fresh))
        frontier = fresh
    assert counts == [1, 6, 27, 120, 534, 2256]


def test_u_plus_by_hand():
    # Looking down on U, clockwise carries the front layer to the left: the F face's top row goes to L,
    # so after U+ the F face's top row shows what was on R (and L shows F, B shows L, R shows B).
    # Within a face stickers are 0 1 / 2 3 as seen from outside with U up, so the top row is 0, 1.
    s = run(SOLVED, "U+")
    assert list(face(s, F)) == [R, R, F, F]
    assert list(face(s, L)) == [F, F, L, L]
    assert list(face(s, B)) == [L, L, B, B]
    assert list(face(s, R)) == [B, B, R, R]
    assert list(face(s, U)) == [U] * 4 and list(face(s, D)) == [D] * 4
    # A marked U sticker: clockwise seen from above moves the U face's bottom-left (2) to its top-left (0).
    marked = SOLVED.copy()
    marked[4 * U + 2] = 9
    assert run(marked, "U+")[4 * U + 0] == 9


def test_r_plus_by_hand():
    # Looking at R from the right, clockwise carries its front layer upwards: F's right column goes to U.
    s = run(SOLVED, "R+")
    assert list(face(s, U)) == [U, F, U, F]
    assert list(face(s, F)) == [F, D, F, D]
    # B is seen from behind, so the R-side column of B is its left column (0, 2); it receives U.
    assert list(face(s, B)) == [U, B, U, B]


# ------------------------------------------------------------------------------------------ is_solved


def test_is_solved():
    assert is_solved(SOLVED[None]).tolist() == [True]
    assert is_solved(SOLVED).tolist() == [True] and is_solved(SOLVED.astype(np.int64)).tolist() == [True]
    singles = apply_moves(np.repeat(SOLVED[None], 12, 0), np.arange(12))
    assert not is_solved(singles).any()
    # U+ and D- both turn clockwise as seen from above, so together they rotate the whole cube.
    assert is_solved(run(SOLVED, "U+", "D-")[None])[0]
    assert is_solved(run(SOLVED, "R+", "L-")[None])[0]
    assert is_solved(run(SOLVED, "F+", "B-")[None])[0]
    assert not is_solved(run(SOLVED, "U+", "D+")[None])[0]


def test_is_solved_fast_path_matches_generic():
    # uint8 rows are compared as byte strings; other dtypes elementwise. Both must agree, NULs (colour 0) included.
    rng = np.random.default_rng(9)
    states = scramble(rng, rng.integers(0, 4, size=3000))
    states = np.vstack([states, run(SOLVED, "F+", "B-")[None], rng.integers(0, 2, size=(500, 24)).astype(np.uint8)])
    expected = (states == states[:, np.repeat(np.arange(0, 24, 4), 4)]).all(axis=1)
    assert expected.any() and not expected.all()
    assert np.array_equal(is_solved(states), expected)
    assert np.array_equal(is_solved(states.astype(np.int64)), expected)
    assert np.array_equal(is_solved(np.asfortranarray(states)), expected)


# ---------------------------------------------------------------------------------------- observation


def test_encode_obs():
    obs = encode_obs(SOLVED[None], np.array([[-1, -1, -1, -1]]))
    assert obs.shape == (1, 192) and obs.dtype == np.float32
    assert obs[0, :144].sum() == 24 and obs[0, 144:].sum() == 0
    assert obs[0, 6 * 5 + D] == 1 and obs[0, 6 * 23 + B] == 1  # stickers 4..7 are D's, 20..23 B's
    obs = encode_obs(SOLVED[None], np.array([[3, 11, -1, -1]]))
    assert np.flatnonzero(obs[0, 144:]).tolist() == [3, 12 + 11]


def test_single_env_history_shift():
    env = Cube2x2Env()
    obs, info = env.reset(seed=0, options={"state": run(SOLVED, "U+", "R+", "F+", "L+", "B+")})
    assert obs[144:].sum() == 0
    for _, a in enumerate([M["B-"], M["L-"], M["F-"]]):
        obs, *_ = env.step(a)
        assert obs[:144].sum() == 24
    hist = obs[144:].reshape(4, 12)
    assert hist.sum(1).tolist() == [1, 1, 1, 0]
    assert hist.argmax(1)[:3].tolist() == [M["F-"], M["L-"], M["B-"]]  # most recent first
    assert np.array_equal(obs, encode_obs(env.state[None], [[M["F-"], M["L-"], M["B-"], -1]])[0])


# ------------------------------------------------------------------------------------------- scramble


def test_scramble_never_solved_never_undoes():
    rng = np.random.default_rng(1)
    depths = np.tile(np.arange(15), 400)
    states, moves = scramble(rng, depths, return_moves=True)
    assert moves.shape == (len(depths), 14)
    assert np.array_equal(states[depths == 0], np.repeat(SOLVED[None], 400, 0))
    assert not is_solved(states[depths > 0]).any()
    for i in range(len(depths)):
        seq = moves[i, : depths[i]]
        assert (moves[i, depths[i] :] == -1).all() and (seq >= 0).all()
        assert not (seq[1:] == INVERSE_MOVE[seq[:-1]]).any()
    # Replaying the returned moves gives the returned states.
    replay = np.repeat(SOLVED[None], len(depths), 0)
    for t in range(14):
        live = moves[:, t] >= 0
        replay[live] = apply_moves(replay[live], moves[live, t])
    assert np.array_equal(replay, states)


def test_scramble_redraws_rotations():
    # At depth 2, 1 in 11 raw sequences (e.g. U+ D-) is a whole-cube rotation; none may come back.
    states = scramble(np.random.default_rng(2), np.full(5000, 2))
    assert not is_solved(states).any()
    env = Cube2x2VectorEnv(num_envs=256, scramble_depth=2)
    _, info = env.reset(seed=3)
    assert not is_solved(env.states).any() and (info["scramble_depth"] == 2).all()


def test_scramble_seeded():
    a = scramble(np.random.default_rng(5), np.full(10, 7))
    b = scramble(np.random.default_rng(5), np.full(10, 7))
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------------------- single env


def test_single_env_episode():
    env = Cube2x2Env(max_steps=3, solve_bonus=10.0)
    obs, info = env.reset(seed=0, options={"state": run(SOLVED, "U+")})
    assert obs.shape == (192,) and obs.dtype == np.float32
    assert {k: info.pop(k) for k in ("solved", "scramble_depth")} == {"solved": False, "scramble_depth": -1}
    assert np.array_equal(info["true_class"], run(SOLVED, "U+")) and np.array_equal(info["true_state"], obs[:144])
    obs, reward, term, trunc, info = env.step(M["R+"])
    assert (reward, term, trunc, info["solved"]) == (-1.0, False, False, False)
    obs, reward, term, trunc, info = env.step(M["R-"])
    assert (reward, term, trunc) == (-1.0, False, False)
    obs, reward, term, trunc, info = env.step(M["D-"])  # U+ then D- after R+R- = rotation: solved
    assert (reward, term, trunc, info["solved"]) == (9.0, True, False, True)
    env.reset(options={"state": run(SOLVED, "U+")})
    for _ in range(3):
        _, reward, term, trunc, _ = env.step(M["F+"])
    assert (reward, term, trunc) == (-1.0, False, True)


def test_single_env_reset_depth_and_seed():
    env = Cube2x2Env(scramble_depth=5)
    o1, i1 = env.reset(seed=42)
    o2, i2 = env.reset(seed=42)
    assert np.array_equal(o1, o2) and i1["scramble_depth"] == 5
    _, info = env.reset(options={"scramble_depth": 9})
    assert info["scramble_depth"] == 9 and not is_solved(env.state[None])[0]


def test_check_env_and_make():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Through make so the env has a spec: without one the checker warns it cannot try other render modes.
        check_env(gym.make("cpcrl/Cube2x2-v0").unwrapped)
        check_env(gym.make("cpcrl/Cube2x2-v0", render_mode="ansi").unwrapped)
        check_env(gym.make("cpcrl/Cube2x2-v0", curriculum={"window": 5}).unwrapped)
        env = gym.make("cpcrl/Cube2x2-v0", scramble_depth=3)
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        env.step(env.action_space.sample())


def test_render_ansi():
    env = Cube2x2Env(render_mode="ansi")
    env.reset(seed=0, options={"state": run(SOLVED, "U+")})
    text = env.render()
    assert isinstance(text, str)
    assert sum(ch in "WYORGB" for ch in text) == 24
    lines = text.splitlines()
    assert lines[0].split() == ["W", "W"] and lines[2].split() == ["G", "G", "R", "R", "B", "B", "O", "O"]
    assert Cube2x2Env().render() is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scramble_depth=-1), "env.scramble_depth=-1: must be a non-negative integer"),
        (dict(max_steps=0), "env.max_steps=0: must be a positive integer"),
        (dict(num_envs=0), "env.num_envs=0: must be a positive integer"),
        (dict(render_mode="human"), "render_mode='human' is invalid"),
        (dict(curriculum={"treshold": 0.5}), "unknown keys"),
        (dict(curriculum={"threshold": 1.5}), "curriculum.threshold"),
        (dict(curriculum={"mix": 1.5}), "curriculum.mix"),
        (dict(frame="fixed"), "env.frame='fixed': valid are free, corner"),
    ],
)
def test_bad_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Cube2x2VectorEnv(**kwargs)
    if "num_envs" not in kwargs:
        with pytest.raises(ValueError, match=match):
            Cube2x2Env(**kwargs)


def test_bad_actions(step_path):
    env, twin = Cube2x2VectorEnv(num_envs=2), Cube2x2VectorEnv(num_envs=2)
    env.reset(seed=0)
    twin.reset(seed=0)
    big = np.iinfo(np.int64)
    for bad in ([0, 12], [-1, 0], [13, 1], [0, -13], [big.max, 0], [big.min, 0], [0.5, 1.0], [0, 1, 2]):
        with pytest.raises(ValueError, match="actions must be"):
            env.step(np.array(bad))
    with pytest.raises(ValueError, match="actions must be"):
        env.step(np.array([2**64 - 1, 0], dtype=np.uint64))
    # A rejected step changes nothing: the env goes on exactly like one that never saw it.
    for a in ([3, 4], [5, 5], [0, 11]):
        a = np.array(a)
        mine, ref = env.step(a), twin.step(a)
        assert np.array_equal(mine[0], ref[0]) and np.array_equal(mine[1], ref[1])
        assert np.array_equal(mine[4]["final_obs"], ref[4]["final_obs"])
    assert np.array_equal(env.states, twin.states)
    # Other integer dtypes are accepted.
    env.step(np.array([1, 2], dtype=np.uint8))
    with pytest.raises(ValueError, match="action=12"):
        Cube2x2Env().step(12)


# ----------------------------------------------------------------------------------------- vector env


def test_vector_spaces():
    env = Cube2x2VectorEnv(num_envs=5)
    assert env.num_envs == 5
    assert env.single_observation_space.shape == (192,) and env.observation_space.shape == (5, 192)
    assert env.single_action_space.n == 12 and env.action_space.shape == (5,)
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, rew, term, trunc, info = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and rew.dtype == np.float32 and rew.shape == (5,)
    assert term.dtype == bool and trunc.dtype == bool and info["final_obs"].shape == (5, 192)
    assert info["_final_obs"].dtype == bool and info["scramble_depth"].dtype.kind == "i"


def test_vector_equals_single_envs(step_path):
    n, steps = 16, 120
    rng = np.random.default_rng(7)
    start, first = scramble(rng, np.full(n, 1), return_moves=True)
    vec = Cube2x2VectorEnv(num_envs=n, max_steps=4, scramble_depth=2)
    singles = [Cube2x2Env(max_steps=4) for _ in range(n)]
    obs, _ = vec.reset(seed=0, options={"states": start})
    for i, env in enumerate(singles):
        o, _ = env.reset(seed=i, options={"state": start[i]})
        assert np.array_equal(o, obs[i])
    finished = {"term": 0, "trunc": 0}
    for t in range(steps):
        actions = rng.integers(12, size=n)
        if t == 0:
            actions[::2] = INVERSE_MOVE[first[::2, 0]]  # solve half of them right away
        obs, rew, term, trunc, info = vec.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, inf = env.step(actions[i])
            assert np.array_equal(info["final_obs"][i], o)
            assert (rew[i], term[i], trunc[i], info["solved"][i]) == (r, te, tr, inf["solved"])
            if te or tr:
                assert info["_final_obs"][i]
                o, _ = env.reset(options={"state": vec.states[i]})  # follow the vector env's new scramble
                finished["term" if te else "trunc"] += 1
            else:
                assert not info["_final_obs"][i]
            assert np.array_equal(obs[i], o)
    assert finished["term"] >= n // 2 and finished["trunc"] > 0


@pytest.mark.parametrize("n,copy", [(1, True), (64, True), (64, False)])
def test_vector_obs_tracks_states_and_history(n, copy, step_path):
    # The env never encodes from (states, history) itself; check it against encode_obs after many steps with
    # solves, truncations and autoresets, and check the terminal obs and solved flags against the states.
    rng = np.random.default_rng(n)
    env = Cube2x2VectorEnv(num_envs=n, scramble_depth=2, max_steps=7, copy=copy)
    obs, _ = env.reset(seed=1)
    history = np.full((n, 4), -1)
    assert np.array_equal(obs, encode_obs(env.states, history))
    finished = 0
    for _ in range(400):
        before = env.states
        # Solve some cubes on purpose: try all 12 moves, take a solving one where there is one.
        solving = is_solved(apply_moves(np.repeat(before, 12, 0), np.tile(np.arange(12), n))).reshape(n, 12)
        a = np.where(solving.any(1) & (rng.random(n) < 0.5), solving.argmax(1), rng.integers(12, size=n))
        obs, rew, term, trunc, info = env.step(a)
        after = apply_moves(before, a)
        history = np.concatenate([a[:, None], history[:, :3]], axis=1)
        assert np.array_equal(info["final_obs"], encode_obs(after, history))
        assert np.array_equal(term, is_solved(after)) and np.array_equal(info["solved"], term)
        assert np.array_equal(rew, np.where(term, 9.0, -1.0).astype(np.float32))
        done = info["_final_obs"]
        assert np.array_equal(done, term | trunc) and not (term & trunc).any()
        history[done] = -1
        assert np.array_equal(env.states[~done], after[~done])
        assert not is_solved(env.states[done]).any()
        assert np.array_equal(obs, encode_obs(env.states, history))
        finished += done.sum()
    assert finished > 20 * n


def test_vector_matches_recorded_run(step_path):
    # Outputs of fixed-seed runs, with and without a curriculum, recorded with the implementation before the
    # step was optimised (commit 5da050c): the optimised env must produce exactly the same episodes.
    h = hashlib.sha256()
    for kw in (
        dict(num_envs=8, scramble_depth=3, max_steps=5),
        dict(num_envs=5, max_steps=6, curriculum=dict(window=6, threshold=0.1, max_depth=6, spread=1)),
    ):
        env = Cube2x2VectorEnv(**kw)
        obs, info = env.reset(seed=3)
        h.update(obs.astype("<f4").tobytes())
        h.update(info["scramble_depth"].astype("<i8").tobytes())
        rng = np.random.default_rng(4)
        for _ in range(60):
            obs, rew, term, trunc, info = env.step(rng.integers(12, size=env.num_envs))
            for x in (obs, info["final_obs"], rew):
                h.update(x.astype("<f4").tobytes())
            for x in (term, trunc, info["_final_obs"], info["solved"]):
                h.update(x.astype("u1").tobytes())
            h.update(info["scramble_depth"].astype("<i8").tobytes())
    assert env.curriculum_depth > 1  # the curriculum path was exercised
    assert h.hexdigest() == "47ee6cd60171604a9880b805fbb05e7c292dbf7c76853865b4df326946acb7d5"


def test_vector_solved_flag_matches_is_solved(step_path):
    # The vector env detects solves with its own byte trick; check it on cubes one move from solved,
    # from a whole-cube rotation of solved (U+ D-), and from random states.
    rng = np.random.default_rng(4)
    n = 300
    last = rng.integers(12, size=n)
    start = scramble(rng, rng.integers(1, 8, size=n))
    start[:100] = SOLVED
    start[100:200] = run(SOLVED, "U+", "D-")
    start = apply_moves(start, INVERSE_MOVE[last])  # the first 200 are solved by `last`
    vec = Cube2x2VectorEnv(num_envs=n, max_steps=50)
    vec.reset(seed=0, options={"states": start})
    _, _, term, _, info = vec.step(last)
    assert np.array_equal(term, is_solved(apply_moves(start, last)))
    assert term[:200].all() and np.array_equal(info["solved"], term)


def test_vector_reset_options(step_path):
    vec = Cube2x2VectorEnv(num_envs=3, scramble_depth=2)
    _, info = vec.reset(seed=0, options={"scramble_depth": 6})
    assert info["scramble_depth"].tolist() == [6, 6, 6] and not is_solved(vec.states).any()
    with pytest.raises(ValueError, match="expected \\(3, 24\\)"):
        vec.reset(options={"states": np.zeros((2, 24), np.uint8)})
    with pytest.raises(ValueError, match="colours outside 0..5"):
        vec.reset(options={"states": np.full((3, 24), 6, np.uint8)})
    text = Cube2x2VectorEnv(num_envs=2, render_mode="ansi")
    text.reset(seed=0)
    frames = text.render()
    assert len(frames) == 2 and all(sum(ch in "WYORGB" for ch in f) == 24 for f in frames)


def test_vector_autoreset_same_step(step_path):
    vec = Cube2x2VectorEnv(num_envs=3, scramble_depth=4, solve_bonus=10.0)
    start = np.stack([run(SOLVED, "U+"), run(SOLVED, "U+"), run(SOLVED, "F+")])
    vec.reset(seed=0, options={"states": start})
    obs, rew, term, trunc, info = vec.step(np.array([M["U-"], M["R+"], M["B-"]]))  # F+ B- is a rotation
    assert term.tolist() == [True, False, True] and not trunc.any()
    assert info["solved"].tolist() == [True, False, True] and info["_final_obs"].tolist() == [True, False, True]
    assert rew.tolist() == [9.0, -1.0, 9.0]
    assert np.array_equal(info["final_obs"][0], encode_obs(SOLVED[None], [[M["U-"], -1, -1, -1]])[0])
    assert is_solved(info["final_obs"][:, :144].reshape(3, 24, 6).argmax(-1)).tolist() == [True, False, True]
    assert np.array_equal(info["final_obs"][1], obs[1])
    # The returned obs of a finished env is a fresh scramble with an empty history.
    fresh = obs[[0, 2], :144].reshape(2, 24, 6).argmax(-1)
    assert not is_solved(fresh).any() and obs[[0, 2], 144:].sum() == 0
    assert np.array_equal(fresh, vec.states[[0, 2]])
    assert info["scramble_depth"].tolist() == [-1, -1, -1]  # depth of the episodes that ended / went on
    _, _, _, _, info = vec.step(np.zeros(3, dtype=np.int64))
    assert info["scramble_depth"].tolist() == [4, -1, 4]


def test_vector_truncation_and_reward_dtype(step_path):
    vec = Cube2x2VectorEnv(num_envs=2, max_steps=2, scramble_depth=3)
    start = run(SOLVED, "R+", "F+", "U+")
    vec.reset(seed=0, options={"states": np.stack([start, start])})
    for a in ("U+", "U-"):  # visits R+ F+ U2, then back to the start: never solved
        _, rew, term, trunc, info = vec.step(np.full(2, M[a]))
    assert not term.any() and trunc.all() and info["_final_obs"].all()
    assert rew.dtype == np.float32


def test_vector_seeding_reproducible(step_path):
    def roll(seed):
        vec = Cube2x2VectorEnv(num_envs=8, scramble_depth=6, max_steps=3)
        out = [vec.reset(seed=seed)[0]]
        rng = np.random.default_rng(0)
        for _ in range(10):
            out.append(vec.step(rng.integers(12, size=8))[0])
        return np.stack(out)

    assert np.array_equal(roll(1), roll(1))
    assert not np.array_equal(roll(1), roll(2))


def test_copy_false_gives_same_values(step_path):
    fast, ref = Cube2x2VectorEnv(num_envs=4, max_steps=3, copy=False), Cube2x2VectorEnv(num_envs=4, max_steps=3)
    assert np.array_equal(fast.reset(seed=0)[0], ref.reset(seed=0)[0])
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = rng.integers(12, size=4)
        f, r = fast.step(a), ref.step(a)
        assert np.array_equal(f[0], r[0]) and np.array_equal(f[4]["final_obs"], r[4]["final_obs"])
    # With copy=True the returned arrays are the caller's: later steps must not touch them.
    kept = r[0].copy()
    ref.step(rng.integers(12, size=4))
    assert np.array_equal(kept, r[0])


# ----------------------------------------------------------------------------------------- curriculum


CUR = {"enabled": True, "start_depth": 1, "max_depth": 3, "threshold": 0.8, "window": 10, "spread": 0}


def test_curriculum_raises_after_threshold():
    vec = Cube2x2VectorEnv(num_envs=4, curriculum=CUR)
    vec.reset(seed=0)
    assert vec.curriculum_depth == 1
    vec._record_outcomes(np.ones(9, dtype=bool))
    assert vec.curriculum_depth == 1  # fewer than window episodes so far
    vec._record_outcomes(np.array([True]))
    assert vec.curriculum_depth == 2
    vec._record_outcomes(np.ones(9, dtype=bool))
    assert vec.curriculum_depth == 2  # needs a full window at the new depth
    vec._record_outcomes(np.array([False] * 3 + [True] * 7))
    assert vec.curriculum_depth == 2  # the last 10: 7 solved, 0.7 < 0.8
    vec._record_outcomes(np.ones(10, dtype=bool))
    assert vec.curriculum_depth == 3
    vec._record_outcomes(np.ones(50, dtype=bool))
    assert vec.curriculum_depth == 3  # capped at max_depth
    _, info = vec.reset()
    assert (info["scramble_depth"] == 3).all()


def test_curriculum_tiny_run(step_path):
    # A scripted agent that solves depth-1 cubes (it tries all 12 moves): the depth goes up once a full
    # window of episodes has finished, all solved.
    vec = Cube2x2VectorEnv(num_envs=4, curriculum=dict(CUR, window=8, max_depth=5))
    vec.reset(seed=0)
    for t in range(2):
        tries = apply_moves(np.repeat(vec.states, 12, 0), np.tile(np.arange(12), 4))
        solving = is_solved(tries).reshape(4, 12)
        assert solving.any(1).all()
        _, _, term, _, info = vec.step(solving.argmax(1))
        assert term.all() and (info["scramble_depth"] == 1).all()
        assert vec.curriculum_depth == 1 + t  # 4 episodes per step, window 8
    # The autoresets of the step that raised the depth already use the new depth.
    _, _, _, _, info = vec.step(np.zeros(4, dtype=np.int64))
    assert (info["scramble_depth"] == 2).all()


def test_curriculum_spread():
    vec = Cube2x2VectorEnv(num_envs=4, curriculum=dict(CUR, start_depth=2, spread=1))
    vec.reset(seed=0)
    depths = vec._draw_depths(3000)
    assert set(depths.tolist()) == {1, 2, 3}
    assert abs((depths == 2).mean() - 1 / 3) < 0.05
    vec = Cube2x2VectorEnv(num_envs=4, curriculum=dict(CUR, start_depth=1, spread=1))
    depths = vec._draw_depths(3000)
    assert set(depths.tolist()) == {1, 2}  # 0 is clipped up to 1


def test_curriculum_mix_draws_back_from_all_learnt_levels():
    vec = Cube2x2VectorEnv(num_envs=4, curriculum=dict(CUR, max_depth=9, start_depth=6, spread=1, mix=0.5))
    vec.reset(seed=0)
    depths = vec._draw_depths(20000)
    # half in the band 5..7 (1/6 each from it), half uniform on 1..6 (1/12 each): P(1) = 1/12, P(6) = 1/6 + 1/12
    assert set(depths.tolist()) == set(range(1, 8))
    assert abs((depths == 1).mean() - 1 / 12) < 0.01
    assert abs((depths == 6).mean() - (1 / 6 + 1 / 12)) < 0.015
    assert abs((depths == 7).mean() - 1 / 6) < 0.015


def test_curriculum_mix_counts_only_the_band_towards_a_raise():
    vec = Cube2x2VectorEnv(num_envs=4, curriculum=dict(CUR, max_depth=9, start_depth=5, spread=1, mix=0.5))
    vec.reset(seed=0)
    # 20 easy episodes (levels 1-3, below the band 4..6), all solved: they do not fill the window
    vec._record_outcomes(np.ones(20, dtype=bool), np.array([1, 2, 3, 3] * 5))
    assert vec.curriculum_depth == 5
    # 10 band episodes with 7 solved: 0.7 < 0.8, though with the easy ones it would be 27 / 30
    vec._record_outcomes(np.array([False] * 3 + [True] * 7), np.array([4, 5, 6, 5, 4, 6, 5, 5, 4, 6]))
    assert vec.curriculum_depth == 5
    vec._record_outcomes(np.ones(10, dtype=bool), np.full(10, 5))
    assert vec.curriculum_depth == 6


def test_curriculum_mix_off_draws_nothing_extra():
    # mix=0 must leave fixed-seed runs as they were: the same depths from the same seed as without the key
    a = Cube2x2VectorEnv(num_envs=4, curriculum=dict(CUR, max_depth=9, start_depth=4, spread=1))
    b = Cube2x2VectorEnv(num_envs=4, curriculum=dict(CUR, max_depth=9, start_depth=4, spread=1, mix=0.0))
    a.reset(seed=3), b.reset(seed=3)
    assert np.array_equal(a._draw_depths(500), b._draw_depths(500))


def test_set_scramble_depth_disables_curriculum():
    vec = Cube2x2VectorEnv(num_envs=8, curriculum=CUR)
    vec.set_scramble_depth(7)
    assert vec.curriculum_depth == 7
    vec._record_outcomes(np.ones(100, dtype=bool))
    assert vec.curriculum_depth == 7
    _, info = vec.reset(seed=0)
    assert (info["scramble_depth"] == 7).all()


def test_get_set_state_roundtrip(step_path):
    a = Cube2x2VectorEnv(num_envs=6, curriculum=dict(CUR, spread=1, max_depth=9), max_steps=3)
    a.reset(seed=11)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a.step(rng.integers(12, size=6))
    a._record_outcomes(np.ones(10, dtype=bool))
    saved = a.get_state()
    assert a.curriculum_depth == 2
    b = Cube2x2VectorEnv(num_envs=6, curriculum=dict(CUR, spread=1, max_depth=9), max_steps=3)
    b.set_state(saved)
    assert b.curriculum_depth == 2
    oa, ia = a.reset()
    ob, ib = b.reset()
    assert np.array_equal(oa, ob) and np.array_equal(ia["scramble_depth"], ib["scramble_depth"])
    for _ in range(10):
        act = rng.integers(12, size=6)
        ra, rb = a.step(act), b.step(act)
        assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[4]["scramble_depth"], rb[4]["scramble_depth"])
    bad = dict(saved, pool_states=np.full((3, 24), 6, np.uint8), pool_depths=np.ones(3, np.int64))  # corrupted
    with pytest.raises(ValueError, match="colours outside 0..5"):
        b.set_state(bad)


def test_c_step_is_built_where_a_compiler_exists():
    import shutil
    import sysconfig

    if not (shutil.which(sysconfig.get_config_var("CC").split()[0]) or shutil.which("cc")):
        pytest.skip("no C compiler here: the numpy path is the only one")
    assert cube2x2._cube_step is not None, "a C compiler exists but cpcrl/envs/_cube_step.c was not built"


@pytest.mark.parametrize("curriculum", [None, dict(window=50, threshold=0.05)])
@pytest.mark.parametrize("copy", [True, False])
def test_c_step_equals_numpy_step(copy, curriculum):
    """Fixed depth: the C step also does the autoresets, and leaves them to Python when the pool runs short (every
    ~1000 steps here). Curriculum: Python resets, after the curriculum has seen the outcomes."""
    if cube2x2._cube_step is None:
        pytest.skip("the C step was not built (no C compiler at install time)")
    kwargs = dict(num_envs=37, scramble_depth=3, max_steps=7, copy=copy, curriculum=curriculum)
    fast, ref = Cube2x2VectorEnv(**kwargs), Cube2x2VectorEnv(**kwargs)
    ref._kernel = None
    for env in (fast, ref):
        env.reset(seed=3)
    rng = np.random.default_rng(0)
    for t in range(1500):
        a = rng.integers(12, size=37)
        mine, want = fast.step(a), ref.step(a)
        for x, y in zip(mine[:4], want[:4]):
            assert x.dtype == y.dtype and np.array_equal(x, y), t
        assert mine[4].keys() == want[4].keys()
        for key in want[4]:
            assert np.array_equal(mine[4][key], want[4][key]), (t, key)
    assert fast.curriculum_depth == ref.curriculum_depth
    assert fast.curriculum_depth > 3 if curriculum else fast._pool_i == ref._pool_i  # the curriculum moved


# ------------------------------------------------------------------------------------- start states


@pytest.fixture(scope="module", autouse=True)
def _distance_cache_in_tmp(tmp_path_factory):
    """uniform/distance starts read the distance table: cache it in the session's tmp dir, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))
        yield


def _obs_stream(env, steps=30, seed=3):
    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    obs, info = env.reset(seed=seed)
    h.update(obs.tobytes())
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(rng.integers(12, size=env.num_envs))
        h.update(obs.tobytes() + r.tobytes() + info["scramble_depth"].astype("<i8").tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("curriculum", [None, dict(CUR, spread=1, max_depth=9)])
def test_scramble_moves_is_the_default_stream(curriculum, step_path):
    kw = dict(num_envs=8, scramble_depth=3, max_steps=5, curriculum=curriculum)
    assert _obs_stream(Cube2x2VectorEnv(**kw)) == _obs_stream(Cube2x2VectorEnv(scramble="moves", **kw))
    assert _obs_stream(Cube2x2VectorEnv(**kw)) != _obs_stream(Cube2x2VectorEnv(scramble="distance", **kw))


def test_scramble_uniform_states(step_path):
    env = Cube2x2VectorEnv(num_envs=4000, scramble="uniform", scramble_depth=2, max_steps=3)
    _, info = env.reset(seed=0)
    d = cube2x2.optimal_distance(env.states)
    assert not is_solved(env.states).any() and np.array_equal(info["scramble_depth"], d)  # reports the distance
    assert abs(d.mean() - 10.666) < 0.1 and d.max() >= 13  # a fully scrambled cube, not 2 moves
    for _ in range(3):  # autoresets draw uniform states too
        _, _, _, trunc, info = env.step(np.zeros(4000, dtype=np.int64))
    assert trunc.sum() > 3900 and abs(cube2x2.optimal_distance(env.states).mean() - 10.666) < 0.1


@pytest.mark.parametrize("d", [1, 4, 14])
def test_scramble_distance_fixed(d, step_path):
    env = Cube2x2VectorEnv(num_envs=300, scramble="distance", scramble_depth=d, max_steps=2)
    _, info = env.reset(seed=1)
    assert (cube2x2.optimal_distance(env.states) == d).all() and (info["scramble_depth"] == d).all()
    _, info = env.reset(options={"scramble_depth": 3})  # this reset only, still a distance
    assert (cube2x2.optimal_distance(env.states) == 3).all() and (info["scramble_depth"] == 3).all()
    single = Cube2x2Env(scramble="distance", scramble_depth=d)
    _, info1 = single.reset(seed=0)
    assert cube2x2.optimal_distance(single.state[None])[0] == d == info1["scramble_depth"]


def test_distance_curriculum_raises_the_true_distance():
    vec = Cube2x2VectorEnv(num_envs=4, scramble="distance", max_steps=3, curriculum=dict(CUR, spread=0, max_depth=3))
    vec.reset(seed=0)
    assert (cube2x2.optimal_distance(vec.states) == 1).all()
    vec._record_outcomes(np.ones(10, dtype=bool))
    assert vec.curriculum_depth == 2
    _, info = vec.reset()
    assert (cube2x2.optimal_distance(vec.states) == 2).all() and (info["scramble_depth"] == 2).all()


def test_set_start_and_state_roundtrip():
    a = Cube2x2VectorEnv(num_envs=5, scramble="distance", scramble_depth=6)
    a.reset(seed=2)
    saved = a.get_state()
    assert saved["scramble"] == "distance"
    b = Cube2x2VectorEnv(num_envs=5)  # a moves env takes the saved mode
    b.set_state(saved)
    oa, ia = a.reset()
    ob, ib = b.reset()
    assert np.array_equal(oa, ob) and (ib["scramble_depth"] == 6).all()
    b.set_start("moves", 6)  # scramble lengths for an eval.depths-style eval
    b.reset()
    assert b.scramble_mode == "moves" and (cube2x2.optimal_distance(b.states) < 6).any()
    old = {k: v for k, v in saved.items() if k != "scramble"}  # a checkpoint from before scramble=
    c = Cube2x2VectorEnv(num_envs=5, scramble="uniform")
    c.set_state(old)
    assert c.scramble_mode == "uniform"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scramble="random"), "env.scramble='random': valid are moves, uniform, distance"),
        (dict(scramble="distance", scramble_depth=15), r"env.scramble_depth=15: must be in 0..14"),
        (dict(scramble="uniform", curriculum=dict(enabled=True)), "invalid with scramble=uniform"),
        (dict(scramble="distance", curriculum=dict(enabled=True, max_depth=20)),
         r"curriculum.max_depth=20 is invalid with scramble=distance: expected an int in 1..14"),
    ],
)
def test_bad_scramble_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Cube2x2VectorEnv(**kwargs)
    with pytest.raises(ValueError, match=match):
        Cube2x2Env(**kwargs)
    vec = Cube2x2VectorEnv(num_envs=2, scramble="distance")
    with pytest.raises(ValueError, match=r"env.scramble_depth=20: must be in 0..14"):
        vec.set_scramble_depth(20)


def test_env_yaml_instantiates_every_scramble():
    from pathlib import Path

    import hydra
    from omegaconf import OmegaConf

    from cpcrl.errors import ConfigError
    from cpcrl.train import make_env

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "env" / "cube2x2.yaml")
    assert cfg.scramble == "moves"
    for kind in ("moves", "uniform", "distance"):
        env = hydra.utils.instantiate(OmegaConf.merge(cfg, {"scramble": kind, "num_envs": 3}))
        assert env.scramble_mode == kind and env.curriculum is None
    with pytest.raises(ConfigError, match="^env=cube2x2: env.scramble='x': valid are moves, uniform"):
        make_env(OmegaConf.merge(cfg, {"scramble": "x"}))
    assert cfg.frame == "free" and hydra.utils.instantiate(OmegaConf.merge(cfg, {"frame": "corner"})).frame == "corner"
    with pytest.raises(ConfigError, match="^env=cube2x2: env.frame='x': valid are free, corner$"):
        make_env(OmegaConf.merge(cfg, {"frame": "x"}))
    bad = OmegaConf.to_container(OmegaConf.merge(cfg, {"scramble": "distance", "scramble_depth": 20}))
    with pytest.raises(ConfigError, match=r"^env=cube2x2: env.scramble_depth=20: must be in 0..14"):
        cube2x2.check_config(**bad)
    cube2x2.check_config(**OmegaConf.to_container(cfg))  # the default passes


# ---------------------------------------------------------------------------------------------- frame


def test_corner_move_is_the_opposite_turn_up_to_a_rotation():
    from cpcrl.envs.cube_distance import canonical

    # by hand: D+ D- L+ L- B+ B- act as U+ U- R+ R- F+ F- (U+ D- is a whole-cube rotation, so D- = U- up to one)
    names = [MOVE_NAMES[a] for a in cube2x2.CORNER_MOVE]
    assert names == ["U+", "U-", "U+", "U-", "R+", "R-", "R+", "R-", "F+", "F-", "F+", "F-"]
    held = canonical(cube2x2.scramble(np.random.default_rng(5), np.full(500, 20)))
    for a in range(12):
        moved = apply_moves(held, np.full(500, a))
        # the held cube after move a, turned back to be held by its corner, is the held cube after CORNER_MOVE[a]
        assert np.array_equal(canonical(moved), apply_moves(held, np.full(500, cube2x2.CORNER_MOVE[a])))
    assert np.array_equal(cube2x2.hold(held, "free"), held) and np.array_equal(cube2x2.hold(held, "corner"), held)


@pytest.mark.parametrize("scramble_mode,curriculum", [("moves", None), ("moves", dict(CUR, spread=1, max_depth=9)),
                                                      ("uniform", None)])
def test_corner_frame_holds_every_state_by_its_corner(scramble_mode, curriculum, step_path):
    """The free env's start states, held by their D-L-B corner; each step is the move then a re-grip (= the
    turn CORNER_MOVE makes of it); rewards and flags as in the free env; the history holds the turns applied."""
    from cpcrl.envs.cube_distance import canonical

    kw = dict(num_envs=16, scramble_depth=4, max_steps=6, curriculum=curriculum, scramble=scramble_mode)
    free, corner = Cube2x2VectorEnv(**kw), Cube2x2VectorEnv(frame="corner", **kw)
    free.reset(seed=2)
    o, info = corner.reset(seed=2)
    history = np.full((16, 4), -1)
    assert np.array_equal(corner.states, canonical(free.states)) and not np.array_equal(corner.states, free.states)
    assert np.array_equal(o, encode_obs(corner.states, history))
    rng = np.random.default_rng(1)
    ends, age = 0, np.zeros(16, dtype=int)
    for _ in range(300):
        a = rng.integers(12, size=16)
        before = corner.states
        obs, rew, term, trunc, info = corner.step(a)
        after = canonical(apply_moves(before, a))  # turn, then hold it by its corner again
        assert np.array_equal(after, apply_moves(before, cube2x2.CORNER_MOVE[a]))
        history = np.concatenate([cube2x2.CORNER_MOVE[a][:, None], history[:, :3]], axis=1)
        assert np.array_equal(info["final_obs"], encode_obs(after, history))
        age += 1
        assert np.array_equal(term, is_solved(after)) and np.array_equal(trunc, ~term & (age >= 6))
        assert np.array_equal(rew, np.where(term, 9.0, -1.0).astype(np.float32))
        done = info["_final_obs"]
        history[done], age[done] = -1, 0
        assert np.array_equal(corner.states, canonical(corner.states))
        assert np.array_equal(obs, encode_obs(corner.states, history))
        ends += done.sum()
    assert ends > 100
    with pytest.raises(ValueError, match="actions must be"):
        corner.step(np.r_[np.zeros(15, dtype=np.int64), 12])


def test_corner_frame_single_env():
    from cpcrl.envs.cube_distance import canonical

    free, corner = Cube2x2Env(scramble_depth=3, max_steps=50), Cube2x2Env(scramble_depth=3, max_steps=50,
                                                                         frame="corner")
    free.reset(seed=4)
    corner.reset(seed=4)
    assert np.array_equal(corner.state, canonical(free.state[None])[0])
    for a in [M["D+"], M["L-"], M["B+"], M["U+"]]:
        before = corner.state
        o, r, te, tr, _ = corner.step(a)
        assert np.array_equal(corner.state, canonical(run(before, MOVE_NAMES[a])[None])[0]) and (r, te) == (-1, False)
    assert o[144 + M["U+"]] == 1 and o[144 + 12 + M["F+"]] == 1  # B+ went in as F+
    start = run(SOLVED, "R+", "U-")  # U, R, F turns leave the D-L-B corner home
    corner.reset(options={"state": start})
    assert np.array_equal(corner.state, start)
    assert not corner.step(M["D+"])[2]  # undoes U- (D+ is U+ here) ...
    assert corner.step(M["L-"])[2]  # ... and R+ (L- is R-): solved
    from cpcrl.envs.cube_distance import ROTATIONS

    corner.reset(options={"state": start[ROTATIONS[5]]})  # the same position turned as a whole: held the same
    assert np.array_equal(corner.state, start)
