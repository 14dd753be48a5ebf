"""Actor-critic helpers for learning in imagination (Dreamer): pure tensor functions plus two tiny stateful
pieces (the return normaliser's EMA buffers, the slow critic's EMA weights). Time-major `[H, N]`.

    weights_t    = prod_{k=1..t} gamma * c_k   (w_0 = 1)    how much of imagined state t is still "alive"
    low, high   <- decay * (low, high) + (1 - decay) * (q_5%(R), q_95%(R))      (DreamerV3, decay 0.99)
    scale        = max(floor, high - low)                   (floor 1: small returns are not blown up)
    slow        <- decay * slow + (1 - decay) * critic      (DreamerV3: decay 0.98, every update)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def imagination_weights(continues: Tensor, gamma: float) -> Tensor:
    """Loss weights of imagined states 0..H-1 from the continue flags `[H+1, N]` of states 0..H.

    `continues[t]` is predicted on arriving in state t (as in `lambda_returns`), so `continues[0]` is unused:
    the start state is a real posterior state and always counts fully. Returned without gradient."""
    discounts = gamma * continues[1:-1].detach()
    return torch.cat([torch.ones_like(continues[:1]), discounts]).cumprod(0)


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
