"""Recurrent PPO: bootstrapping, exact truncated-BPTT replay, action masks, bad input (learning: test_learning.py)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from cpcrl.agents.ppo_lstm import next_values_from
from cpcrl.collector import Collector
from cpcrl.envs.factory import make_gym_env
from cpcrl.envs.wrappers import DenseFinalObs
from cpcrl.errors import ConfigError
from cpcrl.objectives.returns import gae
from tests.conftest import composed_agent

CPU = torch.device("cpu")
SMALL = {"name": "lstm", "hidden": 32, "lstm_hidden": 16, "num_layers": 1}


class MaskedEnv(gym.Env):
    """4 actions, a random subset (never empty) legal at each step via info["action_mask"]; reward 1 for
    action 0 when legal. Episodes last 6 steps (terminated) so resets happen inside rollouts."""

    def __init__(self, width=4):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.width = width

    def _mask(self):
        m = self.np_random.random(self.width) < 0.5
        m[self.np_random.integers(self.width)] = True
        self.mask = m
        return m

    def _obs(self):
        return np.array([self.t / 6, float(self.mask[0]), float(self.mask[1 % self.width])], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        m = self._mask()
        return self._obs(), {"action_mask": m}

    def step(self, action):
        if not self.mask[int(action)]:
            raise AssertionError(f"masked action {action} taken (mask {self.mask})")
        reward = float(action == 0)
        self.t += 1
        m = self._mask()
        return self._obs(), reward, self.t >= 6, False, {"action_mask": m}


def masked_envs(n=4, width=4):
    envs = gym.vector.SyncVectorEnv([lambda: MaskedEnv(width) for _ in range(n)],
                                    autoreset_mode=AutoresetMode.SAME_STEP)
    return DenseFinalObs(envs)


def test_next_values_termination_vs_truncation_hand_case():
    # one env, T=4: step 1 terminates, step 2 is truncated (final obs value 7), step 3 runs on (last value 9)
    values = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    dones = torch.tensor([[0], [1], [1], [0]], dtype=torch.bool)
    truncated = torch.tensor([[0], [0], [1], [0]], dtype=torch.bool)
    terminated = dones & ~truncated
    final_values = torch.tensor([[0.0], [0.0], [7.0], [0.0]])
    nv = next_values_from(values, torch.tensor([9.0]), dones, truncated, final_values)
    assert nv.flatten().tolist() == [2.0, 0.0, 7.0, 9.0]
    rewards = torch.ones(4, 1)
    adv, ret = gae(rewards, values, nv, terminated, dones, gamma=0.5, lam=1.0)
    # returns: t3 = 1 + .5*9 = 5.5; t2 (truncated) = 1 + .5*7 = 4.5; t1 (terminated) = 1; t0 = 1 + .5*1 = 1.5
    assert ret.flatten().tolist() == [1.5, 1.0, 4.5, 5.5]


def _agent(envs, world_model=None, **kw):
    torch.manual_seed(0)
    wm = world_model or SMALL
    args = dict(num_steps=16, truncation_length=4, num_minibatches=2, total_steps=10_000)
    args.update(kw)
    overrides = [f"world_model={wm['name']}"] + [f"world_model.{k}={v}" for k, v in wm.items() if k != "name"]
    return composed_agent(envs.single_observation_space, envs.single_action_space, "agent=ppo_lstm", *overrides,
                          **args)


@pytest.mark.parametrize("env_id,observe,separate", [("CartPole-v1", [0, 2], False), ("Pendulum-v1", [0, 1], False),
                                                     ("Pendulum-v1", [0, 1], True)])
def test_chunks_from_stored_states_replay_rollout_exactly(env_id, observe, separate):
    """Before any update, the truncated-BPTT chunks restarted from stored states give the rollout's log-probs
    and values. Short episodes (max 10 steps) put resets inside chunks; the second rollout starts from a
    carried, non-zero state. `separate`: actor and critic LSTMs, their states stored side by side."""
    envs = make_gym_env(env_id, 4, observe=observe, max_episode_steps=10)
    agent = _agent(envs, separate_critic_lstm=separate)
    assert batch_width(agent) == (2 if separate else 1) * SMALL["lstm_hidden"]
    col = Collector(envs, CPU, seed=0)
    agent.collect(col)  # first rollout: the next one starts from a carried state
    batch = agent.collect(col)
    assert batch["is_first"][1:].any() and batch["h"][0].abs().sum() > 0
    ch = agent.chunks(batch)
    with torch.no_grad():
        logp, _, value = agent.evaluate_chunks(ch, torch.arange(ch["obs"].shape[1]))
    torch.testing.assert_close(logp, ch["logp"], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(value, ch["values"], atol=1e-5, rtol=1e-6)
    # Without the stored states (zeros) the replay differs: the check can fail
    zero = {**ch, "h": torch.zeros_like(ch["h"]), "c": torch.zeros_like(ch["c"])}
    with torch.no_grad():
        _, _, v0 = agent.evaluate_chunks(zero, torch.arange(ch["obs"].shape[1]))
    assert (v0 - ch["values"]).abs().max() > 1e-4
    envs.close()


def batch_width(agent):
    return agent.initial_state(1)[0].shape[-1]


def test_separate_critic_lstm_keeps_policy_and_value_gradients_apart():
    envs = make_gym_env("Pendulum-v1", 4, observe=[0, 1], max_episode_steps=10)
    agent = _agent(envs, separate_critic_lstm=True)
    ch = agent.chunks(agent.collect(Collector(envs, CPU, seed=0)))
    logp, _, value = agent.evaluate_chunks(ch, torch.arange(ch["obs"].shape[1]))

    def grad_sums(loss, module):  # through the concatenated features an unread half gets exact zeros
        grads = torch.autograd.grad(loss, list(module.parameters()), retain_graph=True, allow_unused=True)
        return [0.0 if g is None else g.abs().sum().item() for g in grads]
    assert not any(grad_sums(logp.sum(), agent.belief.critic))  # the policy never reads the critic's memory
    assert not any(grad_sums(value.sum(), agent.belief.actor))  # nor the value the actor's
    assert all(grad_sums(logp.sum(), agent.belief.actor)) and all(grad_sums(value.sum(), agent.belief.critic))
    envs.close()


class RecordingCollector(Collector):
    def step(self, action):
        step = super().step(action)
        self.steps.append(step)
        return step


def test_truncation_bootstraps_from_final_obs_with_post_step_state():
    """At a truncated step A_t = r_t + gamma V(final_obs | post-step state) - V_t (lam recursion stops there)."""
    envs = make_gym_env("Pendulum-v1", 2, observe=[0, 1], max_episode_steps=5)
    agent = _agent(envs, num_steps=8, truncation_length=4, num_minibatches=1, normalize_obs=False)
    col = RecordingCollector(envs, CPU, seed=0)
    col.steps = []
    batch = agent.collect(col)
    t = 4
    assert batch["is_first"][t + 1].all() and col.steps[t].truncated.all()
    with torch.no_grad():
        post = agent.belief.step(batch["obs"][t], (batch["h"][t], batch["c"][t]), batch["is_first"][t])[1]
        torch.testing.assert_close(post[0], batch["h"][t + 1])  # stored state = pre-reset post-step state
        final = torch.from_numpy(col.steps[t].final_obs)
        v_final = agent.value(agent.belief.step(final, post, torch.zeros(2, dtype=torch.bool))[0])
        v_reset_obs = agent.value(agent.belief.step(final, agent.initial_state(2), torch.ones(2, dtype=torch.bool))[0])
    want = batch["rewards"][t] + agent.cfg.gamma * v_final - batch["values"][t]
    torch.testing.assert_close(batch["advantages"][t], want, atol=1e-5, rtol=1e-6)
    assert (v_final - v_reset_obs).abs().max() > 1e-5  # the post-step state matters: the check can fail
    # Pendulum never terminates and actions go to the env clipped, stored unclipped
    assert not (batch["is_first"][1:5]).any()
    sent = np.stack([s.action for s in col.steps])
    assert np.abs(sent).max() <= 1.0
    np.testing.assert_allclose(sent, batch["actions"].clamp(-1, 1).numpy())
    envs.close()


def test_masked_actions_never_sampled_and_masks_used_in_update():
    envs = masked_envs()
    agent = _agent(envs, num_steps=12, truncation_length=4, num_minibatches=2, update_epochs=2)
    col = Collector(envs, CPU, seed=0)
    for _ in range(5):  # the env itself asserts on every masked action
        metrics = agent.train_iteration(col)
        assert np.isfinite(metrics["loss/policy"])
    batch = agent.collect(col)
    assert batch["masks"] is not None and not batch["masks"].all()
    taken = batch["masks"].gather(-1, batch["actions"].unsqueeze(-1))
    assert taken.all()
    # greedy and sampled `act` also respect the mask
    obs, info = envs.reset(seed=1)
    mask = torch.from_numpy(info["action_mask"])
    for explore in (True, False):
        a, _ = agent.act(torch.from_numpy(obs), agent.initial_state(4), torch.ones(4, dtype=torch.bool), mask, explore)
        assert mask.gather(1, a.unsqueeze(1)).all()
    envs.close()


def test_mask_width_mismatch_is_a_config_error():
    envs = masked_envs(width=3)
    agent = _agent(envs, num_steps=4, truncation_length=4, num_minibatches=1)
    with pytest.raises(ConfigError, match="action mask has width 3"):
        agent.train_iteration(Collector(envs, CPU, seed=0))
    envs.close()


@pytest.mark.parametrize("kw,match", [
    ({"num_steps": 16, "truncation_length": 32}, "valid are 1, 2, 4, 8, 16"),
    ({"num_steps": 12, "truncation_length": 8}, "must divide agent.num_steps=12"),
    ({"gamma": 1.5}, "agent.gamma"),
])
def test_bad_hparams_are_config_errors(kw, match):
    envs = make_gym_env("CartPole-v1", 2)
    with pytest.raises(ConfigError, match=match):
        _agent(envs, **kw)
    envs.close()


def test_feed_forward_variant_and_too_many_minibatches():
    envs = make_gym_env("CartPole-v1", 2, observe=[0, 2])
    ff = _agent(envs, world_model={"name": "none"})
    assert not ff.recurrent and ff.initial_state(2) is None
    assert np.isfinite(ff.train_iteration(Collector(envs, CPU, seed=0))["loss/value"])
    assert not _agent(envs, recurrent=False).recurrent
    bad = _agent(envs, num_steps=4, truncation_length=4, num_minibatches=3)
    with pytest.raises(ConfigError, match="num_minibatches=3"):
        bad.train_iteration(Collector(envs, CPU, seed=0))
    envs.close()


def test_gsde_noise_is_held_for_sample_freq_steps_and_matches_the_trained_gaussian():
    envs = make_gym_env("Pendulum-v1", 2, observe=[0, 1])
    agent = _agent(envs, sde_sample_freq=4, init_log_std=-1.0)
    assert agent.log_std.shape == (8, 1)  # one log-std per (actor hidden unit, action dim)
    feats = torch.randn(2, agent.belief.feature_dim)
    with torch.no_grad():
        dist = agent.dist(feats)
        actions = torch.stack([agent.sample(dist, t) for t in range(8)])  # [8, B, 1]
    assert torch.equal(actions[0], actions[3]) and torch.equal(actions[4], actions[7])  # held for 4 steps
    assert not torch.equal(actions[3], actions[4])                                      # then redrawn
    # over many draws of theta, an action is distributed as the Gaussian whose log-prob PPO trains
    feats = feats[:1].expand(40_000, -1)
    with torch.no_grad():
        dist = agent.dist(feats)
        draws = agent.sample(dist, 0)
    torch.testing.assert_close(draws.mean(0), dist.mean[0], atol=0.02, rtol=0)
    torch.testing.assert_close(draws.std(0), dist.stddev[0], atol=0.02, rtol=0.02)
    envs.close()


def test_gsde_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="agent.sde_sample_freq=0: must be a positive integer"):
        _agent(make_gym_env("Pendulum-v1", 1), sde_sample_freq=0)
    with pytest.raises(ConfigError, match="needs a continuous"):
        _agent(make_gym_env("CartPole-v1", 1), sde_sample_freq=4)
