"""SIRENs in the two public INR layouts.

NFN (Zhou et al. 2024) keeps w0 outside the weights: ``net.0.linear.*``, ``net.1.linear.*``, ``net.2.*``.
DWSNets (Navon et al. 2023) uses ``seq.{0,1,2}.*`` and adds 0.5 to the output.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Sine(nn.Module):
    """sin(w0 * x); w0 stays a constant of the activation, never folded into the weights."""

    def __init__(self, w0: float = 30.0):
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x):
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


class SirenLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, w0: float = 30.0, is_first: bool = False):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.activation = Sine(w0)
        siren_init_(self.linear, w0, is_first)

    def forward(self, x):
        return self.activation(self.linear(x))


def siren_init_(linear: nn.Linear, w0: float, is_first: bool) -> None:
    """Sitzmann et al. 2020 init: U(-1/n, 1/n) on the first layer, U(-sqrt(6/n)/w0, ·) after it."""
    n = linear.in_features
    bound = 1.0 / n if is_first else math.sqrt(6.0 / n) / w0
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound)
        linear.bias.uniform_(-bound, bound)


class NFNSiren(nn.Module):
    """2 -> hidden -> hidden -> out SIREN with NFN's parameter names."""

    def __init__(self, in_features: int = 2, hidden: int = 32, out_features: int = 1, depth: int = 3, w0: float = 30.0):
        super().__init__()
        layers = [SirenLayer(in_features, hidden, w0, is_first=True)]
        layers += [SirenLayer(hidden, hidden, w0) for _ in range(depth - 2)]
        last = nn.Linear(hidden, out_features)
        siren_init_(last, w0, is_first=False)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, coords):
        return self.net(coords)


class DWSNetsSiren(nn.Module):
    """The DWSNets INR layout: ``seq.{i}`` plain Linear layers, sine(w0·x) between them, +0.5 on the output."""

    def __init__(self, in_features: int = 2, hidden: int = 32, out_features: int = 1, depth: int = 3, w0: float = 30.0):
        super().__init__()
        dims = [in_features] + [hidden] * (depth - 1) + [out_features]
        self.seq = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for i, lin in enumerate(self.seq):
            siren_init_(lin, w0, is_first=i == 0)
        self.activation = Sine(w0)

    def forward(self, coords):
        x = coords
        for lin in self.seq[:-1]:
            x = self.activation(lin(x))
        return self.seq[-1](x) + 0.5
