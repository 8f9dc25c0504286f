"""The dynamic neural graph: node groups, edge groups, and the +V/+E/-V/-E events between them.

A network becomes ``G_T = (G_{t^0}, O_[t^1:t^L])`` (paper §4.1). We store it compactly, the way the
forward pass is organised: *node groups* (the neurons of one layer, or the channels of one feature map)
and, per timestamp ``t^l``, the *edge groups* that carry that step's weights. The events are derived from
that structure by one rule:

    the snapshot ``G_{t^l}`` holds exactly the edges of step ``l`` and the nodes they touch.

Everything that enters ``G_{t^l}`` and was not in ``G_{t^{l-1}}`` is added (+V/+E), and everything that
leaves is deleted (-V/-E). For an MLP this is Eq. 3 verbatim: at ``t^l`` the stream adds ``v^l`` and
``e^l`` and deletes ``v^{l-2}`` and ``e^{l-1}``, so every snapshot is the bipartite graph
``({v^{l-1}, v^l}, e^l)``. Residual sources (App. E.1) leave and come back, which is the paper's
"v^l re-added at t^{l+r}".

This module sits at the bottom of ``dng_tgn.graph``: it imports none of the modules built on it. The views
that need nothing but the stream (:class:`Snapshot`, networkx, pandas) therefore live here too, so that
``stream.snapshot(t)`` and ``stream.to_networkx()`` work without an import cycle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Iterator, Sequence

import torch

from ..errors import NonFiniteWeightsError, ShapeMismatchError, StreamValidationError
from .edge_ops import EdgeOp

# Scalars a node can carry, each becoming an RFF block of its initial feature. MLPs and CNNs use the
# bias only; transformers also attach LayerNorm parameters to the nodes the norm acts on, so every
# parameter of the network appears somewhere in the stream.
NODE_SLOTS = ("bias", "norm_in_weight", "norm_in_bias", "norm_out_weight", "norm_out_bias")
NUM_NODE_SLOTS = len(NODE_SLOTS)


class Op(str, Enum):
    ADD_NODES = "+V"
    ADD_EDGES = "+E"
    DEL_NODES = "-V"
    DEL_EDGES = "-E"

    def __str__(self) -> str:
        return self.value


# Eq. 3 lists additions before deletions within one timestamp.
_OP_ORDER = (Op.ADD_NODES, Op.ADD_EDGES, Op.DEL_NODES, Op.DEL_EDGES)


class NodeKind(IntEnum):
    INPUT = 0  # x_j: learnable vectors in the encoder
    NEURON = 1  # a unit or channel with parameters (bias, norms)
    COMPUTE = 2  # parameter-free intermediate (attention Q/K/V/Z nodes), zero-initialised


class EdgeKind(IntEnum):
    WEIGHT = 0  # feature = RFF of the weight scalars
    RESIDUAL = 1  # feature = theta_res * span (App. E.1)
    # attention (App. E.2 as rebuilt in graph/convert/vit.py):
    ATTN_Q = 2  # x -> score node s_e, weight W_Q[e, j]: feature = RFF(weight) * a learnable query-role vector
    ATTN_K = 3  # x -> score node s_e, weight W_K[e, j]: feature = RFF(weight) * a learnable key-role vector
    ATTN_V = 4  # v_d -> z_d, index-paired, parameter-free: a learnable vector
    ATTN_SCORE = 5  # s_e -> z_d, every pair of one head, parameter-free: a learnable vector
    GATE = 6  # x_i -> p_i and g_i -> p_i, index-paired, parameter-free: p = x * g (squeeze-and-excitation)


class Pattern(IntEnum):
    DENSE = 0  # every (dst, src) pair, dst-major
    IDENTITY = 1  # i -> i
    SPARSE = 2  # the listed (dst, src) pairs only (``EdgeGroup.pairs``): grouped/depthwise convs, channel subsets


@dataclass(frozen=True)
class ParamRef:
    """Where a group's scalars came from: ``index`` holds flat positions in parameter ``name``.

    ``slot`` names the node slot for node groups. Lets a stream give its parameters back
    (:meth:`EventStream.recover_parameters`), which is how we prove each appears exactly once.
    """

    name: str
    shape: tuple[int, ...]
    index: torch.Tensor
    slot: int | None = None


@dataclass
class NodeGroup:
    name: str
    size: int
    kind: NodeKind
    values: torch.Tensor  # (size, NUM_NODE_SLOTS), zero where a slot is absent
    slot_mask: torch.Tensor  # (NUM_NODE_SLOTS,) bool
    offset: int = 0  # first global node id
    params: tuple[ParamRef, ...] = ()
    input_index_base: int = 0  # input nodes: position of node 0 among the network's inputs
    norm_eps: float = 1e-5  # eps of the LayerNorm in the norm slots (ConvNeXt uses 1e-6)

    @property
    def ids(self) -> torch.Tensor:
        return torch.arange(self.offset, self.offset + self.size)


@dataclass
class EdgeGroup:
    name: str
    src: int  # node group index
    dst: int
    kind: EdgeKind
    pattern: Pattern
    op: EdgeOp
    weight: torch.Tensor | None  # (n_dst, n_src, slots) for WEIGHT edges, None otherwise
    slots: int = 1  # real (unpadded) edges per node pair
    span: int = 0  # residual span r
    src_transform: tuple = ()  # activations applied to the source before these edges read it
    params: tuple[ParamRef, ...] = ()
    offset: int = 0  # first global edge id
    num_edges: int = 0
    pairs: torch.Tensor | None = None  # SPARSE: (2, E) local (dst, src) node indices; weight is then (E, 1, slots)


@dataclass(frozen=True)
class Event:
    """One graph update ``(op, items, t^l)``; ``ids`` are global node or edge ids."""

    op: Op
    t: int
    group: str
    ids: torch.Tensor

    def __repr__(self) -> str:
        return f"Event({self.op.value}, t={self.t}, {self.group}, n={self.ids.numel()})"


@dataclass
class EventStream:
    """A network as a continuous-time event stream. Build one with :func:`dng_tgn.to_event_stream`."""

    node_groups: list[NodeGroup]
    edge_groups: list[EdgeGroup]
    steps: list[list[int]]  # steps[l-1] = edge-group indices of timestamp t^l
    output_group: int
    output_transform: tuple = ()
    arch: str = "network"
    input_shape: tuple[int, ...] | None = None
    num_slots: int = 1  # K: edges per node pair after padding to the largest kernel (§4.2)
    _presence: list[frozenset[int]] | None = field(default=None, repr=False)

    def __post_init__(self):
        node_off = 0
        for g in self.node_groups:
            g.offset = node_off
            node_off += g.size
        edge_off = 0
        for e in self.edge_groups:
            e.num_edges = self._count_edges(e)
            e.offset = edge_off
            edge_off += e.num_edges
        self.num_nodes = node_off
        self.num_edges = edge_off
        self.validate()

    # ----- structure -----------------------------------------------------------------------------------
    def _count_edges(self, e: EdgeGroup) -> int:
        ns, nd = self.node_groups[e.src].size, self.node_groups[e.dst].size
        if e.pattern == Pattern.SPARSE:
            return int(e.pairs.shape[1])
        return ns * nd if e.pattern == Pattern.DENSE else nd

    @property
    def num_timestamps(self) -> int:
        """L: timestamps t^1..t^L (t^0 holds the input nodes only)."""
        return len(self.steps)

    def presence(self, t: int) -> frozenset[int]:
        """Node-group indices in the snapshot G_{t^t}."""
        if self._presence is None:
            inputs = frozenset(i for i, g in enumerate(self.node_groups) if g.kind == NodeKind.INPUT)
            pres = [inputs]
            for step in self.steps:
                pres.append(frozenset(x for e in step for x in (self.edge_groups[e].src, self.edge_groups[e].dst)))
            self._presence = pres
        return self._presence[t]

    def updated_groups(self, t: int) -> list[int]:
        """Node groups whose memory is written at t^t: the destinations of that step's edges."""
        return sorted({self.edge_groups[e].dst for e in self.steps[t - 1]})

    def events_at(self, t: int) -> list[Event]:
        self._check_t(t)
        if t == 0:
            return [Event(Op.ADD_NODES, 0, self.node_groups[g].name, self.node_groups[g].ids) for g in sorted(self.presence(0))]
        before, now = self.presence(t - 1), self.presence(t)
        out = []
        for g in sorted(now - before):
            out.append(Event(Op.ADD_NODES, t, self.node_groups[g].name, self.node_groups[g].ids))
        for e in self.steps[t - 1]:
            out.append(Event(Op.ADD_EDGES, t, self.edge_groups[e].name, self.edge_ids(e)))
        for g in sorted(before - now):
            out.append(Event(Op.DEL_NODES, t, self.node_groups[g].name, self.node_groups[g].ids))
        if t > 1:
            for e in self.steps[t - 2]:
                out.append(Event(Op.DEL_EDGES, t, self.edge_groups[e].name, self.edge_ids(e)))
        out.sort(key=lambda ev: _OP_ORDER.index(ev.op))
        return out

    def __iter__(self) -> Iterator[Event]:
        for t in range(self.num_timestamps + 1):
            yield from self.events_at(t)

    def __len__(self) -> int:
        return sum(len(self.events_at(t)) for t in range(self.num_timestamps + 1))

    def edge_ids(self, e: int) -> torch.Tensor:
        g = self.edge_groups[e]
        return torch.arange(g.offset, g.offset + g.num_edges)

    def edge_index(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (src, dst) node ids of edge group ``e``, in the order of its weight rows."""
        g = self.edge_groups[e]
        s, d = self.node_groups[g.src], self.node_groups[g.dst]
        if g.pattern == Pattern.DENSE:
            src = torch.arange(s.size).repeat(d.size)
            dst = torch.arange(d.size).repeat_interleave(s.size)
        elif g.pattern == Pattern.SPARSE:
            dst, src = g.pairs[0], g.pairs[1]
        else:
            src = dst = torch.arange(d.size)
        return src + s.offset, dst + d.offset

    def edge_table(self, groups: Sequence[int]) -> dict[str, torch.Tensor]:
        """The edges of ``groups`` concatenated: global ``src``/``dst`` node ids, ``kind``, ``span`` and edge ``eid``."""
        if not groups:
            empty = torch.zeros(0, dtype=torch.long)
            return dict(src=empty, dst=empty, kind=empty, span=empty, eid=empty)
        index = [self.edge_index(g) for g in groups]
        edge_groups = [self.edge_groups[g] for g in groups]
        return dict(
            src=torch.cat([i[0] for i in index]),
            dst=torch.cat([i[1] for i in index]),
            kind=torch.cat([torch.full((e.num_edges,), int(e.kind)) for e in edge_groups]),
            span=torch.cat([torch.full((e.num_edges,), e.span) for e in edge_groups]),
            eid=torch.cat([self.edge_ids(g) for g in groups]),
        )

    def edge_features(self, e: int) -> torch.Tensor:
        """(num_edges, K) raw weight scalars, zero-padded to ``num_slots``; zeros for learnable edges."""
        g = self.edge_groups[e]
        if g.weight is None:
            return torch.zeros(g.num_edges, self.num_slots)
        w = g.weight.reshape(g.num_edges, g.weight.shape[-1])
        if w.shape[1] < self.num_slots:
            w = torch.nn.functional.pad(w, (0, self.num_slots - w.shape[1]))
        return w

    def _check_t(self, t: int) -> None:
        if not 0 <= t <= self.num_timestamps:
            raise IndexError(f"timestamp {t} out of range: this stream has t^0..t^{self.num_timestamps}")

    # ----- views ----------------------------------------------------------------------------------------
    def snapshot(self, t: int) -> Snapshot:
        """The graph G_{t^t} obtained by replaying the events up to t (same as ``Snapshot.at(self, t)``)."""
        return Snapshot.at(self, t)

    def to_networkx(self):
        """Every node and edge of the whole stream as a ``networkx.MultiDiGraph``; edges carry the timestamp
        ``t`` at which they live.

        Multi-edges (conv kernels, flatten virtual vertices) become one networkx edge per slot, keyed by slot.
        """
        import networkx as nx

        g = nx.MultiDiGraph(arch=self.arch, num_timestamps=self.num_timestamps)
        added_at = {i: 0 for i, grp in enumerate(self.node_groups) if i in self.presence(0)}
        for t in range(1, self.num_timestamps + 1):
            for gi in self.updated_groups(t):
                added_at.setdefault(gi, t)
        for gi, grp in enumerate(self.node_groups):
            vals = grp.values.tolist()
            for k in range(grp.size):
                g.add_node(grp.offset + k, group=grp.name, index=k, kind=grp.kind.name, t=added_at.get(gi, 0), bias=vals[k][0])
        for t, step in enumerate(self.steps, start=1):
            for e in step:
                eg = self.edge_groups[e]
                src, dst = self.edge_index(e)
                feats = self.edge_features(e)[:, : eg.slots]
                for k, (s, d) in enumerate(zip(src.tolist(), dst.tolist())):
                    for slot in range(eg.slots):
                        g.add_edge(s, d, key=slot, t=t, group=eg.name, kind=eg.kind.name, weight=float(feats[k, slot]), span=eg.span)
        return g

    def table(self):
        """The events as a pandas DataFrame (one row per event), for notebooks."""
        import pandas as pd

        rows = [
            {"t": ev.t, "op": ev.op.value, "group": ev.group, "count": ev.ids.numel(), "first_id": int(ev.ids[0]) if ev.ids.numel() else None}
            for ev in self
        ]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        lines = [f"{self.arch}: {self.num_nodes} nodes, {self.num_edges} edges, K={self.num_slots}, L={self.num_timestamps}"]
        for t in range(self.num_timestamps + 1):
            evs = ", ".join(f"{ev.op.value} {ev.group}[{ev.ids.numel()}]" for ev in self.events_at(t))
            lines.append(f"  t^{t}: {evs}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"EventStream({self.arch}, L={self.num_timestamps}, nodes={self.num_nodes}, edges={self.num_edges}, K={self.num_slots})"

    # ----- parameters -----------------------------------------------------------------------------------
    def recover_parameters(self) -> dict[str, torch.Tensor]:
        """Rebuild every parameter the stream encodes from its node and edge features.

        Raises if a scalar is encoded twice. Parameters the stream does not carry are absent from the
        result, which is how tests show that every parameter appears exactly once.
        """
        flat: dict[str, torch.Tensor] = {}
        seen: dict[str, torch.Tensor] = {}
        for g in self.node_groups:
            for ref in g.params:
                self._scatter(flat, seen, ref, g.values[:, ref.slot])
        for e in self.edge_groups:
            for ref in e.params:
                self._scatter(flat, seen, ref, e.weight[..., : e.slots])
        for name, count in seen.items():
            if bool((count > 1).any()):
                raise StreamValidationError(f"parameter '{name}' is encoded more than once in the stream")
            if not bool((count == 1).all()):
                missing = int((count == 0).sum())
                raise StreamValidationError(f"parameter '{name}' has {missing} scalars missing from the stream")
        shapes = {ref.name: ref.shape for g in (*self.node_groups, *self.edge_groups) for ref in g.params}
        return {k: v.reshape(shapes[k]) for k, v in flat.items()}

    @staticmethod
    def _scatter(flat, seen, ref: ParamRef, values: torch.Tensor) -> None:
        numel = 1
        for s in ref.shape:
            numel *= s
        if ref.name not in flat:
            flat[ref.name] = torch.zeros(numel, dtype=values.dtype)
            seen[ref.name] = torch.zeros(numel, dtype=torch.long)
        idx = ref.index.reshape(-1)
        flat[ref.name][idx] = values.reshape(-1)[: idx.numel()].to(flat[ref.name].dtype)
        seen[ref.name].index_add_(0, idx, torch.ones_like(idx))

    # ----- validation -----------------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.steps:
            raise StreamValidationError("an event stream needs at least one timestamp")
        added_once: dict[int, int] = {}
        for l, step in enumerate(self.steps, start=1):
            if not step:
                raise StreamValidationError(f"timestamp t^{l} has no edges")
            dsts = {self.edge_groups[e].dst for e in step}
            for d in dsts:
                if d in added_once:
                    raise StreamValidationError(
                        f"node group '{self.node_groups[d].name}' is updated at t^{added_once[d]} and again at t^{l}"
                    )
                added_once[d] = l
            for e in step:
                self._validate_edge_group(self.edge_groups[e], l, added_once)
        for i, g in enumerate(self.node_groups):
            if g.values.shape != (g.size, NUM_NODE_SLOTS):
                raise ShapeMismatchError(f"node group '{g.name}': values {tuple(g.values.shape)} != ({g.size}, {NUM_NODE_SLOTS})")
            if not _all_finite(g.values):
                raise NonFiniteWeightsError(f"node group '{g.name}' has NaN or inf parameters")
            if g.kind != NodeKind.INPUT and i not in added_once:
                raise StreamValidationError(f"node group '{g.name}' is never computed by any timestamp")
        if self.output_group not in added_once:
            raise StreamValidationError("the output node group is not computed by any timestamp")

    def _validate_edge_group(self, e: EdgeGroup, l: int, added_at: dict[int, int]) -> None:
        s = self.node_groups[e.src]
        src_ready = s.kind == NodeKind.INPUT or added_at.get(e.src, l) < l
        if not src_ready:
            raise StreamValidationError(f"edge group '{e.name}' at t^{l} reads '{s.name}' before it is computed")
        if e.pattern == Pattern.SPARSE:
            p = e.pairs
            nd = self.node_groups[e.dst].size
            if p is None or p.dim() != 2 or p.shape[0] != 2:
                raise ShapeMismatchError(f"edge group '{e.name}': a sparse edge group needs (2, E) (dst, src) pairs")
            if p.numel() and (int(p[0].min()) < 0 or int(p[0].max()) >= nd or int(p[1].min()) < 0 or int(p[1].max()) >= s.size):
                raise ShapeMismatchError(f"edge group '{e.name}': pairs out of range for {s.size} -> {nd} nodes")
            if e.weight is not None and (e.weight.dim() != 3 or tuple(e.weight.shape[:2]) != (p.shape[1], 1)):
                raise ShapeMismatchError(f"edge group '{e.name}': sparse weight {tuple(e.weight.shape)} != ({p.shape[1]}, 1, slots)")
            if e.weight is not None and not _all_finite(e.weight):
                raise NonFiniteWeightsError(f"edge group '{e.name}' has NaN or inf weights")
            if e.weight is not None and e.weight.shape[2] > self.num_slots:
                raise ShapeMismatchError(f"edge group '{e.name}' has {e.weight.shape[2]} slots > K={self.num_slots}")
            return
        if e.kind == EdgeKind.WEIGHT:
            nd, ns = self.node_groups[e.dst].size, s.size
            if e.weight is None or e.weight.dim() != 3 or tuple(e.weight.shape[:2]) != (nd, ns):
                got = None if e.weight is None else tuple(e.weight.shape)
                raise ShapeMismatchError(f"edge group '{e.name}': weight {got} does not connect {ns} -> {nd} nodes")
            if e.weight.shape[2] > self.num_slots:
                raise ShapeMismatchError(f"edge group '{e.name}' has {e.weight.shape[2]} slots > K={self.num_slots}")
            if not _all_finite(e.weight):
                raise NonFiniteWeightsError(f"edge group '{e.name}' has NaN or inf weights")
        if e.pattern == Pattern.IDENTITY and s.size != self.node_groups[e.dst].size:
            raise ShapeMismatchError(
                f"residual '{e.name}' joins {s.size} nodes to {self.node_groups[e.dst].size}: sizes must match"
            )


@dataclass
class Snapshot:
    """G_{t^l}: the graph you get by replaying a stream's events up to timestamp t^l.

    Build one with :meth:`Snapshot.at` or :meth:`EventStream.snapshot`. (Not to be confused with
    :func:`dng_tgn.replay`, which executes the stream as the network's forward pass.)
    """

    stream: EventStream
    t: int
    node_ids: torch.Tensor  # global ids, sorted
    edge_ids: torch.Tensor  # global ids
    src: torch.Tensor  # global node ids per edge
    dst: torch.Tensor
    edge_weight: torch.Tensor  # (E, K) raw weights (zeros for learnable edges)
    edge_kind: torch.Tensor  # (E,) EdgeKind
    edge_span: torch.Tensor  # (E,) residual span r, 0 otherwise

    @classmethod
    def at(cls, stream: EventStream, t: int) -> Snapshot:
        """Apply +V/+E/-V/-E in order from t^0 up to t; the result must equal the structural definition."""
        stream._check_t(t)
        nodes: set[int] = set()
        edges: dict[int, int] = {}  # global edge id -> edge group
        group_of_edge = {}
        for e_idx, g in enumerate(stream.edge_groups):
            group_of_edge[g.name] = e_idx
        for tau in range(t + 1):
            for ev in stream.events_at(tau):
                ids = ev.ids.tolist()
                if ev.op == Op.ADD_NODES:
                    nodes.update(ids)
                elif ev.op == Op.DEL_NODES:
                    nodes.difference_update(ids)
                elif ev.op == Op.ADD_EDGES:
                    edges.update(dict.fromkeys(ids, group_of_edge[ev.group]))
                else:
                    for i in ids:
                        edges.pop(i, None)
        groups = sorted(set(edges.values()))
        tab = stream.edge_table(groups)
        weight = torch.cat([stream.edge_features(g) for g in groups]) if groups else torch.zeros(0, stream.num_slots)
        node_ids = torch.tensor(sorted(nodes), dtype=torch.long)
        return cls(stream, t, node_ids, tab["eid"], tab["src"], tab["dst"], weight, tab["kind"], tab["span"])

    @property
    def num_nodes(self) -> int:
        return self.node_ids.numel()

    @property
    def num_edges(self) -> int:
        return self.edge_ids.numel()

    def node_groups(self) -> list[str]:
        present = set(self.node_ids.tolist())
        return [g.name for g in self.stream.node_groups if g.offset in present]

    def _local(self):
        lookup = torch.full((self.stream.num_nodes,), -1, dtype=torch.long)
        lookup[self.node_ids] = torch.arange(self.num_nodes)
        return lookup

    def _node_data(self, ids):
        values = torch.cat([g.values for g in self.stream.node_groups])[ids] if self.stream.node_groups else None
        return values

    def to_dgl(self):
        """A homogeneous DGLGraph over the snapshot's nodes (relabelled 0..n-1; ``ndata['nid']`` keeps ids)."""
        from .._dgl import require_dgl

        dgl = require_dgl()
        lookup = self._local()
        g = dgl.graph((lookup[self.src], lookup[self.dst]), num_nodes=self.num_nodes)
        g.ndata["nid"] = self.node_ids
        g.ndata["values"] = self._node_data(self.node_ids)
        g.edata["eid"] = self.edge_ids
        g.edata["w"] = self.edge_weight
        g.edata["kind"] = self.edge_kind
        g.edata["span"] = self.edge_span
        return g

    def to_block(self):
        """A DGL message-flow block: sources are this step's readers, destinations the nodes it computes."""
        from .._dgl import require_dgl

        dgl = require_dgl()
        src_ids = torch.unique(self.src)
        dst_ids = torch.unique(self.dst)
        s_lookup = torch.full((self.stream.num_nodes,), -1, dtype=torch.long)
        s_lookup[src_ids] = torch.arange(src_ids.numel())
        d_lookup = torch.full((self.stream.num_nodes,), -1, dtype=torch.long)
        d_lookup[dst_ids] = torch.arange(dst_ids.numel())
        block = dgl.create_block(
            (s_lookup[self.src], d_lookup[self.dst]), num_src_nodes=src_ids.numel(), num_dst_nodes=dst_ids.numel()
        )
        block.srcdata["nid"] = src_ids
        block.dstdata["nid"] = dst_ids
        block.dstdata["values"] = self._node_data(dst_ids)
        block.edata["w"] = self.edge_weight
        block.edata["kind"] = self.edge_kind
        block.edata["span"] = self.edge_span
        return block

    def __repr__(self) -> str:
        return f"Snapshot(t={self.t}, nodes={self.num_nodes}, edges={self.num_edges}, groups={self.node_groups()})"


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite: one sum (NaN/inf propagate through it), the exact test only if the sum is not."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def node_values(size: int, **slots: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack per-node scalars into the (size, NUM_NODE_SLOTS) layout plus the slot mask."""
    values = torch.zeros(size, NUM_NODE_SLOTS)
    mask = torch.zeros(NUM_NODE_SLOTS, dtype=torch.bool)
    for name, v in slots.items():
        if v is None:
            continue
        k = NODE_SLOTS.index(name)
        v = v.detach().reshape(-1).float()
        if v.numel() != size:
            raise ShapeMismatchError(f"node slot '{name}' has {v.numel()} values for {size} nodes")
        values[:, k] = v
        mask[k] = True
    return values, mask


def flat_index(shape: Sequence[int]) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n).reshape(tuple(shape))
