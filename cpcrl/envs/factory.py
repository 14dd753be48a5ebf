"""Config -> vector env. Every env returned here follows one contract:

* `reset(seed) -> obs, info`, `step(actions) -> obs, reward, terminated, truncated, info`, batched numpy;
* same-step autoreset: a finished env's returned obs already starts its next episode, and
  `info["final_obs"]` (dense, [N, ...]) holds the last obs of the finished one, for bootstrapping;
* continuous actions live in [-1, 1] (rescaled here), so agents never see env-specific bounds;
* observations are a Box: Discrete, MultiDiscrete, MultiBinary and Tuple/Dict ones are encoded into one flat
  float32 vector per env (`cpcrl.envs.spaces`, its `EncodedBox.parts` the layout), so `final_obs` is dense for
  them too; a Box env's observations are passed through untouched;
* optional `info["action_mask"]` (bool [N, A]) and `info["solved"]` (bool [N]).
"""

from __future__ import annotations

import importlib

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from cpcrl.checks import choice, positive_int
from cpcrl.envs.cube2x2 import make_vector_env as make_cube_env  # noqa: F401  (the cube's own factory)
from cpcrl.envs.spaces import needs_encoding
from cpcrl.envs.wrappers import (
    ActionRepeat,
    DenseFinalObs,
    EncodeObservations,
    ObserveIndices,
    PrevActionObs,
    UnitActions,
)
from cpcrl.errors import ConfigError

POPGYM_EXTRA = "pip install 'cpcrl[popgym]'"


def import_env_module(id: str) -> str:
    """gymnasium's `module:EnvId` convention: import `module` (which registers its envs) -> `EnvId`."""
    if ":" not in id:
        return id
    module, name = id.split(":", 1)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = (e.name or module).split(".")[0]
        install = POPGYM_EXTRA if missing == "popgym" else f"pip install {missing}"
        raise ConfigError(f"module {missing!r} (from env.id={id}) is not installed: {install}") from None
    return name


def make_gym_env(id: str, num_envs: int, vectorization: str = "sync", observe=None,
                 max_episode_steps: int | None = None, kwargs: dict | None = None, pixels: bool = False,
                 prev_action: bool = False, action_repeat: int = 1, name: str | None = None) -> gym.vector.VectorEnv:
    positive_int("env.num_envs", num_envs)
    choice("env.vectorization", vectorization, ("sync", "async"))
    id = import_env_module(id)
    if id not in gym.registry:
        raise ValueError(f"unknown gymnasium id {id!r}; "
                         "see `python -c 'import gymnasium; gymnasium.pprint_registry()'`")
    wrappers = []
    if observe is not None:
        wrappers.append(lambda e: ObserveIndices(e, list(observe)))
    probe = gym.make(id, **(kwargs or {}))
    if isinstance(probe.action_space, gym.spaces.Box):
        wrappers.append(UnitActions)
    elif not isinstance(probe.action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        raise ConfigError(f"{id} has action space {probe.action_space}: agents act in Discrete, Box and "
                          "MultiDiscrete spaces")
    if needs_encoding(probe.observation_space) and not pixels:  # innermost: the wrappers above see a flat Box
        if observe is not None:
            raise ConfigError(f"env.observe picks entries of a flat Box observation, {id} has "
                             f"{probe.observation_space}; set env.observe=null")
        EncodeObservations(probe)  # an unsupported space fails here, once, in one line
        wrappers.insert(0, EncodeObservations)
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


def make_popgym_env(task: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    """POPGym (Morad et al., ICLR 2023): `task` is one of its env class names (RepeatPreviousEasy, ...)."""
    try:
        import popgym  # noqa: F401  (registers popgym-<task>-v0)
    except ModuleNotFoundError:
        raise ConfigError(f"env=popgym needs the popgym package, which is not installed: {POPGYM_EXTRA}") from None
    tasks = sorted(k[len("popgym-"):-len("-v0")] for k in gym.registry if k.startswith("popgym-"))
    choice("env.task", task, tasks)
    from cpcrl.envs.popgym_state import hidden_state_env_id  # imports popgym's task classes: only past the check above
    return make_gym_env(hidden_state_env_id(task), num_envs, **kwargs)
