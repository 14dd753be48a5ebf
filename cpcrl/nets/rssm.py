"""Recurrent state-space model (PlaNet, Dreamer v1-v3): one module, Gaussian or categorical latents.

    h_t = GRU(h_{t-1}, MLP([s_{t-1}, a_{t-1}]))     deterministic path (`gru`: plain | layernorm, below)
    p(s_t | h_t)                                    prior      (imagination, planning)
    q(s_t | h_t, e_t)                               posterior  (filtering; e_t = encoder(o_t))

Layout: time-major `[T, B, ...]` everywhere (as `cpcrl.objectives.returns`). `actions[t]` is a_{t-1}, the
action that led *into* observation t (zeros where `is_first[t]`), so step t of `observe` consumes
`(embed[t], actions[t], is_first[t])`. `is_first[t]` resets the state *and* the previous action to zero
before step t, so sequences can hold several episodes.

A state is a dict of tensors with the same leading shape:
    deter [.., D]  stoch [.., S]  (S = stoch for Gaussian, latents*classes for categorical, flat one-hot)
    + the stats of the distribution stoch was drawn from:
      Gaussian: mean, std [.., stoch];   categorical: logits [.., latents, classes] (unimix already applied)
`features(state) = cat(deter, stoch)` is what heads, planners and policies read; `dist(state)` rebuilds
the distribution (for KL, entropy). Every method accepts any number of leading dims.

The input, prior and posterior nets are one-hidden-layer `cpcrl.nets.mlp` stacks (`norm`: none | layer). The
GRU is `nn.GRUCell` (`gru=plain`, PlaNet, Dreamer v1) or DreamerV3's normalised cell (`gru=layernorm`, 2023 code,
= sheeprl's LayerNormGRUCell):
    r, c, u = split(LayerNorm(W [h, x]))        one bias-free matrix, the norm over all 3H gate inputs
    h'      = sigmoid(u - 1) * tanh(sigmoid(r) * c) + (1 - sigmoid(u - 1)) * h
The -1 biases the update gate towards keeping h (sigmoid(-1) = 0.27 new at init; nn.GRUCell: 0.5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal, OneHotCategoricalStraightThrough, kl_divergence

from cpcrl.checks import choice
from cpcrl.device import compiled
from cpcrl.nets.distributions import straight_through_onehot, unimix_logits
from cpcrl.nets.mlp import NORM_EPS, mlp

State = dict[str, Tensor]
KINDS = ("gaussian", "categorical")
GRUS = ("plain", "layernorm")


def stack_states(states: list[State], dim: int = 0) -> State:
    return {k: torch.stack([s[k] for s in states], dim) for k in states[0]}


def detach_state(state: State) -> State:
    return {k: v.detach() for k, v in state.items()}


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply `fn` to every tensor, e.g. `map_state(lambda x: x.flatten(0, 1), post)` for `[T, B] -> [T*B]`."""
    return {k: fn(v) for k, v in state.items()}


class LayerNormGRUCell(nn.Module):
    """DreamerV3's GRU (2023 code, `_gru`; sheeprl 0.8.4 `LayerNormGRUCell`): the call of `nn.GRUCell`,
    `cell(x [N, I], h [N, H]) -> h' [N, H]`, with the gates of the module docstring."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size + input_size, 3 * hidden_size, bias=False)  # the norm shifts instead
        self.norm = nn.LayerNorm(3 * hidden_size, eps=NORM_EPS)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        reset, cand, update = self.norm(self.linear(torch.cat([h, x], -1))).chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)  # keep most of h at the start
        return update * cand + (1.0 - update) * h


class RSSM(nn.Module):
    def __init__(self, embed_dim: int, action_dim: int, kind: str = "gaussian", deter: int = 200, stoch: int = 30,
                 hidden: int = 200, min_std: float = 0.1, latents: int = 32, classes: int = 32,
                 unimix: float = 0.01, activation: str = "elu", norm: str = "none", gru: str = "plain"):
        super().__init__()
        self.kind, self.min_std, self.unimix = kind, min_std, unimix
        self.latents, self.classes = latents, classes
        self.deter_dim = deter
        self.stoch_dim = stoch if kind == "gaussian" else latents * classes
        self.stats_dim = 2 * stoch if kind == "gaussian" else latents * classes
        self.action_dim, self.embed_dim = action_dim, embed_dim
        self.img_in = mlp(self.stoch_dim + action_dim, [hidden], None, activation, norm)
        self.gru = nn.GRUCell(hidden, deter) if choice("gru", gru, GRUS) == "plain" else LayerNormGRUCell(hidden, deter)
        self.prior_net = mlp(deter, [hidden], self.stats_dim, activation, norm)
        self.post_net = mlp(deter + embed_dim, [hidden], self.stats_dim, activation, norm)

    def compile_steps(self, mode: str) -> None:
        """Compile `obs_step` and `img_step`, the bodies of every sequential loop (observe, imagine, planning,
        acting), in place (`cpcrl.device.compiled`; `none` leaves them eager). The loops stay Python: each step is
        one compiled graph instead of tens of kernel launches, and with `reduce-overhead` one CUDA-graph replay."""
        self.obs_step = compiled(self.obs_step, mode)  # obs_step's own call of img_step is traced into its graph
        self.img_step = compiled(self.img_step, mode)

    @property
    def feature_dim(self) -> int:
        return self.deter_dim + self.stoch_dim

    # --- states and distributions ---------------------------------------------------------------------

    def initial(self, batch_size: int | tuple[int, ...]) -> State:
        """Zero state (and its stats) for fresh episodes."""
        shape = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
        p = self.prior_net[0].weight
        state = {"deter": p.new_zeros(*shape, self.deter_dim), "stoch": p.new_zeros(*shape, self.stoch_dim)}
        if self.kind == "gaussian":
            state.update(mean=p.new_zeros(*shape, self.stoch_dim), std=p.new_ones(*shape, self.stoch_dim))
        else:
            state["logits"] = p.new_zeros(*shape, self.latents, self.classes)
        return state

    def features(self, state: State) -> Tensor:
        return torch.cat([state["deter"], state["stoch"]], -1)

    def dist(self, state: State):
        """The distribution of `stoch`, event dims summed: `log_prob`, `entropy`, `kl` are per state."""
        if self.kind == "gaussian":
            return Independent(Normal(state["mean"], state["std"]), 1)
        return Independent(OneHotCategoricalStraightThrough(logits=state["logits"]), 1)

    def kl(self, lhs: State, rhs: State) -> Tensor:
        """KL(lhs || rhs) per state, summed over latent dims: `[...]`. Detach an argument to stop its gradient."""
        return kl_divergence(self.dist(lhs), self.dist(rhs))

    def _stats(self, raw: Tensor, sample: bool) -> State:
        if self.kind == "gaussian":
            mean, std = raw.chunk(2, -1)
            std = F.softplus(std) + self.min_std
            stoch = mean + std * torch.randn_like(std) if sample else mean  # reparameterised
            return {"stoch": stoch, "mean": mean, "std": std}
        logits = unimix_logits(raw.unflatten(-1, (self.latents, self.classes)), self.unimix)
        if sample:
            stoch, _ = straight_through_onehot(logits, 0.0)  # unimix is already in the logits
        else:
            probs = logits.softmax(-1)
            stoch = F.one_hot(logits.argmax(-1), self.classes).to(probs) + probs - probs.detach()
        return {"stoch": stoch.flatten(-2), "logits": logits}

    # --- one step -------------------------------------------------------------------------------------

    def img_step(self, prev: State, prev_action: Tensor, sample: bool = True) -> State:
        """Prior step: h_t from (h_{t-1}, s_{t-1}, a_{t-1}), then s_t ~ p(s_t | h_t). No observation read."""
        lead = prev["deter"].shape[:-1]
        x = self.img_in(torch.cat([prev["stoch"], prev_action], -1))
        deter = self.gru(x.reshape(-1, x.shape[-1]), prev["deter"].reshape(-1, self.deter_dim)).reshape(*lead, -1)
        return {"deter": deter, **self._stats(self.prior_net(deter), sample)}

    def obs_step(self, prev: State, prev_action: Tensor, embed: Tensor, is_first: Tensor,
                 sample: bool = True) -> tuple[State, State]:
        """Filter one observation: reset where `is_first`, prior step, then posterior. -> (post, prior)."""
        first = is_first.to(torch.bool)

        def reset(x: Tensor, init: Tensor) -> Tensor:
            return torch.where(first.view(*first.shape, *[1] * (x.dim() - first.dim())), init, x)
        init = self.initial(first.shape)
        prev = {k: reset(v, init[k]) for k, v in prev.items()}
        prev_action = reset(prev_action, torch.zeros_like(prev_action))
        prior = self.img_step(prev, prev_action, sample)
        post = {"deter": prior["deter"],
                **self._stats(self.post_net(torch.cat([prior["deter"], embed], -1)), sample)}
        return post, prior

    # --- sequences ------------------------------------------------------------------------------------

    def observe(self, embed: Tensor, actions: Tensor, is_first: Tensor, state: State | None = None,
                sample: bool = True) -> tuple[State, State]:
        """Filter a sequence. embed [T, B, E], actions [T, B, A] (a_{t-1}), is_first [T, B] -> (post, prior),
        each a state of `[T, B, ...]` tensors. `state` is the state before step 0 (zeros if None)."""
        state = self.initial(embed.shape[1]) if state is None else state
        posts, priors = [], []
        for t in range(embed.shape[0]):  # the recurrence; everything else is batched
            state, prior = self.obs_step(state, actions[t], embed[t], is_first[t], sample)
            posts.append(state), priors.append(prior)
        return stack_states(posts), stack_states(priors)

    def imagine(self, policy: Callable[[Tensor], Tensor] | Tensor, start: State, horizon: int | None = None,
                sample: bool = True) -> tuple[State, Tensor]:
        """Roll the prior forward from `start` (any leading shape L), never reading an observation.

        `policy`: a callable features [L, F] -> action [L, A] (called on each state before it steps;
        gradients flow through it and the dynamics), or a tensor of actions [H, L, A].
        Returns (states [H, L, ...], actions [H, L, A]) where `states[k]` follows `actions[k]` taken in
        `states[k-1]` (`states[-1]` = start, not included). Gradients are kept (backprop through dynamics).
        """
        if isinstance(policy, Tensor):
            horizon = policy.shape[0] if horizon is None else horizon
        elif horizon is None:
            raise ValueError("imagine(policy=callable) needs a horizon")
        state, states, actions = start, [], []
        for k in range(horizon):
            action = policy[k] if isinstance(policy, Tensor) else policy(self.features(state))
            state = self.img_step(state, action, sample)
            states.append(state), actions.append(action)
        return stack_states(states), torch.stack(actions)


def make_rssm(cfg, embed_dim: int, action_dim: int) -> RSSM:
    """RSSM from a `world_model` config (`cpcrl.objectives.world_model.WorldModelConfig`)."""
    return RSSM(embed_dim, action_dim, kind=cfg.kind, deter=cfg.deter, stoch=cfg.stoch, hidden=cfg.hidden,
                min_std=cfg.min_std, latents=cfg.latents, classes=cfg.classes, unimix=cfg.unimix,
                activation=cfg.activation, norm=cfg.norm, gru=cfg.gru)
