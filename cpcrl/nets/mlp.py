"""Plain MLPs; the one place where layer stacks are built."""

from __future__ import annotations

from torch import nn

from cpcrl.checks import choice

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


def mlp(in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int | None, activation: str = "relu",
        layer_norm: bool = False) -> nn.Sequential:
    """Linear(+LayerNorm)+activation per hidden width, then a linear output (none when out_dim is None)."""
    choice("activation", activation, tuple(ACTIVATIONS))
    layers, dim = [], in_dim
    for width in hidden:
        layers += [nn.Linear(dim, width)]
        if layer_norm:
            layers += [nn.LayerNorm(width)]
        layers += [ACTIVATIONS[activation]()]
        dim = width
    if out_dim is not None:
        layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)
