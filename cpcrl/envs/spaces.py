"""Observation encoding: any supported gymnasium observation space -> one flat float32 vector, written once.

    Discrete(n, start)          one-hot of n                       x - start                 part [1, n]
    MultiDiscrete(nvec, start)  one one-hot per component          x_i - start_i, C order    parts [1, n_i], ...
    MultiBinary(n)              one one-hot of 2 per bit           (bit 0 -> [1, 0], ...)    part [n, 2]
    Box(3, 64, 64) uint8        an image: its pixels (0..255)      flattened (C order)       part [12288, -1]
    Box(any other shape)        its values, flattened (C order)    as float32                part [d, 0]
    Tuple / Dict                the parts above, concatenated      in the space's order (a Dict's keys sorted)

The result is an `EncodedBox`: a flat Box whose `parts` say what each slice holds, as `[count, classes]` pairs
in the format of `world_model.decoder.onehot_groups`: `count` one-hots of `classes` each, `[d, 0]` for `d`
real values (a Box part), or `[12288, IMAGE]` (IMAGE = -1) for one channels-first 3x64x64 frame of pixel values
(cpcrl's `env.pixels` format). Neighbouring parts of one kind merge (`[[1, 3], [1, 3]]` -> `[[2, 3]]`), images
never do: each image part is one frame. A layout without images is exactly what it was before images existed.

World models reconstruct the one-hot parts by cross-entropy, the real parts by a unit Gaussian and the images by
PlaNet's conv decoder, pixels in [-0.5, 0.5] (`cpcrl.objectives.world_model.onehot_nll`); their encoder reads the
images with the conv encoder and the rest with an MLP (`cpcrl.nets.codecs.PartsEncoder`). So the decoder needs no
setting for these spaces.

Only non-Box spaces are encoded (a plain Box env keeps its own observations and numbers, bit for bit). Agents see
a flat Box either way, so every agent takes every space listed above; an image component only the agents that
read images (planet, dreamer; the others refuse it in one line, `cpcrl.agents.base.Agent`).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from cpcrl.errors import ConfigError

SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, and Tuple/Dict of these"
IMAGE = -1                 # `classes` of an image part
IMAGE_SHAPE = (3, 64, 64)  # the frames the conv encoder reads (channels first, uint8 pixels)
IMAGE_SIZE = 3 * 64 * 64


class EncodedBox(gym.spaces.Box):
    """A flat float32 Box of encoded observations; `parts` is its layout (`[[count, classes], ...]`, classes 0 =
    real values), `source` the space it encodes."""

    def __init__(self, low, high, parts: list[tuple[int, int]], source: gym.Space):
        super().__init__(low, high, dtype=np.float32)
        self.parts, self.source = parts, source

    def __repr__(self) -> str:
        return f"EncodedBox({self.shape[0]}, parts={self.parts}, source={self.source})"


def _leaves(space: gym.Space) -> list[gym.Space]:
    """The non-container spaces of `space`, in encoding order."""
    if isinstance(space, gym.spaces.Tuple):
        return [leaf for s in space.spaces for leaf in _leaves(s)]
    if isinstance(space, gym.spaces.Dict):
        return [leaf for s in space.spaces.values() for leaf in _leaves(s)]
    if isinstance(space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        return [space]
    raise ConfigError(f"observation space {space} is not supported: cpcrl encodes {SUPPORTED}")


def _values(space: gym.Space, obs) -> list:
    """The leaf observations of `obs`, in the order of `_leaves(space)`."""
    if isinstance(space, gym.spaces.Tuple):
        return [v for s, o in zip(space.spaces, obs) for v in _values(s, o)]
    if isinstance(space, gym.spaces.Dict):
        return [v for key, s in space.spaces.items() for v in _values(s, obs[key])]
    return [obs]


def is_image_leaf(leaf: gym.Space) -> bool:
    return (isinstance(leaf, gym.spaces.Box) and tuple(leaf.shape) == IMAGE_SHAPE
            and np.dtype(leaf.dtype) == np.uint8)


def _leaf_parts(leaf: gym.Space) -> list[tuple[int, int]]:
    if is_image_leaf(leaf):
        return [(IMAGE_SIZE, IMAGE)]
    if isinstance(leaf, gym.spaces.Discrete):
        return [(1, int(leaf.n))]
    if isinstance(leaf, gym.spaces.MultiDiscrete):
        return [(1, int(k)) for k in leaf.nvec.reshape(-1)]
    if isinstance(leaf, gym.spaces.MultiBinary):
        return [(int(np.prod(leaf.shape)), 2)]
    return [(int(np.prod(leaf.shape)), 0)]


def merge_parts(parts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Neighbouring parts of the same kind as one: [(1, 3), (1, 3), (2, 0), (1, 0)] -> [(2, 3), (3, 0)]; an image
    part stays one frame."""
    merged: list[tuple[int, int]] = []
    for count, classes in parts:
        if merged and merged[-1][1] == classes != IMAGE:
            merged[-1] = (merged[-1][0] + count, classes)
        else:
            merged.append((count, classes))
    return merged


def width(parts: list[tuple[int, int]]) -> int:
    """How many values a layout covers."""
    return sum(count * max(classes, 1) for count, classes in parts)


def image_slices(space: gym.Space) -> list[slice]:
    """Where an `EncodedBox`'s image parts lie in its flat vector (none for any other space)."""
    slices, start = [], 0
    for count, classes in getattr(space, "parts", None) or []:
        size = width([(count, classes)])
        if classes == IMAGE:
            slices.append(slice(start, start + size))
        start += size
    return slices


def needs_encoding(space: gym.Space) -> bool:
    return not isinstance(space, gym.spaces.Box)


def encode_space(space: gym.Space) -> EncodedBox:
    leaves = _leaves(space)
    lows, highs = [], []
    for leaf in leaves:
        if isinstance(leaf, gym.spaces.Box):
            lows.append(leaf.low.reshape(-1).astype(np.float32))
            highs.append(leaf.high.reshape(-1).astype(np.float32))
        else:
            size = width(_leaf_parts(leaf))
            lows.append(np.zeros(size, np.float32))
            highs.append(np.ones(size, np.float32))
    parts = merge_parts([p for leaf in leaves for p in _leaf_parts(leaf)])
    return EncodedBox(np.concatenate(lows), np.concatenate(highs), parts, space)


def onehots(index: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Concatenated one-hots: index[i] of classes[i] each (flat)."""
    out = np.zeros(int(classes.sum()), np.float32)
    offsets = np.concatenate([[0], np.cumsum(classes)[:-1]])
    out[offsets + index] = 1.0
    return out


def encode(space: gym.Space, obs) -> np.ndarray:
    """One observation of `space` -> its flat float32 encoding (`encode_space(space)` describes the layout)."""
    pieces = []
    for leaf, value in zip(_leaves(space), _values(space, obs)):
        value = np.asarray(value)
        if isinstance(leaf, gym.spaces.Discrete):
            pieces.append(onehots(np.array([int(value) - int(leaf.start)]), np.array([int(leaf.n)])))
        elif isinstance(leaf, gym.spaces.MultiDiscrete):
            pieces.append(onehots((value - leaf.start).reshape(-1).astype(np.int64), leaf.nvec.reshape(-1)))
        elif isinstance(leaf, gym.spaces.MultiBinary):
            bits = value.reshape(-1).astype(np.int64)
            pieces.append(onehots(bits, np.full(bits.size, 2)))
        else:
            pieces.append(value.reshape(-1).astype(np.float32))
    return np.concatenate(pieces)
