"""Execute an event stream as the computation it encodes.

Nodes carry activations, edges carry weights: at each timestamp the weights are rebuilt from the edge
list (src, dst, slots) alone, so matching the original model's output proves that the stream holds the
whole forward pass, not just the parameters. (The snapshot graph G_{t^l}, built by replaying the *events*
up to t^l, is :meth:`Snapshot.at <dng_tgn.graph.Snapshot.at>`; nothing is executed there.)
"""
from __future__ import annotations

import torch

from .events import EdgeKind, EventStream
from .transforms import apply_all


def _dense_weight(stream: EventStream, e: int) -> torch.Tensor:
    g = stream.edge_groups[e]
    s, d = stream.node_groups[g.src], stream.node_groups[g.dst]
    src, dst = stream.edge_index(e)
    w = torch.zeros(d.size, s.size, g.slots)
    w[dst - d.offset, src - s.offset] = stream.edge_features(e)[:, : g.slots]
    return w


@torch.no_grad()
def replay(stream: EventStream, x: torch.Tensor, return_activations: bool = False):
    """Run ``x`` (a batch in the model's input layout) through the stream; returns the model output."""
    for e in stream.edge_groups:
        if not e.op.replayable:
            raise NotImplementedError(f"{stream.arch}: edge group '{e.name}' ({type(e.op).__name__}) cannot be executed")
    inputs = [i for i, g in enumerate(stream.node_groups) if i in stream.presence(0)]
    acts: dict[int, torch.Tensor] = {}
    for i in inputs:
        keep_maps = x.dim() > 2 and stream.node_groups[i].size == x.shape[1]
        acts[i] = x if keep_maps else x.reshape(x.shape[0], -1)
    for t in range(1, stream.num_timestamps + 1):
        for dst in stream.updated_groups(t):
            total = None
            for e in stream.steps[t - 1]:
                g = stream.edge_groups[e]
                if g.dst != dst:
                    continue
                src = apply_all(g.src_transform, acts[g.src])
                w = None if g.kind == EdgeKind.RESIDUAL else _dense_weight(stream, e)
                term = g.op(src, w)
                total = term if total is None else total + term
            bias = stream.node_groups[dst].values[:, 0]
            total = total + (bias.view(1, -1, 1, 1) if total.dim() == 4 else bias)
            acts[dst] = total
    out = apply_all(stream.output_transform, acts[stream.output_group])
    return (out, acts) if return_activations else out
