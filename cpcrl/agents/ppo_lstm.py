"""Recurrent PPO (seed 004): an LSTM belief shared by actor and critic, truncated BPTT over stored states.

Rollout: `num_steps` steps per env. Each env's hidden state is carried across rollout boundaries and zeroed
exactly where an episode starts (inside the recurrence, step by step). The state *before* each step's obs is
stored, so the update can restart any chunk from it.

Targets: GAE(lambda) via `cpcrl.objectives.returns.gae`. `next_values[t]` is V(s_{t+1}) for a running
episode, V(final_obs) computed with the post-step hidden state (before the reset) on truncation, and
irrelevant (gae multiplies it by 0) on termination; see `next_values_from`.

Update: the rollout `[T, B]` is cut per env into `T / truncation_length` chunks, each restarted from its
stored state (truncated BPTT; resets inside a chunk zero the state); `update_epochs` passes over shuffled
minibatches of chunks; clipped surrogate + (optionally clipped) value loss - entropy bonus; advantages
normalised per minibatch; gradients clipped to `max_grad_norm`; linear lr annealing over `total_steps`;
optional early stop when the approximate KL exceeds `target_kl`. Each minibatch runs its chunks through
`LSTMBelief.sequence`: one `nn.LSTM` call when no episode starts inside, else one input projection for all
steps and a masked recurrence (see cpcrl/nets/recurrent.py for the measured alternatives).

Observation normalisation (optional) uses running statistics frozen during a rollout and updated once after
it, so every stored obs/value of a rollout saw the same statistics; reward normalisation (optional) divides
rewards by the running std of the discounted return. Both live in buffers, so checkpoints carry them.

Actions: discrete via `MaskedCategorical` (env action masks honoured), MultiDiscrete via `FactorisedCategorical`
(one per factor, masks per factor); continuous via a diagonal Gaussian
with a state-independent log-std, the sample clipped to [-1, 1] for the env and the log-prob taken of the
unclipped sample (the stable-baselines3 way: the PPO ratio stays exact, no tanh Jacobian).

`world_model=none` or `recurrent=false` swaps the LSTM for an MLP layer (`MLPBelief`): the feed-forward
ActorCritic of the seed's A/B comparison.
`separate_critic_lstm=true` gives the critic its own encoder + LSTM (`TwinBelief`, sb3-contrib's default):
stored states are the two side by side, so rollout storage and chunk restarts are unchanged.
`sde_sample_freq=k` (continuous actions) explores with gSDE: the noise is `latent @ theta`, theta ~ N(0, std^2)
per env redrawn every k rollout steps, and PPO trains the per-step marginal N(mean, latent^2 @ std^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import II
from torch import Tensor, nn

from cpcrl.agents.base import Agent, AgentConfig, NoWorldModel
from cpcrl.checks import (
    non_negative,
    optional_positive,
    optional_positive_int,
    param,
    positive,
    positive_int,
    unit_interval,
)
from cpcrl.errors import ConfigError
from cpcrl.nets.distributions import FactorisedCategorical, MaskedCategorical, diag_normal
from cpcrl.nets.mlp import mlp
from cpcrl.nets.recurrent import LSTMBelief, LSTMConfig, MLPBelief, TwinBelief
from cpcrl.objectives.actor_critic import policy_loss, value_loss
from cpcrl.objectives.returns import gae


@dataclass
class PPOConfig(AgentConfig):
    """Recurrent PPO. Defaults tuned on cartpole_pomdp (sb3-zoo-like: short rollouts, many epochs, normalised obs
    and rewards): greedy eval 500 at 80k-100k steps for seeds 0-2 (conf/experiment/ppo_*.yaml)."""

    _target_: str = "cpcrl.agents.ppo_lstm.PPOLSTM"
    name: str = "ppo_lstm"
    recurrent: bool = True               # false: an MLP layer in place of the LSTM (same encoder and heads)
    total_steps: int = param(II("train.total_steps"), positive_int)  # horizon of the linear lr annealing
    num_steps: int = param(64, positive_int)          # rollout steps per env per iteration
    truncation_length: int = param(8, positive_int)   # BPTT chunk length; must divide num_steps
    update_epochs: int = param(10, positive_int)
    num_minibatches: int = param(2, positive_int)     # minibatches of chunks per epoch
    lr: float = param(0.001, positive)
    anneal_lr: bool = True               # linear to 0 over total_steps
    gamma: float = param(0.99, unit_interval)
    gae_lambda: float = param(0.95, unit_interval)
    clip_coef: float = param(0.2, positive)
    clip_value_loss: bool = False        # true: clip V around the rollout's values (CleanRL); slows value learning
    value_coef: float = param(0.5, non_negative)
    entropy_coef: float = param(0.0, non_negative)
    max_grad_norm: float | None = param(0.5, optional_positive)   # null: no clipping
    target_kl: float | None = param(None, optional_positive)      # early-stop the epochs past this approx KL
    norm_adv: bool = True                # per minibatch
    normalize_obs: bool = True           # running mean/std (saved in checkpoints)
    normalize_reward: bool = True        # divide rewards by the running std of the discounted return
    init_log_std: float = 0.0            # continuous actions: state-independent Gaussian log-std (gSDE: of theta)
    # continuous actions: gSDE exploration, noise = latent @ theta, theta redrawn every k steps; null: plain Gaussian
    sde_sample_freq: int | None = param(None, optional_positive_int)
    head_hidden: int | None = param(None, optional_positive_int)  # actor/critic MLP width; null: lstm_hidden // 2
    separate_critic_lstm: bool = False   # true: the critic has its own encoder + LSTM (sb3-contrib's default)

    def check(self):
        if self.truncation_length > self.num_steps or self.num_steps % self.truncation_length:
            valid = [d for d in range(1, self.num_steps + 1) if self.num_steps % d == 0]
            raise ConfigError(f"agent.truncation_length={self.truncation_length} must divide "
                              f"agent.num_steps={self.num_steps}: valid are {', '.join(map(str, valid))}")


def next_values_from(values: Tensor, last_value: Tensor, dones: Tensor, truncated: Tensor,
                     final_values: Tensor) -> Tensor:
    """`next_values[t]` for `gae`: V(s_{t+1}) inside an episode (values[t+1], or last_value at t = T-1);
    V(final_obs) where the episode was truncated; 0 where it terminated. All `[T, B]` except last_value `[B]`."""
    following = torch.cat([values[1:], last_value.unsqueeze(0)])
    out = torch.where(dones.to(torch.bool), torch.zeros_like(values), following)
    return torch.where(truncated.to(torch.bool), final_values, out)


class RunningNorm(nn.Module):
    """Running mean/var of observations (parallel-algorithm update); buffers, so checkpoints carry them."""

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        b_mean, b_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = b_mean - self.mean, self.count + n
        m2 = self.var * self.count + b_var * n + delta.pow(2) * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean.to(x.dtype), (self.var + self.eps).sqrt().to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)


def _init_linear(module: nn.Module, gain: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)


class PPOLSTM(Agent):
    name = "ppo_lstm"
    Config = PPOConfig
    world_models = {"lstm": LSTMConfig, "none": NoWorldModel}
    multi_discrete_actions = True
    compiled_steps = "the belief's step (encoder + LSTM gates) of the rollout and of acting"

    def __init__(self, obs_space, action_space, device, cfg: PPOConfig, world_model: LSTMConfig | NoWorldModel):
        super().__init__(obs_space, action_space, device)
        if cfg.sde_sample_freq is not None and not self.continuous:
            raise ConfigError("agent.sde_sample_freq (gSDE) needs a continuous (Box) action space; set it to null")
        self.cfg = cfg
        self.recurrent = cfg.recurrent and isinstance(world_model, LSTMConfig)
        # world_model=none: the feed-forward twin, at the lstm world model's sizes
        sizes = world_model if isinstance(world_model, LSTMConfig) else LSTMConfig()
        belief = LSTMBelief if self.recurrent else MLPBelief
        self.belief = belief(self.obs_dim, sizes.hidden, sizes.lstm_hidden, sizes.num_layers)
        if cfg.separate_critic_lstm:  # the critic gets its own encoder + LSTM: features are [actor | critic]
            self.belief = TwinBelief(self.belief, belief(self.obs_dim, sizes.hidden, sizes.lstm_hidden,
                                                         sizes.num_layers))
        feat = sizes.lstm_hidden  # what each head reads: the shared features, or its own half of the twin's
        self._critic_features = slice(feat, None) if cfg.separate_critic_lstm else slice(None)
        head = cfg.head_hidden or feat // 2
        self.actor = mlp(feat, [head], self.action_dim, "relu")
        self.critic = mlp(feat, [head], 1, "relu")
        _init_linear(self.belief.encoder, math.sqrt(2))
        _init_linear(self.actor, math.sqrt(2)), _init_linear(self.critic, math.sqrt(2))
        nn.init.orthogonal_(self.actor[-1].weight, 0.01)
        nn.init.orthogonal_(self.critic[-1].weight, 1.0)
        self._sde_theta = None
        if cfg.sde_sample_freq:  # gSDE: one log-std per (actor hidden unit, action dim)
            self.log_std = nn.Parameter(torch.full((head, self.action_dim), float(cfg.init_log_std)))
        elif self.continuous:
            self.log_std = nn.Parameter(torch.full((self.action_dim,), float(cfg.init_log_std)))
        self.obs_norm = RunningNorm(self.obs_dim) if cfg.normalize_obs else None
        # rewards divided by the running std of the discounted return (VecNormalize / gym NormalizeReward)
        self.ret_norm = RunningNorm(1) if cfg.normalize_reward else None
        self._disc_return = None
        self.to(device)
        self.make_optimizer()
        self._state = None  # the carried per-env state of the training rollout

    def compile_steps(self, mode: str) -> None:
        super().compile_steps(mode)
        self.belief.compile_steps(mode)

    def make_optimizer(self) -> None:
        """One Adam over every parameter (subclasses that add modules call it again)."""
        try:  # the fused kernel is one op per step instead of ~10 per parameter tensor (measured ~1 ms/update here)
            self.optimizers["policy"] = torch.optim.Adam(self.parameters(), lr=self.cfg.lr, eps=1e-5, fused=True)
        except (RuntimeError, TypeError):
            self.optimizers["policy"] = torch.optim.Adam(self.parameters(), lr=self.cfg.lr, eps=1e-5)

    # --- acting --------------------------------------------------------------------------------------------

    def initial_state(self, batch_size: int):
        return self.belief.initial_state(batch_size, self.device)

    def _norm(self, obs: Tensor) -> Tensor:
        return obs if self.obs_norm is None else self.obs_norm(obs)

    def dist(self, features: Tensor, mask: Tensor | None = None):
        features = features[..., : self.actor[0].in_features]
        if self.cfg.sde_sample_freq:
            # gSDE (Raffin et al. 2022): the action noise is latent @ theta with theta ~ N(0, std^2) held for
            # sde_sample_freq steps, so at each step a ~ N(mean, (latent^2) @ std^2) given the (detached) latent
            latent = self.actor[:-1](features)
            variance = latent.detach().pow(2) @ self.log_std.exp().pow(2)
            dist = diag_normal(self.actor[-1](latent), (variance + 1e-6).sqrt())
            dist.sde_latent = latent.detach()
            return dist
        out = self.actor(features)
        if self.discrete:
            return MaskedCategorical(logits=out, mask=mask, validate_args=False)
        if self.multi_discrete:  # one categorical per factor, the mask per factor
            return FactorisedCategorical(out, self.nvec, mask, validate_args=False)
        return diag_normal(out, self.log_std.exp().expand_as(out))

    def sample_sde_noise(self, batch_size: int) -> None:
        """Draw each env's exploration matrix theta ~ N(0, std^2): [B, head, action_dim]."""
        std = self.log_std.detach().exp()
        self._sde_theta = std * torch.randn(batch_size, *std.shape, device=std.device)

    def sample(self, dist, step: int):
        """An exploring action: plain sampling, or under gSDE mean + latent @ theta (theta redrawn every
        sde_sample_freq steps of the rollout)."""
        if not self.cfg.sde_sample_freq:
            return dist.sample()
        batch = dist.sde_latent.shape[0]
        if step % self.cfg.sde_sample_freq == 0 or self._sde_theta is None or self._sde_theta.shape[0] != batch:
            self.sample_sde_noise(batch)
        return dist.mean + (dist.sde_latent.unsqueeze(1) @ self._sde_theta).squeeze(1)

    def value(self, features: Tensor) -> Tensor:
        return self.critic(features[..., self._critic_features]).squeeze(-1)

    def env_action(self, action: Tensor) -> Tensor:
        return action.clamp(-1.0, 1.0) if self.continuous else action

    @torch.no_grad()
    def act(self, obs, state, is_first, action_mask=None, explore=True):
        if is_first is None:
            is_first = torch.zeros(obs.shape[0], dtype=torch.bool, device=obs.device)
        if state is None and self.recurrent:
            state = self.initial_state(obs.shape[0])
        feats, state = self.belief.step(self._norm(obs), state, is_first)
        dist = self.dist(feats, self.check_action_mask(action_mask))
        action = self.sample(dist, 0) if explore else dist.mode
        return self.env_action(action), state

    @torch.no_grad()
    def policy_scores(self, obs, state, is_first, action_mask=None):
        self.discrete_scores_only()
        if state is None and self.recurrent:
            state = self.initial_state(obs.shape[0])
        feats, state = self.belief.step(self._norm(obs), state, is_first)
        return self.dist(feats, self.check_action_mask(action_mask)).logits, self.value(feats), state

    @torch.no_grad()
    def belief_features(self, obs, state, is_first):
        """The LSTM output (the twin's [actor | critic] under separate_critic_lstm; the MLP's for world_model=none)."""
        if state is None and self.recurrent:
            state = self.initial_state(obs.shape[0])
        return self.belief.step(self._norm(obs), state, is_first)

    # --- training ------------------------------------------------------------------------------------------

    def _check_batch(self, num_envs: int) -> None:
        chunks = num_envs * (self.cfg.num_steps // self.cfg.truncation_length)
        if chunks < self.cfg.num_minibatches:
            raise ConfigError(f"agent.num_minibatches={self.cfg.num_minibatches} is more than the {chunks} "
                              "sequences per rollout (env.num_envs * agent.num_steps / agent.truncation_length): "
                              f"valid are 1..{chunks}")

    @torch.no_grad()
    def collect(self, collector) -> dict[str, Tensor]:
        """One rollout of `num_steps` per env; returns time-major `[T, B, ...]` tensors."""
        T, B, dev = self.cfg.num_steps, collector.num_envs, self.device
        if self._state is None or (self.recurrent and self._state[0].shape[1] != B):
            self._state = self.initial_state(B)
        state = self._state
        obs_buf = torch.zeros(T, B, self.obs_dim, device=dev)
        act_shape = (T, B) if self.discrete else (T, B, len(self.nvec) if self.multi_discrete else self.action_dim)
        act_buf = torch.zeros(act_shape, device=dev,
                              dtype=torch.float32 if self.continuous else torch.long)
        logp_buf, val_buf, rew_buf = (torch.zeros(T, B, device=dev) for _ in range(3))
        first_buf, term_buf, trunc_buf = (torch.zeros(T, B, dtype=torch.bool, device=dev) for _ in range(3))
        final_val = torch.zeros(T, B, device=dev)
        if self.recurrent:
            L, H = state[0].shape[0], state[0].shape[2]
            h_buf, c_buf = torch.zeros(T, L, B, H, device=dev), torch.zeros(T, L, B, H, device=dev)
        masks = None
        raw_buf = torch.zeros(T, B, self.obs_dim, device=dev) if self.obs_norm is not None else None
        for t in range(T):
            raw = collector.obs_tensor()
            if raw_buf is not None:
                raw_buf[t] = raw
            obs = self._norm(raw)  # statistics frozen during the rollout, updated once after it
            is_first = collector.tensor(collector.is_first)
            mask = self.check_action_mask(collector.tensor(collector.action_mask))
            if mask is not None:
                if masks is None:
                    masks = torch.ones(T, B, self.action_dim, dtype=torch.bool, device=dev)
                masks[t] = mask
            if self.recurrent:
                h_buf[t], c_buf[t] = state
            feats, state = self.belief.step(obs, state, is_first)
            dist = self.dist(feats, mask)
            action = self.sample(dist, t)
            obs_buf[t], act_buf[t], first_buf[t] = obs, action, is_first
            logp_buf[t], val_buf[t] = dist.log_prob(action), self.value(feats)
            step = collector.step(self.env_action(action))
            rew_buf[t] = collector.tensor(step.reward)
            if self.ret_norm is not None:
                if self._disc_return is None or self._disc_return.shape[0] != B:
                    self._disc_return = torch.zeros(B, dtype=torch.float64, device=dev)
                # a new episode's return starts at 0 (as the belief, where is_first: also after a collector reset)
                self._disc_return = torch.where(is_first, 0.0, self._disc_return) * self.cfg.gamma + rew_buf[t]
                self.ret_norm.update(self._disc_return.unsqueeze(-1))
                rew_buf[t] = rew_buf[t] / (self.ret_norm.var + self.ret_norm.eps).sqrt().float()
            term_buf[t], trunc_buf[t] = collector.tensor(step.terminated), collector.tensor(step.truncated)
            if step.truncated.any():  # bootstrap from the true last obs, with the post-step state
                f_obs = self._norm(collector.tensor(step.final_obs.astype(np.float32, copy=False)))
                f_feats, _ = self.belief.step(f_obs, state, torch.zeros(B, dtype=torch.bool, device=dev))
                final_val[t] = self.value(f_feats)
        self._state = state
        last_feats, _ = self.belief.step(self._norm(collector.obs_tensor()), state,
                                         collector.tensor(collector.is_first))
        last_value = self.value(last_feats)
        if raw_buf is not None:  # after the last value: every value of this rollout saw the same statistics
            self.obs_norm.update(raw_buf)
        dones = term_buf | trunc_buf
        next_values = next_values_from(val_buf, last_value, dones, trunc_buf, final_val)
        adv, ret = gae(rew_buf, val_buf, next_values, term_buf, dones, self.cfg.gamma, self.cfg.gae_lambda)
        out = {"obs": obs_buf, "actions": act_buf, "logp": logp_buf, "values": val_buf, "is_first": first_buf,
               "advantages": adv, "returns": ret, "rewards": rew_buf, "masks": masks}  # rewards as trained on
        if self.recurrent:
            out["h"], out["c"] = h_buf, c_buf
        return out

    def chunks(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Cut `[T, B, ...]` into `[truncation_length, (T / truncation_length) * B, ...]` sequences (chunk-major),
        with the stored state at each chunk start as `[L, N, H]`."""
        T, K = self.cfg.num_steps, self.cfg.truncation_length
        out = {}
        for k, v in batch.items():
            if v is None or k in ("h", "c"):
                continue
            B, rest = v.shape[1], v.shape[2:]
            out[k] = v.reshape(T // K, K, B, *rest).transpose(0, 1).reshape(K, (T // K) * B, *rest)
        if self.recurrent:
            for k in ("h", "c"):
                s = batch[k][::K]  # [T/K, L, B, H]
                out[k] = s.permute(1, 0, 2, 3).reshape(s.shape[1], -1, s.shape[3])
        return out

    def forward_chunks(self, ch: dict[str, Tensor], idx: Tensor | slice) -> tuple[Tensor, Tensor]:
        """Encoded observations z and belief features of the chunks `idx`, restarted from their stored states."""
        state = (ch["h"][:, idx], ch["c"][:, idx]) if self.recurrent else None
        z = self.belief.encoder(ch["obs"][:, idx])
        feats, _ = self.belief.recur(z, state, ch["is_first"][:, idx])
        return z, feats

    def evaluate_chunks(self, ch: dict[str, Tensor], idx: Tensor | slice):
        """Log-probs, entropies and values of the chunks `idx`, restarted from their stored states: `[K, n]`."""
        return self._heads(ch, idx, self.forward_chunks(ch, idx)[1])

    def _heads(self, ch, idx, feats):
        dist = self.dist(feats, ch["masks"][:, idx] if "masks" in ch else None)
        return dist.log_prob(ch["actions"][:, idx]), dist.entropy(), self.value(feats)

    def rl_losses(self, ch: dict[str, Tensor], idx, feats: Tensor, clip_coef: float | None) -> dict[str, Tensor]:
        """L_rl of one minibatch: the policy loss (PPO's clipped surrogate, or without `clip_coef` the plain
        advantage policy gradient), the (optionally clipped) value loss and the entropy bonus."""
        logp, entropy, value = self._heads(ch, idx, feats)
        adv = ch["advantages"][:, idx]
        if self.cfg.norm_adv:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss, approx_kl, clipfrac = policy_loss(logp, ch["logp"][:, idx], adv, clip_coef)
        v_loss = value_loss(value, ch["returns"][:, idx], ch["values"][:, idx],
                            self.cfg.clip_coef if self.cfg.clip_value_loss else None)
        ent = entropy.mean()
        return {"total": pg_loss + self.cfg.value_coef * v_loss - self.cfg.entropy_coef * ent, "policy": pg_loss,
                "value": v_loss, "entropy": ent, "approx_kl": approx_kl, "clipfrac": clipfrac}

    def losses(self, ch: dict[str, Tensor], idx) -> dict[str, Tensor]:
        """Every loss term of one minibatch; `total` is what is minimised."""
        return self.rl_losses(ch, idx, self.forward_chunks(ch, idx)[1], self.cfg.clip_coef)

    def train_iteration(self, collector) -> dict[str, float]:
        self._check_batch(collector.num_envs)
        opt = self.optimizers["policy"]
        if self.cfg.anneal_lr:
            frac = max(1.0 - collector.env_step / self.cfg.total_steps, 0.0)
            for g in opt.param_groups:
                g["lr"] = frac * self.cfg.lr
        batch = self.collect(collector)
        ch = self.chunks(batch)
        n = ch["obs"].shape[1]
        mb = n // self.cfg.num_minibatches
        stats: dict[str, list[Tensor]] = {}
        stop = False
        for _ in range(self.cfg.update_epochs):
            perm = torch.randperm(n, device=self.device)
            for i in range(self.cfg.num_minibatches):
                idx = perm[i * mb : (i + 1) * mb if i < self.cfg.num_minibatches - 1 else n]
                terms = self.losses(ch, idx)
                (terms["grad_norm"],) = self.optimizer_step(["policy"], terms["total"],
                                                            [(self.parameters(), self.cfg.max_grad_norm)])
                for k, v in terms.items():
                    if k != "total":
                        stats.setdefault(k, []).append(v.detach())
                if self.cfg.target_kl is not None and terms["approx_kl"].item() > self.cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        # names without a "/" are losses; the others (cpc/acc_k1, ...) keep their own prefix
        metrics = {k if "/" in k else f"loss/{k}": torch.stack(v).mean().item() for k, v in stats.items()
                   if k not in ("approx_kl", "clipfrac")}
        y, pred = batch["returns"].flatten(), batch["values"].flatten()
        var_y = y.var()
        metrics.update({
            "train/approx_kl": torch.stack(stats["approx_kl"]).mean().item(),
            "train/clipfrac": torch.stack(stats["clipfrac"]).mean().item(),
            "train/explained_variance": (1 - (y - pred).var() / var_y).item() if var_y > 0 else float("nan"),
            "train/lr": opt.param_groups[0]["lr"],
            "train/updates": float(len(stats["policy"])),
        })
        return metrics

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self._state = None
