"""What every agent provides to the training loop, evaluation and checkpoints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import torch
from omegaconf import MISSING
from torch import nn

from cpcrl.checks import Params
from cpcrl.envs.spaces import image_slices
from cpcrl.errors import ConfigError

# the agents with multi_discrete_actions = True, and those with image_observations = True (named in refusals)
MULTI_DISCRETE_AGENTS = ("reinforce", "ppo_lstm", "cpc_rl", "planet", "dreamer", "random")
IMAGE_AGENTS = ("planet", "dreamer")
COMPILED_AGENTS = ("ppo_lstm", "cpc_rl", "planet", "dreamer")  # those with compiled_steps (device.compile)


@dataclass
class AgentConfig(Params):
    """Base of every agent's hyper-parameters (`agent.*`); a subclass sets `_target_` and `name`."""

    key = "agent"
    _target_: str = MISSING  # the Agent class
    name: str = MISSING

    def check_world_model(self, world_model) -> None:
        """Rules between these hyper-parameters and the world model (ConfigError naming both keys)."""


@dataclass
class NoWorldModel(Params):
    """world_model=none: the agent reads observations directly (reinforce, feed-forward PPO)."""

    key = "world_model"
    name: str = "none"


class Agent(nn.Module):
    name = "agent"
    Config: ClassVar[type]  # the hyper-parameter dataclass (`agent.*`): types, defaults, checks, one doc per field
    multi_discrete_actions: ClassVar[bool] = False  # True: the agent also acts in MultiDiscrete spaces
    # True: the agent reads 3x64x64 images (a plain image Box, or an image component of an encoded Tuple/Dict)
    image_observations: ClassVar[bool] = False
    # the world_model options this agent can be composed with, and the schema of each
    world_models: ClassVar[dict[str, type]] = {"none": NoWorldModel}
    # what `device.compile` compiles (`compile_steps`), for the refusal of agents without a compiled path
    compiled_steps: ClassVar[str] = ""

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, device: torch.device):
        super().__init__()
        if not isinstance(obs_space, gym.spaces.Box):
            raise ConfigError(f"agent={self.name} needs a Box observation space, the env has {obs_space}")
        if not self.image_observations and (len(obs_space.shape) == 3 or image_slices(obs_space)):
            what = "gives images" if len(obs_space.shape) == 3 else "has an image component"
            raise ConfigError(f"agent={self.name} takes flat vector observations, the env {what} "
                              f"({' '.join(str(getattr(obs_space, 'source', obs_space)).split())[:120]}); agents for "
                              f"image observations: {', '.join(IMAGE_AGENTS)} (or leave the image out of the env's "
                              "observation)")
        self.obs_space, self.action_space, self.device = obs_space, action_space, device
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.continuous = isinstance(action_space, gym.spaces.Box)
        self.multi_discrete = isinstance(action_space, gym.spaces.MultiDiscrete)
        if self.multi_discrete:  # actions int [F]; logits and masks are the factors' concatenated [sum(nvec)]
            if not self.multi_discrete_actions:
                raise ConfigError(f"agent={self.name} acts in Discrete and Box spaces, the env has {action_space}; "
                                  f"agents for MultiDiscrete actions: {', '.join(MULTI_DISCRETE_AGENTS)}")
            if action_space.nvec.ndim != 1 or (action_space.start != 0).any():
                raise ConfigError(f"MultiDiscrete actions must be a flat vector starting at 0, the env has "
                                  f"{action_space} (start {action_space.start.tolist()})")
            self.nvec = [int(k) for k in action_space.nvec]
            self.action_dim = sum(self.nvec)
        else:
            self.action_dim = int(action_space.n) if self.discrete else int(action_space.shape[0])
        # classes per categorical factor: [n] for Discrete, nvec for MultiDiscrete, None for Box actions
        self.action_factors = self.nvec if self.multi_discrete else [self.action_dim] if self.discrete else None
        self.obs_dim = int(obs_space.shape[0])
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def initial_state(self, batch_size: int):
        """Recurrent state for a batch of fresh episodes (None for feed-forward agents)."""
        return None

    def act(self, obs: torch.Tensor, state, is_first: torch.Tensor, action_mask: torch.Tensor | None = None,
            explore: bool = True):
        """-> (action, state). `is_first` marks envs whose episode starts at this obs."""
        raise NotImplementedError

    def policy_scores(self, obs: torch.Tensor, state, is_first: torch.Tensor, action_mask: torch.Tensor | None = None):
        """-> (log-probs of every action [B, A], value [B] or None, state after obs): what `act(explore=False)`
        decides from, for search over the policy (`cpcrl.solve`). Discrete actions only (`discrete_scores_only`)."""
        raise ConfigError(f"agent={self.name} has no policy to search over: mode=solve needs an agent with one "
                          "(reinforce, ppo_lstm, cpc_rl, dreamer, random)")

    def discrete_scores_only(self) -> None:
        """`policy_scores` scores each of A actions: a MultiDiscrete space has no such list (search runs on the
        cube's Discrete moves)."""
        if not self.discrete:
            raise ConfigError(f"agent={self.name}: policy scores (mode=solve's beam search) need a Discrete action "
                              f"space, the env has {self.action_space}; valid: an env with Discrete actions "
                              "(env=cube2x2)")

    def check_action_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The env's `info["action_mask"]` (bool [B, A]; MultiDiscrete: the factors' masks concatenated,
        [B, sum(nvec)]), checked against the action space."""
        if mask is not None and (self.continuous or mask.shape[-1] != self.action_dim):
            raise ConfigError(f"the env's action mask has width {mask.shape[-1]} but the action space "
                              f"{self.action_space} has {self.action_dim} actions" +
                              (" (masks need a Discrete or MultiDiscrete action space)" if self.continuous else ""))
        return mask

    def uniform_indices(self, n: int, action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """int [n, F]: each categorical factor uniform over its valid classes (`action_mask` per factor), all
        factors independent."""
        masks = action_mask.split(self.action_factors, -1) if action_mask is not None else [None] * len(
            self.action_factors)
        draws = []
        for k, mask in zip(self.action_factors, masks):
            logits = torch.zeros(n, k, device=self.device)
            if mask is not None:
                logits = logits.masked_fill(~mask.bool(), -torch.inf)
            draws.append(torch.distributions.Categorical(logits=logits).sample())
        return torch.stack(draws, -1)

    @torch.no_grad()
    def belief_features(self, obs: torch.Tensor, state, is_first: torch.Tensor):
        """-> (features [B, F], state after obs): what the agent knows at this step, for the belief probes
        (`cpcrl.probes`). This default is the observation itself (an agent without memory); recurrent agents return
        their belief. The state is `act`'s, before an action is taken (`act` still advances it)."""
        return obs.float(), state

    def commit_action(self, state, actions: torch.Tensor):
        """The state once `actions` (int [B]) are taken from it (for agents whose state holds the action)."""
        return state

    @classmethod
    def check_compile(cls, mode: str) -> None:
        if mode != "none" and not cls.compiled_steps:
            raise ConfigError(f"device.compile={mode}: agent={cls.name} has no compiled path; "
                              f"valid: device.compile=none, or an agent with one ({', '.join(COMPILED_AGENTS)})")

    def compile_steps(self, mode: str) -> None:
        """Compile the sequential steps (`device.compile`, `cpcrl.device.compiled`); the eager path is the reference.
        Agents with a compiled path extend this and say what it compiles in `compiled_steps`."""
        self.check_compile(mode)

    def train_iteration(self, collector) -> dict[str, float]:
        """Collect with `collector`, update, and return scalar metrics (loss/..., ...)."""
        raise NotImplementedError

    def optimizer_step(self, names: Iterable[str], loss: torch.Tensor,
                       clips: Iterable[tuple[Iterable[nn.Parameter], float | None]]) -> list[torch.Tensor]:
        """One gradient step of the optimizers `names` on `loss`, each parameter group in `clips` clipped to its
        max norm (None: not clipped, the norm still measured). -> the norms before clipping."""
        names = list(names)
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        norms = [nn.utils.clip_grad_norm_(params, max_norm or float("inf")) for params, max_norm in clips]
        for name in names:
            self.optimizers[name].step()
        return norms

    def checkpoint_state(self) -> dict:
        return {"model": self.state_dict(), "optim": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optim"][k])
