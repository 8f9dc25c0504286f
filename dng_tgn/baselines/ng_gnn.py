"""NG-GNN: the static neural-graph baseline of Kofinas et al. (2024), on dng_tgn's :class:`StreamBatch`.

The whole network is one *static* graph (paper §3.1): every node of every layer and the union of all
timestamps' edges, processed at once by an L-layer message-passing network with edge updates (§3.2,
Eq. 2). This is the "NG-GNN" row of Tables 1, 3 and 5, and the baseline of later tasks.

What makes it Kofinas et al.'s encoder rather than a plain MPNN:

* **Initial features** are Random Fourier Features of the parameters (§3.1, §4.1, F.1.2): each node's
  scalar slots (bias, and LayerNorm parameters for transformers) and each edge's K weight slots become RFF
  blocks that are flattened and projected (K > 1 for convolutions, §4.2).
* **Positional embeddings.** A static graph loses the layer order the dynamic graph keeps in its
  timestamps (§2, §3.3), so each node gets a learned embedding of its *layer index* (the timestamp that
  computes it; inputs are layer 0). Input and output neurons are not permutable, so they additionally
  get identity embeddings (their position among the inputs / outputs), as in Kofinas et al. Hidden
  neurons of a layer share one embedding, which keeps the model invariant to hidden-neuron permutations
  (App. B, Eq. 13).
* **PNA aggregation.** Messages are aggregated with mean, max, min and standard deviation, each scaled
  by the identity, amplification ``log(d+1)/δ`` and attenuation ``δ/log(d+1)`` degree scalers.
* **Edge updates** after every node update, ``e_ij ← e_ij + φ_e(e_ij, h_i, h_j)``.
* **Both directions.** By default a reversed copy of every edge (with a direction embedding) is added, so
  information also flows from later layers to earlier ones and the graph readout sees the whole network.

The aggregation runs on the package's one execution switch, ``path=`` (:class:`~dng_tgn.nn.ExecutionPath`,
resolved by :func:`~dng_tgn.nn.resolve_path` exactly as for the DNG-Encoder), through the edge-list
reductions of :mod:`dng_tgn.nn.segment`: DGL's fused kernels where they run on the device, else
``index_add``/``scatter_reduce``. The two agree to float tolerance, so the baseline and the DNG-Encoder can be
timed on the same path; the tests compare them. The first Linear of φ_m and φ_e is applied block by block
(:func:`edge_mlp`: node blocks once per node, then gathered), never to a per-edge concatenation: the same
function at a fraction of the per-edge work (benchmarks/ng_gnn_inr_speed.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..graph.batch import StreamBatch
from ..graph.events import NUM_NODE_SLOTS, EdgeKind, NodeKind
from ..graph.features import NodeFeaturizer, RandomFourierFeatures
from ..nn.paths import ExecutionPath, resolve_path, validate_path
from ..nn.segment import segment_pna

__all__ = [
    "NGGNN", "NGGNNOutput", "PNAEdgeLayer", "EdgeList", "union_edges", "node_layer_index", "output_position",
]


# ----------------------------------------------------------------------------------------------------------
# The static graph of a StreamBatch
# ----------------------------------------------------------------------------------------------------------
@dataclass
class EdgeList:
    """The static (union) graph: every timestamp's edges at once, with global node ids."""

    src: torch.Tensor  # (E,)
    dst: torch.Tensor  # (E,)
    weight: torch.Tensor  # (E, K)
    kind: torch.Tensor  # (E,) EdgeKind
    span: torch.Tensor  # (E,)
    reverse: torch.Tensor  # (E,) bool, True for the added reversed copies

    @property
    def num_edges(self) -> int:
        return self.src.numel()


def union_edges(batch: StreamBatch, bidirectional: bool = False) -> EdgeList:
    """Kofinas et al.'s neural graph: the union of all steps' edges (a static graph, §3.1)."""
    src = torch.cat([s.src for s in batch.steps])
    dst = torch.cat([s.dst for s in batch.steps])
    weight = torch.cat([s.weight for s in batch.steps])
    kind = torch.cat([s.kind for s in batch.steps])
    span = torch.cat([s.span for s in batch.steps])
    reverse = torch.zeros_like(src, dtype=torch.bool)
    if bidirectional:
        src, dst = torch.cat([src, dst]), torch.cat([dst, src])
        weight, kind, span = weight.repeat(2, 1), kind.repeat(2), span.repeat(2)
        reverse = torch.cat([reverse, torch.ones_like(reverse)])
    return EdgeList(src, dst, weight, kind, span, reverse)


def node_layer_index(batch: StreamBatch) -> torch.Tensor:
    """(N,) the timestamp t^l that computes each node (its layer l); input nodes are layer 0.

    This is the positional information a static graph has to be told explicitly (§2, §9.5).
    """
    layer = torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.node_kind.device)
    for t, step in enumerate(batch.steps, start=1):
        layer[step.dst_nodes] = t
    return layer


def output_position(batch: StreamBatch) -> torch.Tensor:
    """(N,) position of each node among its network's outputs, -1 for non-output nodes."""
    pos = torch.full((batch.num_nodes,), -1, dtype=torch.long, device=batch.node_kind.device)
    if batch.output_nodes.numel():
        # output_nodes is sorted by network and in network order, so the rank within a network is the
        # running index minus the network's first output index.
        sizes = batch.output_sizes()
        first = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(batch.output_nodes.numel(), device=pos.device) - first[batch.output_graph]
        pos[batch.output_nodes] = rank
    return pos


# ----------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------
def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


def edge_mlp(mlp: nn.Sequential, parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """``mlp(cat([x if index is None else x[index] for x, index in parts], 1))`` for a :func:`_mlp`, without the
    per-edge concatenation.

    The first Linear of φ_m / φ_e is linear in each concatenated block, so ``W [h_i, h_j, e_ij] + b =
    (h W_i^T)[i] + (h W_j^T)[j] + e_ij W_e^T + b``: node blocks (``index`` given) are projected once per *node*
    and the d-wide results gathered onto the edges, instead of gathering d-wide node states and multiplying a
    3d-wide edge matrix. On a union graph with E ≫ N this removes two thirds of the first layer's per-edge
    multiply-adds, the (E, 3d) concatenation and its backward. Same parameters, same function up to float
    summation order (tests/test_ng_gnn.py compares it with the concatenating formula).
    """
    first = mlp[0]
    if not isinstance(first, nn.Linear):
        raise TypeError(f"edge_mlp needs an MLP that starts with nn.Linear, got {type(first).__name__}")
    widths = [x.shape[1] for x, _ in parts]
    if sum(widths) != first.in_features:
        raise ValueError(f"edge_mlp: blocks of widths {widths} (sum {sum(widths)}) do not match the first Linear's "
                         f"{first.in_features} inputs")
    starts = [sum(widths[:k]) for k in range(len(parts))]
    # edge blocks first, so the bias rides on their matrix product and the gathered node terms add in place
    order = sorted(range(len(parts)), key=lambda k: parts[k][1] is not None)
    out = None
    for k in order:
        x, index = parts[k]
        w = first.weight[:, starts[k]:starts[k] + widths[k]]
        y = nn.functional.linear(x, w, first.bias if out is None else None)
        if index is not None:
            # index_select, not y[index]: its backward is an index_add, cheaper on CPU than indexing's index_put
            y = y.index_select(0, index)
        out = y if out is None else out.add_(y)  # out is a fresh tensor no backward needs: safe to add into
    for layer in list(mlp)[1:]:
        out = layer(out)
    return out


class PNAEdgeLayer(nn.Module):
    """One NG-GNN layer: PNA node update (Eq. 2 with PNA aggregation) followed by an edge update.

    m_ij = φ_m(h_i, h_j, e_ij);  h_i ← LN(h_i + φ_u(h_i, scalers ⊗ [mean, max, min, std]_j m_ij));
    e_ij ← LN(e_ij + φ_e(e_ij, h_i, h_j)).
    """

    NUM_AGGREGATORS = 4
    NUM_SCALERS = 3

    def __init__(self, dim: int, edge_update: bool = True, dropout: float = 0.0):
        super().__init__()
        self.message = _mlp(3 * dim, dim, dim)
        self.update = _mlp(dim + self.NUM_AGGREGATORS * self.NUM_SCALERS * dim, dim, dim)
        self.node_norm = nn.LayerNorm(dim)
        self.edge_update = _mlp(3 * dim, dim, dim) if edge_update else None
        self.edge_norm = nn.LayerNorm(dim) if edge_update else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, e: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, path: ExecutionPath,
                avg_log_degree: torch.Tensor):
        """``path`` is already resolved: the model resolves it once per forward, not once per layer."""
        n = h.shape[0]
        m = edge_mlp(self.message, [(h, dst), (h, src), (e, None)])  # φ_m(h_i, h_j, e_ij), Eq. 2
        agg, deg = segment_pna(m, src, dst, n, n, path)
        # PNA degree scalers: identity, amplification log(d+1)/δ, attenuation δ/log(d+1)
        logd = torch.log(deg + 1).unsqueeze(1)
        delta = avg_log_degree.clamp(min=1e-3)
        amp = logd / delta
        att = torch.where(logd > 0, delta / logd.clamp(min=1e-6), torch.zeros_like(logd))
        scaled = torch.cat([agg, agg * amp, agg * att], dim=1)
        h = self.node_norm(h + self.dropout(self.update(torch.cat([h, scaled], dim=1))))
        if self.edge_update is not None:
            e = self.edge_norm(e + self.dropout(edge_mlp(self.edge_update, [(e, None), (h, dst), (h, src)])))
        return h, e


@dataclass
class NGGNNOutput:
    node: torch.Tensor  # (N, d) final node embeddings, in StreamBatch node order
    edge: torch.Tensor  # (E, d) final edge embeddings, in EdgeList order
    graph: torch.Tensor  # (B, out_dim) per-network readout
    edges: EdgeList


class NGGNN(nn.Module):
    """NG-GNN encoder (Kofinas et al., 2024) over the static union graph of a :class:`StreamBatch`.

    Args:
        hidden_dim: node/edge embedding width d.
        num_layers: message-passing layers.
        out_dim: width of the per-network readout ``output.graph``.
        num_slots: K, edge weights per node pair (1 for MLPs, kernel size for CNNs, §4.2). Batches with
            fewer slots are zero-padded; batches with more raise.
        fourier_size, fourier_scale: RFF of the initial features (F.1.2: 128 and 3).
        max_layers, max_inputs, max_outputs: sizes of the positional/identity embedding tables. Indices
            beyond them raise, so a silent clamp never maps two positions to one embedding.
        bidirectional: also pass messages from later layers to earlier ones (reversed edge copies). Off by
            default, as in Kofinas et al.'s published INR-classification and CNN-generalisation configs
            (``rev_edge_features: False``): messages follow the forward pass.
        edge_updates: Kofinas et al.'s edge update after every layer.
        avg_log_degree: δ of the PNA scalers; set it from training data with :meth:`fit_degree_scaler`.
        path: :attr:`ExecutionPath.DGL` or :attr:`ExecutionPath.TORCH` forces one implementation of the
            aggregation; ``None`` picks DGL wherever its kernels run on the input's device, torch elsewhere
            (the DNG-Encoder's rule, :func:`~dng_tgn.nn.resolve_path`). Both give the same numbers.
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 4, out_dim: int = 64, num_slots: int = 1,
                 fourier_size: int = 32, fourier_scale: float = 3.0, max_layers: int = 64, max_inputs: int = 64,
                 max_outputs: int = 64, bidirectional: bool = False, edge_updates: bool = True,
                 avg_log_degree: float = 2.0, dropout: float = 0.0, path: ExecutionPath | None = None,
                 rff_seed: int = 0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        d = hidden_dim
        self.hidden_dim, self.num_layers, self.num_slots = d, num_layers, num_slots
        self.bidirectional, self.path = bidirectional, validate_path(path)
        self.max_layers, self.max_inputs, self.max_outputs = max_layers, max_inputs, max_outputs
        self.rff = RandomFourierFeatures(fourier_size, fourier_scale, seed=rff_seed)
        self.node_features = NodeFeaturizer(self.rff, NUM_NODE_SLOTS)
        self.node_proj = nn.Linear(self.node_features.out_dim, d)
        self.edge_proj = nn.Linear(num_slots * self.rff.out_dim, d)
        self.layer_emb = nn.Embedding(max_layers, d)
        # index 0 of the identity tables means "not an input/output": a hidden neuron adds nothing position-specific
        self.input_emb = nn.Embedding(max_inputs + 1, d)
        self.output_emb = nn.Embedding(max_outputs + 1, d)
        self.node_kind_emb = nn.Embedding(len(NodeKind), d)
        self.edge_kind_emb = nn.Embedding(len(EdgeKind), d)
        self.direction_emb = nn.Embedding(2, d)
        self.residual_span = nn.Parameter(torch.randn(d) * 0.1)  # θ_res·r of App. E.1
        self.register_buffer("avg_log_degree", torch.tensor(float(avg_log_degree)))
        self.layers = nn.ModuleList(
            PNAEdgeLayer(d, edge_update=edge_updates and i < num_layers - 1, dropout=dropout)
            for i in range(num_layers)
        )
        self.readout = _mlp(2 * d, d, out_dim)

    # -- inputs -----------------------------------------------------------------------------------------
    def _check(self, batch: StreamBatch, layer: torch.Tensor, out_pos: torch.Tensor) -> None:
        if batch.num_slots > self.num_slots:
            raise ValueError(f"batch has K={batch.num_slots} edge slots but NGGNN was built with num_slots={self.num_slots}")
        if int(layer.max()) >= self.max_layers:
            raise ValueError(f"a network has {int(layer.max())} layers; NGGNN(max_layers={self.max_layers}) is too small")
        if int(batch.node_input_index.max()) >= self.max_inputs:
            raise ValueError(f"a network has {int(batch.node_input_index.max()) + 1} inputs > max_inputs={self.max_inputs}")
        if int(out_pos.max()) >= self.max_outputs:
            raise ValueError(f"a network has {int(out_pos.max()) + 1} outputs > max_outputs={self.max_outputs}")

    def initial_features(self, batch: StreamBatch, edges: EdgeList) -> tuple[torch.Tensor, torch.Tensor]:
        """h(0), e(0): RFF of the parameters plus positional, identity and kind embeddings."""
        layer, out_pos = node_layer_index(batch), output_position(batch)
        self._check(batch, layer, out_pos)
        h = self.node_proj(self.node_features(batch.node_values, batch.node_slot_mask))
        h = h + self.layer_emb(layer) + self.node_kind_emb(batch.node_kind.long())
        h = h + self.input_emb(batch.node_input_index.long() + 1) + self.output_emb(out_pos + 1)
        w = edges.weight
        if w.shape[1] < self.num_slots:
            w = nn.functional.pad(w, (0, self.num_slots - w.shape[1]))
        e = self.edge_proj(self.rff(w).flatten(1))  # K slot RFF blocks, flattened (§4.2)
        e = e + self.edge_kind_emb(edges.kind.long()) + self.direction_emb(edges.reverse.long())
        e = e + (edges.kind == EdgeKind.RESIDUAL).unsqueeze(1) * edges.span.unsqueeze(1) * self.residual_span
        return h, e

    @torch.no_grad()
    def fit_degree_scaler(self, batches) -> float:
        """Set δ = mean log(in-degree + 1) over the nodes of ``batches`` (PNA's training-set statistic)."""
        total, count = 0.0, 0
        for b in batches:
            edges = union_edges(b, self.bidirectional)
            deg = torch.bincount(edges.dst, minlength=b.num_nodes).float()
            total += float(torch.log(deg + 1).sum())
            count += b.num_nodes
        value = total / max(count, 1)
        self.avg_log_degree.fill_(value)
        return value

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, batch: StreamBatch) -> NGGNNOutput:
        device = batch.node_values.device
        path = resolve_path(self.path, device)
        edges = union_edges(batch, self.bidirectional)
        h, e = self.initial_features(batch, edges)
        for layer in self.layers:
            h, e = layer(h, e, edges.src, edges.dst, path, self.avg_log_degree)
        # graph readout: mean and max over each network's nodes (both permutation invariant)
        b = batch.num_graphs
        counts = torch.bincount(batch.node_graph, minlength=b).clamp(min=1).unsqueeze(1).to(h.dtype)
        mean = h.new_zeros(b, h.shape[1]).index_add(0, batch.node_graph, h) / counts
        idx = batch.node_graph.unsqueeze(1).expand_as(h)
        mx = h.new_full((b, h.shape[1]), -math.inf).scatter_reduce(0, idx, h, reduce="amax", include_self=True)
        graph = self.readout(torch.cat([mean, mx], dim=1))
        return NGGNNOutput(node=h, edge=e, graph=graph, edges=edges)
