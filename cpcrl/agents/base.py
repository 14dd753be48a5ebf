"""What every agent provides to the training loop, evaluation and checkpoints."""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import nn

from cpcrl.errors import ConfigError


class Agent(nn.Module):
    name = "agent"
    world_models: tuple[str, ...] = ("none",)  # world_model options this agent can be composed with

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, device: torch.device, world_model=None):
        super().__init__()
        if not isinstance(obs_space, gym.spaces.Box):
            raise ConfigError(f"agent={self.name} needs a Box observation space, the env has {obs_space}")
        self.obs_space, self.action_space, self.device = obs_space, action_space, device
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.action_dim = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.obs_dim = int(obs_space.shape[0])
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def initial_state(self, batch_size: int):
        """Recurrent state for a batch of fresh episodes (None for feed-forward agents)."""
        return None

    def act(self, obs: torch.Tensor, state, is_first: torch.Tensor, action_mask: torch.Tensor | None = None,
            explore: bool = True):
        """-> (action, state). `is_first` marks envs whose episode starts at this obs."""
        raise NotImplementedError

    def train_iteration(self, collector) -> dict[str, float]:
        """Collect with `collector`, update, and return scalar metrics (loss/..., ...)."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict:
        return {"model": self.state_dict(), "optim": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optim"][k])
