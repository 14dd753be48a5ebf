"""PlaNet (Hafner et al. 2019): learn an RSSM world model from replayed sequences, act by CEM planning
in its latent space on the prior. No policy, no value function.

Actions: Box (Gaussian CEM), Discrete (categorical CEM) and MultiDiscrete (categorical CEM per factor: an
independent categorical per step and factor, refit to the elites' frequencies); the RSSM reads the action as a
one-hot, or the factors' concatenated one-hots. Exploration is epsilon-random per factor; the env's per-factor
action masks restrict the first planned action (and the random ones).

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
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import II
from torch import Tensor

from cpcrl.agents.base import AgentConfig
from cpcrl.agents.model_based import ModelBasedAgent
from cpcrl.checks import boolean, non_negative, optional_positive, param, positive, positive_int
from cpcrl.nets.codecs import make_head
from cpcrl.nets.distributions import factor_indices, factor_onehots
from cpcrl.objectives.world_model import world_model_loss
from cpcrl.planning.cem import CEMConfig, cem_categorical, cem_continuous


@dataclass
class PlaNetConfig(AgentConfig):
    _target_: str = "cpcrl.agents.planet.PlaNet"
    name: str = "planet"
    seed: int | None = II("seed")                   # of the replay sampler
    seed_episodes: int = param(5, positive_int)        # random-action episodes before the first update
    collect_interval: int = param(100, positive_int)   # model updates per iteration
    collect_episodes: int = param(1, positive_int)     # planner episodes collected per iteration (all envs together)
    batch_size: int = param(50, positive_int)          # chunks per update
    seq_len: int = param(50, positive_int)             # steps per chunk
    lr: float = param(0.001, positive)
    adam_eps: float = param(0.0001, positive)
    grad_clip: float | None = param(1000.0, optional_positive)  # null: no clipping
    overshooting_distance: int = param(1, positive_int)  # latent overshooting D; 1 = the plain KL term
    overshooting_kl_beta: float = param(1.0, non_negative)  # weight of the d >= 2 terms
    continue_head: bool = param(True, boolean)         # predict termination; the planner discounts rewards by it
    action_repeat: int = param(1, positive_int)        # env steps per planned action (the model's time step)
    expl_noise: float = param(0.3, non_negative)       # Gaussian action noise; epsilon-random for discrete actions
    replay_capacity: int = param(1_000_000, positive_int)  # steps
    save_replay: bool = False                          # put the replay into checkpoints (a resumed run keeps its data)
    planner: CEMConfig = field(default_factory=CEMConfig)  # a preset: agent/planner=cem (PlaNet's) | cem_fast (CPU)


class PlaNet(ModelBasedAgent):
    name = "planet"
    Config = PlaNetConfig
    max_plan_rows = 1 << 16  # latent rollouts per planning pass: ~1 GB of activations at the default sizes

    def __init__(self, obs_space, action_space, device, cfg: PlaNetConfig, world_model):
        super().__init__(obs_space, action_space, device)
        self.cfg, self.plan_cfg = cfg, cfg.planner
        heads = world_model.heads
        self.build_world_model(obs_space, world_model,
                               lambda f: make_head(f, heads.hidden, heads.layers, world_model.activation,
                                                   world_model.norm),
                               continue_head=cfg.continue_head)
        self.to(device)
        self.optimizers["model"] = torch.optim.Adam(self.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.make_replay(cfg.replay_capacity, cfg.seed)
        self._collect = None  # (agent state, reward accumulated over the held action) between iterations
        self._plan_time, self._plans = 0.0, 0

    # --- acting: filter the observation, plan on the prior ---------------------------------------------

    def initial_state(self, batch_size: int):
        return {"latent": self.rssm.initial(batch_size),
                # the held action (one-hot per factor if categorical) and env steps left to hold it
                "action": torch.zeros(batch_size, self.action_dim, device=self.device),
                "countdown": torch.zeros(batch_size, dtype=torch.long, device=self.device)}

    @torch.no_grad()
    def plan(self, latent: dict[str, Tensor], action_mask: Tensor | None = None) -> Tensor:
        """CEM on the prior from `latent` [B]: one batched rollout of B x candidates sequences per iteration
        (B split into chunks of at most `max_plan_rows` rollouts).
        Returns the first action of the best sequence belief: [B, A] (one-hot per factor for categorical actions)."""
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

        if not self.continuous:
            probs = cem_categorical(score, batch, self.action_factors, cfg, self.device, first_mask=action_mask)
            return factor_onehots(factor_indices(probs[:, 0], self.action_factors), self.action_factors)
        mean, _ = cem_continuous(score, batch, self.action_dim, cfg, self.device)
        return mean[:, 0]

    @torch.no_grad()
    def belief_features(self, obs, state, is_first):
        """RSSM features [deter | stoch] of the posterior mean after obs (given the held action)."""
        state = self.initial_state(obs.shape[0]) if state is None else state
        post, _ = self.rssm.obs_step(state["latent"], state["action"], self.encoder(obs),
                                     is_first.to(self.device, torch.bool), sample=False)
        return self.rssm.features(post), {**state, "latent": post}

    @torch.no_grad()
    def act(self, obs, state, is_first, action_mask=None, explore=True, random=False):
        """Hold the current action for `action_repeat` steps; where a new one is due (or an episode starts)
        filter the observation into the belief and plan (or draw a random action when `random`)."""
        state = self.initial_state(obs.shape[0]) if state is None else state
        action_mask = self.check_action_mask(action_mask)
        first = is_first.to(self.device, torch.bool)
        due = (first | (state["countdown"] <= 0)).nonzero().squeeze(-1)
        latent, held, countdown = dict(state["latent"]), state["action"].clone(), state["countdown"].clone()
        if len(due):
            post, _ = self.rssm.obs_step({k: v[due] for k, v in latent.items()}, held[due],
                                         self.encoder(obs[due]), first[due], sample=False)
            mask = None if action_mask is None else action_mask[due]
            if random:  # categorical: epsilon-greedy at epsilon 1 (a uniform action)
                new = self.uniform_action(len(due), mask) if self.continuous else self.explore(held[due], mask, 1.0)
            else:
                t0 = time.perf_counter()
                new = self.plan(post, mask)
                self._plan_time, self._plans = self._plan_time + time.perf_counter() - t0, self._plans + len(due)
                new = self.explore(new, mask, self.cfg.expl_noise) if explore else new
            latent = {k: v.index_copy(0, due, post[k]) for k, v in latent.items()}
            held, countdown = held.index_copy(0, due, new), countdown.index_fill(0, due, self.cfg.action_repeat)
        state = {"latent": latent, "action": held, "countdown": countdown - 1}
        return self.env_action(held), state

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
            # the previous held action ends at this obs (or an episode starts): one replay step
            self.replay.add_observations(np.flatnonzero(due), collector.obs, state["action"].cpu().numpy(),
                                         reward_sum, first)
            reward_sum[due] = 0.0
            mask = collector.tensor(collector.action_mask)
            action, state = self.act(collector.obs_tensor(), state, collector.tensor(first), mask, True, random)
            step = collector.step(action)
            reward_sum += step.reward
            self.replay.add_final_observations(step, state["action"].cpu().numpy(), reward_sum)
            reward_sum[step.done] = 0.0
        self._collect = (state, reward_sum)

    # --- learning the world model ------------------------------------------------------------------------

    def model_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        model, post, prior, metrics = world_model_loss(
            batch, self.encoder, self.rssm, self.decoder, lambda f, r: (self.reward_head(f) - r).pow(2),
            self.continue_head, self.kl_cfg, self.onehot_groups, overshooting_distance=cfg.overshooting_distance,
            overshooting_beta=cfg.overshooting_kl_beta)
        metrics["wm/prior_entropy"] = self.rssm.dist(prior).entropy().mean()
        metrics["wm/post_entropy"] = self.rssm.dist(post).entropy().mean()
        return model, metrics

    def update(self) -> dict[str, float]:
        loss, metrics = self.model_loss(self.replay.sample(self.cfg.batch_size, self.cfg.seq_len, self.device))
        (grad_norm,) = self.optimizer_step(["model"], loss, [(self.parameters(), self.cfg.grad_clip)])
        return {**{k: v.item() for k, v in metrics.items()}, "wm/grad_norm": grad_norm.item()}

    def train_iteration(self, collector) -> dict[str, float]:
        cfg = self.cfg
        if self.replay.episodes < cfg.seed_episodes:
            self.collect(collector, cfg.seed_episodes - self.replay.episodes, random=True)
        while len(self.replay) < cfg.seq_len:  # short seed episodes (a solved cube): seed until one chunk fits
            self.collect(collector, 1, random=True)
        t0 = time.perf_counter()
        history = [self.update() for _ in range(cfg.collect_interval)]
        update_time = time.perf_counter() - t0
        self._plan_time, self._plans = 0.0, 0
        self.collect(collector, cfg.collect_episodes, random=False)
        metrics = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
        metrics.update({"perf/updates_per_s": cfg.collect_interval / max(update_time, 1e-9),
                        "perf/plan_ms": 1000 * self._plan_time / max(self._plans, 1),
                        "train/replay_steps": float(len(self.replay)),
                        "train/replay_episodes": float(self.replay.episodes)})
        return metrics
