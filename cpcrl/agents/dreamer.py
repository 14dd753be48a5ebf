"""Dreamer (Hafner et al. 2020, v1; 2023, v3-style): learn an RSSM world model from replayed sequences, then
an actor and a critic purely from imagined rollouts in its latent space.

Versions (`agent.version`, checked against `world_model.kind`):
    v1  Gaussian RSSM, free nats 3; tanh-normal actor trained by backpropagating the lambda-returns
        through the learned dynamics; MSE reward and value heads; gamma 0.99; lrs 6e-4 / 8e-5 / 8e-5.
    v3  categorical RSSM (unimix 1%), dyn/rep KL; LayerNorm + SiLU after every hidden layer of every net and
        the normalised GRU (world_model.norm=layer, gru=layernorm, activation=silu); symlog vector observations
        with a plain squared error (decoder.mse_scale 1); two-hot (255 bins) reward and value heads; returns
        divided by max(1, EMA of their 5th-95th percentile range); entropy 3e-4; slow critic (EMA 0.98) as a
        regulariser; REINFORCE for discrete actions, backprop for continuous; gamma 1 - 1/333; terminal
        imagination starts weighted 0. docs/BENCHMARKS.md (Dreamer, DreamerV3 parity): each detail next to
        DreamerV3's.

Actions: Box (tanh-normal), Discrete (a categorical over one-hots) and MultiDiscrete (one categorical per factor,
unimix per factor; the action vector is the factors' concatenated one-hots, which the world model reads, and it
is sampled straight-through per factor, so log pi(a) and the entropy are the sums over the factors). Per-factor
action masks from the env (`info["action_mask"]`) are honoured when acting; imagination has none.

Schedule (`train_iteration`): prefill the replay with uniform random actions, then per iteration
`collect_steps` policy steps of the vector env and `train_ratio` replayed steps per env step worth of updates
(`train_ratio * env_steps / (batch_size * seq_len)`, the fraction carried over).

One update, time-major `[L, B]` batch, states as in `cpcrl.nets.rssm`:

  World model (as PlaNet, `cpcrl.objectives.world_model`):
    post, prior    = rssm.observe(encoder(x_t), a_{t-1}, is_first)        x_t = symlog(o_t) for v3 vectors
    reconstruction = -log N(x_t; decoder(f_t), 1)           reward = -log p(r_t | f_t)  (not at episode starts)
    continue       = BCE(continue_head(f_t), not terminal)  kl = the world model's KL strategy
    model          = reconstruction + reward + continue + kl

  Behaviour, from every posterior state of the batch (N = L*B starts, stop-gradient; or a random subset of
  `imag_starts` of them, the CPU knob: imagination costs ~8x the model update per start), horizon H:
    s_0 = post;  a_k ~ pi(f_k);  s_{k+1} ~ p(s | s_k, a_k)                    (prior only, no observation)
    r_k, c_k, v_k = reward(f_k), sigmoid(continue(f_k)), critic(f_k)          k = 0..H
    R_k  = lambda_returns(r, v, c, gamma, 0.95)                              k = 0..H-1, bootstrapped by v_H
    w_k  = sg(c_0 prod_{j=1..k} gamma c_j)       c_0 = 1 - is_terminal of the start (v3; 1 for v1)
    S    = max(1, EMA(q95(R) - q5(R)))                                        (v3; 1 for v1)
    actor  = -mean_k w_k * ( R_k / S                              backprop through the dynamics
                           | log pi(sg(a_k) | f_k) sg((R_k - v_k) / S)   REINFORCE (v3 discrete)
                           + eta H[pi(f_k)] )
    critic = mean_k w_k * ( -log p_v(sg(R_k) | sg(f_k)) + slow_reg * -log p_v(sg(slow_v(f_k)) | sg(f_k)) )
  The actor loss trains only the actor (world model and critic are frozen while it is built); the critic
  trains on the same imagined states with stop-gradient features. The slow critic follows by EMA.
  Under REINFORCE nothing differentiates through the dynamics, so imagination runs without a graph and the
  actor pass made while imagining (on sg(f_k)) and one critic pass over all H+1 states serve the losses
  directly: no second pass over the 1024 x 16 imagined states.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import II, MISSING
from torch import Tensor, nn

from cpcrl.agents.base import AgentConfig
from cpcrl.agents.model_based import ModelBasedAgent
from cpcrl.checks import (
    boolean,
    non_negative,
    non_negative_int,
    one_of,
    optional_positive,
    optional_positive_int,
    optional_unit_interval,
    param,
    positive,
    positive_int,
    unit_interval,
)
from cpcrl.device import autocast, compiled
from cpcrl.errors import ConfigError
from cpcrl.nets.codecs import is_image
from cpcrl.nets.distributions import (
    TanhNormal,
    TwoHotDist,
    factor_indices,
    factor_onehots,
    straight_through_onehot,
    symlog,
    twohot_bins,
    unimix_logits,
)
from cpcrl.nets.mlp import mlp
from cpcrl.nets.rssm import map_state
from cpcrl.objectives.actor_critic import ReturnNormalizer, ema_update, imagination_weights
from cpcrl.objectives.returns import lambda_returns
from cpcrl.objectives.world_model import world_model_loss

VERSIONS = ("v1", "v3")
WORLD_MODEL_KIND = {"v1": "gaussian", "v3": "categorical"}
V1_ACTOR_KEYS = ("actor_init_std", "actor_mean_scale", "actor_min_std")  # the v1 tanh-normal's


@dataclass
class DreamerConfig(AgentConfig):
    """Dreamer. `version` and the keys marked (version) come from a preset, conf/agent/dreamer_version/v1|v3.yaml
    (`agent.version=v1` on the command line is short for `agent/dreamer_version=v1`); the network sizes from
    conf/agent/dreamer_size/*.yaml (they set world_model dims; `world_model.*=...` on the command line wins)."""

    _target_: str = "cpcrl.agents.dreamer.Dreamer"
    name: str = "dreamer"
    seed: int | None = II("seed")                       # of the replay sampler
    version: str = param(MISSING, one_of(*VERSIONS))       # v1 | v3: set by the dreamer_version preset
    train_ratio: float = param(64.0, positive)  # replayed steps per env step: updates = ratio * steps / (B * L)
    batch_size: int = param(16, positive_int)   # chunks per update
    seq_len: int = param(64, positive_int)      # steps per chunk; imagination starts from all B * L posteriors
    imag_starts: int | None = param(None, optional_positive_int)  # imagine from this many random starts; null: all
    horizon: int = param(15, positive_int)      # imagined steps
    lam: float = param(0.95, unit_interval)     # lambda of the lambda-returns
    prefill: int = param(1000, non_negative_int)  # replay steps of uniform random actions before the first update
    collect_steps: int = param(1, positive_int)   # vector-env steps per train_iteration
    # greedy acting (eval): the posterior latents' mode, or a sample as in training (DreamerV3 evaluates on samples)
    eval_latents: str = param("mode", one_of("mode", "sample"))
    # auto (v1: backprop; v3: REINFORCE if discrete, backprop if continuous) | reinforce | backprop
    actor_gradient: str = param("auto", one_of("auto", "reinforce", "backprop"))
    return_ema_decay: float = param(0.99, unit_interval)   # v3 return normaliser: EMA of the 5th/95th percentiles
    return_scale_floor: float = param(1.0, positive)       #   scale = max(floor, p95 - p5)
    precision: str = II("device.precision")                # bf16: autocast around the losses (cpcrl.device)
    replay_capacity: int = param(1_000_000, positive_int)  # steps
    save_replay: bool = False                   # put the replay into checkpoints (a resumed run keeps its data)
    gamma: float = param(MISSING, unit_interval)                 # (version) discount
    model_lr: float = param(MISSING, positive)                   # (version)
    actor_lr: float = param(MISSING, positive)                   # (version)
    critic_lr: float = param(MISSING, positive)                  # (version)
    model_adam_eps: float = param(MISSING, positive)             # (version) the world model's Adam
    adam_eps: float = param(MISSING, positive)                   # (version) the actor's and critic's Adam
    model_grad_clip: float | None = param(MISSING, optional_positive)  # (version) null: no clipping
    ac_grad_clip: float | None = param(MISSING, optional_positive)     # (version) actor and critic
    entropy: float = param(MISSING, non_negative)                # (version) entropy bonus eta
    expl_noise: float = param(MISSING, non_negative)             # (version) Gaussian std / epsilon (discrete)
    # (version) EMA decay of the slow critic; null: none
    slow_critic_decay: float | None = param(MISSING, optional_unit_interval)
    slow_reg: float = param(MISSING, non_negative)               # (version) weight of the slow-critic regulariser
    return_norm: bool = param(MISSING, boolean)                  # (version) divide returns by the percentile scale
    twohot: bool = param(MISSING, boolean)      # (version) two-hot (255 symlog bins) reward and value heads
    unimix: float = param(MISSING, unit_interval)                # (version) uniform mixture in the discrete policy
    symlog_obs: bool = param(MISSING, boolean)  # (version) symlog the vector observations (not images or one-hots)
    # v1 only (v3's std is in [0.1, 1]), the tanh-normal actor: pre-tanh mean = s tanh(m / s),
    # std = softplus(x + softplus^-1(init_std)) + min_std; DreamerV1's s = init_std = 5, min_std 1e-4
    actor_init_std: float = param(5.0, positive)
    actor_mean_scale: float = param(5.0, positive)
    actor_min_std: float = param(1e-4, positive)

    def check(self):
        super().check()
        if self.version == "v3":
            # the v1 actor's keys would be silently ignored: refuse them unless left at their defaults
            changed = [f.name for f in fields(self) if f.name in V1_ACTOR_KEYS and getattr(self, f.name) != f.default]
            if changed:
                raise ConfigError(f"agent.{changed[0]}={getattr(self, changed[0])!r} applies to agent.version=v1 "
                                  "only (v3's continuous actor has its std in [0.1, 1]); leave it unset or use "
                                  "agent.version=v1")

    def check_world_model(self, world_model):
        if world_model.kind != WORLD_MODEL_KIND[self.version]:
            want = "rssm_gaussian" if self.version == "v1" else "rssm_discrete"
            raise ConfigError(f"agent.version={self.version} needs world_model={want} (a "
                              f"{WORLD_MODEL_KIND[self.version]} RSSM), got world_model={world_model.name} "
                              f"({world_model.kind})")


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """No parameter gradients for `modules` inside (gradients still flow *through* them to their inputs)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# --- heads and the policy -------------------------------------------------------------------------------------

class ScalarHead(nn.Module):
    """Reward or value: two-hot over 255 symlog bins (v3, output zero-initialised so it starts at 0) or a
    unit-variance Gaussian mean (v1)."""

    def __init__(self, feature_dim: int, units: int, layers: int, activation: str, twohot: bool,
                 norm: str = "none"):
        super().__init__()
        self.twohot = twohot
        self.net = mlp(feature_dim, [units] * layers, 255 if twohot else 1, activation, norm)
        if twohot:
            nn.init.zeros_(self.net[-1].weight), nn.init.zeros_(self.net[-1].bias)
            self.register_buffer("bins", twohot_bins(255))

    def forward(self, features: Tensor) -> Tensor:
        """The raw output (logits or mean), to read with `mean_of` / `nll_of` without a second pass."""
        return self.net(features)

    def mean_of(self, out: Tensor) -> Tensor:
        return TwoHotDist(out.float(), self.bins).mean if self.twohot else out.squeeze(-1)

    def nll_of(self, out: Tensor, target: Tensor) -> Tensor:
        if self.twohot:
            return -TwoHotDist(out.float(), self.bins).log_prob(target)
        return 0.5 * (out.squeeze(-1) - target).pow(2)

    def predict(self, features: Tensor) -> Tensor:
        return self.mean_of(self(features))

    def nll(self, features: Tensor, target: Tensor) -> Tensor:
        return self.nll_of(self(features), target)


class OneHotPolicy:
    """Independent categoricals over one-hot actions, one per factor (`factors`: classes per factor; one factor for
    Discrete actions). `log_probs [..., sum(factors)]` are each factor's log-probs (unimix and mask applied), so
    for an action of concatenated one-hots `log_prob` (a dot product) and `entropy` are sums over the factors.
    `rsample` is straight-through per factor."""

    def __init__(self, log_probs: Tensor, factors: list[int]):
        self.log_probs, self.factors = log_probs, factors

    def rsample(self) -> Tensor:
        return torch.cat([straight_through_onehot(lp, 0.0)[0] for lp in self.log_probs.split(self.factors, -1)], -1)

    def log_prob(self, action: Tensor) -> Tensor:
        return (action * self.log_probs).sum(-1)

    def entropy(self) -> Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    @property
    def mode(self) -> Tensor:
        return factor_onehots(factor_indices(self.log_probs, self.factors), self.factors).to(self.log_probs)


class SquashedPolicy(TanhNormal):
    def entropy(self) -> Tensor:
        return self.sample_entropy()  # no closed form under tanh: a one-sample estimate


class Actor(nn.Module):
    """features -> policy. Discrete / MultiDiscrete (`factors`: classes per factor): a unimix categorical per
    factor. Continuous (`factors` None): tanh-normal, v1 (mean s tanh(m/s), std softplus(x + softplus^-1(init_std))
    + min_std; DreamerV1's s = init_std = 5 is wide at the start) or v3 (std in [0.1, 1])."""

    def __init__(self, feature_dim: int, action_dim: int, factors: list[int] | None, units: int, layers: int,
                 activation: str, version: str, unimix: float, norm: str, init_std: float, mean_scale: float,
                 min_std: float):
        super().__init__()
        self.factors, self.version, self.unimix = factors, version, unimix
        # softplus(raw_init_std) = init_std: a zero output starts at init_std + min_std (as in DreamerV1)
        self.mean_scale, self.min_std, self.raw_init_std = mean_scale, min_std, math.log(math.expm1(init_std))
        self.net = mlp(feature_dim, [units] * layers, action_dim if factors else 2 * action_dim, activation, norm)

    def forward(self, features: Tensor, action_mask: Tensor | None = None):
        return self.policy(self.net(features), action_mask)

    def policy(self, out: Tensor, action_mask: Tensor | None = None):
        """The distribution from the raw output of `net`."""
        out = out.float()
        if self.factors:
            masks = [None] * len(self.factors) if action_mask is None else action_mask.bool().split(self.factors, -1)
            log_probs = []
            for logits, mask in zip(out.split(self.factors, -1), masks):
                factor = unimix_logits(logits, self.unimix)
                if mask is not None:  # acting only: imagination has no masks
                    factor = factor.masked_fill(~mask, torch.finfo(out.dtype).min).log_softmax(-1)
                log_probs.append(factor)
            return OneHotPolicy(torch.cat(log_probs, -1), self.factors)
        mean, std = out.chunk(2, -1)
        if self.version == "v1":
            return SquashedPolicy(self.mean_scale * torch.tanh(mean / self.mean_scale),
                                  F.softplus(std + self.raw_init_std) + self.min_std)
        return SquashedPolicy(mean, 0.9 * torch.sigmoid(std + 2.0) + 0.1)


# --- the agent ------------------------------------------------------------------------------------------------

class Dreamer(ModelBasedAgent):
    name = "dreamer"
    Config = DreamerConfig
    compiled_steps = "the RSSM's obs_step and img_step, and the imagination step (actor + prior)"

    def __init__(self, obs_space, action_space, device, cfg: DreamerConfig, world_model):
        super().__init__(obs_space, action_space, device)
        self.cfg = cfg
        # v1 backpropagates through the dynamics for every action space (straight-through for one-hots);
        # v3 uses REINFORCE where the action is categorical (Discrete, MultiDiscrete) and backprop where continuous.
        self.backprop = (cfg.actor_gradient == "backprop" or
                         (cfg.actor_gradient == "auto" and (cfg.version == "v1" or self.continuous)))

        # world model; the actor and critic have the heads' sizes, activation and norm
        units, layers, activation = world_model.heads.hidden, world_model.heads.layers, world_model.activation
        norm = world_model.norm
        self.build_world_model(obs_space, world_model,
                               lambda f: ScalarHead(f, units, layers, activation, cfg.twohot, norm))
        self.symlog_obs = cfg.symlog_obs and not is_image(obs_space) and not self.onehot_groups

        # behaviour
        feature_dim = self.rssm.feature_dim
        self.actor = Actor(feature_dim, self.action_dim, self.action_factors, units, layers, activation, cfg.version,
                           cfg.unimix, norm, cfg.actor_init_std, cfg.actor_mean_scale,
                           cfg.actor_min_std)
        self.critic = ScalarHead(feature_dim, units, layers, activation, cfg.twohot, norm)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False) if cfg.slow_critic_decay else None
        self.return_norm = ReturnNormalizer(cfg.return_ema_decay, cfg.return_scale_floor, enabled=cfg.return_norm)
        self.to(device)

        self.world_model_modules = (self.encoder, self.rssm, self.decoder, self.reward_head, self.continue_head)
        model_params = [p for m in self.world_model_modules for p in m.parameters()]
        self.optimizers["model"] = torch.optim.Adam(model_params, lr=cfg.model_lr, eps=cfg.model_adam_eps)
        self.optimizers["actor"] = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, eps=cfg.adam_eps)
        self.optimizers["critic"] = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=cfg.adam_eps)
        self.make_replay(cfg.replay_capacity, cfg.seed)
        self._collect = None   # (agent state, previous action, previous reward) between iterations
        self._owed = 0.0       # updates owed by the train ratio (fraction carried over)

    # --- acting -------------------------------------------------------------------------------------------

    def preprocess(self, obs: Tensor) -> Tensor:
        return symlog(obs) if self.symlog_obs else obs

    def initial_state(self, batch_size: int):
        return {"latent": self.rssm.initial(batch_size),
                "action": torch.zeros(batch_size, self.action_dim, device=self.device)}  # one-hot(s) if categorical

    @torch.no_grad()
    def act(self, obs, state, is_first, action_mask=None, explore=True, random=False):
        """Filter the observation into the belief, then sample the policy (`explore`) or take its mode (the
        latents too unless `eval_latents=sample`)."""
        state = self.initial_state(obs.shape[0]) if state is None else state
        action_mask = self.check_action_mask(action_mask)
        embed = self.encoder(self.preprocess(obs.float()))
        post, _ = self.rssm.obs_step(state["latent"], state["action"], embed, is_first,
                                     sample=explore or self.cfg.eval_latents == "sample")
        if random:
            action = self.uniform_action(obs.shape[0], action_mask)
        else:
            policy = self.actor(self.rssm.features(post), action_mask)
            action = policy.rsample() if explore else policy.mode
            if explore and self.cfg.expl_noise > 0:  # v1's exploration noise on top of the policy's own
                action = self.explore(action, action_mask, self.cfg.expl_noise)
        state = {"latent": post, "action": action}
        return self.env_action(action), state

    @torch.no_grad()
    def belief_features(self, obs, state, is_first):
        """RSSM features [deter | stoch] of the posterior mode after obs (given the previous action)."""
        state = self.initial_state(obs.shape[0]) if state is None else state
        post, _ = self.rssm.obs_step(state["latent"], state["action"], self.encoder(self.preprocess(obs.float())),
                                     is_first, sample=False)
        return self.rssm.features(post), {"latent": post, "action": state["action"]}

    @torch.no_grad()
    def policy_scores(self, obs, state, is_first, action_mask=None):
        self.discrete_scores_only()
        state = self.initial_state(obs.shape[0]) if state is None else state
        embed = self.encoder(self.preprocess(obs.float()))
        post, _ = self.rssm.obs_step(state["latent"], state["action"], embed, is_first, sample=False)
        feats = self.rssm.features(post)
        return (self.actor(feats, action_mask).log_probs, self.critic.predict(feats).float(),
                {"latent": post, "action": state["action"]})

    def commit_action(self, state, actions):
        return {"latent": state["latent"], "action": self.action_vector(actions).to(state["action"])}

    def collect(self, collector, steps: int, random: bool) -> None:
        """`steps` vector steps; the replay stores (o_t, a_{t-1}, r_t) per step and each episode's final obs."""
        n = collector.num_envs
        if self._collect is None:
            self._collect = (self.initial_state(n), np.zeros((n, self.action_dim), np.float32), np.zeros(n))
        state, prev_action, prev_reward = self._collect
        for _ in range(steps):
            first = np.asarray(collector.is_first, dtype=bool)
            self.replay.add_observations(range(n), collector.obs, prev_action, prev_reward, first)
            action, state = self.act(collector.obs_tensor(), state, collector.tensor(first),
                                     collector.tensor(collector.action_mask), True, random)
            step = collector.step(action)
            prev_action, prev_reward = state["action"].cpu().numpy(), step.reward
            self.replay.add_final_observations(step, prev_action, step.reward)
        self._collect = (state, prev_action, prev_reward)

    # --- learning the world model ---------------------------------------------------------------------------

    def model_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict, dict[str, Tensor]]:
        """-> (loss, posterior states [L, B], metrics): `world_model_loss` on symlog observations (v3 vectors)."""
        model, post, _, metrics = world_model_loss(batch, self.encoder, self.rssm, self.decoder,
                                                   self.reward_head.nll, self.continue_head, self.kl_cfg,
                                                   self.onehot_groups, self.preprocess)
        return model, post, metrics

    # --- learning behaviour in imagination ------------------------------------------------------------------

    def imagine(self, start: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Roll the policy in the prior from `start` [N] for `horizon` steps, reading no observation. Returns the
        features of steps 0..H ([H+1, N, F], step 0 = start), the actions taken in steps 0..H-1 ([H, N, A])
        and, under REINFORCE, the actor's raw outputs for those steps with their gradient ([H, N, .]; None
        under backprop). Only features are kept: the behaviour losses read nothing else of a state."""
        with torch.set_grad_enabled(self.backprop and torch.is_grad_enabled()):
            state, features, actions, outs = start, [self.rssm.features(start)], [], []
            for _ in range(self.cfg.horizon):
                action, out, state, next_features = self.imagine_step(state, features[-1])
                actions.append(action), features.append(next_features)
                if out is not None:
                    outs.append(out)
        return torch.stack(features), torch.stack(actions), (torch.stack(outs) if outs else None)

    def imagine_step(self, state: dict[str, Tensor], features: Tensor):
        """One imagined step: act on `features` (the state's), then the prior step. -> (action, the actor's raw
        output with its gradient under REINFORCE or None, the next state, its features). One graph under
        `device.compile`."""
        if self.backprop:  # the gradient flows through the actions and the dynamics
            action, out = self.actor(features).rsample(), None
        else:
            with torch.enable_grad():  # REINFORCE: keep this pass (= actor(sg(f_k))) for the loss
                out = self.actor.net(features)
            action = self.actor.policy(out.detach()).rsample()
        state = self.rssm.img_step(state, action)
        return action, out, state, self.rssm.features(state)

    def compile_steps(self, mode: str) -> None:
        super().compile_steps(mode)
        self.imagine_step = compiled(self.imagine_step, mode)

    def behaviour_loss(self, post: dict[str, Tensor],
                       is_terminal: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """-> (actor loss, critic loss, metrics); the formulas are in the module docstring. `is_terminal [L, B]`
        of the posterior states: v3 gives a terminal start weight 0 (nothing real follows it; DreamerV3 2023)."""
        start = map_state(lambda x: x.detach().flatten(0, 1), post)  # every posterior state of the batch
        start_continue = None
        if self.cfg.version == "v3" and is_terminal is not None:
            start_continue = 1.0 - is_terminal.flatten(0, 1).float()
        if self.cfg.imag_starts and self.cfg.imag_starts < len(start["deter"]):  # or a random subset (CPU budgets)
            pick = torch.randperm(len(start["deter"]), device=start["deter"].device)[: self.cfg.imag_starts]
            start = map_state(lambda x: x[pick], start)
            start_continue = None if start_continue is None else start_continue[pick]
        with frozen(*self.world_model_modules):  # the actor loss trains the actor only
            features, actions, actor_out = self.imagine(start)
            rewards = self.reward_head.predict(features)
            continues = torch.sigmoid(self.continue_head(features).float())
            if self.backprop:  # values on the differentiable path of the returns, critic frozen
                with frozen(self.critic):
                    values = self.critic.predict(features)
                critic_out = self.critic(features[:-1].detach())
            else:  # no gradient in the features: one critic pass serves the returns and the critic loss
                critic_out = self.critic(features)
                values, critic_out = self.critic.mean_of(critic_out.detach()), critic_out[:-1]
            returns = lambda_returns(rewards, values, continues, self.cfg.gamma, self.cfg.lam)  # [H, N], states 0..H-1
            weights = imagination_weights(continues, self.cfg.gamma, start_continue)
            scale = self.return_norm(returns)

            if self.backprop:  # the gradient reaches the actor through rewards, values and the dynamics
                policy = self.actor(features[:-1].detach())
                objective = returns / scale
            else:              # REINFORCE with the critic as baseline
                policy = self.actor.policy(actor_out)  # = actor(sg(f_k)): the pass made while imagining
                advantage = (returns - values[:-1]) / scale
                objective = policy.log_prob(actions.detach()) * advantage.detach()
            entropy = policy.entropy()
            actor_loss = -(weights * (objective + self.cfg.entropy * entropy)).mean()

        value_features, target = features[:-1].detach(), returns.detach()
        critic_loss = self.critic.nll_of(critic_out, target)
        if self.slow_critic is not None:  # pull towards the slow critic: a trust region for the value
            critic_loss = critic_loss + self.cfg.slow_reg * self.critic.nll_of(
                critic_out, self.slow_critic.predict(value_features).detach())
        critic_loss = (weights * critic_loss).mean()
        return actor_loss, critic_loss, {"loss/actor": actor_loss, "loss/critic": critic_loss,
                                         "dreamer/imagined_return": returns.detach().mean(),
                                         "dreamer/value": values.detach().mean(),
                                         "dreamer/return_scale": scale, "dreamer/entropy": entropy.detach().mean()}

    def update(self) -> dict[str, Tensor]:
        """One model update and one actor-critic update. Returns tensors: no host sync in here."""
        cfg = self.cfg
        batch = self.replay.sample(cfg.batch_size, cfg.seq_len, self.device)
        with autocast(self.device, cfg.precision):
            model_loss, post, metrics = self.model_loss(batch)
        model_params = [p for m in self.world_model_modules for p in m.parameters()]
        (metrics["wm/grad_norm"],) = self.optimizer_step(["model"], model_loss, [(model_params, cfg.model_grad_clip)])

        with autocast(self.device, cfg.precision):
            actor_loss, critic_loss, ac_metrics = self.behaviour_loss(post, batch["is_terminal"])
        metrics["dreamer/actor_grad_norm"], metrics["dreamer/critic_grad_norm"] = self.optimizer_step(
            ["actor", "critic"], actor_loss + critic_loss,
            [(self.actor.parameters(), cfg.ac_grad_clip), (self.critic.parameters(), cfg.ac_grad_clip)])
        if self.slow_critic is not None:
            ema_update(self.slow_critic, self.critic, cfg.slow_critic_decay)
        return {**metrics, **ac_metrics}

    def train_iteration(self, collector) -> dict[str, float]:
        cfg = self.cfg
        while len(self.replay) < max(cfg.prefill, cfg.seq_len):  # also after a resume without the replay
            self.collect(collector, 1, random=True)
        self.collect(collector, cfg.collect_steps, random=False)
        self._owed += cfg.collect_steps * collector.num_envs * cfg.train_ratio / (cfg.batch_size * cfg.seq_len)
        updates, self._owed = int(self._owed), self._owed - int(self._owed)
        out = {"train/replay_steps": float(len(self.replay))}
        if updates == 0:
            return out
        t0 = time.perf_counter()
        history = [self.update() for _ in range(updates)]
        metrics = {k: torch.stack([h[k].float() for h in history]).mean() for k in history[0]}
        out.update({k: v.item() for k, v in metrics.items()})  # the one host sync, after the updates
        out["perf/updates_per_s"] = updates / max(time.perf_counter() - t0, 1e-9)
        return out

    # --- checkpoints ----------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "owed": torch.tensor(self._owed)}

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self._owed = float(state.get("owed", 0.0))
