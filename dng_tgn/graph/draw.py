"""Figures of a whole event stream, for the CLI's ``draw`` and the notebooks.

* :func:`draw_snapshot_colored`: one snapshot G_{t^l}, weight edges coloured by the weight of one kernel slot, with
  the colour scale returned for a colourbar; every other edge kind in its own colour (:data:`KIND_COLORS`, with a
  legend): attention's Q and K edges (their weights as opacity), V and score edges, residual and gate edges.
* :func:`draw_kernel_slots`: every slot of an edge group (the ``h·w`` scalars of a conv kernel, §4.2) as a
  ``dst × src`` heat map on one symmetric colour scale.
* :func:`draw_timeline`: which node groups are present at which timestamp (a Gantt chart of +V … −V) with the
  number of events per timestamp.
* :func:`draw_stream`: all snapshots plus the timeline in one figure.

They read nothing but the public :class:`EventStream` structure, so they work for any architecture.
"""
from __future__ import annotations

import math

import torch

from .events import EdgeKind, EventStream, Op


# Edges that are not plain WEIGHT edges, one colour per kind (a legend names them). Q and K edges carry weights: their
# opacity follows |w| on the snapshot's colour scale, so which rows are large stays visible.
KIND_COLORS = {
    EdgeKind.ATTN_Q: (0.17, 0.63, 0.17),  # green
    EdgeKind.ATTN_K: (0.58, 0.40, 0.74),  # purple
    EdgeKind.ATTN_V: (1.00, 0.50, 0.05),  # orange
    EdgeKind.ATTN_SCORE: (0.74, 0.74, 0.13),  # olive
    EdgeKind.RESIDUAL: (0.55, 0.55, 0.55),  # grey
    EdgeKind.GATE: (0.55, 0.34, 0.29),  # brown
}
_KIND_LABELS = {EdgeKind.ATTN_Q: "Q (weight: opacity)", EdgeKind.ATTN_K: "K (weight: opacity)", EdgeKind.ATTN_V: "V → Z",
                EdgeKind.ATTN_SCORE: "score → Z", EdgeKind.RESIDUAL: "residual", EdgeKind.GATE: "gate"}


def kind_legend_handles(kinds):
    """Legend handles for the non-WEIGHT edge kinds in ``kinds``."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=KIND_COLORS[k], lw=1.5, label=_KIND_LABELS[k]) for k in sorted(set(kinds)) if k in KIND_COLORS]


def _edge_color(kind: int, w: float, mappable, norm) -> tuple:
    kind = EdgeKind(kind)
    if kind == EdgeKind.WEIGHT:
        return mappable.to_rgba(w, alpha=0.8)
    r, g, b = KIND_COLORS.get(kind, (0.6, 0.6, 0.6))
    if kind in (EdgeKind.ATTN_Q, EdgeKind.ATTN_K):
        scale = max(abs(norm.vmin), abs(norm.vmax)) or 1.0
        return (r, g, b, 0.15 + 0.85 * min(abs(w) / scale, 1.0))
    return (r, g, b, 0.6)


def _symmetric_norm(values: torch.Tensor):
    from matplotlib.colors import Normalize

    vmax = float(values.abs().max()) if values.numel() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    return Normalize(-vmax, vmax)


def draw_snapshot_colored(stream: EventStream, t: int, ax=None, slot: int = 0, max_nodes_per_group: int = 24,
                          cmap: str = "coolwarm", norm=None, colorbar: bool = True, legend: bool = True):
    """Draw G_{t^t}: node groups as columns (at most ``max_nodes_per_group`` nodes each), weight edges coloured
    by ``slot``, other edge kinds by :data:`KIND_COLORS` (``legend``: name those present). Returns the
    ``ScalarMappable`` of the colour scale (``fig.colorbar(returned, ax=ax)``)."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection

    snap = stream.snapshot(t)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    present = set(snap.node_ids.tolist())
    groups = [g for g in stream.node_groups if g.offset in present]
    pos: dict[int, tuple[float, float]] = {}
    for col, grp in enumerate(groups):
        n = min(grp.size, max_nodes_per_group)
        for k in range(n):
            pos[grp.offset + k] = (col, (k - (n - 1) / 2) / max(n, 1))
        short = grp.name if len(grp.name) <= 14 else "…" + ".".join(grp.name.split(".")[-2:])[-13:]
        ax.text(col, -0.56, f"{short}\n({grp.size})", ha="center", va="top", fontsize=6,
                rotation=30 if len(groups) > 3 else 0)
    src, dst = snap.src.tolist(), snap.dst.tolist()
    keep = [i for i, (s, d) in enumerate(zip(src, dst)) if s in pos and d in pos]
    idx = torch.tensor(keep, dtype=torch.long)
    weights = snap.edge_weight[idx, min(slot, snap.edge_weight.shape[1] - 1)] if keep else torch.zeros(0)
    kinds = snap.edge_kind[idx].tolist() if keep else []
    is_weight = snap.edge_kind[idx] == int(EdgeKind.WEIGHT) if keep else torch.zeros(0, dtype=torch.bool)
    norm = norm or _symmetric_norm(weights[is_weight])
    mappable = ScalarMappable(norm=norm, cmap=plt.get_cmap(cmap))
    segs = [(pos[src[i]], pos[dst[i]]) for i in keep]
    colors = [_edge_color(k, float(w), mappable, norm) for w, k in zip(weights.tolist(), kinds)]
    # no collection-wide alpha: it would override the per-edge opacity of the Q/K edges
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=0.6))
    if pos:
        xs, ys = zip(*pos.values())
        ax.scatter(xs, ys, s=10, c="k", zorder=3)
    ax.set_xlim(-0.5, max(len(groups), 1) - 0.5)
    ax.set_ylim(-0.85, 0.6)
    label = f", slot {slot}" if stream.num_slots > 1 else ""
    ax.set_title(f"G(t^{t}): {snap.num_nodes} nodes, {snap.num_edges} edges{label}", fontsize=8)
    ax.set_axis_off()
    if colorbar:
        ax.figure.colorbar(mappable, ax=ax, shrink=0.7, label="weight")
    handles = kind_legend_handles(kinds)
    if legend and handles:
        ax.legend(handles=handles, fontsize=5, loc="upper right", frameon=False)
    return mappable


def draw_kernel_slots(stream: EventStream, edge_group: int | str, fig=None, cmap: str = "coolwarm",
                      cols: int | None = None):
    """Every slot of one weight edge group as a ``dst × src`` heat map (shared symmetric scale, one colourbar).

    ``edge_group``: its index or name. A 3×3 conv gives 9 panels, one per kernel position (§4.2). ``fig`` may be a
    figure or a subfigure; ``cols`` panels per row (default: 3 for 4 or 9 slots, else up to 6)."""
    import matplotlib.pyplot as plt

    if isinstance(edge_group, str):
        names = [e.name for e in stream.edge_groups]
        if edge_group not in names:
            raise KeyError(f"no edge group {edge_group!r} in {stream.arch}; groups: {', '.join(names[:8])}...")
        edge_group = names.index(edge_group)
    g = stream.edge_groups[edge_group]
    if g.weight is None:
        raise ValueError(f"edge group {g.name!r} carries no weights ({EdgeKind(g.kind).name} edges)")
    w = g.weight[..., : g.slots]
    if cols is None:
        cols = min(g.slots, 3) if g.slots in (4, 9) else min(g.slots, 6)
    cols = max(1, min(cols, g.slots))
    rows = math.ceil(g.slots / cols)
    if fig is None:
        fig = plt.figure(figsize=(2.2 * cols + 1.2, 2.0 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    norm = _symmetric_norm(w)
    for k, ax in enumerate(axes.flat):
        if k >= g.slots:
            ax.set_axis_off()
            continue
        im = ax.imshow(w[:, :, k].numpy(), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        kernel = getattr(g.op, "kernel_size", None)
        where = f" = kernel ({k // kernel[1]}, {k % kernel[1]})" if kernel and k < kernel[0] * kernel[1] else ""
        ax.set_title(f"slot {k}{where}", fontsize=7)
        ax.set_xticks([])  # rows are dst nodes, columns src nodes; ticks cost more to draw than the maps
        ax.set_yticks([])
        if k % cols == 0:
            ax.set_ylabel(f"dst ({stream.node_groups[g.dst].name})", fontsize=7)
        if k // cols == rows - 1:
            ax.set_xlabel(f"src ({stream.node_groups[g.src].name})", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    fig.supylabel(f"{g.name}\n({g.slots} slots)", fontsize=8)
    return fig


def event_counts(stream: EventStream) -> list[dict[str, int]]:
    """Per timestamp: events and items of each op, and the size of the snapshot (for tables and timelines)."""
    rows = []
    for t in range(stream.num_timestamps + 1):
        row = {"t": t}
        for op in Op:
            evs = [ev for ev in stream.events_at(t) if ev.op == op]
            row[f"{op.value} events"] = len(evs)
            row[f"{op.value} items"] = sum(ev.ids.numel() for ev in evs)
        snap_groups = stream.presence(t)
        row["snapshot nodes"] = sum(stream.node_groups[g].size for g in snap_groups)
        row["snapshot edges"] = sum(stream.edge_groups[e].num_edges for e in stream.steps[t - 1]) if t else 0
        rows.append(row)
    return rows


def draw_timeline(stream: EventStream, ax=None, max_groups: int = 60):
    """Gantt chart of node-group presence: a bar from the timestamp a group is added (+V) until it is deleted
    (−V), marks where a group is written (its memory update), and the edges added per timestamp on top."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.22 * min(len(stream.node_groups), max_groups) + 1.5))
    L = stream.num_timestamps
    order = list(range(len(stream.node_groups)))[:max_groups]
    written_at = {g: t for t in range(1, L + 1) for g in stream.updated_groups(t)}
    for row, gi in enumerate(order):
        present = [(t - 0.5, 1.0) for t in range(L + 1) if gi in stream.presence(t)]
        ax.broken_barh(present, (row - 0.35, 0.7), facecolors="tab:blue", alpha=0.35, lw=0)
    rows_written = [(written_at[gi], row) for row, gi in enumerate(order) if gi in written_at]
    if rows_written:
        ax.plot(*zip(*rows_written), "o", color="tab:red", ms=4, ls="none")
    ax.set_yticks(range(len(order)), [stream.node_groups[g].name for g in order], fontsize=6)
    ax.invert_yaxis()
    ax.set_xticks(range(L + 1), [f"t^{t}" for t in range(L + 1)], fontsize=7)
    ax.set_xlim(-0.5, L + 0.5)
    ax.set_xlabel("timestamp (blue: group in the snapshot; red: its nodes are computed / memory written)", fontsize=7)
    top = ax.twiny()
    counts = [0] + [sum(stream.edge_groups[e].num_edges for e in stream.steps[t - 1]) for t in range(1, L + 1)]
    top.set_xlim(ax.get_xlim())
    top.set_xticks(range(L + 1), [f"+E {c}" for c in counts], fontsize=6, rotation=45)
    ax.set_title(f"{stream.arch}: event timeline", fontsize=9, pad=24)
    return ax


def draw_stream(stream: EventStream, max_nodes_per_group: int = 16, cols: int = 4, slot: int = 0):
    """All snapshots G_{t^1}..G_{t^L} (shared colour scale, one colourbar) and the event timeline below."""
    import matplotlib.pyplot as plt

    L = stream.num_timestamps
    cols = min(cols, L)
    rows = math.ceil(L / cols)
    n_groups = min(len(stream.node_groups), 60)
    tl_height = 0.16 * n_groups + 1.6
    fig = plt.figure(figsize=(3.6 * cols + 1.6, 3.0 * rows + tl_height + 0.6))
    top = 1 - 0.45 / fig.get_figheight()  # room for the title
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[3.0] * rows + [tl_height], hspace=0.45, wspace=0.15,
                            left=0.14, right=0.9, top=top, bottom=0.06)
    fig.suptitle(f"{stream.arch}: snapshots G(t^1)..G(t^{L}) and the event timeline", fontsize=10)
    axes = [fig.add_subplot(grid[k // cols, k % cols]) for k in range(L)]
    all_w = [e.weight[..., min(slot, e.slots - 1)].reshape(-1) for e in stream.edge_groups if e.weight is not None]
    norm = _symmetric_norm(torch.cat(all_w)) if all_w else None
    mappable = None
    for k, ax in enumerate(axes):
        mappable = draw_snapshot_colored(stream, k + 1, ax=ax, slot=slot, norm=norm, colorbar=False, legend=False,
                                         max_nodes_per_group=max_nodes_per_group)
    handles = kind_legend_handles(int(e.kind) for e in stream.edge_groups)
    if handles:  # one legend for the figure: the edge kinds other than plain weights
        fig.legend(handles=handles, fontsize=7, loc="upper right", ncol=min(len(handles), 6), frameon=False)
    if mappable is not None:
        height = (top - 0.06) * (3.0 * rows) / (3.0 * rows + tl_height)
        cax = fig.add_axes([0.92, top - height, 0.012, height])
        fig.colorbar(mappable, cax=cax, label=f"weight (slot {slot})")
    draw_timeline(stream, ax=fig.add_subplot(grid[rows, :]))
    return fig
