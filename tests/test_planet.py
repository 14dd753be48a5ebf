import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import cpcrl

from cpcrl.collector import Collector, evaluate
from cpcrl.envs.factory import make_cube_env, make_gym_env
from cpcrl.errors import ConfigError
from tests.conftest import composed_agent, composed_cfg

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


TINY_PLANNER = {"horizon": 4, "candidates": 32, "top_k": 4, "iterations": 2}


def world_model(name="rssm_gaussian", *over):
    tiny = ["world_model.deter=32", "world_model.hidden=32", "world_model.stoch=8", "world_model.latents=4",
            "world_model.classes=4", "world_model.encoder.hidden=32", "world_model.decoder.hidden=32",
            "world_model.heads.hidden=32"]
    return [f"world_model={name}", *tiny, *over]


def tiny_agent(envs, wm=None, space=None, **kw):
    torch.manual_seed(0)
    args = dict(seed_episodes=2, collect_interval=3, batch_size=4, seq_len=6, planner=TINY_PLANNER, seed=0)
    space = space or (envs.single_observation_space, envs.single_action_space)
    return composed_agent(*space, "agent=planet", *(wm or world_model()), **{**args, **kw})


LOSSES = ("loss/reconstruction", "loss/reward", "loss/kl", "loss/continue", "loss/model", "wm/kl_raw",
          "perf/updates_per_s", "perf/plan_ms")


@pytest.mark.parametrize("env", ["pendulum", "cartpole", "cube"])
def test_train_iteration_end_to_end(env):
    if env == "cube":
        envs = make_cube_env(3, 2, 8, 10.0)
        wm = world_model("rssm_discrete", "world_model.decoder.kind=onehot",
                         "world_model.decoder.onehot_groups=[[24,6],[4,12]]")
    else:
        envs = make_gym_env("Pendulum-v1" if env == "pendulum" else "CartPole-v1", 2, max_episode_steps=15)
        wm = world_model()
    agent = tiny_agent(envs, wm, action_repeat=2 if env == "pendulum" else 1)
    collector = Collector(envs, torch.device("cpu"), seed=0)
    metrics = agent.train_iteration(collector)
    assert agent.replay.episodes >= 3 and len(agent.replay) > 0
    assert set(LOSSES) <= set(metrics) and all(np.isfinite(v) for v in metrics.values())
    if env == "pendulum":  # action repeat 2: the first obs, then one step per held action (the last one cut)
        assert len(agent.replay) == (1 + 8) * agent.replay.episodes
    if env == "cartpole":
        assert agent.replay.data["is_terminal"][: len(agent.replay)].any()
    out = evaluate(agent, envs, 2)
    assert np.isfinite(out["eval/return_mean"])
    envs.close()


def test_checkpoint_keeps_the_replay_on_request():
    envs = make_gym_env("Pendulum-v1", 1, max_episode_steps=10)
    agent = tiny_agent(envs, save_replay=True)
    agent.train_iteration(Collector(envs, torch.device("cpu"), seed=0))
    buf = io.BytesIO()
    torch.save(agent.checkpoint_state(), buf)
    buf.seek(0)
    fresh = tiny_agent(envs, save_replay=True)
    fresh.load_checkpoint_state(torch.load(buf, weights_only=True))
    assert len(fresh.replay) == len(agent.replay) > 0 and fresh.replay.episodes == agent.replay.episodes
    assert "replay" not in tiny_agent(envs).checkpoint_state()


def test_config_errors():
    envs = make_gym_env("Pendulum-v1", 1)
    with pytest.raises(ConfigError, match="agent=planet does not fit world_model=none: valid are rssm_gaussian, "
                                          "rssm_discrete"):
        tiny_agent(envs, ["world_model=none"])
    with pytest.raises(Exception, match=r"Could not find 'agent/planner/cme'[\s\S]*cem\s+cem_fast"):
        composed_cfg("agent=planet", "agent/planner=cme")
    with pytest.raises(ConfigError, match="top_k=50 > candidates=10"):
        tiny_agent(envs, planner={"horizon": 3, "candidates": 10, "top_k": 50, "iterations": 2})
    with pytest.raises(ConfigError, match="overshooting_distance=0"):
        tiny_agent(envs, overshooting_distance=0)
    with pytest.raises(ConfigError, match="regular, free_bits"):
        tiny_agent(envs, world_model("rssm_gaussian", "world_model.kl.strategy=nope"))
    with pytest.raises(ConfigError, match="one-hot"):
        tiny_agent(envs, world_model("rssm_gaussian", "world_model.decoder.kind=onehot",
                                     "world_model.decoder.onehot_groups=[[1,3]]"))


def test_overshooting_trains():
    envs = make_gym_env("Pendulum-v1", 1, max_episode_steps=12)
    agent = tiny_agent(envs, overshooting_distance=3, overshooting_kl_beta=0.5)
    metrics = agent.train_iteration(Collector(envs, torch.device("cpu"), seed=0))
    assert np.isfinite(metrics["loss/kl"])


def test_cli_planet_pendulum(tmp_path):
    cpcrl("agent=planet", "env=pendulum", "env.num_envs=1", "env.max_episode_steps=20", "train.total_steps=80",
          "agent.planner=cem_fast", "agent.planner.candidates=16", "agent.planner.top_k=4",
          "agent.planner.iterations=2", "agent.seed_episodes=1", "agent.collect_interval=2",
          "agent.batch_size=4", "agent.seq_len=8", "world_model.deter=16", "world_model.hidden=16",
          "eval.episodes=1", "eval.num_envs=1", "logger=none", "agent.save_replay=true",
          f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, timeout=120)
    assert (tmp_path / "run" / "summary.json").exists()
    bad = cpcrl("agent=planet", "world_model=none", "logger=none", f"hydra.run.dir={tmp_path}/bad", cwd=tmp_path,
                check=False)
    assert bad.returncode == 2 and "rssm_gaussian" in bad.stderr + bad.stdout


def test_world_model_loss_halves_on_pendulum():
    """Pendulum: the one-step observation + reward loss halves in a few hundred updates (on fixed batches).
    That the planner then acts well in the real env is tests/test_learning.py's `planet_cartpole`."""
    torch.manual_seed(0)
    envs = make_gym_env("Pendulum-v1", 4, max_episode_steps=100)
    wm = world_model("rssm_gaussian", "world_model.deter=64", "world_model.hidden=64", "world_model.stoch=8",
                     "world_model.encoder.hidden=64", "world_model.decoder.hidden=64", "world_model.heads.hidden=64")
    planner = {"horizon": 12, "candidates": 100, "top_k": 10, "iterations": 4}
    agent = tiny_agent(envs, wm, seed_episodes=8, batch_size=16, seq_len=16, lr=3e-3, planner=planner,
                       action_repeat=2)
    collector = Collector(envs, torch.device("cpu"), seed=0)
    agent.collect(collector, 8, random=True)

    def one_step_loss():
        torch.manual_seed(123)
        agent.replay.rng = np.random.default_rng(123)
        _, m = agent.model_loss({k: v.float() if v.dtype != torch.bool else v
                                 for k, v in agent.replay.sample(64, 16).items()})
        return m["loss/reconstruction"].item() + m["loss/reward"].item()

    before = one_step_loss()
    agent.replay.rng = np.random.default_rng(0)
    for _ in range(300):
        agent.update()
    after = one_step_loss()
    assert after < 0.5 * before, (before, after)


def test_pixels_wrapper_and_conv_world_model():
    from cpcrl.envs.pixels import PixelObs
    env = PixelObs(gym.make("Pendulum-v1", render_mode="rgb_array"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 64, 64) and obs.dtype == np.uint8 and obs.max() > obs.min()
    env.close()
    space = gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)
    wm = world_model("rssm_gaussian", "world_model.encoder.depth=4", "world_model.decoder.depth=4")
    agent = tiny_agent(None, wm, space=(space, gym.spaces.Box(-1, 1, (1,), np.float32)), batch_size=2, seq_len=3)
    n = 4
    agent.replay.add_episode({"obs": np.random.randint(0, 255, (n, 3, 64, 64), np.uint8), "action": np.zeros((n, 1)),
                              "reward": np.zeros(n), "is_first": np.eye(n)[0].astype(bool),
                              "is_terminal": np.zeros(n, bool)})
    metrics = agent.update()
    assert np.isfinite(metrics["loss/reconstruction"]) and agent.replay.data["obs"].dtype == np.uint8
    action, _ = agent.act(torch.zeros(2, 3, 64, 64), None, torch.ones(2, dtype=torch.bool))
    assert action.shape == (2, 1)
