"""PlaNet (Hafner et al. 2019): learn an RSSM world model from replayed sequences, act by CEM planning
in its latent space on the prior. No policy, no value function.

Schedule, per `train_iteration`: (first) `seed_episodes` episodes of uniform random actions; then
`collect_interval` model updates on `batch_size` chunks of `seq_len` steps, then `collect_episodes`
episodes with the planner plus Gaussian exploration noise (epsilon-random actions for discrete envs).

Action repeat: the model lives on the repeated time scale. A planned action is held for `action_repeat`
env steps; the replay stores one step per held action (its summed reward), and the belief is updated
only when a new action is chosen. An episode end cuts the held action short.

Model loss, per update (time-major `[L, B]`, all terms means over steps of per-step sums):
    e_t          = encoder(o_t)
    post, prior  = rssm.observe(e, a_prev, is_first)           q(s_t | h_t, e_t), p(s_t | h_t)
    f_t          = [h_t, s_t]  (posterior sample)
    reconstruction = -log N(o_t; decoder(f_t), 1)  or one-hot cross-entropy (cube)
    reward         = (reward_head(f_t) - r_t)^2                  (r_t received with o_t; not at episode starts)
    continue       = BCE(continue_head(f_t), not terminal_t)     (when continue_head)
    kl             = world_model.kl strategy (PlaNet: max(3 nats, KL(post || prior)) per step),
                     with latent overshooting over `overshooting_distance` steps when > 1
    model          = reconstruction + reward + kl + continue
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cpcrl.agents.base import Agent
from cpcrl.data.replay import SequenceReplay
from cpcrl.errors import ConfigError
from cpcrl.nets.codecs import make_decoder, make_encoder, make_head
from cpcrl.nets.rssm import make_rssm
from cpcrl.objectives.world_model import (
    KLConfig,
    continue_loss,
    gaussian_nll,
    kl_loss,
    onehot_nll,
    overshooting_kl,
    reward_loss,
)
from cpcrl.planning.cem import CEMConfig, cem_categorical, cem_continuous

DEFAULT_PLANNERS = {"cem": dict(horizon=12, candidates=1000, top_k=100, iterations=10),
                    "cem_fast": dict(horizon=12, candidates=200, top_k=20, iterations=5)}


class PlaNet(Agent):
    name = "planet"
    world_models = ("rssm_gaussian", "rssm_discrete")
    max_plan_rows = 1 << 16  # latent rollouts per planning pass: ~1 GB of activations at the default sizes

    def __init__(self, obs_space, action_space, device, world_model=None, seed_episodes=5, collect_interval=100,
                 collect_episodes=1, batch_size=50, seq_len=50, lr=1e-3, adam_eps=1e-4, grad_clip=1000.0,
                 overshooting_distance=1, overshooting_kl_beta=1.0, continue_head=True, action_repeat=1,
                 expl_noise=0.3, planner="cem", planners=None, replay_capacity=1_000_000, save_replay=False,
                 seed=None):
        super().__init__(obs_space, action_space, device)
        if world_model is None or world_model.get("name") not in self.world_models:
            raise ConfigError("agent=planet needs world_model=rssm_gaussian or rssm_discrete")
        planners = {**DEFAULT_PLANNERS, **dict(planners or {})}
        if planner not in planners:
            raise ConfigError(f"agent.planner={planner!r}: valid are {', '.join(planners)}")
        self.plan_cfg = CEMConfig(**{k: int(v) for k, v in dict(planners[planner]).items()})
        if int(overshooting_distance) < 1:
            raise ConfigError(f"agent.overshooting_distance={overshooting_distance}: must be >= 1 "
                              "(1 = no overshooting)")
        for key, value in (("seed_episodes", seed_episodes), ("collect_interval", collect_interval),
                           ("collect_episodes", collect_episodes), ("batch_size", batch_size),
                           ("seq_len", seq_len), ("action_repeat", action_repeat)):
            if int(value) < 1:
                raise ConfigError(f"agent.{key}={value}: must be a positive integer")
        if lr <= 0 or expl_noise < 0:
            raise ConfigError(f"agent.lr={lr}, agent.expl_noise={expl_noise}: lr must be > 0, noise >= 0")
        self.seed_episodes, self.collect_interval = seed_episodes, collect_interval
        self.collect_episodes = collect_episodes
        self.batch_size, self.seq_len, self.grad_clip = batch_size, seq_len, grad_clip
        self.overshooting_distance, self.overshooting_kl_beta = int(overshooting_distance), overshooting_kl_beta
        self.action_repeat, self.expl_noise, self.save_replay = int(action_repeat), expl_noise, save_replay

        self.kl_cfg = KLConfig.from_config(world_model.get("kl"))
        self.encoder = make_encoder(obs_space, world_model)
        self.rssm = make_rssm(world_model, self.encoder.out_dim, self.action_dim)
        self.decoder, self.onehot_groups = make_decoder(obs_space, self.rssm.feature_dim, world_model)
        head = dict(world_model.get("heads", {}) or {})
        self.reward_head = make_head(self.rssm.feature_dim, **head)
        self.continue_head = make_head(self.rssm.feature_dim, **head) if continue_head else None
        self.to(device)
        self.optimizers["model"] = torch.optim.Adam(self.parameters(), lr=lr, eps=adam_eps)

        self.replay = SequenceReplay(obs_space.shape, obs_space.dtype, self.action_dim, int(replay_capacity),
                                     seed=seed)
        self._collect = None  # (agent state, reward accumulated over the held action) between iterations
        self._plan_time, self._plans = 0.0, 0

    # --- acting: filter the observation, plan on the prior ---------------------------------------------

    def initial_state(self, batch_size: int):
        return {"latent": self.rssm.initial(batch_size),
                # the held action (one-hot if discrete) and env steps left to hold it
                "action": torch.zeros(batch_size, self.action_dim, device=self.device),
                "countdown": torch.zeros(batch_size, dtype=torch.long, device=self.device)}

    @torch.no_grad()
    def plan(self, latent: dict[str, Tensor], action_mask: Tensor | None = None) -> Tensor:
        """CEM on the prior from `latent` [B]: one batched rollout of B x candidates sequences per iteration
        (B split into chunks of at most `max_plan_rows` rollouts).
        Returns the first action of the best sequence belief: [B, A] (one-hot for discrete actions)."""
        cfg, batch = self.plan_cfg, latent["deter"].shape[0]
        chunk = max(1, self.max_plan_rows // cfg.candidates)
        if batch > chunk:  # many envs (evaluation): bound the memory of one rollout
            return torch.cat([self.plan({k: v[i:i + chunk] for k, v in latent.items()},
                                        None if action_mask is None else action_mask[i:i + chunk])
                              for i in range(0, batch, chunk)])
        start = {k: v.repeat_interleave(cfg.candidates, 0) for k, v in latent.items()}  # [B*N]

        def score(candidates: Tensor) -> Tensor:  # [B, N, H, A] -> predicted return [B, N]
            actions = candidates.flatten(0, 1).transpose(0, 1)                    # [H, B*N, A]
            states, _ = self.rssm.imagine(actions, start, sample=False)
            features = self.rssm.features(states)
            reward = self.reward_head(features)                                    # [H, B*N]
            if self.continue_head is not None:  # rewards after a predicted termination do not count
                alive = torch.sigmoid(self.continue_head(features))
                reward = reward * torch.cat([torch.ones_like(alive[:1]), alive[:-1].cumprod(0)])
            return reward.sum(0).view(batch, cfg.candidates)

        if self.discrete:
            probs = cem_categorical(score, batch, self.action_dim, cfg, self.device, first_mask=action_mask)
            return F.one_hot(probs[:, 0].argmax(-1), self.action_dim).float()
        mean, _ = cem_continuous(score, batch, self.action_dim, cfg, self.device)
        return mean[:, 0]

    def _explore(self, action: Tensor, action_mask: Tensor | None, random: bool) -> Tensor:
        n = action.shape[0]
        if self.discrete:
            logits = torch.zeros(n, self.action_dim, device=self.device)
            if action_mask is not None:
                logits = logits.masked_fill(~action_mask.bool(), -torch.inf)
            uniform = F.one_hot(torch.distributions.Categorical(logits=logits).sample(), self.action_dim).float()
            pick = torch.rand(n, 1, device=self.device) < (1.0 if random else self.expl_noise)
            return torch.where(pick, uniform, action)
        if random:
            return torch.rand_like(action) * 2 - 1
        return (action + self.expl_noise * torch.randn_like(action)).clamp(-1.0, 1.0)

    @torch.no_grad()
    def act(self, obs, state, is_first, action_mask=None, explore=True, random=False):
        """Hold the current action for `action_repeat` steps; where a new one is due (or an episode starts)
        filter the observation into the belief and plan (or draw a random action when `random`)."""
        state = self.initial_state(obs.shape[0]) if state is None else state
        first = is_first.to(self.device, torch.bool)
        due = (first | (state["countdown"] <= 0)).nonzero().squeeze(-1)
        latent, held, countdown = dict(state["latent"]), state["action"].clone(), state["countdown"].clone()
        if len(due):
            post, _ = self.rssm.obs_step({k: v[due] for k, v in latent.items()}, held[due],
                                         self.encoder(obs[due]), first[due], sample=False)
            mask = None if action_mask is None else action_mask[due]
            if random:
                new = self._explore(held[due], mask, random=True)
            else:
                t0 = time.perf_counter()
                new = self.plan(post, mask)
                self._plan_time, self._plans = self._plan_time + time.perf_counter() - t0, self._plans + len(due)
                new = self._explore(new, mask, random=False) if explore else new
            latent = {k: v.index_copy(0, due, post[k]) for k, v in latent.items()}
            held, countdown = held.index_copy(0, due, new), countdown.index_fill(0, due, self.action_repeat)
        state = {"latent": latent, "action": held, "countdown": countdown - 1}
        return (held.argmax(-1) if self.discrete else held), state

    # --- collecting into the replay ----------------------------------------------------------------------

    def collect(self, collector, episodes: int, random: bool) -> None:
        """Step until `episodes` more episodes are stored, recording one replay step per held action."""
        if self._collect is None:
            self._collect = (self.initial_state(collector.num_envs), np.zeros(collector.num_envs))
        state, reward_sum = self._collect
        target = self.replay.episodes + episodes
        while self.replay.episodes < target:
            first = np.asarray(collector.is_first, dtype=bool)
            due = first | (state["countdown"] <= 0).cpu().numpy()
            held = state["action"].cpu().numpy()
            for i in np.flatnonzero(due):  # the previous held action ends at this obs (or an episode starts)
                self.replay.add(i, collector.obs[i], np.zeros_like(held[i]) if first[i] else held[i],
                                0.0 if first[i] else reward_sum[i], bool(first[i]))
                reward_sum[i] = 0.0
            mask = collector.tensor(collector.action_mask)
            action, state = self.act(collector.obs_tensor(), state, collector.tensor(first), mask, True, random)
            step = collector.step(action)
            reward_sum += step.reward
            held = state["action"].cpu().numpy()
            for i in np.flatnonzero(step.done):
                self.replay.add(i, step.final_obs[i], held[i], reward_sum[i], False, bool(step.terminated[i]),
                                last=True)
                reward_sum[i] = 0.0
        self._collect = (state, reward_sum)

    # --- learning the world model ------------------------------------------------------------------------

    def model_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        obs, actions, rewards = batch["obs"], batch["action"], batch["reward"]
        is_first, is_terminal = batch["is_first"], batch["is_terminal"]

        embed = self.encoder(obs)
        post, prior = self.rssm.observe(embed, actions, is_first)
        features = self.rssm.features(post)

        prediction, target = self.decoder(features), self.decoder.target(obs)
        if self.onehot_groups:
            reconstruction = onehot_nll(prediction, target, self.onehot_groups).mean()
        else:
            reconstruction = gaussian_nll(prediction, target, event_dims=obs.dim() - 2).mean()
        # r_t arrives with o_t; at an episode start there is none (stored as 0), so it is not a target
        has_reward = ~is_first
        reward = reward_loss(self.reward_head(features)[has_reward], rewards[has_reward])
        if self.overshooting_distance > 1:
            kl = overshooting_kl(self.rssm, post, prior, actions, is_first, self.overshooting_distance,
                                 self.overshooting_kl_beta, self.kl_cfg)
            _, kl_raw = kl_loss(self.rssm, post, prior, self.kl_cfg)
        else:
            kl, kl_raw = kl_loss(self.rssm, post, prior, self.kl_cfg)
        cont = continue_loss(self.continue_head(features), is_terminal) if self.continue_head else torch.zeros(())
        model = reconstruction + reward + kl + cont
        return model, {"loss/reconstruction": reconstruction, "loss/reward": reward, "loss/kl": kl,
                       "loss/continue": cont, "loss/model": model, "wm/kl_raw": kl_raw,
                       "wm/prior_entropy": self.rssm.dist(prior).entropy().mean(),
                       "wm/post_entropy": self.rssm.dist(post).entropy().mean()}

    def update(self) -> dict[str, float]:
        batch = self.replay.sample(self.batch_size, self.seq_len, self.device)
        batch = {k: (v.float() if k in ("action", "reward") else v) for k, v in batch.items()}
        loss, metrics = self.model_loss(batch)
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip or float("inf"))
        opt.step()
        return {**{k: v.item() for k, v in metrics.items()}, "wm/grad_norm": grad_norm.item()}

    def train_iteration(self, collector) -> dict[str, float]:
        if self.replay.episodes < self.seed_episodes:
            self.collect(collector, self.seed_episodes - self.replay.episodes, random=True)
        while len(self.replay) < self.seq_len:  # short seed episodes (a solved cube): seed until one chunk fits
            self.collect(collector, 1, random=True)
        t0 = time.perf_counter()
        history = [self.update() for _ in range(self.collect_interval)]
        update_time = time.perf_counter() - t0
        self._plan_time, self._plans = 0.0, 0
        self.collect(collector, self.collect_episodes, random=False)
        metrics = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
        metrics.update({"perf/updates_per_s": self.collect_interval / max(update_time, 1e-9),
                        "perf/plan_ms": 1000 * self._plan_time / max(self._plans, 1),
                        "train/replay_steps": float(len(self.replay)),
                        "train/replay_episodes": float(self.replay.episodes)})
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        state = super().checkpoint_state()
        if self.save_replay:
            state["replay"] = self.replay.state_dict()
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
