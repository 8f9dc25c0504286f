"""Many event streams as one stream per timestamp, for the encoder.

Streams that share a structure (same architecture and sizes, the common case in weight-space datasets)
are laid out from one index layout: index tensors are built once and shifted by per-network offsets, and
weights are stacked, so there is no Python loop over edges or neurons. Heterogeneous batches are a
concatenation of such same-structure stacks; shorter streams simply stop contributing after their last
timestamp, and slot counts are zero-padded to the batch's largest K.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from .events import NUM_NODE_SLOTS, EventStream, NodeKind
from .transforms import NONLINEARITIES, nonlinearity_index


@dataclass
class StepBatch:
    """The edges of timestamp t^l across the batch.

    Edges are stored against the step's own node lists: ``src_nodes[src_local]`` is the global id of each
    edge's source, ``dst_nodes[dst_local]`` of its destination. Local indices are int32 and kinds int8
    because for 1,024 SIRENs a step holds a million edges and memory traffic is the cost of batching.
    """

    src_local: torch.Tensor  # (E,) int32 index into src_nodes
    dst_local: torch.Tensor  # (E,) int32 index into dst_nodes
    src_nodes: torch.Tensor  # (S,) int64 global ids of the nodes read at this step
    dst_nodes: torch.Tensor  # (D,) int64 global ids of the nodes written at this step
    weight: torch.Tensor  # (E, K) raw weights, zero-padded slots
    kind: torch.Tensor  # (E,) int8 EdgeKind
    span: torch.Tensor  # (E,) int16 residual span r, 0 otherwise

    @property
    def num_edges(self) -> int:
        return self.src_local.numel()

    @property
    def src(self) -> torch.Tensor:
        """(E,) global source ids (computed on demand)."""
        return self.src_nodes[self.src_local.long()]

    @property
    def dst(self) -> torch.Tensor:
        return self.dst_nodes[self.dst_local.long()]

    def to(self, device) -> "StepBatch":
        return StepBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def to_block(self):
        """This step as a DGL block (sources -> destinations)."""
        from .._dgl import require_dgl

        dgl = require_dgl()
        return dgl.create_block(
            (self.src_local, self.dst_local), num_src_nodes=self.src_nodes.numel(), num_dst_nodes=self.dst_nodes.numel(),
            idtype=torch.int32, device=self.src_local.device,
        )


@dataclass
class StreamBatch:
    num_graphs: int
    num_nodes: int
    num_slots: int
    node_values: torch.Tensor  # (N, NUM_NODE_SLOTS)
    node_slot_mask: torch.Tensor  # (N, NUM_NODE_SLOTS) bool
    node_kind: torch.Tensor  # (N,)
    node_graph: torch.Tensor  # (N,) index of the network in the list given to batch_streams
    node_input_index: torch.Tensor  # (N,) position among the network's inputs, -1 for non-inputs
    output_nodes: torch.Tensor  # (sum of output sizes,) in network order
    output_graph: torch.Tensor  # (same,) owning network
    num_timestamps: torch.Tensor  # (B,)
    steps: list[StepBatch]
    archs: list[str] = field(default_factory=list)
    # (N,) index in graph.transforms.NONLINEARITIES of the non-linearity applied to each node's value
    # (see _group_nonlinearities); None only for batches assembled by hand
    node_nonlinearity: torch.Tensor | None = None

    @property
    def max_timestamps(self) -> int:
        return len(self.steps)

    def to(self, device) -> "StreamBatch":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device)
            elif f.name == "steps":
                v = [s.to(device) for s in v]
            kw[f.name] = v
        return StreamBatch(**kw)

    def node_layer(self) -> torch.Tensor:
        """(N,) int64: the timestamp ``t^l`` at which each node is written (its layer ``l``); 0 for input nodes.

        Every non-input node is the destination of exactly one step, so this is well defined. It is the same
        for all units of a layer, so embedding it keeps hidden-neuron permutation symmetry.
        """
        layer = torch.zeros(self.num_nodes, dtype=torch.long, device=self.node_kind.device)
        for t, step in enumerate(self.steps, start=1):
            layer[step.dst_nodes] = t
        return layer

    def output_sizes(self) -> torch.Tensor:
        return torch.bincount(self.output_graph, minlength=self.num_graphs)

    def __repr__(self) -> str:
        e = sum(s.num_edges for s in self.steps)
        return f"StreamBatch(graphs={self.num_graphs}, nodes={self.num_nodes}, edges={e}, T={self.max_timestamps}, K={self.num_slots})"


def _group_nonlinearities(s: EventStream) -> list[int]:
    """Per node group, the index in ``NONLINEARITIES`` of the non-linearity its units' values go through.

    Activations live on the edges that read a node (``src_transform``, see graph/transforms.py); a node's is
    the first non-linearity among the edge groups reading it, in edge-group order (the output group's comes
    from ``output_transform``), and "identity" when none applies (inputs, linear outputs).
    """
    out = []
    for gi in range(len(s.node_groups)):
        found = nonlinearity_index(s.output_transform) if gi == s.output_group else None
        for e in s.edge_groups:
            if found is not None:
                break
            if e.src == gi:
                found = nonlinearity_index(e.src_transform)
        out.append(NONLINEARITIES.index("identity") if found is None else found)
    return out


def _signature(s: EventStream):
    return (
        tuple((g.size, int(g.kind), tuple(g.slot_mask.tolist()), g.input_index_base) for g in s.node_groups),
        tuple(_group_nonlinearities(s)),  # same weights layout, other activations: not the same structure
        tuple((e.src, e.dst, int(e.kind), int(e.pattern), e.slots, e.span,
               None if e.pairs is None else (e.pairs.shape[1], hash(e.pairs.numpy().tobytes()))) for e in s.edge_groups),
        tuple(tuple(st) for st in s.steps),
        s.output_group,
    )


@dataclass
class _IndexLayout:
    """The index tensors of one network (local node ids), shared by every network of its structure.

    ``steps[l-1]`` holds the step's src/dst node lists, int32 local edge indices, kinds and spans
    (the index fields of :class:`StepBatch`); the rest are per-node (kind, input index, slot mask) or
    the output nodes' ids. Shifting by a network's node offset gives that network's indices.
    """

    steps: list[dict]
    kind: torch.Tensor
    input_index: torch.Tensor
    output: torch.Tensor
    slot_mask: torch.Tensor
    nonlinearity: torch.Tensor


def _index_layout(s: EventStream) -> _IndexLayout:
    steps = []
    for t in range(1, s.num_timestamps + 1):
        tab = s.edge_table(s.steps[t - 1])
        src_nodes, src_local = torch.unique(tab["src"], return_inverse=True)
        dst_nodes, dst_local = torch.unique(tab["dst"], return_inverse=True)
        steps.append(dict(src_nodes=src_nodes, dst_nodes=dst_nodes, src_local=src_local.int(), dst_local=dst_local.int(),
                          kind=tab["kind"].to(torch.int8), span=tab["span"].to(torch.int16)))
    kind = torch.cat([torch.full((g.size,), int(g.kind)) for g in s.node_groups])
    input_index = torch.cat(
        [torch.arange(g.size) + g.input_index_base if g.kind == NodeKind.INPUT else torch.full((g.size,), -1) for g in s.node_groups]
    )
    out = s.node_groups[s.output_group]
    mask = torch.cat([g.slot_mask.expand(g.size, NUM_NODE_SLOTS) for g in s.node_groups])
    nonlin = torch.cat([torch.full((g.size,), a) for g, a in zip(s.node_groups, _group_nonlinearities(s))])
    return _IndexLayout(steps, kind, input_index, torch.arange(out.offset, out.offset + out.size), mask, nonlin)


@dataclass
class _SameStructureStack:
    """m networks of one structure (equal :func:`_signature`): one of them as the reference, and all their
    parameters stacked."""

    reference: EventStream  # one member's stream, read for its structure only (weights: the fields below)
    members: list[int]  # positions in the batch
    edge_weights: list[torch.Tensor | None]  # per edge group: (m, n_dst, n_src, slots) or None
    node_values: torch.Tensor  # (m, n, NUM_NODE_SLOTS)


def _stack_streams(streams: list[EventStream], members: list[int]) -> _SameStructureStack:
    first = streams[0]
    weights = [
        None if g.weight is None else torch.stack([s.edge_groups[i].weight for s in streams])
        for i, g in enumerate(first.edge_groups)
    ]
    values = torch.stack([torch.cat([g.values for g in s.node_groups]) for s in streams])
    return _SameStructureStack(first, members, weights, values)


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _step_weights(stack: _SameStructureStack, t: int, k: int) -> torch.Tensor:
    """(m·E_t, K): each network's edges of step t, network-major, in the reference's edge order."""
    m = len(stack.members)
    blocks = []
    for e in stack.reference.steps[t - 1]:
        g = stack.reference.edge_groups[e]
        w = stack.edge_weights[e]
        if w is None:
            blocks.append(torch.zeros(m, g.num_edges, k))
            continue
        w = w.reshape(m, g.num_edges, g.slots)
        blocks.append(F.pad(w, (0, k - g.slots)) if g.slots < k else w)
    out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
    return out.reshape(-1, k)


def batch_streams(streams: list[EventStream]) -> StreamBatch:
    """Batch event streams of the same or of different architectures into one stream per timestamp."""
    if not streams:
        raise ValueError("batch_streams needs at least one stream")
    by_structure: dict[tuple, list[int]] = {}
    for i, s in enumerate(streams):
        by_structure.setdefault(_signature(s), []).append(i)
    return _assemble([_stack_streams([streams[i] for i in idx], idx) for idx in by_structure.values()], len(streams))


def _assemble(stacks: list[_SameStructureStack], num_graphs: int) -> StreamBatch:
    k = max(stack.reference.num_slots for stack in stacks)
    t_max = max(stack.reference.num_timestamps for stack in stacks)
    per_step: list[dict[str, list]] = [dict() for _ in range(t_max)]
    node_parts = {n: [] for n in ("values", "mask", "kind", "graph", "input", "nonlinearity")}
    out_nodes, out_graph, num_t = [], [], torch.zeros(num_graphs, dtype=torch.long)
    archs = [""] * num_graphs
    offset = 0
    for stack in stacks:
        layout = _index_layout(stack.reference)
        m, n = len(stack.members), stack.reference.num_nodes
        offs = (torch.arange(m) * n + offset).unsqueeze(1)
        graph_ids = torch.tensor(stack.members)
        num_t[graph_ids] = stack.reference.num_timestamps
        for i in stack.members:
            archs[i] = stack.reference.arch
        node_parts["values"].append(stack.node_values.reshape(-1, NUM_NODE_SLOTS))
        node_parts["mask"].append(layout.slot_mask.repeat(m, 1))
        node_parts["kind"].append(layout.kind.repeat(m))
        node_parts["graph"].append(graph_ids.repeat_interleave(n))
        node_parts["input"].append(layout.input_index.repeat(m))
        node_parts["nonlinearity"].append(layout.nonlinearity.repeat(m))
        out_nodes.append((layout.output + offs).reshape(-1))
        out_graph.append(graph_ids.repeat_interleave(layout.output.numel()))
        for t, st in enumerate(layout.steps, start=1):
            acc = per_step[t - 1]
            n_src, n_dst = st["src_nodes"].numel(), st["dst_nodes"].numel()
            # local indices continue where the previous stack left off at this step
            base_s = sum(x.numel() for x in acc.get("src_nodes", []))
            base_d = sum(x.numel() for x in acc.get("dst_nodes", []))
            net = torch.arange(m, dtype=torch.int32).unsqueeze(1)
            add = lambda key, v: acc.setdefault(key, []).append(v)  # noqa: E731
            add("src_nodes", (st["src_nodes"] + offs).reshape(-1))
            add("dst_nodes", (st["dst_nodes"] + offs).reshape(-1))
            add("src_local", (st["src_local"] + (net * n_src + base_s)).reshape(-1))
            add("dst_local", (st["dst_local"] + (net * n_dst + base_d)).reshape(-1))
            add("kind", st["kind"].repeat(m))
            add("span", st["span"].repeat(m))
            add("weight", _step_weights(stack, t, k))
        offset += m * n
    steps = [StepBatch(**{key: _concat(v) for key, v in acc.items()}) for acc in per_step]
    order = torch.argsort(_concat(out_graph), stable=True)
    return StreamBatch(
        num_graphs=num_graphs,
        num_nodes=offset,
        num_slots=k,
        node_values=_concat(node_parts["values"]),
        node_slot_mask=_concat(node_parts["mask"]),
        node_kind=_concat(node_parts["kind"]),
        node_graph=_concat(node_parts["graph"]),
        node_input_index=_concat(node_parts["input"]),
        output_nodes=_concat(out_nodes)[order],
        output_graph=_concat(out_graph)[order],
        num_timestamps=num_t,
        steps=steps,
        archs=archs,
        node_nonlinearity=_concat(node_parts["nonlinearity"]),
    )


def batch_state_dicts(state_dicts: list, progress: bool = False, **convert_kwargs) -> StreamBatch:
    """Convert and batch many state_dicts in one go: the fast path for weight-space datasets.

    State_dicts with the same keys and shapes share one structure, so we convert only the first of each
    kind (with :func:`dng_tgn.to_event_stream` and ``convert_kwargs``), stack every parameter across
    networks, and gather the stacked values into that reference stream's node and edge slots through the
    :class:`ParamRef` indices the converter recorded. Finiteness is checked on the stacked tensors and the
    offending network is named.

    With ``fold_batchnorm=True`` (and ``arch=``), every network's BatchNorm statistics are folded into its
    own stacked Linear/Conv2d parameters, exactly as :func:`dng_tgn.to_event_stream` folds one network.
    """
    from .convert import batchnorm_fold_plan, check_parameter_value, fold_batchnorm_parameters, to_event_stream

    if not state_dicts:
        raise ValueError("batch_state_dicts needs at least one state_dict")
    state_dicts = [
        {k: check_parameter_value(k if len(state_dicts) == 1 else f"#{i}: {k}", v) for k, v in sd.items()} for i, sd in enumerate(state_dicts)
    ]
    plan = []
    if convert_kwargs.get("fold_batchnorm") and convert_kwargs.get("arch") is not None:
        plan = batchnorm_fold_plan(convert_kwargs["arch"])
    kinds: dict[tuple, list[int]] = {}
    for i, sd in enumerate(state_dicts):
        kinds.setdefault(tuple((k, tuple(v.shape)) for k, v in sd.items()), []).append(i)
    stacks = []
    for members in kinds.values():
        keys = list(state_dicts[members[0]])
        stacked = {k: torch.stack([state_dicts[i][k] for i in members]).float() for k in keys}
        for k, v in stacked.items():
            _check_finite(v.reshape(len(members), -1), members, k)
        reference = to_event_stream(state_dicts[members[0]], **convert_kwargs)
        if plan:
            stacked = fold_batchnorm_parameters(stacked, plan, batched=True)
        stacks.append(_stack_parameters(reference, members, stacked))
    return _assemble(stacks, len(state_dicts))


def _check_finite(v: torch.Tensor, members: list[int], key: str) -> None:
    # A per-network sum reads the weights once and writes m numbers; an elementwise isfinite mask would
    # write as many bytes as it reads. Only a non-finite sum (NaN/inf, or an overflow) needs the exact test.
    suspects = (~torch.isfinite(v.sum(dim=1))).nonzero().flatten().tolist()
    for j in suspects:
        if not torch.isfinite(v[j]).all():
            from ..errors import NonFiniteWeightsError

            raise NonFiniteWeightsError(f"state_dict #{members[j]} has NaN or inf in '{key}'")


def _gather(stacked: torch.Tensor, index: torch.Tensor, m: int) -> torch.Tensor:
    flat = stacked.reshape(m, -1)
    idx = index.reshape(-1)
    if idx.numel() == flat.shape[1] and torch.equal(idx, torch.arange(idx.numel())):
        return flat  # the common case (Linear, conv): a view, no copy
    return flat[:, idx]


def _stack_parameters(reference: EventStream, members: list[int], stacked: dict[str, torch.Tensor]) -> _SameStructureStack:
    m = len(members)
    weights = []
    for g in reference.edge_groups:
        if g.weight is None:
            weights.append(None)
            continue
        if len(g.params) != 1:
            raise ValueError(f"edge group '{g.name}' does not record a single source parameter; use batch_streams")
        ref = g.params[0]
        weights.append(_gather(stacked[ref.name], ref.index, m).reshape(m, *g.weight.shape))
    values = torch.zeros(m, reference.num_nodes, NUM_NODE_SLOTS)
    for g in reference.node_groups:
        for ref in g.params:
            values[:, g.offset : g.offset + g.size, ref.slot] = _gather(stacked[ref.name], ref.index, m)
    return _SameStructureStack(reference, members, weights, values)
