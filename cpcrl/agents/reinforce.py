"""REINFORCE (seed 002): Monte-Carlo policy gradient over a batch of whole episodes.

Each iteration resets every env and plays until each has finished one episode. Steps after an env's
episode ended are inactive (mask 0): they add no reward to the returns and no term to the loss.

    R_t  = r_t + gamma * R_{t+1}                          (backwards over the episode)
    loss = -sum_{t,b} log pi(a_tb | s_tb) (R_tb - b) m_tb / sum_{t,b} m_tb  -  c_ent * mean entropy
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpcrl.agents.base import Agent, AgentConfig
from cpcrl.checks import non_negative, one_of, optional_positive, param, positive, positive_ints, unit_interval
from cpcrl.nets.distributions import FactorisedCategorical, MaskedCategorical, diag_normal
from cpcrl.nets.mlp import ACTIVATIONS, mlp
from cpcrl.objectives.returns import discounted_returns


def reinforce_loss(log_probs: torch.Tensor, returns: torch.Tensor, active: torch.Tensor,
                   baseline: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Masked REINFORCE loss over [T, B], normalised by the number of active steps."""
    count = active.sum().clamp(min=1.0)
    return -(log_probs * (returns - baseline) * active).sum() / count


@dataclass
class ReinforceConfig(AgentConfig):
    _target_: str = "cpcrl.agents.reinforce.Reinforce"
    name: str = "reinforce"
    hidden: list[int] = param(check=positive_ints, factory=lambda: [128])  # policy MLP widths
    activation: str = param("elu", one_of(*ACTIVATIONS))
    lr: float = param(0.003, positive)                        # Adam
    gamma: float = param(0.95, unit_interval)                 # discount of the Monte-Carlo returns
    baseline: str = param("mean", one_of("none", "mean"))     # mean: batch mean of the returns over active steps
    entropy_coef: float = param(0.0, non_negative)
    max_grad_norm: float | None = param(None, optional_positive)  # null: no clipping
    init_log_std: float = -0.5                                # continuous actions only


class Reinforce(Agent):
    name = "reinforce"
    multi_discrete_actions = True
    Config = ReinforceConfig

    def __init__(self, obs_space, action_space, device, cfg: ReinforceConfig, world_model=None):
        super().__init__(obs_space, action_space, device)
        self.cfg = cfg
        self.policy = mlp(self.obs_dim, cfg.hidden, self.action_dim, cfg.activation)
        if self.continuous:
            self.log_std = torch.nn.Parameter(torch.full((self.action_dim,), float(cfg.init_log_std)))
        self.to(device)
        self.optimizers["policy"] = torch.optim.Adam(self.parameters(), lr=cfg.lr)

    def dist(self, obs: torch.Tensor, action_mask: torch.Tensor | None = None):
        out = self.policy(obs)
        if self.discrete:
            return MaskedCategorical(logits=out, mask=action_mask)
        if self.multi_discrete:
            return FactorisedCategorical(out, self.nvec, action_mask)
        return diag_normal(out, self.log_std.exp().expand_as(out))

    def act(self, obs, state, is_first, action_mask=None, explore=True):
        dist = self.dist(obs, action_mask)
        action = dist.sample() if explore else dist.mode
        return (action.clamp(-1.0, 1.0) if self.continuous else action), state

    def policy_scores(self, obs, state, is_first, action_mask=None):
        self.discrete_scores_only()
        return self.dist(obs, action_mask).logits, None, state

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

        returns = discounted_returns(rewards, torch.zeros_like(rewards), self.cfg.gamma)
        baseline = (returns * active).sum() / active.sum() if self.cfg.baseline == "mean" else 0.0
        dist = self.dist(obs, masks)
        loss = reinforce_loss(dist.log_prob(actions), returns, active, baseline)
        entropy = (dist.entropy() * active).sum() / active.sum()
        total = loss - self.cfg.entropy_coef * entropy
        (grad_norm,) = self.optimizer_step(["policy"], total, [(self.parameters(), self.cfg.max_grad_norm)])
        return {"loss/policy": loss.item(), "loss/entropy": entropy.item(), "loss/grad_norm": grad_norm.item(),
                "train/batch_return": (rewards.sum(0)).mean().item()}
