"""POPGym's hidden state in `info`, for the belief probes (`cpcrl.probes`).

POPGym tasks (Morad et al., ICLR 2023) keep what an agent must remember in the task object itself; the wrapper
here reads it at reset and after every step and adds it to `info`, the contract of `cpcrl.envs.wrappers`
(`info["true_state"]` float32 [D], `info["true_class"]` int64 [C]; [N, D] / [N, C] once vectorised), always that of
the observation just returned:

* RepeatPrevious (Easy / Medium / Hard): `true_class` [1] in 0..4, the suit the next action is scored against: the
  card dealt k - 1 steps before the current one (`deck["player"][-k]`, the current card being the last), and 4 while
  fewer than k cards are out (no action is scored yet);
* RepeatFirst: `true_class` [1] in 0..3, the suit of the episode's first card, the answer at every step;
* CountRecall: `true_state` [V], how often each of the V card values (colours / suits / ranks) has been dealt, the
  current card included; `true_class` [1], that count for the value queried now, the answer the next action is
  scored against;
* PositionOnlyCartPole, NoisyPositionOnlyCartPole, VelocityOnlyCartPole: `true_state` [4], the physical state x,
  x_dot, theta, theta_dot; PositionOnlyPendulum, NoisyPositionOnlyPendulum: `true_state` [3], cos theta, sin theta,
  theta_dot.

(RepeatPrevious's docstring says "the card from k timesteps ago"; its reward reads `deck["player"][-k]` with the
current card at -1, i.e. k - 1 steps ago; the target follows the reward.) Other tasks have no target here.

`hidden_state_env_id(task)` is how the factory applies it: the id of a copy of popgym's `popgym-<task>-v0` spec
whose env is wrapped, so the wrapper is the innermost one (it reads only the task object and adds to `info`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from popgym.envs.count_recall import CountRecall
from popgym.envs.position_only_cartpole import PositionOnlyCartPole
from popgym.envs.position_only_pendulum import PositionOnlyPendulum
from popgym.envs.repeat_first import RepeatFirst
from popgym.envs.repeat_previous import RepeatPrevious
from popgym.envs.velocity_only_cartpole import VelocityOnlyCartPole

Target = Callable[[gym.Env], dict[str, np.ndarray]]


def repeat_previous_target(env: RepeatPrevious) -> dict[str, np.ndarray]:
    hand = env.deck["player"]
    not_due = env.action_space.n  # one class past the suits
    due = int(env.deck.suits_idx[hand[-env.k]]) if len(hand) >= env.k else not_due
    return {"true_class": np.array([due], dtype=np.int64)}


def repeat_first_target(env: RepeatFirst) -> dict[str, np.ndarray]:
    return {"true_class": np.array([int(env.card)], dtype=np.int64)}


def count_recall_target(env: CountRecall) -> dict[str, np.ndarray]:
    return {"true_state": env.counts.astype(np.float32),  # a copy: the env counts on in place
            "true_class": np.array([int(env.counts[env.query])], dtype=np.int64)}


def physical_state_target(env: gym.Env) -> dict[str, np.ndarray]:
    return {"true_state": np.array(env.get_state(), dtype=np.float32)}


# The first base class a task is an instance of picks its target (the Noisy* tasks subclass the PositionOnly* ones).
TARGETS: tuple[tuple[type, Target], ...] = (
    (RepeatPrevious, repeat_previous_target), (RepeatFirst, repeat_first_target),
    (CountRecall, count_recall_target), (PositionOnlyCartPole, physical_state_target),
    (VelocityOnlyCartPole, physical_state_target), (PositionOnlyPendulum, physical_state_target))


def target_of(task_class: type) -> Target | None:
    """The target function of a POPGym task class, None for a task without one."""
    return next((fn for base, fn in TARGETS if issubclass(task_class, base)), None)


class PopgymHiddenState(gym.Wrapper):
    """Adds the task's hidden state (the module docstring's list) to `info` at reset and after every step."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.target = target_of(type(env.unwrapped))
        if self.target is None:
            raise ValueError(f"{type(env.unwrapped).__name__} has no hidden-state target; tasks with one: "
                             + ", ".join(base.__name__ for base, _ in TARGETS))

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, **self.target(self.env.unwrapped)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, **self.target(self.env.unwrapped)}


def _make_wrapped(entry_point: str, **kwargs) -> gym.Env:
    return PopgymHiddenState(load_env_creator(entry_point)(**kwargs))


def hidden_state_env_id(task: str) -> str:
    """The gymnasium id to make POPGym's `task` with its hidden state in `info`: `cpcrl/popgym-<task>-v0`, popgym's
    own spec (limits, kwargs) with the env wrapped, registered on the first call; popgym's own id for a task without
    a target."""
    spec = gym.spec(f"popgym-{task}-v0")
    if target_of(load_env_creator(spec.entry_point)) is None:
        return spec.id
    wrapped = f"cpcrl/popgym-{task}-v0"
    if wrapped not in gym.registry:
        gym.register(wrapped, entry_point=partial(_make_wrapped, spec.entry_point),
                     reward_threshold=spec.reward_threshold, nondeterministic=spec.nondeterministic,
                     max_episode_steps=spec.max_episode_steps, order_enforce=spec.order_enforce,
                     disable_env_checker=spec.disable_env_checker, kwargs=dict(spec.kwargs))
    return wrapped
