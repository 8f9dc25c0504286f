"""Neural Functional Networks (NFN; Zhou et al., NeurIPS 2023, "Permutation Equivariant Neural Functionals").

A weight-space encoder baseline for the tables' ``nfn_np`` / ``nfn_hnp`` rows, written from the paper's
equations (the ``nfn`` package is not a dependency).

Input
-----
:class:`NFNEncoder` reads a :class:`~dng_tgn.data.StateDictSet`-style dict of *stacked* parameters
(``params[key]`` of shape ``(B, *shape)``, e.g. ``{k: v[idx] for k, v in stateset.params.items()}``, see
:func:`select_rows`); it does not read :class:`~dng_tgn.graph.batch.StreamBatch` es. All networks of a batch
share one layout, described by an :class:`NFNLayout` (which keys are layers, in order). The layout is a chain
of L layers; layer i maps the ``n_{i-1}`` neurons of neuron layer i-1 to the ``n_i`` neurons of neuron layer i
(neuron layer 0 = the network's inputs, L = its outputs).

Weight space
------------
:class:`WeightSpace`: per layer ``W_i`` of shape ``(B, c, n_i, n_{i-1}, *k)`` (``k`` = a conv's kernel shape,
empty for a linear layer) and ``b_i`` of shape ``(B, c, n_i)``; ``c`` is the feature channel (1 for raw
weights). As in NFN, a conv kernel's spatial positions are not permutable: inside the layers they are folded
into the channel dimension (a 3x3 conv weight carries ``9c`` features per (out, in) pair). A global-average-pool
followed by a linear head (the Small CNN Zoo) is just one more linear layer whose ``n_{i-1}`` is the last conv's
channel count, so the zoo CNN's layout is conv, conv, conv, linear.

Symmetry groups (the paper's names)
-----------------------------------
* **NP** (neuron permutation): every neuron layer, including the inputs and outputs, is permutable -- a larger
  group than the networks' true symmetry. :class:`NPLinear` is equivariant to it. With ``io_embed=True`` (the
  paper's "NP-PosEmb", used by :class:`NFNEncoder` in ``np`` mode) learned embeddings are added to the
  input-neuron columns of ``W_1`` and to the output-neuron rows of ``W_L`` / entries of ``b_L``, which breaks the
  spurious input/output symmetry: the layer is then only hidden-neuron equivariant.
* **HNP** (hidden neuron permutation): only hidden neuron layers 1..L-1 are permutable; inputs and outputs are
  distinct, fixed positions -- the MLP/CNN's true symmetry. :class:`HNPLinear` is equivariant to it and uses
  the fixed input/output indices as extra features.

Notation for the layer equations below: ``*`` in an index = mean over that index; ``:`` = all entries kept (as
features); ``h_l[j]`` = the features of neuron j of neuron layer l (see each class); ``g`` = the global
(invariant) vector; every term has its own learned channel-mixing matrix; the layers have L >= 1 (NP) or
L >= 2 (HNP) layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..choices import parse_choice

__all__ = [
    "WeightSpace", "NFNLayout", "select_rows", "permute_neurons",
    "NPLinear", "HNPLinear", "WeightSpaceReLU", "FourierFeatures", "NPPool", "HNPPool",
    "NFNEncoder", "count_parameters", "nfn_parameter_count", "NFNMode", "NFN_MODES",
]


class NFNMode(Enum):
    """Which symmetry group an NFN layer or pooling respects (the paper's names; see the module docstring)."""

    NP = "np"  # every neuron layer permutable; the layers add input/output embeddings (NP-PosEmb)
    HNP = "hnp"  # hidden neuron layers only: inputs and outputs are fixed positions

    @classmethod
    def parse(cls, value: "str | NFNMode", what: str = "NFN mode") -> "NFNMode":
        """``"np"`` / ``"hnp"`` (configs and callers pass strings) -> member; ``what`` names the option in the error."""
        return parse_choice(cls, value, what)

    def linear(self, layout: "NFNLayout", in_channels: int, out_channels: int) -> nn.Module:
        """This group's equivariant layer (NP with input/output embeddings, or HNP)."""
        if self is NFNMode.NP:
            return NPLinear(layout, in_channels, out_channels, io_embed=True)
        if self is NFNMode.HNP:
            return HNPLinear(layout, in_channels, out_channels)
        raise AssertionError(f"NFNMode.linear does not handle {self}")  # a new member needs a branch here


NFN_MODES = tuple(m.value for m in NFNMode)  # the accepted strings


# ----------------------------------------------------------------------------------------------------------------
# weight-space representation


@dataclass
class WeightSpace:
    """Per layer ``weights[i]`` (B, c, n_i, n_{i-1}, *k) and ``biases[i]`` (B, c, n_i)."""

    weights: list[Tensor]
    biases: list[Tensor]

    def __post_init__(self):
        self.weights, self.biases = list(self.weights), list(self.biases)
        if len(self.weights) != len(self.biases):
            raise ValueError(f"{len(self.weights)} weight tensors but {len(self.biases)} bias tensors")
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.dim() < 4 or b.dim() != 3 or w.shape[:3] != b.shape[:3]:
                raise ValueError(f"layer {i}: weight {tuple(w.shape)} and bias {tuple(b.shape)} are not "
                                 f"(B, c, n_i, n_(i-1), *k) and (B, c, n_i)")

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(zip(self.weights, self.biases))

    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def channels(self) -> int:
        return self.weights[0].shape[1]

    def map(self, fn) -> "WeightSpace":
        """Apply ``fn`` to every tensor (a pointwise map keeps any permutation symmetry)."""
        return WeightSpace([fn(w) for w in self.weights], [fn(b) for b in self.biases])

    def permute(self, perms: Mapping[int, Tensor]) -> "WeightSpace":
        """Permute neuron layer l's neurons (``perms[l]``; 0 = inputs, L = outputs): rows of W_l, entries of
        b_l, columns of W_{l+1} -- the group action the NP / HNP layers are equivariant to."""
        W, b, L = list(self.weights), list(self.biases), len(self)
        for l, p in perms.items():
            if not 0 <= l <= L:
                raise ValueError(f"neuron layer {l} is outside 0..{L}")
            if l >= 1:
                W[l - 1], b[l - 1] = W[l - 1][:, :, p], b[l - 1][:, :, p]
            if l < L:
                W[l] = W[l][:, :, :, p]
        return WeightSpace(W, b)


@dataclass(frozen=True)
class NFNLayout:
    """Which parameter keys are the layers of a feed-forward chain, in order, and their shapes.

    ``weight_shapes[i]`` is one network's ``(n_i, n_{i-1}, *k)``; consecutive layers must chain
    (``n_{i-1}`` of layer i equals ``n_i`` of layer i-1).
    """

    weight_keys: tuple[str, ...]
    bias_keys: tuple[str, ...]
    weight_shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if not self.weight_keys or not len(self.weight_keys) == len(self.bias_keys) == len(self.weight_shapes):
            raise ValueError("a layout needs one weight key, bias key and shape per layer (and at least one layer)")
        for i, s in enumerate(self.weight_shapes):
            if len(s) < 2:
                raise ValueError(f"layer {i} ({self.weight_keys[i]}): weight shape {s} is not (out, in, *kernel)")
            if i and s[1] != self.weight_shapes[i - 1][0]:
                raise ValueError(f"layer {i} ({self.weight_keys[i]}) takes {s[1]} inputs but layer {i - 1} "
                                 f"({self.weight_keys[i - 1]}) has {self.weight_shapes[i - 1][0]} outputs")

    @classmethod
    def infer(cls, params: Mapping[str, Tensor], layers: Sequence[str] | None = None,
              stacked: bool = True) -> "NFNLayout":
        """Layout of ``params`` (stacked: one leading row dimension; else one network's state dict).

        ``layers``: the layer prefixes in order (``"net.0.linear"`` -> ``net.0.linear.weight`` / ``.bias``);
        by default every ``<prefix>.weight`` key that has a ``<prefix>.bias`` key, in the dict's order.
        Keys that are not layers are ignored by the encoder.
        """
        if layers is None:
            layers = [k[: -len(".weight")] for k in params if k.endswith(".weight") and
                      k[: -len(".weight")] + ".bias" in params]
        if not layers:
            raise ValueError("no '<layer>.weight' / '<layer>.bias' pairs found in the parameters")
        wk = tuple(f"{p}.weight" for p in layers)
        bk = tuple(f"{p}.bias" for p in layers)
        missing = [k for k in wk + bk if k not in params]
        if missing:
            raise KeyError(f"layout keys missing from the parameters: {missing}")
        skip = 1 if stacked else 0
        shapes = tuple(tuple(int(d) for d in params[k].shape[skip:]) for k in wk)
        for w, b, s in zip(wk, bk, shapes):
            if tuple(params[b].shape[skip:]) != (s[0],):
                raise ValueError(f"{b} has shape {tuple(params[b].shape[skip:])}, expected ({s[0]},) for {w} {s}")
        return cls(wk, bk, shapes)

    @classmethod
    def from_module(cls, module: nn.Module, layers: Sequence[str] | None = None) -> "NFNLayout":
        return cls.infer(dict(module.state_dict()), layers, stacked=False)

    @property
    def num_layers(self) -> int:
        return len(self.weight_keys)

    @property
    def neuron_counts(self) -> tuple[int, ...]:
        """``(n_0, n_1, ..., n_L)``."""
        return (self.weight_shapes[0][1],) + tuple(s[0] for s in self.weight_shapes)

    @property
    def kernel_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(s[2:] for s in self.weight_shapes)

    @property
    def filter_sizes(self) -> tuple[int, ...]:
        """Spatial positions per (out, in) pair of each layer: 1 for linear layers, 9 for 3x3 convs."""
        return tuple(math.prod(k) for k in self.kernel_shapes)

    @property
    def n_in(self) -> int:
        return self.neuron_counts[0]

    @property
    def n_out(self) -> int:
        return self.neuron_counts[-1]

    def to_weight_space(self, params: Mapping[str, Tensor]) -> WeightSpace:
        """Stacked params -> a one-channel :class:`WeightSpace` (float32)."""
        ws, bs = [], []
        for wk, bk, s in zip(self.weight_keys, self.bias_keys, self.weight_shapes):
            w, b = params[wk], params[bk]
            if tuple(w.shape[1:]) != s or tuple(b.shape[1:]) != (s[0],):
                raise ValueError(f"{wk} / {bk} have shapes {tuple(w.shape[1:])} / {tuple(b.shape[1:])}, the layout "
                                 f"expects {s} / ({s[0]},) per network")
            ws.append(w.float().unsqueeze(1))
            bs.append(b.float().unsqueeze(1))
        return WeightSpace(ws, bs)

    def to_params(self, ws: WeightSpace) -> dict[str, Tensor]:
        """Inverse of :meth:`to_weight_space` (one-channel weight spaces only)."""
        if ws.channels != 1:
            raise ValueError(f"only one-channel weight spaces map back to parameters (got {ws.channels})")
        out = {}
        for wk, bk, (w, b) in zip(self.weight_keys, self.bias_keys, ws):
            out[wk], out[bk] = w.squeeze(1), b.squeeze(1)
        return out


def select_rows(params: Mapping[str, Tensor], idx) -> dict[str, Tensor]:
    """Rows ``idx`` of every stacked tensor (a mini-batch of a ``StateDictSet.params``)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    return {k: v[idx] for k, v in params.items()}


def permute_neurons(params: Mapping[str, Tensor], layout: NFNLayout, perms: Mapping[int, Tensor]) -> dict[str, Tensor]:
    """Permute the neurons of neuron layers ``perms`` (0 = inputs, L = outputs) in stacked ``params``.

    For hidden layers this is a symmetry of the networks (they compute the same function); for layer 0 or L
    it is not. Conv layers permute channels; kernels move with them.
    """
    out = dict(params)
    L = layout.num_layers
    for l, p in perms.items():
        if not 0 <= l <= L:
            raise ValueError(f"neuron layer {l} is outside 0..{L}")
        p = torch.as_tensor(p, dtype=torch.long)
        if sorted(p.tolist()) != list(range(layout.neuron_counts[l])):
            raise ValueError(f"perms[{l}] is not a permutation of {layout.neuron_counts[l]} neurons")
        if l >= 1:  # rows of W_l, entries of b_l
            wk, bk = layout.weight_keys[l - 1], layout.bias_keys[l - 1]
            out[wk], out[bk] = out[wk][:, p], out[bk][:, p]
        if l < L:  # columns of W_{l+1}
            wk = layout.weight_keys[l]
            out[wk] = out[wk][:, :, p]
    return out


# ----------------------------------------------------------------------------------------------------------------
# helpers: channels-last folded views


def _fold_w(w: Tensor) -> Tensor:
    """(B, c, n, m, *k) -> (B, n, m, f*c): kernel positions become features (NFN's treatment of conv filters)."""
    b, _, n, m = w.shape[:4]
    return w.movedim(1, -1).reshape(b, n, m, -1)


def _unfold_w(w: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """(B, n, m, f*c) -> (B, c, n, m, *k)."""
    b, n, m, _ = w.shape
    return w.reshape(b, n, m, *kernel, -1).movedim(-1, 1)


def _init_sum(*linears: nn.Linear) -> None:
    """Initialise linear maps whose outputs are summed as one map: U(-1/sqrt(fan_in), ·) on the total fan-in."""
    fan_in = sum(l.in_features for l in linears)
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    for l in linears:
        nn.init.uniform_(l.weight, -bound, bound)
        if l.bias is not None:
            nn.init.uniform_(l.bias, -bound, bound)


class _Folded:
    """A weight space in the layers' working form: W[i] (B, n_i, n_{i-1}, f_i c), b[i] (B, n_i, c)."""

    def __init__(self, ws: WeightSpace, layout: NFNLayout, channels: int):
        if len(ws) != layout.num_layers:
            raise ValueError(f"the weight space has {len(ws)} layers, the layout {layout.num_layers}")
        if ws.channels != channels:
            raise ValueError(f"the layer expects {channels} channels, the weight space has {ws.channels}")
        for i, (w, s) in enumerate(zip(ws.weights, layout.weight_shapes)):
            if tuple(w.shape[2:]) != s:
                raise ValueError(f"layer {i}: weight features of shape {tuple(w.shape[2:])}, the layout says {s}")
        self.W = [_fold_w(w) for w in ws.weights]
        self.b = [b.transpose(1, 2) for b in ws.biases]


def _unfold(W: list[Tensor], b: list[Tensor], layout: NFNLayout) -> WeightSpace:
    return WeightSpace([_unfold_w(w, k) for w, k in zip(W, layout.kernel_shapes)], [x.transpose(1, 2) for x in b])


# ----------------------------------------------------------------------------------------------------------------
# equivariant linear layers


class NPLinear(nn.Module):
    """The NP-equivariant linear map (every neuron layer permutable), ``in_channels`` -> ``out_channels``.

    Neuron features, for neuron j of neuron layer l (0..L):
        ``h_l[j] = [W_l[j,*], b_l[j]]`` (if l >= 1) ``+ [W_{l+1}[*,j]]`` (if l < L)
    Global vector: ``g = [W_s[*,*], b_s[*] for every layer s]``.
    Layer i (1..L), row j in neuron layer i, column k in neuron layer i-1:
        ``W'_i[j,k] = A_i W_i[j,k] + B_i h_i[j] + C_i h_{i-1}[k] + D_i g + e_i``
        ``b'_i[j]   = E_i h_i[j] + F_i g + f_i``
    i.e. W_i itself; its row mean W_i[j,*] and column mean W_i[*,k]; the bias b_i[j]; the neighbours
    W_{i+1}[*,j], W_{i-1}[k,*], b_{i-1}[k]; and the means of every layer's weights and biases -- the NP layer
    of the paper. Conv kernels' positions are features (channels) of every term.

    ``io_embed``: add learned embeddings to W_1's input columns, W_L's output rows and b_L's entries first
    (the paper's NP-PosEmb); the layer is then equivariant to hidden-neuron permutations only.
    """

    def __init__(self, layout: NFNLayout, in_channels: int, out_channels: int, io_embed: bool = False):
        super().__init__()
        self.layout, self.c_in, self.c_out = layout, in_channels, out_channels
        L, f, ci, co = layout.num_layers, layout.filter_sizes, in_channels, out_channels
        # neuron-feature width of neuron layer l
        d = [(f[l - 1] * ci + ci if l >= 1 else 0) + (f[l] * ci if l < L else 0) for l in range(L + 1)]
        g_dim = sum(f) * ci + L * ci
        self.w_self, self.w_row, self.w_col, self.w_glob = (nn.ModuleList() for _ in range(4))
        self.b_row, self.b_glob = nn.ModuleList(), nn.ModuleList()
        for i in range(L):  # layer i+1 in the paper's 1-based numbering: neuron layers i -> i+1
            self.w_self.append(nn.Linear(f[i] * ci, f[i] * co))
            self.w_row.append(nn.Linear(d[i + 1], f[i] * co, bias=False))
            self.w_col.append(nn.Linear(d[i], f[i] * co, bias=False))
            self.w_glob.append(nn.Linear(g_dim, f[i] * co, bias=False))
            self.b_row.append(nn.Linear(d[i + 1], co))
            self.b_glob.append(nn.Linear(g_dim, co, bias=False))
            _init_sum(self.w_self[i], self.w_row[i], self.w_col[i], self.w_glob[i])
            _init_sum(self.b_row[i], self.b_glob[i])
        self.io_embed = io_embed
        if io_embed:
            self.in_embed = nn.Parameter(torch.randn(layout.n_in, f[0] * ci))
            self.out_embed = nn.Parameter(torch.randn(layout.n_out, f[-1] * ci))
            self.out_bias_embed = nn.Parameter(torch.randn(layout.n_out, ci))

    def forward(self, ws: WeightSpace) -> WeightSpace:
        x = _Folded(ws, self.layout, self.c_in)
        W, b, L = x.W, x.b, self.layout.num_layers
        if self.io_embed:
            W[0] = W[0] + self.in_embed[None, None]
            W[-1] = W[-1] + self.out_embed[None, :, None]
            b[-1] = b[-1] + self.out_bias_embed[None]
        h = []
        for l in range(L + 1):
            parts = [W[l - 1].mean(2), b[l - 1]] if l >= 1 else []
            if l < L:
                parts.append(W[l].mean(1))
            h.append(torch.cat(parts, -1))
        g = torch.cat([w.mean((1, 2)) for w in W] + [x.mean(1) for x in b], -1)
        W_out, b_out = [], []
        for i in range(L):
            W_out.append(self.w_self[i](W[i]) + self.w_row[i](h[i + 1])[:, :, None] + self.w_col[i](h[i])[:, None]
                         + self.w_glob[i](g)[:, None, None])
            b_out.append(self.b_row[i](h[i + 1]) + self.b_glob[i](g)[:, None])
        return _unfold(W_out, b_out, self.layout)

    def extra_repr(self) -> str:
        return f"in_channels={self.c_in}, out_channels={self.c_out}, layers={self.layout.num_layers}, " \
               f"io_embed={self.io_embed}"


class HNPLinear(nn.Module):
    """The HNP-equivariant linear map (hidden neurons permutable; inputs and outputs fixed), needs L >= 2.

    Input/output neurons have identities, so what NP must average over them is kept index by index.
    Neuron features, for hidden neuron j of neuron layer l (1..L-1):
        ``h_l[j] = [W_l[j,:] if l == 1 else W_l[j,*],  b_l[j],  W_{l+1}[:,j] if l+1 == L else W_{l+1}[*,j]]``
    Global vector: ``g = [W_1[*,:], W_L[:,*], b_L[:], W_s[*,*] (1 < s < L), b_s[*] (s < L)]``.
    Layers:
        first (i = 1, input index k fixed):  ``W'_1[j,k] = (B_1 h_1[j])_k + (D_1 g)_k``
        hidden (1 < i < L):                  ``W'_i[j,k] = A_i W_i[j,k] + B_i h_i[j] + C_i h_{i-1}[k] + D_i g``
        last (i = L, output index j fixed):  ``W'_L[j,k] = (C_L h_{L-1}[k])_j + (D_L g)_j``
        biases: hidden ``b'_i[j] = E_i h_i[j] + F_i g``; output ``b'_L[j] = (F_L g)_j``
    (plus one learned constant per output channel and position). Compared with the authors' code this drops
    terms that are linear combinations of kept ones (e.g. W_1[*,*] beside W_1[*,:], and their redundant
    per-term biases) and gives W'_L also b_{L-1}[k], which is equivariant too; so parameter counts differ
    slightly from theirs at equal width.
    """

    def __init__(self, layout: NFNLayout, in_channels: int, out_channels: int):
        super().__init__()
        L = layout.num_layers
        if L < 2:
            raise ValueError("HNP needs at least one hidden neuron layer (two weight layers)")
        self.layout, self.c_in, self.c_out = layout, in_channels, out_channels
        f, ci, co, n = layout.filter_sizes, in_channels, out_channels, layout.neuron_counts
        n0, nL = n[0], n[-1]

        def dim(l):  # neuron-feature width of hidden neuron layer l
            return (f[l - 1] * ci * (n0 if l == 1 else 1)) + ci + f[l] * ci * (nL if l + 1 == L else 1)

        g_dim = n0 * f[0] * ci + nL * f[-1] * ci + nL * ci + sum(f[1:-1]) * ci + (L - 1) * ci
        self.w_self, self.w_row, self.w_col, self.w_glob = (nn.ModuleDict() for _ in range(4))
        self.b_row, self.b_glob = nn.ModuleDict(), nn.ModuleDict()
        for i in range(L):
            key, fo = str(i), f[i] * co
            if i == 0:
                self.w_row[key] = nn.Linear(dim(1), n0 * fo)
                self.w_glob[key] = nn.Linear(g_dim, n0 * fo, bias=False)
                _init_sum(self.w_row[key], self.w_glob[key])
            elif i == L - 1:
                self.w_col[key] = nn.Linear(dim(L - 1), nL * fo)
                self.w_glob[key] = nn.Linear(g_dim, nL * fo, bias=False)
                _init_sum(self.w_col[key], self.w_glob[key])
            else:
                self.w_self[key] = nn.Linear(f[i] * ci, fo)
                self.w_row[key] = nn.Linear(dim(i + 1), fo, bias=False)
                self.w_col[key] = nn.Linear(dim(i), fo, bias=False)
                self.w_glob[key] = nn.Linear(g_dim, fo, bias=False)
                _init_sum(self.w_self[key], self.w_row[key], self.w_col[key], self.w_glob[key])
            if i < L - 1:
                self.b_row[key] = nn.Linear(dim(i + 1), co)
                self.b_glob[key] = nn.Linear(g_dim, co, bias=False)
                _init_sum(self.b_row[key], self.b_glob[key])
            else:
                self.b_glob[key] = nn.Linear(g_dim, nL * co)
                _init_sum(self.b_glob[key])

    def forward(self, ws: WeightSpace) -> WeightSpace:
        x = _Folded(ws, self.layout, self.c_in)
        W, b, L = x.W, x.b, self.layout.num_layers
        B = W[0].shape[0]
        h = [None]
        for l in range(1, L):
            w_in = W[l - 1].flatten(2) if l == 1 else W[l - 1].mean(2)  # (B, n_l, n_0 f c) or (B, n_l, f c)
            w_out = W[l].transpose(1, 2).flatten(2) if l + 1 == L else W[l].mean(1)
            h.append(torch.cat([w_in, b[l - 1], w_out], -1))
        g = torch.cat([W[0].mean(1).flatten(1), W[-1].mean(2).flatten(1), b[-1].flatten(1)]
                      + [W[s].mean((1, 2)) for s in range(1, L - 1)] + [b[s].mean(1) for s in range(L - 1)], -1)
        W_out, b_out = [], []
        for i in range(L):
            key, n_rows, n_cols = str(i), W[i].shape[1], W[i].shape[2]
            if i == 0:
                z = self.w_row[key](h[1]).reshape(B, n_rows, n_cols, -1)
                z = z + self.w_glob[key](g).reshape(B, 1, n_cols, -1)
            elif i == L - 1:
                z = self.w_col[key](h[L - 1]).reshape(B, n_cols, n_rows, -1).transpose(1, 2)
                z = z + self.w_glob[key](g).reshape(B, n_rows, 1, -1)
            else:
                z = (self.w_self[key](W[i]) + self.w_row[key](h[i + 1])[:, :, None]
                     + self.w_col[key](h[i])[:, None] + self.w_glob[key](g)[:, None, None])
            W_out.append(z)
            if i < L - 1:
                b_out.append(self.b_row[key](h[i + 1]) + self.b_glob[key](g)[:, None])
            else:
                b_out.append(self.b_glob[key](g).reshape(B, n_rows, -1))
        return _unfold(W_out, b_out, self.layout)

    def extra_repr(self) -> str:
        return f"in_channels={self.c_in}, out_channels={self.c_out}, layers={self.layout.num_layers}"


class WeightSpaceReLU(nn.Module):
    """A pointwise nonlinearity on every weight and bias feature (equivariant to any neuron permutation)."""

    def __init__(self, act: nn.Module | None = None):
        super().__init__()
        self.act = act if act is not None else nn.ReLU()

    def forward(self, ws: WeightSpace) -> WeightSpace:
        return ws.map(self.act)


class FourierFeatures(nn.Module):
    """Random Fourier features of each weight/bias entry's channel vector: c -> 2m channels (pointwise).

    NFN's INR-classification models encode raw weights this way (``mapping_size`` 128, ``scale`` 10).
    """

    def __init__(self, in_channels: int = 1, mapping_size: int = 128, scale: float = 10.0):
        super().__init__()
        self.out_channels = 2 * mapping_size
        self.register_buffer("freqs", torch.randn(in_channels, mapping_size) * scale)

    def _encode(self, x: Tensor) -> Tensor:
        z = 2 * math.pi * (x.movedim(1, -1) @ self.freqs)
        return torch.cat([z.sin(), z.cos()], -1).movedim(-1, 1)

    def forward(self, ws: WeightSpace) -> WeightSpace:
        return ws.map(self._encode)


# ----------------------------------------------------------------------------------------------------------------
# invariant pooling


class NPPool(nn.Module):
    """NP-invariant pooling: per layer the mean of W_i over (rows, cols) and of b_i; kernels stay features.

    (B, c, ...) weight space -> (B, c * sum_i (f_i + 1)).
    """

    def __init__(self, layout: NFNLayout):
        super().__init__()
        self.layout = layout

    @staticmethod
    def out_features(layout: NFNLayout, channels: int) -> int:
        return channels * sum(f + 1 for f in layout.filter_sizes)

    def forward(self, ws: WeightSpace) -> Tensor:
        x = _Folded(ws, self.layout, ws.channels)
        return torch.cat([w.mean((1, 2)) for w in x.W] + [b.mean(1) for b in x.b], -1)


class HNPPool(nn.Module):
    """HNP-invariant pooling: means over hidden-neuron axes only, input/output positions kept.

    W_1 -> mean over its rows (one entry per input neuron); W_L -> mean over its columns (one per output
    neuron); b_L kept whole; other layers' W_i, b_i -> full means. Needs L >= 2 (one layer: use NPPool).
    """

    def __init__(self, layout: NFNLayout):
        super().__init__()
        if layout.num_layers < 2:
            raise ValueError("HNP pooling needs at least two layers")
        self.layout = layout

    @staticmethod
    def out_features(layout: NFNLayout, channels: int) -> int:
        f, n0, nL = layout.filter_sizes, layout.n_in, layout.n_out
        return channels * (n0 * f[0] + nL * f[-1] + nL + sum(f[1:-1]) + (layout.num_layers - 1))

    def forward(self, ws: WeightSpace) -> Tensor:
        x = _Folded(ws, self.layout, ws.channels)
        W, b = x.W, x.b
        return torch.cat([W[0].mean(1).flatten(1), W[-1].mean(2).flatten(1), b[-1].flatten(1)]
                         + [w.mean((1, 2)) for w in W[1:-1]] + [v.mean(1) for v in b[:-1]], -1)


# ----------------------------------------------------------------------------------------------------------------
# the invariant encoder


class NFNEncoder(nn.Module):
    """NFN's invariant network: [Fourier features] -> (equivariant layer -> ReLU) x len(channels) -> invariant
    pool -> MLP -> (B, out_dim).

    ``forward(params)`` takes the stacked parameter dict (``StateDictSet.params`` rows; extra keys ignored) or
    a :class:`WeightSpace`; it does not take stream batches.

    ``mode`` (:class:`NFNMode` or its value): ``"np"`` = NPLinear layers with input/output embeddings (the
    paper's NP-PosEmb), ``"hnp"`` = HNPLinear layers. ``pool`` (the same): ``"hnp"`` (default; keeps input/output
    positions, as in the authors' generalization-prediction configs for both modes) or ``"np"``; the encoder is
    invariant to hidden-neuron permutations either way. Defaults follow the paper's CNN-zoo generalization model
    (channels 16, 16, 5; MLP head 1000 wide, 2 hidden layers); its INR classifier uses ``channels=(512,)*3``,
    ``fourier=(128, 10.0)``, ``dropout=0.5``.

    ``set_normalization(params)`` stores per-layer scalar mean/std of weights and biases (from a training
    set) and standardises inputs with them -- scalars per tensor, so the symmetry is kept.
    """

    def __init__(self, layout: NFNLayout, mode: NFNMode | str = NFNMode.HNP, channels: Sequence[int] = (16, 16, 5),
                 out_dim: int = 64, head_hidden: int = 1000, head_layers: int = 2, pool: NFNMode | str = NFNMode.HNP,
                 fourier: tuple[int, float] | None = None, dropout: float = 0.0):
        super().__init__()
        mode, pool = NFNMode.parse(mode, "NFN mode"), NFNMode.parse(pool, "NFN pool")
        self.layout, self.mode, self.pool_mode, self.out_dim = layout, mode, pool, out_dim
        layers: list[nn.Module] = []
        c = 1
        if fourier is not None:
            enc = FourierFeatures(1, int(fourier[0]), float(fourier[1]))
            layers.append(enc)
            c = enc.out_channels
        for width in channels:
            layers.append(mode.linear(layout, c, width))
            layers.append(WeightSpaceReLU())
            c = width
        self.equivariant = nn.Sequential(*layers)
        pool_cls = HNPPool if pool is NFNMode.HNP else NPPool
        self.pool = pool_cls(layout)
        d = pool_cls.out_features(layout, c)
        head: list[nn.Module] = []
        for _ in range(head_layers):
            head += [nn.Linear(d, head_hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            d = head_hidden
        head.append(nn.Linear(d, out_dim))
        self.head = nn.Sequential(*head)
        L = layout.num_layers
        self.register_buffer("norm_stats", torch.tensor([[0.0, 1.0, 0.0, 1.0]] * L))  # w mean, w std, b mean, b std

    @torch.no_grad()
    def set_normalization(self, params: Mapping[str, Tensor]) -> None:
        rows = []
        for wk, bk in zip(self.layout.weight_keys, self.layout.bias_keys):
            w, b = params[wk].double(), params[bk].double()
            ws, bs = w.std().item(), b.std().item()
            rows.append([w.mean().item(), ws if ws > 1e-8 else 1.0, b.mean().item(), bs if bs > 1e-8 else 1.0])
        self.norm_stats.copy_(torch.tensor(rows, dtype=self.norm_stats.dtype))

    def weight_space(self, params: Mapping[str, Tensor] | WeightSpace) -> WeightSpace:
        ws = params if isinstance(params, WeightSpace) else self.layout.to_weight_space(params)
        dev = self.norm_stats.device
        s = self.norm_stats
        return WeightSpace([(w.to(dev) - s[i, 0]) / s[i, 1] for i, w in enumerate(ws.weights)],
                           [(b.to(dev) - s[i, 2]) / s[i, 3] for i, b in enumerate(ws.biases)])

    def features(self, params: Mapping[str, Tensor] | WeightSpace) -> Tensor:
        """The invariant pooled vector, before the MLP: (B, pool width)."""
        return self.pool(self.equivariant(self.weight_space(params)))

    def forward(self, params: Mapping[str, Tensor] | WeightSpace) -> Tensor:
        return self.head(self.features(params))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def nfn_parameter_count(layout: NFNLayout, mode: NFNMode | str, width: int, depth: int = 3, **kwargs) -> int:
    """Trainable parameters of ``NFNEncoder(layout, mode, channels=(width,) * depth, **kwargs)``."""
    return count_parameters(NFNEncoder(layout, mode, channels=(width,) * depth, **kwargs))
