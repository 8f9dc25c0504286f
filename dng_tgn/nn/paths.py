"""Two interchangeable ways to run one timestamp's message passing: DGL's fused kernels, or plain torch.

The DNG-Encoder needs three primitives per snapshot graph ``G_{t^l}`` (sources -> destinations):

* ``u_mul_e_sum(u, e)``: ``out_i = sum_{j in N_i} u_j * e_ij``: the whole of Eq. 4 once ``u = W_m2 s``
  and ``e = W_m1 e_ij`` are computed, without materialising a per-edge copy of the source memory;
* ``u_mul_e(u, e)``: the per-edge products ``u_j * e_ij``: the heads of Eq. 5, before phi_h mixes them;
* ``e_sum(x)``: ``out_i = sum_{j in N_i} x_ij``: the sum over neighbours in Eq. 5, after phi_h.

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
        if value is None or isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            valid = ", ".join(repr(p.value) for p in cls)
            raise ValueError(f"unknown execution path {value!r}; valid values are {valid} or None") from None


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


class TorchStepOps:
    """The three primitives on one step's edge list, with gather + ``index_add`` (autograd-safe, any device)."""

    def __init__(self, step: StepBatch):
        self.src_local = step.src_local
        self.dst_local = step.dst_local
        self.num_dst = step.dst_nodes.numel()

    def u_mul_e(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return u.index_select(0, self.src_local) * e

    def e_sum(self, x: torch.Tensor) -> torch.Tensor:
        # index_add on a fresh zeros tensor is out-of-place for autograd: it backpropagates into x.
        out = x.new_zeros((self.num_dst, *x.shape[1:]))
        return out.index_add(0, self.dst_local, x)

    def u_mul_e_sum(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.e_sum(self.u_mul_e(u, e))


class DGLStepOps:
    """The three primitives as DGL's fused g-SpMM / g-SDDMM kernels on the step's block."""

    def __init__(self, step: StepBatch):
        self.dgl = require_dgl()
        self.block = step.to_block()

    def u_mul_e(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.dgl.ops.u_mul_e(self.block, u, e)

    def e_sum(self, x: torch.Tensor) -> torch.Tensor:
        return self.dgl.ops.copy_e_sum(self.block, x)

    def u_mul_e_sum(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.dgl.ops.u_mul_e_sum(self.block, u, e)


StepOps = TorchStepOps | DGLStepOps

_OPS = {ExecutionPath.TORCH: TorchStepOps, ExecutionPath.DGL: DGLStepOps}


def step_ops(step: StepBatch, path: ExecutionPath) -> StepOps:
    """The primitives for ``step`` on a resolved ``path``."""
    return _OPS[path](step)
