"""Two interchangeable ways to run one timestamp's message passing: DGL's fused kernels, or plain torch.

The DNG-Encoder needs four primitives per snapshot graph ``G_{t^l}`` (sources -> destinations):

* ``u_mul_e_sum(u, e)``: ``out_i = sum_{j in N_i} u_j * e_ij``: the whole of Eq. 4 once ``u = W_m2 s``
  and ``e = W_m1 e_ij`` are computed, without materialising a per-edge copy of the source memory;
* ``u_mul_e(u, e)``: the per-edge products ``u_j * e_ij``: the heads of Eq. 5, before phi_h mixes them;
* ``e_sum(x)``: ``out_i = sum_{j in N_i} x_ij``: the sum over neighbours in Eq. 5, after phi_h;
* ``u_add_e(u, e)``: ``u_j + e_ij``: Eq. 5's per-source part of phi_h's first layer added to the per-edge part
  (see :meth:`~dng_tgn.nn.memory.MultiHeadMessage.message_from_weights`).

``subset(edge_ids)`` gives the same primitives on a subset of the step's edges (same source and destination
numbering), so that Eq. 5 can run chunk by chunk without a per-edge tensor of the whole step.

:class:`DGLStepOps` maps them onto ``dgl.ops`` (generalised SpMM/SDDMM on a block, which fuse gather,
multiply and reduce into one kernel). :class:`TorchStepOps` does the same with ``index_select`` and
``index_add``, so the encoder also runs where PyPI's DGL has no kernels (CUDA, since that wheel is
CPU-only). Both compute the same sums; only the floating-point summation order may differ.

:class:`ExecutionPath` and :func:`resolve_path` are the one switch between the two for every model in the
package: the DNG-Encoder here, and the static baselines (NG-GNN, the §7 MPNNs), whose edge-list reductions
live in :mod:`dng_tgn.nn.segment` and take the same resolved path. One switch means one default rule
("DGL where its kernels run") and one error for a forced DGL path on a device it cannot use.
"""
from __future__ import annotations

from enum import Enum

import torch

from ..choices import parse_choice
from .._dgl import HAS_DGL, DGL_IMPORT_ERROR, dgl_supports, require_dgl
from ..graph.batch import StepBatch


class ExecutionPath(Enum):
    """Which implementation of the message-passing primitives a model uses (see the module docstring)."""

    DGL = "dgl"
    TORCH = "torch"

    @classmethod
    def parse(cls, value: "str | ExecutionPath | None") -> "ExecutionPath | None":
        """A config value (``None``, ``"dgl"``, ``"torch"``, any case) -> ``path=`` argument.

        Run configs must be JSON, so they carry the name, not the enum; models' ``path=`` stays strict
        (:func:`validate_path`) so that code cannot pass a string or an old ``use_dgl``-style bool by mistake.
        """
        return None if value is None else parse_choice(cls, value, "execution path", also=" or None")


def validate_path(path: ExecutionPath | None) -> ExecutionPath | None:
    """``path`` unchanged if it is a valid ``path=`` argument, else a TypeError that lists the valid ones.

    Models call this in their constructor, so that a typo such as ``path="dgl"`` fails where it is
    written rather than at the first forward pass.
    """
    if path is None or isinstance(path, ExecutionPath):
        return path
    choices = ", ".join(f"ExecutionPath.{p.name}" for p in ExecutionPath)
    raise TypeError(f"path must be one of {choices} or None (pick by device), got {path!r} ({type(path).__name__})")


def resolve_path(path: ExecutionPath | None, device: torch.device | str) -> ExecutionPath:
    """``None`` picks DGL where its kernels run on ``device`` and torch otherwise; a forced path is checked.

    PyPI's DGL has CPU kernels only, so the default must depend on the device; forcing DGL where it cannot
    run is an error rather than a silent fallback, because a caller who forces a path means to test it.
    """
    path = validate_path(path)
    device = torch.device(device)
    if path is None:
        return ExecutionPath.DGL if dgl_supports(device) else ExecutionPath.TORCH
    if path is ExecutionPath.DGL and not dgl_supports(device):
        why = f"DGL is not importable ({DGL_IMPORT_ERROR})" if not HAS_DGL else f"this DGL build has no kernels for {device.type}"
        raise RuntimeError(f"ExecutionPath.DGL was forced but {why}; use ExecutionPath.TORCH or path=None")
    return path


def _covers_all(edge_ids: torch.Tensor | slice, num_edges: int) -> bool:
    """Whether a subset (a slice, or sorted unique ids as callers pass them) is every edge of the step."""
    if isinstance(edge_ids, slice):
        return len(range(*edge_ids.indices(num_edges))) == num_edges
    return edge_ids.numel() == num_edges


class TorchStepOps:
    """The primitives on one step's edge list, with gather + ``index_add`` (autograd-safe, any device)."""

    def __init__(self, step: StepBatch):
        self.src_local = step.src_local
        self.dst_local = step.dst_local
        self.num_dst = step.dst_nodes.numel()

    def subset(self, edge_ids: torch.Tensor | slice) -> "TorchStepOps":
        """The primitives on the edges ``edge_ids`` (ids or a slice) only; source/destination numbering unchanged."""
        if _covers_all(edge_ids, self.src_local.numel()):
            return self
        sub = object.__new__(TorchStepOps)
        sub.src_local, sub.dst_local = self.src_local[edge_ids], self.dst_local[edge_ids]
        sub.num_dst = self.num_dst
        return sub

    def u_mul_e(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return u.index_select(0, self.src_local) * e

    def u_add_e(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return u.index_select(0, self.src_local) + e

    def e_sum(self, x: torch.Tensor) -> torch.Tensor:
        # index_add on a fresh zeros tensor is out-of-place for autograd: it backpropagates into x.
        out = x.new_zeros((self.num_dst, *x.shape[1:]))
        return out.index_add(0, self.dst_local, x)

    def u_mul_e_sum(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.e_sum(self.u_mul_e(u, e))


class DGLStepOps:
    """The primitives as DGL's fused g-SpMM / g-SDDMM kernels on the step's block."""

    def __init__(self, step: StepBatch):
        self.dgl = require_dgl()
        self.src_local, self.dst_local = step.src_local, step.dst_local
        self.num_src, self.num_dst = step.src_nodes.numel(), step.dst_nodes.numel()
        self.block = step.to_block()

    def subset(self, edge_ids: torch.Tensor | slice) -> "DGLStepOps":
        """The primitives on the edges ``edge_ids`` only: a block of those edges over the step's node lists."""
        if _covers_all(edge_ids, self.src_local.numel()):
            return self
        sub = object.__new__(DGLStepOps)
        sub.dgl, sub.num_src, sub.num_dst = self.dgl, self.num_src, self.num_dst
        sub.src_local, sub.dst_local = self.src_local[edge_ids], self.dst_local[edge_ids]
        sub.block = self.dgl.create_block((sub.src_local, sub.dst_local), num_src_nodes=self.num_src,
                                          num_dst_nodes=self.num_dst, idtype=torch.int32, device=sub.src_local.device)
        return sub

    def u_mul_e(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.dgl.ops.u_mul_e(self.block, u, e)

    def u_add_e(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.dgl.ops.u_add_e(self.block, u, e)

    def e_sum(self, x: torch.Tensor) -> torch.Tensor:
        return self.dgl.ops.copy_e_sum(self.block, x)

    def u_mul_e_sum(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.dgl.ops.u_mul_e_sum(self.block, u, e)


StepOps = TorchStepOps | DGLStepOps

_OPS = {ExecutionPath.TORCH: TorchStepOps, ExecutionPath.DGL: DGLStepOps}


def step_ops(step: StepBatch, path: ExecutionPath) -> StepOps:
    """The primitives for ``step`` on a resolved ``path``."""
    return _OPS[path](step)
