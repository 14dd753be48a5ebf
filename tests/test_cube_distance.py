"""The exact distance table: published counts, consistency with the real moves, rotations, sampling, the cache."""

import threading

import numpy as np
import pytest

from cpcrl.envs import cube_distance as cd
from cpcrl.envs.cube2x2 import MOVE_PERMS, SOLVED, apply_moves, is_solved, optimal_distance, scramble


@pytest.fixture(scope="module", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    """The table lives in the session's tmp dir, never the user's cache; built at most once per process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))
        yield


@pytest.fixture(scope="module")
def table():
    return cd.distance_table()


def test_distribution_is_the_published_one(table):
    # OEIS A079762, quarter-turn metric: mean 10.67, God's number 14
    assert np.bincount(table).tolist() == [1, 6, 27, 120, 534, 2256, 8969, 33058, 114149, 360508, 930588, 1350852,
                                           782536, 90280, 276]
    assert table.mean() == pytest.approx(10.6664, abs=1e-4)
    assert table[0] == 0 and cd.position_index(SOLVED[None])[0] == 0


def test_rotations_are_the_24_orientations():
    rots = cd.ROTATIONS
    assert rots.shape == (24, 24) and len({tuple(r) for r in rots}) == 24
    assert np.array_equal(rots[0], np.arange(24))
    assert is_solved(SOLVED[rots]).all()  # a turned solved cube is solved
    assert len({SOLVED[r].tobytes() for r in rots}) == 24  # ...and 24 different sticker states
    # closed under composition
    keys = {tuple(r) for r in rots}
    assert all(tuple(a[b]) in keys for a in rots[:5] for b in rots)


def test_distance_at_most_scramble_length_and_parity():
    rng = np.random.default_rng(1)
    depths = rng.integers(0, 25, size=3000)
    d = optimal_distance(scramble(rng, depths))
    assert (d <= depths).all()
    assert ((depths - d) % 2 == 0).all()  # a quarter turn flips the corner-permutation parity
    assert (d[depths >= 1] >= 1).all()  # scrambles are never solved
    assert optimal_distance(apply_moves(SOLVED[None], [3]))[0] == 1


def test_neighbours_under_all_twelve_sticker_moves(table):
    # the table was searched with U, R, F on coordinates; check it with the real 12 sticker moves
    rng = np.random.default_rng(2)
    pick = [np.flatnonzero(table == d) for d in range(15)]
    index = np.concatenate([p if len(p) <= 600 else rng.choice(p, 600, replace=False) for p in pick])
    states = cd.index_to_states(index, rng.integers(24, size=len(index)))
    d = optimal_distance(states)
    assert np.array_equal(d, table[index])
    nb = optimal_distance(states[:, MOVE_PERMS].reshape(-1, 24)).reshape(-1, 12)
    assert (np.abs(nb - d[:, None]) == 1).all()  # never d - 2, never equal (parity), never d + 2
    assert ((nb == d[:, None] - 1).any(1) == (d > 0)).all()  # a neighbour one closer exactly when d > 0


def test_rotations_keep_the_distance():
    states = scramble(np.random.default_rng(3), np.full(300, 20))
    base = cd.position_index(states)
    for r in cd.ROTATIONS:
        assert np.array_equal(cd.position_index(states[:, r]), base)
    assert np.array_equal(optimal_distance(states[:, cd.ROTATIONS[7]]), optimal_distance(states))


def test_index_round_trip_and_canonical_frame():
    rng = np.random.default_rng(4)
    index = rng.integers(cd.N_POSITIONS, size=5000)
    states = cd.index_to_states(index, rng.integers(24, size=5000))
    assert np.array_equal(cd.position_index(states), index)
    assert np.array_equal(cd.index_to_states(index), cd.canonical(states))
    assert len(np.unique(cd.position_index(cd.index_to_states(np.arange(20000))))) == 20000
    with pytest.raises(ValueError, match="position index out of range"):
        cd.index_to_states([cd.N_POSITIONS])
    bad = SOLVED.copy()
    bad[cd.CORNERS[0]] = [0, 1, 2]  # a corner showing U and D: no cube corner has those colours
    with pytest.raises(ValueError, match="not a reachable 2x2 state"):
        cd.position_index(bad[None])
    with pytest.raises(ValueError, match="no corner coloured D, L, B"):
        cd.position_index(np.zeros((1, 24), np.uint8))


def test_uniform_sampler_matches_the_group():
    rng = np.random.default_rng(5)
    states = cd.sample_uniform(rng, 40000)
    assert not is_solved(states).any()
    # reachable: each state is its canonical frame's decoded coordinates turned as a whole
    assert np.array_equal(cd.index_to_states(cd.position_index(states)), cd.canonical(states))
    frac = np.bincount(optimal_distance(states), minlength=15) / len(states)
    expected = np.array(cd.DISTANCE_COUNTS) / cd.N_POSITIONS
    assert np.abs(frac - expected).max() < 0.012  # 3.5 sigma at p ~ 0.37, n = 40,000
    # orientation: the solved-colour-0 sticker layout is spread evenly over the 24 rotations
    slot, twist = cd._ref_place(states)
    counts = np.bincount(slot * 3 + twist, minlength=24)
    assert counts.min() > 40000 / 24 * 0.85
    assert np.array_equal(cd.sample_uniform(np.random.default_rng(0), 3),
                          cd.sample_uniform(np.random.default_rng(0), 50)[:3])  # seeded, prefix-stable


@pytest.mark.parametrize("d", [0, 1, 2, 7, 14])
def test_sample_at_distance(d):
    states = cd.sample_at_distance(np.random.default_rng(d), np.full(500, d))
    assert (optimal_distance(states) == d).all()
    if d == 1:  # all 6 positions one move away show up
        assert len(np.unique(cd.position_index(states))) == 6


def test_sample_at_distance_rejects_impossible():
    with pytest.raises(ValueError, match=r"distance 15 is invalid: expected an int in 0..14"):
        cd.sample_at_distance(np.random.default_rng(0), [3, 15])


def test_cache_path_respects_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cd.cache_path() == tmp_path / "cpcrl" / "cube2x2_qtm_distances_v1.bin"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: relative paths are ignored
    assert cd.cache_path().parent.parent.name == ".cache"


def test_cached_file_reused_corrupt_or_truncated_rebuilt(table, tmp_path):
    path = tmp_path / "t.bin"
    builds = []

    def build():
        builds.append(1)
        return table.copy()

    assert np.array_equal(cd.load_or_build(path, build), table) and len(builds) == 1
    assert path.stat().st_size == len(cd._MAGIC) + 32 + cd.N_POSITIONS
    assert np.array_equal(cd.load_or_build(path, build), table) and len(builds) == 1  # reused, not rebuilt
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 1  # one flipped bit in the table: the checksum fails
    path.write_bytes(bytes(raw))
    assert cd.read_table(path) is None
    assert np.array_equal(cd.load_or_build(path, build), table) and len(builds) == 2
    assert cd.read_table(path) is not None  # rewritten whole
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    assert cd.load_or_build(path, build) is not None and len(builds) == 3
    wrong = table.copy()
    wrong[5] = 3  # a consistent checksum over a wrong table: the published counts catch it
    cd.write_table(path, wrong)
    assert cd.read_table(path) is None
    with pytest.raises(RuntimeError, match="published counts"):
        cd.load_or_build(tmp_path / "u.bin", lambda: wrong)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_writers_leave_a_valid_file(table, tmp_path):
    path = tmp_path / "c.bin"
    threads = [threading.Thread(target=cd.write_table, args=(path, table)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(cd.read_table(path), table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin"]


def test_failed_write_keeps_the_old_file(table, tmp_path, monkeypatch):
    path = tmp_path / "k.bin"
    cd.write_table(path, table)
    before = path.read_bytes()
    monkeypatch.setattr(cd.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        cd.write_table(path, table)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["k.bin"]


def test_rotate_false_gives_the_same_positions_in_the_canonical_frame():
    a = cd.sample_uniform(np.random.default_rng(6), 500)
    b = cd.sample_uniform(np.random.default_rng(6), 500, rotate=False)
    assert np.array_equal(cd.position_index(a), cd.position_index(b)) and np.array_equal(b, cd.canonical(b))
    assert not np.array_equal(a, b)
    c = cd.sample_at_distance(np.random.default_rng(7), np.full(200, 9), rotate=False)
    assert np.array_equal(c, cd.canonical(c)) and (optimal_distance(c) == 9).all()
