"""What an edge group computes when the stream is executed (``dng_tgn.graph.replay``).

The encoder only needs edge features; these ops record the remaining facts of the layer (stride,
padding, flatten geometry) so a stream can be run as the network it came from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class EdgeOp:
    """Maps source activations and the (n_dst, n_src, slots) weight rebuilt from edges to a dst term."""

    replayable = True

    def __call__(self, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Dense(EdgeOp):
    """y_i = sum_j W_ij x_j on the last axis (tokens, if any, ride along in the middle)."""

    def __call__(self, x, w):
        return x @ w[:, :, 0].T


@dataclass(frozen=True)
class Conv(EdgeOp):
    """One edge per kernel scalar (§4.2); slots hold the kernel flattened row-major."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def __call__(self, x, w):
        kh, kw = self.kernel_size
        kernel = w[:, :, : kh * kw].reshape(w.shape[0], w.shape[1], kh, kw)
        return F.conv2d(x, kernel, stride=self.stride, padding=self.padding, dilation=self.dilation)


@dataclass(frozen=True)
class FlattenDense(EdgeOp):
    """Flatten then Linear (App. E.1): each channel carries h·w virtual vertices, one edge each."""

    height: int
    width: int

    def __call__(self, x, w):
        hw = self.height * self.width
        if x.shape[-2:] != (self.height, self.width):
            raise ValueError(f"flatten expects {self.height}x{self.width} maps, got {tuple(x.shape[-2:])}")
        return x.reshape(x.shape[0], -1) @ w[:, :, :hw].reshape(w.shape[0], -1).T


@dataclass(frozen=True)
class Identity(EdgeOp):
    """A residual edge v_i^l -> v_i^{l+r} adds the source activation unchanged."""

    def __call__(self, x, w):
        return x


@dataclass(frozen=True)
class TokenDense(Dense):
    """A Linear applied per token inside a transformer: (B, n, d_in) -> (B, n, d_out)."""


# --- attention (App. E.2, rebuilt so that the graph shows how attention is wired; see convert/vit.py) -------------
#
# Edges into one node group normally add up. The two attention steps are products, so their ops name a ``meet``:
# replay hands it every (op, term) pair arriving at the group, and it forms the group's activation.


@dataclass(frozen=True)
class QueryKey(TokenDense):
    """Q or K projection onto the score nodes s_e (row e of W_Q or W_K, one edge per weight scalar).

    The two terms meet as the per-dimension score matrices ``s_e[n, m] = q_e[n] * k_e[m]``, so the score
    node's activation is (B, n, n, d_head) and ``sum_e s_e = Q K^T``.
    """

    role: str = "q"

    @staticmethod
    def meet(parts):
        terms = {op.role: term for op, term in parts}
        if set(terms) != {"q", "k"} or len(parts) != 2:
            raise ValueError(f"score nodes need exactly one q and one k edge group, got {[op.role for op, _ in parts]}")
        return terms["q"].unsqueeze(-2) * terms["k"].unsqueeze(-3)


def _attend(parts):
    """Where the logits of a head meet its values: ``z = softmax(logits) @ v`` (the classes are defined below)."""
    logits = [t for op, t in parts if isinstance(op, AttentionScores)]
    values = [t for op, t in parts if isinstance(op, AttendValues)]
    if len(logits) != 1 or len(values) != 1 or len(parts) != 2:
        raise ValueError(f"attention output nodes need one score and one value edge group, got {[type(op).__name__ for op, _ in parts]}")
    return torch.softmax(logits[0], dim=-1) @ values[0]


@dataclass(frozen=True)
class AttentionScores(EdgeOp):
    """s_e -> z_d, every pair of one head, parameter-free: the logits ``scale * sum_e s_e``."""

    scale: float

    def __call__(self, x, w):
        return x.sum(-1) * self.scale

    meet = staticmethod(_attend)


@dataclass(frozen=True)
class AttendValues(EdgeOp):
    """v_d -> z_d, index-paired, parameter-free: ``z_d = softmax(logits) v_d``."""

    def __call__(self, x, w):
        return x

    meet = staticmethod(_attend)


# --- gating (squeeze-and-excitation): the group's activation is the product of a feature map and a per-channel gate


def _gate_meet(parts):
    maps = [t for op, t in parts if isinstance(op, GatedMap)]
    gates = [t for op, t in parts if isinstance(op, Gate)]
    if len(maps) != 1 or len(gates) != 1 or len(parts) != 2:
        raise ValueError(f"gated nodes need one map and one gate edge group, got {[type(op).__name__ for op, _ in parts]}")
    m, g = maps[0], gates[0]
    return m * g.reshape(*g.shape, *([1] * (m.dim() - g.dim())))


@dataclass(frozen=True)
class GatedMap(EdgeOp):
    """x_i -> p_i, index-paired, parameter-free: the feature map that a gate scales (``p = x * g``)."""

    def __call__(self, x, w):
        return x

    meet = staticmethod(_gate_meet)


@dataclass(frozen=True)
class Gate(EdgeOp):
    """g_i -> p_i, index-paired, parameter-free: channel i's gate (one scalar per channel, broadcast over space)."""

    def __call__(self, x, w):
        return x

    meet = staticmethod(_gate_meet)


def combine(parts):
    """The activation of a node group from its incoming (op, term) pairs: their sum, unless the ops name a meet."""
    meets = {op.meet for op, _ in parts if getattr(op, "meet", None) is not None}
    if not meets:
        total = parts[0][1]
        for _, term in parts[1:]:
            total = total + term
        return total
    if len(meets) > 1:
        raise ValueError(f"edge groups with different meets feed one node group: {[type(op).__name__ for op, _ in parts]}")
    return meets.pop()(parts)
