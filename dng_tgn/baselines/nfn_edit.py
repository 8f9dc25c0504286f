"""NFN's weight-space editing network (Zhou et al., NeurIPS 2023, §5.2 "stylization"), on our NP/HNP layers.

NFN edits a SIREN by predicting a weight delta with an *equivariant* network (weight space -> weight space):

    Δ = scale · E_K( ReLU( ... ReLU( E_1( φ(ŵ) ) ) ) ),     edited weights = W + Δ

``E_k`` are HNP (default, the configuration of NFN's stylization runs) or NP-PosEmb equivariant linear layers
(:mod:`dng_tgn.baselines.nfn`), the last one with one output channel; ``φ(x) = [x, RFF(x)]`` of every weight and
bias standardised per tensor (NFN encodes raw values with Gaussian Fourier features); ``scale``: one learned scalar
per tensor, initialised to ``out_scale`` times the tensor's training std (NFN's ``LearnedScale``, init 0.01).
Hidden-neuron permutations of the input permute ``Δ`` alike, so edited networks of permuted inputs compute the
same function.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..nn.weight_edit import WeightStats
from .nfn import FourierFeatures, NFNLayout, NFNMode, WeightSpace, WeightSpaceReLU

__all__ = ["NFNWeightEditor"]


class NFNWeightEditor(nn.Module):
    """``forward(params) -> {key: delta}`` for the layer keys of ``layout`` (stacked params, one row per network).

    Args:
        layout: the networks' :class:`NFNLayout`.
        hidden, depth: channels of the ``depth`` hidden equivariant layers (NFN's stylization: 128, 3).
        mode: :class:`~dng_tgn.baselines.nfn.NFNMode` or its value, ``"hnp"`` or ``"np"`` (NP with input/output
            embeddings).
        fourier_size, fourier_scale: RFF of the standardised values (0: the value alone).
        out_scale: initial delta scale relative to each tensor's training std.
    """

    def __init__(self, layout: NFNLayout, hidden: int = 64, depth: int = 3, mode: NFNMode | str = NFNMode.HNP,
                 fourier_size: int = 16, fourier_scale: float = 3.0, out_scale: float = 0.01):
        super().__init__()
        mode = NFNMode.parse(mode, "NFN editor mode")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.layout = layout
        self.stats = WeightStats(layout.weight_keys + layout.bias_keys)
        self.rff = FourierFeatures(1, fourier_size, fourier_scale) if fourier_size > 0 else None
        c = 1 + (self.rff.out_channels if self.rff is not None else 0)

        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [mode.linear(layout, c, hidden), WeightSpaceReLU()]
            c = hidden
        layers.append(mode.linear(layout, c, 1))
        self.net = nn.Sequential(*layers)
        L = layout.num_layers
        self.scale = nn.Parameter(torch.full((2 * L,), float(out_scale)))

    def fit_stats(self, params: Mapping[str, torch.Tensor]) -> None:
        self.stats.fit(params)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 1, ...) one channel -> (B, 1 + 2m, ...)
        return x if self.rff is None else torch.cat([x, self.rff._encode(x)], 1)

    def forward(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dev = self.scale.device
        lay = self.layout
        std = {k: self.stats.standardise(k, params[k].to(dev).float()) for k in lay.weight_keys + lay.bias_keys}
        ws = lay.to_weight_space(std)
        ws = WeightSpace([self._features(w) for w in ws.weights], [self._features(b) for b in ws.biases])
        out = lay.to_params(self.net(ws))
        L = lay.num_layers
        delta = {}
        for i, (wk, bk) in enumerate(zip(lay.weight_keys, lay.bias_keys)):
            delta[wk] = out[wk] * (self.scale[i] * self.stats.std(wk))
            delta[bk] = out[bk] * (self.scale[L + i] * self.stats.std(bk))
        return delta
