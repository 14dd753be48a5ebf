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

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import Tensor, nn

from cpcrl.checks import Params, non_negative, one_of, param, positive, positive_int, unit_interval
from cpcrl.envs.spaces import IMAGE
from cpcrl.errors import ConfigError
from cpcrl.nets.codecs import DecoderConfig, EncoderConfig, HeadConfig, pixel_target
from cpcrl.nets.mlp import ACTIVATIONS, NORMS
from cpcrl.nets.rssm import GRUS, KINDS, RSSM, State, detach_state, map_state

KL_STRATEGIES = ("regular", "free_bits", "balanced", "dreamerv3")


@dataclass
class KLConfig(Params):
    key = "world_model.kl"
    strategy: str = param("free_bits", one_of(*KL_STRATEGIES))  # see the module docstring
    free_nats: float = param(3.0, non_negative)       # free_bits, dreamerv3 (and balanced, per term, when > 0)
    balance_alpha: float = param(0.8, unit_interval)  # balanced: weight of the prior-side term
    dyn_scale: float = param(0.5, non_negative)       # dreamerv3: weight of KL(sg(post) || prior)
    rep_scale: float = param(0.1, non_negative)       # dreamerv3: weight of KL(post || sg(prior))


@dataclass
class WorldModelConfig(Params):
    """world_model=rssm_gaussian | rssm_discrete: the RSSM (cpcrl.nets.rssm), its encoder, decoder and heads,
    and its KL. Defaults are PlaNet's (Gaussian, 200 units, free nats 3); rssm_discrete.yaml changes the rest."""

    key = "world_model"
    name: str = MISSING
    kind: str = param("gaussian", one_of(*KINDS))  # gaussian (PlaNet, Dreamer v1) | categorical (Dreamer v2/v3)
    deter: int = param(200, positive_int)     # GRU state h
    stoch: int = param(30, positive_int)      # gaussian: latent s size
    latents: int = param(32, positive_int)    # categorical: one-hots per state
    classes: int = param(32, positive_int)    # categorical: classes per one-hot
    unimix: float = param(0.01, unit_interval)  # categorical: uniform mixture in prior and posterior
    min_std: float = param(0.1, positive)     # gaussian: std = softplus(raw) + min_std
    hidden: int = param(200, positive_int)    # width of the RSSM's input, prior and posterior layers
    activation: str = param("elu", one_of(*ACTIVATIONS))  # RSSM and heads (Dreamer: actor and critic too)
    # after every hidden layer of the encoder, decoder, RSSM and heads (Dreamer: actor and critic too), see
    # cpcrl.nets.mlp: none (PlaNet, Dreamer v1) | layer (DreamerV3: Linear without bias -> LayerNorm -> activation)
    norm: str = param("none", one_of(*NORMS))
    gru: str = param("plain", one_of(*GRUS))  # plain (nn.GRUCell) | layernorm (DreamerV3's cell, cpcrl.nets.rssm)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # MLP for vectors; conv for 3x64x64 images
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)          # reward and continue heads
    kl: KLConfig = field(default_factory=KLConfig)


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

def gaussian_nll(pred: Tensor, target: Tensor, event_dims: int = 1, scale: float = 0.5) -> Tensor:
    """-log N(target; pred, 1) without the constant: 0.5 * squared error summed over the event dims, `[...]`.
    `scale` 1 gives DreamerV3's plain squared error (`world_model.decoder.mse_scale`)."""
    return scale * (pred - target).pow(2).flatten(-event_dims).sum(-1)


def onehot_nll(logits: Tensor, target: Tensor, groups: list[tuple[int, int]], scale: float = 0.5) -> Tensor:
    """Cross-entropy of flat one-hot groups, e.g. the cube's 24x6 stickers then 4x12 past actions.

    logits, target `[..., sum(n * k)]`; each group of n one-hots of k classes is a softmax per one-hot.
    An all-zero target row (no past action yet) contributes 0. A group `(d, 0)` is d real values (the Box parts
    of an encoded Tuple/Dict observation, `cpcrl.envs.spaces`): `gaussian_nll`; a group `(d, IMAGE)` one frame's d
    pixels (0..255), predicted in [-0.5, 0.5] (`PartsDecoder`): `gaussian_nll` there, as for a plain image
    (both with the squared-error weight `scale`).
    Returns `[...]` (summed over groups).
    """
    total, start = 0.0, 0
    for n, k in groups:
        if k in (0, IMAGE):
            piece = target[..., start:start + n]
            total = total + gaussian_nll(logits[..., start:start + n].float(), pixel_target(piece) if k else piece,
                                         scale=scale)
            start += n
            continue
        lg = logits[..., start:start + n * k].unflatten(-1, (n, k))
        tg = target[..., start:start + n * k].unflatten(-1, (n, k))
        total = total - (tg * F.log_softmax(lg, -1)).sum((-2, -1))
        start += n * k
    return total


def continue_loss(logits: Tensor, is_terminal: Tensor) -> Tensor:
    """Bernoulli NLL of 'the episode goes on' (discount head): scalar."""
    return F.binary_cross_entropy_with_logits(logits, 1.0 - is_terminal.to(logits.dtype))


# --- the model loss of PlaNet and Dreamer ---------------------------------------------------------------------

def world_model_loss(batch: dict[str, Tensor], encoder: nn.Module, rssm: RSSM, decoder: nn.Module,
                     reward_nll: Callable[[Tensor, Tensor], Tensor], continue_head: nn.Module | None,
                     kl_cfg: KLConfig, onehot_groups: list | None = None,
                     transform: Callable[[Tensor], Tensor] = lambda x: x, overshooting_distance: int = 1,
                     overshooting_beta: float = 1.0) -> tuple[Tensor, State, State, dict[str, Tensor]]:
    """Filter a replayed batch `[L, B]` through the RSSM and score it (module docstrings of PlaNet and Dreamer):

        post, prior    = rssm.observe(encoder(x_t), a_{t-1}, is_first)          x_t = transform(o_t)
        reconstruction = -log N(x_t; decoder(f_t), 1)  or the one-hot cross-entropy per group
                         (squared errors weighted by decoder.mse_scale: 0.5 = this NLL, 1 = DreamerV3)
        reward         = reward_nll(f_t, r_t), mean over steps that are not an episode start
        continue       = BCE(continue_head(f_t), not terminal_t)                  (0 without a head)
        kl             = the KL strategy, with latent overshooting when overshooting_distance > 1
        model          = reconstruction + reward + continue + kl

    `reward_nll(features, rewards)` is per step (MSE for PlaNet, the reward head's NLL for Dreamer).
    -> (model loss, posterior states, prior states, metrics as tensors)."""
    obs, actions, rewards = batch["obs"], batch["action"], batch["reward"]
    is_first, is_terminal = batch["is_first"], batch["is_terminal"]

    post, prior = rssm.observe(encoder(transform(obs.float())), actions, is_first)
    features = rssm.features(post)

    prediction = decoder(features)
    if onehot_groups:
        reconstruction = onehot_nll(prediction, obs, onehot_groups, decoder.mse_scale).mean()
    else:
        reconstruction = gaussian_nll(prediction.float(), transform(decoder.target(obs)),
                                      event_dims=obs.dim() - 2, scale=decoder.mse_scale).mean()
    # r_t arrives with o_t; an episode start has none (stored as 0). A masked mean, not a boolean index,
    # so the shape is static (no device->host sync).
    has_reward = (~is_first).float()
    reward = (reward_nll(features, rewards) * has_reward).sum() / has_reward.sum().clamp(min=1)
    cont = (continue_loss(continue_head(features).float(), is_terminal) if continue_head is not None
            else torch.zeros((), device=features.device))
    # KL in fp32 even under bf16 autocast: bf16 softmaxes miss the simplex check of torch.distributions
    post32, prior32 = map_state(lambda x: x.float(), post), map_state(lambda x: x.float(), prior)
    kl, kl_raw = kl_loss(rssm, post32, prior32, kl_cfg)
    if overshooting_distance > 1:
        kl = overshooting_kl(rssm, post32, prior32, actions, is_first, overshooting_distance, overshooting_beta,
                             kl_cfg)
    model = reconstruction + reward + cont + kl
    return model, post, prior, {"loss/model": model, "loss/reconstruction": reconstruction, "loss/reward": reward,
                         "loss/continue": cont, "loss/kl": kl, "wm/kl_raw": kl_raw}
