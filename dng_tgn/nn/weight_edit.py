"""Weight-space editing with the DNG-Encoder: predict a weight delta for every edge and bias of an MLP/SIREN.

The DNG-Encoder (§5, Eq. 4–6) leaves one memory ``s_i`` per neuron after the stream has been played; node
memories permute with the hidden neurons and the output-node readout ``g`` is invariant (App. C). An edit head
reads them edge by edge:

    ΔW_l[i, j] = a_l · ψ_l( U_l s^l_i + V_l s^{l-1}_j + G_l g + R_l φ(ŵ_l[i, j]) )
    Δb_l[i]    = c_l · χ_l( P_l s^l_i + H_l g + Q_l φ(b̂_l[i]) )

``s^l_i``: memory of neuron i of neuron layer l (0 = inputs); ``ŵ``, ``b̂``: the weight/bias standardised with
per-tensor training statistics; ``φ(x) = [x, RFF(x)]``; ψ, χ: ReLU MLPs (the first layer written as a sum of
per-input maps, so the ``B·n_l·n_{l-1}`` concatenations are never built); ``a_l``, ``c_l``: learned scalars
initialised to ``out_scale`` times the tensor's training std, so that editing starts near the identity (NFN's
``LearnedScale`` plays this role in its stylization nets). A hidden-neuron permutation of the input network
permutes ``s`` and leaves ``g`` unchanged, so ``ΔW`` permutes with it and the edited network computes the same
function: the edit is equivariant (``tests/test_inr_editing.py`` checks it beside a negative control).

Every layer's memories are read after the whole stream has been played, so a first-layer edge sees its own
neurons' memories (which depend on layer 1 only, the stream runs forwards) plus ``g``, which has seen everything.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..graph.batch import StreamBatch
from ..graph.features import RandomFourierFeatures
from .encoder import DNGEncoder

__all__ = ["WeightStats", "DNGWeightEditor"]


class WeightStats(nn.Module):
    """Per-tensor mean/std of a chain of (weight, bias) keys, from a training set; standardises and scales deltas.

    Scalars per tensor, so every permutation symmetry of the networks is kept.
    """

    def __init__(self, keys: Sequence[str]):
        super().__init__()
        self.keys = tuple(keys)
        self.register_buffer("stats", torch.tensor([[0.0, 1.0]] * len(self.keys)))

    @torch.no_grad()
    def fit(self, params: Mapping[str, torch.Tensor]) -> "WeightStats":
        rows = []
        for k in self.keys:
            if k not in params:
                raise KeyError(f"WeightStats.fit: parameter {k!r} is missing (have {sorted(params)[:6]}...)")
            v = params[k].double()
            std = v.std().item() if v.numel() > 1 else 0.0
            rows.append([v.mean().item(), std if std > 1e-8 else 1.0])
        self.stats.copy_(torch.tensor(rows, dtype=self.stats.dtype))
        return self

    def standardise(self, key: str, x: torch.Tensor) -> torch.Tensor:
        i = self.keys.index(key)
        return (x - self.stats[i, 0]) / self.stats[i, 1]

    def std(self, key: str) -> torch.Tensor:
        return self.stats[self.keys.index(key), 1]


class _ScalarFeatures(nn.Module):
    """φ(x) = [x, RFF(x)]: the value itself (so small edits are easy to express) and its Fourier features."""

    def __init__(self, fourier_size: int, scale: float):
        super().__init__()
        self.rff = RandomFourierFeatures(fourier_size, scale) if fourier_size > 0 else None
        self.out_dim = 1 + (self.rff.out_dim if self.rff is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) if self.rff is None else torch.cat([x.unsqueeze(-1), self.rff(x)], -1)


class DNGWeightEditor(nn.Module):
    """DNG-Encoder + per-edge / per-bias edit heads: ``forward(batch, params) -> {key: delta}``.

    Args:
        encoder: the :class:`DNGEncoder` (its readout gives ``g``; ConcatReadout or MeanReadout).
        weight_keys, bias_keys: the chain's parameter names in layer order (NFN SIREN: ``net.0.linear.weight`` ...).
        neuron_counts: ``(n_0, ..., n_L)``; the networks' streams must hold exactly these nodes, in this order
            (what :func:`~dng_tgn.graph.batch.batch_state_dicts` gives for an MLP/SIREN state dict).
        hidden: width of ψ_l and χ_l; weight_fourier / fourier_scale: RFF of the standardised values;
        out_scale: initial delta scale relative to each tensor's training std.

    Call :meth:`fit_stats` with the training parameters before training.
    """

    def __init__(self, encoder: DNGEncoder, weight_keys: Sequence[str], bias_keys: Sequence[str],
                 neuron_counts: Sequence[int], hidden: int = 64, weight_fourier: int = 16, fourier_scale: float = 3.0,
                 out_scale: float = 0.01):
        super().__init__()
        if not isinstance(encoder, DNGEncoder):
            raise TypeError(f"DNGWeightEditor needs a DNGEncoder, got {type(encoder).__name__}")
        if not len(weight_keys) == len(bias_keys) == len(neuron_counts) - 1 or not weight_keys:
            raise ValueError(f"{len(weight_keys)} weight keys and {len(bias_keys)} bias keys for "
                             f"{len(neuron_counts)} neuron layers: need L, L and L + 1 (L >= 1)")
        self.encoder = encoder
        self.weight_keys, self.bias_keys = tuple(weight_keys), tuple(bias_keys)
        self.neuron_counts = tuple(int(n) for n in neuron_counts)
        self.stats = WeightStats(self.weight_keys + self.bias_keys)
        d, g_dim = encoder.memory.memory_dim, encoder.out_dim
        self.phi = _ScalarFeatures(weight_fourier, fourier_scale)
        L = len(self.weight_keys)

        def lin(i, bias=False):
            return nn.Linear(i, hidden, bias=bias)

        self.w_dst = nn.ModuleList(lin(d, True) for _ in range(L))
        self.w_src = nn.ModuleList(lin(d) for _ in range(L))
        self.w_glob = nn.ModuleList(lin(g_dim) for _ in range(L))
        self.w_val = nn.ModuleList(lin(self.phi.out_dim) for _ in range(L))
        self.w_out = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
                                   for _ in range(L))
        self.b_dst = nn.ModuleList(lin(d, True) for _ in range(L))
        self.b_glob = nn.ModuleList(lin(g_dim) for _ in range(L))
        self.b_val = nn.ModuleList(lin(self.phi.out_dim) for _ in range(L))
        self.b_out = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
                                   for _ in range(L))
        self.scale = nn.Parameter(torch.full((2 * L,), float(out_scale)))

    def fit_stats(self, params: Mapping[str, torch.Tensor]) -> None:
        self.stats.fit(params)

    def node_memories(self, batch: StreamBatch, params: Mapping[str, torch.Tensor]):
        """Run the encoder; return ``(g (B, D), [s^0 (B, n_0, d), ..., s^L (B, n_L, d)])``.

        Checks that the batch holds one network per row of ``params`` with exactly ``neuron_counts`` nodes in
        layer order (the bias of node i of layer l must be ``params[bias_keys[l-1]][:, i]``), so a layout the
        editor does not understand is an error instead of a wrong pairing of memories and weights.
        """
        B, n = int(params[self.weight_keys[0]].shape[0]), sum(self.neuron_counts)
        out = self.encoder(batch)
        mem, b = out.node_memory, out.batch
        if b.num_graphs != B or b.num_nodes != B * n:
            raise ValueError(f"the stream batch has {b.num_graphs} networks / {b.num_nodes} nodes; the editor expects "
                             f"{B} networks of {n} nodes ({self.neuron_counts})")
        expected_graph = torch.arange(B, device=b.node_graph.device).repeat_interleave(n)
        if not torch.equal(b.node_graph, expected_graph):
            raise ValueError("the stream batch does not list each network's nodes contiguously")
        values = b.node_values[:, 0].reshape(B, n)[:, self.neuron_counts[0]:]
        biases = torch.cat([params[k].to(values.device).float() for k in self.bias_keys], 1)
        if not torch.equal(values, biases):
            raise ValueError("node order of the streams does not match the parameters' layer order "
                             f"{self.bias_keys}: the editor would pair memories with the wrong weights")
        s = mem.reshape(B, n, -1).split(self.neuron_counts, dim=1)
        return out.embedding, list(s)

    def forward(self, batch: StreamBatch, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g, s = self.node_memories(batch, params)
        dev = g.device
        L = len(self.weight_keys)
        delta = {}
        for l in range(L):
            wk, bk = self.weight_keys[l], self.bias_keys[l]
            w = self.stats.standardise(wk, params[wk].to(dev).float())  # (B, n_l, n_{l-1})
            h = (self.w_dst[l](s[l + 1])[:, :, None] + self.w_src[l](s[l])[:, None]
                 + self.w_glob[l](g)[:, None, None] + self.w_val[l](self.phi(w)))
            delta[wk] = self.w_out[l](h).squeeze(-1) * (self.scale[l] * self.stats.std(wk))
            b = self.stats.standardise(bk, params[bk].to(dev).float())  # (B, n_l)
            hb = self.b_dst[l](s[l + 1]) + self.b_glob[l](g)[:, None] + self.b_val[l](self.phi(b))
            delta[bk] = self.b_out[l](hb).squeeze(-1) * (self.scale[L + l] * self.stats.std(bk))
        return delta
