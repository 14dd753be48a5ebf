"""Return and advantage estimators: pure tensor functions, time-major `[T, B]`.

Each is a backward recursion over time, vectorised over the batch. Boolean flags (dones,
terminated, continues) may be bool or float; they are cast to the dtype of the rewards/values.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, dones: Tensor | None, gamma: float,
                       bootstrap: Tensor | None = None) -> Tensor:
    """Monte-Carlo returns `R_t = r_t + gamma * (1 - done_t) * R_{t+1}`, `R_T = bootstrap` (zeros if None).

    `done_t` marks that the episode ended at step t, so no return flows back across it.
    rewards, dones: `[T, B]`; bootstrap: `[B]` (the value of the state after the segment). Returns `[T, B]`.
    """
    not_done = torch.ones_like(rewards) if dones is None else 1.0 - dones.to(rewards.dtype)
    ret = torch.zeros_like(rewards[0]) if bootstrap is None else bootstrap.to(rewards.dtype)
    returns = []
    for t in reversed(range(rewards.shape[0])):
        ret = rewards[t] + gamma * not_done[t] * ret
        returns.append(ret)
    return torch.stack(returns[::-1])


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, dones: Tensor,
        gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016). Returns `(advantages, returns)`, both `[T, B]`.

    Termination (a true end state, e.g. the pole fell) has value 0, so we never bootstrap from it;
    truncation (time limit) cut off a live episode, so we bootstrap from V of its final observation.

    `next_values_t = V(s_{t+1})`, where for a step that ended the episode `s_{t+1}` is that episode's final
    observation (not the reset observation the env returned); `dones_t = terminated_t or truncated_t`
    stops the advantage recursion at every episode end. `A_T = 0`; `returns = advantages + values`.
    """
    not_terminated = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - dones.to(values.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    adv = torch.zeros_like(values[0])
    advantages = []
    for t in reversed(range(rewards.shape[0])):
        adv = deltas[t] + gamma * lam * not_done[t] * adv
        advantages.append(adv)
    advantages = torch.stack(advantages[::-1])
    return advantages, advantages + values


def lambda_returns(rewards: Tensor, values: Tensor, continues: Tensor, gamma: float, lam: float) -> Tensor:
    """TD(lambda) returns over an imagined trajectory, DreamerV3 (danijar) convention. Returns `[H-1, B]`.

    Index t of `rewards`/`continues` belongs to state t: the reward and continue flag predicted on
    *arriving* in state t (so `rewards[0]`, `continues[0]` are unused). The recursion is

        R_t = r_{t+1} + gamma * c_{t+1} * ((1 - lam) * v_{t+1} + lam * R_{t+1}),   R_{H-1} = v_{H-1},

    and R_0 .. R_{H-2} are returned (no return target exists for the last state). Differentiable in
    all inputs: Dreamer v1 backpropagates the actor loss through these returns into the value net.

    Hand check (rew=[0,1,2,3], val=[10,20,30,40], cont=1, gamma=0.5):
      lam=0.5: R_2 = 3 + .5*(.5*40 + .5*40) = 23; R_1 = 2 + .5*(.5*30 + .5*23) = 15.25;
               R_0 = 1 + .5*(.5*20 + .5*15.25) = 9.8125
      lam=0:   R_2 = 3 + .5*40 = 23;  R_1 = 2 + .5*30 = 17;  R_0 = 1 + .5*20 = 11
      lam=1:   R_2 = 3 + .5*40 = 23;  R_1 = 2 + .5*23 = 13.5;  R_0 = 1 + .5*13.5 = 7.75
      cont[2]=0, lam=0.5: R_2 = 23;  R_1 = 2 + .5*0*(...) = 2;  R_0 = 1 + .5*(.5*20 + .5*2) = 6.5
    """
    discounts = gamma * continues[1:].to(values.dtype)
    # The (1 - lam) one-step bootstrap part does not depend on the recursion: compute it for all t at once.
    one_step = rewards[1:] + discounts * (1.0 - lam) * values[1:]
    ret = values[-1]
    returns = []
    for t in reversed(range(values.shape[0] - 1)):
        ret = one_step[t] + discounts[t] * lam * ret
        returns.append(ret)
    return torch.stack(returns[::-1])
