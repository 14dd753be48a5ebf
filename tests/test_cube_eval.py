"""Cube evaluation per true distance and on uniform states: hand-computed intervals, an oracle and a blind agent."""

import numpy as np
import pytest
import torch

from cpcrl.cube_eval import (
    evaluate_by_distance,
    evaluate_cube,
    evaluate_uniform,
    greedy_lengths,
    mean_interval,
    wilson_interval,
)
from cpcrl.envs import cube_distance as cd
from cpcrl.envs.cube2x2 import MOVE_PERMS, optimal_distance
from cpcrl.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))
        yield


def stickers(obs):
    return obs[:, :144].reshape(-1, 24, 6).argmax(-1).numpy().astype(np.uint8)


class Oracle(torch.nn.Module):
    """Greedy on the exact table; recurrent: its state ([1, B, 24], batch dim 1) is the cube it expects to see
    next, checked on every step, so a state that does not follow its cube through the batch compaction fails."""

    name, device = "oracle", CPU

    def initial_state(self, n):
        return torch.zeros(1, n, 24, dtype=torch.long)

    def act(self, obs, state, is_first, action_mask=None, explore=True):
        assert not explore
        s = stickers(obs)
        expect = state[0].numpy()
        assert (expect[~is_first.numpy()] == s[~is_first.numpy()]).all()
        nb = optimal_distance(s[:, MOVE_PERMS].reshape(-1, 24)).reshape(-1, 12)
        a = nb.argmin(1)
        after = s[np.arange(len(s))[:, None], MOVE_PERMS[a]]
        return torch.from_numpy(a), torch.from_numpy(after.astype(np.int64))[None]


class Blind(Oracle):
    """Always U+: solves only cubes that are a U+ (or U+ U+, U+ U+ U+) away."""

    def act(self, obs, state, is_first, action_mask=None, explore=True):
        return torch.zeros(len(obs), dtype=torch.long), state


def test_wilson_and_normal_intervals_by_hand():
    lo, hi = wilson_interval(5, 10)  # centre 0.5, half 1.96 sqrt(.025 + 1.96^2/400) / 1.384 = 0.2634
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(10, 10)  # never a zero-width interval at 1.0: the low end is n / (n + z^2)
    assert lo == pytest.approx(10 / (10 + 1.959964**2), abs=1e-9) and hi == pytest.approx(1.0)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    m, lo, hi = mean_interval([1.0, 1.0, 2.0, 2.0])  # sd 0.57735, se 0.28868
    assert m == 1.5 and lo == pytest.approx(1.5 - 0.5658, abs=1e-4) and hi == pytest.approx(1.5 + 0.5658, abs=1e-4)


def test_greedy_lengths_oracle_is_optimal_and_states_follow_cubes():
    states = cd.sample_uniform(np.random.default_rng(0), 300)
    lengths = greedy_lengths(Oracle(), states, max_steps=14, batch_size=128)
    assert np.array_equal(lengths, optimal_distance(states))
    short = greedy_lengths(Oracle(), states, max_steps=9)
    d = optimal_distance(states)
    assert np.array_equal(short, np.where(d <= 9, d, -1))  # unsolved within the budget: -1


class CornerOracle(Oracle):
    """Greedy on the exact table in the corner frame: checks that every state it sees is held by its D-L-B corner
    and follows its cube, and picks the last best action, so D and B turns (which act as U and F) are played."""

    def act(self, obs, state, is_first, action_mask=None, explore=True):
        s = stickers(obs)
        assert np.array_equal(cd.canonical(s), s)
        first = is_first.numpy()
        assert (state[0].numpy()[~first] == s[~first]).all()
        nb = optimal_distance(s[:, MOVE_PERMS].reshape(-1, 24)).reshape(-1, 12)
        a = 11 - nb[:, ::-1].argmin(1)
        after = cd.canonical(s[np.arange(len(s))[:, None], MOVE_PERMS[a]])  # the turn, then held again
        return torch.from_numpy(a), torch.from_numpy(after.astype(np.int64))[None]


def test_greedy_lengths_in_the_corner_frame():
    states = cd.sample_uniform(np.random.default_rng(0), 300)  # in random orientations
    lengths = greedy_lengths(CornerOracle(), states, max_steps=14, batch_size=128, frame="corner")
    assert np.array_equal(lengths, optimal_distance(states))
    out = evaluate_uniform(CornerOracle(), states=200, max_steps=14, frame="corner")
    assert out["eval/solve_rate_uniform"] == 1.0 and out["eval/length_ratio_uniform"] == 1.0
    with pytest.raises(ConfigError, match="frame='fixed': valid are free, corner"):
        greedy_lengths(CornerOracle(), states, frame="fixed")


def test_evaluate_by_distance_names_and_values():
    out = evaluate_by_distance(Oracle(), per_distance=30, max_steps=14)
    for d in range(1, 15):
        assert out[f"eval/solve_rate_dist{d}"] == 1.0 and out[f"eval/length_ratio_dist{d}"] == 1.0
        assert out[f"eval/solve_rate_dist{d}_ci_low"] == pytest.approx(wilson_interval(30, 30)[0])
        assert out[f"eval/length_ratio_dist{d}_ci_low"] == out[f"eval/length_ratio_dist{d}_ci_high"] == 1.0
    assert out["eval/dist_states"] == 30 and out["eval/cube_max_steps"] == 14
    blind = evaluate_by_distance(Blind(), per_distance=200, distances=[1, 2, 5], max_steps=3)
    # always U+ solves a distance-1 cube only if it is one U-layer turn (or the equivalent D turn) from solved:
    # 2 of the 6 positions; a U+ away takes 3 moves (ratio 3), a U- away 1
    assert blind["eval/solve_rate_dist5"] == 0.0 and "eval/length_ratio_dist5" not in blind
    assert abs(blind["eval/solve_rate_dist1"] - 1 / 3) < 0.11  # 3.3 sigma at n = 200
    assert 1.5 < blind["eval/length_ratio_dist1"] < 2.5  # half 1 move, half 3: mean 2
    assert blind["eval/solve_rate_dist2"] < blind["eval/solve_rate_dist1"]


def test_evaluate_uniform_and_cube():
    out = evaluate_uniform(Oracle(), states=400, max_steps=14)
    assert out["eval/solve_rate_uniform"] == 1.0 and out["eval/length_ratio_uniform"] == 1.0
    assert out["eval/length_mean_uniform"] == out["eval/optimal_mean_uniform"]
    assert abs(out["eval/optimal_mean_uniform"] - 10.67) < 0.2 and out["eval/uniform_states"] == 400
    again = evaluate_uniform(Oracle(), states=400, max_steps=14)
    assert again == out  # fixed evaluation states
    both = evaluate_cube(Blind(), uniform_states=100, per_distance=10, max_steps=4)
    assert both["eval/solve_rate_uniform"] <= 0.02  # (1 of these 100 happens to be one U turn from solved)
    assert {f"eval/solve_rate_dist{d}" for d in range(1, 15)} <= set(both)


def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"distances=\[0, 3\]: each must be in 1..14"):
        evaluate_by_distance(Oracle(), per_distance=2, distances=[0, 3])
    with pytest.raises(ConfigError, match="states=0: must be a positive integer"):
        evaluate_uniform(Oracle(), states=0)
    with pytest.raises(ConfigError, match="max_steps=0"):
        greedy_lengths(Oracle(), cd.index_to_states([1]), max_steps=0)
