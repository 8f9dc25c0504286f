"""SimpleViT (vit-pytorch layouts) -> event stream: App. E.2, with attention wired so the encoder can see it.

Timestamps (one per forward step): the patch embedding (1); per block, attention as three steps -- the
projections, the attention itself, the output projection with the residual -- and the MLP as two steps (5 per
block); the head (1). A 2-block SimpleViT therefore has 12 timestamps, as in the paper. LayerNorm scales and
shifts sit on the nodes they normalise (``norm_in_*`` on the nodes a pre-norm reads, ``norm_out_*`` on nodes
normalised in place), so every parameter appears exactly once.

Attention, one head (e, d = 1..d_head), block input x (dim nodes x_j), output y (dim nodes y_i)::

    t^a: projections    t^b: attention (no weights)                     t^c: output projection
    x ─W_Q[e,:] ATTN_Q─┐
                       ├─▶ s_e ──ATTN_SCORE: every s_e → every z_d────────┐
    x ─W_K[e,:] ATTN_K─┘                                                  ▼
    x ─W_V[d,:] WEIGHT───▶ v_d ──ATTN_V: v_d → z_d only─────────────────▶ z_d ─W_O[i,d]─▶ y_i ◀─┐
    │                                                                                           │
    └──────────────────────────────────── RESIDUAL (span 3) ────────────────────────────────────┘

* ``s_e`` (group ``qk{h}``) receives row e of W_Q and row e of W_K: its activation is the score matrix of
  dimension e, ``s_e = q_e k_e^T`` (n x n tokens), and ``sum_e s_e = Q K^T``. The Q and K edges carry their
  weights; the encoder tells them apart by a learnable role vector per kind (``ATTN_Q``, ``ATTN_K``).
* ``z_d = softmax(d_head^-1/2 · sum_e s_e) v_d``: every ``s_e`` of the head feeds every ``z_d`` (``ATTN_SCORE``),
  and ``v_d`` feeds ``z_d`` alone (``ATTN_V``); these edges have no weights, only learnable kind vectors.
* ``z_d`` is read by column d of W_O, so V row d and W_O column d meet at one node.

The symmetries of attention are relabellings of this graph, so the DNG-Encoder is invariant to them: heads
as blocks (each head owns its ``qk``, ``v``, ``z`` groups); one permutation of a head's Q and K rows together
(relabels the ``s_e``); one permutation of its V rows and W_O columns together (relabels ``v_d`` and ``z_d``).
Anything else changes the graph: K rows without Q rows change which W_K row meets which W_Q row at ``s_e``;
V rows without W_O columns change which ``v_d`` feeds the ``z_d`` that W_O column d reads; a dimension moved
to another head joins that head's ``ATTN_SCORE`` sum. The paper (dense learnable Q/K/V -> Z edges) gives all
Z nodes of a head the same memory and is blind to both pairings; its authors' code learns one edge vector
per (Z index, QKV index), which sees the pairing but is not invariant inside a head. This construction
departs from both on purpose.

Replay (``dng_tgn.replay``) executes it exactly: the ``s_e`` and ``z_d`` groups combine their terms as
products (:class:`~dng_tgn.graph.edge_ops.QueryKey`, :class:`~dng_tgn.graph.edge_ops.AttentionScores`,
:class:`~dng_tgn.graph.edge_ops.AttendValues`); the fixed sin-cos position embedding is a transform on the
edges that read the patch embedding.

:func:`add_attention` builds t^a and t^b; the fx converter uses it for ``nn.MultiheadAttention`` too (torchvision's
ViT-B/16), whose ``in_proj_bias`` adds V's bias to the ``v_d`` nodes and Q's and K's as weights of edges from a constant
unit node into ``s_e`` (a bias must join q_e and k_e before their product).

Layouts: the current vit-pytorch SimpleViT (``transformer.norm`` + a bare ``linear_head``) and the older one
(``linear_head = [LayerNorm, Linear]``, no ``transformer.norm``); see ``dng_tgn.nets.simple_vit``.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import MissingParameterError, ShapeMismatchError
from ...nets.simple_vit import posemb_sincos_2d
from .. import transforms as T
from ..builder import StreamBuilder
from ..edge_ops import AttendValues, AttentionScores, Identity, QueryKey, QueryKeyBias, TokenDense
from ..events import EdgeKind, EventStream, NodeKind, ParamRef, Pattern, flat_index

_BLOCK = re.compile(r"^transformer\.layers\.(\d+)\.")


def is_simple_vit_state_dict(sd: dict) -> bool:
    return "to_patch_embedding.2.weight" in sd and any(_BLOCK.match(k) for k in sd)


@dataclass(frozen=True)
class Patchify(T.Transform):
    """(B, C, H, W) images -> (B, n, p·p·C) patches in vit-pytorch's ``b (h w) (p1 p2 c)`` order.

    The patch side p follows from the patch width and the image's channels, which the weights alone cannot tell.
    """

    pointwise: ClassVar[bool] = False
    takes_images: ClassVar[bool] = True
    patch_dim: int

    def __call__(self, x):
        if x.dim() != 4:
            raise ValueError(f"a ViT stream reads (B, C, H, W) images, got shape {tuple(x.shape)}")
        b, c, hh, ww = x.shape
        p = math.isqrt(self.patch_dim // c)
        if p * p * c != self.patch_dim or hh % p or ww % p:
            raise ValueError(f"images {tuple(x.shape[1:])} do not cut into square patches of {self.patch_dim} values")
        x = x.reshape(b, c, hh // p, p, ww // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (hh // p) * (ww // p), p * p * c)


@dataclass(frozen=True)
class AddSinCosPosition(T.Transform):
    """SimpleViT's fixed 2-D sin-cos position embedding, added to (B, n, dim) tokens of a square patch grid."""

    pointwise: ClassVar[bool] = False

    def __call__(self, x):
        side = math.isqrt(x.shape[-2])
        if side * side != x.shape[-2]:
            raise ValueError(f"{x.shape[-2]} tokens do not form a square patch grid")
        return x + posemb_sincos_2d(side, side, x.shape[-1]).to(x)

    def __str__(self):
        return "+pos(sincos)"


@dataclass(frozen=True)
class TokenMean(T.Transform):
    """(B, n, dim) -> (B, dim): SimpleViT's mean pooling over tokens."""

    pointwise: ClassVar[bool] = False

    def __call__(self, x):
        return x.mean(dim=-2)


def _get(sd, key):
    if key not in sd:
        raise MissingParameterError(f"SimpleViT state_dict is missing '{key}'")
    return sd[key].detach().float()


def _vec_ref(name, n, slot):
    return ParamRef(name, (n,), torch.arange(n), slot=slot)


def head_width(sd: dict, heads) -> int:
    """d_head from the weights and ``heads``; a clear error when ``heads`` cannot split the attention width.

    A head count that *does* divide the width cannot be checked from the weights (4 heads of 8 and 2 of 16
    have the same tensors): it must come from the model's configuration (a ViT zoo keeps it in meta.json).
    """
    if isinstance(heads, bool) or not isinstance(heads, numbers.Integral) or heads < 1:
        raise ValueError(f"heads must be a positive integer, got {heads!r}")
    heads = int(heads)
    qkv = _get(sd, "transformer.layers.0.0.to_qkv.weight")
    rows = qkv.shape[0]
    if qkv.dim() != 2 or rows % 3:
        raise ShapeMismatchError(f"'transformer.layers.0.0.to_qkv.weight' has shape {tuple(qkv.shape)}: not 3 x width rows")
    width = rows // 3
    if width % heads:
        raise ShapeMismatchError(
            f"heads={heads} does not divide the attention width {width} (to_qkv has {rows} = 3 x {width} rows), "
            f"so a head would be {width / heads:.4g} wide; pass the head count the model was built with"
        )
    return width // heads


def vit_stream(sd: dict, heads: int, arch: str = "SimpleViT") -> EventStream:
    depth = 1 + max(int(_BLOCK.match(k).group(1)) for k in sd if _BLOCK.match(k))
    w_emb = _get(sd, "to_patch_embedding.2.weight")
    dim, patch_dim = w_emb.shape
    dh = head_width(sd, heads)
    heads = int(heads)
    final_norm, norm_after_pool = _final_norm(sd)
    b = StreamBuilder(arch)

    # t^1: patch embedding. LN(patch_dim) acts on the input nodes, LN(dim) on the embedding nodes.
    p = "to_patch_embedding"
    x_in = b.add_inputs(
        "patch", patch_dim,
        params=(_vec_ref(f"{p}.1.weight", patch_dim, 1), _vec_ref(f"{p}.1.bias", patch_dim, 2)),
        norm_in_weight=_get(sd, f"{p}.1.weight"), norm_in_bias=_get(sd, f"{p}.1.bias"),
    )
    b.new_step()
    x = _neuron(b, "embed", dim, sd, bias=f"{p}.2.bias", norm_out=f"{p}.3", norm_in=_block_norm(sd, 0, 0))
    _dense(b, f"{p}.2.weight", x_in, x, w_emb, (dim, patch_dim), before=(Patchify(patch_dim),))
    reads_x = (AddSinCosPosition(),)  # the embedding's readers add the fixed position embedding

    for i in range(depth):
        pre = f"transformer.layers.{i}"
        qkv = _get(sd, f"{pre}.0.to_qkv.weight")
        if qkv.shape != (3 * heads * dh, dim):
            raise ShapeMismatchError(f"'{pre}.0.to_qkv.weight' has shape {tuple(qkv.shape)}, expected {(3 * heads * dh, dim)}")
        z_groups = add_attention(b, x, heads, qkv, param=f"{pre}.0.to_qkv.weight", node_prefix=pre,
                                 proj_name=f"{pre}.0.to_qkv", reads_x=reads_x)
        # attention t^c: output projection (column d of W_O reads z_d) plus the residual from the block input (span 3)
        w_out = _get(sd, f"{pre}.0.to_out.weight")
        if w_out.shape != (dim, heads * dh):
            raise ShapeMismatchError(f"'{pre}.0.to_out.weight' has shape {tuple(w_out.shape)}, expected {(dim, heads * dh)}")
        b.new_step()
        y = _neuron(b, f"{pre}.attn_out", dim, sd, bias=None, norm_in=f"{pre}.1.net.0")
        for h, z in enumerate(z_groups):
            cols = slice(h * dh, (h + 1) * dh)
            ref = ParamRef(f"{pre}.0.to_out.weight", (dim, heads * dh), flat_index((dim, heads * dh))[:, cols].unsqueeze(-1))
            b.add_edges(f"{pre}.0.to_out[z{h}]", z, y, TokenDense(), w_out[:, cols].unsqueeze(-1), params=(ref,))
        b.add_edges(f"{pre}.attn.residual", x, y, Identity(), None, kind=EdgeKind.RESIDUAL, pattern=Pattern.IDENTITY,
                    span=3, src_transform=reads_x)
        reads_x = ()
        # MLP: two dense steps, the second with the residual from the attention output (span 2)
        w1, w2 = _get(sd, f"{pre}.1.net.1.weight"), _get(sd, f"{pre}.1.net.3.weight")
        hidden = w1.shape[0]
        b.new_step()
        hmid = _neuron(b, f"{pre}.mlp_hidden", hidden, sd, bias=f"{pre}.1.net.1.bias")
        _dense(b, f"{pre}.1.net.1.weight", y, hmid, w1, (hidden, dim))
        b.new_step()
        last = i + 1 == depth
        if not last:
            norm_in, norm_out = _block_norm(sd, i + 1, 0), None
        else:  # the final LayerNorm: before the token mean (current layout) or after it (older layout)
            norm_in, norm_out = (final_norm, None) if norm_after_pool else (None, final_norm)
        o = _neuron(b, f"{pre}.mlp_out", dim, sd, bias=f"{pre}.1.net.3.bias", norm_in=norm_in, norm_out=norm_out)
        _dense(b, f"{pre}.1.net.3.weight", hmid, o, w2, (dim, hidden), before=(T.GELU,))
        b.add_edges(f"{pre}.mlp.residual", y, o, Identity(), None, kind=EdgeKind.RESIDUAL, pattern=Pattern.IDENTITY, span=2)
        x = o

    # last timestamp: mean over tokens, then the linear head
    head = "linear_head.1" if "linear_head.1.weight" in sd else "linear_head"
    w_head = _get(sd, f"{head}.weight")
    b.new_step()
    logits = _neuron(b, "logits", w_head.shape[0], sd, bias=f"{head}.bias")
    _dense(b, f"{head}.weight", x, logits, w_head, tuple(w_head.shape), before=(TokenMean(),))
    return b.build(output=logits)


def add_attention(b: StreamBuilder, x: int, heads: int, w_qkv: torch.Tensor, *, param: str, node_prefix: str, proj_name: str,
                  reads_x: tuple = (), b_qkv: torch.Tensor | None = None, bias_param: str | None = None,
                  one: int | None = None) -> list[int]:
    """Timestamps t^a (projections) and t^b (attention) of one attention layer, as the module docstring draws them.

    ``w_qkv`` (3·heads·d_head, dim) stacks the Q, K and V rows, each head's ``d_head`` rows together (SimpleViT's
    ``to_qkv``, ``nn.MultiheadAttention``'s ``in_proj_weight``); ``x`` is the node group it reads, through
    ``reads_x``. With ``b_qkv`` (``in_proj_bias``): V's bias sits on the ``v_d`` nodes; Q's and K's must join q_e
    and k_e *before* their product at ``s_e``, so they are weights of edges from ``one``, a constant unit node
    (kinds ATTN_Q / ATTN_K, op :class:`~dng_tgn.graph.edge_ops.QueryKeyBias`). Returns the ``z`` groups, one per
    head, for the output projection (t^c) to read.
    """
    rows_total, dim = w_qkv.shape
    if rows_total % (3 * heads):
        raise ShapeMismatchError(f"'{param}' has {rows_total} rows: not 3 x {heads} heads x d_head")
    dh = rows_total // (3 * heads)
    qkv_ref = flat_index(w_qkv.shape)
    if b_qkv is not None and (one is None or tuple(b_qkv.shape) != (rows_total,)):
        raise ShapeMismatchError(f"'{bias_param}' has shape {tuple(b_qkv.shape)}, expected ({rows_total},) and a unit node")

    def rows(role, h):  # rows are [q heads | k heads | v heads], dh rows per head
        start = ("qkv".index(role) * heads + h) * dh
        return slice(start, start + dh)

    def proj(src, dst, op, role, h, kind=EdgeKind.WEIGHT):
        r = rows(role, h)
        b.add_edges(f"{proj_name}[{role}{h}]", src, dst, op, w_qkv[r].unsqueeze(-1), kind=kind, src_transform=reads_x,
                    params=(ParamRef(param, tuple(w_qkv.shape), qkv_ref[r].unsqueeze(-1)),))

    def bias_ref(r, slot=None):
        return ParamRef(bias_param, (rows_total,), torch.arange(rows_total)[r].reshape(-1, 1, 1) if slot is None
                        else torch.arange(rows_total)[r], slot=slot)

    # t^a: per head, the score nodes s_e (row e of W_Q and of W_K) and the value nodes v_d
    b.new_step()
    score_groups, value_groups = [], []
    for h in range(heads):
        s = b.add_nodes(f"{node_prefix}.qk{h}", dh, kind=NodeKind.COMPUTE)
        proj(x, s, QueryKey(role="q"), "q", h, kind=EdgeKind.ATTN_Q)
        proj(x, s, QueryKey(role="k"), "k", h, kind=EdgeKind.ATTN_K)
        if b_qkv is None:
            v = b.add_nodes(f"{node_prefix}.v{h}", dh, kind=NodeKind.COMPUTE)
        else:
            for role, kind in (("q", EdgeKind.ATTN_Q), ("k", EdgeKind.ATTN_K)):
                r = rows(role, h)
                b.add_edges(f"{bias_param}[{role}{h}]", one, s, QueryKeyBias(role=role), b_qkv[r].reshape(dh, 1, 1),
                            kind=kind, params=(bias_ref(r),))
            rv = rows("v", h)
            v = b.add_nodes(f"{node_prefix}.v{h}", dh, params=(bias_ref(rv, slot=0),), bias=b_qkv[rv])
        proj(x, v, TokenDense(), "v", h)
        score_groups.append(s)
        value_groups.append(v)
    # t^b: z_d = softmax(scale * sum_e s_e) v_d, on parameter-free edges with learnable kinds
    b.new_step()
    z_groups = []
    for h, (s, v) in enumerate(zip(score_groups, value_groups)):
        z = b.add_nodes(f"{node_prefix}.z{h}", dh, kind=NodeKind.COMPUTE)
        b.add_edges(f"{node_prefix}.attn[qk{h}->z{h}]", s, z, AttentionScores(dh**-0.5), None, kind=EdgeKind.ATTN_SCORE)
        b.add_edges(f"{node_prefix}.attn[v{h}->z{h}]", v, z, AttendValues(), None, kind=EdgeKind.ATTN_V, pattern=Pattern.IDENTITY)
        z_groups.append(z)
    return z_groups


def _block_norm(sd, i, sub):
    key = f"transformer.layers.{i}.{sub}.norm"
    return key if f"{key}.weight" in sd else None


def _final_norm(sd):
    """(key, applied after the token mean): ``transformer.norm`` (current layout) or ``linear_head.0`` (older)."""
    if "transformer.norm.weight" in sd:
        return "transformer.norm", False
    if "linear_head.0.weight" in sd:
        return "linear_head.0", True
    return None, False


def _neuron(b: StreamBuilder, name, n, sd, bias=None, norm_in=None, norm_out=None) -> int:
    slots, refs = {}, []
    if bias is not None:
        slots["bias"] = _get(sd, bias)
        refs.append(_vec_ref(bias, n, 0))
    if norm_in is not None:
        slots["norm_in_weight"], slots["norm_in_bias"] = _get(sd, f"{norm_in}.weight"), _get(sd, f"{norm_in}.bias")
        refs += [_vec_ref(f"{norm_in}.weight", n, 1), _vec_ref(f"{norm_in}.bias", n, 2)]
    if norm_out is not None:
        slots["norm_out_weight"], slots["norm_out_bias"] = _get(sd, f"{norm_out}.weight"), _get(sd, f"{norm_out}.bias")
        refs += [_vec_ref(f"{norm_out}.weight", n, 3), _vec_ref(f"{norm_out}.bias", n, 4)]
    return b.add_nodes(name, n, params=tuple(refs), **slots)


def _dense(b: StreamBuilder, name, src, dst, w, shape, before=()):
    if tuple(w.shape) != tuple(shape):
        raise ShapeMismatchError(f"'{name}' has shape {tuple(w.shape)}, expected {tuple(shape)}")
    b.add_edges(name, src, dst, TokenDense(), w.unsqueeze(-1), src_transform=before,
                params=(ParamRef(name, tuple(shape), flat_index((*shape, 1))),))
