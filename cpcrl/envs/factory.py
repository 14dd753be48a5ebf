"""Config -> vector env. Every env returned here follows one contract:

* `reset(seed) -> obs, info`, `step(actions) -> obs, reward, terminated, truncated, info`, batched numpy;
* same-step autoreset: a finished env's returned obs already starts its next episode, and
  `info["final_obs"]` (dense, [N, ...]) holds the last obs of the finished one, for bootstrapping;
* continuous actions live in [-1, 1] (rescaled here), so agents never see env-specific bounds;
* optional `info["action_mask"]` (bool [N, A]) and `info["solved"]` (bool [N]).
"""

from __future__ import annotations

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from cpcrl.checks import choice, positive_int
from cpcrl.envs.cube2x2 import make_vector_env as make_cube_env  # noqa: F401  (the cube's own factory)
from cpcrl.envs.wrappers import ActionRepeat, DenseFinalObs, ObserveIndices, PrevActionObs, UnitActions


def make_gym_env(id: str, num_envs: int, vectorization: str = "sync", observe=None,
                 max_episode_steps: int | None = None, kwargs: dict | None = None, pixels: bool = False,
                 prev_action: bool = False, action_repeat: int = 1, name: str | None = None) -> gym.vector.VectorEnv:
    positive_int("env.num_envs", num_envs)
    choice("env.vectorization", vectorization, ("sync", "async"))
    if id not in gym.registry:
        raise ValueError(f"unknown gymnasium id {id!r}; "
                         "see `python -c 'import gymnasium; gymnasium.pprint_registry()'`")
    wrappers = []
    if observe is not None:
        wrappers.append(lambda e: ObserveIndices(e, list(observe)))
    probe = gym.make(id, **(kwargs or {}))
    if isinstance(probe.action_space, gym.spaces.Box):
        wrappers.append(UnitActions)
    elif not isinstance(probe.action_space, gym.spaces.Discrete):
        raise ValueError(f"{id} has action space {probe.action_space}: only Discrete and Box are supported")
    probe.close()
    if pixels:
        from cpcrl.envs.pixels import PixelObs

        if observe is not None:
            raise ValueError("env.observe and env.pixels exclude each other")
        wrappers.append(PixelObs)
        kwargs = {**(kwargs or {}), "render_mode": "rgb_array"}
    if action_repeat != 1:
        wrappers.append(lambda e: ActionRepeat(e, action_repeat))
    if prev_action:  # outermost: it sees the action as the agent gave it
        if pixels:
            raise ValueError("env.prev_action and env.pixels exclude each other (frames are not flat vectors)")
        wrappers.append(PrevActionObs)
    envs = gym.make_vec(id, num_envs=num_envs, vectorization_mode=vectorization, wrappers=wrappers,
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
                        max_episode_steps=max_episode_steps, **(kwargs or {}))
    return DenseFinalObs(envs)
