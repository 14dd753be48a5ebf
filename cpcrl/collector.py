"""Stepping a vector env for an agent, and greedy evaluation.

The collector owns what lives between agent calls: the current observation, which envs start an
episode, the running episode statistics and the env-step counter. Agents decide how much to collect
(an episode batch for REINFORCE, T steps for PPO, one step at a time for world models).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Step:
    """One vector step. `obs` is what the agent acted on; `final_obs` the true next obs (for bootstrapping)."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    is_first: np.ndarray
    action_mask: np.ndarray | None

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class Collector:
    def __init__(self, envs, device: torch.device, seed: int | None, window: int = 100):
        self.envs, self.device = envs, device
        self.num_envs = envs.num_envs
        self.env_step = 0
        self.episodes = 0
        self.returns, self.lengths, self.solved = (deque(maxlen=window) for _ in range(3))
        self.has_solved = False
        # the episodes that ended since the last `take_ended` (all of them, not a window): the training loop's
        # per-iteration mean return (train/mmer)
        self.ended_return_sum, self.ended_episodes = 0.0, 0
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        obs, info = self.envs.reset(seed=seed)
        self.obs = obs
        self.is_first = np.ones(self.num_envs, dtype=bool)
        self.action_mask = info.get("action_mask")
        self.episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_length = np.zeros(self.num_envs, dtype=np.int64)

    def tensor(self, x: np.ndarray | None) -> torch.Tensor | None:
        if x is None:
            return None
        t = torch.from_numpy(np.asarray(x))
        return t.to(self.device, non_blocking=True)

    def obs_tensor(self) -> torch.Tensor:
        return self.tensor(self.obs.astype(np.float32, copy=False))

    def step(self, action) -> Step:
        action = action.detach().cpu().numpy() if isinstance(action, torch.Tensor) else np.asarray(action)
        obs, reward, terminated, truncated, info = self.envs.step(action)
        done = terminated | truncated
        # under env.action_repeat a step is several env steps: budgets and lengths count env steps
        env_steps = info.get("env_steps")
        self.episode_return += reward
        self.episode_length += 1 if env_steps is None else env_steps
        if done.any():
            self.returns.extend(self.episode_return[done].tolist())
            self.lengths.extend(self.episode_length[done].tolist())
            if "solved" in info:
                self.has_solved = True
                self.solved.extend(info["solved"][done].tolist())
            self.episodes += int(done.sum())
            self.ended_return_sum += float(self.episode_return[done].sum())
            self.ended_episodes += int(done.sum())
            self.episode_return[done] = 0.0
            self.episode_length[done] = 0
        step = Step(self.obs, action, reward, terminated, truncated, info["final_obs"], self.is_first,
                    self.action_mask)
        self.obs, self.is_first, self.action_mask = obs, done, info.get("action_mask")
        self.env_step += self.num_envs if env_steps is None else int(env_steps.sum())
        return step

    def take_ended(self) -> tuple[float, int]:
        """-> (sum of the returns, count) of the episodes that ended since the last call; starts a new count."""
        ended = self.ended_return_sum, self.ended_episodes
        self.ended_return_sum, self.ended_episodes = 0.0, 0
        return ended

    def episode_metrics(self) -> dict[str, float]:
        if not self.returns:
            return {"train/episodes": self.episodes}
        out = {"train/episode_return": float(np.mean(self.returns)),
               "train/episode_length": float(np.mean(self.lengths)), "train/episodes": self.episodes}
        if self.has_solved:
            out["train/solve_rate"] = float(np.mean(self.solved))
        return out


@torch.no_grad()
def evaluate(agent, envs, episodes: int, greedy: bool = True, prefix: str = "eval/",
             reset_hidden_every: int | None = None) -> dict[str, float]:
    """Play `episodes` whole episodes (each env plays one per round, so short episodes are not favoured)."""
    n, device = envs.num_envs, agent.device
    returns, lengths, solves, has_solved = [], [], [], False
    was_training = agent.training
    agent.eval()
    while len(returns) < episodes:
        obs, info = envs.reset()
        state = agent.initial_state(n)
        is_first = np.ones(n, dtype=bool)
        active = np.ones(n, dtype=bool)
        ret, length, solved = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        t = 0
        while active.any():
            first = is_first | (reset_hidden_every is not None and t > 0 and t % reset_hidden_every == 0)
            mask = info.get("action_mask")
            action, state = agent.act(torch.from_numpy(obs.astype(np.float32, copy=False)).to(device), state,
                                      torch.from_numpy(first).to(device),
                                      None if mask is None else torch.from_numpy(mask).to(device),
                                      explore=not greedy)
            obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            ret += reward * active
            length += active * info.get("env_steps", 1)  # env steps, also under env.action_repeat
            if "solved" in info:
                has_solved = True
                solved |= info["solved"] & active
            done = terminated | truncated
            is_first = done
            active &= ~done
            t += 1
        take = min(n, episodes - len(returns))
        returns += ret[:take].tolist()
        lengths += length[:take].tolist()
        solves += solved[:take].tolist()
    agent.train(was_training)
    out = {f"{prefix}return_mean": float(np.mean(returns)), f"{prefix}return_std": float(np.std(returns)),
           f"{prefix}length_mean": float(np.mean(lengths)), f"{prefix}episodes": len(returns)}
    if has_solved:
        out[f"{prefix}solve_rate"] = float(np.mean(solves))
    return out
