"""Sequence replay for world models: whole episodes in one flat ring, sampled as `[L, B]` chunks.

Step layout (danijar's): entry t of an episode holds `obs[t]`, `action[t]` = the action that led into
obs t (zeros at the first step), `reward[t]` = the reward received with obs t, `is_first[t]`,
`is_terminal[t]` (a true end state, not a time-limit cut). Actions are stored as float vectors
(one-hot for discrete actions), images as uint8.

Episodes are written contiguously, so a chunk that runs past an episode's end continues into the next
episode, whose first step carries `is_first` -- the RSSM resets there. When the ring overwrites the start
of the oldest episode, the surviving tail gets `is_first` too, so no chunk ever joins two episodes
silently. Only finished episodes are stored; each env's running episode waits in a per-env buffer.
"""

from __future__ import annotations

import numpy as np
import torch

KEYS = ("obs", "action", "reward", "is_first", "is_terminal")


class SequenceReplay:
    def __init__(self, obs_shape: tuple[int, ...], obs_dtype, action_dim: int, capacity: int = 1_000_000,
                 num_envs: int = 1, seed: int | None = None):
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.specs = {"obs": (tuple(obs_shape), np.dtype(obs_dtype)), "action": ((action_dim,), np.float32),
                      "reward": ((), np.float32), "is_first": ((), bool), "is_terminal": ((), bool)}
        self.data = {k: np.zeros((0, *shape), dtype) for k, (shape, dtype) in self.specs.items()}
        self.size = 0          # stored steps (<= capacity)
        self.head = 0          # next write position
        self.episodes = 0      # finished episodes ever added
        self.pending: list[list[dict]] = [[] for _ in range(num_envs)]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    # --- writing --------------------------------------------------------------------------------------

    def add(self, env: int, obs, action, reward: float, is_first: bool, is_terminal: bool = False,
            last: bool = False) -> None:
        """Append one step of env `env`'s running episode; `is_first` starts a new one (dropping an unfinished
        one), `last` stores the episode."""
        while env >= len(self.pending):
            self.pending.append([])
        if is_first:
            self.pending[env] = []
        elif not self.pending[env]:
            return  # joined mid-episode (e.g. after a resume): wait for the next episode start
        self.pending[env].append({"obs": np.asarray(obs), "action": action, "reward": reward, "is_first": is_first,
                                  "is_terminal": is_terminal})
        if last:
            steps, self.pending[env] = self.pending[env], []
            self.add_episode({k: np.stack([np.asarray(s[k]) for s in steps]) for k in KEYS})

    def add_observations(self, envs, obs, prev_action, prev_reward, is_first) -> None:
        """One step (o_t, a_{t-1}, r_t) for each env in `envs` (indices into the per-env arrays); where an episode
        starts there is no previous action or reward (stored as zeros)."""
        for i in envs:
            first = bool(is_first[i])
            self.add(i, obs[i], np.zeros_like(prev_action[i]) if first else prev_action[i],
                     0.0 if first else float(prev_reward[i]), first)

    def add_final_observations(self, step, action, reward) -> None:
        """Close the episodes that ended in collector step `step`: their final obs with the action and reward that
        led into it."""
        for i in np.flatnonzero(step.done):
            self.add(i, step.final_obs[i], action[i], float(reward[i]), False, bool(step.terminated[i]), last=True)

    def add_episode(self, episode: dict[str, np.ndarray]) -> None:
        n = len(episode["obs"])
        if n > self.capacity:
            episode, n = {k: v[-self.capacity:] for k, v in episode.items()}, self.capacity
        episode = {k: np.asarray(v, dtype=self.specs[k][1]) for k, v in episode.items()}
        episode["is_first"] = episode["is_first"].copy()
        episode["is_first"][0] = True
        self._reserve(min(self.capacity, max(self.head + n, self.size)))
        idx = (self.head + np.arange(n)) % self.capacity
        for k in KEYS:
            self.data[k][idx] = episode[k]
        self.head = (self.head + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        if self.size == self.capacity:
            self.data["is_first"][self.head] = True  # the oldest survivor may be a cut-off episode tail
        self.episodes += 1

    def _reserve(self, n: int) -> None:
        have = len(self.data["obs"])
        if n <= have:
            return
        new = min(self.capacity, max(n, 2 * have, 1024))  # grow geometrically: memory follows the data
        for k, v in self.data.items():
            grown = np.zeros((new, *v.shape[1:]), v.dtype)
            grown[:have] = v
            self.data[k] = grown

    # --- sampling -------------------------------------------------------------------------------------

    def sample(self, batch_size: int, length: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """`batch_size` chunks of `length` consecutive steps, time-major: each value `[L, B, ...]`.
        `obs` keeps its stored dtype (uint8 images); the rest are float32 / bool. A chunk starting
        mid-episode has no `is_first` at step 0: the model starts it from the zero state regardless."""
        if self.size < length:
            raise ValueError(f"replay holds {self.size} steps, fewer than one chunk of {length}")
        if self.size < self.capacity:
            starts = self.rng.integers(0, self.size - length + 1, batch_size)
        else:
            starts = self.rng.integers(0, self.capacity, batch_size)  # may cross the head: is_first marks it
        idx = (starts[None, :] + np.arange(length)[:, None]) % self.capacity  # [L, B]
        out = {k: torch.from_numpy(self.data[k][idx]).to(device) for k in KEYS}
        return out

    # --- checkpoints ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Tensors, and the sampler's RNG state (a dict of str and int), so `torch.load(weights_only=True)` reads
        it back; with the RNG a resumed run samples the chunks the uninterrupted run would have."""
        used = self.size if self.size < self.capacity else self.capacity
        return {**{k: torch.from_numpy(np.ascontiguousarray(self.data[k][:used])) for k in KEYS},
                "counters": torch.tensor([self.size, self.head, self.episodes, self.capacity]),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        size, head, episodes, capacity = (int(x) for x in state["counters"])
        if capacity != self.capacity:
            raise ValueError(f"replay capacity {capacity} in the checkpoint, {self.capacity} configured")
        self.data = {k: state[k].numpy().copy() for k in KEYS}
        self.size, self.head, self.episodes = size, head, episodes
        self.pending = [[] for _ in self.pending]
        if "rng" in state:  # checkpoints written before the sampler's RNG was saved restart it from the seed
            self.rng.bit_generator.state = state["rng"]
