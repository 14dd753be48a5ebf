"""Image observations from a gymnasium env's `rgb_array` render: `uint8 [3, 64, 64]` (channels first).

The env must be made with `render_mode="rgb_array"`. Frames are area-downsampled with Pillow (box filter),
which keeps thin features such as the pendulum's rod visible at 64x64.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from PIL import Image


class PixelObs(gym.ObservationWrapper):
    def __init__(self, env: gym.Env, size: int = 64):
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError(f"env.pixels=true needs render_mode='rgb_array', the env has {env.render_mode!r}")
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (3, size, size), np.uint8)

    def observation(self, obs):
        frame = Image.fromarray(self.env.render()).resize((self.size, self.size), Image.BOX)
        return np.asarray(frame, dtype=np.uint8).transpose(2, 0, 1).copy()
