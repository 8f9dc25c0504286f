"""The flat-weights MLP baseline (Table 7's "MLP"): every parameter of a network in one vector, then an MLP.

It ignores all structure, so it is not invariant to any neuron permutation; it only works on batches of one
architecture (every network must give a vector of the same length), which is all Table 7 asks of it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..graph.batch import StreamBatch

__all__ = ["flat_parameters", "FlatMLP"]


def flat_parameters(batch: StreamBatch) -> torch.Tensor:
    """(B, P): each network's node scalars and edge weights, in the stream's own order.

    Raises if the networks of the batch do not all have the same number of parameters.
    """
    b = batch.num_graphs
    # node_values[mask] walks the nodes in order and each node's slots in order, as repeat_interleave does
    parts_graph = [batch.node_graph.repeat_interleave(batch.node_slot_mask.sum(1))]
    parts_value = [batch.node_values[batch.node_slot_mask]]
    for step in batch.steps:
        g = batch.node_graph[step.dst]
        k = step.weight.shape[1]
        parts_graph.append(g.repeat_interleave(k))
        parts_value.append(step.weight.reshape(-1))
    graph, value = torch.cat(parts_graph), torch.cat(parts_value)
    counts = torch.bincount(graph, minlength=b)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"the flat MLP needs networks of one architecture; this batch has {counts.unique().tolist()} "
                         f"parameters per network")
    order = torch.sort(graph, stable=True).indices  # stable: each network keeps the stream's order
    return value[order].reshape(b, int(counts[0]))


class FlatMLP(nn.Module):
    """``in_dim`` flat parameters -> ``num_layers`` Linear+ReLU of width ``hidden_dim`` -> ``out_dim``."""

    def __init__(self, in_dim: int, hidden_dim: int = 256, num_layers: int = 3, out_dim: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        layers, d = [], in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(d, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim

    def forward(self, batch: StreamBatch) -> torch.Tensor:
        x = flat_parameters(batch)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"FlatMLP was built for {self.in_dim} parameters per network, got {x.shape[1]}")
        return self.net(x)
