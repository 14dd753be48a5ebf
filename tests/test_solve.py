"""The beam-search solver: exact on small distances with a uniform policy, optimal with an oracle policy, belief
states carried per beam, and the policy protocol matching every agent's own greedy act."""

import numpy as np
import pytest
import torch

from cpcrl.envs import cube_distance as cd
from cpcrl.envs.cube2x2 import CORNER_MOVE, MOVE_PERMS, apply_moves, encode_obs, hold, is_solved, optimal_distance
from cpcrl.errors import ConfigError
from cpcrl.solve import beam_search, commit_action, index_state, policy_scores, state_batch_dims

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))
        yield


def stickers(obs: torch.Tensor) -> np.ndarray:
    return obs[:, :144].reshape(-1, 24, 6).argmax(-1).numpy().astype(np.uint8)


class Uniform:
    """Ties everywhere: the search is a breadth-first search limited by the beam width."""

    name, device, training = "uniform", CPU, False

    def initial_state(self, n):
        return None

    def policy_scores(self, obs, state, is_first, mask):
        return torch.full((len(obs), 12), -np.log(12.0)), None, state

    def eval(self):
        pass


class Oracle(Uniform):
    """Log-prob 0 on a move that brings the cube one closer (from the exact table), -5 elsewhere."""

    def policy_scores(self, obs, state, is_first, mask):
        s = stickers(obs)
        nb = optimal_distance(s[:, MOVE_PERMS].reshape(-1, 24)).reshape(-1, 12)
        good = nb < optimal_distance(s)[:, None]
        lp = torch.where(torch.from_numpy(good), 0.0, -5.0)
        return lp - lp.logsumexp(-1, keepdim=True), None, state


class Recorder(Uniform):
    """A recurrent agent whose state ([1, B, 12], batch dim 1 like an LSTM's) counts the moves of its beam's path;
    it checks on every call that the counts match the moves in the obs history (last 4 moves) and the depth."""

    def __init__(self):
        self.calls = 0

    def initial_state(self, n):
        return {"counts": torch.zeros(1, n, 12), "depth": torch.zeros(n)}

    def policy_scores(self, obs, state, is_first, mask):
        self.calls += 1
        hist = obs[:, 144:].reshape(-1, 4, 12)
        last = hist[:, 0]
        counts = torch.where(is_first[None, :, None], 0.0, state["counts"]) + last[None]
        depth = torch.where(is_first, 0.0, state["depth"] + 1)
        short = depth <= 4  # the whole path is in the history
        assert torch.equal(counts[0][short], hist.sum(1)[short])
        assert torch.equal(counts[0].sum(-1), depth)  # one move counted per depth
        lp = torch.randn(len(obs), 12, generator=torch.Generator().manual_seed(self.calls)).log_softmax(-1)
        return lp, None, {"counts": counts, "depth": depth}


def check_moves(states, result, frame="free"):
    s = hold(states, frame).copy()
    for t in range(result.moves.shape[1]):
        m = result.moves[:, t].astype(np.int64)
        on = m >= 0
        s[on] = apply_moves(s[on], m[on])
    assert np.array_equal((result.moves >= 0).sum(1), np.maximum(result.lengths, 0))
    assert is_solved(s[result.lengths >= 0]).all()


@pytest.mark.parametrize("frame", ["free", "corner"])
def test_uniform_policy_wide_beam_is_exact_on_short_distances(frame):
    # positions 4 moves from a state: 534 at distance 4 + 27 at 2 + 1 at 0 = 562 <= 1024, so with duplicates
    # pruned the beam holds all of them and a distance-5 cube is found at depth 5 (12 * 11^3 raw paths would not fit)
    d = np.repeat(np.arange(1, 6), 12)
    states = cd.sample_at_distance(np.random.default_rng(0), d)
    res = beam_search(Uniform(), states, beam_width=1024, max_depth=6, frame=frame)
    assert np.array_equal(res.lengths, d) and np.array_equal(res.optimal, d)
    check_moves(states, res, frame)
    m = res.metrics()
    assert m["solve/solve_rate"] == 1.0 and m["solve/length_ratio_mean"] == 1.0 and m["solve/optimal_fraction"] == 1.0
    assert m["solve/states_expanded"] == res.states_expanded > 0 and m["solve/cubes"] == 60


def test_oracle_policy_width_one_is_optimal_on_uniform_states():
    states = cd.sample_uniform(np.random.default_rng(1), 200)
    res = beam_search(Oracle(), states, beam_width=1, max_depth=14)
    assert np.array_equal(res.lengths, optimal_distance(states))
    check_moves(states, res)
    assert res.states_expanded == optimal_distance(states).sum()  # one beam per cube per depth, stopped when solved


def test_corner_frame_searches_the_six_turns_with_the_probability_of_both_actions():
    states = cd.sample_uniform(np.random.default_rng(1), 200)
    res = beam_search(Oracle(), states, beam_width=1, max_depth=14, frame="corner")
    assert np.array_equal(res.lengths, optimal_distance(states))
    check_moves(states, res, "corner")
    played = res.moves[res.moves >= 0]
    assert np.array_equal(CORNER_MOVE[played], played)  # only the U, R, F turns the held cube is turned by

    class Aliases(Uniform):
        """U+ 0.25 and D+ 0.25 (one turn in the corner frame: 0.5), F+ 0.45, the other 9 actions 0.05 / 9 each."""

        def policy_scores(self, obs, state, is_first, mask):
            p = torch.full((len(obs), 12), 0.05 / 9)
            p[:, 0], p[:, 2], p[:, 8] = 0.25, 0.25, 0.45
            return p.log(), None, state

    start = apply_moves(apply_moves(cd.index_to_states([0]), [6]), [1])  # R+ then U-: held, 2 from solved
    assert optimal_distance(start).tolist() == [2] and np.array_equal(hold(start, "corner"), start)
    free = beam_search(Aliases(), start, beam_width=1, max_depth=2)  # keeps F+ (0.45 > 0.25): 3 away
    held = beam_search(Aliases(), start, beam_width=1, max_depth=2, frame="corner")  # keeps U+ (0.5), then R-
    assert free.lengths.tolist() == [-1] and held.lengths.tolist() == [2] and held.moves[0].tolist() == [0, 7]


def test_unsolved_within_max_depth_and_solved_start():
    states = np.vstack([cd.sample_at_distance(np.random.default_rng(2), [6, 6]), cd.index_to_states([0])])
    res = beam_search(Uniform(), states, beam_width=1, max_depth=3)
    assert res.lengths.tolist() == [-1, -1, 0]
    m = res.metrics()
    assert m["solve/solve_rate"] == pytest.approx(1 / 3) and "solve/length_ratio_mean" not in m
    assert 0 < m["solve/solve_rate_ci_low"] < 1 / 3 < m["solve/solve_rate_ci_high"] < 1


def test_belief_state_follows_each_beam():
    agent = Recorder()
    states = cd.sample_at_distance(np.random.default_rng(3), np.full(6, 7))
    res = beam_search(agent, states, beam_width=8, max_depth=9, max_beams=16)  # 2 cubes per chunk
    assert agent.calls > 9  # several chunks, each checked at every depth
    check_moves(states, res)


def test_state_batch_dims_and_index():
    agent = Recorder()
    dims = state_batch_dims(agent)
    assert dims == {"counts": 1, "depth": 0}
    s = {"counts": torch.arange(12.0).reshape(1, 3, 4).repeat(1, 1, 3), "depth": torch.tensor([5.0, 6.0, 7.0])}
    out = index_state(s, torch.tensor([2, 2, 0]), dims)
    assert out["depth"].tolist() == [7.0, 7.0, 5.0] and out["counts"].shape == (1, 3, 12)
    assert out["counts"][0, :, 0].tolist() == [8.0, 8.0, 0.0]


AGENTS = {"reinforce": ["agent=reinforce"], "ppo_lstm": ["agent=ppo_lstm"],
          "ppo_ff": ["agent=ppo_lstm", "world_model=none"], "cpc_rl": ["agent=cpc_rl"], "dreamer": ["agent=dreamer"]}


def _agent(name):
    """The agent as a run builds it (the composed config and ``train.build_agent``) for the cube."""
    from hydra import compose, initialize_config_module

    from cpcrl.train import build_agent, make_env

    torch.manual_seed(0)
    with initialize_config_module(config_module="cpcrl.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*AGENTS[name], "env=cube2x2", "device=cpu", "logger=none"])
    return build_agent(cfg, make_env(cfg.env, num_envs=2), CPU)


@pytest.mark.parametrize("name", list(AGENTS))
def test_policy_scores_match_each_agents_greedy_act(name):
    # random weights make the argmax informative; three steps so recurrent states matter
    states = cd.sample_uniform(np.random.default_rng(4), 16)
    agent = _agent(name)
    for p in agent.parameters():
        p.data.normal_(0, 0.3)
    agent.eval()
    s_act, s_ps = agent.initial_state(16), agent.initial_state(16)
    first = torch.ones(16, dtype=torch.bool)
    hist, st = np.full((16, 4), -1), states.copy()
    for _ in range(3):
        obs = torch.from_numpy(encode_obs(st, hist))
        with torch.no_grad():
            a, s_act = agent.act(obs, s_act, first, None, explore=False)
        lp, value, s_ps = policy_scores(agent, obs, s_ps, first)
        assert lp.shape == (16, 12) and torch.allclose(lp.exp().sum(-1), torch.ones(16), atol=1e-5)
        assert torch.equal(lp.argmax(-1), a)
        assert (value is None) == (name == "reinforce") and (value is None or value.shape == (16,))
        s_ps = commit_action(agent, s_ps, a)
        for x, y in zip(_leaves(s_act), _leaves(s_ps), strict=True):
            assert torch.allclose(x.float(), y.float(), atol=1e-6)
        an = a.numpy()
        st, hist = apply_moves(st, an), np.concatenate([an[:, None], hist[:, :-1]], 1)
        first = torch.zeros(16, dtype=torch.bool)
    res = beam_search(agent, states[:4], beam_width=4, max_depth=3)  # runs end to end on the real agent
    assert res.states_expanded > 0 and len(res.lengths) == 4


def _leaves(s):
    if s is None:
        return []
    if isinstance(s, torch.Tensor):
        return [s]
    return [x for v in (s.values() if isinstance(s, dict) else s) for x in _leaves(v)]


def test_planet_and_bad_arguments_are_one_line_errors():
    from cpcrl.envs.factory import make_cube_env
    from tests.conftest import composed_agent

    envs = make_cube_env(1, 1, 10, 10.0)
    agent = composed_agent(envs.single_observation_space, envs.single_action_space, "agent=planet",
                           "world_model.deter=8", "world_model.hidden=8")  # plans with CEM: no policy
    with pytest.raises(ConfigError, match="agent=planet has no policy to search over"):
        beam_search(agent, cd.index_to_states([5]))
    with pytest.raises(ConfigError, match=r"solve.beam_width=0: must be a positive integer"):
        beam_search(Uniform(), cd.index_to_states([5]), beam_width=0)


def test_cli_cube_run_reports_true_distances_and_mode_solve_writes_solve_json(tmp_path):
    """A real cube run (held by its corner) carries the distance and uniform-state figures in metrics.jsonl and
    summary.json, and `mode=solve checkpoint=<run>` runs the beam search over its policy into solve.json."""
    import json

    from tests.conftest import cpcrl

    run = tmp_path / "run"
    cpcrl("agent=reinforce", "env=cube2x2", "env.frame=corner", "env.scramble_depth=1", "train.total_steps=2000",
          "eval.every=1000",
          "eval.episodes=20", "eval.num_envs=20", "eval.cube_uniform_states=300", "eval.cube_per_distance=40",
          "eval.cube_curve_states=50", "logger=none", "device=cpu", f"hydra.run.dir={run}", cwd=tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    # the training curve: every periodic eval has the uniform figure on the first 50 cubes, the final on 300
    curve = [r for r in rows[:-1] if "eval/solve_rate" in r]
    assert curve and all(r["eval/uniform_states"] == 50 and "eval/solve_rate_dist1" not in r for r in curve)
    for key in ("eval/solve_rate_uniform", "eval/solve_rate_dist1", "eval/solve_rate_dist14"):
        assert summary[key] == last[key] and 0.0 <= summary[f"{key}_ci_low"] <= summary[key]
        assert summary[key] <= summary[f"{key}_ci_high"] <= 1.0
    assert summary["eval/uniform_states"] == 300 and summary["eval/dist_states"] == 40
    assert 10.0 < summary["eval/optimal_mean_uniform"] < 11.4  # the published mean distance is 10.67
    # one quarter turn from solved (in a random orientation) some are solved; 14 exact moves in 30 steps, none
    assert summary["eval/solve_rate_dist1"] > summary["eval/solve_rate_dist14"] == 0.0

    cpcrl("mode=solve", "checkpoint=run", "solve.cubes=30", "solve.beam_width=16", "solve.max_depth=6",
          "device=cpu", cwd=tmp_path)
    (solve_json,) = (run / "solve").glob("*/solve.json")
    result = json.loads(solve_json.read_text())
    assert result["solve/cubes"] == 30 and result["solve/beam_width"] == 16 and 0 <= result["solve/solve_rate"] <= 1
    assert result["env_step"] == summary["env_step"] and result["solve/states_expanded"] > 0

    bad = cpcrl("mode=solve", "device=cpu", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "cpcrl: error: mode=solve needs a checkpoint: add checkpoint=<path to .pt or run dir>")
