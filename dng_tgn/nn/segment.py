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


def segment_pna(messages: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int,
                path: ExecutionPath, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """PNA's four aggregators (Corso et al., 2020, as NG-GNN uses them): ``(num_dst, 4d)`` = [mean, max, min,
    std] of the (E, d) ``messages``, and the (num_dst,) in-degree that PNA's degree scalers need.

    A node without incoming edges gets zeros on both paths: DGL's max/min would give ∓inf there, which
    would poison the next layer, and the torch branch has no value to reduce at all.
    """
    deg = torch.zeros(num_dst, device=messages.device, dtype=messages.dtype).index_add(
        0, dst, torch.ones_like(dst, dtype=messages.dtype))
    has = (deg > 0).unsqueeze(1)
    if path is ExecutionPath.DGL:
        dgl, g = _block(src, dst, num_src, num_dst)
        mean = dgl.ops.copy_e_mean(g, messages)
        sq = dgl.ops.copy_e_mean(g, messages * messages)
        mx = dgl.ops.copy_e_max(g, messages)
        mn = dgl.ops.copy_e_min(g, messages)
    elif path is ExecutionPath.TORCH:
        d = messages.shape[1]
        denom = deg.clamp(min=1).unsqueeze(1)
        mean = messages.new_zeros(num_dst, d).index_add(0, dst, messages) / denom
        sq = messages.new_zeros(num_dst, d).index_add(0, dst, messages * messages) / denom
        idx = dst.unsqueeze(1).expand_as(messages)
        mx = messages.new_zeros(num_dst, d).scatter_reduce(0, idx, messages, reduce="amax", include_self=False)
        mn = messages.new_zeros(num_dst, d).scatter_reduce(0, idx, messages, reduce="amin", include_self=False)
    else:
        raise TypeError(f"segment_pna needs a resolved ExecutionPath, got {path!r}")
    zero = messages.new_zeros(())
    mx = torch.where(has, mx, zero)
    mn = torch.where(has, mn, zero)
    # std via E[m²] - E[m]², clamped: the difference of two float sums can dip below zero
    std = torch.sqrt(torch.relu(sq - mean * mean) + eps) * has
    return torch.cat([mean, mx, mn, std], dim=1), deg
