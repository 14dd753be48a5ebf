"""Actor-critic losses and helpers: the policy-gradient and value losses of PPO / A2C (`policy_loss`,
`value_loss`), and for learning in imagination (Dreamer) pure tensor functions plus two tiny stateful pieces
(the return normaliser's EMA buffers, the slow critic's EMA weights). Time-major `[H, N]`.

    ratio_t      = exp(log pi(a_t | s_t) - log pi_old(a_t | s_t))
    ppo          = mean max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps, 1 + eps))       (Schulman et al. 2017)
    a2c          = -mean A_t log pi(a_t | s_t)                                          (no ratio, one pass)
    value        = 0.5 mean (V - R)^2, or with clipping 0.5 mean max((V - R)^2, (V_old + clip(V - V_old) - R)^2)

    weights_t    = w_0 prod_{k=1..t} gamma * c_k            how much of imagined state t is still "alive"
                   (w_0 = 1, or 1 - is_terminal of the start: DreamerV3)
    low, high   <- decay * (low, high) + (1 - decay) * (q_5%(R), q_95%(R))      (DreamerV3, decay 0.99)
    scale        = max(floor, high - low)                   (floor 1: small returns are not blown up)
    slow        <- decay * slow + (1 - decay) * critic      (DreamerV3: decay 0.98, every update)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor,
                clip_coef: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate (`clip_coef`) or, with None, the plain advantage policy gradient (A2C).
    -> (loss, approx KL mean((ratio - 1) - log ratio), fraction of ratios outside the clip range; 0 for A2C)."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    if clip_coef is None:
        loss = -(advantages * logp).mean()
    else:
        loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = (((ratio - 1).abs() > clip_coef).float().mean() if clip_coef is not None
                    else torch.zeros((), device=logp.device))
    return loss, approx_kl, clipfrac


def value_loss(value: Tensor, returns: Tensor, old_value: Tensor, clip: float | None) -> Tensor:
    """0.5 * squared error to the returns; with `clip`, the larger of it and that of V clipped around `old_value`."""
    if clip is None:
        return 0.5 * ((value - returns) ** 2).mean()
    clipped = old_value + (value - old_value).clamp(-clip, clip)
    return 0.5 * torch.max((value - returns) ** 2, (clipped - returns) ** 2).mean()


def imagination_weights(continues: Tensor, gamma: float, start: Tensor | None = None) -> Tensor:
    """Loss weights of imagined states 0..H-1 from the continue flags `[H+1, N]` of states 0..H.

    `continues[t]` is predicted on arriving in state t (as in `lambda_returns`), so `continues[0]` is unused:
    the start state is a real posterior state. It counts fully (w_0 = 1, Dreamer v1), or `start [N]` (w_0 =
    1 - is_terminal of the start, DreamerV3 2023: nothing real follows a terminal state, so neither the actor
    nor the critic learns from a rollout imagined past it). Returned without gradient."""
    first = torch.ones_like(continues[:1]) if start is None else start.detach().to(continues).unsqueeze(0)
    discounts = gamma * continues[1:-1].detach()
    return torch.cat([first, discounts]).cumprod(0)


def percentile_ema(low: Tensor, high: Tensor, returns: Tensor, decay: float = 0.99,
                   quantiles: tuple[float, float] = (0.05, 0.95)) -> tuple[Tensor, Tensor]:
    """One EMA step of the 5th and 95th percentiles of `returns` (all elements). No bias correction:
    the EMA starts at 0, as in DreamerV3, and the floor of `return_scale` covers the warm-up."""
    q = torch.quantile(returns.detach().flatten().float(), torch.tensor(quantiles, device=returns.device))
    return decay * low + (1 - decay) * q[0], decay * high + (1 - decay) * q[1]


def return_scale(low: Tensor, high: Tensor, floor: float = 1.0) -> Tensor:
    """max(floor, high - low): divides advantages so the entropy bonus means the same across reward scales,
    while returns that vary less than `floor` are left as they are (no noise amplification)."""
    return torch.clamp(high - low, min=floor)


class ReturnNormalizer(nn.Module):
    """The percentile EMA as buffers (so it lives on the device and in checkpoints). `enabled=False` gives
    scale 1 (Dreamer v1 has no normalisation)."""

    def __init__(self, decay: float = 0.99, floor: float = 1.0, enabled: bool = True):
        super().__init__()
        self.decay, self.floor, self.enabled = decay, floor, enabled
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    def forward(self, returns: Tensor, update: bool = True) -> Tensor:
        """Update the EMA with `returns` (when `update`) and return the scale (a 0-dim tensor, no host sync)."""
        if not self.enabled:
            return torch.ones((), device=returns.device)
        if update:
            low, high = percentile_ema(self.low, self.high, returns, self.decay)
            self.low.copy_(low), self.high.copy_(high)
        return return_scale(self.low, self.high, self.floor)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameter by parameter (in place)."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, 1.0 - decay)
