"""Batched beam search for the 2x2 cube over a trained agent's policy (and value, where it has one).

The policy protocol
-------------------
The search needs the log-probabilities of *all* actions, which ``Agent.act`` does not return. Two functions
stand between the search and an agent:

    policy_scores(agent, obs, state, is_first, mask) -> PolicyScores(log_probs [B, A], value [B] | None, state)
    commit_action(agent, state, actions) -> state

``policy_scores`` filters ``obs`` into the agent's belief exactly as ``act(..., explore=False)`` does (the
same modules, reset where ``is_first``) and returns the normalised log-probs, the critic's value of that
belief if the agent has a critic, and the state after the observation. ``commit_action`` writes the chosen
action into the state where the agent's state holds it (Dreamer: the previous action feeds the next RSSM
step); for the others it returns the state unchanged. An agent that defines methods with these names and
signatures (minus ``agent``) is used through them; otherwise the functions below read the existing modules:
reinforce (``dist``), ppo_lstm and cpc_rl (``belief.step``, ``dist``, ``value``), dreamer (``encoder``,
``rssm.obs_step``, ``actor``, ``critic``), random (uniform). PlaNet has no policy (it plans with CEM at
every step): ``ConfigError``.

Agent states are tensors or dicts/tuples/lists of tensors (or None). Their batch dim is found once per agent
by comparing ``initial_state(2)`` with ``initial_state(3)`` (an LSTM's ``(h, c)`` is ``[L, B, H]``: dim 1),
and ``index_state`` gathers beams along it.

The search
----------
Every cube starts with one beam (its start state, ``is_first``). At each depth all live beams of all cubes
go through the network in one batch; each beam's 12 children are scored

    score(child) = cumulative log-prob of its moves + value_weight * V(parent's belief)

(``value_weight`` 0 ranks by the policy alone; V of the children would cost 12x the network calls, so the
value reorders parents: siblings share it). The default 5 is measured, not derived: on a 12-minute ppo_cube
checkpoint at width 64 it solved 0.366 of 500 uniform cubes against 0.222 at 0, 0.338 at 1 and 0.262 at 20
(docs/BENCHMARKS.md); the value's scale is the agent's own (PPO: normalised returns), so other agents may want
another weight. Agents without a critic ignore it. A child that undoes the beam's last move is dropped. If any child
of a cube is solved, the cube is done at that depth (its shortest found solution; every child is checked,
not only the kept ones). Otherwise the best ``2 * beam_width`` children per cube are keyed by their position
(``cube_distance.position_index``: the state up to whole-cube rotation), duplicates are pruned (the best-scored
copy kept), and so are positions in the cube's beam two depths back (a quarter turn flips the corner
permutation's parity, so a position can only recur an even number of moves later; the 1-step undo is the
commonest). The best ``beam_width`` survivors are the next beams, each with its parent's belief state indexed
out and the move committed. Nothing per cube or per beam runs in Python: cubes x beams are flat arrays.

Frame: an agent trained with ``env.frame=corner`` is searched in that frame (``frame="corner"``): the start
states are held by their D-L-B corner, a D, L or B action is the turn ``CORNER_MOVE`` makes of it, and each
child is one of the 6 distinct turns, scored by the summed probability of the two actions that make it. The
solution moves are then the turns as applied to the held start state.

``states_expanded`` counts beams put through the network (one per node expanded); ``cubes_per_s`` is the
number of cubes over the wall-clock seconds of the whole search, network included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from cpcrl.checks import choice, positive_int
from cpcrl.envs.cube2x2 import (
    CORNER_MOVE,
    FRAMES,
    HISTORY,
    MOVE_PERMS,
    N_MOVES,
    encode_obs,
    hold,
    is_solved,
    optimal_distance,
)
from cpcrl.envs.cube_distance import N_POSITIONS, position_index
from cpcrl.errors import ConfigError

__all__ = ["PolicyScores", "policy_scores", "commit_action", "index_state", "state_batch_dims", "beam_search",
           "SolveResult", "solve_uniform"]


class PolicyScores(NamedTuple):
    log_probs: torch.Tensor  # [B, A], normalised (logsumexp 0 over the actions)
    value: torch.Tensor | None  # [B], the critic's value of the belief, or None
    state: Any  # the state after the observation


# ------------------------------------------------------------------------------------------ protocol


@torch.no_grad()
def policy_scores(agent, obs: torch.Tensor, state, is_first: torch.Tensor,
                  mask: torch.Tensor | None = None) -> PolicyScores:
    """Log-probs of every action, the value (or None) and the new state, as ``act(explore=False)`` sees them
    (``Agent.policy_scores``)."""
    if not getattr(agent, "discrete", True):
        raise ConfigError(f"agent={agent.name} has continuous actions: the beam search needs a Discrete action space")
    return PolicyScores(*agent.policy_scores(obs, state, is_first, mask))


def commit_action(agent, state, actions: torch.Tensor):
    """The state once ``actions`` (int [B]) are taken from it (``Agent.commit_action``; unchanged for agents
    without it)."""
    return agent.commit_action(state, actions) if hasattr(agent, "commit_action") else state


def _leaves_map(fn, *trees):
    first = trees[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return fn(*trees)
    if isinstance(first, dict):
        return {k: _leaves_map(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_leaves_map(fn, *parts) for parts in zip(*trees))
    return first  # a non-tensor leaf (e.g. a flag) is shared by every beam


def state_batch_dims(agent):
    """The batch dim of every tensor in the agent's state (same tree as the state; None for no state)."""

    def dim(a: torch.Tensor, b: torch.Tensor) -> int:
        diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
        if len(diff) != 1:
            raise ValueError(f"cannot tell the batch dim of a state tensor of shape {tuple(b.shape)}")
        return diff[0]

    return _leaves_map(dim, agent.initial_state(2), agent.initial_state(3))


def index_state(state, index: torch.Tensor, dims):
    """The states of batch entries ``index`` (a long tensor), along each tensor's batch dim ``dims``."""
    if state is None:
        return None
    return _leaves_map(lambda x, d: x.index_select(d, index), state, dims)


# --------------------------------------------------------------------------------------------- search


@dataclass
class SolveResult:
    """Per-cube outcome of a search and its cost. ``lengths[i]`` is -1 where cube i was not solved."""

    lengths: np.ndarray  # int64[N]
    optimal: np.ndarray  # int64[N], exact quarter-turn distances
    moves: np.ndarray = field(repr=False)  # int8[N, max_depth]: cube i's solution is moves[i, :lengths[i]], -1 after
    states_expanded: int
    seconds: float
    beam_width: int
    max_depth: int

    def metrics(self, prefix: str = "solve/") -> dict[str, float]:
        """Flat metrics: ``cubes``, ``beam_width``, ``max_depth``, ``solve_rate`` (+ ``_ci_low``/``_ci_high``, 95%
        Wilson), ``length_mean`` (solved cubes), ``optimal_mean`` (all cubes), ``length_ratio_mean`` (mean of
        length / optimal over solved cubes with optimal > 0, + 95% normal CI), ``optimal_fraction`` (of those,
        the fraction solved in exactly the optimal number of moves), ``states_expanded``,
        ``states_expanded_per_cube``, ``seconds``, ``cubes_per_s``. Length keys are left out if none solved."""
        from cpcrl.cube_eval import mean_interval, wilson_interval

        n = len(self.lengths)
        solved = self.lengths >= 0
        k = int(solved.sum())
        lo, hi = wilson_interval(k, n)
        out = {"cubes": n, "beam_width": self.beam_width, "max_depth": self.max_depth, "solve_rate": k / n,
               "solve_rate_ci_low": lo, "solve_rate_ci_high": hi, "optimal_mean": float(self.optimal.mean())}
        ok = solved & (self.optimal > 0)
        if k:
            out["length_mean"] = float(self.lengths[solved].mean())
        if ok.any():
            m, mlo, mhi = mean_interval(self.lengths[ok] / self.optimal[ok])
            out.update(length_ratio_mean=m, length_ratio_ci_low=mlo, length_ratio_ci_high=mhi,
                       optimal_fraction=float((self.lengths[ok] == self.optimal[ok]).mean()))
        out.update(states_expanded=self.states_expanded, states_expanded_per_cube=self.states_expanded / n,
                   seconds=self.seconds, cubes_per_s=n / self.seconds if self.seconds > 0 else float("inf"))
        return {prefix + key: value for key, value in out.items()}


@torch.no_grad()
def beam_search(agent, states: np.ndarray, beam_width: int = 64, max_depth: int = 30, value_weight: float = 5.0,
                max_beams: int = 16384, frame: str = "free") -> SolveResult:
    """Solve each cube in ``states`` (uint8[N,24]) by a batched beam search over ``agent``'s policy.

    ``max_beams`` caps the beams (cubes x beam_width) in one network batch: cubes are searched in chunks of
    ``max(1, max_beams // beam_width)``. ``frame`` is how the agent's env held the cube (``env.frame``). See the
    module docstring for the scores and the pruning.
    """
    beam_width = positive_int("solve.beam_width", beam_width)
    max_depth = positive_int("solve.max_depth", max_depth)
    max_beams = positive_int("solve.max_beams", max_beams)
    value_weight = float(value_weight)
    frame = choice("frame", frame, FRAMES)
    states = hold(np.ascontiguousarray(states, dtype=np.uint8).reshape(-1, 24), frame)
    n = len(states)
    was_training = getattr(agent, "training", False)
    if hasattr(agent, "eval"):
        agent.eval()
    t0 = time.perf_counter()
    dims = state_batch_dims(agent)
    lengths = np.full(n, -1, dtype=np.int64)
    moves = np.full((n, max_depth), -1, dtype=np.int8)
    expanded = 0
    chunk = max(1, max_beams // beam_width)
    for lo in range(0, n, chunk):
        idx = np.arange(lo, min(n, lo + chunk))
        expanded += _search_chunk(agent, states[idx], idx, dims, beam_width, max_depth, value_weight, lengths, moves,
                                  frame)
    seconds = time.perf_counter() - t0
    if hasattr(agent, "train"):
        agent.train(was_training)
    return SolveResult(lengths, optimal_distance(states), moves, expanded, seconds, beam_width, max_depth)


# The corner frame's children: _KEPT marks the actions that are turns themselves (U, R, F), _PARTNER[a] the other
# action that makes the same turn (D+ for U+, ...), so a turn's probability is that of both actions.
_KEPT = CORNER_MOVE == np.arange(N_MOVES)
_PARTNER = CORNER_MOVE.copy()
_PARTNER[CORNER_MOVE[~_KEPT]] = np.flatnonzero(~_KEPT)


def _search_chunk(agent, start: np.ndarray, ids: np.ndarray, dims, width: int, max_depth: int, value_weight: float,
                  lengths: np.ndarray, moves: np.ndarray, frame: str = "free") -> int:
    device = getattr(agent, "device", torch.device("cpu"))
    done0 = is_solved(start)
    lengths[ids[done0]] = 0
    live = np.flatnonzero(~done0)
    c = len(live)  # cubes still searched, local ids 0..c-1 after compaction
    if c == 0:
        return 0
    cube = np.arange(c)  # beam -> local cube (sorted)
    cube_ids = ids[live]  # local cube -> global id
    stick = start[live].copy()
    hist = np.full((c, HISTORY), -1, dtype=np.int64)
    logp = np.zeros(c)
    path = np.zeros((c, 0), dtype=np.int64)
    prev_keys = np.zeros(0, dtype=np.int64)  # row * N_POSITIONS + position of the beams one depth back
    cur_keys = cube * N_POSITIONS + position_index(stick)
    state = agent.initial_state(c)
    is_first = torch.ones(c, dtype=torch.bool, device=device)
    expanded = 0
    k_pre = 2 * width
    for depth in range(max_depth):
        obs = torch.from_numpy(encode_obs(stick, hist)).to(device)
        lp, value, state = policy_scores(agent, obs, state, is_first)
        expanded += len(cube)
        lp = lp.float().cpu().numpy().astype(np.float64)
        if frame == "corner":  # two actions make each turn: one child, with their summed probability
            lp = np.where(_KEPT, np.logaddexp(lp, lp[:, _PARTNER]), -np.inf)
        cum = logp[:, None] + lp  # cumulative log-prob of each child
        score = cum
        if value is not None and value_weight:
            score = cum + value_weight * value.float().cpu().numpy()[:, None]
        undo = np.flatnonzero(hist[:, 0] >= 0)
        score[undo, hist[undo, 0] ^ 1] = -np.inf  # the child that undoes the last move
        child = stick[:, MOVE_PERMS].reshape(-1, 24)  # every beam's 12 children, beam-major (one gather)
        solved = is_solved(child).reshape(-1, N_MOVES)
        solved &= np.isfinite(score)
        if solved.any():  # the first solved child of each cube that has one
            b, a = np.nonzero(solved)
            cubes_hit, first = np.unique(cube[b], return_index=True)
            b, a = b[first], a[first]
            gid = cube_ids[cubes_hit]
            lengths[gid] = depth + 1
            moves[gid, :depth] = path[b]
            moves[gid, depth] = a
            keep_cube = np.ones(c, dtype=bool)
            keep_cube[cubes_hit] = False
        else:
            keep_cube = None
        if depth == max_depth - 1:
            break
        # dense [cube, slot * 12 + action] scores for a per-cube top-k; beams of a cube are contiguous
        starts = np.searchsorted(cube, np.arange(c))
        slot = np.arange(len(cube)) - starts[cube]
        dense = np.full((c, width * N_MOVES), -np.inf)
        dense[cube[:, None], slot[:, None] * N_MOVES + np.arange(N_MOVES)] = score
        if keep_cube is not None:
            dense[~keep_cube] = -np.inf
        k = min(k_pre, dense.shape[1])
        top = np.argpartition(-dense, k - 1, axis=1)[:, :k] if k < dense.shape[1] else \
            np.broadcast_to(np.arange(dense.shape[1]), (c, dense.shape[1])).copy()
        top_score = np.take_along_axis(dense, top, axis=1)
        order = np.argsort(-top_score, axis=1, kind="stable")
        top, top_score = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_score, order, axis=1)
        rows = np.broadcast_to(np.arange(c)[:, None], top.shape)
        ok = np.isfinite(top_score)
        r, col = rows[ok], top[ok]  # row-major: cube ascending, score descending
        parent = starts[r] + col // N_MOVES
        act = col % N_MOVES
        cand = child[parent * N_MOVES + act]
        keys = r * N_POSITIONS + position_index(cand)
        _, first = np.unique(keys, return_index=True)
        fresh = np.zeros(len(keys), dtype=bool)
        fresh[first] = True
        fresh &= ~np.isin(keys, prev_keys)
        r, parent, act, cand, keys = r[fresh], parent[fresh], act[fresh], cand[fresh], keys[fresh]
        # rank within the cube (still score-descending), keep the best `width`
        rstart = np.searchsorted(r, np.arange(c))
        rank = np.arange(len(r)) - rstart[r]
        sel = rank < width
        r, parent, act, cand, keys = r[sel], parent[sel], act[sel], cand[sel], keys[sel]
        if keep_cube is not None:  # drop solved cubes and renumber the rest 0..c'-1
            newid = np.cumsum(keep_cube) - 1
            prev_keys = cur_keys[keep_cube[cube]]
            prev_keys = newid[prev_keys // N_POSITIONS] * N_POSITIONS + prev_keys % N_POSITIONS
            keys = newid[r] * N_POSITIONS + keys % N_POSITIONS
            r, cube_ids, c = newid[r], cube_ids[keep_cube], int(keep_cube.sum())
        else:
            prev_keys = cur_keys
        if c == 0 or len(r) == 0:
            break
        pidx = torch.from_numpy(parent).to(device)
        state = commit_action(agent, index_state(state, pidx, dims), torch.from_numpy(act).to(device))
        logp = cum[parent, act]
        hist = np.concatenate([act[:, None], hist[parent, :-1]], axis=1)
        path = np.concatenate([path[parent], act[:, None]], axis=1)
        stick, cube, cur_keys = cand, r, keys
        is_first = torch.zeros(len(cube), dtype=torch.bool, device=device)
    return expanded


def solve_uniform(agent, cubes: int = 10_000, beam_width: int = 64, max_depth: int = 30, value_weight: float = 5.0,
                  max_beams: int = 16384, seed: int | None = None, frame: str = "free") -> dict[str, float]:
    """``mode=solve``'s measurement: beam search on ``cubes`` uniformly random states, flat ``solve/...`` metrics
    (``SolveResult.metrics``). The states are ``cube_eval.evaluate_uniform``'s (same seed, same first cubes)
    unless ``seed`` is given: the first ``cubes`` of those, so greedy and searched figures share cubes."""
    from cpcrl.cube_eval import EVAL_SEED
    from cpcrl.envs.cube_distance import sample_uniform

    cubes = positive_int("solve.cubes", cubes)
    states = sample_uniform(np.random.default_rng(EVAL_SEED + 1 if seed is None else seed), cubes)
    return beam_search(agent, states, beam_width, max_depth, value_weight, max_beams, frame).metrics()
