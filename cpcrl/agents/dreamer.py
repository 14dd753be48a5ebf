"""Dreamer (Hafner et al. 2020, v1; 2023, v3-style): learn an RSSM world model from replayed sequences, then
an actor and a critic purely from imagined rollouts in its latent space.

Versions (`agent.version`, checked against `world_model.kind`):
    v1  Gaussian RSSM, free nats 3; tanh-normal actor trained by backpropagating the lambda-returns
        through the learned dynamics; MSE reward and value heads; gamma 0.99; lrs 6e-4 / 8e-5 / 8e-5.
    v3  categorical RSSM (unimix 1%), dyn/rep KL; symlog vector observations; two-hot (255 bins) reward and
        value heads; returns divided by max(1, EMA of their 5th-95th percentile range); entropy 3e-4;
        slow critic (EMA 0.98) as a regulariser; REINFORCE for discrete actions, backprop for continuous;
        gamma 1 - 1/333.

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
    w_k  = sg(prod_{j=1..k} gamma c_j)
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

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from cpcrl.agents.base import Agent
from cpcrl.data.replay import SequenceReplay
from cpcrl.device import autocast
from cpcrl.errors import ConfigError
from cpcrl.nets.codecs import is_image, make_decoder, make_encoder, make_head
from cpcrl.nets.distributions import TanhNormal, TwoHotDist, straight_through_onehot, symlog, twohot_bins, unimix_logits
from cpcrl.nets.mlp import mlp
from cpcrl.nets.rssm import make_rssm, map_state
from cpcrl.objectives.actor_critic import ReturnNormalizer, ema_update, imagination_weights
from cpcrl.objectives.returns import lambda_returns
from cpcrl.objectives.world_model import KLConfig, continue_loss, gaussian_nll, kl_loss, onehot_nll

VERSIONS = ("v1", "v3")
WORLD_MODEL_KIND = {"v1": "gaussian", "v3": "categorical"}
# Per-version defaults; any of these given explicitly (agent.gamma=...) wins. Mirrored in conf/agent/dreamer.yaml.
DEFAULT_VERSIONS = {
    "v1": dict(gamma=0.99, model_lr=6e-4, actor_lr=8e-5, critic_lr=8e-5, adam_eps=1e-7, model_grad_clip=100.0,
               ac_grad_clip=100.0, entropy=0.0, expl_noise=0.3, slow_critic_decay=None, slow_reg=0.0,
               return_norm=False, twohot=False, unimix=0.0, layer_norm=False),
    "v3": dict(gamma=1 - 1 / 333, model_lr=1e-4, actor_lr=3e-5, critic_lr=3e-5, adam_eps=1e-5,
               model_grad_clip=1000.0, ac_grad_clip=100.0, entropy=3e-4, expl_noise=0.0, slow_critic_decay=0.98,
               slow_reg=1.0, return_norm=True, twohot=True, unimix=0.01, layer_norm=True),
}
# Network sizes: world model (deter, stoch / latents x classes, units) and actor/critic (units x layers).
# s and m follow the DreamerV3 paper's S and M; xs is ours, small enough to train on a 2-core CPU.
DEFAULT_SIZES = {
    "xs": dict(deter=128, units=128, layers=2, stoch=16, latents=16, classes=16),
    "s": dict(deter=512, units=512, layers=2, stoch=32, latents=32, classes=32),
    "m": dict(deter=1024, units=640, layers=3, stoch=32, latents=32, classes=32),
}


def sized_world_model(world_model, preset: dict):
    """The world-model config with the size preset's dims written over it."""
    net = {"hidden": preset["units"], "layers": preset["layers"]}
    dims = {"deter": preset["deter"], "hidden": preset["units"], "encoder": net, "decoder": net, "heads": net}
    dims.update({"stoch": preset["stoch"]} if world_model.kind == "gaussian"
                else {"latents": preset["latents"], "classes": preset["classes"]})
    return OmegaConf.merge(world_model, dims)


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
                 layer_norm: bool = False):
        super().__init__()
        self.twohot = twohot
        self.net = mlp(feature_dim, [units] * layers, 255 if twohot else 1, activation, layer_norm)
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
    """Categorical over one-hot actions (log-probs with unimix applied); `rsample` is straight-through."""

    def __init__(self, log_probs: Tensor):
        self.log_probs = log_probs

    def rsample(self) -> Tensor:
        return straight_through_onehot(self.log_probs, 0.0)[0]

    def log_prob(self, action: Tensor) -> Tensor:
        return (action * self.log_probs).sum(-1)

    def entropy(self) -> Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    @property
    def mode(self) -> Tensor:
        return F.one_hot(self.log_probs.argmax(-1), self.log_probs.shape[-1]).to(self.log_probs)


class SquashedPolicy(TanhNormal):
    def entropy(self) -> Tensor:
        return self.sample_entropy()  # no closed form under tanh: a one-sample estimate


class Actor(nn.Module):
    """features -> policy. Discrete: unimix categorical. Continuous: tanh-normal, v1 (mean 5 tanh(m/5),
    std softplus(s + 5) + 1e-4, wide at the start) or v3 (std in [0.1, 1])."""

    def __init__(self, feature_dim: int, action_dim: int, discrete: bool, units: int, layers: int, activation: str,
                 version: str, unimix: float, layer_norm: bool):
        super().__init__()
        self.discrete, self.version, self.unimix = discrete, version, unimix
        self.net = mlp(feature_dim, [units] * layers, action_dim if discrete else 2 * action_dim, activation,
                       layer_norm)

    def forward(self, features: Tensor, action_mask: Tensor | None = None):
        return self.policy(self.net(features), action_mask)

    def policy(self, out: Tensor, action_mask: Tensor | None = None):
        """The distribution from the raw output of `net`."""
        out = out.float()
        if self.discrete:
            log_probs = unimix_logits(out, self.unimix)
            if action_mask is not None:  # acting only: imagination has no masks
                log_probs = log_probs.masked_fill(~action_mask.bool(), torch.finfo(out.dtype).min).log_softmax(-1)
            return OneHotPolicy(log_probs)
        mean, std = out.chunk(2, -1)
        if self.version == "v1":
            return SquashedPolicy(5.0 * torch.tanh(mean / 5.0), F.softplus(std + math.log(math.e ** 5 - 1)) + 1e-4)
        return SquashedPolicy(mean, 0.9 * torch.sigmoid(std + 2.0) + 0.1)


# --- the agent ------------------------------------------------------------------------------------------------

class Dreamer(Agent):
    name = "dreamer"
    world_models = ("rssm_gaussian", "rssm_discrete")

    def __init__(self, obs_space, action_space, device, world_model=None, version="v3", size="xs", sizes=None,
                 versions=None, train_ratio=64.0, batch_size=16, seq_len=64, horizon=15, lam=0.95, prefill=1000,
                 collect_steps=1, imag_starts=None, actor_gradient="auto", gamma=None, model_lr=None,
                 actor_lr=None, critic_lr=None, adam_eps=None, model_grad_clip=None, ac_grad_clip=None, entropy=None,
                 expl_noise=None,
                 slow_critic_decay=None, slow_reg=None, return_norm=None, twohot=None, unimix=None,
                 layer_norm=None, return_ema_decay=0.99, return_scale_floor=1.0, precision="fp32",
                 replay_capacity=1_000_000, save_replay=False, seed=None):
        super().__init__(obs_space, action_space, device)
        if world_model is None or world_model.get("name") not in self.world_models:
            raise ConfigError("agent=dreamer needs world_model=rssm_gaussian (v1) or rssm_discrete (v3)")
        if version not in VERSIONS:
            raise ConfigError(f"agent.version={version!r}: valid are {', '.join(VERSIONS)}")
        if world_model.kind != WORLD_MODEL_KIND[version]:
            want = "rssm_gaussian" if version == "v1" else "rssm_discrete"
            raise ConfigError(f"agent.version={version} needs world_model={want} (a {WORLD_MODEL_KIND[version]} "
                              f"RSSM), got world_model={world_model.name} ({world_model.kind})")
        sizes = {**DEFAULT_SIZES, **dict(sizes or {})}
        if size is not None and size not in sizes:
            raise ConfigError(f"agent.size={size!r}: valid are {', '.join(sizes)} (or null: the world_model dims)")
        if actor_gradient not in ("auto", "reinforce", "backprop"):
            raise ConfigError(f"agent.actor_gradient={actor_gradient!r}: valid are auto, reinforce, backprop")
        for key, value in (("batch_size", batch_size), ("seq_len", seq_len), ("horizon", horizon),
                           ("collect_steps", collect_steps)):
            if int(value) < 1:
                raise ConfigError(f"agent.{key}={value}: must be a positive integer")
        if train_ratio <= 0:
            raise ConfigError(f"agent.train_ratio={train_ratio}: must be > 0 (replayed steps per env step)")
        # explicit hyperparameters win over the version's defaults
        given = dict(gamma=gamma, model_lr=model_lr, actor_lr=actor_lr, critic_lr=critic_lr, adam_eps=adam_eps,
                     model_grad_clip=model_grad_clip, ac_grad_clip=ac_grad_clip, entropy=entropy,
                     expl_noise=expl_noise, slow_critic_decay=slow_critic_decay, slow_reg=slow_reg,
                     return_norm=return_norm, twohot=twohot, unimix=unimix, layer_norm=layer_norm)
        base = {**DEFAULT_VERSIONS[version], **dict((versions or {}).get(version, {}) or {})}
        hp = {k: (base.get(k) if v is None else v) for k, v in given.items()}
        self.hp = hp
        self.version, self.precision = version, precision
        self.train_ratio, self.batch_size, self.seq_len = float(train_ratio), int(batch_size), int(seq_len)
        self.horizon, self.lam, self.gamma = int(horizon), float(lam), float(hp["gamma"])
        self.prefill, self.collect_steps, self.save_replay = int(prefill), int(collect_steps), save_replay
        self.imag_starts = None if imag_starts is None else int(imag_starts)
        self.entropy_coef, self.expl_noise = float(hp["entropy"]), float(hp["expl_noise"])
        self.slow_reg = float(hp["slow_reg"])
        self.model_grad_clip, self.ac_grad_clip = float(hp["model_grad_clip"]), float(hp["ac_grad_clip"])
        # v1 backpropagates through the dynamics for every action space (straight-through for one-hots);
        # v3 uses REINFORCE where the action is discrete and backprop where it is continuous.
        self.backprop = (actor_gradient == "backprop" or
                         (actor_gradient == "auto" and (version == "v1" or not self.discrete)))

        # world model
        if size is not None:
            world_model = sized_world_model(world_model, sizes[size])
            units, layers = int(sizes[size]["units"]), int(sizes[size]["layers"])
        else:
            heads = dict(world_model.get("heads", {}) or {})
            units, layers = int(heads.get("hidden", 200)), int(heads.get("layers", 2))
        activation = world_model.get("activation", "elu")
        self.world_model_cfg = world_model
        self.kl_cfg = KLConfig.from_config(world_model.get("kl"))
        self.encoder = make_encoder(obs_space, world_model)
        self.rssm = make_rssm(world_model, self.encoder.out_dim, self.action_dim)
        self.decoder, self.onehot_groups = make_decoder(obs_space, self.rssm.feature_dim, world_model)
        self.symlog_obs = version == "v3" and not is_image(obs_space) and not self.onehot_groups
        feature_dim = self.rssm.feature_dim
        self.reward_head = ScalarHead(feature_dim, units, layers, activation, bool(hp["twohot"]))
        self.continue_head = make_head(feature_dim, units, layers, activation)

        # behaviour
        layer_norm = bool(hp["layer_norm"])
        self.actor = Actor(feature_dim, self.action_dim, self.discrete, units, layers, activation, version,
                           float(hp["unimix"]), layer_norm)
        self.critic = ScalarHead(feature_dim, units, layers, activation, bool(hp["twohot"]), layer_norm)
        self.slow_critic_decay = hp["slow_critic_decay"]
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False) if self.slow_critic_decay else None
        self.return_norm = ReturnNormalizer(return_ema_decay, return_scale_floor, enabled=bool(hp["return_norm"]))
        self.to(device)

        eps = float(hp["adam_eps"])
        self.world_model_modules = (self.encoder, self.rssm, self.decoder, self.reward_head, self.continue_head)
        model_params = [p for m in self.world_model_modules for p in m.parameters()]
        self.optimizers["model"] = torch.optim.Adam(model_params, lr=float(hp["model_lr"]), eps=eps)
        self.optimizers["actor"] = torch.optim.Adam(self.actor.parameters(), lr=float(hp["actor_lr"]), eps=eps)
        self.optimizers["critic"] = torch.optim.Adam(self.critic.parameters(), lr=float(hp["critic_lr"]), eps=eps)

        self.replay = SequenceReplay(obs_space.shape, obs_space.dtype, self.action_dim, int(replay_capacity),
                                     seed=seed)
        self._collect = None   # (agent state, previous action, previous reward) between iterations
        self._owed = 0.0       # updates owed by the train ratio (fraction carried over)

    # --- acting -------------------------------------------------------------------------------------------

    def preprocess(self, obs: Tensor) -> Tensor:
        return symlog(obs) if self.symlog_obs else obs

    def initial_state(self, batch_size: int):
        return {"latent": self.rssm.initial(batch_size),
                "action": torch.zeros(batch_size, self.action_dim, device=self.device)}  # one-hot if discrete

    def _random_action(self, n: int, action_mask: Tensor | None) -> Tensor:
        if self.discrete:
            logits = torch.zeros(n, self.action_dim, device=self.device)
            if action_mask is not None:
                logits = logits.masked_fill(~action_mask.bool(), -torch.inf)
            return F.one_hot(torch.distributions.Categorical(logits=logits).sample(), self.action_dim).float()
        return torch.rand(n, self.action_dim, device=self.device) * 2 - 1

    @torch.no_grad()
    def act(self, obs, state, is_first, action_mask=None, explore=True, random=False):
        """Filter the observation into the belief, then sample the policy (`explore`) or take its mode."""
        state = self.initial_state(obs.shape[0]) if state is None else state
        embed = self.encoder(self.preprocess(obs.float()))
        post, _ = self.rssm.obs_step(state["latent"], state["action"], embed, is_first, sample=explore)
        if random:
            action = self._random_action(obs.shape[0], action_mask)
        else:
            policy = self.actor(self.rssm.features(post), action_mask)
            action = policy.rsample() if explore else policy.mode
            if explore and self.expl_noise > 0:  # v1's exploration noise on top of the policy's own
                if self.discrete:
                    pick = torch.rand(action.shape[0], 1, device=self.device) < self.expl_noise
                    action = torch.where(pick, self._random_action(action.shape[0], action_mask), action)
                else:
                    action = (action + self.expl_noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        state = {"latent": post, "action": action}
        return (action.argmax(-1) if self.discrete else action), state

    def collect(self, collector, steps: int, random: bool) -> None:
        """`steps` vector steps; the replay stores (o_t, a_{t-1}, r_t) per step and each episode's final obs."""
        n = collector.num_envs
        if self._collect is None:
            self._collect = (self.initial_state(n), np.zeros((n, self.action_dim), np.float32), np.zeros(n))
        state, prev_action, prev_reward = self._collect
        for _ in range(steps):
            first = np.asarray(collector.is_first, dtype=bool)
            for i in range(n):
                self.replay.add(i, collector.obs[i], 0 * prev_action[i] if first[i] else prev_action[i],
                                0.0 if first[i] else float(prev_reward[i]), bool(first[i]))
            action, state = self.act(collector.obs_tensor(), state, collector.tensor(first),
                                     collector.tensor(collector.action_mask), True, random)
            step = collector.step(action)
            prev_action, prev_reward = state["action"].cpu().numpy(), step.reward
            for i in np.flatnonzero(step.done):
                self.replay.add(i, step.final_obs[i], prev_action[i], float(step.reward[i]), False,
                                bool(step.terminated[i]), last=True)
        self._collect = (state, prev_action, prev_reward)

    # --- learning the world model ---------------------------------------------------------------------------

    def model_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict, dict[str, Tensor]]:
        """-> (loss, posterior states [L, B], metrics)."""
        obs, actions, rewards = batch["obs"], batch["action"], batch["reward"]
        is_first, is_terminal = batch["is_first"], batch["is_terminal"]

        post, prior = self.rssm.observe(self.encoder(self.preprocess(obs.float())), actions, is_first)
        features = self.rssm.features(post)

        prediction = self.decoder(features)
        if self.onehot_groups:
            reconstruction = onehot_nll(prediction, obs, self.onehot_groups).mean()
        else:
            target = self.preprocess(self.decoder.target(obs))
            reconstruction = gaussian_nll(prediction.float(), target, event_dims=obs.dim() - 2).mean()
        # r_t arrives with o_t; an episode start has none (stored as 0). A masked mean, not a boolean
        # index, so the shape is static (no device->host sync).
        has_reward = (~is_first).float()
        reward = (self.reward_head.nll(features, rewards) * has_reward).sum() / has_reward.sum().clamp(min=1)
        cont = continue_loss(self.continue_head(features).float(), is_terminal)
        # KL in fp32 even under bf16 autocast: bf16 softmaxes miss the simplex check of torch.distributions
        as_fp32 = lambda state: map_state(lambda x: x.float(), state)  # noqa: E731
        kl, kl_raw = kl_loss(self.rssm, as_fp32(post), as_fp32(prior), self.kl_cfg)
        model = reconstruction + reward + cont + kl
        return model, post, {"loss/model": model, "loss/reconstruction": reconstruction, "loss/reward": reward,
                             "loss/continue": cont, "loss/kl": kl, "wm/kl_raw": kl_raw}

    # --- learning behaviour in imagination ------------------------------------------------------------------

    def imagine(self, start: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Roll the policy in the prior from `start` [N] for `horizon` steps, reading no observation. Returns the
        features of steps 0..H ([H+1, N, F], step 0 = start), the actions taken in steps 0..H-1 ([H, N, A])
        and, under REINFORCE, the actor's raw outputs for those steps with their gradient ([H, N, .]; None
        under backprop). Only features are kept: the behaviour losses read nothing else of a state."""
        outs = []

        def act(features: Tensor) -> Tensor:
            if self.backprop:  # the gradient flows through the actions and the dynamics
                return self.actor(features).rsample()
            with torch.enable_grad():  # REINFORCE: keep this pass (= actor(sg(f_k))) for the loss
                outs.append(self.actor.net(features))
            return self.actor.policy(outs[-1].detach()).rsample()

        with torch.set_grad_enabled(self.backprop and torch.is_grad_enabled()):
            state, features, actions = start, [self.rssm.features(start)], []
            for _ in range(self.horizon):
                actions.append(act(features[-1]))
                state = self.rssm.img_step(state, actions[-1])
                features.append(self.rssm.features(state))
        return torch.stack(features), torch.stack(actions), (torch.stack(outs) if outs else None)

    def behaviour_loss(self, post: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """-> (actor loss, critic loss, metrics); the formulas are in the module docstring."""
        start = map_state(lambda x: x.detach().flatten(0, 1), post)  # every posterior state of the batch
        if self.imag_starts and self.imag_starts < len(start["deter"]):  # or a random subset (CPU budgets)
            pick = torch.randperm(len(start["deter"]), device=start["deter"].device)[: self.imag_starts]
            start = map_state(lambda x: x[pick], start)
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
            returns = lambda_returns(rewards, values, continues, self.gamma, self.lam)  # [H, N], states 0..H-1
            weights = imagination_weights(continues, self.gamma)
            scale = self.return_norm(returns)

            if self.backprop:  # the gradient reaches the actor through rewards, values and the dynamics
                policy = self.actor(features[:-1].detach())
                objective = returns / scale
            else:              # REINFORCE with the critic as baseline
                policy = self.actor.policy(actor_out)  # = actor(sg(f_k)): the pass made while imagining
                advantage = (returns - values[:-1]) / scale
                objective = policy.log_prob(actions.detach()) * advantage.detach()
            entropy = policy.entropy()
            actor_loss = -(weights * (objective + self.entropy_coef * entropy)).mean()

        value_features, target = features[:-1].detach(), returns.detach()
        critic_loss = self.critic.nll_of(critic_out, target)
        if self.slow_critic is not None:  # pull towards the slow critic: a trust region for the value
            critic_loss = critic_loss + self.slow_reg * self.critic.nll_of(
                critic_out, self.slow_critic.predict(value_features).detach())
        critic_loss = (weights * critic_loss).mean()
        return actor_loss, critic_loss, {"loss/actor": actor_loss, "loss/critic": critic_loss,
                                         "dreamer/imagined_return": returns.detach().mean(),
                                         "dreamer/value": values.detach().mean(),
                                         "dreamer/return_scale": scale, "dreamer/entropy": entropy.detach().mean()}

    def _step(self, names: tuple[str, ...], loss: Tensor, clips: tuple[tuple[list, float], ...]) -> list[Tensor]:
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        norms = [torch.nn.utils.clip_grad_norm_(params, clip) for params, clip in clips]
        for name in names:
            self.optimizers[name].step()
        return norms

    def update(self) -> dict[str, Tensor]:
        """One model update and one actor-critic update. Returns tensors: no host sync in here."""
        batch = self.replay.sample(self.batch_size, self.seq_len, self.device)
        with autocast(self.device, self.precision):
            model_loss, post, metrics = self.model_loss(batch)
        model_params = [p for m in self.world_model_modules for p in m.parameters()]
        (metrics["wm/grad_norm"],) = self._step(("model",), model_loss, ((model_params, self.model_grad_clip),))

        with autocast(self.device, self.precision):
            actor_loss, critic_loss, ac_metrics = self.behaviour_loss(post)
        metrics["dreamer/actor_grad_norm"], metrics["dreamer/critic_grad_norm"] = self._step(
            ("actor", "critic"), actor_loss + critic_loss,
            ((list(self.actor.parameters()), self.ac_grad_clip), (list(self.critic.parameters()), self.ac_grad_clip)))
        if self.slow_critic is not None:
            ema_update(self.slow_critic, self.critic, self.slow_critic_decay)
        return {**metrics, **ac_metrics}

    def train_iteration(self, collector) -> dict[str, float]:
        while len(self.replay) < max(self.prefill, self.seq_len):  # also after a resume without the replay
            self.collect(collector, 1, random=True)
        self.collect(collector, self.collect_steps, random=False)
        self._owed += self.collect_steps * collector.num_envs * self.train_ratio / (self.batch_size * self.seq_len)
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
        state = super().checkpoint_state()
        state["owed"] = torch.tensor(self._owed)
        if self.save_replay:
            state["replay"] = self.replay.state_dict()
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self._owed = float(state.get("owed", 0.0))
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
