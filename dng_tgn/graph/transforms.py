"""What happens to a layer's activations before the next layer reads them.

The event stream stores weights on edges and biases on nodes; activation functions, pooling and the
like carry no parameters, so they live here, attached to the edge group that consumes the activations.
They are needed only to *execute* a stream (``dng_tgn.graph.replay``) and to show it to a person; the
encoder never sees them (the paper's node features are RFFs of biases).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F


class Transform:
    """A parameter-free map on activations; subclasses are small frozen dataclasses.

    ``pointwise`` transforms act on each scalar alone, so they commute with reshapes (they may follow a
    flatten); the others (pooling) need the feature-map layout.
    """

    pointwise: ClassVar[bool] = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __str__(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Elementwise(Transform):
    """A named pointwise nonlinearity; ``fn`` is a torch function so replay is exact.

    ``options`` are keyword arguments of ``fn`` as ``(name, value)`` pairs, e.g. ELU's ``alpha``.
    """

    name: str
    fn: object
    options: tuple = ()

    def __call__(self, x):
        return self.fn(x, **dict(self.options))

    def __str__(self):
        return self.name + (f"({', '.join(f'{k}={v!r}' for k, v in self.options)})" if self.options else "")


@dataclass(frozen=True)
class Scale(Transform):
    factor: float

    def __call__(self, x):
        return x * self.factor

    def __str__(self):
        return f"×{self.factor:g}"


@dataclass(frozen=True)
class Sine(Transform):
    """sin(w0·x): SIREN's w0 stays here, outside the weights."""

    w0: float = 30.0

    def __call__(self, x):
        return torch.sin(self.w0 * x)

    def __str__(self):
        return f"sin({self.w0:g}·x)"


@dataclass(frozen=True)
class LeakyReLU(Transform):
    slope: float = 0.01

    def __call__(self, x):
        return F.leaky_relu(x, self.slope)


@dataclass(frozen=True)
class GlobalAvgPool(Transform):
    """(B, C, H, W) -> (B, C): each channel node keeps one scalar."""

    pointwise: ClassVar[bool] = False

    def __call__(self, x):
        return x.mean(dim=tuple(range(2, x.dim())))


@dataclass(frozen=True)
class Pool2d(Transform):
    """Per-channel spatial pooling: it changes feature-map size, never the node set."""

    pointwise: ClassVar[bool] = False

    op: object  # F.max_pool2d or F.avg_pool2d
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    options: tuple = ()  # further keyword arguments of ``op`` as (name, value) pairs: ceil_mode, dilation, ...

    def __call__(self, x):
        return self.op(x, self.kernel_size, self.stride, self.padding, **dict(self.options))

    def __str__(self):
        return f"{self.op.__name__}{self.kernel_size}"


@dataclass(frozen=True)
class Reshape(Transform):
    """``x.reshape(batch, *shape)``: e.g. a flattened map the network returns as it is."""

    pointwise: ClassVar[bool] = False

    shape: tuple

    def __call__(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def __str__(self):
        return f"reshape{self.shape}"


@dataclass(frozen=True)
class Unsqueeze(Transform):
    """(B, C, L) -> (B, C, L, 1): 1-d feature maps run as one-column 2-d maps (exact for Conv1d and 1-d pools)."""

    pointwise: ClassVar[bool] = False

    def __call__(self, x):
        return x.unsqueeze(-1)


RELU = Elementwise("relu", torch.relu)
TANH = Elementwise("tanh", torch.tanh)
SIGMOID = Elementwise("sigmoid", torch.sigmoid)
GELU = Elementwise("gelu", F.gelu)
ELU = Elementwise("elu", F.elu)
SILU = Elementwise("silu", F.silu)
SOFTPLUS = Elementwise("softplus", F.softplus)


def apply_all(transforms, x: torch.Tensor) -> torch.Tensor:
    for t in transforms:
        x = t(x)
    return x


@dataclass(frozen=True)
class Shift(Transform):
    """x + c, e.g. the +0.5 DWSNets INRs add to their output."""

    offset: float

    def __call__(self, x):
        return x + self.offset

    def __str__(self):
        return f"+{self.offset:g}"


RELU6 = Elementwise("relu6", F.relu6)
HARDSWISH = Elementwise("hardswish", F.hardswish)
HARDSIGMOID = Elementwise("hardsigmoid", F.hardsigmoid)
MISH = Elementwise("mish", F.mish)


@dataclass(frozen=True)
class AdaptiveAvgPool2d(Transform):
    """Per-channel adaptive average pooling to ``output_size`` (a pair; exact: the same torch function)."""

    pointwise: ClassVar[bool] = False

    output_size: tuple

    def __call__(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def __str__(self):
        return f"adaptive_avg_pool{self.output_size}"


@dataclass(frozen=True)
class Permute(Transform):
    """``x.permute(*dims)``: e.g. (B, C, H, W) -> (B, H, W, C) before a channels-last LayerNorm/Linear."""

    pointwise: ClassVar[bool] = False

    dims: tuple

    def __call__(self, x):
        return x.permute(*self.dims)

    def __str__(self):
        return f"permute{self.dims}"


# The non-linearity *types* a node can carry, for encoders that embed them as node features (Kofinas et al.
# 2024; the paper's Table 6 ablation). Types only: sin(30·x) and sin(x), or ELU with another alpha, share an
# entry. "identity": no non-linearity; "other": an Elementwise whose name is not listed here.
NONLINEARITIES = ("identity", "other", "relu", "leaky_relu", "relu6", "elu", "gelu", "silu", "mish", "softplus",
                  "tanh", "sigmoid", "hardswish", "hardsigmoid", "sin")


def nonlinearity_index(transforms) -> int | None:
    """Index in :data:`NONLINEARITIES` of the first non-linearity in ``transforms``; None if there is none.

    Affine maps (Scale, Shift), reshapes and pooling are not non-linearities here: pooling acts across a
    feature map, not on the unit, and max pooling of a ReLU map is still described by the ReLU.
    """
    for t in transforms:
        if isinstance(t, Sine):
            return NONLINEARITIES.index("sin")
        if isinstance(t, LeakyReLU):
            return NONLINEARITIES.index("leaky_relu")
        if isinstance(t, Elementwise):
            return NONLINEARITIES.index(t.name) if t.name in NONLINEARITIES else NONLINEARITIES.index("other")
    return None


@dataclass(frozen=True)
class MapsToTokens(Transform):
    """(B, C, H, W) maps -> (B, H·W, C) tokens: ``x.flatten(2).transpose(1, 2)`` (a ViT's patch embedding), which is
    also torchvision's ``x.reshape(n, C, H·W).permute(0, 2, 1)``; the channel nodes stay the nodes."""

    pointwise: ClassVar[bool] = False

    def __call__(self, x):
        return x.flatten(2).transpose(1, 2)

    def __str__(self):
        return "tokens"


@dataclass(frozen=True)
class SelectToken(Transform):
    """(B, L, C) tokens -> (B, C): token ``index`` (``x[:, 0]``, the class token a ViT's head reads).

    A LayerNorm over the channels commutes with it, so it may follow a pre-norm (``keeps_norm``)."""

    pointwise: ClassVar[bool] = False
    keeps_norm: ClassVar[bool] = True

    index: int

    def __call__(self, x):
        return x[:, self.index]

    def __str__(self):
        return f"token[{self.index}]"
