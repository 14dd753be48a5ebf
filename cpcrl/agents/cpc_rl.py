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

import torch

from cpcrl.agents.ppo_lstm import PPOLSTM
from cpcrl.errors import ConfigError
from cpcrl.nets.cpc import PROJECTIONS, CPCHead
from cpcrl.objectives.infonce import ANCHORS, NEGATIVES, infonce_loss

CPC_DEFAULTS = {"weight": 0.1, "horizon": 4, "projection": "per_horizon", "negatives": "batch",
                "anchors": "all", "temperature": 1.0, "action_conditioned": False}
RL_LOSSES = ("ppo", "a2c")


class CPCRL(PPOLSTM):
    name = "cpc_rl"
    world_models = ("lstm",)

    def __init__(self, obs_space, action_space, device, world_model=None, rl_loss: str = "ppo",
                 cpc: dict | None = None, **ppo):
        if ppo.get("separate_critic_lstm"):
            raise ConfigError("agent=cpc_rl trains one belief shared by RL and InfoNCE: "
                              "agent.separate_critic_lstm must be false (valid for agent=ppo_lstm)")
        super().__init__(obs_space, action_space, device, world_model, **ppo)
        cpc = {**CPC_DEFAULTS, **(cpc or {})}
        unknown = set(cpc) - set(CPC_DEFAULTS)
        if unknown:
            raise ConfigError(f"agent.cpc has no key {sorted(unknown)[0]!r}: valid are {', '.join(CPC_DEFAULTS)}")
        if rl_loss not in RL_LOSSES:
            raise ConfigError(f"agent.rl_loss={rl_loss!r}: valid are {', '.join(RL_LOSSES)}")
        if rl_loss == "a2c" and self.update_epochs != 1:
            raise ConfigError("agent.rl_loss=a2c is an on-policy gradient: set agent.update_epochs=1")
        if not isinstance(cpc["horizon"], int) or not 1 <= cpc["horizon"] < self.truncation_length:
            raise ConfigError(f"agent.cpc.horizon={cpc['horizon']!r}: must be in 1..{self.truncation_length - 1} "
                              "(pairs live inside one truncation_length chunk)")
        if cpc["weight"] < 0 or cpc["temperature"] <= 0:
            raise ConfigError(f"agent.cpc.weight={cpc['weight']}, temperature={cpc['temperature']}: "
                              "weight must be >= 0 and temperature > 0")
        for key, valid in (("negatives", NEGATIVES), ("anchors", ANCHORS), ("projection", PROJECTIONS)):
            if cpc[key] not in valid:
                raise ConfigError(f"agent.cpc.{key}={cpc[key]!r}: valid are {', '.join(valid)}")
        if cpc["action_conditioned"] and not self.discrete:
            raise ConfigError("agent.cpc.action_conditioned=true needs a Discrete action space")
        self.rl_loss, self.cpc = rl_loss, cpc
        self.cpc_head = CPCHead(self.belief.feature_dim, self.belief.hidden, cpc["horizon"], cpc["projection"],
                                self.action_dim if cpc["action_conditioned"] else None).to(device)
        self.make_optimizer()

    def rl_losses(self, ch, idx, feats):
        if self.rl_loss == "ppo":
            return super().rl_losses(ch, idx, feats)
        logp, entropy, value = self._heads(ch, idx, feats)
        adv = ch["advantages"][:, idx]
        if self.norm_adv:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = -(adv * logp).mean()
        v_loss = 0.5 * ((value - ch["returns"][:, idx]) ** 2).mean()
        ent = entropy.mean()
        zero = torch.zeros((), device=feats.device)
        return {"total": pg_loss + self.value_coef * v_loss - self.entropy_coef * ent, "policy": pg_loss,
                "value": v_loss, "entropy": ent, "approx_kl": zero, "clipfrac": zero}

    def losses(self, ch, idx):
        z, feats = self.forward_chunks(ch, idx)
        terms = self.rl_losses(ch, idx, feats)
        # weight 0 is the no-CPC baseline: measure the accuracy but keep CPC out of the graph
        with torch.set_grad_enabled(self.cpc["weight"] > 0 and torch.is_grad_enabled()):
            actions = ch["actions"][:, idx] if self.cpc["action_conditioned"] else None
            cpc, accuracy, _ = infonce_loss(self.cpc_head(feats, actions), z, ch["is_first"][:, idx],
                                            self.cpc["negatives"], self.cpc["temperature"],
                                            anchors=self.cpc["anchors"])
        if self.cpc["weight"] > 0:
            terms["total"] = terms["total"] + self.cpc["weight"] * cpc
        terms["cpc"] = cpc
        for k, acc in enumerate(accuracy, start=1):
            terms[f"cpc/acc_k{k}"] = acc
        return terms
