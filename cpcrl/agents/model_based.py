"""What PlaNet and Dreamer share: the world model built from `world_model` (encoder, RSSM, decoder, reward and
continue heads, in that order), the sequence replay and its place in checkpoints, and exploration noise. The
world-model loss itself is `cpcrl.objectives.world_model.world_model_loss`; writing a collection step into the
replay is `SequenceReplay.add_observations` / `add_final_observations`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpcrl.agents.base import Agent
from cpcrl.data.replay import SequenceReplay
from cpcrl.nets.codecs import make_decoder, make_encoder, make_head
from cpcrl.nets.rssm import make_rssm
from cpcrl.objectives.world_model import WorldModelConfig


class ModelBasedAgent(Agent):
    world_models = {"rssm_gaussian": WorldModelConfig, "rssm_discrete": WorldModelConfig}

    def build_world_model(self, obs_space, wm: WorldModelConfig, reward_head: Callable[[int], nn.Module],
                          continue_head: bool = True) -> None:
        """encoder, rssm, decoder (+ one-hot groups), reward_head(feature_dim), continue_head (or None)."""
        self.kl_cfg = wm.kl
        self.encoder = make_encoder(obs_space, wm.encoder)
        self.rssm = make_rssm(wm, self.encoder.out_dim, self.action_dim)
        self.decoder, self.onehot_groups = make_decoder(obs_space, self.rssm.feature_dim, wm.decoder)
        self.reward_head = reward_head(self.rssm.feature_dim)
        self.continue_head = (make_head(self.rssm.feature_dim, wm.heads.hidden, wm.heads.layers, wm.activation)
                              if continue_head else None)

    def make_replay(self, capacity: int, seed: int | None) -> None:
        self.replay = SequenceReplay(self.obs_space.shape, self.obs_space.dtype, self.action_dim, capacity, seed=seed)

    # --- exploration --------------------------------------------------------------------------------------

    def uniform_action(self, n: int, action_mask: Tensor | None) -> Tensor:
        """Uniform over the valid actions (one-hot) or over the box [-1, 1]."""
        if self.discrete:
            logits = torch.zeros(n, self.action_dim, device=self.device)
            if action_mask is not None:
                logits = logits.masked_fill(~action_mask.bool(), -torch.inf)
            return F.one_hot(torch.distributions.Categorical(logits=logits).sample(), self.action_dim).float()
        return torch.rand(n, self.action_dim, device=self.device) * 2 - 1

    def explore(self, action: Tensor, action_mask: Tensor | None, noise: float) -> Tensor:
        """Discrete: a uniform action with probability `noise` (epsilon-greedy). Continuous: Gaussian noise of std
        `noise`, clipped to the box."""
        if self.discrete:
            uniform = self.uniform_action(action.shape[0], action_mask)
            pick = torch.rand(action.shape[0], 1, device=self.device) < noise
            return torch.where(pick, uniform, action)
        return (action + noise * torch.randn_like(action)).clamp(-1.0, 1.0)

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
