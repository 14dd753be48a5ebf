"""The gymnasium side of the env contract: POMDP masking, same-step autoreset, dense final_obs, truncation."""

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from cpcrl.errors import ConfigError
from cpcrl.train import make_env


def env_from(*overrides):
    with initialize_config_module(config_module="cpcrl.conf", version_base="1.3"):
        return make_env(compose(config_name="config", overrides=list(overrides)).env)


def test_cartpole_pomdp_keeps_position_and_angle():
    full, pomdp = env_from("env=cartpole", "env.num_envs=2"), env_from("env=cartpole_pomdp", "env.num_envs=2")
    o_full, _ = full.reset(seed=3)
    o_pomdp, _ = pomdp.reset(seed=3)
    assert o_pomdp.shape == (2, 2) and pomdp.single_observation_space.shape == (2,)
    np.testing.assert_array_equal(o_pomdp, o_full[:, [0, 2]])


def test_pendulum_pomdp_drops_angular_velocity_and_rescales_actions():
    env = env_from("env=pendulum_pomdp", "env.num_envs=1")
    assert env.single_observation_space.shape == (2,)
    assert env.single_action_space.low.tolist() == [-1.0] and env.single_action_space.high.tolist() == [1.0]
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs[0, 0] ** 2 + obs[0, 1] ** 2, 1.0, rtol=1e-5)  # cos^2 + sin^2


def test_termination_gives_final_obs_and_same_step_reset():
    env = env_from("env=cartpole", "env.num_envs=3")
    obs, _ = env.reset(seed=0)
    for _ in range(200):  # always pushing left topples the pole within a few dozen steps
        prev = obs
        obs, reward, terminated, truncated, info = env.step(np.zeros(3, dtype=np.int64))
        assert info["final_obs"].shape == (3, 4) and reward.dtype == np.float32
        running = ~(terminated | truncated)
        np.testing.assert_array_equal(info["final_obs"][running], obs[running])
        if terminated.any():
            i = int(np.flatnonzero(terminated)[0])
            assert abs(info["final_obs"][i, 2]) > 0.2 or abs(info["final_obs"][i, 0]) > 2.4  # the fallen pole
            assert abs(obs[i, 2]) < 0.06 and np.abs(obs[i]).max() <= 0.05  # already the next episode's start
            assert not np.allclose(prev[i], obs[i])
            return
    pytest.fail("no termination in 200 steps")


def test_truncation_is_not_termination():
    env = env_from("env=pendulum", "env.num_envs=2", "env.max_episode_steps=5")
    env.reset(seed=0)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.zeros((2, 1), dtype=np.float32))
    assert truncated.all() and not terminated.any()
    assert not np.allclose(info["final_obs"], obs)  # the bootstrap target is the old episode's last obs


def test_bad_env_settings_are_config_errors():
    with pytest.raises(ConfigError, match="unknown gymnasium id 'NoSuchEnv-v0'"):
        env_from("env=gym", "env.id=NoSuchEnv-v0")
    with pytest.raises(ConfigError, match=r"env.observe indices \[7\] out of range: valid are 0..3"):
        env_from("env=gym", "env.observe=[0,7]")
    with pytest.raises(ConfigError, match="env.vectorization='threads': valid are sync, async"):
        env_from("env=cartpole", "env.vectorization=threads")


def test_unit_actions_map_to_env_bounds():
    import gymnasium as gym

    from cpcrl.envs.wrappers import UnitActions

    env = UnitActions(gym.make("Pendulum-v1"))  # torque bounds [-2, 2]
    assert env.action(np.array([-1.0])).tolist() == [-2.0]
    assert env.action(np.array([0.5])).tolist() == [1.0]
    assert env.action(np.array([3.0])).tolist() == [2.0]  # clipped, not extrapolated


def test_prev_action_is_appended_and_cleared_at_reset():
    env = env_from("env=pendulum_pomdp", "env.num_envs=2", "env.prev_action=true")
    assert env.single_observation_space.shape == (3,)
    obs, _ = env.reset(seed=0)
    assert obs[:, 2].tolist() == [0.0, 0.0]
    obs, *_ = env.step(np.array([[0.5], [-2.0]], dtype=np.float32))
    assert obs[:, 2].tolist() == [0.5, -1.0]  # the agent's action, clipped to its [-1, 1] space
    cart = env_from("env=cartpole", "env.num_envs=3", "env.prev_action=true")
    cart.reset(seed=0)
    for _ in range(200):  # pushing left: episodes end, and a reset clears the one-hot
        obs, _, term, trunc, info = cart.step(np.zeros(3, dtype=np.int64))
        if (term | trunc).any():
            break
    done = term | trunc
    assert obs[done, 4:].sum() == 0 and (obs[~done, 4:] == [1, 0]).all()
    assert (info["final_obs"][done, 4:] == [1, 0]).all()
    with pytest.raises(ConfigError, match="prev_action and env.pixels exclude each other"):
        env_from("env=pendulum", "env.pixels=true", "env.prev_action=true")


def test_action_repeat_holds_actions_sums_rewards_and_counts_env_steps():
    import torch

    from cpcrl.collector import Collector

    fine = env_from("env=pendulum_pomdp", "env.num_envs=2")
    coarse = env_from("env=pendulum_pomdp", "env.num_envs=2", "env.action_repeat=3")
    fine.reset(seed=5)
    coarse.reset(seed=5)
    rng = np.random.default_rng(0)
    total_fine, total_coarse = np.zeros(2), np.zeros(2)
    for k in range(67):  # 200 env steps = 66 agent steps of 3 and a last one of 2, cut by the time limit
        a = rng.uniform(-1, 1, size=(2, 1)).astype(np.float32)
        obs_c, r_c, term_c, trunc_c, info = coarse.step(a)
        held = 3 if k < 66 else 2
        assert info["env_steps"].tolist() == [held, held]
        r_sum = np.zeros(2)
        for _ in range(held):
            obs_f, r_f, term_f, trunc_f, info_f = fine.step(a)
            r_sum += r_f
        np.testing.assert_allclose(r_c, r_sum, rtol=1e-5)
        np.testing.assert_allclose(info["final_obs"], info_f["final_obs"], rtol=1e-6)
        assert trunc_c.tolist() == trunc_f.tolist() == [k == 66] * 2
        total_fine += r_sum
        total_coarse += r_c
    np.testing.assert_allclose(total_coarse, total_fine, rtol=1e-5)
    collector = Collector(env_from("env=pendulum_pomdp", "env.num_envs=2", "env.action_repeat=3"),
                          torch.device("cpu"), seed=0)
    for _ in range(67):
        collector.step(np.zeros((2, 1), dtype=np.float32))
    assert collector.env_step == 400  # budgets count env steps, not agent steps
    assert collector.episode_metrics()["train/episode_length"] == 200
    with pytest.raises(ConfigError, match="env.action_repeat=0: must be a positive integer"):
        env_from("env=pendulum", "env.action_repeat=0")
