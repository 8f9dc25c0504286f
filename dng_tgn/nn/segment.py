"""Reductions of per-edge messages onto their destination nodes, on either :class:`ExecutionPath`.

The static baselines aggregate over an explicit edge list rather than over one timestamp's
:class:`~dng_tgn.graph.batch.StepBatch`: NG-GNN's PNA aggregation over the union graph (Kofinas et al.,
2024, §3.2) and the Σ of Eq. 2 / Eq. 10 in the §7 static and dynamic MPNNs. Each reduction here has a DGL
branch (fused g-SpMM on a block, no per-node buffers built in Python) and a torch branch
(``index_add``/``scatter_reduce``, which runs on any device), chosen by the same resolved
:class:`ExecutionPath` as the DNG-Encoder's step primitives in :mod:`dng_tgn.nn.paths`, so one switch
governs the whole package. The branches agree up to floating-point summation order.

``src``/``dst`` index sources and destinations separately (``num_src``/``num_dst``), so one function
serves both a union graph (``num_src == num_dst == N``) and a snapshot whose endpoints are numbered per
side.
"""
from __future__ import annotations

import torch

from .._dgl import require_dgl
from .paths import ExecutionPath

__all__ = ["segment_sum", "segment_pna"]


def _block(src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int):
    # a block is DGL's bipartite src -> dst graph, which is what both numbering schemes above need
    dgl = require_dgl()
    return dgl, dgl.create_block((src, dst), num_src_nodes=num_src, num_dst_nodes=num_dst, device=src.device)


def segment_sum(messages: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int,
                path: ExecutionPath) -> torch.Tensor:
    """Σ_{j∈N_i} m_ij, the sum aggregation of Eq. 2 / Eq. 10: (E, ...) edge messages -> (num_dst, ...).

    ``path`` must already be resolved (:func:`~dng_tgn.nn.paths.resolve_path`): deciding per call would
    repeat the device probe for every layer.
    """
    if path is ExecutionPath.DGL:
        dgl, g = _block(src, dst, num_src, num_dst)
        return dgl.ops.copy_e_sum(g, messages)
    if path is ExecutionPath.TORCH:
        # index_add on a fresh tensor is out-of-place, so autograd reaches ``messages``
        return messages.new_zeros((num_dst, *messages.shape[1:])).index_add(0, dst, messages)
    raise TypeError(f"segment_sum needs a resolved ExecutionPath, got {path!r}")


class _Square(torch.autograd.Function):
    """``x * x`` whose backward is one product, ``2x · grad``: ``torch.square``'s backward also materialises
    ``x.pow(1)`` and ``x * x``'s computes two products and adds them, a measurable cost on (E, d) messages."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.mul(x, grad).mul_(2.0)


class _ScatterExtreme(torch.autograd.Function):
    """Per-destination max and min of (E, d) messages (zeros where nothing arrives), with a lean backward.

    Same values and gradients as ``scatter_reduce("amax"/"amin", include_self=False)`` (a tie shares the
    gradient equally among the tied edges), except where an extreme is exactly 0.0: there scatter_reduce's
    backward (torch 2.13) also counts its zero-filled output as a tied element and gives the edges half the
    gradient, while here they get all of it, the true derivative (tests/test_ng_gnn.py checks it by finite
    differences). The backward gathers whole rows (``index_select`` /
    ``index_add``) instead of ``scatter_reduce``'s element-wise 2-D ``gather``/``scatter_add`` of an expanded
    index: on NG-GNN's INR bench batch (71,680 edges, d = 64) max *and* min here cost what ``scatter_reduce``'s
    max alone did (fwd+bwd, about 64 CPU ms each, measured on the 2-core machine).
    """

    @staticmethod
    def forward(ctx, messages: torch.Tensor, dst: torch.Tensor, num_dst: int):
        idx = dst.unsqueeze(1).expand_as(messages)
        zeros = messages.new_zeros(num_dst, messages.shape[1])
        mx = zeros.scatter_reduce(0, idx, messages, reduce="amax", include_self=False)
        mn = zeros.scatter_reduce(0, idx, messages, reduce="amin", include_self=False)
        ctx.save_for_backward(messages, dst, mx, mn)
        return mx, mn

    @staticmethod
    def backward(ctx, grad_mx: torch.Tensor, grad_mn: torch.Tensor):
        messages, dst, mx, mn = ctx.saved_tensors
        grad = None
        for extreme, g in ((mx, grad_mx), (mn, grad_mn)):
            if g is None:
                continue
            hit = (messages == extreme.index_select(0, dst)).to(messages.dtype)  # the edges that gave the extreme
            ties = extreme.new_zeros(extreme.shape).index_add_(0, dst, hit)
            part = hit.mul_((g / ties.clamp(min=1)).index_select(0, dst))
            grad = part if grad is None else grad.add_(part)
        return grad, None, None


def segment_pna(messages: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int,
                path: ExecutionPath, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """PNA's four aggregators (Corso et al., 2020, as NG-GNN uses them): ``(num_dst, 4d)`` = [mean, max, min,
    std] of the (E, d) ``messages``, and the (num_dst,) in-degree that PNA's degree scalers need.

    A node without incoming edges gets zeros on both paths: DGL's max/min would give ∓inf there, which
    would poison the next layer, and the torch branch has no value to reduce at all.

    The means are sums divided by the degree at the nodes (not DGL's ``copy_e_mean``), so their backward is
    a plain gather with no per-edge division, and the squares' backward is a single product (:class:`_Square`):
    per-edge passes are what this costs on NG-GNN's union graphs (benchmarks/ng_gnn_inr_speed.md).
    """
    deg = torch.zeros(num_dst, device=messages.device, dtype=messages.dtype).index_add(
        0, dst, torch.ones_like(dst, dtype=messages.dtype))
    has = (deg > 0).unsqueeze(1)
    denom = deg.clamp(min=1).unsqueeze(1)
    sq_messages = _Square.apply(messages)
    if path is ExecutionPath.DGL:
        dgl, g = _block(src, dst, num_src, num_dst)
        total = dgl.ops.copy_e_sum(g, messages)
        total_sq = dgl.ops.copy_e_sum(g, sq_messages)
        mx = dgl.ops.copy_e_max(g, messages)
        mn = dgl.ops.copy_e_min(g, messages)
    elif path is ExecutionPath.TORCH:
        d = messages.shape[1]
        total = messages.new_zeros(num_dst, d).index_add(0, dst, messages)
        total_sq = messages.new_zeros(num_dst, d).index_add(0, dst, sq_messages)
        mx, mn = _ScatterExtreme.apply(messages, dst, num_dst)
    else:
        raise TypeError(f"segment_pna needs a resolved ExecutionPath, got {path!r}")
    mean, sq = total / denom, total_sq / denom
    zero = messages.new_zeros(())
    mx = torch.where(has, mx, zero)
    mn = torch.where(has, mn, zero)
    # std via E[m²] - E[m]², clamped: the difference of two float sums can dip below zero
    std = torch.sqrt(torch.relu(sq - mean * mean) + eps) * has
    return torch.cat([mean, mx, mn, std], dim=1), deg
