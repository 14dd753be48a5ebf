"""The uniform random policy: the floor that suites normalise scores against.

    discrete:       a ~ Uniform{ i : action_mask[i] }     (every action when the env gives no mask)
    multi-discrete: a_f ~ Uniform{ i : mask_f[i] } per factor f, independently (the factors' masks concatenated)
    continuous:     a ~ Uniform[low, high] per dimension  (the env contract's Box, [-1, 1])

It acts the same in training and evaluation (a random policy has no greedy mode), learns nothing and
has no optimizer; `train_iteration` only steps the collector, so a run's budget, logging, evaluation and
checkpoints go through the same loop as every other agent's and `summary.json` is its measured score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cpcrl.agents.base import Agent, AgentConfig
from cpcrl.checks import param, positive_int


@dataclass
class RandomConfig(AgentConfig):
    _target_: str = "cpcrl.agents.random.RandomAgent"
    name: str = "random"
    rollout_steps: int = param(32, positive_int)  # vector env steps per train iteration (only collection)


class RandomAgent(Agent):
    name = "random"
    Config = RandomConfig
    multi_discrete_actions = True

    def __init__(self, obs_space, action_space, device, cfg: RandomConfig, world_model=None):
        super().__init__(obs_space, action_space, device)
        self.rollout_steps = cfg.rollout_steps
        if self.continuous:
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32, device=device))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32, device=device))

    def act(self, obs, state, is_first, action_mask=None, explore=True):
        n, action_mask = obs.shape[0], self.check_action_mask(action_mask)
        if self.continuous:
            return self.low + (self.high - self.low) * torch.rand(n, self.action_dim, device=obs.device), state
        if self.multi_discrete:
            return self.uniform_indices(n, action_mask), state
        # Discrete: its own draws (not `uniform_indices`), those the suites' random scores were measured with
        if action_mask is None:
            return torch.randint(self.action_dim, (n,), device=obs.device), state
        # multinomial over the 0/1 mask: each valid action with probability 1 / (number of valid actions)
        return torch.multinomial(action_mask.float(), 1).squeeze(1), state

    def policy_scores(self, obs, state, is_first, action_mask=None):
        self.discrete_scores_only()
        logits = torch.zeros(obs.shape[0], self.action_dim, device=obs.device)
        if action_mask is not None:
            logits = logits.masked_fill(~action_mask.bool(), float("-inf"))
        return logits.log_softmax(-1), None, state

    def valid_actions(self, mask: torch.Tensor | None) -> float:
        """The mean number of valid actions over the envs: joint actions for MultiDiscrete (the product of the
        factors' valid classes)."""
        if self.continuous:
            return float(self.action_dim)  # what this metric has always said for a box (no count of actions)
        if mask is None:
            return float(math.prod(self.action_factors))
        counts = [m.float().sum(1) for m in mask.split(self.action_factors, 1)]
        return math.prod(counts).mean().item()

    @torch.no_grad()
    def train_iteration(self, collector) -> dict[str, float]:
        valid = []
        for _ in range(self.rollout_steps):
            mask = collector.tensor(collector.action_mask)
            valid.append(self.valid_actions(mask))
            action, _ = self.act(collector.obs_tensor(), None, None, mask)
            collector.step(action)
        return {"train/valid_actions": sum(valid) / len(valid)}
