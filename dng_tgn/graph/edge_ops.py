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
        """``q_e k_e^T``, each factor the sum of its role's terms (a projection, plus its bias where there is one)."""
        terms: dict[str, torch.Tensor] = {}
        projections = {"q": 0, "k": 0}
        for op, term in parts:
            if not isinstance(op, QueryKey) or op.role not in projections:
                raise ValueError(f"score nodes read only q and k edge groups, got {type(op).__name__}")
            terms[op.role] = terms[op.role] + term if op.role in terms else term
            projections[op.role] += not isinstance(op, QueryKeyBias)
        if projections != {"q": 1, "k": 1}:
            raise ValueError(f"score nodes need exactly one q and one k projection, got {[op.role for op, _ in parts]}")
        return terms["q"].unsqueeze(-2) * terms["k"].unsqueeze(-3)


@dataclass(frozen=True)
class QueryKeyBias(QueryKey):
    """The bias of a Q or K row, on an edge from the constant unit node (``x`` is ignored): ``b_q[e]`` joins ``q_e``
    before the product (a bias is the weight of a constant input of 1). ``nn.MultiheadAttention``'s in_proj_bias."""

    def __call__(self, x, w):
        return w[:, 0, 0]


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


# --- token sequences (ViT): a class token in front of the patch tokens, learned positions added -------------------
#
# Both are constants of the network, so they are edges from constant source nodes (present from t^0, like inputs):
# the class token is a Linear map of a constant 1 (one edge per channel, its weight the token's value), the
# positional embedding one of a one-hot position (one edge per (position, channel), its weight pos[t, c]). They
# join the step that computes the patch embedding; the group's activation becomes the token sequence.


def _tokens_meet(parts, bias=None):
    """The patch tokens (a layer's output, plus its bias), class tokens in front, positional embeddings added."""
    layer = [t for op, t in parts if not isinstance(op, (PrependTokens, AddPositions))]
    if not layer:
        raise ValueError("token nodes need the layer output that the class token / positions join")
    x = layer[0]
    for t in layer[1:]:
        x = x + t
    if x.dim() == 4:  # (B, C, H, W) maps of a patch convolution -> (B, H·W, C) tokens
        x = x.flatten(2).transpose(1, 2)
    if bias is not None:
        x = x + bias
    for op, t in parts:
        if isinstance(op, AddPositions) and op.before_prefix:
            x = x + t
    prefix = [t for op, t in parts if isinstance(op, PrependTokens)]
    if prefix:  # a later cat puts its tokens in front of earlier ones
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in reversed(prefix)] + [x], dim=1)
    for op, t in parts:
        if isinstance(op, AddPositions) and not op.before_prefix:
            x = x + t
    return x


_tokens_meet.takes_bias = True


@dataclass(frozen=True)
class PrependTokens(EdgeOp):
    """k constant token nodes -> the channel nodes, ``w[c, t]`` = channel c of token t: a class token (1, k, C) that
    ``torch.cat([cls.expand(n, -1, -1), x], dim=1)`` puts in front of the tokens ``x``."""

    def __call__(self, x, w):
        return w[:, :, 0].T.unsqueeze(0)

    meet = staticmethod(_tokens_meet)


@dataclass(frozen=True)
class AddPositions(EdgeOp):
    """One constant node per token position -> the channel nodes, ``w[c, t]`` = pos[t, c]: a learned positional
    embedding added to the tokens (``before_prefix``: added to the patch tokens before a class token was put in front)."""

    before_prefix: bool = False

    def __call__(self, x, w):
        return w[:, :, 0].T.unsqueeze(0)

    meet = staticmethod(_tokens_meet)


def takes_bias(parts) -> bool:
    """Whether the meet of these parts places the node group's bias itself (the patch tokens' bias, before the class
    token joins them); replay adds the bias after :func:`combine` otherwise."""
    return any(getattr(getattr(op, "meet", None), "takes_bias", False) for op, _ in parts)


def combine(parts, bias=None):
    """The activation of a node group from its incoming (op, term) pairs: their sum, unless the ops name a meet.

    ``bias`` goes to a meet that places it itself (:func:`takes_bias`); otherwise the caller adds it.
    """
    meets = {op.meet for op, _ in parts if getattr(op, "meet", None) is not None}
    if not meets:
        total = parts[0][1]
        for _, term in parts[1:]:
            total = total + term
        return total
    if len(meets) > 1:
        raise ValueError(f"edge groups with different meets feed one node group: {[type(op).__name__ for op, _ in parts]}")
    meet = meets.pop()
    return meet(parts, bias) if getattr(meet, "takes_bias", False) else meet(parts)
