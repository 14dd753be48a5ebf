"""Observation encoders and decoders for world models, plus the scalar heads (reward, continue).

Vector obs `[..., D]`: MLP encoder, MLP decoder (Gaussian mean) or one-hot decoder (logits per group).
Images `[..., 3, 64, 64]` (uint8 0..255 or float of those values): PlaNet's conv encoder
(4 x Conv 4x4 stride 2, depth 32..256 -> 1024) and transposed-conv decoder (1024 -> 5,5,6,6 kernels).
Image pixels are modelled in [-0.5, 0.5]; `ConvDecoder.target(obs)` maps observations into that space.
Encoded observations (Discrete, MultiDiscrete, MultiBinary, Tuple/Dict: `cpcrl.envs.spaces.EncodedBox`) get the
one-hot decoder with the space's own layout under `decoder.kind=auto`: cross-entropy per one-hot, a unit Gaussian
for the Box parts. One with image parts (a 3x64x64 uint8 frame inside a Tuple/Dict) is split: `PartsEncoder` reads
each frame (its slice of the flat vector, reshaped to [3, 64, 64]) with a conv encoder and the other values with
the MLP encoder, outputs concatenated; `PartsDecoder` predicts each frame with a conv decoder and the other values
with the MLP decoder, back in the flat layout, so the per-part loss (`onehot_nll`) sums all parts.
All modules take any number of leading dims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor, nn

from cpcrl.checks import Params, non_negative_int, one_of, param, positive, positive_int
from cpcrl.envs.spaces import IMAGE_SHAPE, EncodedBox, image_slices
from cpcrl.errors import ConfigError
from cpcrl.nets.mlp import ACTIVATIONS, mlp, norm_layer

DECODERS = ("auto", "gaussian", "onehot")
optional_activation = one_of(None, *ACTIVATIONS)


@dataclass
class EncoderConfig(Params):
    key = "world_model.encoder"
    hidden: int = param(200, positive_int)    # MLP width (vector observations)
    layers: int = param(2, non_negative_int)  # MLP depth; 0 = the observation itself
    depth: int = param(32, positive_int)      # conv channels of the first layer (images), doubled per layer
    activation: str | None = param(None, optional_activation)  # null: relu for images (PlaNet), elu for vectors


@dataclass
class DecoderConfig(Params):
    key = "world_model.decoder"
    # auto (conv for images, the space's one-hot layout for encoded Discrete/Tuple/... spaces, else gaussian)
    kind: str = param("auto", one_of(*DECODERS))  # | gaussian | onehot
    hidden: int = param(200, positive_int)
    layers: int = param(2, non_negative_int)
    depth: int = param(32, positive_int)
    activation: str | None = param(None, optional_activation)  # null: relu for images (PlaNet), elu for vectors
    onehot_groups: list[Any] | None = None  # onehot: [[count, classes], ...], e.g. [[24, 6], [4, 12]] (cube)
    # weight of the squared error of real-valued parts (summed over them): 0.5 = -log N(x; mean, 1) (PlaNet,
    # Dreamer v1); 1 = DreamerV3's symlog squared error (its loss scale 1 on plain squared errors)
    mse_scale: float = param(0.5, positive)


@dataclass
class HeadConfig(Params):
    key = "world_model.heads"
    hidden: int = param(200, positive_int)  # width of the reward and continue heads (Dreamer: actor and critic too)
    layers: int = param(2, non_negative_int)


def _activation(cfg, image: bool) -> str:
    return cfg.activation or ("relu" if image else "elu")


def _leading(fn, x: Tensor, event_dims: int) -> Tensor:
    lead = x.shape[:-event_dims] if event_dims else x.shape
    out = fn(x.reshape(-1, *x.shape[x.dim() - event_dims:]))
    return out.reshape(*lead, *out.shape[1:])


def is_image(space: gym.Space) -> bool:
    return len(space.shape) == 3


def pixel_target(obs: Tensor) -> Tensor:
    """Pixel values 0..255 -> [-0.5, 0.5], the space images are encoded from and reconstructed in (PlaNet)."""
    return obs.float() / 255.0 - 0.5


class MLPEncoder(nn.Module):
    def __init__(self, obs_dim: int, hidden: int = 200, layers: int = 2, activation: str = "elu",
                 norm: str = "none"):
        super().__init__()
        self.net = mlp(obs_dim, [hidden] * layers, None, activation, norm)
        self.out_dim = hidden if layers else obs_dim

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


class MLPDecoder(nn.Module):
    """features -> obs mean (Gaussian) or flat group logits (one-hot); the loss decides which."""

    def __init__(self, feature_dim: int, obs_dim: int, hidden: int = 200, layers: int = 2, activation: str = "elu",
                 norm: str = "none", mse_scale: float = 0.5):
        super().__init__()
        self.net = mlp(feature_dim, [hidden] * layers, obs_dim, activation, norm)
        self.mse_scale = mse_scale

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)

    def target(self, obs: Tensor) -> Tensor:
        return obs


class ConvEncoder(nn.Module):
    def __init__(self, depth: int = 32, activation: str = "relu", channels: int = 3, norm: str = "none"):
        super().__init__()
        act = ACTIVATIONS[activation]
        layers, c = [], channels
        for mult in (1, 2, 4, 8):
            normed = norm_layer(norm, depth * mult, channels=True)
            layers += [nn.Conv2d(c, depth * mult, 4, 2, bias=normed is None), *([normed] if normed else []), act()]
            c = depth * mult
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_dim = depth * 8 * 2 * 2

    def forward(self, obs: Tensor) -> Tensor:
        return _leading(self.net, pixel_target(obs), 3)


class ConvDecoder(nn.Module):
    def __init__(self, feature_dim: int, depth: int = 32, activation: str = "relu", channels: int = 3,
                 norm: str = "none", mse_scale: float = 0.5):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.mse_scale = mse_scale
        self.fc = nn.Linear(feature_dim, depth * 32)

        def hidden(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
            normed = norm_layer(norm, c_out, channels=True)
            return [nn.ConvTranspose2d(c_in, c_out, kernel, 2, bias=normed is None), *([normed] if normed else []),
                    act()]
        self.net = nn.Sequential(
            nn.Unflatten(1, (depth * 32, 1, 1)),
            *hidden(depth * 32, depth * 4, 5), *hidden(depth * 4, depth * 2, 5), *hidden(depth * 2, depth, 6),
            nn.ConvTranspose2d(depth, channels, 6, 2))

    def forward(self, features: Tensor) -> Tensor:
        return _leading(lambda f: self.net(self.fc(f)), features, 1)

    def target(self, obs: Tensor) -> Tensor:
        return pixel_target(obs)


class PartsEncoder(nn.Module):
    """An `EncodedBox` with image parts: each frame's slice, reshaped to [3, 64, 64], through a conv encoder of its
    own, the other values (gathered in layout order) through one MLP encoder; the outputs concatenated."""

    def __init__(self, obs_space: EncodedBox, enc: EncoderConfig, norm: str = "none"):
        super().__init__()
        self.images = image_slices(obs_space)
        rest = rest_index(obs_space.shape[0], self.images)
        self.register_buffer("rest", rest, persistent=False)
        self.convs = nn.ModuleList(ConvEncoder(enc.depth, _activation(enc, True), norm=norm) for _ in self.images)
        self.mlp = MLPEncoder(len(rest), enc.hidden, enc.layers, _activation(enc, False), norm) if len(rest) else None
        self.out_dim = sum(c.out_dim for c in self.convs) + (self.mlp.out_dim if self.mlp else 0)

    def forward(self, obs: Tensor) -> Tensor:
        out = [conv(obs[..., s].unflatten(-1, IMAGE_SHAPE)) for conv, s in zip(self.convs, self.images)]
        if self.mlp is not None:
            out.append(self.mlp(obs.index_select(-1, self.rest)))
        return torch.cat(out, -1)


class PartsDecoder(nn.Module):
    """features -> the flat prediction of an `EncodedBox` with image parts, in its layout: each frame from a conv
    decoder of its own (flattened, in the [-0.5, 0.5] pixel space), the other values (one-hot logits, real-value
    means) from one MLP decoder. `onehot_nll` with the space's parts scores every part."""

    def __init__(self, feature_dim: int, obs_space: EncodedBox, dec: DecoderConfig, norm: str = "none"):
        super().__init__()
        self.width, self.images = obs_space.shape[0], image_slices(obs_space)
        self.mse_scale = dec.mse_scale
        rest = rest_index(self.width, self.images)
        self.register_buffer("rest", rest, persistent=False)
        self.convs = nn.ModuleList(ConvDecoder(feature_dim, dec.depth, _activation(dec, True), norm=norm)
                                   for _ in self.images)
        self.mlp = (MLPDecoder(feature_dim, len(rest), dec.hidden, dec.layers, _activation(dec, False), norm)
                    if len(rest) else None)

    def forward(self, features: Tensor) -> Tensor:
        out = features.new_zeros(*features.shape[:-1], self.width)
        for conv, s in zip(self.convs, self.images):
            out[..., s] = conv(features).flatten(-3).to(out.dtype)
        if self.mlp is not None:
            out = out.index_copy(-1, self.rest, self.mlp(features).to(out.dtype))
        return out

    def target(self, obs: Tensor) -> Tensor:
        return obs


def rest_index(size: int, images: list[slice]) -> Tensor:
    """The positions of a flat vector of `size` outside the `images` slices, in order."""
    keep = torch.ones(size, dtype=torch.bool)
    for s in images:
        keep[s] = False
    return keep.nonzero().squeeze(-1)


def check_onehot_groups(obs_space: gym.Space, groups) -> list[tuple[int, int]]:
    """The `[[count, classes], ...]` layout of a one-hot observation, validated against the space."""
    if not groups:
        raise ConfigError("world_model.decoder=onehot needs world_model.onehot_groups, e.g. [[24, 6], [4, 12]] "
                          "for the cube (24 stickers x 6 colours, 4 past actions x 12 moves)")
    groups = [(int(n), int(k)) for n, k in groups]
    size = sum(n * k for n, k in groups)
    if is_image(obs_space) or obs_space.shape[0] != size:
        raise ConfigError(f"world_model.onehot_groups={groups} cover {size} values but the observation has shape "
                          f"{obs_space.shape}: the one-hot decoder needs a flat one-hot observation of that size")
    low, high = obs_space.low, obs_space.high
    if not ((low >= 0).all() and (high <= 1).all()):
        raise ConfigError(f"world_model.decoder=onehot: observations range over [{low.min()}, {high.max()}], "
                          "not [0, 1]; use decoder=gaussian for non-one-hot observations")
    return groups


def make_encoder(obs_space: gym.Space, enc: EncoderConfig, norm: str = "none") -> nn.Module:
    """`norm` (`world_model.norm`, `cpcrl.nets.mlp`) after every hidden layer, conv or dense."""
    if image_slices(obs_space):
        return PartsEncoder(obs_space, enc, norm)
    if is_image(obs_space):
        if tuple(obs_space.shape) != (3, 64, 64):
            raise ConfigError(f"image observations must be 3x64x64 (channels first), got {obs_space.shape}")
        return ConvEncoder(enc.depth, _activation(enc, True), norm=norm)
    return MLPEncoder(obs_space.shape[0], enc.hidden, enc.layers, _activation(enc, False), norm)


def make_decoder(obs_space: gym.Space, feature_dim: int, dec: DecoderConfig,
                 norm: str = "none") -> tuple[nn.Module, list | None]:
    """-> (decoder, one-hot groups or None). decoder: auto (conv for images, an encoded space's own layout, else
    gaussian) | gaussian | onehot. Every decoder carries `mse_scale`, the weight of its squared errors."""
    if is_image(obs_space):
        if dec.kind == "onehot":
            raise ConfigError("world_model.decoder.kind=onehot needs a flat one-hot observation, the env gives images")
        return ConvDecoder(feature_dim, dec.depth, _activation(dec, True), norm=norm, mse_scale=dec.mse_scale), None
    if image_slices(obs_space):
        if dec.kind != "auto":
            raise ConfigError(f"world_model.decoder.kind={dec.kind}: the observation has an image component "
                              f"({' '.join(str(obs_space.source).split())[:120]}); valid is decoder.kind=auto (a conv "
                              "decoder for each image, the space's layout for the rest)")
        return PartsDecoder(feature_dim, obs_space, dec, norm), [tuple(part) for part in obs_space.parts]
    if dec.kind == "onehot":
        groups = check_onehot_groups(obs_space, dec.onehot_groups)
    elif dec.kind == "auto" and isinstance(obs_space, EncodedBox):
        groups = [tuple(part) for part in obs_space.parts]
    else:
        groups = None
    return MLPDecoder(feature_dim, obs_space.shape[0], dec.hidden, dec.layers, _activation(dec, False), norm,
                      dec.mse_scale), groups


def make_head(feature_dim: int, hidden: int = 200, layers: int = 2, activation: str = "elu",
              norm: str = "none") -> nn.Module:
    """Scalar head (reward, continue logit): features [..., F] -> [...]."""
    return nn.Sequential(mlp(feature_dim, [hidden] * layers, 1, activation, norm), nn.Flatten(-2))
