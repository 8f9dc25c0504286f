"""networkx export and matplotlib drawing, for looking at streams in a notebook.

The networkx conversion itself is :meth:`EventStream.to_networkx`; this module builds on ``events`` and is
never imported by it.
"""
from __future__ import annotations

import networkx as nx
import torch

from .events import EventStream


def stream_to_networkx(stream: EventStream) -> nx.MultiDiGraph:
    """Every node and edge of the whole stream; the same as :meth:`EventStream.to_networkx`."""
    return stream.to_networkx()


def draw_snapshot(stream: EventStream, t: int, ax=None, max_nodes_per_group: int = 40, cmap="coolwarm"):
    """Draw G_{t^t} as a layered bipartite picture: nodes by group, edges coloured by weight (slot 0)."""
    import matplotlib.pyplot as plt

    snap = stream.snapshot(t)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    present = [gi for gi, grp in enumerate(stream.node_groups) if grp.offset in set(snap.node_ids.tolist())]
    pos, shown = {}, set()
    for col, gi in enumerate(present):
        grp = stream.node_groups[gi]
        n = min(grp.size, max_nodes_per_group)
        for k in range(n):
            pos[grp.offset + k] = (col, (k - (n - 1) / 2) / max(n, 1))
            shown.add(grp.offset + k)
        ax.text(col, -0.58, f"{grp.name}\n({grp.size})", ha="center", va="top", fontsize=8)
    mask = torch.tensor([int(s) in shown and int(d) in shown for s, d in zip(snap.src, snap.dst)], dtype=torch.bool)
    w = snap.edge_weight[mask, 0]
    vmax = float(w.abs().max()) if w.numel() else 1.0
    colormap = plt.get_cmap(cmap)
    for (s, d), wi in zip(zip(snap.src[mask].tolist(), snap.dst[mask].tolist()), w.tolist()):
        (x0, y0), (x1, y1) = pos[s], pos[d]
        ax.plot([x0, x1], [y0, y1], color=colormap(0.5 + 0.5 * wi / (vmax or 1.0)), lw=0.6, alpha=0.7)
    xs, ys = zip(*pos.values()) if pos else ((), ())
    ax.scatter(xs, ys, s=12, c="k", zorder=3)
    ax.set_title(f"{stream.arch}: G_(t^{t})  ({snap.num_nodes} nodes, {snap.num_edges} edges)", fontsize=9)
    ax.set_axis_off()
    return ax
