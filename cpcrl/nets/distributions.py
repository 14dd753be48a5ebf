"""Action and prediction distributions: masked categorical, factorised categorical (MultiDiscrete actions),
tanh-squashed normal, DreamerV3 two-hot, straight-through one-hots.

All work on any leading batch shape; the last dim is the action / bin / class dim. A categorical action of several
factors (MultiDiscrete `nvec`) is int `[..., F]` for the env and, where a network reads it (world models, the
previous-action input), the factors' concatenated one-hots `[..., sum(nvec)]`: `factor_onehots` / `factor_indices`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical, Independent, Normal


class MaskedCategorical(Categorical):
    """Categorical where illegal actions (`mask` False) have exactly zero probability.

    Masked logits are set to the dtype's most negative finite value rather than -inf, so
    normalisation, entropy and gradients never see `inf - inf` or `0 * -inf`. `log_prob` of a masked
    action is therefore hugely negative but finite; `sample()` never returns one.
    """

    mask: Tensor | None = None  # class default so instances built by `expand()` (which skips __init__) work

    def __init__(self, logits: Tensor, mask: Tensor | None = None, validate_args: bool | None = None):
        if mask is not None:
            mask = mask.to(torch.bool).expand_as(logits)
            if not bool(mask.any(-1).all()):
                raise ValueError("MaskedCategorical: some row of the action mask has no legal action "
                                 f"(mask shape {tuple(mask.shape)}); every state needs at least one")
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        self.mask = mask
        super().__init__(logits=logits, validate_args=validate_args)

    def entropy(self) -> Tensor:
        if self.mask is None:
            return super().entropy()
        p_log_p = torch.where(self.mask, self.probs * self.logits, torch.zeros_like(self.logits))
        return -p_log_p.sum(-1)

    @property
    def mode(self) -> Tensor:
        # argmax of the masked logits: a legal action even if every legal prob underflowed to 0
        return self.logits.argmax(-1)


class FactorisedCategorical:
    """MultiDiscrete actions: one independent `MaskedCategorical` per factor, its logits (and mask) the factor's
    slice of `logits [..., sum(nvec)]`. Actions are int `[..., F]`; log_prob and entropy sum over the factors:
    log pi(a) = sum_i log pi_i(a_i)."""

    def __init__(self, logits: Tensor, nvec: list[int], mask: Tensor | None = None,
                 validate_args: bool | None = None):
        masks = mask.split(nvec, -1) if mask is not None else [None] * len(nvec)
        self.factors = [MaskedCategorical(lg, m, validate_args) for lg, m in zip(logits.split(nvec, -1), masks)]

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return torch.stack([f.sample(sample_shape) for f in self.factors], -1)

    def log_prob(self, actions: Tensor) -> Tensor:
        return sum(f.log_prob(actions[..., i]) for i, f in enumerate(self.factors))

    def entropy(self) -> Tensor:
        return sum(f.entropy() for f in self.factors)

    @property
    def mode(self) -> Tensor:
        return torch.stack([f.mode for f in self.factors], -1)


def factor_onehots(indices: Tensor, nvec: list[int]) -> Tensor:
    """int `[..., F]` (one class per factor) -> the factors' concatenated one-hots `[..., sum(nvec)]`, float."""
    return torch.cat([F.one_hot(indices[..., i].long(), k) for i, k in enumerate(nvec)], -1).float()


def factor_indices(vectors: Tensor, nvec: list[int]) -> Tensor:
    """`[..., sum(nvec)]` (one-hots, probabilities or scores per factor) -> int `[..., F]`: each factor's argmax."""
    return torch.stack([v.argmax(-1) for v in vectors.split(nvec, -1)], -1)


class TanhNormal:
    """`tanh(x)`, `x ~ Normal(mean, std)` per action dim: a distribution over the box (-1, 1)^A.

    `log_prob` sums over the last (action) dim. The entropy has no closed form: use
    `sample_entropy` (a Monte-Carlo estimate, differentiable through `rsample`). There is no
    `.mean` on purpose: `E[tanh(x)] != tanh(mean)`; `mode` is `tanh(mean)`, the usual deterministic action.
    """

    def __init__(self, mean: Tensor, std: Tensor):
        self.base = Normal(mean, std)

    @property
    def mode(self) -> Tensor:
        return torch.tanh(self.base.mean)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return torch.tanh(self.base.rsample(sample_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_with_log_prob(self, sample_shape: torch.Size = torch.Size()) -> tuple[Tensor, Tensor]:
        """Reparameterised action and its log-prob from the pre-tanh sample (no lossy atanh round trip)."""
        x = self.base.rsample(sample_shape)
        return torch.tanh(x), self._log_prob_pre_tanh(x)

    def log_prob(self, action: Tensor, eps: float | None = None) -> Tensor:
        # atanh(+-1) is infinite; float32 tanh saturates to exactly +-1 already for |x| > ~9
        eps = torch.finfo(action.dtype).eps if eps is None else eps
        return self._log_prob_pre_tanh(torch.atanh(action.clamp(-1.0 + eps, 1.0 - eps)))

    def sample_entropy(self, num_samples: int = 1) -> Tensor:
        _, log_prob = self.rsample_with_log_prob(torch.Size((num_samples,)))
        return -log_prob.mean(0)

    def _log_prob_pre_tanh(self, x: Tensor) -> Tensor:
        # log(1 - tanh(x)^2) rewritten so it neither cancels to log(0) nor overflows for large |x|
        log_det_jacobian = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
        return (self.base.log_prob(x) - log_det_jacobian).sum(-1)


def diag_normal(mean: Tensor, std: Tensor) -> Independent:
    """Gaussian with independent action dims: `log_prob`/`entropy` sum over the last dim."""
    return Independent(Normal(mean, std), 1)


# --- DreamerV3 helpers -------------------------------------------------------------------------------------

def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


def twohot_bins(num_bins: int = 255, limit: float = 20.0, device=None, dtype=None) -> Tensor:
    """`num_bins` bins uniformly spaced on [-limit, limit] in symlog space, exactly antisymmetric.

    `linspace` alone is off by an ulp between mirrored bins; averaging with its negated mirror makes
    `b_i == -b_{K-1-i}` bit-exactly (and the middle bin exactly 0), so uniform logits decode to 0.
    """
    bins = torch.linspace(-limit, limit, num_bins, device=device, dtype=dtype)
    return (bins - bins.flip(0)) / 2


def twohot_encode(x: Tensor, bins: Tensor) -> Tensor:
    """Spread each value of `x` (already in bin space) over its two nearest bins: `[...] -> [..., K]`.

    Weights are linear in the distance, so `sum(probs * bins) == x` inside the range; a value on a bin
    puts all weight on it; values outside the range clamp to the end bin.
    """
    bins = bins.to(x)
    num_bins = bins.shape[0]
    below = torch.searchsorted(bins, x.contiguous(), right=True) - 1  # last bin <= x
    above = below + 1
    below, above = below.clamp(0, num_bins - 1), above.clamp(0, num_bins - 1)
    same = below == above  # out of range: both indices are the end bin
    dist_below = torch.where(same, 1.0, (x - bins[below]).abs())
    dist_above = torch.where(same, 1.0, (bins[above] - x).abs())
    total = dist_below + dist_above
    probs = torch.zeros(*x.shape, num_bins, dtype=x.dtype, device=x.device)
    probs.scatter_add_(-1, below.unsqueeze(-1), (dist_above / total).unsqueeze(-1))
    probs.scatter_add_(-1, above.unsqueeze(-1), (dist_below / total).unsqueeze(-1))
    return probs


class TwoHotDist:
    """DreamerV3 discrete regression head: a softmax over fixed symlog-space bins.

    Prediction (`mean` == `mode`) is `symexp(sum(softmax(logits) * bins))`; the loss is
    `-log_prob(x)`, the cross-entropy against the two-hot encoding of `symlog(x)`.
    """

    def __init__(self, logits: Tensor, bins: Tensor | None = None):
        self.logits = logits
        self.bins = twohot_bins(device=logits.device, dtype=logits.dtype) if bins is None else bins.to(logits)

    @property
    def mean(self) -> Tensor:
        probs = torch.softmax(self.logits, -1)
        # Sum mirrored bins pairwise (b_i + b_{K-1-i} cancels exactly for equal probs) so that
        # symmetric predictions, e.g. a freshly zero-initialised head, decode to exactly 0, not ~1e-7.
        half = self.bins.shape[0] // 2
        low = (probs[..., :half] * self.bins[:half]).flip(-1)
        high = probs[..., -half:] * self.bins[-half:]
        wavg = (low + high).sum(-1)
        if self.bins.shape[0] % 2:
            wavg = wavg + probs[..., half] * self.bins[half]
        return symexp(wavg)

    @property
    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, x: Tensor) -> Tensor:
        target = twohot_encode(symlog(x), self.bins)
        return (target * torch.log_softmax(self.logits, -1)).sum(-1)


# --- Straight-through one-hot (Dreamer discrete latents / actions) -----------------------------------------

def _unimix_probs(logits: Tensor, unimix: float) -> Tensor:
    # 1% uniform mixture keeps every class reachable, bounding KL and log-prob terms (DreamerV3)
    return (1.0 - unimix) * torch.softmax(logits, -1) + unimix / logits.shape[-1]


def unimix_logits(logits: Tensor, unimix: float = 0.01) -> Tensor:
    """Log of the uniform-mixed probabilities; a drop-in `logits=` for Categorical / OneHotCategorical."""
    if unimix == 0.0:
        return torch.log_softmax(logits, -1)
    return torch.log(_unimix_probs(logits, unimix))


def sample_index(probs: Tensor) -> Tensor:
    """One draw per row of `probs [..., K]` (rows sum to 1) by inverting the CDF with one uniform: on a CPU ~20x
    faster than `Categorical.sample` (torch.multinomial draws K exponentials per row), and the latents of an
    imagined batch are 1024 x 32 such rows per step."""
    cdf = probs.cumsum(-1)
    # u scaled by the CDF's own total (rounding leaves it just off 1), so a zero-probability class is never drawn
    below = cdf <= torch.rand_like(cdf[..., -1:]) * cdf[..., -1:]
    return below.sum(-1).clamp_(max=probs.shape[-1] - 1)


def straight_through_onehot(logits: Tensor, unimix: float = 0.01) -> tuple[Tensor, Tensor]:
    """Sample a one-hot from the unimix distribution, with the straight-through gradient of its probs.

    Returns `(sample, probs)`, both `[..., K]`: `sample` is an exact one-hot in the forward pass
    and has d(sample)/d(logits) = d(probs)/d(logits) in the backward pass.
    """
    probs = _unimix_probs(logits, unimix)
    index = sample_index(probs.detach())
    onehot = F.one_hot(index, logits.shape[-1]).to(probs.dtype)
    # bracketed so the forward value is onehot + 0.0 exactly, not (onehot + p) - p with rounding error
    return onehot + (probs - probs.detach()), probs
