"""Any MLP/CNN ``nn.Module`` -> event stream, by tracing its forward pass with torch.fx.

Each Linear or Conv2d becomes one timestamp, in the order the forward pass runs them. Parameter-free
steps (activations, pooling, dropout, flatten) ride along as transforms on the edges that read their
output. A sum of a fresh layer output and an earlier activation becomes residual edges
``v_i^l -> v_i^{l+r}`` (App. E.1).

What converts is an explicit allow-list (:data:`MODULES`, :data:`FUNCTIONS`, :data:`METHODS`): each entry
is an :class:`OpSpec` that lists *every* option of the module or function with its default and the
values the converter reproduces exactly. Before anything runs, every node of the traced graph is looked up
and its options are checked; a node that is not listed, or an option outside its supported values, raises
:class:`UnsupportedLayerError` / :class:`UnsupportedOptionError` naming the node, the op and the option.
More ops (or your own modules) are added with :func:`register_module`, :func:`register_function` and
:func:`register_method`; :func:`register_matcher` recognises modules by a predicate (torchvision's LayerNorm2d by
its behaviour, StochasticDepth by its structure) where their type cannot be imported.

Token sequences (ViT, App. E.2): the channel nodes stay the nodes and their activations hold (B, L, C) tokens. A class
token and a learned positional embedding are edges from constant source nodes (present from t^0) into the patch
embedding's timestamp (:class:`~dng_tgn.graph.edge_ops.PrependTokens`, :class:`~dng_tgn.graph.edge_ops.AddPositions`);
``nn.MultiheadAttention`` is built by :func:`~dng_tgn.graph.convert.vit.add_attention`, as SimpleViT's attention.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...errors import ShapeMismatchError, UnsupportedLayerError, UnsupportedOptionError
from ...nets.siren import Sine as SineModule
from .. import transforms as T
from ..builder import StreamBuilder
from ..edge_ops import AddPositions, Conv, Dense, FlattenDense, Gate, GatedMap, Identity, PrependTokens
from ..events import NODE_SLOTS, EdgeKind, EventStream, NodeKind, ParamRef, Pattern, flat_index
from .vit import add_attention


# ================================================================================================
# The allow-list: data, not code paths
# ================================================================================================
class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()  # an option without a default (e.g. a pooling kernel size)


@dataclass(frozen=True)
class Option:
    """One argument of a module or function, beyond its tensor inputs.

    ``check(value)`` says whether the converter reproduces the op exactly with that value (``None``: any
    value); ``supported`` says the same in words for errors and the README table. Module options are
    read with ``read(module)`` (default: the attribute of the same name).
    """

    name: str
    default: object = REQUIRED
    check: Callable[[object], bool] | None = None
    supported: str = "any"
    read: Callable[[nn.Module], object] | None = None
    example: object = REQUIRED  # a supported value, where the default is not one (tests use it)

    def allows(self, value) -> bool:
        return self.check is None or bool(self.check(value))

    def supported_example(self):
        """A value that converts: ``example``, else the default if it converts, else 1."""
        if self.example is not REQUIRED:
            return self.example
        return self.default if self.default is not REQUIRED and self.allows(self.default) else 1


def any_of(name: str, default=REQUIRED, read=None) -> Option:
    return Option(name, default, None, "any", read)


def only(name: str, *values, default=REQUIRED, read=None) -> Option:
    """An option that converts only for the listed values (compared with ==, so 1 == 1.0 == True)."""
    return Option(name, default, lambda v: any(_same(v, a) for a in values), " or ".join(repr(v) for v in values), read, values[0])


def where(name: str, check: Callable[[object], bool], supported: str, default=REQUIRED, read=None, example=REQUIRED) -> Option:
    return Option(name, default, check, supported, read, example)


def _same(v, a) -> bool:
    """Option values equal as the op sees them: (1, 1) == [1, 1], 1 == 1.0, but None is only None."""
    if isinstance(v, (tuple, list)) or isinstance(a, (tuple, list)):
        return (isinstance(v, (tuple, list)) and isinstance(a, (tuple, list)) and len(v) == len(a)
                and all(_same(x, y) for x, y in zip(v, a)))
    if v is None or a is None or isinstance(v, str) or isinstance(a, str):
        return v is a or (isinstance(v, str) and v == a)
    return v == a


@dataclass(frozen=True)
class OpSpec:
    """How one module type, function or tensor method converts.

    Args:
        name: shown in errors and in the README table (``nn.ELU``, ``torch.add``, ``Tensor.mean``).
        convert: ``convert(converter, node, inputs, options) -> activation``; ``inputs`` are the values of
            ``operands`` (activations in flight or Python numbers), ``options`` the checked option values.
        options: every option of the op, in positional order after the operands. A call that passes
            anything not listed here is refused.
        operands: the names of the leading tensor arguments (functions and methods; a module has one input).
        inplace: the op writes into its first operand (``add_``, ``+=``); it then converts only if nothing
            else reads that operand. An option named ``inplace`` set to True counts too.
        note: one line for the README table.
        constraint: for rules that join options, ``constraint(options)`` returns ``None`` or
            ``(option, supported)`` naming the option that breaks it (e.g. Conv2d's 'same' padding).
        call_options: a module's call arguments beyond its operands (``nn.MultiheadAttention``'s ``need_weights``),
            checked like ``options``; ``operands`` then names its tensor arguments (``query``, ``key``, ``value``).
        tokens: it converts on token sequences (B, L, C) (ViT activations); other ops refuse them by name.
    """

    name: str
    convert: Callable
    options: tuple[Option, ...] = ()
    operands: tuple[str, ...] = ("input",)
    inplace: bool = False
    note: str = ""
    constraint: Callable[[dict], tuple[str, str] | None] | None = None
    varargs: bool = False  # trailing positional arguments pack into the last option (x.permute(0, 2, 3, 1))
    call_options: tuple[Option, ...] = ()
    tokens: bool = False


MODULES: dict[type, OpSpec] = {}
FUNCTIONS: dict[object, OpSpec] = {}  # keyed by the callable (torch.relu, F.elu, operator.add, ...)
METHODS: dict[object, OpSpec] = {}  # keyed by the torch.Tensor attribute (torch.Tensor.relu, ...)

# Modules that are refused, with a hint that says what to do instead.
REFUSED_HINTS: dict[type, str] = {
    nn.BatchNorm1d: "fold it into the preceding layer first: to_event_stream(model.eval(), fold_batchnorm=True)",
    nn.BatchNorm2d: "fold it into the preceding layer first: to_event_stream(model.eval(), fold_batchnorm=True)",
    nn.LSTM: "recurrent layers are not supported (one timestamp per forward step of a feed-forward network)",
    nn.GRU: "recurrent layers are not supported (one timestamp per forward step of a feed-forward network)",
    nn.RNN: "recurrent layers are not supported (one timestamp per forward step of a feed-forward network)",
    nn.Embedding: "embedding lookups are not supported; convert the network after the embedding",
    nn.ConvTranspose2d: "transposed convolutions are not supported; Conv2d is",
    nn.ConvTranspose1d: "transposed convolutions are not supported",
    nn.Conv3d: "3-d convolutions are not supported; Conv2d is",
}


def register_module(cls: type, spec: OpSpec) -> None:
    """Allow ``cls`` (matched by exact type; it is traced as one leaf) to convert as ``spec`` says."""
    MODULES[cls] = spec


def register_function(fn, spec: OpSpec) -> None:
    FUNCTIONS[fn] = spec


def register_method(method, spec: OpSpec) -> None:
    """``method``: the ``torch.Tensor`` attribute, e.g. ``torch.Tensor.relu``."""
    METHODS[method] = spec


# -- converters shared by many entries -------------------------------------------------------------
def pointwise(make: Callable[[dict], T.Transform]) -> Callable:
    """A converter for a parameter-free op that becomes the transform ``make(options)``."""

    def convert(cv: "_Converter", node, xs, opts):
        return cv._then(cv._activation(xs[0], node), make(opts), node)

    return convert


def _pass_through(cv, node, xs, opts):
    return cv._activation(xs[0], node)


def _elementwise(name, fn, constant, opts: dict, defaults: dict):
    """``constant`` when every option has its default (the streams stay as they were), else fn with options."""
    changed = tuple((k, opts[k]) for k in defaults if not _same(opts[k], defaults[k]))
    return constant if not changed else T.Elementwise(name, fn, changed)


def _pair(v) -> tuple[int, int]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _is_int_or_pair(v) -> bool:
    if isinstance(v, (tuple, list)):
        return len(v) == 2 and all(isinstance(a, int) for a in v)
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_INT_OR_PAIR = "an int or a pair of ints"
_INPLACE = only("inplace", False, True, default=False)


# -- activations ---------------------------------------------------------------------------------
def _relu(o):
    return T.RELU


def _elu(o):
    return _elementwise("elu", F.elu, T.ELU, {"alpha": o["alpha"]}, {"alpha": 1.0})


def _gelu(o):
    return _elementwise("gelu", F.gelu, T.GELU, {"approximate": o["approximate"]}, {"approximate": "none"})


def _softplus(o):
    return _elementwise("softplus", F.softplus, T.SOFTPLUS, {"beta": o["beta"], "threshold": o["threshold"]}, {"beta": 1.0, "threshold": 20.0})


_SIN = T.Elementwise("sin", torch.sin)


def _float_opt(name, default):
    return where(name, _number, "any number", default)


_ACTIVATIONS = [
    # (module, functions, methods, options, make, note)
    (nn.ReLU, (torch.relu, F.relu), ("relu", "relu_"), (_INPLACE,), _relu, ""),
    (nn.Tanh, (torch.tanh, F.tanh), ("tanh",), (), lambda o: T.TANH, ""),
    (nn.Sigmoid, (torch.sigmoid, F.sigmoid), ("sigmoid",), (), lambda o: T.SIGMOID, ""),
    (nn.GELU, (F.gelu,), (), (only("approximate", "none", "tanh", default="none"),), _gelu, ""),
    (nn.ELU, (F.elu,), (), (_float_opt("alpha", 1.0), _INPLACE), _elu, ""),
    (nn.SiLU, (F.silu,), (), (_INPLACE,), lambda o: T.SILU, ""),
    (nn.Softplus, (F.softplus,), (), (_float_opt("beta", 1.0), _float_opt("threshold", 20.0)), _softplus, ""),
    (nn.LeakyReLU, (F.leaky_relu,), (), (_float_opt("negative_slope", 0.01), _INPLACE), lambda o: T.LeakyReLU(float(o["negative_slope"])), ""),
    (nn.ReLU6, (F.relu6,), (), (_INPLACE,), lambda o: T.RELU6, ""),
    (nn.Hardswish, (F.hardswish,), (), (_INPLACE,), lambda o: T.HARDSWISH, ""),
    (nn.Hardsigmoid, (F.hardsigmoid,), (), (_INPLACE,), lambda o: T.HARDSIGMOID, ""),
    (nn.Mish, (F.mish,), (), (_INPLACE,), lambda o: T.MISH, ""),
    (SineModule, (), (), (_float_opt("w0", 30.0),), lambda o: T.Sine(float(o["w0"])), "dng_tgn.nets.siren.Sine: sin(w0·x)"),
]


def _without_inplace(options, fn):
    """torch.relu/torch.tanh/... take no ``inplace``; F.relu/F.elu/... do."""
    if fn in (torch.relu, torch.tanh, torch.sigmoid, F.tanh, F.sigmoid, F.gelu, F.softplus):
        return tuple(o for o in options if o.name != "inplace")
    return options


def _fn_name(fn) -> str:
    name = getattr(fn, "__name__", None)
    if name is None:
        return str(fn)
    for prefix, mod in (("F", F), ("torch", torch), ("operator", operator)):
        if getattr(mod, name, None) is fn:
            return f"{prefix}.{name}"
    return f"{getattr(fn, '__module__', None) or ''}.{name}".lstrip(".")


for _mod, _fns, _meths, _opts, _make, _note in _ACTIVATIONS:
    register_module(_mod, OpSpec(f"nn.{_mod.__name__}" if _mod is not SineModule else "Sine", pointwise(_make), _opts, note=_note,
                                 tokens=True))
    for _fn in _fns:
        register_function(_fn, OpSpec(_fn_name(_fn), pointwise(_make), _without_inplace(_opts, _fn), tokens=True))
    for _m in _meths:
        register_method(getattr(torch.Tensor, _m), OpSpec(f"Tensor.{_m}", pointwise(_make), inplace=_m.endswith("_"), tokens=True))
register_function(torch.sin, OpSpec("torch.sin", pointwise(lambda o: _SIN), tokens=True))
register_method(torch.Tensor.sin, OpSpec("Tensor.sin", pointwise(lambda o: _SIN), tokens=True))

# -- no-ops (eval-mode forward) ------------------------------------------------------------------
register_module(nn.Identity, OpSpec("nn.Identity", _pass_through, tokens=True))
for _drop in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout):
    register_module(_drop, OpSpec(f"nn.{_drop.__name__}", _pass_through, (any_of("p", 0.5), _INPLACE),
                                  note="identity: the eval-mode forward", tokens=_drop is nn.Dropout))
for _fdrop in (F.dropout, F.dropout2d):
    register_function(_fdrop, OpSpec(
        f"F.{_fdrop.__name__}", _pass_through,
        (any_of("p", 0.5), only("training", False, default=True), _INPLACE),
        note="identity; training=False only (traced with the model in eval mode, so training=self.training works)",
        tokens=_fdrop is F.dropout,
    ))


# -- flatten, pooling ------------------------------------------------------------------------------
def _flatten_conv(cv, node, xs, opts):
    return cv._flatten(node, cv._activation(xs[0], node))


_START_1 = only("start_dim", 1, default=0)
_END_LAST = only("end_dim", -1, default=-1)
register_module(nn.Flatten, OpSpec("nn.Flatten", _flatten_conv, (only("start_dim", 1, default=1), _END_LAST)))
register_function(torch.flatten, OpSpec("torch.flatten", _flatten_conv, (_START_1, _END_LAST)))
register_method(torch.Tensor.flatten, OpSpec("Tensor.flatten", _flatten_conv, (_START_1, _END_LAST)))


def _global_pool(dims):
    def convert(cv, node, xs, opts):
        return cv._global_pool(cv._activation(xs[0], node), node, keepdim=True, dims=dims)

    return convert


def _adaptive2d(cv, node, xs, opts):
    size = opts["output_size"]
    if _same(size, 1) or _same(size, (1, 1)):
        return _global_pool(2)(cv, node, xs, opts)  # (B, C, 1, 1): each channel node keeps one scalar
    x = cv._maps(cv._activation(xs[0], node), node, 2)
    return cv._then(x, T.AdaptiveAvgPool2d(_pair(size)), node)


_ADAPTIVE = where("output_size", lambda v: _is_int_or_pair(v) and all(a >= 1 for a in _pair(v)), "a positive int or pair of ints")
_ADAPTIVE_NOTE = "any output size (1: global pooling, each channel node keeps one scalar)"
register_module(nn.AdaptiveAvgPool2d, OpSpec("nn.AdaptiveAvgPool2d", _adaptive2d, (_ADAPTIVE,), note=_ADAPTIVE_NOTE))
register_function(F.adaptive_avg_pool2d, OpSpec("F.adaptive_avg_pool2d", _adaptive2d, (_ADAPTIVE,), note=_ADAPTIVE_NOTE))
_GLOBAL1 = only("output_size", 1, (1,))
register_module(nn.AdaptiveAvgPool1d, OpSpec("nn.AdaptiveAvgPool1d", _global_pool(1), (_GLOBAL1,), note="global average pooling only"))
register_function(F.adaptive_avg_pool1d, OpSpec("F.adaptive_avg_pool1d", _global_pool(1), (_GLOBAL1,), note="global average pooling only"))


def _mean_dims(d) -> int | None:
    """1 or 2 when ``dim`` names the spatial axes of (B, C, L) or (B, C, H, W) maps, else None."""
    d = tuple(d) if isinstance(d, (tuple, list)) else (d,)
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in d):
        return None
    if len(d) == 2 and sorted(a % 4 for a in d) == [2, 3]:
        return 2
    if len(d) == 1 and d[0] % 3 == 2:
        return 1
    return None


def _mean_conv(cv, node, xs, opts):
    x = cv._activation(xs[0], node)
    return cv._global_pool(x, node, keepdim=bool(opts["keepdim"]), dims=_mean_dims(opts["dim"]))


_SPATIAL_DIMS = where(
    "dim", lambda d: _mean_dims(d) is not None,
    "(2, 3) or (-2, -1) on (B, C, H, W) maps; 2 or -1 on (B, C, L) maps", example=(2, 3),
)
_MEAN_OPTS = (_SPATIAL_DIMS, only("keepdim", False, True, default=False), only("dtype", None, default=None))
register_function(torch.mean, OpSpec("torch.mean", _mean_conv, _MEAN_OPTS, note="over the spatial axes of feature maps"))
register_method(torch.Tensor.mean, OpSpec("Tensor.mean", _mean_conv, (replace(_SPATIAL_DIMS, default=None),) + _MEAN_OPTS[1:],
                                         note="over the spatial axes of feature maps"))


def _pool(op, names, dims=2):
    """A 2-d pool; a 1-d pool (``dims=1``) runs as the 2-d pool with a (k, 1) window on (B, C, L, 1) maps."""
    defaults = {"dilation": 1, "ceil_mode": False, "count_include_pad": True, "divisor_override": None}
    pair = _pair if dims == 2 else (lambda v: (_single(v), 1))
    pad = _pair if dims == 2 else (lambda v: (_single(v), 0))

    def convert(cv, node, xs, opts):
        x = cv._activation(xs[0], node)
        x = cv._maps(x, node, dims)
        k = pair(opts["kernel_size"])
        stride = pair(opts["stride"]) if opts["stride"] not in (None, (), []) else k
        # options at their defaults are left out, so streams of default pools stay as they were
        extra = tuple((n, pair(opts[n]) if n == "dilation" and dims == 1 else opts[n])
                      for n in names if not _same(opts[n], defaults[n]))
        return cv._then(x, T.Pool2d(op, k, stride, pad(opts["padding"]), extra), node)

    return convert


def _single(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _is_int_or_single(v) -> bool:
    if isinstance(v, (tuple, list)):
        return len(v) == 1 and isinstance(v[0], int)
    return isinstance(v, int) and not isinstance(v, bool)


def _pool_options(is_size, size_desc: str) -> tuple[tuple, tuple]:
    """The (max-pool, avg-pool) option specs of pooling whose sizes pass ``is_size`` (1-d or 2-d)."""
    common = (
        where("kernel_size", is_size, size_desc),
        where("stride", lambda v: v is None or v in ((), []) or is_size(v), f"None or {size_desc}", default=None),
        where("padding", is_size, size_desc, default=0),
    )
    max_opts = common + (
        where("dilation", is_size, size_desc, default=1),
        only("ceil_mode", False, True, default=False),
        only("return_indices", False, default=False),
    )
    avg_opts = common + (only("ceil_mode", False, True, default=False), only("count_include_pad", False, True, default=True))
    return max_opts, avg_opts


_MAX_OPTS, _AVG_OPTS = _pool_options(_is_int_or_pair, _INT_OR_PAIR)
_AVG_OPTS += (
    where("divisor_override", lambda v: v is None or (isinstance(v, int) and v > 0), "None or a positive int", default=None),
)
register_module(nn.MaxPool2d, OpSpec("nn.MaxPool2d", _pool(F.max_pool2d, ("dilation", "ceil_mode")), _MAX_OPTS))
register_module(nn.AvgPool2d, OpSpec("nn.AvgPool2d", _pool(F.avg_pool2d, ("ceil_mode", "count_include_pad", "divisor_override")), _AVG_OPTS))
# the specs list options in F.max_pool2d's positional order (ceil_mode before return_indices)
register_function(F.max_pool2d, OpSpec("F.max_pool2d", _pool(F.max_pool2d, ("dilation", "ceil_mode")), _MAX_OPTS))
register_function(F.avg_pool2d, OpSpec("F.avg_pool2d", _pool(F.avg_pool2d, ("ceil_mode", "count_include_pad", "divisor_override")), _AVG_OPTS))
_INT = "an int"
_MAX1_OPTS, _AVG1_OPTS = _pool_options(_is_int_or_single, _INT)
_MAX1 = _pool(F.max_pool2d, ("dilation", "ceil_mode"), dims=1)
_AVG1 = _pool(F.avg_pool2d, ("ceil_mode", "count_include_pad"), dims=1)
register_module(nn.MaxPool1d, OpSpec("nn.MaxPool1d", _MAX1, _MAX1_OPTS))
register_module(nn.AvgPool1d, OpSpec("nn.AvgPool1d", _AVG1, _AVG1_OPTS))
register_function(F.max_pool1d, OpSpec("F.max_pool1d", _MAX1, _MAX1_OPTS))
register_function(F.avg_pool1d, OpSpec("F.avg_pool1d", _AVG1, _AVG1_OPTS))


# -- layers with weights -----------------------------------------------------------------------------
def _linear_conv(cv, node, xs, opts):
    m = cv.modules[node.target]
    return cv._linear(node, m.weight, m.bias, cv._activation(xs[0], node))


def _conv2d_conv(cv, node, xs, opts):
    return cv._conv(node, cv.modules[node.target], cv._activation(xs[0], node), dims=2)


def _conv1d_conv(cv, node, xs, opts):
    return cv._conv(node, cv.modules[node.target], cv._activation(xs[0], node), dims=1)


def _same_padding_ok(m) -> bool:
    if m.padding != "same":
        return True
    return all((d * (k - 1)) % 2 == 0 for d, k in zip(m.dilation, m.kernel_size))


def _conv_constraint(opts) -> tuple[str, str] | None:
    """'same' padding converts to a symmetric padding only when every dilated kernel extent is odd."""
    if opts["padding"] != "same":
        return None
    ks = opts["kernel_size"] if isinstance(opts["kernel_size"], (tuple, list)) else (opts["kernel_size"],)
    ds = opts["dilation"] if isinstance(opts["dilation"], (tuple, list)) else (opts["dilation"],) * len(ks)
    if all((d * (k - 1)) % 2 == 0 for d, k in zip(ds, ks)):
        return None
    return "padding", "'same' only with an odd dilated kernel size"


_HAS_BIAS = any_of("bias", True, read=lambda m: m.bias is not None)
register_module(nn.Linear, OpSpec("nn.Linear", _linear_conv, (any_of("in_features"), any_of("out_features"), _HAS_BIAS), tokens=True))
_CONV_OPTS = (
    any_of("in_channels"), any_of("out_channels"), any_of("kernel_size"), any_of("stride", 1),
    where("padding", lambda v: _is_int_or_pair(v) or _is_int_or_single(v) or v in ("valid", "same"),
          "ints, 'valid', or 'same' with an odd (dilated) kernel", 0),
    any_of("dilation", 1), any_of("groups", 1), _HAS_BIAS, only("padding_mode", "zeros", default="zeros"),
)
register_module(nn.Conv2d, OpSpec("nn.Conv2d", _conv2d_conv, _CONV_OPTS, note="'same' padding needs an odd dilated kernel size; "
                                  "groups > 1 (grouped, depthwise): edges only inside each group",
                                  constraint=_conv_constraint))
register_module(nn.Conv1d, OpSpec("nn.Conv1d", _conv1d_conv, _CONV_OPTS, constraint=_conv_constraint,
                                  note="runs as a (k, 1) Conv2d on (B, C, L, 1) maps; 'same' padding needs an odd dilated kernel size"))


# -- arithmetic ------------------------------------------------------------------------------------
def _add_conv(cv, node, xs, opts):
    return cv._add(node, xs[0], xs[1], float(opts.get("alpha", 1)))


def _sub_conv(cv, node, xs, opts):
    return cv._add(node, xs[0], xs[1], -float(opts.get("alpha", 1)))


def _mul_conv(cv, node, xs, opts):
    a, b = xs
    if _is_size(a) and _is_size(b):
        return _int_arith(operator.mul, "operator.mul (*)")(cv, node, xs, opts)  # n_h * n_w: sizes for a reshape
    if isinstance(a, _Param) and isinstance(b, _Activation):
        return cv._layer_scale(node, b, a)
    if isinstance(b, _Param) and isinstance(a, _Activation):
        return cv._layer_scale(node, a, b)
    if isinstance(a, _Activation) and _number(b):
        return cv._then(a, T.Scale(float(b)), node)
    if isinstance(b, _Activation) and _number(a):
        return cv._then(b, T.Scale(float(a)), node)
    if isinstance(a, _Activation) and isinstance(b, _Activation):
        return cv._gate(node, a, b)
    raise UnsupportedLayerError(cv._label(node), node.name, "only an activation times a constant number is supported")


def _is_size(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or v is BATCH


def _div_conv(cv, node, xs, opts):
    a, b = xs
    if isinstance(a, _Activation) and _number(b):
        return cv._then(a, T.Scale(1.0 / float(b)), node)
    raise UnsupportedLayerError(cv._label(node), node.name, "only an activation divided by a constant number is supported")


def _neg_conv(cv, node, xs, opts):
    return cv._then(cv._activation(xs[0], node), T.Scale(-1.0), node)


_ALPHA = where("alpha", _number, "any number", default=1)
_BINARY = ("input", "other")
_NOTES = {
    _add_conv: "activation ± constant number (either side); or a residual: a fresh Linear/Conv2d output ± an earlier "
               "activation (alpha scales the earlier one); tokens + a learned positional embedding (1, L, C) (ViT)",
    _mul_conv: "activation × constant number; a feature map × its per-channel gate (B, C, 1, 1) (squeeze-and-excitation); "
               "or a per-channel parameter × a fresh layer output (layer scale, folded into the layer)",
    _div_conv: "activation ÷ constant number (constant ÷ activation is refused)",
}
_NOTES[_sub_conv] = _NOTES[_add_conv]
for _fn, _name, _conv_fn, _opts, _inplace in (
    (operator.add, "operator.add (+)", _add_conv, (), False),
    (operator.iadd, "operator.iadd (+=)", _add_conv, (), True),
    (torch.add, "torch.add", _add_conv, (_ALPHA,), False),
    (operator.sub, "operator.sub (-)", _sub_conv, (), False),
    (operator.isub, "operator.isub (-=)", _sub_conv, (), True),
    (torch.sub, "torch.sub", _sub_conv, (_ALPHA,), False),
    (operator.mul, "operator.mul (*)", _mul_conv, (), False),
    (operator.imul, "operator.imul (*=)", _mul_conv, (), True),
    (torch.mul, "torch.mul", _mul_conv, (), False),
    (operator.truediv, "operator.truediv (/)", _div_conv, (), False),
    (operator.itruediv, "operator.itruediv (/=)", _div_conv, (), True),
    (torch.div, "torch.div", _div_conv, (only("rounding_mode", None, default=None),), False),
):
    register_function(_fn, OpSpec(_name, _conv_fn, _opts, operands=_BINARY, inplace=_inplace, note=_NOTES[_conv_fn],
                                  tokens=_conv_fn in (_add_conv, _sub_conv)))
for _meth, _conv_fn, _opts in (
    ("add", _add_conv, (_ALPHA,)), ("add_", _add_conv, (_ALPHA,)), ("sub", _sub_conv, (_ALPHA,)), ("sub_", _sub_conv, (_ALPHA,)),
    ("mul", _mul_conv, ()), ("mul_", _mul_conv, ()), ("div", _div_conv, (only("rounding_mode", None, default=None),)),
    ("div_", _div_conv, (only("rounding_mode", None, default=None),)),
):
    register_method(getattr(torch.Tensor, _meth), OpSpec(f"Tensor.{_meth}", _conv_fn, _opts, operands=_BINARY, inplace=_meth.endswith("_"),
                                                         note=_NOTES[_conv_fn], tokens=_conv_fn in (_add_conv, _sub_conv)))
register_function(operator.neg, OpSpec("operator.neg (unary -)", _neg_conv, note="−activation"))
register_function(torch.neg, OpSpec("torch.neg", _neg_conv, note="−activation"))
register_method(torch.Tensor.neg, OpSpec("Tensor.neg", _neg_conv, note="−activation"))


# -- channel unions, selections and relabellings (torch.cat, chunk/split, channel shuffle) ----------------------
def _channel_dim(cv, node, x, dim) -> None:
    """``dim`` must name the channel axis: 1 (or -3 / -1 on (B, C, H, W) maps / (B, C) vectors)."""
    ok = dim == 1 or (dim == -3 and x.spatial and x.dims == 2) or (dim == -1 and not x.spatial and not x.pooled_keepdim)
    if not ok:
        raise UnsupportedOptionError(cv._label(node), cv._position(node), "dim", dim, "the channel axis (1)")


def _cat_conv(cv, node, xs, opts):
    acts = xs[0]
    if not isinstance(acts, (tuple, list)) or not acts:
        raise UnsupportedLayerError(cv._label(node), node.name, "it needs a list of activations")
    if any(isinstance(a, _Param) or (isinstance(a, _Activation) and a.seq is not None) for a in acts):
        return cv._prepend_tokens(node, list(acts), opts["dim"])  # a class token in front of the patch tokens
    chans = []
    for a in acts:
        a = cv._activation(a, node)
        _channel_dim(cv, node, a, opts["dim"])
        if a.flatten_hw is not None or a.unflat is not None or (a.spatial, a.dims, a.pooled_keepdim) != (acts[0].spatial, acts[0].dims, acts[0].pooled_keepdim):
            raise UnsupportedLayerError(cv._label(node), node.name, "it joins activations of different layouts")
        chans += cv._channels(a)
    return cv._select(None, chans)


def _stack_conv(cv, node, xs, opts):
    """torch.stack of maps on a new axis 1 or 2, which a flatten(1, 2) (or view) then merges into channels:
    axis 1 is a concatenation, axis 2 interleaves the channels (the same bookkeeping as a channel shuffle)."""
    acts = xs[0]
    if not isinstance(acts, (tuple, list)) or not acts:
        raise UnsupportedLayerError(cv._label(node), node.name, "it needs a list of activations")
    if not all(isinstance(a, _Activation) and a.spatial and a.dims == 2 for a in acts):
        raise UnsupportedLayerError(cv._label(node), node.name, "it stacks (B, C, H, W) maps only (then flatten(1, 2) merges them into channels)")
    joined = _cat_conv(cv, node, [acts], {"dim": 1})
    n, c = len(acts), len(cv._channels(acts[0]))
    if any(len(cv._channels(a)) != c for a in acts):
        raise ShapeMismatchError(f"'{node.name}' stacks maps with different channel counts")
    return replace(joined, unflat=(n, c, opts["dim"] == 2), fresh=False)


def _split_sizes(cv, node, n: int, sizes) -> list[int]:
    if isinstance(sizes, int):
        return [sizes] * (n // sizes) + ([n % sizes] if n % sizes else [])
    if sum(sizes) != n:
        raise ShapeMismatchError(f"'{node.name}' splits {n} channels into {list(sizes)}")
    return list(sizes)


def _split_at(cv, node, x, sizes):
    x = cv._activation(x, node)
    if x.flatten_hw is not None or x.unflat is not None:
        raise UnsupportedLayerError(cv._label(node), node.name, "it splits channels of feature maps or vectors only")
    n = len(cv._channels(x))
    out, start = [], 0
    for k in _split_sizes(cv, node, n, sizes):
        out.append(cv._select(x, list(range(start, start + k))))
        start += k
    return tuple(out)


def _chunk_conv(cv, node, xs, opts):
    x = cv._activation(xs[0], node)
    _channel_dim(cv, node, x, opts["dim"])
    n = len(cv._channels(x))
    per = -(-n // int(opts["chunks"]))  # torch.chunk: ceil(n / chunks) per chunk
    return _split_at(cv, node, x, per)


def _split_conv(cv, node, xs, opts):
    x = cv._activation(xs[0], node)
    _channel_dim(cv, node, x, opts["dim"])
    return _split_at(cv, node, x, opts["split_size_or_sections"])


def _token_index(v) -> int | None:
    """k for an index ``(:, k)`` (``x[:, k]``), else None."""
    if isinstance(v, tuple) and len(v) == 2 and v[0] == slice(None) and isinstance(v[1], int) and not isinstance(v[1], bool):
        return v[1]
    return None


def _getitem_conv(cv, node, xs, opts):
    seq, index = xs[0], opts["index"]
    if isinstance(seq, _Activation):
        return cv._select_token(node, seq, index)  # x[:, 0]: the class token
    if not isinstance(index, int):
        raise UnsupportedOptionError("operator.getitem ([])", node.name, "index", index, "an int here (x[:, k] on tokens only)")
    if isinstance(seq, tuple) and all(isinstance(a, int) or a is BATCH for a in seq):
        return seq[index]  # one entry of x.size() / x.shape
    if not isinstance(seq, tuple) or not all(isinstance(a, (_Activation, _AttentionWeights)) for a in seq):
        raise UnsupportedLayerError("operator.getitem ([])", node.name,
                                    "indexing converts only on the result of torch.chunk/split; index tensors or shapes are not supported")
    return seq[index]


def _unflatten_conv(cv, node, xs, opts):
    x = cv._activation(xs[0], node)
    sizes = tuple(opts["sizes"])
    if x.unflat is not None or x.flatten_hw is not None or not x.spatial or x.dims != 2:
        raise UnsupportedLayerError(cv._label(node), node.name, "it converts only on (B, C, H, W) maps, as the first step of a channel shuffle")
    n = len(cv._channels(x))
    g, c = sizes
    g, c = (n // c, c) if g == -1 else (g, n // g) if c == -1 else (g, c)
    if g * c != n:
        raise ShapeMismatchError(f"'{node.name}' unflattens {n} channels into {sizes}")
    return replace(x, unflat=(g, c, False), fresh=False)


def _transpose_conv(cv, node, xs, opts):
    x = cv._activation(xs[0], node)
    if x.seq is not None:
        return cv._transpose_tokens(node, x, sorted(d % 3 for d in (opts["dim0"], opts["dim1"])))
    if x.unflat is None or sorted((opts["dim0"], opts["dim1"])) != [1, 2]:
        raise UnsupportedLayerError(cv._label(node), node.name, "transpose converts only as transpose(1, 2) after x.unflatten(1, (g, c)) "
                                    "(a channel shuffle)")
    g, c, t = x.unflat
    return replace(x, unflat=(g, c, not t))


def _shuffle_flatten(cv, node, x):
    """flatten(1, 2) after unflatten(1, (g, c)) [-> transpose(1, 2)]: a relabelling of the channel nodes."""
    g, c, transposed = x.unflat
    base = replace(x, unflat=None)
    if not transposed:
        return base
    order = [i * c + j for j in range(c) for i in range(g)]  # new channel j*g + i is old channel i*c + j
    return cv._select(base, order)


def _flatten12_or_default(conv):
    def convert(cv, node, xs, opts):
        x = cv._activation(xs[0], node)
        if opts["start_dim"] == 2:
            if opts["end_dim"] != -1:
                raise UnsupportedOptionError(cv._label(node), node.name, "end_dim", opts["end_dim"], "-1 with start_dim=2")
            return cv._maps_to_sequence(node, x)
        if x.unflat is not None:
            if (opts["start_dim"], opts["end_dim"]) != (1, 2):
                raise UnsupportedLayerError(cv._label(node), node.name, "after unflatten(1, (g, c)) only flatten(1, 2) converts")
            return _shuffle_flatten(cv, node, x)
        if (opts["start_dim"], opts["end_dim"]) == (1, 2):
            raise UnsupportedOptionError(cv._label(node), node.name, "end_dim", 2, "-1, or 2 right after x.unflatten(1, (g, c))")
        return conv(cv, node, xs, opts)

    return convert


register_function(torch.cat, OpSpec("torch.cat", _cat_conv, (only("dim", 1, -1, -3, default=0),), operands=("tensors",),
                                    note="along channels: the union of the node groups; or [class token(s), tokens] on axis 1 "
                                         "(ViT: the token joins the patch embedding's step)", tokens=True))
register_function(torch.stack, OpSpec("torch.stack", _stack_conv, (only("dim", 1, 2, default=0),), operands=("tensors",),
                                      note="of (B, C, H, W) maps, merged into channels by a flatten(1, 2) or view next"))
register_function(torch.chunk, OpSpec("torch.chunk", _chunk_conv, (where("chunks", lambda v: isinstance(v, int) and v >= 1, "a positive int"),
                                                                    only("dim", 1, -1, -3, default=0)), note="along channels"))
register_method(torch.Tensor.chunk, OpSpec("Tensor.chunk", _chunk_conv, (where("chunks", lambda v: isinstance(v, int) and v >= 1, "a positive int"),
                                                                        only("dim", 1, -1, -3, default=0)), note="along channels"))
_SPLIT = (where("split_size_or_sections", lambda v: (isinstance(v, int) and v >= 1) or (isinstance(v, (tuple, list)) and all(isinstance(a, int) for a in v)),
                "an int or a list of ints"), only("dim", 1, -1, -3, default=0))
register_function(torch.split, OpSpec("torch.split", _split_conv, _SPLIT, operands=("tensor",), note="along channels"))
register_method(torch.Tensor.split, OpSpec("Tensor.split", _split_conv, _SPLIT, note="along channels"))
register_function(operator.getitem, OpSpec("operator.getitem ([])", _getitem_conv, (
    where("index", lambda v: isinstance(v, int) or _token_index(v) is not None, "an int; or (:, k) on batch-first tokens"),),
    note="picks one part of torch.chunk/split or of nn.MultiheadAttention's output; x[:, k] (x[k] seq-first) picks token k "
         "of a token sequence (a ViT's class token)", tokens=True))
register_method(torch.Tensor.unflatten, OpSpec("Tensor.unflatten", _unflatten_conv, (
    only("dim", 1), where("sizes", lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(a, int) for a in v), "(groups, channels per group)")),
    note="channel shuffle only: unflatten(1, (g, c)) -> transpose(1, 2) -> flatten(1, 2) relabels the channel nodes"))
_TRANSPOSE = (where("dim0", lambda v: v in (0, 1, 2, -1, -2), "0, 1, 2, -2 or -1"), where("dim1", lambda v: v in (0, 1, 2, -1, -2), "0, 1, 2, -2 or -1"))
_TRANSPOSE_NOTE = ("channel shuffle (see Tensor.unflatten); (1, 2) from x.flatten(2) to (B, L, C) tokens; (0, 1) between batch-first "
                   "and sequence-first tokens")
register_method(torch.Tensor.transpose, OpSpec("Tensor.transpose", _transpose_conv, _TRANSPOSE, note=_TRANSPOSE_NOTE, tokens=True))
register_function(torch.transpose, OpSpec("torch.transpose", _transpose_conv, _TRANSPOSE, note=_TRANSPOSE_NOTE, tokens=True))
_END_LAST_OR_2 = where("end_dim", lambda v: v in (-1, 2), "-1, or 2 right after x.unflatten(1, (g, c))", default=-1)
_START_1_2 = where("start_dim", lambda v: v in (1, 2), "1; or 2 on (B, C, H, W) maps: (B, C, H·W), then transpose(1, 2) to tokens",
                   default=0, example=1)
register_function(torch.flatten, OpSpec("torch.flatten", _flatten12_or_default(_flatten_conv), (_START_1_2, _END_LAST_OR_2)))
register_method(torch.Tensor.flatten, OpSpec("Tensor.flatten", _flatten12_or_default(_flatten_conv), (_START_1_2, _END_LAST_OR_2)))
register_method(torch.Tensor.contiguous, OpSpec("Tensor.contiguous", _pass_through, tokens=True, options=(only("memory_format", torch.contiguous_format, default=torch.contiguous_format),),
                                                note="identity"))


# -- channels-last blocks (ConvNeXt): permute, LayerNorm over channels, parameters read in forward ----------------
def _permute_conv(cv, node, xs, opts):
    return cv._permute(node, cv._activation(xs[0], node), opts["dims"])


_DIMS = where("dims", lambda v: isinstance(v, (tuple, list)) and all(isinstance(a, int) for a in v),
              "(0, 2, 3, 1) or (0, 3, 1, 2); (0, 2, 1) or (1, 0, 2) on token sequences")
_PERMUTE_NOTE = ("to channels-last (0, 2, 3, 1) and back (0, 3, 1, 2), around LayerNorm/Linear; (B, C, L) -> (B, L, C) tokens "
                 "(0, 2, 1); batch-first <-> sequence-first tokens (1, 0, 2)")
register_method(torch.Tensor.permute, OpSpec("Tensor.permute", _permute_conv, (_DIMS,), varargs=True, note=_PERMUTE_NOTE, tokens=True))
register_function(torch.permute, OpSpec("torch.permute", _permute_conv, (_DIMS,), note=_PERMUTE_NOTE, tokens=True))


def _layernorm_conv(cv, node, xs, opts):
    m = cv.modules[node.target]
    return cv._layer_norm(node, cv._activation(xs[0], node), m.weight, getattr(m, "bias", None), m.eps)


register_module(nn.LayerNorm, OpSpec("nn.LayerNorm", _layernorm_conv, (
    where("normalized_shape", lambda v: isinstance(v, (tuple, list)) and len(v) == 1, "one axis: the channels (or features)", example=(4,)),
    _float_opt("eps", 1e-5), any_of("elementwise_affine", True), any_of("bias", True, read=lambda m: getattr(m, "bias", None) is not None)),
    note="over the channel nodes of a Linear/Conv output (channels-last maps, vectors or tokens): its scale and shift become "
         "node features (norm_in slots); only a Linear (or attention) may read it, and residual sums may read its input",
    tokens=True))


def _param_conv(cv, node, xs, opts):
    target = opts["target"]
    value = cv.model
    for part in target.split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.Tensor):
        raise UnsupportedLayerError(f"attribute '{target}'", node.name, "only tensors may be read from the module")
    return _Param(target, value)


_PARAM_SPEC = OpSpec("tensor attribute", _param_conv, note="a per-channel parameter scaling a fresh layer output (layer scale)")


# -- reshapes that only regroup: x.view(-1, n) / x.reshape(-1, n) is flatten(1) ----------------------------------
def _regroup_conv(cv, node, xs, opts):
    x = cv._activation(xs[0], node)
    sizes = tuple(_concrete(opts["shape"]))
    shape = cv.shapes.get(node.args[0].name) if isinstance(node.args[0], fx.Node) else None
    if (shape is not None and len(sizes) == 3 and sizes[0] == -1 and len(shape) == 4 and x.spatial and x.dims == 2
            and x.unflat is None and sizes[1:].count(-1) <= 1 and sizes[1] in (-1, int(shape[1]))
            and sizes[2] in (-1, int(shape[2]) * int(shape[3]))):
        return cv._maps_to_sequence(node, x)  # (B, C, H, W) -> (B, C, H·W), as x.flatten(2): torchvision's patch embedding
    if shape is not None and len(sizes) >= 4 and sizes[0] == -1 and x.group is not None:
        spatial = tuple(int(d) for d in shape[-2:])
        if x.unflat is None and x.spatial and x.dims == 2 and len(sizes) == 5 and sizes[3:] == spatial:
            g, c = sizes[1], sizes[2]
            return _unflatten_conv(cv, node, [x], {"dim": 1, "sizes": (g, c)})  # (B, g, c, H, W): unflatten(1, (g, c))
        if x.unflat is not None and len(sizes) == 4 and sizes[2:] == spatial and sizes[1] in (-1, x.unflat[0] * x.unflat[1]):
            return _shuffle_flatten(cv, node, x)  # (B, g·c, H, W) after a (transposed) unflatten: the shuffle's relabelling
    shape = cv.shapes.get(node.args[0].name) if isinstance(node.args[0], fx.Node) else None
    if x.group is not None and x.unflat is None and len(sizes) == 2 and sizes[0] == -1:
        if shape is None:
            raise ShapeMismatchError(f"'{node.name}' needs the feature-map size: pass input_shape=(C, H, W)")
        n = 1
        for d in shape[1:]:
            n *= int(d)
        if sizes[1] in (-1, n):
            return cv._flatten(node, x)  # (B, C, ...) -> (B, C·...): exactly flatten(1)
    raise UnsupportedOptionError(cv._label(node), cv._position(node), "shape", sizes,
                                 "(-1, n) with n all of a sample's values: a flatten(1) (other reshapes change which values are channels)")


_SHAPE = where("shape", lambda v: isinstance(v, (tuple, list)) and all(isinstance(a, int) for a in v),
                "(-1, n): a flatten(1); or a channel shuffle's (B, g, c, H, W) -> (B, -1, H, W); or (B, C, H·W) on maps (as "
                "flatten(2))", example=(-1, 4))
for _m in ("view", "reshape"):
    register_method(getattr(torch.Tensor, _m), OpSpec(f"Tensor.{_m}", _regroup_conv, (_SHAPE,), varargs=True,
                                                      note="a flatten(1), or the two views of a channel shuffle"))
register_function(torch.reshape, OpSpec("torch.reshape", _regroup_conv, (_SHAPE,), note="a flatten(1), or the two views of a channel shuffle"))


# -- sizes read from the input (x.size(), x.shape): for view/reshape arguments, e.g. torchvision's channel shuffle ----
class _Batch:
    """The batch size in a shape read from an activation: any view/reshape must keep it first."""

    def __repr__(self):
        return "<batch>"


BATCH = _Batch()


_SIZE_ARITH = (operator.getitem, operator.floordiv, operator.mul, operator.eq)


def _shape_nodes(v) -> bool:
    """Whether ``v`` holds fx nodes that compute sizes (x.size(), x.shape, x.dim(), their entries and integer arithmetic)."""
    if isinstance(v, fx.Node):
        if v.op == "call_method":
            return v.target in ("size", "dim")
        if v.op == "call_function" and v.target is getattr:
            return True
        return v.op == "call_function" and v.target in _SIZE_ARITH and any(_shape_nodes(a) for a in v.args)
    if isinstance(v, (tuple, list)):
        return any(_shape_nodes(a) for a in v)
    return False


def _concrete(v):
    """A size value with the batch entry as -1, for option checks."""
    if v is BATCH:
        return -1
    if isinstance(v, (tuple, list)):
        return type(v)(_concrete(a) for a in v)
    return v


def _size_of(cv, node, x):
    if not isinstance(x, _Activation):
        raise UnsupportedLayerError(cv._label(node), node.name, "it reads the size of something that is not an activation")
    src = node.args[0]
    shape = cv.shapes.get(src.name) if isinstance(src, fx.Node) else None
    if shape is None:
        raise ShapeMismatchError(f"'{node.name}' reads a size: pass input_shape=(C, H, W)")
    return (BATCH,) + tuple(int(d) for d in shape[1:])


def _size_conv(cv, node, xs, opts):
    size = _size_of(cv, node, xs[0])
    return size if opts["dim"] is None else size[opts["dim"]]


def _shape_attr_conv(cv, node, xs, opts):
    return _size_of(cv, node, xs[0])


def _int_arith(fn, name):
    def convert(cv, node, xs, opts):
        a, b = xs
        if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and not isinstance(b, bool):
            return fn(a, b)
        if isinstance(a, _Activation) or isinstance(b, _Activation):
            raise UnsupportedLayerError(name, node.name, "it converts only on sizes (x.size(1) // 2), not on activations")
        raise UnsupportedLayerError(name, node.name, "it involves the batch size, which a stream does not fix")

    return convert


register_method(torch.Tensor.size, OpSpec("Tensor.size", _size_conv, tokens=True, options=(where("dim", lambda v: v is None or isinstance(v, int), "None or an int", default=None),),
                                          note="sizes for view/reshape arguments (needs input_shape=)"))
register_function(getattr, OpSpec("getattr", _shape_attr_conv, (only("name", "shape"),), note="x.shape only, for view/reshape arguments",
                                  tokens=True))
register_function(operator.floordiv, OpSpec("operator.floordiv (//)", _int_arith(operator.floordiv, "operator.floordiv (//)"), operands=_BINARY, tokens=True,
                                            note="on sizes only"))




def _dim_conv(cv, node, xs, opts):
    return len(_size_of(cv, node, xs[0]))


def _assert_conv(cv, node, xs, opts):
    """``torch._assert(cond, message)`` on sizes (torchvision checks image and token shapes): checked now, nothing recorded."""
    cond = xs[0]
    if not isinstance(cond, bool):
        raise UnsupportedLayerError("torch._assert", node.name, "it converts only on conditions about sizes (x.dim() == 3, h == 224)")
    if not cond:
        raise ShapeMismatchError(f"the model's own check at '{node.name}' fails for input_shape {cv.input_shape}: {opts['message']}")
    return None


register_method(torch.Tensor.dim, OpSpec("Tensor.dim", _dim_conv, note="the number of axes, for shape checks (needs input_shape=)", tokens=True))
register_function(operator.eq, OpSpec("operator.eq (==)", _int_arith(operator.eq, "operator.eq (==)"), operands=_BINARY, tokens=True,
                                      note="on sizes only (shape checks)"))
register_function(torch._assert, OpSpec("torch._assert", _assert_conv, (any_of("message"),), operands=("condition",), tokens=True,
                                        note="on sizes only: checked while converting, nothing enters the stream"))


def _expand_conv(cv, node, xs, opts):
    p = xs[0]
    if not isinstance(p, _Param):
        raise UnsupportedLayerError("Tensor.expand", node.name, "it converts only on a parameter (a class token "
                                    "self.cls.expand(n, -1, -1)); expanding activations is not supported")
    sizes = tuple(opts["size"])
    shape = tuple(p.value.shape)
    ok = (len(sizes) == len(shape) == 3 and shape[0] == 1 and sizes[0] is BATCH
          and all(s in (-1, d) for s, d in zip(sizes[1:], shape[1:])))
    if not ok:
        raise UnsupportedOptionError("Tensor.expand", node.name, "size", sizes,
                                     "(x.shape[0], -1, -1) on a (1, k, C) parameter: the batch axis only")
    return replace(p, batch_expanded=True)


register_method(torch.Tensor.expand, OpSpec("Tensor.expand", _expand_conv, (
    where("size", lambda v: isinstance(v, (tuple, list)) and all(isinstance(a, int) for a in v),
          "(batch, -1, -1) on a (1, k, C) parameter", example=(-1, -1, -1)),), varargs=True, tokens=True,
    note="a class token (1, k, C) expanded over the batch, for torch.cat in front of the tokens"))


# -- nn.MultiheadAttention: self-attention on token sequences, built as graph/convert/vit.py builds SimpleViT's ----------
class _AttentionWeights:
    """nn.MultiheadAttention's second output (the attention weights), which does not convert."""

    def __repr__(self):
        return "<attention weights>"


ATTENTION_WEIGHTS = _AttentionWeights()


def _mha_conv(cv, node, xs, opts):
    return cv._attention(node, xs, opts)


def _mha_constraint(opts):
    for dim in ("kdim", "vdim"):
        if opts[dim] != opts["embed_dim"]:
            return dim, f"embed_dim ({opts['embed_dim']}): query, key and value of one width (in_proj_weight packs Q, K, V)"
    if opts["embed_dim"] % opts["num_heads"]:
        return "num_heads", f"a divisor of embed_dim ({opts['embed_dim']})"
    return None


register_module(nn.MultiheadAttention, OpSpec(
    "nn.MultiheadAttention", _mha_conv,
    options=(any_of("embed_dim"), any_of("num_heads"), any_of("dropout", 0.0),
             any_of("bias", True, read=lambda m: getattr(m, "in_proj_bias", None) is not None),
             only("add_bias_kv", False, default=False, read=lambda m: getattr(m, "bias_k", None) is not None),
             only("add_zero_attn", False, default=False),
             Option("kdim", None, None, "embed_dim"), Option("vdim", None, None, "embed_dim"),
             only("batch_first", False, True, default=False)),
    operands=("query", "key", "value"),
    call_options=(only("key_padding_mask", None, default=None), only("need_weights", False, True, default=True),
                  only("attn_mask", None, default=None), any_of("average_attn_weights", True), only("is_causal", False, default=False)),
    constraint=_mha_constraint, tokens=True,
    note="self-attention (query, key, value one tensor) on token sequences, as SimpleViT's attention (README: ViT attention as "
         "a graph); in_proj_bias: V's on the v nodes, Q's and K's on edges from a constant unit node; dropout is the eval "
         "identity; only output 0 converts (the attention weights are refused)"))

# -- modules recognised by structure or behaviour, for libraries we do not import (torchvision) -----------------------
MATCHERS: list[tuple[Callable[[nn.Module], bool], OpSpec]] = []  # (predicate, spec); exact types (MODULES) come first


def register_matcher(predicate: Callable[[nn.Module], bool], spec: OpSpec) -> None:
    """Convert every module for which ``predicate(module)`` holds as ``spec`` (traced as one leaf), whatever its type."""
    MATCHERS.append((predicate, spec))


def matched_spec(m: nn.Module) -> OpSpec | None:
    for predicate, spec in MATCHERS:
        if predicate(m):
            return spec
    return None


def _is_layernorm2d(m: nn.Module) -> bool:
    """A LayerNorm subclass (torchvision's / timm's LayerNorm2d, ...) whose forward normalises (B, C, H, W) maps over C:
    checked by running it on a random map against permute -> F.layer_norm -> permute back."""
    if type(m) is nn.LayerNorm or not isinstance(m, nn.LayerNorm) or len(m.normalized_shape) != 1:
        return False
    c = m.normalized_shape[0]
    x = torch.randn(2, c, 3, 4, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            got = m(x)
            want = F.layer_norm(x.permute(0, 2, 3, 1), m.normalized_shape, m.weight, m.bias, m.eps).permute(0, 3, 1, 2)
    except Exception:
        return False
    return got.shape == want.shape and bool(torch.allclose(got, want, atol=1e-5, rtol=1e-4))


def _layernorm2d_conv(cv, node, xs, opts):
    m = cv.modules[node.target]
    return cv._layer_norm(node, cv._activation(xs[0], node), m.weight, getattr(m, "bias", None), m.eps, channels_first=True)


def _is_stochastic_depth(m: nn.Module) -> bool:
    """torchvision.ops.StochasticDepth by its structure: the class name, ``p`` and ``mode``; no parameters."""
    return type(m).__name__ == "StochasticDepth" and hasattr(m, "p") and hasattr(m, "mode") and not any(True for _ in m.parameters())


register_matcher(_is_layernorm2d, OpSpec("LayerNorm2d", _layernorm2d_conv, (
    where("normalized_shape", lambda v: isinstance(v, (tuple, list)) and len(v) == 1, "one axis: the channels", example=(4,)),
    _float_opt("eps", 1e-5), any_of("elementwise_affine", True), any_of("bias", True, read=lambda m: getattr(m, "bias", None) is not None)),
    note="matched by behaviour: any nn.LayerNorm subclass whose forward normalises (B, C, H, W) maps over C (torchvision's "
         "LayerNorm2d); its scale and shift become node features of the channel nodes; Conv2d and Linear may read it"))
register_matcher(_is_stochastic_depth, OpSpec("StochasticDepth", _pass_through, (
    any_of("p"), only("mode", "batch", "row")),
    note="matched by structure (a parameter-free module named StochasticDepth with p and mode, torchvision.ops): the "
         "identity, its eval-mode forward", tokens=True))


# what dng_tgn itself registers, before any user registration (the README documents this set)
_BUILT_IN = {"module": dict(MODULES), "matched module": dict(enumerate(MATCHERS)), "function": dict(FUNCTIONS),
             "tensor method": dict(METHODS)}


def supported_table(built_in_only: bool = False) -> str:
    """The allow-list as a Markdown table; ops with the same options and note share a row.

    The README's "What converts" section holds ``supported_table(built_in_only=True)``.
    """

    def opts(spec):
        parts = []
        for o in spec.options + spec.call_options:
            d = "" if o.default is REQUIRED else f"; default `{o.default!r}`"
            call = "call " if o in spec.call_options else ""
            parts.append(f"{call}`{o.name}`: {o.supported}{d}")
        return "<br>".join(parts) or "—"

    rows: dict[tuple, list[str]] = {}
    live = {"module": MODULES, "matched module": dict(enumerate(MATCHERS)), "function": FUNCTIONS, "tensor method": METHODS}
    for kind, table in (_BUILT_IN if built_in_only else live).items():
        for spec in table.values():
            spec = spec[1] if isinstance(spec, tuple) else spec
            rows.setdefault((kind, opts(spec), spec.note), []).append(f"`{spec.name}`")
    lines = ["| kind | ops | options (supported values; default) | notes |", "| --- | --- | --- | --- |"]
    lines += [f"| {kind} | {', '.join(names)} | {o} | {note} |" for (kind, o, note), names in rows.items()]
    return "\n".join(lines)


# ================================================================================================
# The converter
# ================================================================================================
class _Tracer(fx.Tracer):
    def trace(self, root, *args, **kwargs):
        # matchers may run a module (LayerNorm2d's behaviour check): do it before torch.fx intercepts module calls
        self.matched = {id(m): matched_spec(m) for m in root.modules()} if isinstance(root, nn.Module) else {}
        return super().trace(root, *args, **kwargs)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in MODULES or self.matched.get(id(m)) is not None or super().is_leaf_module(m, qualname)


class _Seq(Enum):
    """How the model holds an activation that is a token sequence (ViT). The stream always holds tokens batch-first,
    and the channels are the nodes in every layout; the value is the model's layout, as error messages name it."""

    CHANNELS_FIRST = "(B, C, L)"  # maps after x.flatten(2): only a transpose to tokens may follow
    BATCH_FIRST = "(B, L, C)"
    SEQUENCE_FIRST = "(L, B, C)"  # nn.MultiheadAttention(batch_first=False) reads these


@dataclass(frozen=True)
class _Activation:
    """An activation in flight: which node group holds it and what still has to be applied.

    Symbolic: it carries no numbers (those are the node groups' parameter ``values``), only where the
    activation lives in the stream being built.
    """

    group: int | None  # None: the raw network input, whose node count is fixed by its first reader
    step: int  # timestamp that computed the group (0 for inputs)
    transforms: tuple = ()
    fresh: bool = False  # a layer's output before any transform: residual sums may still join it
    spatial: bool = False  # holds feature maps, one node per channel
    flatten_hw: tuple[int, int] | None = None  # flattened maps: virtual vertices per channel
    pooled_keepdim: tuple = ()  # globally pooled with keepdim: the model holds (B, C, *this), the stream (B, C)
    dims: int | None = None  # 1: the model holds (B, C, L) maps, which the stream holds as (B, C, L, 1); 2: (B, C, H, W)
    # A channel selection/union (torch.cat, chunk/split, channel shuffle): ``group`` is COMPOSITE and the channels are,
    # in order, ``idx`` of each part's activation (a plain one). Readers get one edge group per source node group.
    parts: tuple = ()
    unflat: tuple | None = None  # after x.unflatten(1, (g, c)): (g, c, transposed)
    channels_last: bool = False  # the model holds (B, H, W, C) (x.permute(0, 2, 3, 1)); channels are still the nodes
    normed: bool = False  # a LayerNorm sits in the group's norm_in slots: only a Linear (a Conv after LayerNorm2d) reads it next
    seq: _Seq | None = None  # a token sequence, in this layout in the model (None: not tokens)
    # what joined the group's step (the patch embedding) as edges from constant nodes; a residual sum may not join it
    class_tokens: bool = False  # class token(s) prepended (torch.cat([cls, x], 1))
    positions: bool = False  # a positional embedding added (x + pos)


@dataclass(frozen=True)
class _Param:
    """A parameter the forward pass reads directly (``self.gamma``)."""

    name: str
    value: torch.Tensor
    batch_expanded: bool = False  # self.cls.expand(n, -1, -1): a class token ready for torch.cat


COMPOSITE = -1  # _Activation.group of a channel selection/union (see ``parts``)


@dataclass(frozen=True)
class _Bound:
    spec: OpSpec
    label: str
    operands: tuple
    options: dict


class _Converter:
    def __init__(self, model: nn.Module, input_shape, arch: str):
        self.model = model
        self.modules = dict(model.named_modules())
        self.b = StreamBuilder(arch)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.input_group: int | None = None
        self.shapes: dict[str, torch.Size] = {}
        self.bound: dict[str, _Bound] = {}
        self.groups: dict[str, int | None] = {}  # fx node -> the node group its activation lives in
        self.constants: dict[str, int] = {}  # constant source groups (class tokens, positions, the unit node of q/k biases)

    # -- entry ---------------------------------------------------------------------------------------------
    def run(self) -> EventStream:
        was_training = self.model.training
        self.model.eval()  # trace and run the eval-mode forward (dropout off, F.dropout(training=self.training))
        try:
            try:
                graph = _Tracer().trace(self.model)
            except Exception as exc:
                raise UnsupportedLayerError(type(self.model).__name__, "forward", f"torch.fx cannot trace it ({exc})") from exc
            gm = fx.GraphModule(self.model, graph)
            self._check_graph(graph)  # the allow-list, before anything runs
            if self.input_shape is not None:
                self._propagate_shapes(gm)
        finally:
            self.model.train(was_training)
        env: dict[str, object] = {}
        output = None
        for node in graph.nodes:
            if node.op == "placeholder":
                shape = self.shapes.get(node.name)
                dims = len(shape) - 2 if shape is not None and len(shape) in (3, 4) else None
                env[node.name] = _Activation(group=None, step=0, spatial=dims is not None, dims=dims)
            elif node.op == "output":
                output = self._arg(env, node.args[0], node)
            else:
                env[node.name] = self._visit(node, env)
                if isinstance(env[node.name], _Activation):
                    self.groups[node.name] = env[node.name].group
        if isinstance(output, _Activation) and (output.parts or output.unflat is not None):
            raise UnsupportedLayerError(type(self.model).__name__, "output", "the network output is a concatenation or channel "
                                        "selection; end the network with a layer with weights")
        if not isinstance(output, _Activation) or output.group is None:
            raise UnsupportedLayerError(type(self.model).__name__, "output", "the network output is not computed by a layer with weights")
        transforms = output.transforms
        if output.flatten_hw is not None:
            transforms += (T.Reshape((-1,)),)  # the network returns the flattened maps
        if output.pooled_keepdim:
            transforms += (T.Reshape((-1, *output.pooled_keepdim)),)  # the network returns (B, C, 1, 1) or (B, C, 1)
        if output.spatial and output.dims == 1:
            transforms += (T.Reshape((self.b.node_groups[output.group].size, -1)),)  # (B, C, L, 1) -> (B, C, L)
        if output.seq is _Seq.CHANNELS_FIRST:
            transforms += (T.Reshape((self.b.node_groups[output.group].size, -1)),)  # (B, C, H, W) -> (B, C, H·W)
        elif output.seq is _Seq.SEQUENCE_FIRST:
            transforms += (T.Permute((1, 0, 2)),)  # the stream holds tokens batch-first
        return self.b.build(output=output.group, output_transform=transforms, input_shape=self.input_shape)

    # -- the allow-list check ------------------------------------------------------------------------------
    def _check_graph(self, graph: fx.Graph) -> None:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) > 1:
            raise UnsupportedLayerError("multiple inputs", placeholders[1].name, "only single-input networks convert")
        for node in graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            bound = self._bind(node)
            self._check_inplace(node, bound)
            self.bound[node.name] = bound

    def _bind(self, node: fx.Node) -> _Bound:
        if node.op == "call_module":
            m = self.modules[node.target]
            spec = MODULES.get(type(m)) or matched_spec(m)
            if spec is None:
                raise UnsupportedLayerError(type(m).__name__, node.target, REFUSED_HINTS.get(type(m)) or _supported_hint("modules"))
            if not spec.call_options and (len(node.args) != 1 or node.kwargs):
                raise UnsupportedLayerError(spec.name, node.target, "a module call takes exactly one input")
            opts = {}
            for o in spec.options:
                value = o.read(m) if o.read is not None else getattr(m, o.name)
                if not o.allows(value):
                    raise UnsupportedOptionError(type(m).__name__, node.target, o.name, value, o.supported)
                opts[o.name] = value
            self._check_constraint(spec, type(m).__name__, node.target, opts)
            if not spec.call_options:
                return _Bound(spec, type(m).__name__, tuple(node.args), opts)
            operands, call = self._bind_call(type(m).__name__, node, replace(spec, options=spec.call_options, varargs=False))
            return _Bound(spec, type(m).__name__, operands, {**opts, **call})
        if node.op == "call_function":
            spec = FUNCTIONS.get(node.target)
            label = spec.name if spec else _fn_name(node.target) if callable(node.target) else str(node.target)
            if spec is None:
                raise UnsupportedLayerError(label, node.name, _supported_hint("functions"))
        elif node.op == "call_method":
            spec = METHODS.get(getattr(torch.Tensor, node.target, None))
            label = spec.name if spec else f"Tensor.{node.target}"
            if spec is None:
                raise UnsupportedLayerError(label, node.name, _supported_hint("tensor methods"))
        elif node.op == "get_attr":
            # a parameter read in forward (ConvNeXt's layer scale): it converts only as a per-channel scale of a
            # fresh layer output, which folds it into that layer's weights and bias (see _Converter._layer_scale)
            return _Bound(_PARAM_SPEC, f"tensor attribute '{node.target}'", (), {"target": node.target})
        else:
            raise UnsupportedLayerError(node.op, node.name, "only modules, functions and tensor methods are supported")
        operands, opts = self._bind_call(label, node, spec)
        self._check_constraint(spec, label, node.name, opts)
        return _Bound(spec, label, operands, opts)

    def _bind_call(self, label: str, node: fx.Node, spec: OpSpec) -> tuple[tuple, dict]:
        """The call's arguments as ``spec.operands`` (values in order) and checked ``spec.options``."""
        names = spec.operands + tuple(o.name for o in spec.options)
        args = tuple(node.args)
        if spec.varargs and len(args) > len(names):
            args = args[: len(names) - 1] + (tuple(args[len(names) - 1:]),)
        if len(args) > len(names):
            raise UnsupportedLayerError(label, node.name, f"takes at most {len(names)} arguments ({', '.join(names)}), got {len(node.args)}")
        given = dict(zip(names, args))
        for k, v in node.kwargs.items():
            if k not in names:
                raise UnsupportedOptionError(label, node.name, k, v, "none: it is not an argument the converter knows (" + ", ".join(names) + ")")
            if k in given:
                raise UnsupportedLayerError(label, node.name, f"argument '{k}' given twice")
            given[k] = v
        for k in spec.operands:
            if k not in given:
                raise UnsupportedLayerError(label, node.name, f"missing argument '{k}'")
        opts = {}
        for o in spec.options:
            if o.name not in given and o.default is REQUIRED:
                raise UnsupportedLayerError(label, node.name, f"missing argument '{o.name}'")
            value = given.get(o.name, o.default)
            if _shape_nodes(value):
                opts[o.name] = value  # sizes read from x.size()/x.shape: checked once they are known (_visit)
                continue
            if isinstance(value, fx.Node):
                raise UnsupportedOptionError(label, node.name, o.name, value.name,
                                             o.supported if o.check is not None else "a constant (not computed from the input)")
            if not o.allows(value):
                raise UnsupportedOptionError(label, node.name, o.name, value, o.supported)
            opts[o.name] = value
        return tuple(given[k] for k in spec.operands), opts

    @staticmethod
    def _check_constraint(spec: OpSpec, label: str, position: str, opts: dict) -> None:
        broken = spec.constraint(opts) if spec.constraint is not None else None
        if broken is not None:
            option, supported = broken
            raise UnsupportedOptionError(label, position, option, opts[option], supported)

    def _check_inplace(self, node: fx.Node, bound: _Bound) -> None:
        if not (bound.spec.inplace or bound.options.get("inplace") is True):
            return
        target = bound.operands[0]
        if isinstance(target, fx.Node) and len(target.users) > 1:
            raise UnsupportedLayerError(
                bound.label, node.target if node.op == "call_module" else node.name,
                f"it works in place on '{target.name}', which other ops also read; the traced graph cannot say which value they see",
            )

    def _label(self, node) -> str:
        return self.bound[node.name].label

    # -- shapes ----------------------------------------------------------------------------------------------
    def _propagate_shapes(self, gm):
        shapes = self.shapes

        class _Shapes(fx.Interpreter):
            def run_node(self, n):
                try:
                    out = super().run_node(n)
                except Exception as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ShapeMismatchError(
                        f"input_shape {tuple(example.shape[1:])} does not fit the model at '{n.name}' ({n.format_node()}): {first}"
                    ) from None
                if isinstance(out, torch.Tensor):
                    shapes[n.name] = out.shape
                return out

        example = torch.zeros((2, *self.input_shape))
        interpreter = _Shapes(gm)
        interpreter.extra_traceback = False  # our error already names the node
        with torch.no_grad():
            interpreter.run(example)

    def _maps(self, x: _Activation, node, dims: int) -> _Activation:
        """``x`` as feature maps of ``dims`` spatial axes; the raw input of a 1-d op gets its trailing axis here."""
        where = self._position(node)
        if x.flatten_hw is not None or x.pooled_keepdim or (x.group is not None and not x.spatial):
            raise UnsupportedLayerError(self._label(node), where, "it needs feature maps, got a vector")
        if x.dims is not None and x.dims != dims:
            raise UnsupportedLayerError(self._label(node), where, f"it needs {dims}-d feature maps, got {x.dims}-d ones")
        if x.group is None and dims == 1 and not any(isinstance(t, T.Unsqueeze) for t in x.transforms):
            x = replace(x, transforms=x.transforms + (T.Unsqueeze(),))
        return replace(x, spatial=True, dims=dims)

    # -- dispatch ------------------------------------------------------------------------------------------
    def _arg(self, env, a, node):
        if isinstance(a, fx.Node):
            return env[a.name]
        if isinstance(a, (tuple, list)) and len(a) == 1:
            return self._arg(env, a[0], node)
        raise UnsupportedLayerError(f"output {type(a).__name__}", node.name, "the network must return one tensor")

    def _visit(self, node: fx.Node, env) -> _Activation:
        bound = self.bound[node.name]
        def value(a):
            if isinstance(a, fx.Node):
                return env[a.name]
            if isinstance(a, (tuple, list)):
                return type(a)(value(v) for v in a)
            return a

        xs = [value(a) for a in bound.operands]
        if not bound.spec.tokens:
            for a in _flat(xs):
                if isinstance(a, _Activation) and a.seq is not None:
                    raise UnsupportedLayerError(bound.label, self._position(node), "it does not convert on token sequences "
                                                "(B, L, C); on tokens convert: Linear, LayerNorm, nn.MultiheadAttention, pointwise "
                                                "activations, dropout, residual sums, x[:, k] (README: 'What converts')")
        opts = bound.options
        if any(_shape_nodes(v) for v in opts.values()):
            opts = {k: value(v) for k, v in opts.items()}
            for o in bound.spec.options:
                if _shape_nodes(bound.options.get(o.name)) and not o.allows(_concrete(opts[o.name])):
                    raise UnsupportedOptionError(bound.label, self._position(node), o.name, opts[o.name], o.supported)
        return bound.spec.convert(self, node, xs, opts)

    def _activation(self, x, node) -> _Activation:
        if not isinstance(x, _Activation):
            raise UnsupportedLayerError(self._label(node), self._position(node), "its input is not an activation computed from the network input")
        return x

    def _position(self, node) -> str:
        return node.target if node.op == "call_module" else node.name

    # -- transforms ----------------------------------------------------------------------------------------
    def _then(self, x: _Activation, t, node=None) -> _Activation:
        where = self._position(node) if node is not None else "after flatten"
        if x.unflat is not None:
            raise UnsupportedLayerError(str(t), where, "it follows an unflatten of the channel axis; only a channel shuffle "
                                        "(unflatten(1, (g, c)) -> transpose(1, 2) -> flatten(1, 2)) converts")
        if x.normed and not getattr(t, "keeps_norm", False):
            raise UnsupportedLayerError(str(t), where, "only a Linear (or, after a channels-first LayerNorm2d, a Conv) "
                                        "may read a LayerNorm's output directly")
        if x.parts:
            parts = tuple((self._then(base, t, node), idx) for base, idx in x.parts)
            return replace(x, parts=parts, fresh=False)
        if x.flatten_hw is not None and not t.pointwise:
            raise UnsupportedLayerError(str(t), where, "only pointwise functions may follow a flatten")
        if not t.pointwise and (x.pooled_keepdim or (not x.spatial and (self.shapes or x.group is not None))):
            raise UnsupportedLayerError(str(t), where, "pooling needs feature maps")
        return replace(x, transforms=x.transforms + (t,), fresh=False)

    def _global_pool(self, x: _Activation, node, keepdim: bool, dims: int | None) -> _Activation:
        """(B, C, H, W) or (B, C, L) -> (B, C): each channel node keeps one scalar from here on."""
        if x.flatten_hw is not None or x.pooled_keepdim or (not x.spatial and (self.shapes or x.group is not None)):
            raise UnsupportedLayerError(self._label(node), self._position(node), "global pooling needs feature maps")
        dims = dims if dims is not None else x.dims
        if dims is None or (x.dims is not None and x.dims != dims):
            raise UnsupportedLayerError(self._label(node), self._position(node),
                                        f"it pools {dims}-d maps but gets {x.dims or 'unknown'}-d ones (pass input_shape=)")
        keep = (1,) * dims if keepdim else ()
        if x.parts:
            parts = tuple((replace(b, transforms=b.transforms + (T.GlobalAvgPool(),), fresh=False, spatial=False, pooled_keepdim=keep), i)
                          for b, i in x.parts)
            return replace(x, parts=parts, fresh=False, spatial=False, pooled_keepdim=keep)
        return replace(x, transforms=x.transforms + (T.GlobalAvgPool(),), fresh=False, spatial=False, pooled_keepdim=keep)

    def _flatten(self, node, x: _Activation) -> _Activation:
        if x.parts and x.pooled_keepdim:
            return replace(x, pooled_keepdim=(), parts=tuple((replace(b, pooled_keepdim=()), i) for b, i in x.parts), fresh=False)
        if x.parts and x.spatial:
            raise UnsupportedLayerError(self._label(node), self._position(node),
                                        "flattening the maps of a concatenation/channel selection is not supported; pool them first")
        if x.pooled_keepdim:
            return replace(x, pooled_keepdim=(), fresh=False)  # (B, C, 1, 1) -> (B, C): what the stream holds
        if x.group is None:
            if any(not t.pointwise for t in x.transforms):
                raise UnsupportedLayerError(self._label(node), self._position(node), "pooling the raw input before a flatten is not supported")
            return replace(x, spatial=False, dims=None)  # flattened raw input: the first Linear reads in_features input nodes
        if not x.spatial:
            return x  # (B, C) stays (B, C): e.g. after global pooling
        src_node = node.args[0]
        shape = self.shapes.get(src_node.name)
        if shape is None:
            raise ShapeMismatchError(f"Flatten at '{node.name}' needs the feature-map size: pass input_shape=(C, H, W)")
        hw = (int(shape[2]), int(shape[3])) if len(shape) == 4 else (int(shape[2]), 1)
        return replace(x, flatten_hw=hw, spatial=False, fresh=False)

    # -- layers with weights -------------------------------------------------------------------------------
    def _source_group(self, x: _Activation, size: int, where: str) -> int:
        if x.group is not None:
            return x.group
        if self.input_group is None:
            self.input_group = self.b.add_inputs("input", size)
        elif self.b.node_groups[self.input_group].size != size:
            raise ShapeMismatchError(f"'{where}' reads {size} input nodes but the input has {self.b.node_groups[self.input_group].size}")
        return self.input_group

    # -- the public layer API, for the ``convert`` callables of register_module/function/method --------------------
    def activation(self, x, node) -> "_Activation":
        """``x`` (an operand handed to ``convert``), checked to be an activation computed from the network input."""
        return self._activation(x, node)

    def add_layer(self, node, x, weight: torch.Tensor, op, bias: torch.Tensor | None = None, groups: int = 1,
                  name: str | None = None, spatial: bool | None = None, param_name: str | None = None) -> "_Activation":
        """A layer of your own: one new timestamp, ``weight.shape[0]`` new nodes (with ``bias``), and one edge per
        (output node, input node in its group, slot), whose scalars are ``weight`` (c_out, c_in / groups, slots).

        ``op`` is an :class:`~dng_tgn.graph.edge_ops.EdgeOp` that :func:`dng_tgn.replay` calls as ``op(x, w)`` with the
        reader's activation and the dense (c_out, c_in, slots) weight rebuilt from the edges. Returns the layer's output.
        """
        x = self._activation(x, node)
        name = name or self._position(node)
        w = weight.detach().float()
        if w.dim() == 2:
            w = w.unsqueeze(-1)
        out = self._weighted(name, x, w, int(groups), op, bias, tuple(weight.shape), x.spatial if spatial is None else spatial,
                             pname=param_name)
        return replace(out, dims=x.dims if out.spatial else None)

    def then(self, x, transform, node) -> "_Activation":
        """``x`` followed by a parameter-free :class:`~dng_tgn.graph.transforms.Transform` (run by the next reader)."""
        return self._then(self._activation(x, node), transform, node)

    def module(self, node) -> nn.Module:
        """The module a ``call_module`` node calls."""
        return self.modules[node.target]

    def _channels(self, x: _Activation) -> list[tuple[_Activation, int]]:
        """``x``'s channels in order, each as (plain activation, node index in its group)."""
        if x.parts:
            return [(b, int(i)) for b, idx in x.parts for i in idx]
        if x.group is None:
            raise UnsupportedLayerError("channel selection", "input", "the raw network input cannot be concatenated, split or shuffled; "
                                        "apply a layer first")
        return [(x, i) for i in range(self.b.node_groups[x.group].size)]

    def _select(self, x: _Activation | None, order) -> _Activation:
        """The channels ``order`` of ``x`` (a list of (activation, index) pairs or positions in ``x``)."""
        if order and isinstance(order[0], tuple):
            chans = list(order)
        else:
            allc = self._channels(x)
            chans = [allc[c] for c in order]
        parts: list[tuple[_Activation, list[int]]] = []
        for base, i in chans:
            if parts and parts[-1][0] == base:
                parts[-1][1].append(i)
            else:
                parts.append((base, [i]))
        if len(parts) == 1 and parts[0][1] == list(range(self.b.node_groups[parts[0][0].group].size)):
            return replace(parts[0][0], fresh=False)
        first = parts[0][0]
        return _Activation(group=COMPOSITE, step=max(b.step for b, _ in parts), spatial=first.spatial, dims=first.dims,
                           pooled_keepdim=first.pooled_keepdim, parts=tuple((b, tuple(i)) for b, i in parts))

    def _sources(self, x: _Activation, c_in: int, where: str):
        """[(node group, transforms, node indices, channel positions)] that a layer reading ``c_in`` channels of ``x`` reads."""
        if not x.parts:
            g = self._source_group(x, c_in, where)
            size = self.b.node_groups[g].size
            if size != c_in:
                raise ShapeMismatchError(f"'{where}' expects {c_in} channels but '{self.b.node_groups[g].name}' has {size}")
            return [(g, x.transforms, torch.arange(size), torch.arange(size))]
        by_key: dict[tuple, tuple[list[int], list[int]]] = {}
        col = 0
        for base, idx in x.parts:
            key = (base.group, base.transforms)
            for i in idx:
                by_key.setdefault(key, ([], []))
                by_key[key][0].append(i)
                by_key[key][1].append(col)
                col += 1
        if col != c_in:
            raise ShapeMismatchError(f"'{where}' expects {c_in} channels but its input has {col}")
        return [(g, tr, torch.tensor(i), torch.tensor(c)) for (g, tr), (i, c) in by_key.items()]

    def _weighted(self, name, x: _Activation, w3: torch.Tensor, groups: int, op, bias, pshape, spatial: bool, pname=None) -> _Activation:
        """A layer ``y = W * x + b`` with weight ``w3`` (c_out, c_in / groups, slots): edges only inside each group."""
        pname = pname or f"{name}.weight"
        c_out, c_in_g, k = w3.shape
        c_in = c_in_g * groups
        sources = self._sources(x, c_in, name)
        step = self.b.new_step()
        bref = (ParamRef(f"{name}.bias", (c_out,), torch.arange(c_out), slot=0),) if bias is not None else ()
        dst = self.b.add_nodes(name, c_out, params=bref, bias=None if bias is None else bias.detach())
        flat = flat_index((c_out, c_in_g, k))
        for g, tr, idx, cols in sources:
            size = self.b.node_groups[g].size
            ename = f"{name}.weight" if len(sources) == 1 else f"{name}.weight[{self.b.node_groups[g].name}]"
            if groups == 1 and cols.numel() == size and torch.equal(idx, torch.arange(size)):
                whole = cols.numel() == c_in and torch.equal(cols, torch.arange(c_in))  # the common case: no copies
                ref = ParamRef(pname, pshape, flat if whole else flat[:, cols])
                self.b.add_edges(ename, g, dst, op, w3 if whole else w3[:, cols], src_transform=tr, params=(ref,))
                continue
            o, j = ((torch.arange(c_out) // (c_out // groups)).unsqueeze(1) == (cols // c_in_g).unsqueeze(0)).nonzero(as_tuple=True)
            if o.numel() == 0:
                continue
            local = cols[j] % c_in_g
            ref = ParamRef(pname, pshape, flat[o, local].unsqueeze(1))
            self.b.add_edges(ename, g, dst, op, w3[o, local].unsqueeze(1), src_transform=tr, params=(ref,),
                             pattern=Pattern.SPARSE, pairs=torch.stack([o, idx[j]]))
        return _Activation(group=dst, step=step, fresh=True, spatial=spatial)

    def _gate(self, node, a: _Activation, b: _Activation) -> _Activation:
        """``a * b`` where one is a feature map and the other a per-channel gate (squeeze-and-excitation)."""
        label, pos = self._label(node), self._position(node)

        def is_gate(v):
            return v.group not in (None, COMPOSITE) and not v.spatial and v.flatten_hw is None and v.unflat is None
        if a.pooled_keepdim and not b.pooled_keepdim:
            a, b = b, a
        if not is_gate(b) or a.group in (None, COMPOSITE, b.group) or a.flatten_hw is not None or a.unflat is not None:
            raise UnsupportedLayerError(label, pos, "only an activation times a constant number, or a product of two activations as a gate: "
                                        "a feature map (or vector) of a layer times a per-channel gate computed elsewhere (squeeze-and-excitation)")
        if a.spatial and b.pooled_keepdim != (1,) * (a.dims or 2):
            raise UnsupportedLayerError(label, pos, "the gate of a feature map must have shape (B, C, 1, 1)")
        if not a.spatial and (b.pooled_keepdim != a.pooled_keepdim):
            raise UnsupportedLayerError(label, pos, "gate and gated activation need the same layout")
        n = self.b.node_groups[a.group].size
        if self.b.node_groups[b.group].size != n:
            raise ShapeMismatchError(f"gate '{node.name}' multiplies {n} channels by {self.b.node_groups[b.group].size} gates")
        step = self.b.new_step()
        p = self.b.add_nodes(node.name, n, kind=NodeKind.COMPUTE)
        self.b.add_edges(f"{node.name}.map", a.group, p, GatedMap(), None, kind=EdgeKind.GATE, pattern=Pattern.IDENTITY,
                         src_transform=a.transforms)
        self.b.add_edges(f"{node.name}.gate", b.group, p, Gate(), None, kind=EdgeKind.GATE, pattern=Pattern.IDENTITY,
                         src_transform=b.transforms)
        return _Activation(group=p, step=step, spatial=a.spatial, dims=a.dims, pooled_keepdim=a.pooled_keepdim)

    def _layer_norm(self, node, x: _Activation, weight, bias, eps: float, channels_first: bool = False) -> _Activation:
        """LayerNorm over the channel nodes: its scale and shift become node features of the group it normalises.

        As a pre-norm (``norm_in`` slots, applied by the layers that read the group; residual edges skip it) when one layer
        reads its output, the usual case (x + attn(ln(x))); in place (``norm_out`` slots, applied where the group is
        computed) when its output is also read by a residual sum or by several ops (ConvNeXt's stem). ``channels_first``:
        over axis 1 of (B, C, H, W) maps (torchvision's LayerNorm2d), else over the last axis.
        """
        label, pos = self._label(node), self._position(node)
        if x.group in (None, COMPOSITE) or x.parts or x.normed or x.flatten_hw is not None or x.unflat is not None or x.seq is _Seq.CHANNELS_FIRST:
            raise UnsupportedLayerError(label, pos, "a LayerNorm converts on a layer's channels only")
        if channels_first and not ((x.spatial and x.dims == 2 and not x.channels_last) or x.pooled_keepdim == (1, 1)):
            raise UnsupportedLayerError(label, pos, "a channels-first LayerNorm converts on a layer's (B, C, H, W) maps only")
        if not channels_first and (x.spatial or x.pooled_keepdim):
            raise UnsupportedLayerError(label, pos, "a LayerNorm normalises the last axis: permute feature maps to channels-last "
                                        "(x.permute(0, 2, 3, 1)) first")
        g = self.b.node_groups[x.group]
        out_readers = _readers(node)
        in_place = len(out_readers) != 1 or _is_add(out_readers[0])
        slot = NODE_SLOTS.index("norm_out_weight" if in_place else "norm_in_weight")
        if g.slot_mask[slot]:
            raise UnsupportedLayerError(label, pos, f"'{g.name}' is already normalised")
        other_eps = g.slot_mask[NODE_SLOTS.index("norm_in_weight")] or g.slot_mask[NODE_SLOTS.index("norm_out_weight")]
        if other_eps and g.norm_eps != float(eps):
            raise UnsupportedLayerError(label, pos, f"'{g.name}' already carries a LayerNorm with eps={g.norm_eps}, this one has {eps}")
        if in_place and (x.transforms or any(e.src == x.group for e in self.b.edge_groups)):
            raise UnsupportedLayerError(label, pos, "its output is read by a residual sum or by several ops, so it must normalise "
                                        "the group in place: it must follow the layer (or residual sum) directly")
        # norm_in: every non-residual reader of the group applies it, so nothing else may read the group on the way from the
        # layer to this LayerNorm but residual sums (pre-norm blocks: x + attn(ln(x))), whose edges skip it.
        # norm_out: every reader sees the normalised value, so nothing else may read the group at all.
        src, nxt = node.args[0], node
        while isinstance(src, fx.Node) and self.groups.get(src.name) == x.group:
            for u in _readers(src):
                other = [a for a in (*u.args, *u.kwargs.values()) if a is not src]
                residual = _is_add(u) and len(other) == 1 and isinstance(other[0], fx.Node) and other[0].op != "get_attr"
                if u is not nxt and (in_place or not residual):
                    raise UnsupportedLayerError(label, pos, f"'{src.name}' is also read without the LayerNorm (by '{u.name}'); "
                                                "only residual sums may read a (pre-norm) LayerNorm's input")
            nxt = src
            src = src.args[0] if src.op != "placeholder" and src.args else None
        w_slot, b_slot = slot, slot + 1
        g.values = g.values.clone()
        g.values[:, w_slot] = torch.ones(g.size) if weight is None else weight.detach().float()
        g.values[:, b_slot] = torch.zeros(g.size) if bias is None else bias.detach().float()
        g.slot_mask = g.slot_mask.clone()
        g.slot_mask[w_slot] = g.slot_mask[b_slot] = True
        name = node.target if node.op == "call_module" else node.name
        refs = tuple(ParamRef(f"{name}.{k}", (g.size,), torch.arange(g.size), slot=sl)
                     for k, p, sl in (("weight", weight, w_slot), ("bias", bias, b_slot)) if p is not None)
        g.params = g.params + refs
        g.norm_eps = float(eps)
        return replace(x, fresh=False) if in_place else replace(x, normed=True, fresh=False)

    def _permute(self, node, x: _Activation, dims) -> _Activation:
        label, pos = self._label(node), self._position(node)
        if x.seq is not None and len(dims) == 3:
            d = tuple(int(a) % 3 for a in dims)
            if d == (0, 2, 1):
                return self._transpose_tokens(node, x, [1, 2])
            if d == (1, 0, 2):
                return self._transpose_tokens(node, x, [0, 1])
        dims = tuple(int(d) % 4 for d in dims) if len(dims) == 4 else tuple(dims)
        single = len(_readers(node.args[0])) == 1 if isinstance(node.args[0], fx.Node) else False
        ok = x.group not in (None, COMPOSITE) and not x.parts and x.unflat is None and x.flatten_hw is None and not x.normed
        if ok and dims == (0, 2, 3, 1) and x.spatial and x.dims == 2 and not x.channels_last:
            if x.transforms and x.transforms[-1] == T.Permute((0, 3, 1, 2)):  # a permute back and forth cancels
                return replace(x, transforms=x.transforms[:-1], spatial=False, channels_last=True, fresh=x.fresh and single)
            return replace(x, transforms=x.transforms + (T.Permute(dims),), spatial=False, channels_last=True, fresh=x.fresh and single)
        if ok and dims == (0, 3, 1, 2) and x.channels_last:
            if x.transforms and x.transforms[-1] == T.Permute((0, 2, 3, 1)):
                return replace(x, transforms=x.transforms[:-1], spatial=True, dims=2, channels_last=False, fresh=x.fresh and single)
            return replace(x, transforms=x.transforms + (T.Permute(dims),), spatial=True, dims=2, channels_last=False, fresh=x.fresh and single)
        raise UnsupportedOptionError(label, pos, "dims", dims, "(0, 2, 3, 1) on (B, C, H, W) maps of a layer, or (0, 3, 1, 2) back")

    # -- token sequences (ViT): patch tokens, class tokens, positions, attention, the class token's read -------------
    def _maps_to_sequence(self, node, x: _Activation) -> _Activation:
        """``x.flatten(2)`` / ``x.reshape(n, C, H·W)`` on a layer's (B, C, H, W) maps: the model holds (B, C, L) and only a
        transpose to (B, L, C) tokens may follow (the nodes stay the channels)."""
        if x.group in (None, COMPOSITE) or x.parts or not x.spatial or x.dims != 2 or x.unflat is not None or x.normed or x.seq is not None:
            raise UnsupportedLayerError(self._label(node), self._position(node),
                                        "it converts on a layer's (B, C, H, W) maps only, as (B, C, H·W) for a patch embedding")
        single = isinstance(node.args[0], fx.Node) and len(_readers(node.args[0])) == 1
        return replace(x, spatial=False, dims=None, seq=_Seq.CHANNELS_FIRST, fresh=x.fresh and single)

    def _transpose_tokens(self, node, x: _Activation, dims) -> _Activation:
        single = isinstance(node.args[0], fx.Node) and len(_readers(node.args[0])) == 1
        if x.seq is _Seq.CHANNELS_FIRST and list(dims) == [1, 2]:
            return replace(x, seq=_Seq.BATCH_FIRST, transforms=x.transforms + (T.MapsToTokens(),), fresh=x.fresh and single)
        if x.seq in (_Seq.BATCH_FIRST, _Seq.SEQUENCE_FIRST) and list(dims) == [0, 1]:
            swapped = _Seq.SEQUENCE_FIRST if x.seq is _Seq.BATCH_FIRST else _Seq.BATCH_FIRST
            return replace(x, seq=swapped, fresh=x.fresh and single)
        raise UnsupportedOptionError(self._label(node), self._position(node), "dims", tuple(dims),
                                     "(1, 2) from (B, C, L) to (B, L, C) tokens, or (0, 1) between batch-first and sequence-first tokens")

    def _joinable(self, node, x, what: str) -> None:
        """A class token or positional embedding joins the step of the layer that made the patch tokens: it must be that
        layer's fresh output (reshaped to tokens at most), which nothing has read yet."""
        ok = (isinstance(x, _Activation) and x.seq is _Seq.BATCH_FIRST and x.group not in (None, COMPOSITE) and not x.parts and x.fresh
              and not x.normed and x.transforms in ((), (T.MapsToTokens(),))
              and not any(e.src == x.group for e in self.b.edge_groups))
        if not ok:
            raise UnsupportedLayerError(self._label(node), self._position(node),
                                        f"{what} converts only on the (B, L, C) tokens of the patch embedding: the output of a "
                                        "Conv2d (reshaped to tokens) or Linear that nothing else reads first")

    def _constant_group(self, name: str, size: int) -> int:
        """A constant source node group (present from t^0, like the inputs): its out-edges carry parameters."""
        if name not in self.constants:
            self.constants[name] = self.b.add_inputs(name, size)
        elif self.b.node_groups[self.constants[name]].size != size:
            raise ShapeMismatchError(f"'{name}' is read with {size} and with {self.b.node_groups[self.constants[name]].size} tokens")
        return self.constants[name]

    def _token_edges(self, node, p: _Param, x: _Activation, op) -> None:
        """Edges from one constant node per token of ``p`` ((1, k, C) or (k, C)) to the channel nodes, ``w[c, t] = p[t, c]``."""
        c = self.b.node_groups[x.group].size
        v = p.value.detach().float()
        v = v[0] if v.dim() == 3 and v.shape[0] == 1 else v
        if v.dim() != 2 or v.shape[1] != c:
            raise UnsupportedLayerError(self._label(node), self._position(node), f"the parameter '{p.name}' of shape "
                                        f"{tuple(p.value.shape)} is not (1, k, {c}) tokens of the {c} channels")
        k = v.shape[0]
        src = self._constant_group(p.name, k)
        ref = ParamRef(p.name, tuple(p.value.shape), flat_index((k, c)).T.unsqueeze(-1))
        self.b.add_edges(p.name, src, x.group, op, v.T.unsqueeze(-1), params=(ref,), step=x.step)

    def _prepend_tokens(self, node, acts: list, dim) -> _Activation:
        """``torch.cat([cls.expand(n, -1, -1), x], dim=1)``: class token(s) in front of the patch tokens."""
        *params, x = acts
        if dim != 1 or not params or not all(isinstance(p, _Param) for p in params) or not isinstance(x, _Activation):
            raise UnsupportedLayerError(self._label(node), self._position(node), "on token sequences torch.cat converts only as "
                                        "[class token(s), tokens] on axis 1; concatenating activations of tokens is not supported")
        for p in params:
            if not p.batch_expanded:
                raise UnsupportedLayerError(self._label(node), self._position(node), f"the class token '{p.name}' must be "
                                            "expanded over the batch first (expand(n, -1, -1))")
        self._joinable(node, x, "a class token")
        for p in reversed(params):  # the meet puts later-added tokens in front
            self._token_edges(node, p, x, PrependTokens())
        return replace(x, transforms=(), class_tokens=True)

    def _add_positions(self, node, x, p: _Param) -> _Activation:
        """``tokens + pos``: a learned positional embedding (1, L, C) joins the patch embedding's step."""
        self._joinable(node, x, "a positional embedding")
        self._token_edges(node, p, x, AddPositions(before_prefix=not x.class_tokens))
        return replace(x, transforms=(), positions=True)

    def _select_token(self, node, x: _Activation, index) -> _Activation:
        """``x[:, k]`` on batch-first tokens (``x[k]`` sequence-first): token k of every channel node, e.g. the class token."""
        k = (_token_index(index) if x.seq is _Seq.BATCH_FIRST
             else index if x.seq is _Seq.SEQUENCE_FIRST and isinstance(index, int) else None)
        if k is None or x.group in (None, COMPOSITE) or x.parts:
            raise UnsupportedOptionError(self._label(node), self._position(node), "index", index,
                                         "(:, k) on batch-first tokens, k on sequence-first ones: one token of a layer's output")
        return replace(x, transforms=x.transforms + (T.SelectToken(k),), seq=None, fresh=False)

    def _attention(self, node, xs, opts):
        """nn.MultiheadAttention as graph/convert/vit.py builds SimpleViT's attention (t^a, t^b), then out_proj (t^c)."""
        label, pos = self._label(node), self._position(node)
        q, k, v = self.bound[node.name].operands
        if not (q is k is v):
            raise UnsupportedLayerError(label, pos, "only self-attention converts: query, key and value must be one tensor")
        for u in node.users:
            if not (u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)):
                raise UnsupportedLayerError(label, pos, f"its output tuple is read as a whole by '{u.name}'; index it ([0])")
            if u.args[1] == 1 and _readers(u):
                raise UnsupportedLayerError(label, pos, f"the attention weights (output 1, read by '{_readers(u)[0].name}') do "
                                            "not convert (need_weights); only the attention output (output 0) does")
        x = self._activation(xs[0], node)
        m = self.module(node)
        want = _Seq.BATCH_FIRST if m.batch_first else _Seq.SEQUENCE_FIRST
        if x.seq is not want:
            have = {_Seq.BATCH_FIRST: "batch-first (B, L, E) tokens", _Seq.SEQUENCE_FIRST: "sequence-first (L, B, E) tokens",
                    _Seq.CHANNELS_FIRST: "a (B, E, L) sequence"}.get(x.seq, "no token sequence (unbatched input attends "
                                                                     "across the batch)")
            raise UnsupportedLayerError(label, pos, f"batch_first={m.batch_first} reads {'(B, L, E)' if m.batch_first else '(L, B, E)'} "
                                        f"tokens but gets {have}; attention would run across the wrong axis")
        if x.group in (None, COMPOSITE) or x.parts:
            raise UnsupportedLayerError(label, pos, "it reads the tokens of one layer's output")
        name, heads, dh = node.target, m.num_heads, m.embed_dim // m.num_heads
        bias = m.in_proj_bias
        z_groups = add_attention(
            self.b, x.group, heads, m.in_proj_weight.detach().float(), param=f"{name}.in_proj_weight", node_prefix=name,
            proj_name=f"{name}.in_proj_weight", reads_x=x.transforms, b_qkv=None if bias is None else bias.detach().float(),
            bias_param=f"{name}.in_proj_bias", one=None if bias is None else self._constant_group("bias_unit", 1))
        step = len(self.b.steps)
        joined = self._select(None, [(_Activation(group=g, step=step, seq=_Seq.BATCH_FIRST), i) for g in z_groups for i in range(dh)])
        w = m.out_proj.weight
        out = self._weighted(f"{name}.out_proj", joined, w.detach().unsqueeze(-1), 1, Dense(), m.out_proj.bias, tuple(w.shape),
                             spatial=False)
        return replace(out, seq=x.seq), ATTENTION_WEIGHTS

    def _layer_scale(self, node, x: _Activation, p: _Param) -> _Activation:
        """``gamma * y`` with a per-channel parameter ``gamma`` and a fresh layer output ``y``: folded into the layer
        (its weights and bias are scaled, as BatchNorm folding does; the stream no longer names them as parameters)."""
        label, pos = self._label(node), self._position(node)
        if x.group in (None, COMPOSITE) or x.parts or not x.fresh:
            raise UnsupportedLayerError(label, pos, f"the parameter '{p.name}' may only scale a fresh Linear/Conv output (layer scale)")
        g = self.b.node_groups[x.group]
        # channels are axis 1 of (B, C, H, W) / (B, C, L) maps and the last axis of channels-last maps and vectors
        wanted = (g.size,) + (1,) * (x.dims or 0) if x.spatial else (g.size,)
        shape = tuple(p.value.shape)
        if shape != wanted:
            raise UnsupportedLayerError(label, pos, f"the parameter '{p.name}' of shape {shape} is not a per-channel scale of "
                                        f"{g.size} channels here (that needs shape {wanted})")
        gamma = p.value.detach().float().reshape(-1)
        edges = [e for e in self.b.edge_groups if e.dst == x.group]
        if any(e.kind != EdgeKind.WEIGHT for e in edges):
            raise UnsupportedLayerError(label, pos, f"the layer scale '{p.name}' follows a residual sum; only a layer output before the sum converts")
        for e in edges:
            rows = gamma[e.pairs[0]] if e.pattern == Pattern.SPARSE else gamma
            e.weight = e.weight * rows.view(-1, 1, 1)
            e.params = ()
        if g.slot_mask[0]:
            g.values = g.values.clone()
            g.values[:, 0] = g.values[:, 0] * gamma
        g.params = tuple(r for r in g.params if r.slot != 0)
        return x

    def _linear(self, node, weight: torch.Tensor, bias, x: _Activation) -> _Activation:
        name = node.target
        out_f, in_f = weight.shape
        w = weight.detach()
        if x.spatial or x.pooled_keepdim:
            raise UnsupportedLayerError("Linear", name, "a Linear on (B, C, H, W) maps acts on the last axis; flatten the maps first")
        if x.flatten_hw is not None:
            h, wd = x.flatten_hw
            c = self.b.node_groups[x.group].size
            if c * h * wd != in_f:
                raise ShapeMismatchError(f"'{name}' expects {in_f} inputs but the flattened map has {c}x{h}x{wd}={c * h * wd}")
            src = x.group
            w3 = w.reshape(out_f, c, h * wd)
            op = FlattenDense(h, wd)
            wref = ParamRef(f"{name}.weight", (out_f, in_f), flat_index((out_f, c, h * wd)))
            return self._layer(name, src, x, out_f, bias, w3, op, wref, spatial=False)
        if x.seq is _Seq.CHANNELS_FIRST:
            raise UnsupportedLayerError("Linear", name, "it reads (B, C, L) sequences on their last axis (the tokens); "
                                        "transpose them to (B, L, C) tokens first (x.transpose(1, 2))")
        shape = self.shapes.get(node.args[0].name)
        if shape is not None and len(shape) != 2 and not x.channels_last and x.seq is None:
            raise UnsupportedLayerError("Linear", name, f"its input has shape {tuple(shape)}; only (B, features) inputs, "
                                        "channels-last maps (x.permute(0, 2, 3, 1)) and token sequences convert")
        out = self._weighted(name, replace(x, normed=False), w.unsqueeze(-1), 1, Dense(), bias, (out_f, in_f), spatial=False)
        return replace(out, channels_last=x.channels_last, seq=x.seq)

    def _conv(self, node, m: nn.Conv2d | nn.Conv1d, x: _Activation, dims: int) -> _Activation:
        name, kind = node.target, type(m).__name__
        if x.channels_last:
            raise UnsupportedLayerError(kind, name, "it reads channels-last maps; permute them back with x.permute(0, 3, 1, 2) first")
        if (x.pooled_keepdim == (1,) * dims and x.flatten_hw is None and tuple(m.kernel_size) == (1,) * dims and m.groups == 1
                and m.padding in ("valid", "same", (0,) * dims)):
            # (B, C, 1, 1) after global pooling: a 1x1 convolution is a Linear on the channel nodes (squeeze-and-excitation)
            w3 = m.weight.detach().reshape(m.out_channels, m.in_channels, 1)
            out = self._weighted(name, replace(x, pooled_keepdim=()), w3, 1, Dense(), m.bias, tuple(m.weight.shape), spatial=False)
            return replace(out, pooled_keepdim=x.pooled_keepdim)
        if x.flatten_hw is not None or x.pooled_keepdim or (x.group is not None and not x.spatial):
            raise ShapeMismatchError(f"{kind} '{name}' needs feature maps, got a vector")
        shape = self.shapes.get(node.args[0].name)
        if shape is not None and len(shape) != dims + 2:
            layout = "(B, C, H, W)" if dims == 2 else "(B, C, L)"
            raise UnsupportedLayerError(kind, name, f"its input has shape {tuple(shape)}; only batched {layout} inputs convert")
        x = self._maps(x, node, dims)
        w = m.weight if dims == 2 else m.weight.unsqueeze(-1)  # Conv1d: a (k, 1) kernel on (B, C, L, 1) maps
        stride, dilation = (tuple(m.stride), tuple(m.dilation)) if dims == 2 else ((m.stride[0], 1), (m.dilation[0], 1))
        c_out, c_in_g, kh, kw = w.shape
        if m.padding == "valid":
            padding = (0, 0)
        elif m.padding == "same":
            if not _same_padding_ok(m):
                raise UnsupportedOptionError(kind, name, "padding", "same", "'same' only with an odd dilated kernel size")
            padding = tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
        else:
            padding = tuple(m.padding)
        padding = padding if dims == 2 else (padding[0], 0)
        w3 = w.detach().reshape(c_out, c_in_g, kh * kw)
        op = Conv((kh, kw), stride, padding, dilation)
        out = self._weighted(name, x, w3, int(m.groups), op, m.bias, tuple(m.weight.shape), spatial=True)
        return replace(out, dims=dims)

    def _layer(self, name, src, x: _Activation, n_out, bias, w3, op, wref, spatial) -> _Activation:
        step = self.b.new_step()
        bref = (ParamRef(f"{name}.bias", (n_out,), torch.arange(n_out), slot=0),) if bias is not None else ()
        dst = self.b.add_nodes(name, n_out, params=bref, bias=None if bias is None else bias.detach())
        self.b.add_edges(f"{name}.weight", src, dst, op, w3, src_transform=x.transforms, params=(wref,))
        return _Activation(group=dst, step=step, fresh=True, spatial=spatial)

    def _add(self, node, a, b, alpha: float) -> _Activation:
        """``a + alpha * b`` (alpha = -1 for a subtraction)."""
        label, pos = self._label(node), self._position(node)
        if isinstance(a, _Param) or isinstance(b, _Param):
            act, p = (b, a) if isinstance(a, _Param) else (a, b)
            if not isinstance(act, _Activation) or alpha != 1.0:
                raise UnsupportedLayerError(label, pos, "a parameter converts in a sum only as tokens + a positional embedding")
            return self._add_positions(node, act, p)
        if isinstance(a, _Activation) and _number(b):
            return self._then(a, T.Shift(alpha * float(b)), node)
        if isinstance(b, _Activation) and _number(a):
            if alpha == 1.0:
                return self._then(b, T.Shift(float(a)), node)
            return self._then(self._then(b, T.Scale(alpha), node), T.Shift(float(a)), node)  # c - x = (-x) + c exactly
        if not isinstance(a, _Activation) or not isinstance(b, _Activation):
            raise UnsupportedLayerError(label, pos, "only activation + activation or activation + constant number")
        if a.parts or b.parts or a.unflat is not None or b.unflat is not None:
            raise UnsupportedLayerError(label, pos, "a residual sum of a concatenation or channel selection is not supported")
        a_node, b_node = self.bound[node.name].operands
        if a == b:
            if alpha == 1.0:
                return self._then(a, T.Scale(2.0), node)  # x + x == 2x exactly
            raise UnsupportedLayerError(label, pos, "x + alpha*x with alpha != 1 is not supported")
        # the later one is the layer output the sum joins; the earlier one arrives over residual edges
        if a.step >= b.step:
            dst, src, dst_node, scale = a, b, a_node, alpha
        else:
            if alpha != 1.0:
                raise UnsupportedLayerError(label, pos, "alpha (or subtraction) must apply to the earlier activation, not the newest layer output")
            dst, src, dst_node, scale = b, a, b_node, 1.0
        if not dst.fresh or dst.group is None:
            raise UnsupportedLayerError(label, pos, "a residual sum must join a Linear/Conv output before its activation")
        if (a.seq is not b.seq or dst.seq is _Seq.CHANNELS_FIRST or dst.class_tokens or dst.positions
                or (dst.seq is not None and dst.transforms)):
            raise UnsupportedLayerError(label, pos, "a residual sum of token sequences needs two (B, L, C) tokens of layers "
                                        "after the patch embedding, in the same layout")
        if len(_readers(dst_node)) != 1:
            raise UnsupportedLayerError(label, pos, f"the layer output '{dst_node.name}' is also read elsewhere, without the residual")
        if src.group is None and dst.spatial and dst.dims == 1:
            src = self._maps(src, node, 1)  # the raw (B, C, L) input joins (B, C, L, 1) maps
        if (src.flatten_hw is not None or src.pooled_keepdim != dst.pooled_keepdim
                or (src.group is not None and (src.spatial != dst.spatial or src.dims != dst.dims))
                or (src.dims is not None and dst.dims is not None and src.dims != dst.dims)):
            raise UnsupportedLayerError(label, pos, "a residual sum needs two activations of the same layout")
        if src.group == dst.group:
            raise UnsupportedLayerError(label, pos, "a layer output cannot be added to a transform of itself")
        src_group = self._source_group(src, self.b.node_groups[dst.group].size, node.name)
        if self.b.node_groups[src_group].size != self.b.node_groups[dst.group].size:
            raise ShapeMismatchError(f"residual '{node.name}' adds {self.b.node_groups[src_group].size} nodes to {self.b.node_groups[dst.group].size}")
        span = dst.step - src.step
        transforms = src.transforms + ((T.Scale(scale),) if scale != 1.0 else ())
        if dst.transforms == (T.Permute((0, 3, 1, 2)),):
            transforms += (T.Permute((0, 2, 3, 1)),)  # the group holds channels-last maps: add the residual in that layout
        elif dst.transforms:
            raise UnsupportedLayerError(label, pos, "a residual sum must join a Linear/Conv output before its activation")
        # The residual edges belong to the timestamp that computes dst, which may not be the newest one.
        self.b.add_edges(
            f"{node.name}.residual", src_group, dst.group, Identity(), None, kind=EdgeKind.RESIDUAL,
            pattern=Pattern.IDENTITY, span=span, src_transform=transforms, step=dst.step,
        )
        return dst


def _flat(v):
    if isinstance(v, (tuple, list)):
        for a in v:
            yield from _flat(a)
    else:
        yield v


def _readers(node: fx.Node) -> list[fx.Node]:
    """The users of ``node`` that read its values: shape queries (x.shape, x.size(), x.dim()) do not count."""
    def size_only(u):
        return (u.op == "call_method" and u.target in ("size", "dim")) or (u.op == "call_function" and u.target is getattr)
    return [u for u in node.users if not size_only(u)]


_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}


def _is_add(u: fx.Node) -> bool:
    return u.op in ("call_function", "call_method") and u.target in _ADDS


def _supported_hint(kind: str) -> str:
    table = {"modules": MODULES, "functions": FUNCTIONS, "tensor methods": METHODS}[kind]
    names = sorted({spec.name for spec in table.values()})
    return f"supported {kind}: " + ", ".join(names) + " (README: 'What converts')"


def module_stream(model: nn.Module, input_shape=None, arch: str | None = None) -> EventStream:
    return _Converter(model, input_shape, arch or type(model).__name__).run()
