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

from .edge_ops import Conv, Dense, FlattenDense, combine, takes_bias
from .events import NODE_SLOTS, EdgeKind, EventStream
from .transforms import apply_all

_BIAS, _NORM_IN, _NORM_OUT = (NODE_SLOTS.index(k) for k in ("bias", "norm_in_weight", "norm_out_weight"))


def _dense_weight(stream: EventStream, e: int) -> torch.Tensor:
    g = stream.edge_groups[e]
    s, d = stream.node_groups[g.src], stream.node_groups[g.dst]
    src, dst = stream.edge_index(e)
    w = torch.zeros(d.size, s.size, g.slots)
    # accumulate: a sparse group may list one (dst, src) pair twice (a channel read twice, e.g. torch.cat([x, x]))
    # the group's own slots, not edge_features (which pads every edge to the stream's K: 256 for a ViT-B/16 patch kernel)
    w.index_put_((dst - d.offset, src - s.offset), g.weight.reshape(g.num_edges, g.weight.shape[-1])[:, : g.slots], accumulate=True)
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
                if g.kind != EdgeKind.RESIDUAL:  # a conv (or flatten) reads (B, C, H, W) maps: the norm is over axis 1
                    maps = src.dim() == 4 and isinstance(g.op, (Conv, FlattenDense))
                    src = _layer_norm(stream.node_groups[g.src], _NORM_IN, src, channel_axis=1 if maps else -1)
                w = None if g.weight is None else _dense_weight(stream, e)
                parts.append((g.op, g.op(src, w)))
            node = stream.node_groups[dst]
            if takes_bias(parts):  # the patch tokens' bias goes in before a class token joins them
                acts[dst] = _layer_norm(node, _NORM_OUT, combine(parts, node.values[:, _BIAS] if node.slot_mask[_BIAS] else None))
                continue
            total = combine(parts)
            # Linear terms (also channels-last (B, H, W, C) ones) hold channels on the last axis, conv terms on axis 1
            last = total.dim() != 4 or any(isinstance(op, (Dense, FlattenDense)) for op, _ in parts)
            if node.slot_mask[_BIAS]:
                bias = node.values[:, _BIAS]
                total = total + (bias if last else bias.view(1, -1, 1, 1))
            acts[dst] = _layer_norm(node, _NORM_OUT, total, channel_axis=-1 if last else 1)
    out = apply_all(stream.output_transform, acts[stream.output_group])
    return (out, acts) if return_activations else out


def _layer_norm(group, slot: int, x: torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
    """LayerNorm over the group's nodes (the last axis, or axis 1 of (B, C, H, W) maps) with the scale/shift in
    ``slot``/``slot + 1``, if present."""
    if not group.slot_mask[slot]:
        return x
    if channel_axis != -1:
        return _layer_norm(group, slot, x.movedim(channel_axis, -1)).movedim(-1, channel_axis)
    return F.layer_norm(x, (group.size,), group.values[:, slot], group.values[:, slot + 1], eps=getattr(group, "norm_eps", 1e-5))


def _reads_images(stream: EventStream, group: int) -> bool:
    """Whether an edge group reads this input group through a transform that takes whole images (ViT patches)."""
    return any(
        getattr(t, "takes_images", False) for e in stream.edge_groups if e.src == group for t in e.src_transform[:1]
    )
