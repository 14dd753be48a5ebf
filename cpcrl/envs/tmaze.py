"""T-maze (Bakker 2002): a memory task small enough for a 2-core CPU.

The first observation shows a cue (up or down); then the agent walks a corridor of `length` cells that all
look the same, and at the junction it must turn the way the cue said. Only an agent that remembers the
cue for `length` steps does better than chance.

Observation (3 floats): [cue (+1 up / -1 down at the start, else 0), at the junction (0/1), 1].
Actions: 0 forward, 1 up, 2 down. Turning in the corridor wastes a step; at the junction a turn ends the
episode with +1 if it matches the cue and -1 if not. Each step costs `step_cost`; the episode is
truncated after `2 * length + 2` steps. The best return is 1 - (length + 1) * step_cost (the turn is a step too).

The hidden state, in `info` at reset and at every step (`cpcrl.probes`' targets): `info["true_state"]` float32
[1], the cue (+1 up, -1 down), and `info["true_class"]` int64 [1], the cue as a class (0 up, 1 down).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class TMazeEnv(gym.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, length: int = 10, step_cost: float = 0.01, render_mode: str | None = None):
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"tmaze length={length!r}: must be an integer >= 1")
        self.length, self.step_cost, self.render_mode = length, float(step_cost), render_mode
        self.max_steps = 2 * length + 2
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3)

    def _obs(self) -> np.ndarray:
        cue = self.cue if self.pos == 0 and self.t == 0 else 0.0
        return np.array([cue, float(self.pos == self.length), 1.0], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cue = 1.0 if self.np_random.random() < 0.5 else -1.0
        self.pos, self.t = 0, 0
        return self._obs(), self._hidden()

    def _hidden(self) -> dict:
        return {"true_state": np.array([self.cue], dtype=np.float32),
                "true_class": np.array([0 if self.cue > 0 else 1], dtype=np.int64)}

    def step(self, action):
        action = int(action)
        self.t += 1
        reward, terminated = -self.step_cost, False
        if action == 0:
            self.pos = min(self.pos + 1, self.length)
        elif self.pos == self.length:
            terminated = True
            reward += 1.0 if (action == 1) == (self.cue > 0) else -1.0
        truncated = not terminated and self.t >= self.max_steps
        return self._obs(), reward, terminated, truncated, self._hidden()

    def render(self):
        corridor = ["."] * (self.length + 1)
        corridor[self.pos] = "A"
        return f"cue {'up' if self.cue > 0 else 'down'}  " + "".join(corridor) + "|"
