"""Small wrappers that give every env the same contract (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorWrapper

from cpcrl.checks import positive_int
from cpcrl.envs.spaces import EncodedBox, encode, encode_space, merge_parts, onehots


class ObserveIndices(gym.ObservationWrapper):
    """Keep only some entries of a vector observation: the POMDP versions (e.g. CartPole without velocities).

    `info["true_state"]` (float32 [D], [N, D] once vectorised) is the unmasked observation, at reset and at every
    step: the full physical state a belief must infer (CartPole's x, x_dot, theta, theta_dot; Pendulum's cos, sin,
    theta_dot), the probes' target (`cpcrl.probes`)."""

    def __init__(self, env: gym.Env, indices):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError("env.observe needs a flat Box observation, "
                             f"{env.spec.id if env.spec else env} has {space}")
        bad = [i for i in indices if not 0 <= i < space.shape[0]]
        if bad:
            raise ValueError(f"env.observe indices {bad} out of range: valid are 0..{space.shape[0] - 1}")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.observation_space = gym.spaces.Box(space.low[self.indices], space.high[self.indices], dtype=space.dtype)

    def observation(self, obs):
        return obs[self.indices]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self.observation(obs), {**info, "true_state": np.asarray(obs, dtype=np.float32)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return (self.observation(obs), reward, terminated, truncated,
                {**info, "true_state": np.asarray(obs, dtype=np.float32)})


class EncodeObservations(gym.ObservationWrapper):
    """Discrete, MultiDiscrete, MultiBinary and Tuple/Dict observations as one flat float32 vector of one-hots and
    Box values (`cpcrl.envs.spaces`); the space is an `EncodedBox` whose `parts` tell decoders the layout."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.source = env.observation_space
        self.observation_space = encode_space(self.source)

    def observation(self, obs):
        return encode(self.source, obs)


class DenseFinalObs(VectorWrapper):
    """Same-step autoreset with `info["final_obs"]` as one dense array.

    gymnasium stores final observations as an object array with None for running envs; bootstrapping
    on truncation wants a plain [N, ...] array, so running envs get their current observation there.
    Where the env gives `info["true_state"]` (that of the returned obs: a new episode's first after an
    autoreset), `info["final_true_state"]` is made dense the same way: that of `final_obs`.
    """

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        final = np.array(obs, copy=True)
        done = np.logical_or(terminated, truncated)
        if "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = info["final_obs"][i]
        info["final_obs"], info["_final_obs"] = final, done
        last = info.get("final_info", {})
        if "true_state" in info:
            final_state = np.array(info["true_state"], copy=True)
            if "true_state" in last:
                final_state[last["_true_state"]] = last["true_state"][last["_true_state"]]
            info["final_true_state"] = final_state
        if "env_steps" in last:  # ActionRepeat: a finished env's count is in the info of its last step
            steps = np.array(info.get("env_steps", np.zeros(len(done), dtype=np.int64)), dtype=np.int64)
            steps[last["_env_steps"]] = last["env_steps"][last["_env_steps"]]
            info["env_steps"] = steps
        return obs, reward.astype(np.float32), terminated, truncated, info


class UnitActions(gym.ActionWrapper):
    """Agents act in [-1, 1]^d; this clips and maps to the env's own bounds (gymnasium's ClipAction
    widens the space to +-inf, which would hide the bounds from the agent)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.action_space
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise ValueError(f"continuous actions need finite bounds, {env.spec.id if env.spec else env} has {space}")
        self.low, self.high = space.low.astype(np.float32), space.high.astype(np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)

    def action(self, action):
        unit = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        return self.low + (unit + 1.0) * 0.5 * (self.high - self.low)


class PrevActionObs(gym.Wrapper):
    """Append the agent's previous action to a flat observation: the action as given (Box, in the agent's [-1, 1])
    or one-hot (Discrete; one per factor for MultiDiscrete), zeros right after a reset. A common input of recurrent
    agents on POMDPs (e.g. Ni et al. 2022, "Recurrent model-free RL can be a strong baseline for many POMDPs"): the
    belief then sees what pushed the system, not only where it went."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space, act = env.observation_space, env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError("env.prev_action needs a flat Box observation, "
                             f"{env.spec.id if env.spec else env} has {space}")
        if isinstance(act, gym.spaces.Discrete):
            self.width, low, high = int(act.n), np.zeros(int(act.n)), np.ones(int(act.n))
        elif isinstance(act, gym.spaces.MultiDiscrete):  # one one-hot per factor
            self.nvec = act.nvec.reshape(-1)
            self.width = int(self.nvec.sum())
            low, high = np.zeros(self.width), np.ones(self.width)
        else:
            self.width, low, high = int(np.prod(act.shape)), act.low.reshape(-1), act.high.reshape(-1)
        low, high = (np.concatenate([space.low, low]).astype(space.dtype),
                     np.concatenate([space.high, high]).astype(space.dtype))
        if isinstance(space, EncodedBox):  # the layout grows by the action: a one-hot, or real values
            if isinstance(act, gym.spaces.Discrete):
                part = [(1, self.width)]
            elif isinstance(act, gym.spaces.MultiDiscrete):
                part = [(1, int(k)) for k in self.nvec]
            else:
                part = [(self.width, 0)]
            self.observation_space = EncodedBox(low, high, merge_parts([*space.parts, *part]), space.source)
        else:
            self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)

    def _with(self, obs, action):
        extra = np.zeros(self.width, dtype=self.observation_space.dtype)
        if action is not None:
            if isinstance(self.action_space, gym.spaces.Discrete):
                extra[int(action)] = 1.0
            elif isinstance(self.action_space, gym.spaces.MultiDiscrete):
                extra[:] = onehots(np.asarray(action).reshape(-1), self.nvec)
            else:
                extra[:] = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), self.action_space.low.reshape(-1),
                                   self.action_space.high.reshape(-1))
        return np.concatenate([obs, extra]).astype(self.observation_space.dtype, copy=False)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._with(obs, None), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._with(obs, action), reward, terminated, truncated, info


class ActionRepeat(gym.Wrapper):
    """Hold each action for `repeat` env steps (fewer if the episode ends first), summing the rewards: the control
    rate of PlaNet/Dreamer-style benchmarks. `info["env_steps"]` says how many env steps the call took, so env
    steps, not decisions, are what training budgets count."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = positive_int("env.action_repeat", repeat)

    def step(self, action):
        total = 0.0
        for k in range(1, self.repeat + 1):  # noqa: B007 -- k is read after the loop (env_steps)
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, {**info, "env_steps": k}
