"""The data of §7: random MLPs, their dynamic neural graphs, sampled inputs and every layer's activations.

``n`` random MLPs of widths ``widths``; every layer, the output one included, applies the activation, so the
target of neuron i at layer l is ``a_i^l = σ(Σ_j W_ij^l a_j^{l-1} + b_i^l)`` (Eq. 11). Weights are
N(0, weight_gain²/fan_in), biases N(0, bias_std²): large enough that biases matter, which is the term the
"inverse problem" of §3.3 is about. For each MLP, ``inputs_per_mlp`` inputs x ~ U(-1, 1)^{d^0} are sampled
once; one example is one (MLP, input) pair, the graph conditioned on that input.
"""
from __future__ import annotations

import math

import torch

from ..graph import transforms as T
from ..graph.batch import batch_streams
from ..graph.convert.mlp import LinearLayer, mlp_stream

__all__ = ["ACTIVATIONS", "sample_mlps", "mlp_activations", "ActivationData"]

# activation name (a Sacred config value) -> (torch function, stream transform). The name is only looked up
# here, once; everything downstream receives the functions.
ACTIVATIONS = {
    "tanh": (torch.tanh, T.TANH),
    "relu": (torch.relu, T.RELU),
}


def sample_mlps(n: int, widths: list[int], weight_gain: float, bias_std: float, generator: torch.Generator):
    """n random MLPs as stacked parameters: weights[l] (n, d^{l+1}, d^l), biases[l] (n, d^{l+1})."""
    weights, biases = [], []
    for d_in, d_out in zip(widths[:-1], widths[1:]):
        weights.append(torch.randn(n, d_out, d_in, generator=generator) * (weight_gain / math.sqrt(d_in)))
        biases.append(torch.randn(n, d_out, generator=generator) * bias_std)
    return weights, biases


def mlp_activations(weights, biases, x: torch.Tensor, act) -> list[torch.Tensor]:
    """Eq. 11 for every MLP and input: x (n, P, d^0) -> [a^1..a^L], each (n, P, d^l)."""
    out, a = [], x
    for w, b in zip(weights, biases):
        a = act(torch.einsum("nij,npj->npi", w, a) + b.unsqueeze(1))
        out.append(a)
    return out


class ActivationData:
    """MLPs, their dynamic neural graphs, sampled inputs and every layer's activations."""

    def __init__(self, n: int, widths: list[int], act_name: str, weight_gain: float, bias_std: float,
                 inputs_per_mlp: int, seed: int):
        if act_name not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {act_name!r}")
        if len(widths) < 2:
            raise ValueError(f"widths needs at least an input and an output width, got {widths}")
        act, transform = ACTIVATIONS[act_name]
        g = torch.Generator().manual_seed(seed)
        self.weights, self.biases = sample_mlps(n, widths, weight_gain, bias_std, g)
        self.x = torch.rand(n, inputs_per_mlp, widths[0], generator=g) * 2 - 1
        self.activations = mlp_activations(self.weights, self.biases, self.x, act)
        self.n, self.p, self.depth = n, inputs_per_mlp, len(widths) - 1
        # The stream records which activation a layer's source goes through; the output's own activation
        # is carried by output_transform, so the graph describes exactly the network that made the targets.
        self.streams = [
            mlp_stream(
                [LinearLayer(f"w{l}", self.weights[l][i], f"b{l}", self.biases[l][i], before=(transform,) if l else ())
                 for l in range(self.depth)],
                arch="random-mlp", output_transform=(transform,),
            )
            for i in range(n)
        ]

    def batch(self, mlp_ids: torch.Tensor):
        """All inputs of the MLPs ``mlp_ids`` as one StreamBatch; returns (batch, inputs (B·P, d0), targets (N,))."""
        ids = mlp_ids.tolist()
        streams = [self.streams[i] for i in ids for _ in range(self.p)]
        batch = batch_streams(streams)
        inputs = self.x[mlp_ids].reshape(-1, self.x.shape[-1])
        # Node order of a single-signature batch is network-major, then inputs, layer 1, ..., layer L;
        # targets follow the same order (input entries are placeholders, masked out of the loss).
        per_net = [self.x[mlp_ids]] + [a[mlp_ids] for a in self.activations]
        targets = torch.cat(per_net, dim=2).reshape(-1)
        if targets.numel() != batch.num_nodes or not bool((batch.node_graph[1:] >= batch.node_graph[:-1]).all()):
            raise RuntimeError("unexpected node layout in the batch: targets would be misaligned")
        return batch, inputs, targets
