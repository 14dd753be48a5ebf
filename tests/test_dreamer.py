import math

import numpy as np
import pytest
import torch
from conftest import cpcrl

from cpcrl.collector import Collector, evaluate
from cpcrl.envs.factory import make_gym_env
from cpcrl.errors import ConfigError
from cpcrl.nets.rssm import map_state
from tests.conftest import composed_agent, composed_cfg

TINY = ("world_model.deter=32", "world_model.hidden=32", "world_model.encoder.layers=1", "world_model.stoch=8",
        "world_model.latents=4", "world_model.classes=4")
WORLD_MODEL = {"v1": "rssm_gaussian", "v3": "rssm_discrete"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_agent(envs, version="v3", wm=None, *overrides, **kw):
    torch.manual_seed(0)
    args = dict(batch_size=4, seq_len=8, horizon=5, prefill=40, train_ratio=32, seed=0)
    return composed_agent(envs.single_observation_space, envs.single_action_space, "agent=dreamer",
                          f"agent/dreamer_version={version}", f"world_model={wm or WORLD_MODEL[version]}", *TINY,
                          *overrides, **{**args, **kw})


def trained_batch(agent, envs):
    """Fill the replay and return the posterior of one sampled batch."""
    agent.train_iteration(Collector(envs, torch.device("cpu"), seed=0))
    batch = agent.replay.sample(agent.cfg.batch_size, agent.cfg.seq_len)
    _, post, _ = agent.model_loss(batch)
    return post


LOSSES = ("loss/model", "loss/reconstruction", "loss/reward", "loss/continue", "loss/kl", "loss/actor",
          "loss/critic", "dreamer/imagined_return", "dreamer/return_scale", "dreamer/entropy", "perf/updates_per_s")


@pytest.mark.parametrize("version", ["v1", "v3"])
@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_train_iteration_end_to_end(version, env):
    envs = make_gym_env(env, 2, max_episode_steps=20)
    agent = tiny_agent(envs, version)
    collector = Collector(envs, torch.device("cpu"), seed=0)
    metrics = {}
    while "loss/model" not in metrics:
        metrics = agent.train_iteration(collector)
    assert len(agent.replay) >= 40 and set(LOSSES) <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    assert agent.backprop == (version == "v1" or env == "Pendulum-v1")
    out = evaluate(agent, envs, 2)
    assert np.isfinite(out["eval/return_mean"])
    envs.close()


def test_discrete_actor_gets_a_policy_gradient_without_entropy():
    envs = make_gym_env("CartPole-v1", 2, max_episode_steps=20)
    agent = tiny_agent(envs, "v3", entropy=0.0)
    assert not agent.backprop  # REINFORCE
    post = trained_batch(agent, envs)
    actor_loss, _, _ = agent.behaviour_loss(post)
    agent.zero_grad(set_to_none=True)
    actor_loss.backward()
    grad = torch.cat([p.grad.flatten() for p in agent.actor.parameters()])
    assert grad.abs().sum() > 0
    assert all(p.grad is None for m in agent.world_model_modules for p in m.parameters())  # actor loss only
    assert all(p.grad is None for p in agent.critic.parameters())


def test_continuous_v1_actor_gets_gradient_through_the_dynamics():
    envs = make_gym_env("Pendulum-v1", 2, max_episode_steps=20)
    agent = tiny_agent(envs, "v1")
    assert agent.backprop and agent.cfg.entropy == 0.0
    post = trained_batch(agent, envs)
    start = map_state(lambda x: x.detach().flatten(0, 1), post)
    # a reward two steps ahead depends on the first action only through two prior (dynamics) steps
    actions = torch.zeros(agent.cfg.horizon, len(start["deter"]), agent.action_dim, requires_grad=True)
    states, _ = agent.rssm.imagine(actions, start)
    reward = agent.reward_head.predict(agent.rssm.features({k: v[1] for k, v in states.items()})).sum()
    (action_grad,) = torch.autograd.grad(reward, actions)
    assert action_grad[0].abs().sum() > 0 and action_grad[2:].abs().sum() == 0
    # v1's actor loss is -w * lambda-return (entropy 0): rewards and values read only imagined features, so
    # every bit of the actor's gradient arrives through the dynamics
    actor_loss, _, _ = agent.behaviour_loss(post)
    agent.zero_grad(set_to_none=True)
    actor_loss.backward()
    assert torch.cat([p.grad.flatten() for p in agent.actor.parameters()]).abs().sum() > 0
    assert all(p.grad is None for m in agent.world_model_modules for p in m.parameters())


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_imagination_starts_from_posterior_states_and_reads_no_observation(version, monkeypatch):
    envs = make_gym_env("CartPole-v1", 2, max_episode_steps=20)
    agent = tiny_agent(envs, version)
    post = trained_batch(agent, envs)

    def no_observations(*args, **kwargs):
        raise AssertionError("imagination read an observation")

    monkeypatch.setattr(agent.encoder, "forward", no_observations)
    monkeypatch.setattr(agent.rssm, "obs_step", no_observations)
    monkeypatch.setattr(agent.rssm.post_net, "forward", no_observations)
    monkeypatch.setattr(agent.replay, "sample", no_observations)
    start = map_state(lambda x: x.detach().flatten(0, 1), post)
    features, actions, actor_out = agent.imagine(start)
    assert features.shape == (agent.cfg.horizon + 1, agent.cfg.batch_size * agent.cfg.seq_len, agent.rssm.feature_dim)
    assert actions.shape == (agent.cfg.horizon, agent.cfg.batch_size * agent.cfg.seq_len, agent.action_dim)
    assert torch.equal(features[0], agent.rssm.features(start))
    if version == "v1":  # backprop through the dynamics: the actor is re-read from the features for the loss
        assert actor_out is None and features.requires_grad
    else:  # REINFORCE: no graph through the dynamics, and the kept actor pass is actor(sg(f_k)) with its grad
        assert not features.requires_grad and actor_out.requires_grad
        torch.testing.assert_close(actor_out, agent.actor.net(features[:-1]), rtol=0, atol=1e-6)
    agent.behaviour_loss(post)  # the whole actor-critic loss, too


def test_version_world_model_mismatch_is_a_config_error():
    envs = make_gym_env("CartPole-v1", 1)
    with pytest.raises(ConfigError, match="agent.version=v1 needs world_model=rssm_gaussian"):
        tiny_agent(envs, "v1", wm="rssm_discrete")
    with pytest.raises(ConfigError, match="agent.version=v3 needs world_model=rssm_discrete"):
        tiny_agent(envs, "v3", wm="rssm_gaussian")
    with pytest.raises(Exception, match=r"Could not find 'agent/dreamer_size/xl'[\s\S]*m\s+s\s+xs"):
        composed_cfg("agent=dreamer", "agent/dreamer_size=xl")
    with pytest.raises(ConfigError, match="agent.version='v2': valid are v1, v3"):
        composed_agent(envs.single_observation_space, envs.single_action_space, "agent=dreamer", "agent.version=v2")


def test_size_presets_and_version_defaults():
    envs = make_gym_env("CartPole-v1", 1)
    space = envs.single_observation_space, envs.single_action_space
    agent = composed_agent(*space, "agent=dreamer", "agent/dreamer_size=s")
    assert agent.rssm.deter_dim == 512 and agent.rssm.stoch_dim == 32 * 32
    assert agent.cfg.gamma == pytest.approx(1 - 1 / 333) and agent.cfg.entropy == 3e-4
    assert agent.slow_critic is not None and agent.return_norm.enabled
    v1 = tiny_agent(envs, "v1", actor_lr=1e-3)
    assert v1.cfg.gamma == 0.99 and v1.slow_critic is None and not v1.return_norm.enabled
    assert v1.optimizers["actor"].param_groups[0]["lr"] == 1e-3   # explicit wins
    assert (v1.optimizers["critic"].param_groups[0]["lr"] == 8e-5
            and v1.optimizers["model"].param_groups[0]["lr"] == 6e-4)
    # the CLI's short keys pick the same presets; a key given on the command line wins over the size preset
    cfg = composed_cfg("agent=dreamer", "agent/dreamer_size=m", "world_model.encoder.layers=1")
    assert cfg.world_model.deter == 1024 and cfg.world_model.heads.hidden == 640 and cfg.world_model.heads.layers == 1
    from cpcrl.app import _rewrite_args
    assert _rewrite_args(["agent.version=v1", "agent.size=null", "agent.planner=cem_fast"]) == [
        "agent/dreamer_version=v1", "~agent/dreamer_size", "agent/planner=cem_fast"]
    assert composed_cfg("agent=dreamer", "~agent/dreamer_size").world_model.deter == 200  # the world model's own


def test_cli_trains_dreamer(tmp_path):
    proc = cpcrl("agent=dreamer", "env=cartpole", "env.num_envs=2", "logger=none", "device=cpu", "device.threads=1",
                 "train.total_steps=300", "train.log_every=100", "eval.episodes=2", "eval.num_envs=2",
                 "eval.every=0", "agent.prefill=100", "agent.batch_size=4", "agent.seq_len=8", "agent.horizon=5",
                 "agent.train_ratio=64", cwd=tmp_path)
    assert "dreamer on cartpole" in proc.stdout
    bad = cpcrl("agent=dreamer", "env=cartpole", "agent.version=v1", "logger=none", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "agent.version=v1 needs world_model=rssm_gaussian" in bad.stderr + bad.stdout


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_bf16_autocast_update(version):
    envs = make_gym_env("Pendulum-v1" if version == "v1" else "CartPole-v1", 2, max_episode_steps=20)
    agent = tiny_agent(envs, version, precision="bf16")
    collector = Collector(envs, torch.device("cpu"), seed=0)
    metrics = {}
    while "loss/model" not in metrics:
        metrics = agent.train_iteration(collector)
    assert all(np.isfinite(v) for v in metrics.values())


def test_v3_nets_are_dreamerv3s_and_v1s_are_plain():
    """v3: every hidden Linear of every net (encoder, RSSM, decoder, reward, continue, actor, critic) is bias-free and
    followed by LayerNorm(eps 1e-3) -> SiLU, the GRU is the normalised cell; v1: no norm, ELU, nn.GRUCell."""
    from torch import nn

    from cpcrl.nets.rssm import LayerNormGRUCell
    envs = make_gym_env("CartPole-v1", 1)
    v3, v1 = tiny_agent(envs, "v3"), tiny_agent(envs, "v1")
    nets = ("encoder", "rssm", "decoder", "reward_head", "continue_head", "actor", "critic")
    hidden = 0
    for name in nets:
        for seq in (m for m in getattr(v3, name).modules() if isinstance(m, nn.Sequential)):
            layers = list(seq)
            for i, layer in enumerate(layers[:-1]):
                if isinstance(layer, nn.Linear):
                    hidden += 1
                    assert layer.bias is None and isinstance(layers[i + 1], nn.LayerNorm), (name, i)
                    assert layers[i + 1].eps == 1e-3 and isinstance(layers[i + 2], nn.SiLU), (name, i)
    assert hidden == 3 + 6  # the RSSM's input, prior, posterior; 1 each in the others (TINY: 1 layer)
    assert isinstance(v3.rssm.gru, LayerNormGRUCell) and v3.decoder.mse_scale == 1.0
    assert not any(isinstance(m, (nn.LayerNorm, nn.SiLU)) for name in nets for m in getattr(v1, name).modules())
    assert isinstance(v1.rssm.gru, nn.GRUCell) and v1.decoder.mse_scale == 0.5
    # Adam eps: the world model 1e-8 (DreamerV3 2023), actor and critic 1e-5; v1 1e-7 for all
    eps = {k: opt.param_groups[0]["eps"] for k, opt in v3.optimizers.items()}
    assert eps == {"model": 1e-8, "actor": 1e-5, "critic": 1e-5}
    assert {opt.param_groups[0]["eps"] for opt in v1.optimizers.values()} == {1e-7}
    # the same nets stack onto v1 (its Gaussian RSSM and heads), with symlog inputs
    v1_nets = tiny_agent(envs, "v1", None, "+agent/dreamer_nets=dreamerv3")
    assert isinstance(v1_nets.rssm.gru, LayerNormGRUCell) and v1_nets.symlog_obs and not v1.symlog_obs
    for name in nets:
        assert any(isinstance(m, nn.LayerNorm) for m in getattr(v1_nets, name).modules()), name
        assert any(isinstance(m, nn.SiLU) for m in getattr(v1_nets, name).modules()), name
    assert v1_nets.decoder.mse_scale == 0.5 and v1_nets.cfg.gamma == 0.99   # v1's loss and behaviour keys stay
    # one key turns a v3 norm off everywhere
    off = tiny_agent(envs, "v3", None, "world_model.norm=none")
    assert not any(isinstance(m, nn.LayerNorm) for name in nets if name != "rssm"
                   for m in getattr(off, name).modules())


def test_terminal_imagination_starts_weigh_zero_in_v3():
    from cpcrl.objectives.actor_critic import imagination_weights
    continues = torch.tensor([[9.0, 9.0], [0.5, 1.0], [1.0, 0.25], [1.0, 1.0]])   # [H+1, N], row 0 unused
    torch.testing.assert_close(imagination_weights(continues, 0.5),
                               torch.tensor([[1.0, 1.0], [0.25, 0.5], [0.125, 0.0625]]))   # v1: w_0 = 1
    start = torch.tensor([0.0, 1.0])   # 1 - is_terminal: the first start is terminal
    torch.testing.assert_close(imagination_weights(continues, 0.5, start),
                               torch.tensor([[0.0, 1.0], [0.0, 0.5], [0.0, 0.0625]]))
    # in the agent: a batch whose every state is terminal trains neither actor nor critic (v3), but does in v1
    envs = make_gym_env("CartPole-v1", 2)
    for version, zero in (("v3", True), ("v1", False)):
        agent = tiny_agent(envs, version)
        post = trained_batch(agent, envs)
        terminal = torch.ones(post["deter"].shape[:2])
        actor_loss, critic_loss, _ = agent.behaviour_loss(post, terminal)
        assert (actor_loss.item() == 0.0 and critic_loss.item() == 0.0) == zero, version


@pytest.mark.parametrize("eval_latents", ["mode", "sample"])
def test_greedy_act_takes_the_latent_mode_or_a_sample(eval_latents):
    """Greedy acting (explore=False) filters with the posterior's mode by default, so repeating it from the same
    belief gives the same latent; with `agent.eval_latents=sample` it draws the latent as training does (DreamerV3's
    eval), so 8 envs x 16 latents of a fresh posterior almost surely differ between two draws."""
    envs = make_gym_env("CartPole-v1", 8)
    agent = tiny_agent(envs, "v3", None, eval_latents=eval_latents)
    obs = torch.as_tensor(envs.reset(seed=0)[0])
    first = torch.ones(8, dtype=torch.bool)
    latents = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        _, state = agent.act(obs, None, first, explore=False)
        latents.append(state["latent"]["stoch"])
    envs.close()
    same = torch.equal(latents[0], latents[1])
    assert same == (eval_latents == "mode")


@pytest.mark.parametrize("init_std,mean_scale,min_std", [(5.0, 5.0, 1e-4), (1.0, 2.0, 0.1)])
def test_v1_actor_init_std_mean_scale_and_min_std(init_std, mean_scale, min_std):
    """v1 tanh-normal: std = softplus(x + softplus^-1(init_std)) + min_std, so a zero net output gives init_std +
    min_std and no output goes under min_std; the pre-tanh mean is s tanh(m / s), bounded by the mean scale s."""
    envs = make_gym_env("Pendulum-v1", 1)
    agent = tiny_agent(envs, "v1", actor_init_std=init_std, actor_mean_scale=mean_scale, actor_min_std=min_std)
    zero = agent.actor.policy(torch.zeros(3, 2))
    assert torch.allclose(zero.base.stddev, torch.full((3, 1), init_std + min_std))
    narrow = agent.actor.policy(torch.tensor([[0.0, -60.0]]))
    assert narrow.base.stddev.item() == pytest.approx(min_std, rel=1e-3)
    assert torch.allclose(zero.base.mean, torch.zeros(3, 1))
    big = agent.actor.policy(torch.tensor([[50.0, 0.0], [-50.0, 0.0], [1.0, 0.0]]))
    m = big.base.mean.squeeze(-1)
    assert m[0] == pytest.approx(mean_scale, rel=1e-4) and m[1] == pytest.approx(-mean_scale, rel=1e-4)
    assert m[2] == pytest.approx(mean_scale * math.tanh(1.0 / mean_scale))
    envs.close()


def test_symlog_inputs_follow_the_version_key():
    """`agent.symlog_obs`: v3 symlogs vector observations, v1 reads them raw unless the key turns it on."""
    envs = make_gym_env("Pendulum-v1", 1)
    obs = torch.tensor([[0.5, -1.0, 8.0]])
    symlogged = torch.sign(obs) * torch.log1p(obs.abs())   # by hand: [0.405, -0.693, 2.197]
    v3 = tiny_agent(envs, "v3", wm="rssm_discrete")
    torch.testing.assert_close(v3.preprocess(obs), symlogged)
    assert torch.equal(tiny_agent(envs, "v1").preprocess(obs), obs)
    torch.testing.assert_close(tiny_agent(envs, "v1", symlog_obs=True).preprocess(obs), symlogged)
    envs.close()


@pytest.mark.parametrize("key", ["actor_init_std", "actor_mean_scale", "actor_min_std"])
def test_v1_actor_keys_are_refused_in_v3(key):
    """v3's continuous actor has its own std range: a v1 actor key set for v3 is an error, not silently ignored."""
    envs = make_gym_env("Pendulum-v1", 1)
    with pytest.raises(ConfigError, match=rf"agent.{key}=0.5 applies to agent.version=v1 only"):
        tiny_agent(envs, "v3", **{key: 0.5})
    assert getattr(tiny_agent(envs, "v1", **{key: 0.5}).cfg, key) == 0.5
    envs.close()
