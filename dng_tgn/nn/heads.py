"""Readouts (node memories -> one embedding per network) and MLP heads.

The embedding of a network is read from the final memories ``s(t^L)`` of its output nodes: the last
layer's neurons, in network order. Output nodes are never permuted by a hidden-neuron symmetry, so both
readouts below keep the encoder invariant (App. C). F.2's generalisation predictor is
``ConcatReadout(num_outputs)`` followed by ``MLPHead(..., num_layers=3, hidden_dim=1024)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..graph.batch import StreamBatch


class Readout(nn.Module):
    """Base class: ``forward(node_memory (N, d), batch) -> (B, out_dim(d))``."""

    def out_dim(self, memory_dim: int) -> int:
        raise NotImplementedError

    def forward(self, node_memory: torch.Tensor, batch: StreamBatch) -> torch.Tensor:
        raise NotImplementedError


class MeanReadout(Readout):
    """Mean of the output nodes' memories: works for any mix of output sizes."""

    def out_dim(self, memory_dim: int) -> int:
        return memory_dim

    def forward(self, node_memory: torch.Tensor, batch: StreamBatch) -> torch.Tensor:
        out = node_memory.index_select(0, batch.output_nodes)
        sums = out.new_zeros(batch.num_graphs, node_memory.shape[1]).index_add(0, batch.output_graph, out)
        counts = batch.output_sizes().clamp(min=1).to(out.dtype)
        return sums / counts.unsqueeze(1)


class ConcatReadout(Readout):
    """Concatenation of the output nodes' memories, in network order: keeps which output is which.

    Needs every network in the batch to have ``num_outputs`` outputs (e.g. the 10 logits of a classifier).
    """

    def __init__(self, num_outputs: int):
        super().__init__()
        self.num_outputs = num_outputs

    def out_dim(self, memory_dim: int) -> int:
        return self.num_outputs * memory_dim

    def forward(self, node_memory: torch.Tensor, batch: StreamBatch) -> torch.Tensor:
        sizes = batch.output_sizes()
        if bool((sizes != self.num_outputs).any()):
            raise ValueError(
                f"ConcatReadout({self.num_outputs}) needs every network to have {self.num_outputs} outputs, "
                f"got output sizes {sorted(set(sizes.tolist()))}; use MeanReadout for mixed output sizes"
            )
        # output_nodes are grouped by network and in network order, so a reshape lines them up
        return node_memory.index_select(0, batch.output_nodes).reshape(batch.num_graphs, -1)

    def extra_repr(self) -> str:
        return f"num_outputs={self.num_outputs}"


class MLPHead(nn.Module):
    """``num_layers`` Linear layers with ReLU (and optional dropout) between them."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 1024, num_layers: int = 3, dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError("an MLP head needs at least one layer")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(nn.ReLU())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
