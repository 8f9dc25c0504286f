"""The §7 pair: one message/update function pair, run on the static graph and on the dynamic stream.

§7 asks whether an MPNN can reproduce the forward pass of an MLP, ``a_i^l = σ(Σ_j W_ij^l a_j^{l-1} + b_i^l)``
(Eq. 11), from its neural graph. Both models here share everything except *how the graph is processed*:

* the same initial features: input node j carries its input value x_j (lifted), neuron i its bias b_i,
  edge ij its weight W_ij (raw scalar plus RFF, §4.1);
* the same function pair per layer/step, as §7 specifies:
  ``φ_m = MLP₂(concat(source, edge))`` and ``φ_u = MLP₂(concat(aggregate, target))``, with the sum
  aggregation of Eq. 2 / Eq. 10;
* the same linear readout from a node's final embedding to its predicted activation.

:class:`StaticMPNN` is Kofinas et al.'s L-layer MPNN on the static neural graph (§3.2, Eq. 2): every round
updates *every* node from its current state and the union graph's edges, then updates the edges
(``e_ij ← φ_e(e_ij, h_j, h_i)``), so a layer-l node's state after round k mixes terms such as
``W^2 b^1`` that the forward pass never computes (§3.3, Fig. 1, the "inverse problem").

:class:`DynamicMPNN` applies the same pair timestamp by timestamp on the dynamic neural graph (§4.1,
Eq. 3; App. A, Eq. 10): at ``t^l`` the snapshot holds ``v^{l-1}``, ``v^l`` and ``e^l``; the new nodes
``v^l`` are written once, ``s_i(t^l) = φ_u(Σ_j φ_m(s_j(t^{l-1}), e_ij), v_i)``, from their *initial*
feature and the memory of the nodes of the previous step. Edges are not updated (§5: each edge is used at
one timestamp only).

Both models take a :class:`~dng_tgn.graph.batch.StreamBatch` plus one input vector per network, so the
same batches feed both. Their Σ runs on the package's one execution switch (``path=``, an
:class:`~dng_tgn.nn.ExecutionPath` resolved per forward by :func:`~dng_tgn.nn.resolve_path`), so the
comparison is never confounded by the two models aggregating with different kernels.
"""
from __future__ import annotations

import torch
from torch import nn

from ..graph.batch import StreamBatch
from ..graph.events import NodeKind
from ..graph.features import RandomFourierFeatures
from ..nn.paths import ExecutionPath, resolve_path, validate_path
from ..nn.segment import segment_sum
from .ng_gnn import edge_mlp, union_edges

__all__ = ["ScalarEncoder", "PhiPair", "StaticMPNN", "DynamicMPNN", "ActivationFitter", "input_node_values"]


def _mlp2(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """The "two-layer MLP" of §7."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


def input_node_values(batch: StreamBatch, inputs: torch.Tensor) -> torch.Tensor:
    """(N,) the sampled input x_j on input node j of each network, 0 elsewhere.

    ``inputs`` is (B, d^0), row b the input fed to network b of the batch.
    """
    if inputs.dim() != 2 or inputs.shape[0] != batch.num_graphs:
        raise ValueError(f"inputs must be (num_graphs={batch.num_graphs}, d0), got {tuple(inputs.shape)}")
    is_input = batch.node_kind == NodeKind.INPUT
    idx = batch.node_input_index.clamp(min=0)
    if int(idx.max()) >= inputs.shape[1]:
        raise ValueError(f"a network has {int(idx.max()) + 1} inputs but inputs has {inputs.shape[1]} columns")
    return torch.where(is_input, inputs[batch.node_graph, idx], inputs.new_zeros(()))


class ScalarEncoder(nn.Module):
    """(..., K) parameter scalars -> (..., d): Linear(concat_k [x_k, RFF(x_k)]).

    The raw scalar is kept beside its RFF so the product W_ij·x_j of Eq. 1 stays easy to form; K > 1
    slots (convolution kernels, §4.2) are flattened before the projection.
    """

    def __init__(self, dim: int, num_slots: int = 1, rff: RandomFourierFeatures | None = None):
        super().__init__()
        self.rff, self.num_slots = rff, num_slots
        per_slot = 1 + (rff.out_dim if rff is not None else 0)
        self.proj = nn.Linear(num_slots * per_slot, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_slots:
            raise ValueError(f"expected {self.num_slots} slots in the last dimension, got {x.shape[-1]}")
        feats = x.unsqueeze(-1)
        if self.rff is not None:
            feats = torch.cat([feats, self.rff(x)], dim=-1)
        return self.proj(feats.flatten(-2))


class PhiPair(nn.Module):
    """§7's φ_m and φ_u (Eq. 2 / Eq. 10).

    ``φ_m(h_j, e_ij) = MLP₂(concat(h_j, e_ij))`` — source and edge only, as §7 specifies.
    ``φ_u(a_i, h_i) = MLP₂(concat(a_i, h_i))`` with ``a_i = Σ_j φ_m(h_j, e_ij)``.
    """

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.message = _mlp2(2 * dim, hidden, dim)
        self.update = _mlp2(2 * dim, hidden, dim)

    def forward(self, h_src: torch.Tensor, e: torch.Tensor, h_dst: torch.Tensor, src_local: torch.Tensor,
                dst_local: torch.Tensor, path: ExecutionPath) -> torch.Tensor:
        """h_src (S, d) source states, e (E, d), h_dst (D, d) target features -> (D, d) new target states.

        ``path`` is already resolved, once per forward by the caller rather than once per round.
        """
        m = edge_mlp(self.message, [(h_src, src_local), (e, None)])  # = message(cat([h_src[src], e]))
        agg = segment_sum(m, src_local, dst_local, h_src.shape[0], h_dst.shape[0], path)
        return self.update(torch.cat([agg, h_dst], dim=1))


class ActivationFitter(nn.Module):
    """What the static and dynamic models share: initial features, the φ pairs, the readout.

    Args:
        hidden_dim: d, width of node/edge embeddings and of φ's hidden layer.
        num_layers: number of φ pairs; one per MPNN round (static) or per timestamp (dynamic).
        num_slots: K, edge weights per node pair.
        share_weights: one φ pair for all rounds/timestamps instead of ``num_layers`` of them.
        fourier_size, fourier_scale: RFF of the scalars (0 disables RFF; raw scalars only).
        path: :attr:`ExecutionPath.DGL` or :attr:`ExecutionPath.TORCH` forces one implementation of the Σ;
            ``None`` picks DGL wherever its kernels run on the input's device, torch elsewhere (the
            DNG-Encoder's rule, :func:`~dng_tgn.nn.resolve_path`). Both give the same numbers.
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 3, num_slots: int = 1, share_weights: bool = False,
                 fourier_size: int = 16, fourier_scale: float = 3.0, path: ExecutionPath | None = None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        d = hidden_dim
        self.hidden_dim, self.num_layers, self.share_weights = d, num_layers, share_weights
        self.path = validate_path(path)
        rff = RandomFourierFeatures(fourier_size, fourier_scale) if fourier_size > 0 else None
        self.input_enc = ScalarEncoder(d, 1, rff)  # x_j -> v_j(0): "inputs enter as the input nodes' embeddings"
        self.bias_enc = ScalarEncoder(d, 1, rff)  # b_i -> v_i(0)
        self.edge_enc = ScalarEncoder(d, num_slots, rff)  # W_ij -> e_ij(0)
        self.phis = nn.ModuleList(PhiPair(d) for _ in range(1 if share_weights else num_layers))
        self.readout = nn.Linear(d, 1)  # shared: final embedding -> predicted activation

    def phi(self, k: int) -> PhiPair:
        """The pair of round / timestamp k (0-based)."""
        return self.phis[0 if self.share_weights else k]

    def initial_nodes(self, batch: StreamBatch, inputs: torch.Tensor) -> torch.Tensor:
        """v(0): inputs carry x_j, neurons carry b_i (slot 0 of node_values)."""
        x = input_node_values(batch, inputs).unsqueeze(1)
        is_input = (batch.node_kind == NodeKind.INPUT).unsqueeze(1)
        return torch.where(is_input, self.input_enc(x), self.bias_enc(batch.node_values[:, :1]))

    def embed(self, batch: StreamBatch, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: StreamBatch, inputs: torch.Tensor) -> torch.Tensor:
        """(N,) predicted activation of every node (input nodes' entries are meaningless)."""
        return self.readout(self.embed(batch, inputs)).squeeze(1)


class StaticMPNN(ActivationFitter):
    """Kofinas et al.'s L-layer MPNN with edge updates on the static neural graph (§3.2, Eq. 2, §7).

    Round k (k = 1..L), for every node i and edge ij of the union graph at once:
    ``h_i(k) = φ_u^k(Σ_j φ_m^k(h_j(k-1), e_ij(k-1)), h_i(k-1))`` and, between rounds,
    ``e_ij(k) = φ_e^k(e_ij(k-1), h_j(k), h_i(k))``.

    Note: because φ_u sees the target's own state h_i (which can keep its bias code), L forward rounds over
    the DAG can in principle reproduce Eq. 11 exactly: a layer-l node's inputs are final after round l-1, so
    the update "σ(b_i + Σ_j W_ij h_j)" applied at every round is a fixed-point iteration that is exact for
    layer l from round l on. The §3.3 inverse problem is therefore a matter of learnability here, not of
    expressivity; ``experiments/static_vs_dynamic.py`` measures how much it costs.

    Args (beyond :class:`ActivationFitter`):
        edge_updates: Kofinas et al.'s edge update (the last round's is omitted: nothing reads it).
        bidirectional: also pass messages backwards along reversed edges (§7's text and §3.3's analysis have
            messages flow forward only; the §7 task trains both and reports, per layer, the direction with the
            lower static validation MSE, so the baseline is the strongest static model, not the weaker one).
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 3, num_slots: int = 1, share_weights: bool = False,
                 fourier_size: int = 16, fourier_scale: float = 3.0, path: ExecutionPath | None = None,
                 edge_updates: bool = True, bidirectional: bool = False):
        super().__init__(hidden_dim, num_layers, num_slots, share_weights, fourier_size, fourier_scale, path)
        self.bidirectional = bidirectional
        d = hidden_dim
        n_edge = 0 if not edge_updates else (1 if share_weights else num_layers - 1)
        self.edge_updates = nn.ModuleList(_mlp2(3 * d, d, d) for _ in range(n_edge))
        self.reverse_emb = nn.Parameter(torch.zeros(d)) if bidirectional else None

    def embed(self, batch: StreamBatch, inputs: torch.Tensor) -> torch.Tensor:
        path = resolve_path(self.path, batch.node_values.device)
        edges = union_edges(batch, self.bidirectional)
        h = self.initial_nodes(batch, inputs)
        e = self.edge_enc(edges.weight)
        if self.reverse_emb is not None:
            e = e + edges.reverse.unsqueeze(1) * self.reverse_emb
        for k in range(self.num_layers):
            h = self.phi(k)(h, e, h, edges.src, edges.dst, path)
            if self.edge_updates and k < self.num_layers - 1:
                phi_e = self.edge_updates[0 if self.share_weights else k]
                e = edge_mlp(phi_e, [(e, None), (h, edges.src), (h, edges.dst)])  # = phi_e(cat([e, h_j, h_i]))
        return h


class DynamicMPNN(ActivationFitter):
    """The same φ pairs applied timestamp by timestamp on the dynamic neural graph (App. A, Eq. 10).

    At ``t^l`` only the snapshot ``G_{t^l} = ({v^{l-1}, v^l}, e^l)`` is processed:
    ``s_i(t^l) = φ_u^l(Σ_{j} φ_m^l(s_j(t^{l-1}), e_ij), v_i(0))`` for the nodes added at ``t^l``. The
    memory of input nodes is their initial feature (the lifted input value).

    ``num_layers`` must be at least the number of timestamps in the batch (one φ pair per timestamp),
    unless ``share_weights`` is set.
    """

    def embed(self, batch: StreamBatch, inputs: torch.Tensor) -> torch.Tensor:
        path = resolve_path(self.path, batch.node_values.device)
        if not self.share_weights and batch.max_timestamps > self.num_layers:
            raise ValueError(f"the batch has {batch.max_timestamps} timestamps but DynamicMPNN has "
                             f"num_layers={self.num_layers} φ pairs; build it with num_layers >= {batch.max_timestamps}")
        v0 = self.initial_nodes(batch, inputs)
        s = v0
        for t, step in enumerate(batch.steps, start=1):
            e = self.edge_enc(step.weight)
            new = self.phi(t - 1)(s[step.src_nodes], e, v0[step.dst_nodes], step.src_local, step.dst_local, path)
            # out-of-place: earlier states stay in the autograd graph
            s = s.index_copy(0, step.dst_nodes, new)
        return s
