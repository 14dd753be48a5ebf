"""REINFORCE (seed 002): Monte-Carlo policy gradient over a batch of whole episodes.

Each iteration resets every env and plays until each has finished one episode. Steps after an env's
episode ended are inactive (mask 0): they add no reward to the returns and no term to the loss.

    R_t  = r_t + gamma * R_{t+1}                          (backwards over the episode)
    loss = -sum_{t,b} log pi(a_tb | s_tb) (R_tb - b) m_tb / sum_{t,b} m_tb  -  c_ent * mean entropy
"""

from __future__ import annotations

import torch

from cpcrl.agents.base import Agent
from cpcrl.errors import ConfigError
from cpcrl.nets.distributions import MaskedCategorical, diag_normal
from cpcrl.nets.mlp import mlp
from cpcrl.objectives.returns import discounted_returns


def reinforce_loss(log_probs: torch.Tensor, returns: torch.Tensor, active: torch.Tensor,
                   baseline: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Masked REINFORCE loss over [T, B], normalised by the number of active steps."""
    count = active.sum().clamp(min=1.0)
    return -(log_probs * (returns - baseline) * active).sum() / count


class Reinforce(Agent):
    name = "reinforce"
    world_models = ("none",)

    def __init__(self, obs_space, action_space, device, world_model=None, hidden=(128,), activation="elu",
                 lr=1e-3, gamma=0.99, baseline="mean", entropy_coef=0.0, max_grad_norm=None, init_log_std=-0.5):
        super().__init__(obs_space, action_space, device)
        if baseline not in ("none", "mean"):
            raise ConfigError(f"agent.baseline={baseline!r}: valid are none, mean")
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"agent.gamma={gamma}: must be in [0, 1]")
        if lr <= 0:
            raise ConfigError(f"agent.lr={lr}: must be positive")
        self.gamma, self.baseline, self.entropy_coef, self.max_grad_norm = gamma, baseline, entropy_coef, max_grad_norm
        self.policy = mlp(self.obs_dim, list(hidden), self.action_dim, activation)
        if not self.discrete:
            self.log_std = torch.nn.Parameter(torch.full((self.action_dim,), float(init_log_std)))
        self.to(device)
        self.optimizers["policy"] = torch.optim.Adam(self.parameters(), lr=lr)

    def dist(self, obs: torch.Tensor, action_mask: torch.Tensor | None = None):
        out = self.policy(obs)
        if self.discrete:
            return MaskedCategorical(logits=out, mask=action_mask)
        return diag_normal(out, self.log_std.exp().expand_as(out))

    def act(self, obs, state, is_first, action_mask=None, explore=True):
        dist = self.dist(obs, action_mask)
        action = dist.sample() if explore else dist.mode
        return (action if self.discrete else action.clamp(-1.0, 1.0)), state

    def train_iteration(self, collector) -> dict[str, float]:
        collector.reset()
        obs, actions, rewards, active_steps, masks = [], [], [], [], []
        active = torch.ones(collector.num_envs, device=self.device)
        with torch.no_grad():
            while active.any():
                o, mask = collector.obs_tensor(), collector.tensor(collector.action_mask)
                action, _ = self.act(o, None, None, mask)
                step = collector.step(action)
                obs.append(o), actions.append(action), masks.append(mask), active_steps.append(active)
                rewards.append(collector.tensor(step.reward) * active)
                active = active * (1.0 - collector.tensor(step.done).float())
        obs, actions, rewards, active = (torch.stack(x) for x in (obs, actions, rewards, active_steps))
        masks = None if masks[0] is None else torch.stack(masks)

        returns = discounted_returns(rewards, torch.zeros_like(rewards), self.gamma)
        baseline = (returns * active).sum() / active.sum() if self.baseline == "mean" else 0.0
        dist = self.dist(obs, masks)
        loss = reinforce_loss(dist.log_prob(actions), returns, active, baseline)
        entropy = (dist.entropy() * active).sum() / active.sum()
        total = loss - self.entropy_coef * entropy

        opt = self.optimizers["policy"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(),
                                                   self.max_grad_norm or float("inf"))
        opt.step()
        return {"loss/policy": loss.item(), "loss/entropy": entropy.item(), "loss/grad_norm": grad_norm.item(),
                "train/batch_return": (rewards.sum(0)).mean().item()}
