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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..graph.batch import StreamBatch
from ..graph.events import NUM_NODE_SLOTS, EdgeKind, NodeKind
from ..graph.features import NodeFeaturizer, RandomFourierFeatures
from .paths import ExecutionPath, StepOps, step_ops


class EdgeFeatures(nn.Module):
    """``e_ij(t^l)`` for every edge of a step, one feature vector per slot: (E, K) -> (E, K, 2F).

    * WEIGHT edges: the RFF of each slot's weight scalar (§4.1). Slots past an edge group's kernel size
      hold 0, so they become RFF(0): the paper's zero edges (§4.2).
    * RESIDUAL edges: ``theta_res * r`` with one learnable ``theta_res`` and the span ``r`` (App. E.1).
    * ATTN_Q / ATTN_K / ATTN_V edges: one learnable vector per role (App. E.2).

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

    @property
    def out_dim(self) -> int:
        return self.rff.out_dim

    def _learned_table(self) -> torch.Tensor:
        """(len(EdgeKind), 2F): the learnable slot-0 feature of each edge kind (WEIGHT's row is unused)."""
        rows = {
            EdgeKind.WEIGHT: torch.zeros_like(self.theta_res),
            EdgeKind.RESIDUAL: self.theta_res,
            EdgeKind.ATTN_Q: self.attn_q,
            EdgeKind.ATTN_K: self.attn_k,
            EdgeKind.ATTN_V: self.attn_v,
        }
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
        slot0 = torch.where(is_weight.unsqueeze(-1), feats[:, 0], learned)
        return torch.cat([slot0.unsqueeze(1), feats[:, 1:]], dim=1)


class NodeFeatures(nn.Module):
    """``v_i``: the RFF of a node's scalars (bias, LayerNorm parameters; zero where absent), projected to d.

    The projection makes ``v_i`` usable as the GRU's hidden-state argument in Eq. 6.
    """

    def __init__(self, rff: RandomFourierFeatures, memory_dim: int):
        super().__init__()
        self.featurizer = NodeFeaturizer(rff, NUM_NODE_SLOTS)
        self.proj = nn.Linear(self.featurizer.out_dim, memory_dim)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.featurizer(values, mask))


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
        return ops.u_mul_e_sum(self.src_proj(src_memory), self.edge_proj(edge_feat[:, 0]))


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
        u = self.src_proj(src_memory).view(-1, self.message_heads, self.head_dim)
        heads = ops.u_mul_e(u, self.edge_proj(edge_feat))  # (E, N, head_dim)
        return ops.e_sum(self.merge(heads.flatten(1)))


class MemoryUpdater(nn.Module):
    """Eq. 6: ``s_i(t^l) = LayerNorm(GRU(m_i(t^l), v_i(t^l)))``.

    The message is the GRU's input and the node feature its hidden state: the bias enters where an
    activation is formed, as in ``a = sigma(W a' + b)`` (App. A). Shared by all timestamps (App. A, Eq. 10).
    """

    def __init__(self, message_dim: int, memory_dim: int):
        super().__init__()
        self.gru = nn.GRUCell(message_dim, memory_dim)
        self.norm = nn.LayerNorm(memory_dim)

    def forward(self, message: torch.Tensor, node_state: torch.Tensor) -> torch.Tensor:
        return self.norm(self.gru(message, node_state))


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

        self.messages = nn.ModuleList(message_fn() for _ in range(max_timestamps))  # phi_m^{t^1..t^L}
        self.updater = MemoryUpdater(message_dim, memory_dim)

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

    def forward(self, batch: StreamBatch, path: ExecutionPath, return_trajectory: bool = False) -> MemoryState:
        self.check(batch)
        dtype = self.inputs.table.weight.dtype  # batches hold fp32 scalars; follow the encoder's precision
        node_state = self.node_features(batch.node_values.to(dtype), batch.node_slot_mask)  # v_i for every node
        bank = self.initial_memory(batch, node_state)
        trajectory = [bank] if return_trajectory else None
        for t, step in enumerate(batch.steps, start=1):
            ops = step_ops(step, path)
            weight = step.weight.to(dtype)
            if weight.shape[1] < self.message_heads:  # zero edges (§4.2) up to the encoder's head count
                weight = nn.functional.pad(weight, (0, self.message_heads - weight.shape[1]))
            edge_feat = self.edge_features(weight, step.kind, step.span)
            src_memory = bank.index_select(0, step.src_nodes)  # s_j(t^l-)
            message = self.messages[t - 1](ops, src_memory, edge_feat)
            new = self.updater(message, node_state.index_select(0, step.dst_nodes))
            # out-of-place write: earlier banks stay intact for autograd and for the trajectory
            bank = bank.index_copy(0, step.dst_nodes, new)
            if trajectory is not None:
                trajectory.append(bank)
        return MemoryState(bank, torch.stack(trajectory) if trajectory is not None else None)
