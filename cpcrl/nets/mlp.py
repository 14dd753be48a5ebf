"""Plain MLPs and their normalisation layers; the one place where layer stacks are built.

    norm none   Linear -> activation                                    (PlaNet, Dreamer v1)
    norm layer  Linear (no bias) -> LayerNorm (eps 1e-3) -> activation  (DreamerV3 2023 code, sheeprl 0.8.4)

Under a norm the Linear has no bias: the norm's own shift takes its place (and would cancel it anyway).
"""

from __future__ import annotations

from torch import Tensor, nn

from cpcrl.checks import choice

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
NORMS = ("none", "layer")
NORM_EPS = 1e-3  # DreamerV3's (2023 code) and sheeprl's LayerNorm eps; torch's default is 1e-5


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of `[N, C, H, W]` (DreamerV3's conv layers normalise channels)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def norm_layer(norm: str, width: int, channels: bool = False) -> nn.Module | None:
    """The normalisation after a hidden layer of `width` units (or channels), or None for norm=none."""
    choice("norm", norm, NORMS)
    if norm == "none":
        return None
    return (ChannelLayerNorm if channels else nn.LayerNorm)(width, eps=NORM_EPS)


def mlp(in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int | None, activation: str = "relu",
        norm: str = "none") -> nn.Sequential:
    """Linear(+norm)+activation per hidden width, then a linear output (none when out_dim is None)."""
    choice("activation", activation, tuple(ACTIVATIONS))
    layers, dim = [], in_dim
    for width in hidden:
        normed = norm_layer(norm, width)
        layers += [nn.Linear(dim, width, bias=normed is None)]
        layers += [normed] if normed is not None else []
        layers += [ACTIVATIONS[activation]()]
        dim = width
    if out_dim is not None:
        layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)
