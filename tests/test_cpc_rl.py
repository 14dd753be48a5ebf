"""CPC+RL: gradient flow of the two losses into the shared belief, configuration checks, the T-maze."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from cpcrl.collector import Collector
from cpcrl.envs.factory import make_gym_env
from cpcrl.envs.tmaze import TMazeEnv
from cpcrl.errors import ConfigError
from cpcrl.train import build_agent, make_env
from tests.conftest import composed_agent


def agent_and_chunks(*overrides):
    with initialize_config_module(config_module="cpcrl.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["agent=cpc_rl", "env=cartpole_pomdp", "env.num_envs=4",
                                                       "agent.num_steps=16", *overrides])
    torch.manual_seed(0)
    envs = make_env(cfg.env)
    agent = build_agent(cfg, envs, torch.device("cpu"))
    collector = Collector(envs, torch.device("cpu"), seed=0)
    ch = agent.chunks(agent.collect(collector))
    return agent, ch, torch.arange(ch["obs"].shape[1])


def grads(module):
    return [p.grad for p in module.parameters()]


def test_cpc_alone_reaches_encoder_and_lstm():
    agent, ch, idx = agent_and_chunks()
    terms = agent.losses(ch, idx)
    agent.zero_grad(set_to_none=True)
    terms["cpc"].backward()  # the RL loss zeroed: only CPC
    for module in (agent.belief.encoder, agent.belief.lstm, agent.cpc_head):
        assert all(g is not None and g.abs().sum() > 0 for g in grads(module)), module
    assert all(g is None for g in grads(agent.actor)) and all(g is None for g in grads(agent.critic))


def test_weight_zero_leaves_the_projector_without_gradient():
    agent, ch, idx = agent_and_chunks("agent.cpc.weight=0")
    terms = agent.losses(ch, idx)
    agent.zero_grad(set_to_none=True)
    terms["total"].backward()
    assert all(g is None for g in grads(agent.cpc_head))
    assert all(g is not None for g in grads(agent.belief.lstm))
    assert "cpc/acc_k4" in terms and terms["cpc"].item() > 0  # still measured


def test_total_is_rl_plus_weighted_cpc():
    agent, ch, idx = agent_and_chunks("agent.cpc.weight=0.5")
    torch.manual_seed(1)
    terms = agent.losses(ch, idx)
    rl = agent.rl_losses(ch, idx, agent.forward_chunks(ch, idx)[1], agent.cfg.clip_coef)["total"]
    assert terms["total"].item() == pytest.approx(rl.item() + 0.5 * terms["cpc"].item(), rel=1e-5)


def test_train_iteration_logs_cpc_metrics_for_both_rl_losses():
    for extra in ([], ["agent.rl_loss=a2c", "agent.update_epochs=1", "agent.cpc.projection=shared",
                       "agent.cpc.negatives=batch_time", "agent.cpc.action_conditioned=true"]):
        with initialize_config_module(config_module="cpcrl.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=["agent=cpc_rl", "env=cartpole_pomdp", "env.num_envs=4",
                                                           "agent.num_steps=16", *extra])
        envs = make_env(cfg.env)
        agent = build_agent(cfg, envs, torch.device("cpu"))
        metrics = agent.train_iteration(Collector(envs, torch.device("cpu"), seed=0))
        assert {"loss/cpc", "loss/policy", "loss/value", "cpc/acc_k1", "cpc/acc_k4"} <= set(metrics)
        assert all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("override,message", [
    ("agent.cpc.horizon=8", r"agent.cpc.horizon=8: must be in 1..7"),
    ("agent.cpc.negatives=all", "valid are batch, batch_time"),
    ("agent.cpc.anchors=first", "^agent.cpc.anchors='first': valid are all, common$"),
    ("agent.cpc.projection=both", "valid are per_horizon, shared"),
    ("agent.rl_loss=a2c", "set agent.update_epochs=1"),
    ("+agent.cpc.horizn=3", "agent.cpc.horizn: no such key in agent.cpc; valid are weight, horizon,"),
])
def test_bad_cpc_settings(override, message):
    with pytest.raises(ConfigError, match=message):
        agent_and_chunks(override)


def test_tmaze_rewards_only_the_remembered_turn():
    env = TMazeEnv(length=3)
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        cue = obs[0]
        assert cue in (1.0, -1.0)
        for _ in range(3):
            obs, r, term, trunc, _ = env.step(0)
            assert obs[0] == 0.0 and not term  # the cue is gone: only memory has it
        assert obs[1] == 1.0  # at the junction
        _, r, term, _, _ = env.step(1 if cue > 0 else 2)
        assert term and r == pytest.approx(1.0 - 0.01)  # the return adds 3 more step costs: 1 - 4 * 0.01
        env.reset(seed=seed)
        for _ in range(3):
            env.step(0)
        _, r, term, _, _ = env.step(2 if cue > 0 else 1)
        assert term and r == pytest.approx(-1.0 - 0.01)
    _, _, _, trunc, _ = [env.reset(seed=0), *[env.step(1) for _ in range(8)]][-1]
    assert trunc  # turning in the corridor forever ends by truncation


def test_separate_critic_lstm_is_rejected_for_one_shared_belief():
    envs = make_gym_env("CartPole-v1", 2)
    with pytest.raises(ConfigError, match="agent.separate_critic_lstm must be false"):
        composed_agent(envs.single_observation_space, envs.single_action_space, "agent=cpc_rl",
                       "agent.separate_critic_lstm=true")
