"""Execute an event stream as the computation it encodes.

Nodes carry activations, edges carry weights: at each timestamp the weights are rebuilt from the edge
list (src, dst, slots) alone, so matching the original model's output proves that the stream holds the
whole forward pass, not just the parameters. A node group's activation is the sum of its incoming edge
groups' terms, plus its bias, then its in-place LayerNorm (``norm_out_*``); a pre-norm (``norm_in_*``) is
applied when a non-residual edge group reads the group. Attention's score and output nodes combine their
terms as products instead (:func:`~dng_tgn.graph.edge_ops.combine`). (The snapshot graph G_{t^l}, built by
replaying the *events* up to t^l, is :meth:`Snapshot.at <dng_tgn.graph.Snapshot.at>`; nothing is executed there.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .edge_ops import Dense, FlattenDense, combine
from .events import NODE_SLOTS, EdgeKind, EventStream
from .transforms import apply_all

_BIAS, _NORM_IN, _NORM_OUT = (NODE_SLOTS.index(k) for k in ("bias", "norm_in_weight", "norm_out_weight"))


def _dense_weight(stream: EventStream, e: int) -> torch.Tensor:
    g = stream.edge_groups[e]
    s, d = stream.node_groups[g.src], stream.node_groups[g.dst]
    src, dst = stream.edge_index(e)
    w = torch.zeros(d.size, s.size, g.slots)
    # accumulate: a sparse group may list one (dst, src) pair twice (a channel read twice, e.g. torch.cat([x, x]))
    w.index_put_((dst - d.offset, src - s.offset), stream.edge_features(e)[:, : g.slots], accumulate=True)
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
        keep_maps = x.dim() > 2 and (stream.node_groups[i].size == x.shape[1] or _reads_images(stream, i))
        acts[i] = x if keep_maps else x.reshape(x.shape[0], -1)
    for t in range(1, stream.num_timestamps + 1):
        for dst in stream.updated_groups(t):
            parts = []
            for e in stream.steps[t - 1]:
                g = stream.edge_groups[e]
                if g.dst != dst:
                    continue
                src = apply_all(g.src_transform, acts[g.src])
                if g.kind != EdgeKind.RESIDUAL:
                    src = _layer_norm(stream.node_groups[g.src], _NORM_IN, src)
                w = None if g.weight is None else _dense_weight(stream, e)
                parts.append((g.op, g.op(src, w)))
            total = combine(parts)
            node = stream.node_groups[dst]
            if node.slot_mask[_BIAS]:
                bias = node.values[:, _BIAS]
                # Linear terms (also channels-last (B, H, W, C) ones) hold channels on the last axis, conv terms on axis 1
                last = total.dim() != 4 or any(isinstance(op, (Dense, FlattenDense)) for op, _ in parts)
                total = total + (bias if last else bias.view(1, -1, 1, 1))
            acts[dst] = _layer_norm(node, _NORM_OUT, total)
    out = apply_all(stream.output_transform, acts[stream.output_group])
    return (out, acts) if return_activations else out


def _layer_norm(group, slot: int, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the group's nodes (the last axis) with the scale/shift in ``slot``/``slot + 1``, if present."""
    if not group.slot_mask[slot]:
        return x
    return F.layer_norm(x, (group.size,), group.values[:, slot], group.values[:, slot + 1], eps=getattr(group, "norm_eps", 1e-5))


def _reads_images(stream: EventStream, group: int) -> bool:
    """Whether an edge group reads this input group through a transform that takes whole images (ViT patches)."""
    return any(
        getattr(t, "takes_images", False) for e in stream.edge_groups if e.src == group for t in e.src_transform[:1]
    )
