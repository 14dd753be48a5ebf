"""Belief modules: observation history -> features. Time-major `[T, B, ...]`, state `(h, c)` each `[L, B, H]`.

`LSTMBelief` (seed 004): `Linear(obs, hidden) + ReLU -> LSTM(hidden, lstm_hidden, num_layers)`.
`MLPBelief` is its feed-forward twin for A/B comparisons: same encoder, an MLP layer in place of the LSTM
and no state (`None`). `TwinBelief` puts two of either side by side (separate actor and critic memories).

Reset semantics (both `step` and `sequence`): where `is_first[t, b]` is set, env b's state is zeroed
*before* step t's observation is processed, so the features at t are exactly those of a fresh sequence
that starts at t. States handed in and returned are the pre-reset states ("the state before this obs").

`sequence` (method "auto"): a block with no reset after its first step is ONE plain `nn.LSTM` call; a block
with resets inside projects the inputs of all steps in one matmul and runs only the masked recurrence
(`h @ W_hh` and the gates) in a short Python loop over the truncation length. Measured on CPU
(`python benchmarks/bench_ppo_lstm.py sequence`), this beat a per-step `nn.LSTM` loop (CleanRL), splitting
the block at reset times, packing the pieces between resets into one `pack_padded_sequence` call, and a
TorchScript version of the masked loop. `method="loop"` keeps the per-step reference for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cpcrl.checks import Params, param, positive_int
from cpcrl.device import compiled

State = tuple[Tensor, Tensor]


@dataclass
class LSTMConfig(Params):
    """world_model=lstm: the belief of ppo_lstm and cpc_rl (seed 004's sizes)."""

    key = "world_model"
    name: str = "lstm"
    hidden: int = param(256, positive_int)      # encoder width: Linear(obs, hidden) + ReLU
    lstm_hidden: int = param(128, positive_int)  # LSTM state size = the belief's feature size
    num_layers: int = param(1, positive_int)     # stacked LSTM layers


def _masked_lstm_layer(xw: Tensor, keep: Tensor, h: Tensor, c: Tensor, w_hh: Tensor):
    """One LSTM layer over `[T, B]` with the state zeroed where `keep[t]` is 0 (PyTorch gate order i, f, g, o).
    `xw` holds the input projections plus both biases for every step, so the loop only does `h @ W_hh`.
    (Plain Python: `torch.jit.script` of this loop measured no faster here, and it is deprecated.)"""
    outs = []
    w = w_hh.t()
    H = h.shape[-1]
    # unbind once: indexing xw[t] would make autograd zero-fill a full [T, B, 4H] gradient per step
    for x_t, keep_t in zip(xw.unbind(0), keep.unbind(0)):
        h = h * keep_t
        c = c * keep_t
        gates = torch.addmm(x_t, h, w)
        act = torch.sigmoid(gates)  # one call for i, f, o (g's slot is unused)
        c = act[:, H : 2 * H] * c + act[:, :H] * torch.tanh(gates[:, 2 * H : 3 * H])
        h = act[:, 3 * H :] * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


def _masked_lstm(x: Tensor, keep: Tensor, state: State, weights) -> tuple[Tensor, State]:
    """Every layer of an LSTM over `[T, B]`, the state zeroed where `keep[t]` is 0; `weights` is
    `nn.LSTM.all_weights` ([w_ih, w_hh, b_ih, b_hh] per layer)."""
    hs, cs = [], []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        # input projections for all steps in one matmul; only the recurrence is a loop
        x, h, c = _masked_lstm_layer(torch.addmm(b_ih + b_hh, x.reshape(-1, x.shape[-1]), w_ih.t()).view(
            x.shape[0], x.shape[1], -1), keep, state[0][layer], state[1][layer], w_hh)
        hs.append(h), cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


def _lstm_step(encoder: nn.Module, weights, obs: Tensor, state: State, is_first: Tensor) -> tuple[Tensor, State]:
    """`LSTMBelief.step` as a function of its weights: obs `[B, obs_dim]` -> features `[B, H]`, new state."""
    keep = (~is_first.to(torch.bool)).to(obs.dtype).view(1, -1, 1)
    out, state = _masked_lstm(encoder(obs).unsqueeze(0), keep, state, weights)
    return out.squeeze(0), state


class LSTMBelief(nn.Module):
    recurrent = True

    def __init__(self, obs_dim: int, hidden: int = 256, lstm_hidden: int = 128, num_layers: int = 1):
        super().__init__()
        self.obs_dim, self.hidden, self.lstm_hidden, self.num_layers = obs_dim, hidden, lstm_hidden, num_layers
        self.feature_dim = lstm_hidden
        self.encoder = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU())
        self.lstm = nn.LSTM(hidden, lstm_hidden, num_layers)  # time-major
        for name, p in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            else:
                nn.init.orthogonal_(p, 1.0)

    def initial_state(self, batch_size: int, device=None) -> State:
        device = device if device is not None else self.encoder[0].weight.device
        z = torch.zeros(self.num_layers, batch_size, self.lstm_hidden, device=device)
        return z, z.clone()

    @staticmethod
    def _reset(state: State, is_first: Tensor) -> State:
        keep = (~is_first.to(torch.bool)).to(state[0].dtype).view(1, -1, 1)
        return state[0] * keep, state[1] * keep

    def step(self, obs: Tensor, state: State, is_first: Tensor) -> tuple[Tensor, State]:
        """obs `[B, obs_dim]`, is_first `[B]` -> features `[B, H]`, new state."""
        out, state = self.lstm(self.encoder(obs).unsqueeze(0), self._reset(state, is_first))
        return out.squeeze(0), state

    def cell_step(self, obs: Tensor, state: State, is_first: Tensor) -> tuple[Tensor, State]:
        """`step` with the gates written out (`_masked_lstm` over one step): what `compile_steps` compiles, as
        dynamo does not trace `nn.LSTM` (nor read its weights). Equal to `step` to float rounding."""
        return _lstm_step(self.encoder, self.lstm.all_weights, obs, state, is_first)

    def compile_steps(self, mode: str) -> None:
        """`device.compile`: `step` (acting, the rollout) becomes the compiled `cell_step`; none keeps nn.LSTM's."""
        if mode != "none":
            step = compiled(_lstm_step, mode)
            self.step = lambda obs, state, is_first: step(self.encoder, self.lstm.all_weights, obs, state, is_first)

    def sequence(self, obs: Tensor, state: State, is_first: Tensor, method: str = "auto") -> tuple[Tensor, State]:
        """obs `[T, B, obs_dim]`, is_first `[T, B]` -> features `[T, B, H]`, state after the last step."""
        return self.recur(self.encoder(obs), state, is_first, method)

    def recur(self, x: Tensor, state: State, is_first: Tensor, method: str = "auto") -> tuple[Tensor, State]:
        """The recurrence alone, over encoded observations `x` `[T, B, hidden]` (CPC+RL also needs x = z_t)."""
        is_first = is_first.to(torch.bool)
        if method == "loop":
            outs = []
            for t in range(x.shape[0]):
                out, state = self.lstm(x[t : t + 1], self._reset(state, is_first[t]))
                outs.append(out)
            return torch.cat(outs), state
        if method != "auto":
            raise ValueError(f"method={method!r}: valid are auto, loop")
        if not bool(is_first[1:].any()):  # no reset inside: one plain nn.LSTM call
            return self.lstm(x, self._reset(state, is_first[0]))
        return self._masked(x, state, is_first)

    def _masked(self, x: Tensor, state: State, is_first: Tensor) -> tuple[Tensor, State]:
        return _masked_lstm(x, (~is_first).to(x.dtype).unsqueeze(-1), state, self.lstm.all_weights)


class MLPBelief(nn.Module):
    """Feed-forward twin of LSTMBelief (same encoder, `Linear(hidden, lstm_hidden) + ReLU` for the LSTM)."""

    recurrent = False

    def __init__(self, obs_dim: int, hidden: int = 256, lstm_hidden: int = 128, num_layers: int = 1):
        super().__init__()
        self.obs_dim, self.hidden, self.feature_dim = obs_dim, hidden, lstm_hidden
        self.encoder = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU())
        self.body = nn.Sequential(nn.Linear(hidden, lstm_hidden), nn.ReLU())

    def initial_state(self, batch_size: int, device=None):
        return None

    def step(self, obs: Tensor, state, is_first: Tensor):
        return self.body(self.encoder(obs)), None

    def compile_steps(self, mode: str) -> None:
        self.step = compiled(self.step, mode)

    def sequence(self, obs: Tensor, state, is_first: Tensor, method: str = "auto"):
        return self.recur(self.encoder(obs), state, is_first)

    def recur(self, x: Tensor, state, is_first: Tensor, method: str = "auto"):
        return self.body(x), None


class _Concat(nn.Module):
    def __init__(self, *parts: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([part(x) for part in self.parts], -1)


class TwinBelief(nn.Module):
    """Two beliefs of the same kind side by side, one for the actor and one for the critic (sb3-contrib's
    default `enable_critic_lstm=True, shared_lstm=False`), so value-loss gradients never shape the policy's
    memory. Features, encodings and states are the two concatenated on the last dim (`[..., actor | critic]`),
    so a caller that stores and restarts states treats it exactly like one belief of twice the width."""

    def __init__(self, actor: nn.Module, critic: nn.Module):
        super().__init__()
        self.actor, self.critic = actor, critic
        self.recurrent = actor.recurrent
        self.hidden, self.feature_dim = actor.hidden, actor.feature_dim + critic.feature_dim
        self.encoder = _Concat(actor.encoder, critic.encoder)

    def _split_state(self, state):
        if state is None:
            return None, None
        (ha, hc), (ca, cc) = (s.split([self.actor.feature_dim, self.critic.feature_dim], -1) for s in state)
        return (ha, ca), (hc, cc)

    @staticmethod
    def _join(a, b):
        features = torch.cat([a[0], b[0]], -1)
        state = None if a[1] is None else tuple(torch.cat([sa, sb], -1) for sa, sb in zip(a[1], b[1]))
        return features, state

    def initial_state(self, batch_size: int, device=None):
        a, c = self.actor.initial_state(batch_size, device), self.critic.initial_state(batch_size, device)
        return None if a is None else tuple(torch.cat([sa, sc], -1) for sa, sc in zip(a, c))

    def step(self, obs: Tensor, state, is_first: Tensor):
        sa, sc = self._split_state(state)
        return self._join(self.actor.step(obs, sa, is_first), self.critic.step(obs, sc, is_first))

    def compile_steps(self, mode: str) -> None:
        self.actor.compile_steps(mode), self.critic.compile_steps(mode)
        self.step = compiled(self.step, mode)  # one graph: the two parts' compiled steps are traced into it

    def sequence(self, obs: Tensor, state, is_first: Tensor, method: str = "auto"):
        return self.recur(self.encoder(obs), state, is_first, method)

    def recur(self, x: Tensor, state, is_first: Tensor, method: str = "auto"):
        xa, xc = x.split([self.actor.hidden, self.critic.hidden], -1)
        sa, sc = self._split_state(state)
        return self._join(self.actor.recur(xa, sa, is_first, method), self.critic.recur(xc, sc, is_first, method))
