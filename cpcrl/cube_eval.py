"""Cube evaluation by true distance and on uniformly random states, with 95% confidence intervals.

An agent plays each start state greedily (``agent.act(..., explore=False)``, the interface every agent has;
its belief state is reset at the start and carried, as in ``collector.evaluate``) for at most ``max_steps``
quarter turns; it solves the cube if some step reaches a solved state (any orientation). The start states are
drawn from a fixed seed, so every evaluation of a run (and of different runs) sees the same cubes:

* by distance: ``per_distance`` states exactly d quarter turns from solved for each d in ``distances``
  (default 1..14), uniform among them (``cube_distance.sample_at_distance``);
* uniform: ``uniform_states`` (default 10,000) states uniform over all reachable states (a fully scrambled
  cube, ``cube_distance.sample_uniform``); their mean optimal distance is ~10.7.

Orientation: by default every state is also turned as a whole by a uniform random rotation (a cube can be held
any way up; ``is_solved`` ignores orientation). An agent trained on ``env.scramble=moves`` has seen short
scrambles only near the home orientation, so this is harder for it at small distances than its
``eval/solve_rate_d<k>``; ``rotate=False`` gives the same positions in the canonical frame (D-L-B corner home,
D down) to separate the two effects (docs/BENCHMARKS.md has both for one checkpoint). An agent trained with
``env.frame=corner`` is played in that frame (``frame="corner"``): it sees every state held by its D-L-B corner
and its D, L, B turns act as in its env (``cube2x2.CORNER_MOVE``), so rotating the states changes nothing for it.

Metric names (flat dict, ``prefix`` defaults to ``eval/``):

    {prefix}solve_rate_dist{d}            fraction solved of the states at distance d
    {prefix}solve_rate_dist{d}_ci_low     95% Wilson score interval of it
    {prefix}solve_rate_dist{d}_ci_high
    {prefix}length_ratio_dist{d}          mean of (solution length / d) over the solved ones (>= 1; 1 = optimal)
    {prefix}length_ratio_dist{d}_ci_low   95% normal (CLT) interval of that mean; the three length_ratio keys
    {prefix}length_ratio_dist{d}_ci_high  are left out where nothing was solved
    {prefix}solve_rate_uniform            the same on uniformly random states (+ _ci_low, _ci_high)
    {prefix}length_ratio_uniform          mean of length / optimal distance over the solved (+ _ci_low, _ci_high)
    {prefix}length_mean_uniform           mean solution length of the solved ones
    {prefix}optimal_mean_uniform          mean optimal distance of the uniform states (all of them)
    {prefix}uniform_states, {prefix}dist_states   states evaluated (uniform; per distance)
    {prefix}cube_max_steps                the step budget per cube

Why these intervals: a solve rate is a binomial proportion, and the Wilson interval keeps its coverage near 0
and 1 (where a rate of 1.0 or 0.0 has a zero-width normal interval). The mean length ratio is a mean over
hundreds to thousands of bounded values, where the CLT interval mean +- 1.96 s / sqrt(n) is accurate and costs
nothing (a bootstrap of 10,000 values per distance per eval would cost seconds).

``eval.depths`` (the per-scramble-length ``eval/solve_rate_d{k}``) is unchanged: a scramble length, not a
distance (see ``cpcrl/envs/cube2x2.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from cpcrl.checks import choice, positive_int
from cpcrl.envs.cube2x2 import FRAMES, HISTORY, apply_moves, encode_obs, hold, is_solved, optimal_distance, turns
from cpcrl.envs.cube_distance import GODS_NUMBER, sample_at_distance, sample_uniform
from cpcrl.errors import ConfigError

__all__ = ["wilson_interval", "mean_interval", "greedy_lengths", "evaluate_by_distance", "evaluate_uniform",
           "evaluate_cube", "EVAL_SEED"]

EVAL_SEED = 20240519  # the fixed seed of the evaluation states (the same cubes in every eval)
Z95 = 1.959964


def wilson_interval(k, n, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (95% by default)."""
    k, n = float(k), float(n)
    if n <= 0:
        raise ValueError("wilson_interval: n must be positive")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def mean_interval(x, z: float = Z95) -> tuple[float, float, float]:
    """Mean and its normal (CLT) 95% interval; one value gives a zero-width interval."""
    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return m, m, m
    half = z * float(x.std(ddof=1)) / np.sqrt(len(x))
    return m, m - half, m + half


@torch.no_grad()
def greedy_lengths(agent, states: np.ndarray, max_steps: int = 30, batch_size: int = 4096,
                   frame: str = "free") -> np.ndarray:
    """int64[N]: quarter turns the greedy agent takes to solve each state, -1 if not within ``max_steps``
    (0 for a state that starts solved), played in ``frame`` (the agent's ``env.frame``). Cubes are played
    ``batch_size`` at a time; a solved cube leaves the batch (its belief state is indexed out), so the cost is
    the steps actually played."""
    from cpcrl.solve import index_state, state_batch_dims

    max_steps, batch_size = positive_int("max_steps", max_steps), positive_int("batch_size", batch_size)
    frame = choice("frame", frame, FRAMES)
    states = hold(np.ascontiguousarray(states, dtype=np.uint8).reshape(-1, 24), frame)
    lengths = np.full(len(states), -1, dtype=np.int64)
    lengths[is_solved(states)] = 0
    device = getattr(agent, "device", torch.device("cpu"))
    was_training = getattr(agent, "training", False)
    agent.eval()
    dims = state_batch_dims(agent)
    for lo in range(0, len(states), batch_size):
        ids = np.arange(lo, min(len(states), lo + batch_size))
        ids = ids[lengths[ids] < 0]
        if not len(ids):
            continue
        stick = states[ids].copy()
        hist = np.full((len(ids), HISTORY), -1, dtype=np.int64)
        state = agent.initial_state(len(ids))
        first = torch.ones(len(ids), dtype=torch.bool, device=device)
        for t in range(max_steps):
            obs = torch.from_numpy(encode_obs(stick, hist)).to(device)
            action, state = agent.act(obs, state, first, None, explore=False)
            a = action.cpu().numpy().astype(np.int64).reshape(-1)
            a = turns(a, frame)
            stick = apply_moves(stick, a)
            hist = np.concatenate([a[:, None], hist[:, :-1]], axis=1)
            solved = is_solved(stick)
            lengths[ids[solved]] = t + 1
            if solved.any():
                keep = np.flatnonzero(~solved)
                if not len(keep):
                    break
                ids, stick, hist = ids[keep], stick[keep], hist[keep]
                state = index_state(state, torch.from_numpy(keep).to(device), dims)
            first = torch.zeros(len(ids), dtype=torch.bool, device=device)
    agent.train(was_training)
    return lengths


def _group_metrics(lengths: np.ndarray, optimal: np.ndarray, suffix: str, prefix: str) -> dict[str, float]:
    solved = lengths >= 0
    n, k = len(lengths), int(solved.sum())
    lo, hi = wilson_interval(k, n)
    out = {f"{prefix}solve_rate_{suffix}": k / n, f"{prefix}solve_rate_{suffix}_ci_low": lo,
           f"{prefix}solve_rate_{suffix}_ci_high": hi}
    ok = solved & (optimal > 0)
    if ok.any():
        m, mlo, mhi = mean_interval(lengths[ok] / optimal[ok])
        out.update({f"{prefix}length_ratio_{suffix}": m, f"{prefix}length_ratio_{suffix}_ci_low": mlo,
                    f"{prefix}length_ratio_{suffix}_ci_high": mhi})
    return out


def evaluate_by_distance(agent, per_distance: int = 1000, distances=range(1, GODS_NUMBER + 1), max_steps: int = 30,
                         seed: int = EVAL_SEED, batch_size: int = 4096, prefix: str = "eval/",
                         rotate: bool = True, frame: str = "free") -> dict[str, float]:
    """Greedy solve rate and mean length / optimal per exact distance (names in the module docstring)."""
    per_distance = positive_int("per_distance", per_distance)
    distances = [int(d) for d in distances]
    for d in distances:
        if not 1 <= d <= GODS_NUMBER:
            raise ConfigError(f"distances={distances}: each must be in 1..{GODS_NUMBER}")
    rng = np.random.default_rng(seed)
    dist = np.repeat(np.asarray(distances, dtype=np.int64), per_distance)
    states = sample_at_distance(rng, dist, rotate)
    lengths = greedy_lengths(agent, states, max_steps, batch_size, frame)
    out: dict[str, float] = {}
    for d in distances:
        sel = dist == d
        out.update(_group_metrics(lengths[sel], dist[sel], f"dist{d}", prefix))
    out[f"{prefix}dist_states"] = per_distance
    out[f"{prefix}cube_max_steps"] = max_steps
    return out


def evaluate_uniform(agent, states: int = 10_000, max_steps: int = 30, seed: int = EVAL_SEED + 1,
                     batch_size: int = 4096, prefix: str = "eval/", rotate: bool = True,
                     frame: str = "free") -> dict[str, float]:
    """Greedy solve rate and mean length / optimal on uniformly random states (names in the module docstring)."""
    states = positive_int("states", states)
    start = sample_uniform(np.random.default_rng(seed), states, rotate=rotate)
    optimal = optimal_distance(start)
    lengths = greedy_lengths(agent, start, max_steps, batch_size, frame)
    out = _group_metrics(lengths, optimal, "uniform", prefix)
    solved = lengths >= 0
    if solved.any():
        out[f"{prefix}length_mean_uniform"] = float(lengths[solved].mean())
    out[f"{prefix}optimal_mean_uniform"] = float(optimal.mean())
    out[f"{prefix}uniform_states"] = states
    out[f"{prefix}cube_max_steps"] = max_steps
    return out


def evaluate_cube(agent, uniform_states: int = 10_000, per_distance: int = 1000, max_steps: int = 30,
                  batch_size: int = 4096, prefix: str = "eval/", frame: str = "free") -> dict[str, float]:
    """Both evaluations in one flat dict (what a training run's final eval and ``mode=eval`` should report)."""
    out = evaluate_by_distance(agent, per_distance, max_steps=max_steps, batch_size=batch_size, prefix=prefix,
                               frame=frame)
    out.update(evaluate_uniform(agent, uniform_states, max_steps=max_steps, batch_size=batch_size, prefix=prefix,
                                frame=frame))
    return out
