"""World-model losses: KL strategies, observation/reward/continue likelihoods, latent overshooting.

Pure functions over time-major `[T, B, ...]` tensors and RSSM states (`cpcrl.nets.rssm`); PlaNet and
Dreamer both call them. Every loss is a mean over (time, batch) of a per-step term summed over its dims.

KL strategies (`post` = q(s_t | h_t, e_t), `prior` = p(s_t | h_t); sg = stop-gradient):
    regular    KL(post || prior)
    free_bits  max(free_nats, KL(post || prior))                           per step (PlaNet: 3 nats)
    balanced   alpha KL(sg(post) || prior) + (1 - alpha) KL(post || sg(prior))      (DreamerV2, alpha 0.8)
               -- seed 001 detaches *both* terms and so trains nothing; here each term keeps one side.
    dreamerv3  dyn_scale max(free, KL(sg(post) || prior)) + rep_scale max(free, KL(post || sg(prior)))
               (0.5 / 0.1, free bits 1): `dyn` moves only the prior, `rep` only the posterior/encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cpcrl.errors import ConfigError
from cpcrl.nets.rssm import RSSM, State, detach_state

KL_STRATEGIES = ("regular", "free_bits", "balanced", "dreamerv3")


@dataclass
class KLConfig:
    strategy: str = "free_bits"
    free_nats: float = 3.0        # free_bits, dreamerv3 (and balanced, per term, when > 0)
    balance_alpha: float = 0.8    # balanced: weight of the prior-side term
    dyn_scale: float = 0.5        # dreamerv3
    rep_scale: float = 0.1        # dreamerv3

    def __post_init__(self):
        if self.strategy not in KL_STRATEGIES:
            raise ConfigError(f"world_model.kl.strategy={self.strategy!r}: valid are {', '.join(KL_STRATEGIES)}")
        if self.free_nats < 0:
            raise ConfigError(f"world_model.kl.free_nats={self.free_nats}: must be >= 0")
        if not 0.0 <= self.balance_alpha <= 1.0:
            raise ConfigError(f"world_model.kl.balance_alpha={self.balance_alpha}: must be in [0, 1]")

    @classmethod
    def from_config(cls, cfg) -> KLConfig:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"world_model.kl: unknown keys {sorted(unknown)}; valid are "
                              f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**cfg)


def kl_per_step(rssm: RSSM, post: State, prior: State, cfg: KLConfig) -> Tensor:
    """The KL term of the chosen strategy per step `[...]` (before the mean); see the module docstring."""
    free = cfg.free_nats
    if cfg.strategy == "regular":
        return rssm.kl(post, prior)
    if cfg.strategy == "free_bits":
        return rssm.kl(post, prior).clamp(min=free)
    dyn = rssm.kl(detach_state(post), prior)   # trains the prior (dynamics) only
    rep = rssm.kl(post, detach_state(prior))   # trains the posterior (representation) only
    if cfg.strategy == "balanced":
        return cfg.balance_alpha * dyn.clamp(min=free) + (1 - cfg.balance_alpha) * rep.clamp(min=free)
    return cfg.dyn_scale * dyn.clamp(min=free) + cfg.rep_scale * rep.clamp(min=free)


def kl_loss(rssm: RSSM, post: State, prior: State, cfg: KLConfig) -> tuple[Tensor, Tensor]:
    """-> (loss, raw): the strategy's loss and the plain mean KL(post || prior) (for `wm/kl_raw`)."""
    raw = rssm.kl(detach_state(post), detach_state(prior)).mean()
    return kl_per_step(rssm, post, prior, cfg).mean(), raw


def overshooting_kl(rssm: RSSM, post: State, prior: State, actions: Tensor, is_first: Tensor, distance: int,
                    beta: float, cfg: KLConfig) -> Tensor:
    """Latent overshooting (PlaNet, eq. 7): `(1/D) sum_{d=1..D} beta_d E[KL(q(s_t) || p(s_t | s_{t-d}))]`.

    d = 1 is the ordinary term (`beta_1 = 1`, gradients into both sides), so D = 1 equals `kl_loss`.
    For d >= 2 the prior is rolled d-1 further steps open-loop from every posterior at once, the
    posterior target is stop-gradient (it should not move towards worse multi-step predictions),
    `beta_d = beta`, and pairs whose span crosses an episode start are masked out.
    post, prior: states `[T, B]`; actions `[T, B, A]` (a_{t-1}); is_first `[T, B]`.
    """
    if distance < 1:
        raise ConfigError(f"agent.overshooting_distance={distance}: must be >= 1 (1 = no overshooting)")
    total = kl_per_step(rssm, post, prior, cfg).mean()
    steps, target = actions.shape[0], detach_state(post)
    state, valid = post, torch.ones_like(is_first, dtype=torch.bool)
    for d in range(1, min(distance, steps - 1) + 1):
        # state[i] predicted time i+d-1 from the posterior at i; one prior step more -> time i+d (i < T-d)
        state = rssm.img_step({k: v[: steps - d] for k, v in state.items()}, actions[d:])
        valid = valid[: steps - d] & ~is_first[d:].to(torch.bool)
        if d >= 2:  # d = 1 is `prior` itself, counted above
            kl = kl_per_step(rssm, {k: v[d:] for k, v in target.items()}, state, cfg)
            total = total + beta * (kl * valid).sum() / valid.sum().clamp(min=1)
    return total / distance


# --- observation, reward and continue likelihoods ---------------------------------------------------------

def gaussian_nll(pred: Tensor, target: Tensor, event_dims: int = 1) -> Tensor:
    """-log N(target; pred, 1) without the constant: 0.5 * squared error summed over the event dims, `[...]`."""
    return 0.5 * (pred - target).pow(2).flatten(-event_dims).sum(-1)


def onehot_nll(logits: Tensor, target: Tensor, groups: list[tuple[int, int]]) -> Tensor:
    """Cross-entropy of flat one-hot groups, e.g. the cube's 24x6 stickers then 4x12 past actions.

    logits, target `[..., sum(n * k)]`; each group of n one-hots of k classes is a softmax per one-hot.
    An all-zero target row (no past action yet) contributes 0. Returns `[...]` (summed over groups).
    """
    total, start = 0.0, 0
    for n, k in groups:
        lg = logits[..., start:start + n * k].unflatten(-1, (n, k))
        tg = target[..., start:start + n * k].unflatten(-1, (n, k))
        total = total - (tg * F.log_softmax(lg, -1)).sum((-2, -1))
        start += n * k
    return total


def reward_loss(pred: Tensor, reward: Tensor) -> Tensor:
    """MSE of the reward head: scalar."""
    return (pred - reward).pow(2).mean()


def continue_loss(logits: Tensor, is_terminal: Tensor) -> Tensor:
    """Bernoulli NLL of 'the episode goes on' (discount head): scalar."""
    return F.binary_cross_entropy_with_logits(logits, 1.0 - is_terminal.to(logits.dtype))
