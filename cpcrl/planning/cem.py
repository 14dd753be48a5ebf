"""Cross-entropy method over action sequences (PlaNet's planner), batched over envs and candidates.

Each iteration draws `candidates` sequences `[B, N, H, A]` from the current belief over action
sequences, scores them all with one call `score(actions) -> [B, N]` (for PlaNet: one batched prior
rollout of B*N latent trajectories), and refits the belief to the `top_k` best.

Continuous actions in [-1, 1]: a diagonal Gaussian per (step, dim), samples clipped to the box.
Discrete actions: a categorical per step (candidates are one-hot), refit to the elite frequencies.
MultiDiscrete actions: an independent categorical per (step, factor) (candidates are the factors' concatenated
one-hots), each refit to its elite frequencies: the Discrete case once per factor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import Tensor

from cpcrl.checks import Params, param, positive_int
from cpcrl.errors import ConfigError

Score = Callable[[Tensor], Tensor]


@dataclass
class CEMConfig(Params):
    """A planner budget; the presets are conf/agent/planner/*.yaml (`agent/planner=cem_fast`)."""

    key = "agent.planner"
    horizon: int = param(MISSING, positive_int)     # planned steps
    candidates: int = param(MISSING, positive_int)  # action sequences scored per iteration
    top_k: int = param(MISSING, positive_int)       # elites the belief is refit to
    iterations: int = param(MISSING, positive_int)

    def check(self):
        if self.top_k > self.candidates:
            raise ConfigError(f"{self.key}: top_k={self.top_k} > candidates={self.candidates}: "
                              "the elites are a subset of the candidates, so top_k <= candidates")

    def as_dict(self) -> dict:
        return asdict(self)


def cem_continuous(score: Score, batch: int, action_dim: int, cfg: CEMConfig, device=None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """-> (mean, std) of the final belief, each `[B, H, A]`; act with `mean[:, 0]`."""
    shape = (batch, cfg.horizon, action_dim)
    mean, std = torch.zeros(shape, device=device), torch.ones(shape, device=device)
    for _ in range(cfg.iterations):
        noise = torch.randn((batch, cfg.candidates, *shape[1:]), device=device, generator=generator)
        candidates = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1.0, 1.0)   # [B, N, H, A]
        elite = score(candidates).topk(cfg.top_k, dim=1).indices                       # [B, K]
        elites = candidates.gather(1, elite[:, :, None, None].expand(-1, -1, *shape[1:]))
        mean, std = elites.mean(1), elites.std(1, unbiased=False)
    return mean, std


def cem_categorical(score: Score, batch: int, num_actions: int | Sequence[int], cfg: CEMConfig, device=None,
                    first_mask: Tensor | None = None, smoothing: float = 0.01,
                    generator: torch.Generator | None = None) -> Tensor:
    """-> probs `[B, H, A]` of the final belief; act with `probs[:, 0].argmax(-1)`.

    `num_actions`: A, or the classes per factor (a MultiDiscrete nvec; A = sum(nvec), each factor's slice of
    `probs` a distribution of its own: act with each slice's argmax). `first_mask` (bool `[B, A]`, per factor)
    restricts the first action to the legal ones (later steps are imagined, where the mask is unknown).
    `smoothing` mixes in a little uniform (per factor) so no action dies out for good."""
    factors = [num_actions] if isinstance(num_actions, int) else [int(k) for k in num_actions]
    width = sum(factors)
    probs = torch.cat([torch.full((batch, cfg.horizon, k), 1.0 / k, device=device) for k in factors], -1)
    mask = None if first_mask is None else first_mask.to(torch.bool)

    def per_factor(fn, x: Tensor) -> Tensor:  # fn(factor's slice, its classes) on each factor, concatenated
        return torch.cat([fn(part, k) for part, k in zip(x.split(factors, -1), factors)], -1)

    def legal(p: Tensor) -> Tensor:
        if mask is None:
            return p
        first = per_factor(lambda f, k: f / f.sum(-1, keepdim=True), p[:, 0] * mask)
        return torch.cat([first.unsqueeze(1), p[:, 1:]], 1)

    def draw(p: Tensor, k: int) -> Tensor:  # one-hot candidates [B, N, H, k] of one factor
        index = torch.multinomial(p.reshape(-1, k), cfg.candidates, replacement=True, generator=generator)  # [B*H, N]
        return F.one_hot(index.view(batch, cfg.horizon, cfg.candidates).transpose(1, 2), k).float()

    probs = legal(probs)
    for _ in range(cfg.iterations):
        candidates = per_factor(draw, probs)                                             # [B, N, H, A]
        elite = score(candidates).topk(cfg.top_k, dim=1).indices
        elites = candidates.gather(1, elite[:, :, None, None].expand(-1, -1, cfg.horizon, width))
        probs = legal(per_factor(lambda f, k: (1 - smoothing) * f + smoothing / k, elites.mean(1)))
    return probs
