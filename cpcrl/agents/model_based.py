"""What PlaNet and Dreamer share: the world model built from `world_model` (encoder, RSSM, decoder, reward and
continue heads, in that order), the sequence replay and its place in checkpoints, the action encoding and
exploration noise. The world-model loss itself is `cpcrl.objectives.world_model.world_model_loss`; writing a
collection step into the replay is `SequenceReplay.add_observations` / `add_final_observations`.

Actions, as the RSSM and the replay see them: a Box action as it is, a Discrete one as its one-hot, a MultiDiscrete
one as its factors' concatenated one-hots (`[sum(nvec)]`); `env_action` turns them into what the env takes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpcrl.agents.base import Agent
from cpcrl.data.replay import SequenceReplay
from cpcrl.nets.codecs import make_decoder, make_encoder, make_head
from cpcrl.nets.distributions import factor_indices, factor_onehots
from cpcrl.nets.rssm import make_rssm
from cpcrl.objectives.world_model import WorldModelConfig


class ModelBasedAgent(Agent):
    world_models = {"rssm_gaussian": WorldModelConfig, "rssm_discrete": WorldModelConfig}
    multi_discrete_actions = True
    image_observations = True
    compiled_steps = "the RSSM's obs_step and img_step (observe, imagine, planning, acting)"

    def build_world_model(self, obs_space, wm: WorldModelConfig, reward_head: Callable[[int], nn.Module],
                          continue_head: bool = True) -> None:
        """encoder, rssm, decoder (+ one-hot groups), reward_head(feature_dim), continue_head (or None); every one
        with `wm.norm` after its hidden layers (`reward_head` builds its own: pass it `wm.norm`)."""
        self.kl_cfg = wm.kl
        self.encoder = make_encoder(obs_space, wm.encoder, wm.norm)
        self.rssm = make_rssm(wm, self.encoder.out_dim, self.action_dim)
        self.decoder, self.onehot_groups = make_decoder(obs_space, self.rssm.feature_dim, wm.decoder, wm.norm)
        self.reward_head = reward_head(self.rssm.feature_dim)
        self.continue_head = (make_head(self.rssm.feature_dim, wm.heads.hidden, wm.heads.layers, wm.activation,
                                        wm.norm) if continue_head else None)

    def compile_steps(self, mode: str) -> None:
        super().compile_steps(mode)
        self.rssm.compile_steps(mode)

    def make_replay(self, capacity: int, seed: int | None) -> None:
        self.replay = SequenceReplay(self.obs_space.shape, self.obs_space.dtype, self.action_dim, capacity, seed=seed)

    # --- actions and exploration ---------------------------------------------------------------------------

    def env_action(self, action: Tensor) -> Tensor:
        """The agent's action vector -> the env's: int [B] (Discrete), int [B, F] (MultiDiscrete), or the box value."""
        if self.discrete:
            return action.argmax(-1)
        return factor_indices(action, self.nvec) if self.multi_discrete else action

    def action_vector(self, actions: Tensor) -> Tensor:
        """The env's actions (int [B] or [B, F]) -> the agent's action vector (one-hot per factor)."""
        if self.discrete:
            return F.one_hot(actions.long(), self.action_dim).float()
        return factor_onehots(actions, self.nvec) if self.multi_discrete else actions

    def uniform_action(self, n: int, action_mask: Tensor | None) -> Tensor:
        """Uniform over the valid actions, per factor (one-hots), or over the box [-1, 1]."""
        if self.continuous:
            return torch.rand(n, self.action_dim, device=self.device) * 2 - 1
        return factor_onehots(self.uniform_indices(n, action_mask), self.action_factors)

    def explore(self, action: Tensor, action_mask: Tensor | None, noise: float) -> Tensor:
        """Categorical: each factor replaced by a uniform valid one with probability `noise` (epsilon-greedy; the
        factors independently, so the exploring policy stays factorised). Continuous: Gaussian noise of std
        `noise`, clipped to the box."""
        if self.continuous:
            return (action + noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        uniform = self.uniform_action(action.shape[0], action_mask)
        pick = torch.rand(action.shape[0], len(self.action_factors), device=self.device) < noise
        if self.multi_discrete:  # one draw per factor, spread over the factor's one-hot
            pick = pick.repeat_interleave(torch.tensor(self.action_factors, device=self.device), 1)
        return torch.where(pick, uniform, action)

    # --- checkpoints: the replay goes in only with agent.save_replay ---------------------------------------

    def checkpoint_state(self) -> dict:
        state = super().checkpoint_state()
        if self.cfg.save_replay:
            state["replay"] = self.replay.state_dict()
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
