"""The DNG-Encoder's memory (paper §5): per-timestamp messages (Eq. 4 / Eq. 5), a GRU + LayerNorm update (Eq. 6).

Every node ``i`` owns a memory ``s_i``. Input nodes start from learnable vectors (§4.1); every other node is
written exactly once, at the timestamp ``t^l`` where it is a destination:

    s_i(t^l) = LayerNorm(GRU(m_i(t^l), v_i(t^l)))                                    (Eq. 6)

with ``m_i`` the message of Eq. 4 (one edge per node pair) or Eq. 5 (``N`` edges per pair: conv kernels,
flatten). Residual sources and attention Q/K/V nodes simply keep their memory in the bank until a later
timestamp reads it. As the paper argues, there is no message aggregator (a node receives all its messages
at one timestamp) and no embedding module (no memory goes stale), so the memory is the representation.

The building blocks are small modules, composed by :class:`DNGMemory`:
:class:`EdgeFeatures` (``e_ij``), :class:`NodeFeatures` (``v_i``), :class:`InputMemory`,
:class:`MessageFunction` (Eq. 4), :class:`MultiHeadMessage` (Eq. 5), :class:`MemoryUpdater` (Eq. 6).

How the work is kept small (same function, same parameters; tests/test_encoder_speedups.py checks each
against the plain computation):

* An edge's ``W_m1 e_ij`` is a fixed function of one scalar weight; it is evaluated on a Chebyshev basis of
  the weights' range (:func:`~dng_tgn.graph.features.rff_basis`, typically 10-60 columns instead of the
  RFF's 2F = 256), so no (E, K, 2F) feature tensor is built (:meth:`EdgeFeatures.project`).
* Node features use only the slots some node carries, on the same kind of basis, and the GRU's hidden-side
  product ``W_hh v_i`` is folded onto that basis once per forward (:meth:`MemoryUpdater.node_map`; ``W_ih v_i``
  in the authors' argument order, plus one small product per embedding table when Table 6's embeddings are on).
* Eq. 4 with a narrow basis sums ``basis ⊗ u_j`` per destination in one sparse product instead of building
  per-edge (E, d) tensors (:meth:`MessageFunction.message_from_basis`), where that moves less data. A step
  whose node pairs are mostly connected (one network's layers) uses dense per-pair arrays instead of a CSR
  matrix or a DGL block (:meth:`MessageFunction.message_dense_pairs`): for a single SIREN the per-call setup
  of those, not the arithmetic, was what cost (benchmarks/bench_efficiency.py).
* Eq. 5 projects only an edge's live slots (up to its last nonzero weight): the zero edges past them add one
  per-source term. Edges with equal live-slot counts run together, in chunks, and phi_h's second layer runs
  after the sum over neighbours (:meth:`MultiHeadMessage.message_from_weights`). The ResNet-18 stream of
  benchmarks/bench_large_streams.py (1.9 M edges, 49 slots) encodes in a fifth to a third of the per-edge route's
  CPU time (13-22 s vs 63-64 s at head_dim 32) and a ninth of its peak memory (1.1 vs 9.9 GB; benchmarks/large_streams.md).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from ..choices import parse_choice
from ..graph.batch import StepBatch, StreamBatch
from ..graph.events import NUM_NODE_SLOTS, EdgeKind, NodeKind
from ..graph.features import NodeFeaturizer, RandomFourierFeatures, rff_basis, rff_basis_plan, rff_linear
from ..graph.transforms import NONLINEARITIES
from .paths import ExecutionPath, StepOps, step_ops


class EdgeFeatures(nn.Module):
    """``e_ij(t^l)`` for every edge of a step, one feature vector per slot: (E, K) -> (E, K, 2F).

    * WEIGHT edges: the RFF of each slot's weight scalar (§4.1). Slots past an edge group's kernel size
      hold 0, so they become RFF(0): the paper's zero edges (§4.2).
    * RESIDUAL edges: ``theta_res * r`` with one learnable ``theta_res`` and the span ``r`` (App. E.1).
    * ATTN_Q / ATTN_K edges (a ViT's W_Q / W_K scalars, into the score nodes where q_e meets k_e): the RFF of
      the weight times a learnable role vector, so the two projections stay apart (see graph/convert/vit.py).
    * ATTN_V / ATTN_SCORE edges (parameter-free: v_d -> z_d, s_e -> z_d): one learnable vector per role.

    Residual and attention edges are single edges, so their learnable feature sits in slot 0 and the
    remaining slots are zero edges, exactly as a 1x1 kernel is padded in a multi-edge stream.
    """

    def __init__(self, rff: RandomFourierFeatures):
        super().__init__()
        self.rff = rff
        d = rff.out_dim
        # unit-variance entries: the same scale as the sin/cos entries of the RFF they sit beside
        self.theta_res = nn.Parameter(torch.randn(d))
        self.attn_q = nn.Parameter(torch.randn(d))
        self.attn_k = nn.Parameter(torch.randn(d))
        self.attn_v = nn.Parameter(torch.randn(d))
        self.attn_s = nn.Parameter(torch.randn(d))

    @property
    def out_dim(self) -> int:
        return self.rff.out_dim

    def _learned_table(self) -> torch.Tensor:
        """(len(EdgeKind), 2F): the learnable slot-0 feature of each edge kind (WEIGHT's row is unused)."""
        rows = {
            EdgeKind.WEIGHT: torch.zeros_like(self.theta_res),
            EdgeKind.RESIDUAL: self.theta_res,
            EdgeKind.ATTN_Q: torch.zeros_like(self.theta_res),  # weighted: see _role_table
            EdgeKind.ATTN_K: torch.zeros_like(self.theta_res),
            EdgeKind.ATTN_V: self.attn_v,
            EdgeKind.ATTN_SCORE: self.attn_s,
            EdgeKind.GATE: self.attn_v,  # multiplicative and index-paired, like attention's v -> z
        }
        return torch.stack([rows[k] for k in sorted(rows)])

    def _role_table(self) -> torch.Tensor:
        """(len(EdgeKind), 2F): what the slot-0 RFF of a weighted edge is multiplied by (ones but for Q and K)."""
        ones = torch.ones_like(self.theta_res)
        rows = {k: ones for k in EdgeKind}
        rows[EdgeKind.ATTN_Q], rows[EdgeKind.ATTN_K] = self.attn_q, self.attn_k
        return torch.stack([rows[k] for k in sorted(rows)])

    def forward(self, weight: torch.Tensor, kind: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        """(E, K) weights, (E,) EdgeKind, (E,) residual spans -> (E, K, 2F)."""
        kind = kind.long()  # batches store kinds as int8; indexing needs int64
        feats = self.rff(weight)  # learnable-edge rows hold weight 0 -> RFF(0), i.e. zero edges
        is_weight = kind == int(EdgeKind.WEIGHT)
        if bool(is_weight.all()):
            return feats
        scale = torch.where(kind == int(EdgeKind.RESIDUAL), span.to(feats.dtype), torch.ones_like(span, dtype=feats.dtype))
        learned = self._learned_table()[kind] * scale.unsqueeze(-1)
        weighted = is_weight | (kind == int(EdgeKind.ATTN_Q)) | (kind == int(EdgeKind.ATTN_K))
        slot0 = torch.where(weighted.unsqueeze(-1), feats[:, 0] * self._role_table()[kind], learned)
        return torch.cat([slot0.unsqueeze(1), feats[:, 1:]], dim=1)

    def project(self, weight: torch.Tensor, kind: torch.Tensor, span: torch.Tensor, linear: nn.Linear,
                shift: torch.Tensor | None = None, value_range: tuple[float, float] | None = None) -> torch.Tensor:
        """``linear(self(weight, kind, span)) - shift``: (E, K) -> (E, K, out), without the (E, K, 2F) features.

        ``shift`` (out,) is folded into the bias (Eq. 5's route subtracts the zero edge's projection);
        ``value_range`` is the (lo, hi) of a tensor that ``weight`` is a chunk of (see ``rff_basis``).

        Weight slots go through :func:`~dng_tgn.graph.features.rff_linear` (the projection of an RFF is a
        fixed function of one scalar, evaluated on a small Chebyshev basis). Slot 0 of the other kinds:
        ATTN_Q / ATTN_K rows are ``W (RFF(w) ⊙ role) + b = (W diag(role)) RFF(w) + b``, the same basis trick
        with the role folded into the projection; learnable rows are ``W (x_kind · scale) + b =
        (W x_kind) · scale + b``, one small (kinds, out) table. No (R, K, 2F) feature tensor either way.
        """
        kind = kind.long()  # batches store kinds as int8; indexing needs int64
        bias = linear.bias
        if shift is not None:
            bias = -shift if bias is None else bias - shift
        out = rff_linear(self.rff, weight, linear.weight, bias, value_range=value_range)
        is_weight = kind == int(EdgeKind.WEIGHT)
        if bool(is_weight.all()):
            return out
        slot0 = out[:, 0]
        for role_kind, role in ((EdgeKind.ATTN_Q, self.attn_q), (EdgeKind.ATTN_K, self.attn_k)):
            rows = (kind == int(role_kind)).nonzero().squeeze(1)
            if rows.numel():
                proj = rff_linear(self.rff, weight[rows, 0], linear.weight * role.to(linear.weight.dtype), bias,
                                  value_range=value_range)
                slot0 = slot0.index_copy(0, rows, proj.to(out.dtype))
        rows = (~is_weight & (kind != int(EdgeKind.ATTN_Q)) & (kind != int(EdgeKind.ATTN_K))).nonzero().squeeze(1)
        if rows.numel():
            k = kind[rows]
            scale = torch.where(k == int(EdgeKind.RESIDUAL), span[rows].to(out.dtype), torch.ones_like(k, dtype=out.dtype))
            table = nn.functional.linear(self._learned_table().to(linear.weight.dtype), linear.weight)  # (kinds, out)
            learned = table[k] * scale.unsqueeze(-1)
            learned = learned if bias is None else learned + bias
            slot0 = slot0.index_copy(0, rows, learned.to(out.dtype))
        return torch.cat([slot0.unsqueeze(1), out[:, 1:]], dim=1)


class NodeFeatures(nn.Module):
    """``v_i``: the RFF of a node's scalars (bias, LayerNorm parameters; zero where absent), projected to d.

    The projection makes ``v_i`` usable as the GRU's hidden-state argument in Eq. 6.
    """

    def __init__(self, rff: RandomFourierFeatures, memory_dim: int):
        super().__init__()
        self.featurizer = NodeFeaturizer(rff, NUM_NODE_SLOTS)
        self.proj = nn.Linear(self.featurizer.out_dim, memory_dim)

    def factored(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(basis (N, P), mapping (d, P))`` with ``proj(featurizer(values, mask)) = basis @ mapping.T + proj.bias``.

        Only slots that some node carries enter (an absent slot is a zero block of the featurizer's output:
        a SIREN uses one slot of five), each as its :func:`~dng_tgn.graph.features.rff_basis` with rows of
        nodes lacking the slot zeroed, and its block of ``proj`` folded onto that basis. None if no node
        carries any slot. The encoder reuses the factors for the GRU's hidden-side product (see DNGMemory).
        """
        width = self.featurizer.rff.out_dim
        bases, maps = [], []
        for slot in mask.any(0).nonzero().flatten().tolist():
            basis = rff_basis(self.featurizer.rff, values[:, slot])
            bases.append(basis.basis * mask[:, slot : slot + 1].to(basis.basis.dtype))
            maps.append(basis.fold(self.proj.weight[:, slot * width : (slot + 1) * width]))
        if not bases:
            return None
        return torch.cat(bases, dim=1), torch.cat(maps, dim=1)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, slots) scalars and slot mask -> (N, d): ``proj(featurizer(values, mask))``, via :meth:`factored`."""
        factors = self.factored(values, mask)
        if factors is None:
            return self.proj.bias.to(values.dtype).expand(values.shape[0], -1)
        return nn.functional.linear(factors[0], factors[1], self.proj.bias)


class InputMemory(nn.Module):
    """Initial memories of input nodes: a learnable vector per input position (§4.1).

    Inputs are not parameters of the network, so nothing in the stream describes them; position ``k``
    (``node_input_index``) gets the same learnable vector in every network. Input nodes that do carry
    parameters (a ViT's patch LayerNorm) add their projected node features to it.
    """

    def __init__(self, max_inputs: int, memory_dim: int):
        super().__init__()
        self.max_inputs = max_inputs
        self.table = nn.Embedding(max_inputs, memory_dim)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, input_index: torch.Tensor, node_state: torch.Tensor, has_slots: torch.Tensor) -> torch.Tensor:
        if input_index.numel() and int(input_index.max()) >= self.max_inputs:
            raise ValueError(
                f"a network in the batch has {int(input_index.max()) + 1} inputs but the encoder was built "
                f"for max_inputs={self.max_inputs}; build it with a larger max_inputs"
            )
        return self.table(input_index) + torch.where(has_slots.unsqueeze(-1), node_state, torch.zeros_like(node_state))


class MessageFunction(nn.Module):
    """Eq. 4, one edge per node pair: ``m_i = sum_j W_m1 e_ij ⊙ W_m2 s_j(t-)``.

    FiLM-style conditional scaling without the shift and without the target node (§5): the weight only
    scales the source's memory, as a weight scales an activation. ``W_m2`` is applied to the source
    nodes, not to the edges, so the per-edge work is a single product fused with the sum.
    """

    def __init__(self, edge_dim: int, memory_dim: int, message_dim: int):
        super().__init__()
        self.edge_proj = nn.Linear(edge_dim, message_dim)  # W_m1
        self.src_proj = nn.Linear(memory_dim, message_dim)  # W_m2

    def forward(self, ops: StepOps, src_memory: torch.Tensor, edge_feat: torch.Tensor) -> torch.Tensor:
        """(S, d) source memories, (E, 1, 2F) edge features -> (D, message_dim) messages."""
        if edge_feat.shape[1] != 1:
            raise ValueError(f"the single-edge message (Eq. 4) got {edge_feat.shape[1]} edges per node pair")
        return self.message(ops, src_memory, self.edge_proj(edge_feat))

    def message(self, ops: StepOps, src_memory: torch.Tensor, edge_msg: torch.Tensor) -> torch.Tensor:
        """Eq. 4 from the projected edges: (E, 1, message_dim) ``W_m1 e_ij`` (see EdgeFeatures.project)."""
        return ops.u_mul_e_sum(self.src_proj(src_memory), edge_msg.flatten(0, 1))  # a view: no select backward

    def message_dense_pairs(self, step: StepBatch, src_memory: torch.Tensor, edge_msg: torch.Tensor) -> torch.Tensor:
        """:meth:`message` on a mostly complete bipartite step (a single MLP's first layer), either execution path.

        ``m_i = sum_j E_ij ⊙ u_j`` with ``E_ij`` the (D, S, message_dim) array of ``W_m1 e_ij`` (repeated node
        pairs add up, which is the same sum): two plain tensor ops instead of building a DGL block per call.
        """
        num_dst, num_src = step.dst_nodes.numel(), step.src_nodes.numel()
        pair = step.dst_local.long() * num_src + step.src_local.long()
        e = edge_msg.flatten(0, 1)
        pairs = e.new_zeros(num_dst * num_src, e.shape[-1]).index_add(0, pair, e).view(num_dst, num_src, -1)
        return (pairs * self.src_proj(src_memory).unsqueeze(0)).sum(1)

    def message_from_basis(self, step: StepBatch, src_memory: torch.Tensor, basis: torch.Tensor,
                           mapping: torch.Tensor) -> torch.Tensor:
        """Eq. 4 when ``W_m1 e_ij = basis_ij @ mapping.T`` (a (E, P) Chebyshev basis of the weights, bias folded in).

        ``m_ic = sum_j (sum_p B_ijp M_cp) u_jc = sum_p M_cp Y_ipc`` with ``Y_ip = sum_j B_ijp u_j``: one sparse
        (D·P, S) x (S, d) product instead of four passes over per-edge (E, d) tensors (project, gather,
        multiply, scatter). The same multiply-adds (E·P·d); worth it when P is well below the mean in-degree, so
        that (D, P, d) is much smaller than (E, d). See :func:`basis_message_pays`.

        A step whose (D, S) pair matrix is mostly filled (a single MLP's layer is complete bipartite) uses the
        same matrix dense: a plain GEMM is several times faster than the CSR product and its index work there.
        """
        num_dst, num_src = step.dst_nodes.numel(), src_memory.shape[0]
        if _dense_pairs_pay(num_dst, num_src, step.num_edges, basis.shape[1]):
            y = _dense_rows_by_dst(step, basis, num_src).matmul(self.src_proj(src_memory))
        else:
            y = _sparse_rows_by_dst(step, basis, num_src).matmul(self.src_proj(src_memory))
        y = y.view(num_dst, basis.shape[1], -1)  # (D, P, d)
        return (y * mapping.T.contiguous().unsqueeze(0)).sum(1)  # contiguous: a 3x faster broadcast on CPU


SPARSE_BASIS_MESSAGE = True  # switch for benchmarks/tests: False keeps every step on the per-edge route
# Eq. 5 chunk size (MultiHeadMessage.message_from_weights): numbers per per-edge tensor, 2^23 floats = 32 MB. Measured
# on the ResNet-18 stream (benchmarks/bench_large_streams.py, 2 busy cores): 25.9 CPU s against 32.7 s with 2^21,
# at the same peak RSS (1.04 GB); larger chunks also take the Chebyshev basis's recurrence rather than its float64 cos
MESSAGE_CHUNK_ELEMENTS = 1 << 23


def basis_message_pays(step: StepBatch, degree: int, dtype: torch.dtype) -> bool:
    """True when :meth:`MessageFunction.message_from_basis` moves less data than the per-edge route.

    Needs a full-precision dtype (sparse products have no bf16/fp16 kernels on every device; autocast keeps
    the per-edge route) and P at most a third of the mean in-degree.
    """
    if not SPARSE_BASIS_MESSAGE or dtype not in (torch.float32, torch.float64):
        return False
    if not _sparse_products_work(step.src_local.device):
        return False
    if torch.is_autocast_enabled(step.src_local.device.type):
        return False
    # measured on CPU (benchmarks/bench_encoder_speed.py, SIREN hidden layers, in-degree 32): P = 10 runs the
    # step in ~0.4x the per-edge time, P = 22 in ~1.3x; the sparse product's index work wants P <= degree / 3
    return 3 * degree * step.dst_nodes.numel() <= step.num_edges


_SPARSE_PROBED: dict[str, bool] = {}


def _sparse_products_work(device: torch.device) -> bool:
    """Whether CSR x dense products and their backward run on this device type (probed once, on a 1x1 case)."""
    if device.type not in _SPARSE_PROBED:
        try:
            # the probe needs autograd: the first call usually comes from a forward under no_grad/inference_mode,
            # where it would otherwise fail and switch the sparse route off for the whole process
            with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
                warnings.simplefilter("ignore")
                a = torch.sparse_csr_tensor(torch.tensor([0, 1]), torch.tensor([0]), torch.ones(1), (1, 1), device=device)
                b = torch.ones(1, 2, device=device, requires_grad=True)
                a.matmul(b).sum().backward()
            _SPARSE_PROBED[device.type] = bool(b.grad is not None and float(b.grad.sum()) == 2.0)
        except Exception:  # no sparse kernels here: the per-edge route computes the same sums
            _SPARSE_PROBED[device.type] = False
    return _SPARSE_PROBED[device.type]


# dense per-pair layouts (Eq. 4: the (D·P, S) basis rows, or the (D, S, d) projected edges) when at least this
# fraction of the (D, S) node pairs carries an edge and the array stays small: one network's complete bipartite
# layers (or two's), where building a CSR matrix or a DGL block costs more than the dense product; batches of
# more networks stay on the sparse kernels
_DENSE_PAIR_FILL = 0.5
_DENSE_MAX_ELEMENTS = 1 << 22


def _dense_pairs_pay(num_dst: int, num_src: int, num_edges: int, p: int) -> bool:
    pairs = num_dst * num_src
    return pairs * _DENSE_PAIR_FILL <= num_edges and pairs * p <= _DENSE_MAX_ELEMENTS


def _dense_rows_by_dst(step: StepBatch, basis: torch.Tensor, num_src: int) -> torch.Tensor:
    """The matrix of :func:`_sparse_rows_by_dst` as a dense (D·P, S) tensor (repeated node pairs add up)."""
    num_dst, p = step.dst_nodes.numel(), basis.shape[1]
    pair = step.dst_local.long() * num_src + step.src_local.long()
    rows = basis.new_zeros(num_dst * num_src, p).index_add(0, pair, basis)  # (D·S, P): entry (i, j, p)
    return rows.view(num_dst, num_src, p).transpose(1, 2).reshape(num_dst * p, num_src)


def _sparse_rows_by_dst(step: StepBatch, basis: torch.Tensor, num_src: int) -> torch.Tensor:
    """The (D·P, S) CSR matrix with entry ``basis[e, p]`` at row ``dst(e)·P + p``, column ``src(e)``."""
    num_dst, (num_edges, p) = step.dst_nodes.numel(), basis.shape
    dst, src = step.dst_local.long(), step.src_local.long()
    order = torch.argsort(dst, stable=True)
    dst, src, basis = dst[order], src[order], basis[order]
    count = torch.bincount(dst, minlength=num_dst)
    start = torch.cumsum(count, 0) - count
    crow = torch.zeros(num_dst * p + 1, dtype=torch.long, device=dst.device)
    crow[1:] = torch.cumsum(count.repeat_interleave(p), 0)
    # row (i, p) holds node i's edges in order: position start_i·P + p·count_i + (rank of the edge within i)
    rank = torch.arange(num_edges, device=dst.device) - start[dst]
    slot = ((start[dst] * p + rank).unsqueeze(1) + torch.arange(p, device=dst.device) * count[dst].unsqueeze(1)).flatten()
    values = basis.new_empty(num_edges * p).index_copy_(0, slot, basis.flatten())
    cols = src.new_empty(num_edges * p).index_copy_(0, slot, src.unsqueeze(1).expand(num_edges, p).flatten())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, values, (num_dst * p, num_src))


class MultiHeadMessage(nn.Module):
    """Eq. 5, ``N`` edges per node pair: ``m_i = sum_j phi_h(Concat_n(W_m1 e_ij,n ⊙ W_n s_j(t-)))``.

    Head ``n`` lets the source send a distinct message through its ``n``-th edge (one kernel tap, one
    flattened position). ``W_m1`` is shared by the heads; ``W_1..W_N`` are one stacked Linear.
    ``phi_h`` is a two-layer MLP that merges the heads of each node pair before the sum over ``j``.
    """

    def __init__(self, edge_dim: int, memory_dim: int, message_dim: int, message_heads: int, head_dim: int):
        super().__init__()
        self.message_heads, self.head_dim = message_heads, head_dim
        self.edge_proj = nn.Linear(edge_dim, head_dim)  # W_m1
        self.src_proj = nn.Linear(memory_dim, message_heads * head_dim)  # W_1 .. W_N
        self.merge = nn.Sequential(  # phi_h
            nn.Linear(message_heads * head_dim, message_dim), nn.ReLU(), nn.Linear(message_dim, message_dim)
        )

    def forward(self, ops: StepOps, src_memory: torch.Tensor, edge_feat: torch.Tensor) -> torch.Tensor:
        """(S, d) source memories, (E, N, 2F) edge features -> (D, message_dim) messages."""
        if edge_feat.shape[1] != self.message_heads:
            raise ValueError(
                f"the multi-head message (Eq. 5) has {self.message_heads} heads but got {edge_feat.shape[1]} edge slots"
            )
        return self.message(ops, src_memory, self.edge_proj(edge_feat))

    def message(self, ops: StepOps, src_memory: torch.Tensor, edge_msg: torch.Tensor) -> torch.Tensor:
        """Eq. 5 from the projected edges: (E, N, head_dim) ``W_m1 e_ij,n`` (see EdgeFeatures.project)."""
        u = self.src_proj(src_memory).view(-1, self.message_heads, self.head_dim)
        heads = ops.u_mul_e(u, edge_msg)  # (E, N, head_dim)
        return ops.e_sum(self.merge(heads.flatten(1)))

    def message_from_weights(self, ops: StepOps, src_memory: torch.Tensor, weight: torch.Tensor, kind: torch.Tensor,
                             span: torch.Tensor, edge_features: "EdgeFeatures") -> torch.Tensor:
        """Eq. 5 from the raw (E, K) slot weights: :meth:`message` of ``edge_features.project(...)``, computed
        per group of edges with the same number of live slots and in chunks, with no (E, N, ·) tensor.

        With ``A_n`` the n-th (message_dim, head_dim) block of phi_h's first layer, ``u_jn = W_n s_j + b_n``,
        ``e_ijn = W_m1 e_ij,n + b_m1`` and ``c0 = W_m1 RFF(0) + b_m1`` (a zero edge, §4.2), exactly:

            phi_h(Concat_n e_ijn ⊙ u_jn) = W_2 relu(h_ij) + b_2,
            h_ij = z_j + sum_{n < k_ij} A_n ((e_ijn - c0) ⊙ u_jn),   z_j = b_1 + sum_n A_n (c0 ⊙ u_jn),

        where ``k_ij`` is one past the edge's last nonzero slot (at least 1: slot 0 carries the learnable
        feature of residual/attention edges). Slots past ``k_ij`` hold weight 0, i.e. ``e_ijn = c0``, and add
        nothing but the per-source ``z_j``: a 3x3 kernel in a 49-slot stream costs 9 slots, not 49. And since
        ``sum_j`` is linear, ``m_i = W_2 (sum_j relu(h_ij)) + deg_i b_2``: phi_h's second layer runs per node,
        not per edge. Chunks hold about :data:`MESSAGE_CHUNK_ELEMENTS` numbers per per-edge tensor.
        The same sums in another order: equal to :meth:`message` to float32 rounding
        (tests/test_encoder_speedups.py).
        """
        num_heads, hd = self.message_heads, self.head_dim
        if weight.shape[1] > num_heads:
            raise ValueError(f"the multi-head message (Eq. 5) has {num_heads} heads but got {weight.shape[1]} edge slots")
        first, second = self.merge[0], self.merge[2]
        md = first.out_features
        u = self.src_proj(src_memory).view(-1, num_heads, hd)  # (S, N, hd)
        c0 = self.edge_proj(edge_features.rff(weight.new_zeros(1)))[0]  # (hd,) the zero edge's W_m1 e + b
        z = first(u.mul(c0).flatten(1))  # (S, md): b_1 + sum over every slot as if it held a zero edge
        a = first.weight.view(md, num_heads, hd)
        # live slots per edge: 1 + index of the last nonzero weight (a zero inside a kernel stays in; it is exact).
        # Weights that need a gradient keep every slot: d e_ijn / d w at w = 0 is not zero.
        num_edges, slots = weight.shape
        if weight.requires_grad:
            live = torch.full((num_edges,), slots, dtype=torch.int16, device=weight.device)
        else:
            live = (weight != 0).to(torch.int16) * torch.arange(1, slots + 1, dtype=torch.int16, device=weight.device)
            live = live.amax(1).clamp_(min=1)
        counts = torch.bincount(live, minlength=slots + 1).tolist()
        # one Chebyshev range for the step (it holds every chunk's weights): no min/max pass per chunk
        value_range = tuple(float(v) for v in torch.aminmax(weight.detach().to(torch.float32))) if num_edges else None
        total = None
        for k in (k for k in range(1, slots + 1) if counts[k]):
            if counts[k] == num_edges:  # one group (the usual case: one kernel size per step): slices, no gather
                ids, w_k, kind_k, span_k = None, weight[:, :k], kind, span
            else:
                ids = (live == k).nonzero().squeeze(1)
                w_k, kind_k, span_k = weight[:, :k].index_select(0, ids), kind.index_select(0, ids), span.index_select(0, ids)
            u_k = u[:, :k]  # (S, k, hd)
            a_k = a[:, :k].reshape(md, k * hd)
            chunk = max(1, MESSAGE_CHUNK_ELEMENTS // (k * hd + md))
            for start in range(0, counts[k], chunk):
                part = slice(start, start + chunk)
                sub = ops.subset(part if ids is None else ids[part])
                # W_m1 e_ij,n + b_m1 - c0 on the chunk's live slots
                e = edge_features.project(w_k[part], kind_k[part], span_k[part], self.edge_proj, shift=c0,
                                          value_range=value_range)
                h = nn.functional.linear(sub.u_mul_e(u_k, e).flatten(1), a_k)  # (c, md)
                h = sub.u_add_e(z.to(h.dtype), h)  # autocast may have made h bf16
                msg = sub.e_sum(torch.relu(h))
                total = msg if total is None else total + msg
        if total is None:  # a step without edges
            total = z.new_zeros(ops.num_dst, md)
        degree = torch.bincount(ops.dst_local.long(), minlength=ops.num_dst).to(total.dtype).unsqueeze(1)
        out = nn.functional.linear(total, second.weight)
        return out + degree * second.bias if second.bias is not None else out


class UpdateCell(Enum):
    """The recurrent cell of Eq. 6's ``phi_u`` (``encoder.dng.cell``)."""

    GRU = "gru"  # nn.GRUCell: the paper's Eq. 6
    RNN = "rnn"  # nn.RNNCell, h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
    RNN_RELU = "rnn_relu"  # the same with ReLU: the authors' ``rnn_mode=rnn``

    @classmethod
    def parse(cls, value: "str | UpdateCell") -> "UpdateCell":
        return parse_choice(cls, value, "cell")


class CellInput(Enum):
    """Which argument of Eq. 6 is the cell's input; the other is its hidden state (``encoder.dng.gru_input``)."""

    MESSAGE = "message"  # ours: input m_i, hidden v_i (the bias enters where the activation is formed, App. A)
    NODE = "node"  # the authors' order: input v_i (their input_lin(RFF(bias))), hidden m_i

    @classmethod
    def parse(cls, value: "str | CellInput") -> "CellInput":
        return parse_choice(cls, value, "gru_input")


class MemoryUpdater(nn.Module):
    """Eq. 6: ``s_i(t^l) = LayerNorm(GRU(m_i(t^l), v_i(t^l)))``, and the ablations of it.

    By default the message is the GRU's input and the node feature its hidden state: the bias enters where
    an activation is formed, as in ``a = sigma(W a' + b)`` (App. A). Options:

    * ``cell``: :class:`UpdateCell` (GRU, or a plain RNN cell with tanh or ReLU).
    * ``cell_input``: :class:`CellInput`; ``NODE`` swaps the arguments (the authors' code), which makes the
      message the hidden state and so needs ``message_dim == memory_dim``.
    * ``passes``: stacked recurrence (the authors' ``rnn_layer``). Pass ``k > 1`` has its own cell and
      LayerNorm and reads the *same message*; its node-side argument is pass ``k-1``'s output instead of
      ``v_i`` (ours: ``LN_k(cell_k(m_i, s^{k-1}))``; authors' order: ``LN_k(cell_k(s^{k-1}, m_i))``).
      Memory is ``s^{passes}``.
    """

    def __init__(self, message_dim: int, memory_dim: int, cell: UpdateCell | str = UpdateCell.GRU,
                 cell_input: CellInput | str = CellInput.MESSAGE, passes: int = 1):
        super().__init__()
        self.cell_type, self.cell_input = UpdateCell.parse(cell), CellInput.parse(cell_input)
        if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
            raise ValueError(f"rnn_layers (recurrence passes) must be an integer >= 1, got {passes!r}")
        if self.cell_input is CellInput.NODE and message_dim != memory_dim:
            raise ValueError(f"gru_input='node' makes the message the cell's hidden state, so message_dim "
                             f"({message_dim}) must equal memory_dim ({memory_dim})")
        self.passes = passes
        in_dim = message_dim if self.cell_input is CellInput.MESSAGE else memory_dim

        def make() -> nn.Module:
            if self.cell_type is UpdateCell.GRU:
                return nn.GRUCell(in_dim, memory_dim)
            return nn.RNNCell(in_dim, memory_dim, nonlinearity="tanh" if self.cell_type is UpdateCell.RNN else "relu")

        # pass 1 keeps the attribute names of the GRU-only updater, so saved default encoders still load
        setattr(self, "gru" if self.cell_type is UpdateCell.GRU else "rnn", make())
        self.norm = nn.LayerNorm(memory_dim)
        self.stacked = nn.ModuleList(  # passes 2.. (empty by default: no parameters, no state_dict keys)
            nn.ModuleDict({"cell": make(), "norm": nn.LayerNorm(memory_dim)}) for _ in range(passes - 1)
        )

    @property
    def cell(self) -> nn.Module:
        return self.gru if self.cell_type is UpdateCell.GRU else self.rnn

    def _pass(self, cell: nn.Module, norm: nn.Module, message: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        x, h = (message, node) if self.cell_input is CellInput.MESSAGE else (node, message)
        return norm(cell(x, h))

    def _later_passes(self, message: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        for p in self.stacked:
            state = self._pass(p["cell"], p["norm"], message, state)
        return state

    def forward(self, message: torch.Tensor, node_state: torch.Tensor) -> torch.Tensor:
        return self._later_passes(message, self._pass(self.cell, self.norm, message, node_state))

    def node_side(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` of pass 1's product with the node features: (W_hh, b_hh) in the MESSAGE order, else (W_ih, b_ih)."""
        c = self.cell
        return (c.weight_hh, c.bias_hh) if self.cell_input is CellInput.MESSAGE else (c.weight_ih, c.bias_ih)

    def node_map(self, mapping: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass 1's node-side gates ``W v + b_W`` for ``v = basis @ mapping.T + bias``, as a map of ``basis``.

        ``W (basis M^T + b) = basis (W M)^T + W b``: with a P-column basis (P < d) the per-node product
        shrinks from d x 3d to P x 3d; (W M) is formed once per forward and shared by every step that uses
        this updater. ``W`` is the hidden-side weight in the MESSAGE order, the input-side one in NODE order.
        """
        w, b = self.node_side()
        return mapping.to(w.dtype).T.matmul(w.T).T, nn.functional.linear(bias, w, b)

    def from_node_gates(self, message: torch.Tensor, node_gates: torch.Tensor, node_state: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` given ``node_gates`` = :meth:`node_side` applied to ``node_state`` (nn.GRUCell's /
        nn.RNNCell's equations; GRU gate order r, z, n)."""
        c = self.cell
        if self.cell_input is CellInput.MESSAGE:
            gi, gh, hidden = nn.functional.linear(message, c.weight_ih, c.bias_ih), node_gates, node_state
        else:
            gi, gh, hidden = node_gates, nn.functional.linear(message, c.weight_hh, c.bias_hh), message
        if self.cell_type is UpdateCell.GRU:
            i_r, i_z, i_n = gi.chunk(3, dim=1)
            h_r, h_z, h_n = gh.chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            out = n + z * (hidden - n)  # (1 - z) n + z h
        else:
            out = torch.tanh(gi + gh) if self.cell_type is UpdateCell.RNN else torch.relu(gi + gh)
        return self._later_passes(message, self.norm(out))


@dataclass
class MemoryState:
    """What :class:`DNGMemory` returns.

    ``node_memory``: (N, d), every node's memory after the last timestamp, ``s(t^L)``.
    ``trajectory``: (T+1, N, d) when requested: ``trajectory[l]`` is the bank after ``t^l`` (``[0]`` holds
    only the input nodes; a node not yet written is zero).
    """

    node_memory: torch.Tensor
    trajectory: torch.Tensor | None = None


class DNGMemory(nn.Module):
    """The memory of §5 run over a :class:`StreamBatch`, one snapshot graph per timestamp.

    Args:
        memory_dim: d, the size of ``s_i`` (the GRU's hidden size).
        message_dim: size of ``m_i``; defaults to ``memory_dim``.
        message_heads: edges per node pair the message functions expect. 1 selects Eq. 4; ``N > 1`` selects
            Eq. 5 with N heads, and batches with fewer slots are padded with zero edges (§4.2), so a
            network's memory does not depend on what it is batched with.
        head_dim: size of each head in Eq. 5.
        fourier_size, fourier_scale: the RFF of weights and biases (F.1.2: 128 and 3).
        max_timestamps: L, the number of per-timestamp message functions ``phi_m^{t^l}``.
        max_inputs: size of the learnable input-vector table.

    Ablation options (the paper's Tables 4/6 and the authors' code; the defaults are the model above):
        cell: ``"gru"`` (Eq. 6) | ``"rnn"`` (tanh RNN cell) | ``"rnn_relu"`` (the authors' RNN mode); :class:`UpdateCell`.
        gru_input: ``"message"`` (ours: the message is the cell's input, ``v_i`` its hidden state) |
            ``"node"`` (the authors' order: ``v_i`` is the input, the aggregated message the hidden state);
            :class:`CellInput`. Applies to the RNN cells too.
        rnn_layers: recurrence passes per timestamp (the authors' ``rnn_layer``); see :class:`MemoryUpdater`.
        shared_message: one ``phi_m`` for every timestamp instead of Eq. 4/5's ``phi_m^{t^l}``.
        per_timestamp_update: one ``phi_u^{t^l}`` per timestamp (Eq. 6 as written) instead of the single
            ``phi_u`` shared by all timestamps (App. A, Eq. 10; our default).
        positional_embedding: add a learnable embedding of the node's layer (the timestamp that writes it;
            inputs are layer 0) to ``v_i`` (§9.5, Table 6). One vector per layer, so hidden-neuron
            permutation symmetry is kept.
        activation_embedding: add a learnable embedding of the node's non-linearity type
            (``StreamBatch.node_nonlinearity``, see graph/transforms.py ``NONLINEARITIES``) to ``v_i``
            (§9.6, Table 6; Kofinas et al. 2024). Also constant within a layer, so symmetry is kept.
        Input nodes without parameters start from their learnable vectors alone (InputMemory ignores ``v_i``
        there), so the two embeddings reach them only where they carry parameters (a ViT's patch LayerNorm).
    """

    def __init__(
        self,
        memory_dim: int = 128,
        message_dim: int | None = None,
        message_heads: int = 1,
        head_dim: int = 32,
        fourier_size: int = 128,
        fourier_scale: float = 3.0,
        max_timestamps: int = 12,
        max_inputs: int = 256,
        cell: UpdateCell | str = UpdateCell.GRU,
        gru_input: CellInput | str = CellInput.MESSAGE,
        rnn_layers: int = 1,
        shared_message: bool = False,
        per_timestamp_update: bool = False,
        positional_embedding: bool = False,
        activation_embedding: bool = False,
    ):
        super().__init__()
        if message_heads < 1 or max_timestamps < 1 or memory_dim < 1:
            raise ValueError("message_heads, max_timestamps and memory_dim must be positive")
        message_dim = message_dim or memory_dim
        self.memory_dim, self.message_dim = memory_dim, message_dim
        self.message_heads, self.max_timestamps = message_heads, max_timestamps
        rff = RandomFourierFeatures(fourier_size, fourier_scale)
        self.edge_features = EdgeFeatures(rff)
        self.node_features = NodeFeatures(rff, memory_dim)
        self.inputs = InputMemory(max_inputs, memory_dim)

        def message_fn() -> nn.Module:
            if message_heads == 1:
                return MessageFunction(rff.out_dim, memory_dim, message_dim)
            return MultiHeadMessage(rff.out_dim, memory_dim, message_dim, message_heads, head_dim)

        for name, flag in (("shared_message", shared_message), ("per_timestamp_update", per_timestamp_update),
                           ("positional_embedding", positional_embedding), ("activation_embedding", activation_embedding)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.shared_message, self.per_timestamp_update = shared_message, per_timestamp_update
        # phi_m^{t^1..t^L} (Eq. 4/5), or one phi_m for all timestamps
        self.messages = nn.ModuleList(message_fn() for _ in range(1 if shared_message else max_timestamps))

        def updater() -> MemoryUpdater:
            return MemoryUpdater(message_dim, memory_dim, cell, gru_input, rnn_layers)

        if per_timestamp_update:  # phi_u^{t^1..t^L}
            self.updaters = nn.ModuleList(updater() for _ in range(max_timestamps))
        else:  # one phi_u (App. A); the attribute name of the default model is kept for saved encoders
            self.updater = updater()
        # learnable node-feature embeddings (Table 6), added to v_i; rows: layer 0..L / NONLINEARITIES
        self.layer_embedding = nn.Embedding(max_timestamps + 1, memory_dim) if positional_embedding else None
        self.nonlinearity_embedding = nn.Embedding(len(NONLINEARITIES), memory_dim) if activation_embedding else None

    def message_at(self, t: int) -> nn.Module:
        """``phi_m^{t}`` (1-based timestamp)."""
        return self.messages[0 if self.shared_message else t - 1]

    def updater_at(self, t: int) -> MemoryUpdater:
        """``phi_u`` used at timestamp ``t`` (1-based)."""
        return self.updaters[t - 1] if self.per_timestamp_update else self.updater

    def _embedding_parts(self, batch: StreamBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(table (R, d), row of each node (N,)), ...]`` for the node-feature embeddings that are on."""
        parts = []
        if self.layer_embedding is not None:
            parts.append((self.layer_embedding.weight, batch.node_layer()))
        if self.nonlinearity_embedding is not None:
            if batch.node_nonlinearity is None:
                raise ValueError("activation_embedding needs StreamBatch.node_nonlinearity; build the batch with "
                                 "dng_tgn.batch_streams or dng_tgn.batch_state_dicts")
            parts.append((self.nonlinearity_embedding.weight, batch.node_nonlinearity.long()))
        return parts

    def node_embedding(self, batch: StreamBatch) -> torch.Tensor | None:
        """(N, d): the sum of the node-feature embeddings that are on (added to ``v_i``); None if none is."""
        total = None
        for table, rows in self._embedding_parts(batch):
            total = table[rows] if total is None else total + table[rows]
        return total

    def check(self, batch: StreamBatch) -> None:
        if batch.max_timestamps > self.max_timestamps:
            raise ValueError(
                f"the batch has streams with {batch.max_timestamps} timestamps but the encoder has message "
                f"functions for max_timestamps={self.max_timestamps}; build it with a larger max_timestamps"
            )
        if batch.num_slots > self.message_heads:
            kind = "single-edge (Eq. 4)" if self.message_heads == 1 else f"{self.message_heads}-head (Eq. 5)"
            raise ValueError(
                f"the batch has {batch.num_slots} edges per node pair (conv kernels / flatten) but the encoder "
                f"is {kind}; build it with message_heads >= {batch.num_slots}"
            )

    def initial_memory(self, batch: StreamBatch, node_state: torch.Tensor) -> torch.Tensor:
        """``s(t^0)``: learnable vectors on input nodes, zeros elsewhere (written before they are read)."""
        bank = node_state.new_zeros(batch.num_nodes, self.memory_dim)
        is_input = batch.node_kind == int(NodeKind.INPUT)
        ids = is_input.nonzero().squeeze(1)
        init = self.inputs(batch.node_input_index[ids], node_state[ids], batch.node_slot_mask[ids].any(1))
        return bank.index_copy(0, ids, init)

    def _basis_message(self, step, weight: torch.Tensor, message_fn: nn.Module, src_memory: torch.Tensor):
        """Eq. 4 by :meth:`MessageFunction.message_from_basis` where that pays (single weight edges, narrow basis),
        else None. Either execution path: the sparse product is plain torch and gives the same sums."""
        if not isinstance(message_fn, MessageFunction) or weight.shape[1] != 1 or weight.requires_grad:
            return None
        if not bool((step.kind == int(EdgeKind.WEIGHT)).all()):
            return None
        plan = rff_basis_plan(self.edge_features.rff, weight[:, 0])  # decide on P before paying for the fit
        if plan is None or not basis_message_pays(step, plan[0], weight.dtype):
            return None
        basis = rff_basis(self.edge_features.rff, weight[:, 0], value_range=plan[1])
        mapping = basis.fold_with_bias(message_fn.edge_proj.weight, message_fn.edge_proj.bias)
        return message_fn.message_from_basis(step, src_memory, basis.basis, mapping)

    def forward(self, batch: StreamBatch, path: ExecutionPath, return_trajectory: bool = False) -> MemoryState:
        self.check(batch)
        dtype = self.inputs.table.weight.dtype  # batches hold fp32 scalars; follow the encoder's precision
        # v_i for every node, kept factored as basis @ mapping^T + bias (NodeFeatures.factored)
        factors = self.node_features.factored(batch.node_values.to(dtype), batch.node_slot_mask)
        if factors is None:
            node_state = self.node_features.proj.bias.to(dtype).expand(batch.num_nodes, -1)
        else:
            node_state = nn.functional.linear(factors[0], factors[1], self.node_features.proj.bias)
        embeddings = self._embedding_parts(batch)  # Table 6's options; none by default
        for table, rows in embeddings:
            node_state = node_state + table.to(dtype)[rows]
        # Eq. 6's product of pass 1's node-side weight with v_i (W_hh, or W_ih in the authors' order) on the
        # P-column node basis when that is narrower than d; embedding rows go through it table by table
        fold = factors is not None and factors[0].shape[1] < self.memory_dim
        folded: dict[int, tuple] = {}  # id(updater) -> (node map, per-table gates): once per forward and updater
        bank = self.initial_memory(batch, node_state)
        trajectory = [bank] if return_trajectory else None
        for t, step in enumerate(batch.steps, start=1):
            weight = step.weight.to(dtype)
            if weight.shape[1] < self.message_heads:  # zero edges (§4.2) up to the encoder's head count
                weight = nn.functional.pad(weight, (0, self.message_heads - weight.shape[1]))
            message_fn = self.message_at(t)
            src_memory = bank.index_select(0, step.src_nodes)  # s_j(t^l-)
            message = self._basis_message(step, weight, message_fn, src_memory)
            if message is None and isinstance(message_fn, MultiHeadMessage):
                # Eq. 5 per live-slot group and in chunks: no (E, N, head_dim) tensor (see message_from_weights)
                message = message_fn.message_from_weights(step_ops(step, path), src_memory, weight, step.kind, step.span,
                                                          self.edge_features)
            if message is None:
                # W_m1 e_ij, projected without materialising the (E, K, 2F) edge features (EdgeFeatures.project)
                edge_msg = self.edge_features.project(weight, step.kind, step.span, message_fn.edge_proj)
                if isinstance(message_fn, MessageFunction) and _dense_pairs_pay(
                        step.dst_nodes.numel(), step.src_nodes.numel(), step.num_edges, edge_msg.shape[-1]):
                    message = message_fn.message_dense_pairs(step, src_memory, edge_msg)  # no graph to build
                else:
                    message = message_fn.message(step_ops(step, path), src_memory, edge_msg)
            state = node_state.index_select(0, step.dst_nodes)
            updater = self.updater_at(t)
            if not fold:
                new = updater(message, state)
            else:
                if id(updater) not in folded:
                    w_node = updater.node_side()[0]
                    folded[id(updater)] = (updater.node_map(factors[1], self.node_features.proj.bias),
                                           [(nn.functional.linear(table.to(dtype), w_node), rows) for table, rows in embeddings])
                node_map, table_gates = folded[id(updater)]
                gates = nn.functional.linear(factors[0].index_select(0, step.dst_nodes), *node_map)
                for tg, rows in table_gates:
                    gates = gates + tg[rows.index_select(0, step.dst_nodes)]
                new = updater.from_node_gates(message, gates, state)
            # out-of-place write: earlier banks stay intact for autograd and for the trajectory
            bank = bank.index_copy(0, step.dst_nodes, new)
            if trajectory is not None:
                trajectory.append(bank)
        return MemoryState(bank, torch.stack(trajectory) if trajectory is not None else None)
