"""Belief probes (`cpcrl.probes`): the decoders' math on hand cases, the env's hidden-state targets against the env's
own state, each agent's belief features, and the probes end to end with their controls on the T-maze."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from cpcrl.envs.cube2x2 import Cube2x2VectorEnv
from cpcrl.envs.factory import make_gym_env
from cpcrl.probes import (
    ProbeData,
    collect,
    probe_data,
    probe_features,
    probe_metrics,
    r2_per_dim,
    random_control,
    ridge_fit,
    split_episodes,
    standardise,
)
from tests.conftest import composed_agent, composed_cfg


def _data(x: np.ndarray, y=None, classes=None, steps_per_episode: int = 10) -> ProbeData:
    s = len(x)
    return ProbeData({"belief": x}, y, classes, np.arange(s) % steps_per_episode, np.arange(s) // steps_per_episode)


# --- the math ------------------------------------------------------------------------------------------------------

def test_r2_by_hand():
    y = np.array([[1.0], [2.0], [3.0]])
    assert r2_per_dim(y, y)[0] == 1.0
    assert r2_per_dim(y, np.full_like(y, 2.0))[0] == 0.0          # the mean: SSE = SST
    assert r2_per_dim(y, np.array([[2.0], [2.0], [4.0]]))[0] == pytest.approx(1 - 2 / 2)  # SSE 2, SST 2
    assert np.isnan(r2_per_dim(np.ones((3, 1)), np.ones((3, 1)))[0])  # constant target: no R^2


def test_ridge_recovers_a_linear_target_on_held_out_episodes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = x @ np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0], [2.0, 1.0], [0.0, 0.0]]) + 4.0
    out = probe_features(x, _data(x, y), split_episodes(np.arange(600) // 10, 0.7, 0), mlp_steps=0)
    assert out["probe/state0_r2"] > 0.999 and out["probe/state1_r2"] > 0.999
    assert out["probe/state_r2"] == pytest.approx((out["probe/state0_r2"] + out["probe/state1_r2"]) / 2)
    w = np.linalg.lstsq(np.c_[x, np.ones(600)], y, rcond=None)[0]  # the closed form at lam -> 0 is least squares
    assert np.allclose(ridge_fit(x, y, 1e-12)(x[:5]), np.c_[x[:5], np.ones(5)] @ w, atol=1e-6)


def test_a_target_independent_of_the_features_scores_about_zero_held_out(one_thread):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 1))
    classes = rng.integers(0, 2, size=(1000, 1))
    out = probe_features(x, _data(x, y, classes), split_episodes(np.arange(1000) // 10, 0.5, 0), mlp_steps=200)
    assert -0.1 < out["probe/state_r2"] < 0.03          # on the train rows it would be > 0: overfitting
    assert abs(out["probe/class_acc"] - 0.5) < 0.06
    assert out["probe/state_r2_mlp"] < 0.03 and abs(out["probe/class_acc_mlp"] - 0.5) < 0.08


def test_the_mlp_probe_decodes_what_no_linear_one_can(one_thread):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(1000, 2))
    y = x[:, :1] ** 2                                   # uncorrelated with x, a function of it
    classes = (x[:, :1] * x[:, 1:] > 0).astype(np.int64)  # XOR of the signs
    out = probe_features(x, _data(x, y, classes), split_episodes(np.arange(1000) // 10, 0.7, 0), mlp_steps=400)
    assert out["probe/state_r2"] < 0.05 and abs(out["probe/class_acc"] - 0.5) < 0.08
    assert out["probe/state_r2_mlp"] > 0.9 and out["probe/class_acc_mlp"] > 0.9


def test_episodes_are_split_whole():
    episode = np.repeat(np.arange(10), 7)
    train = split_episodes(episode, 0.7, 3)
    assert {int(e) for e in episode[train]}.isdisjoint(int(e) for e in episode[~train])
    assert len(np.unique(episode[train])) == 7


# --- the env's targets ---------------------------------------------------------------------------------------------

def test_cartpole_pomdp_true_state_is_the_unwrapped_state_step_for_step():
    envs = make_gym_env("CartPole-v1", 3, observe=[0, 2])
    obs, info = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    finished = 0
    for _ in range(120):
        physical = np.stack([e.unwrapped.state for e in envs.unwrapped.envs]).astype(np.float32)
        assert np.array_equal(info["true_state"], physical)          # the state behind the obs acted on
        assert np.array_equal(info["true_state"][:, [0, 2]], obs)    # observed: position and angle
        obs, _, terminated, truncated, info = envs.step(rng.integers(0, 2, size=3))
        done = terminated | truncated
        # an autoreset env's true_state is its new episode's; final_true_state that of final_obs
        assert np.array_equal(info["final_true_state"][:, [0, 2]], info["final_obs"])
        assert np.array_equal(info["final_true_state"][~done], info["true_state"][~done])
        finished += int(done.sum())
    assert finished > 3  # the autoreset case was met


def test_tmaze_true_state_is_the_cue():
    envs = make_gym_env("cpcrl/TMaze-v0", 4, kwargs={"length": 3})
    obs, info = envs.reset(seed=1)
    cues = np.array([e.unwrapped.cue for e in envs.unwrapped.envs], dtype=np.float32)
    assert np.array_equal(info["true_state"][:, 0], obs[:, 0]) and np.array_equal(info["true_state"][:, 0], cues)
    for _ in range(3):  # in the corridor the obs no longer shows the cue; the target still does
        obs, *_, info = envs.step(np.zeros(4, dtype=np.int64))
        assert (obs[:, 0] == 0).all() and np.array_equal(info["true_state"][:, 0], cues)
        assert np.array_equal(info["true_class"][:, 0], np.where(cues > 0, 0, 1))


def test_cube_true_state_is_the_sticker_state():
    envs = Cube2x2VectorEnv(4, scramble_depth=3, max_steps=20)
    obs, info = envs.reset(seed=0)
    assert np.array_equal(info["true_class"], envs.states) and np.array_equal(info["true_state"], obs[:, :144])
    obs, _, _, _, info = envs.step(np.array([0, 3, 5, 7]))
    assert np.array_equal(info["true_state"], obs[:, :144])
    assert np.array_equal(info["true_class"], obs[:, :144].reshape(4, 24, 6).argmax(-1))
    assert np.array_equal(info["final_true_state"], info["final_obs"][:, :144])


# --- belief features -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, width", [(("agent=ppo_lstm", "world_model.lstm_hidden=16"), 16),
                                              (("agent=reinforce",), 3), (("agent=random",), 3)])
def test_belief_features_are_the_lstm_output_or_the_obs(overrides, width):
    space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    agent = composed_agent(space, gym.spaces.Discrete(3), *overrides)
    obs, first = torch.randn(2, 5, 3), torch.tensor([True, False])
    state = agent.initial_state(5)
    for t in range(2):
        feats, state = agent.belief_features(obs[t], state, first[t].expand(5))
        assert feats.shape == (5, width)
    if width == 3:
        assert torch.equal(feats, obs[1])  # no memory: the observation itself
    else:  # the LSTM output at step 2 depends on step 1's obs: memory
        _, other = agent.belief_features(-obs[0], agent.initial_state(5), first[0].expand(5))
        assert not torch.allclose(agent.belief_features(obs[1], other, first[1].expand(5))[0], feats)


@pytest.mark.parametrize("agent_name", ["planet", "dreamer"])
def test_rssm_belief_features_are_the_rssm_features(agent_name, one_thread):
    space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    agent = composed_agent(space, gym.spaces.Discrete(2), f"agent={agent_name}", "world_model.deter=16",
                           "world_model.hidden=16")
    state = agent.initial_state(4)
    feats, state = agent.belief_features(torch.randn(4, 3), state, torch.ones(4, dtype=torch.bool))
    assert feats.shape == (4, agent.rssm.features(state["latent"]).shape[-1])
    assert torch.equal(feats, agent.rssm.features(state["latent"]))


# --- end to end ----------------------------------------------------------------------------------------------------

def test_tmaze_probe_memory_over_the_observation_and_the_global_rng_untouched(one_thread):
    """An (untrained) LSTM still carries the cue over a short corridor, which the current obs shows only at t = 0."""
    envs = make_gym_env("cpcrl/TMaze-v0", 8, kwargs={"length": 4})
    cfg = composed_cfg("agent=ppo_lstm", "seed=0", "world_model.lstm_hidden=32")
    agent = random_control(cfg, envs, torch.device("cpu"), 0)
    rng_before = torch.get_rng_state()
    control = random_control(cfg, envs, torch.device("cpu"), 1)
    out = probe_metrics(agent, envs, 48, control, seed=3, per_time=True, mlp_steps=50)
    assert torch.equal(torch.get_rng_state(), rng_before)  # eval.probe=true leaves training's draws as they were
    assert out["probe/samples"] > 48 * 5
    majority = max(out["probe_obs/class_acc_t3"], 1 - out["probe_obs/class_acc_t3"])
    assert out["probe_obs/class_acc_t0"] == 1.0 and out["probe/class_acc_t0"] == 1.0  # the cue is in the obs
    assert out["probe_obs/class_acc_t3"] <= 0.75 and majority < 0.8  # then only memory has it
    assert out["probe/class_acc_t3"] == 1.0 and out["probe_random/class_acc_t3"] == 1.0
    assert out["probe/class_acc"] > out["probe_obs/class_acc"] + 0.2


def test_collect_records_every_step_of_every_episode(one_thread):
    envs = make_gym_env("cpcrl/TMaze-v0", 4, kwargs={"length": 2})
    agent = composed_agent(envs.single_observation_space, envs.single_action_space, "agent=random")
    data = collect(agent, envs, 6, seed=0)  # 2 rounds of 4 envs, of which 2 + 4 episodes are kept
    assert len(np.unique(data.episode)) == 6
    for e in np.unique(data.episode):
        assert np.array_equal(data.time[data.episode == e], np.arange((data.episode == e).sum()))
    assert np.array_equal(data.features["belief"], data.features["obs"])
    assert data.true_state.shape == (len(data.time), 1) and data.true_class.shape == (len(data.time), 1)


def test_probe_on_obs_of_a_fully_observed_target_is_perfect():
    envs = make_gym_env("CartPole-v1", 4, observe=[0, 1, 2, 3])
    agent = composed_agent(envs.single_observation_space, envs.single_action_space, "agent=random")
    out = probe_data(collect(agent, envs, 16, seed=0), mlp_steps=0)
    assert out["probe_obs/state_r2"] > 0.999 and set(out) >= {f"probe_obs/state{d}_r2" for d in range(4)}


@pytest.mark.slow
def test_trained_ppo_lstm_belief_beats_the_obs_on_the_tmaze(one_thread):
    """A ppo_lstm that solves the T-maze (length 10) decodes the cue at every step; the observation cannot. A
    random-init LSTM keeps the cue *classifiable* for ~14 steps on this noise-free task (accuracy 1.0 on a solved
    agent's 11-step episodes: not asserted lower), but regresses it less exactly: benchmarks/bench_probes.py,
    seeds 0-2 at 30k steps, state_r2 trained 1.000 vs random 0.899-0.923, obs -0.04-0.09."""
    from cpcrl.collector import Collector, evaluate

    envs = make_gym_env("cpcrl/TMaze-v0", 8, kwargs={"length": 10})
    agent = composed_agent(envs.single_observation_space, envs.single_action_space, "agent=ppo_lstm",
                           "seed=1", "train.total_steps=30000", "agent.num_steps=32", "agent.truncation_length=16")
    collector = Collector(envs, torch.device("cpu"), 1)
    while collector.env_step < 30000:
        agent.train_iteration(collector)
    eval_envs = make_gym_env("cpcrl/TMaze-v0", 8, kwargs={"length": 10})
    assert evaluate(agent, eval_envs, 16)["eval/return_mean"] > 0.8
    cfg = composed_cfg("agent=ppo_lstm", "seed=1", "train.total_steps=30000", "agent.num_steps=32",
                       "agent.truncation_length=16")
    control = random_control(cfg, eval_envs, torch.device("cpu"), 8)
    out = probe_metrics(agent, eval_envs, 64, control, seed=5, per_time=True, mlp_steps=0)
    assert out["probe/class_acc"] > 0.95 and out["probe_obs/class_acc"] < 0.7
    assert out["probe/state_r2"] > 0.97 and out["probe/state_r2"] > out["probe_random/state_r2"] + 0.03
    assert out["probe_obs/state_r2"] < 0.3


def test_cli_eval_probe_logs_probe_rows_and_mode_probe_writes_probe_json(tmp_path):
    """`eval.probe=true` puts probe/* next to eval/* in metrics.jsonl at every evaluation; `mode=probe` on the run
    writes probe.json (with both controls) and probe.png; bad probe keys are one line; cpcrl-report's probe table
    holds this run's final probe scores (the mean over its last 3 evaluations, as the return's) and probe.json's."""
    import csv
    import json

    from cpcrl.report import main as report_main
    from tests.conftest import cpcrl

    cpcrl("agent=ppo_lstm", "env=tmaze", "train.total_steps=2048", "eval.every=1024", "eval.episodes=8",
          "eval.num_envs=8", "eval.probe=true", "eval.probe_episodes=12", "logger=none", "device=cpu",
          "hydra.run.dir=run", cwd=tmp_path)
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if "eval/return_mean" in r]
    assert len(evals) == 2 and all("probe/class_acc" in r and "probe_random/class_acc" in r for r in evals)
    assert all(0.0 <= r["probe/class_acc"] <= 1.0 and r["probe/samples"] > 0 for r in evals)
    cpcrl("mode=probe", "checkpoint=run", "probe.episodes=24", "device=cpu", cwd=tmp_path)
    (out,) = (tmp_path / "run" / "probe").glob("*/probe.json")
    result = json.loads(out.read_text())
    assert {"probe/class_acc", "probe_random/class_acc", "probe_obs/class_acc"} <= set(result)
    assert (out.parent / "probe.png").stat().st_size > 0
    bad = cpcrl("mode=probe", "checkpoint=run", "probe.train_fraction=1.5", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "cpcrl: error: probe.train_fraction=1.5: must be in (0, 1]"
    assert report_main([str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    rows = {(r["from"], r["score"]): r for r in csv.DictReader(open(tmp_path / "report" / "report_probes.csv"))}
    logged = rows[("metrics.jsonl", "class_acc")]
    assert float(logged["belief"]) == pytest.approx(np.mean([r["probe/class_acc"] for r in evals]))  # both evals
    assert float(logged["random"]) == pytest.approx(np.mean([r["probe_random/class_acc"] for r in evals]))
    assert float(logged["final_metric"]) == pytest.approx(np.mean([r["eval/return_mean"] for r in evals]))
    probed = rows[("probe.json", "class_acc")]
    assert [float(probed[k]) for k in ("belief", "random", "obs")] == pytest.approx(
        [result["probe/class_acc"], result["probe_random/class_acc"], result["probe_obs/class_acc"]])
    assert float(rows[("probe.json", "class_acc_t3")]["belief"]) == pytest.approx(result["probe/class_acc_t3"])


# --- POPGym's hidden state (cpcrl/envs/popgym_state.py) ------------------------------------------------------------

def _popgym(name: str):
    """A POPGym task instance from popgym.envs, with its hidden state in info."""
    pytest.importorskip("popgym")
    import popgym.envs

    from cpcrl.envs.popgym_state import PopgymHiddenState

    return PopgymHiddenState(getattr(popgym.envs, name)())


def test_popgym_repeat_previous_target_is_the_card_its_reward_reads():
    """Checked against the dealt cards as observed (not the env's internals): the suit observed k - 1 steps before
    the current card, 4 before k cards are out; answering it is rewarded, any other suit penalised."""
    env = _popgym("RepeatPreviousEasy")
    k = env.unwrapped.k
    obs, info = env.reset(seed=0)
    seen, rng, done, steps = [obs], np.random.default_rng(0), False, 0
    while not done:
        due = int(info["true_class"][0])
        assert due == (seen[-k] if len(seen) >= k else 4)
        if due < 4:  # popgym's own state: its last k cards, the due one first
            assert due == env.unwrapped.get_state()[0][0]
        if due == 4:
            action = int(rng.integers(4))
        else:  # mostly the answer, every third step a wrong suit
            action = due if steps % 3 else (due + 1) % 4
        obs, reward, done, _, info = env.step(action)
        assert np.sign(reward) == (0 if due == 4 else 1 if action == due else -1)
        seen.append(obs)
        steps += 1
    assert steps == 51 and info["true_class"].dtype == np.int64


def test_popgym_repeat_first_target_is_the_first_card_of_each_episode():
    env = _popgym("RepeatFirstEasy")
    for seed in (0, 1, 2):
        first, info = env.reset(seed=seed)
        done = False
        while not done:
            assert info["true_class"].tolist() == [first]
            _, reward, done, _, info = env.step(int(info["true_class"][0]))
            assert reward > 0  # the target is the answer


def test_popgym_count_recall_targets_are_the_running_counts_of_the_observed_cards():
    env = _popgym("CountRecallEasy")  # 2 values (colours), 26 cards of each
    obs, info = env.reset(seed=0)
    tally, done = np.zeros(2), False
    tally[obs[0]] += 1
    while not done:
        assert np.array_equal(info["true_state"], tally)               # counted from the observations
        assert info["true_class"].tolist() == [int(tally[obs[1]])]     # the count of the queried value
        obs, reward, done, _, info = env.step(int(info["true_class"][0]))
        assert reward > 0                                              # it is the rewarded answer
        tally[obs[0]] += 1
    assert tally.sum() == 52 and info["true_state"].dtype == np.float32


@pytest.mark.parametrize("name, observed", [("PositionOnlyCartPoleEasy", [0, 2]),
                                            ("PositionOnlyPendulumEasy", [0, 1])])
def test_popgym_control_targets_are_the_physical_state(name, observed):
    env = _popgym(name)
    obs, info = env.reset(seed=0)
    for _ in range(40):
        physical = np.asarray(env.unwrapped.state if "CartPole" in name else env.unwrapped._state, np.float32)
        assert np.array_equal(info["true_state"], physical) and np.allclose(info["true_state"][observed], obs)
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, info = env.reset()


def test_popgym_hidden_state_through_the_factory_and_the_probes(one_thread):
    """Vectorised and encoded as `make_gym_env` makes it: after an autoreset the target is the new episode's; tasks
    without a target keep popgym's own id; the probes record every step of it."""
    pytest.importorskip("popgym")
    from cpcrl.envs.popgym_state import PopgymHiddenState, hidden_state_env_id

    assert hidden_state_env_id("MineSweeperEasy") == "popgym-MineSweeperEasy-v0"
    with pytest.raises(ValueError, match="MineSweeperEasy has no hidden-state target"):
        PopgymHiddenState(gym.make("popgym-MineSweeperEasy-v0"))
    envs = make_gym_env(hidden_state_env_id("RepeatFirstEasy"), 3)
    obs, info = envs.reset(seed=0)
    first = obs.argmax(1)  # the encoded Discrete(4) observation: a one-hot
    restarted = 0
    for _ in range(60):
        assert np.array_equal(info["true_class"][:, 0], first)
        obs, _, terminated, truncated, info = envs.step(np.zeros(3, dtype=np.int64))
        done = terminated | truncated
        first = np.where(done, obs.argmax(1), first)
        restarted += int(done.sum())
    assert restarted == 3  # 51 steps an episode: each env restarted once
    agent = composed_agent(envs.single_observation_space, envs.single_action_space, "agent=random")
    data = collect(agent, envs, 6, seed=0)
    assert len(data.time) == 6 * 51 and data.true_class.shape == (6 * 51, 1)  # 51 acting steps an episode
    assert np.array_equal(data.true_class[data.time == 0, 0], data.features["obs"][data.time == 0].argmax(1))
    assert 0.0 <= probe_data(data, mlp_steps=0)["probe_obs/class_acc"] <= 1.0


def test_a_feature_nearly_constant_on_the_fit_rows_cannot_wreck_the_held_out_r2():
    """A saturated unit (std 1e-9 on the fit rows, O(1) on the held-out ones) is scaled by ~1e9 without the clip
    to (a margin around) the fit range; with it the ridge probe still recovers y = 2 x from the informative feature."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 1))
    near_constant = np.concatenate([1e-9 * rng.normal(size=(300, 1)), rng.normal(size=(100, 1))])
    features, y = np.concatenate([x, near_constant], 1), 2 * x
    x_train, x_test = standardise(features[:300], features[300:])
    span = x_train[:, 1].max() - x_train[:, 1].min()
    assert np.abs(x_test[:, 1]).max() <= np.abs(x_train[:, 1]).max() + span + 1e-12
    r2 = r2_per_dim(y[300:], ridge_fit(x_train, y[:300], 1e-3)(x_test))
    assert r2[0] > 0.99
