"""CPC+RL (seed 000): one LSTM belief c_t trained by the RL loss and by InfoNCE on future latents.

    o_t -> encoder -> z_t -> LSTM -> c_t -> policy / value heads          (the recurrent PPO agent)
                                       \\-> W_k c_t  ~  z_{t+k}, k = 1..K   (InfoNCE, in-batch negatives)

    loss = L_rl + weight * L_cpc

Both terms reach the LSTM and the encoder; the CPC targets z are not detached (the encoder learns latents
that are predictable from the belief). Rollouts, truncated BPTT and GAE are the recurrent PPO agent's;
CPC runs on the same minibatch chunks (restarted from stored states), so a chunk of `truncation_length`
steps gives pairs up to `horizon` apart, never across an episode start. `rl_loss=a2c` swaps the clipped
surrogate for the seed's plain advantage policy gradient (one on-policy pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cpcrl.agents.ppo_lstm import PPOLSTM, PPOConfig
from cpcrl.checks import Params, boolean, non_negative, one_of, param, positive, positive_int
from cpcrl.errors import ConfigError
from cpcrl.nets.cpc import PROJECTIONS, CPCHead
from cpcrl.nets.recurrent import LSTMConfig
from cpcrl.objectives.infonce import ANCHORS, NEGATIVES, infonce_loss

RL_LOSSES = ("ppo", "a2c")


@dataclass
class CPCParams(Params):
    key = "agent.cpc"
    weight: float = param(0.1, non_negative)  # lambda in L_rl + lambda * L_cpc; 0 = plain recurrent PPO (acc logged)
    horizon: int = param(4, positive_int)     # predict z_{t+1..t+K}; K < truncation_length
    projection: str = param("per_horizon", one_of(*PROJECTIONS))  # per_horizon (one W_k per k) | shared (seed 000)
    negatives: str = param("batch", one_of(*NEGATIVES))  # batch (other sequences at t+k) | batch_time (all latents)
    anchors: str = param("all", one_of(*ANCHORS))        # all (every t with t+k < T) | common (t < T-K, seed 000)
    temperature: float = param(1.0, positive)
    action_conditioned: bool = param(False, boolean)     # CPC|A: a GRU over a_t..a_{t+k-1} before predicting z_{t+k}


@dataclass
class CPCRLConfig(PPOConfig):
    """CPC+RL: every recurrent-PPO setting (PPOConfig), the RL loss, and the InfoNCE term."""

    _target_: str = "cpcrl.agents.cpc_rl.CPCRL"
    name: str = "cpc_rl"
    rl_loss: str = param("ppo", one_of(*RL_LOSSES))  # ppo | a2c (seed 000's plain advantage gradient; update_epochs=1)
    cpc: CPCParams = field(default_factory=CPCParams)

    def check(self):
        super().check()
        if self.separate_critic_lstm:
            raise ConfigError("agent=cpc_rl trains one belief shared by RL and InfoNCE: "
                              "agent.separate_critic_lstm must be false (valid for agent=ppo_lstm)")
        if self.rl_loss == "a2c" and self.update_epochs != 1:
            raise ConfigError("agent.rl_loss=a2c is an on-policy gradient: set agent.update_epochs=1")
        if not 1 <= self.cpc.horizon < self.truncation_length:
            raise ConfigError(f"agent.cpc.horizon={self.cpc.horizon!r}: must be in 1..{self.truncation_length - 1} "
                              "(pairs live inside one truncation_length chunk)")


class CPCRL(PPOLSTM):
    name = "cpc_rl"
    Config = CPCRLConfig
    world_models = {"lstm": LSTMConfig}

    def __init__(self, obs_space, action_space, device, cfg: CPCRLConfig, world_model: LSTMConfig):
        super().__init__(obs_space, action_space, device, cfg, world_model)
        if cfg.cpc.action_conditioned and not self.discrete:
            raise ConfigError("agent.cpc.action_conditioned=true needs a Discrete action space")
        self.cpc_head = CPCHead(self.belief.feature_dim, self.belief.hidden, cfg.cpc.horizon, cfg.cpc.projection,
                                self.action_dim if cfg.cpc.action_conditioned else None).to(device)
        self.make_optimizer()

    def losses(self, ch, idx):
        """The whole objective on one minibatch of chunks (restarted from their stored states):

            z_t, c_t = encoder(o_t), LSTM belief                    both trained by both terms
            L_rl     = PPO's clipped surrogate (rl_loss=ppo) or A2C's advantage gradient, + value - entropy
            L_cpc    = InfoNCE of W_k c_t against z_{t+k}, k = 1..K, never across an episode start
            loss     = L_rl + weight * L_cpc
        """
        cpc = self.cfg.cpc
        z, c = self.forward_chunks(ch, idx)
        terms = self.rl_losses(ch, idx, c, self.cfg.clip_coef if self.cfg.rl_loss == "ppo" else None)
        # weight 0 is the no-CPC baseline: measure the accuracy but keep CPC out of the graph
        with torch.set_grad_enabled(cpc.weight > 0 and torch.is_grad_enabled()):
            actions = ch["actions"][:, idx] if cpc.action_conditioned else None
            l_cpc, accuracy, _ = infonce_loss(self.cpc_head(c, actions), z, ch["is_first"][:, idx], cpc.negatives,
                                              cpc.temperature, anchors=cpc.anchors)
        if cpc.weight > 0:
            terms["total"] = terms["total"] + cpc.weight * l_cpc
        terms["cpc"] = l_cpc
        for k, acc in enumerate(accuracy, start=1):
            terms[f"cpc/acc_k{k}"] = acc
        return terms
