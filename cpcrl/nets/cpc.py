"""The CPC prediction head: from belief c_t to predictions of the latents z_{t+1..t+K}."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cpcrl.checks import choice, positive_int

PROJECTIONS = ("per_horizon", "shared")


class CPCHead(nn.Module):
    """`per_horizon`: one linear W_k per k (the CPC paper). `shared`: one projector for every k (seed 000).

    With `action_dim`, predictions are action-conditioned (CPC|A): a GRU started from c_t reads the
    actions a_t..a_{t+k-1}, and its k-th output is projected to predict z_{t+k}.
    """

    def __init__(self, belief_dim: int, latent_dim: int, horizon: int, projection: str = "per_horizon",
                 action_dim: int | None = None, action_hidden: int = 64):
        super().__init__()
        choice("cpc.projection", projection, PROJECTIONS)
        positive_int("cpc.horizon", horizon)
        self.horizon, self.projection, self.action_dim = horizon, projection, action_dim
        in_dim = belief_dim
        if action_dim is not None:
            self.action_init = nn.Linear(belief_dim, action_hidden)
            self.action_gru = nn.GRU(action_dim, action_hidden)
            in_dim = action_hidden
        n_proj = horizon if projection == "per_horizon" else 1
        self.weight = nn.Parameter(torch.randn(n_proj, in_dim, latent_dim) / in_dim**0.5)

    def forward(self, c: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """c [T, B, H] (and actions [T, B] int or [T, B, A] float for CPC|A) -> preds [K, T, B, D]."""
        K, (T, B, _) = self.horizon, c.shape
        weight = self.weight if self.projection == "per_horizon" else self.weight.expand(K, -1, -1)
        if self.action_dim is None:
            return torch.einsum("tbh,khd->ktbd", c, weight)
        if actions.dim() == 2:
            actions = F.one_hot(actions.long(), self.action_dim).float()
        # Window of the K actions after each t: a_t..a_{t+K-1} (zeros past the end; those pairs are masked).
        padded = F.pad(actions, (0, 0, 0, 0, 0, K))
        window = torch.stack([padded[k: k + T] for k in range(K)])  # [K, T, B, A]
        h0 = torch.tanh(self.action_init(c)).reshape(1, T * B, -1)
        out, _ = self.action_gru(window.reshape(K, T * B, -1), h0)  # out[k-1] has read a_t..a_{t+k-1}
        return torch.einsum("ktbh,khd->ktbd", out.view(K, T, B, -1), weight)
