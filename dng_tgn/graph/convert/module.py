"""Any MLP/CNN ``nn.Module`` -> event stream, by tracing its forward pass with torch.fx.

Each Linear or Conv2d becomes one timestamp, in the order the forward pass runs them. Parameter-free
steps (activations, pooling, dropout, flatten) ride along as transforms on the edges that read their
output. A sum of a fresh layer output and an earlier activation becomes residual edges
``v_i^l -> v_i^{l+r}`` (App. E.1). Anything else raises :class:`UnsupportedLayerError` naming the
layer and where it sits.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...errors import ShapeMismatchError, UnsupportedLayerError
from ...nets.siren import Sine as SineModule
from .. import transforms as T
from ..builder import StreamBuilder
from ..edge_ops import Conv, Dense, FlattenDense, Identity
from ..events import EdgeKind, EventStream, ParamRef, Pattern, flat_index

_MODULE_TRANSFORMS = {
    nn.ReLU: lambda m: T.RELU,
    nn.Tanh: lambda m: T.TANH,
    nn.Sigmoid: lambda m: T.SIGMOID,
    nn.GELU: lambda m: T.GELU,
    nn.ELU: lambda m: T.ELU,
    nn.SiLU: lambda m: T.SILU,
    nn.Softplus: lambda m: T.SOFTPLUS,
    nn.LeakyReLU: lambda m: T.LeakyReLU(m.negative_slope),
    SineModule: lambda m: T.Sine(m.w0),
}
_NO_OP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_FUNCTION_TRANSFORMS = {
    torch.relu: T.RELU, F.relu: T.RELU, torch.tanh: T.TANH, F.tanh: T.TANH, torch.sigmoid: T.SIGMOID,
    F.sigmoid: T.SIGMOID, F.gelu: T.GELU, F.silu: T.SILU, F.elu: T.ELU, F.softplus: T.SOFTPLUS,
    torch.sin: T.Elementwise("sin", torch.sin),
}
_METHOD_TRANSFORMS = {"relu": T.RELU, "tanh": T.TANH, "sigmoid": T.SIGMOID, "sin": T.Elementwise("sin", torch.sin)}
_ADD = (operator.add, operator.iadd, torch.add)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, tuple(_MODULE_TRANSFORMS)) or super().is_leaf_module(m, qualname)


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
    spatial: bool = False  # holds (C, H, W) maps, one node per channel
    flatten_hw: tuple[int, int] | None = None  # flattened maps: virtual vertices per channel


class _Converter:
    def __init__(self, model: nn.Module, input_shape, arch: str):
        self.model = model
        self.modules = dict(model.named_modules())
        self.params = {id(p): n for n, p in model.named_parameters()}
        self.b = StreamBuilder(arch)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.input_group: int | None = None
        self.shapes: dict[str, torch.Size] = {}

    # -- entry ---------------------------------------------------------------------------------------------
    def run(self) -> EventStream:
        try:
            graph = _Tracer().trace(self.model)
        except Exception as exc:
            raise UnsupportedLayerError(type(self.model).__name__, "forward", f"torch.fx cannot trace it ({exc})") from exc
        gm = fx.GraphModule(self.model, graph)
        if self.input_shape is not None:
            self._propagate_shapes(gm)
        env: dict[str, object] = {}
        output = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if sum(n.op == "placeholder" for n in graph.nodes) > 1:
                    raise UnsupportedLayerError("multiple inputs", node.name, "only single-input networks convert")
                env[node.name] = _Activation(group=None, step=0, spatial=self._is_spatial(node))
            elif node.op == "output":
                output = self._arg(env, node.args[0], node)
            else:
                env[node.name] = self._visit(node, env)
        if not isinstance(output, _Activation) or output.group is None:
            raise UnsupportedLayerError(type(self.model).__name__, "output", "the network output is not computed by a layer with weights")
        if output.flatten_hw is not None:
            raise UnsupportedLayerError("Flatten", "output", "a flattened map must feed a Linear layer")
        return self.b.build(output=output.group, output_transform=output.transforms, input_shape=self.input_shape)

    def _propagate_shapes(self, gm):
        from torch.fx.passes.shape_prop import ShapeProp

        example = torch.zeros((1, *self.input_shape))
        was_training = self.model.training
        self.model.eval()
        try:
            ShapeProp(gm).propagate(example)
        except Exception as exc:
            raise ShapeMismatchError(f"input_shape {self.input_shape} does not fit the model: {exc}") from exc
        finally:
            self.model.train(was_training)
        for n in gm.graph.nodes:
            meta = n.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                self.shapes[n.name] = meta.shape

    def _is_spatial(self, node) -> bool:
        shape = self.shapes.get(node.name)
        return shape is not None and len(shape) == 4

    # -- dispatch ------------------------------------------------------------------------------------------
    def _arg(self, env, a, node):
        if isinstance(a, fx.Node):
            return env[a.name]
        if isinstance(a, (tuple, list)) and len(a) == 1:
            return self._arg(env, a[0], node)
        raise UnsupportedLayerError(f"output {type(a).__name__}", node.name, "the network must return one tensor")

    def _visit(self, node: fx.Node, env) -> _Activation:
        if node.op == "call_module":
            return self._module(node, self.modules[node.target], env)
        if node.op == "call_function":
            return self._function(node, env)
        if node.op == "call_method":
            return self._method(node, env)
        raise UnsupportedLayerError(node.op, node.name, "only modules, functions and tensor methods are supported")

    def _src(self, node, env) -> _Activation:
        a = node.args[0] if node.args else None
        if not isinstance(a, fx.Node) or not isinstance(env.get(a.name), _Activation):
            raise UnsupportedLayerError(str(node.target), node.name, "its input is not an activation")
        return env[a.name]

    def _module(self, node, m: nn.Module, env) -> _Activation:
        x = self._src(node, env)
        if isinstance(m, nn.Linear):
            return self._linear(node.target, m.weight, m.bias, x)
        if isinstance(m, nn.Conv2d):
            return self._conv(node.target, m, x)
        if type(m) in _MODULE_TRANSFORMS:
            return self._then(x, _MODULE_TRANSFORMS[type(m)](m))
        if isinstance(m, _NO_OP_MODULES):
            return x
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1:
                raise UnsupportedLayerError("Flatten", node.target, "only start_dim=1 is supported")
            return self._flatten(node, x)
        if isinstance(m, (nn.AdaptiveAvgPool2d,)):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
            if tuple(size) != (1, 1):
                raise UnsupportedLayerError("AdaptiveAvgPool2d", node.target, "only global pooling (output_size=1) is supported")
            return self._global_pool(x)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
            op = F.max_pool2d if isinstance(m, nn.MaxPool2d) else F.avg_pool2d
            t = T.Pool2d(op, pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding))
            return self._then(x, t)
        hint = ""
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            hint = "fold it into the preceding layer first: to_event_stream(model.eval(), fold_batchnorm=True)"
        raise UnsupportedLayerError(type(m).__name__, node.target, hint)

    def _function(self, node, env) -> _Activation:
        f = node.target
        if f in _FUNCTION_TRANSFORMS:
            return self._then(self._src(node, env), _FUNCTION_TRANSFORMS[f])
        if f in (F.dropout, F.dropout2d):
            return self._src(node, env)
        if f is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise UnsupportedLayerError("torch.flatten", node.name, "only start_dim=1 is supported")
            return self._flatten(node, self._src(node, env))
        if f in _ADD:
            return self._add(node, env)
        if f in (operator.mul, torch.mul, operator.truediv):
            return self._scale(node, env)
        if f is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            if size not in (1, (1, 1), [1, 1]):
                raise UnsupportedLayerError("adaptive_avg_pool2d", node.name, "only global pooling (output_size=1) is supported")
            x = self._src(node, env)
            return self._global_pool(x)
        if f is F.linear:
            raise UnsupportedLayerError("F.linear", node.name, "use nn.Linear modules so weights have names")
        raise UnsupportedLayerError(getattr(f, "__name__", str(f)), node.name)

    def _method(self, node, env) -> _Activation:
        name = node.target
        x = self._src(node, env)
        if name in _METHOD_TRANSFORMS:
            return self._then(x, _METHOD_TRANSFORMS[name])
        if name == "mean":
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
            if sorted(d % 4 for d in dims) == [2, 3] and x.spatial:
                return self._global_pool(x)
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start == 1:
                return self._flatten(node, x)
        if name in ("add", "add_"):
            return self._add(node, env)
        raise UnsupportedLayerError(f"Tensor.{name}", node.name)

    # -- transforms ----------------------------------------------------------------------------------------
    def _then(self, x: _Activation, t) -> _Activation:
        if x.flatten_hw is not None and not isinstance(t, T.Elementwise):
            raise UnsupportedLayerError(str(t), "after flatten", "only pointwise functions may follow a flatten")
        return replace(x, transforms=x.transforms + (t,), fresh=False)

    @staticmethod
    def _global_pool(x: _Activation) -> _Activation:
        """(B, C, H, W) -> (B, C): each channel node keeps one scalar from here on."""
        return replace(x, transforms=x.transforms + (T.GlobalAvgPool(),), fresh=False, spatial=False)

    def _scale(self, node, env) -> _Activation:
        a, c = node.args[0], node.args[1]
        if isinstance(c, fx.Node):
            a, c = c, a
        if isinstance(a, fx.Node) and isinstance(c, (int, float)):
            factor = float(c) if node.target is not operator.truediv else 1.0 / float(c)
            return self._then(env[a.name], T.Scale(factor))
        raise UnsupportedLayerError("multiplication", node.name, "only scaling by a constant is supported")

    def _flatten(self, node, x: _Activation) -> _Activation:
        if x.group is None and not x.transforms:
            return replace(x, spatial=False)  # flattened raw input: the first Linear reads in_features input nodes
        if not x.spatial:
            return x  # (B, C) stays (B, C): e.g. after global pooling
        src_node = node.args[0]
        shape = self.shapes.get(src_node.name)
        if shape is None:
            raise ShapeMismatchError(f"Flatten at '{node.name}' needs the feature-map size: pass input_shape=(C, H, W)")
        return replace(x, flatten_hw=(int(shape[2]), int(shape[3])), spatial=False, fresh=False)

    # -- layers with weights -------------------------------------------------------------------------------
    def _source_group(self, x: _Activation, size: int, where: str) -> int:
        if x.group is not None:
            return x.group
        if self.input_group is None:
            self.input_group = self.b.add_inputs("input", size)
        elif self.b.node_groups[self.input_group].size != size:
            raise ShapeMismatchError(f"'{where}' reads {size} input nodes but the input has {self.b.node_groups[self.input_group].size}")
        return self.input_group

    def _linear(self, name: str, weight: torch.Tensor, bias, x: _Activation) -> _Activation:
        out_f, in_f = weight.shape
        w = weight.detach()
        if x.flatten_hw is not None:
            h, wd = x.flatten_hw
            c = self.b.node_groups[x.group].size
            if c * h * wd != in_f:
                raise ShapeMismatchError(f"'{name}' expects {in_f} inputs but the flattened map has {c}x{h}x{wd}={c * h * wd}")
            src = x.group
            w3 = w.reshape(out_f, c, h * wd)
            op = FlattenDense(h, wd)
            wref = ParamRef(f"{name}.weight", (out_f, in_f), flat_index((out_f, c, h * wd)))
        else:
            src = self._source_group(x, in_f, name)
            if self.b.node_groups[src].size != in_f:
                raise ShapeMismatchError(f"'{name}' expects {in_f} inputs but '{self.b.node_groups[src].name}' has {self.b.node_groups[src].size} nodes")
            w3, op = w.unsqueeze(-1), Dense()
            wref = ParamRef(f"{name}.weight", (out_f, in_f), flat_index((out_f, in_f, 1)))
        return self._layer(name, src, x, out_f, bias, w3, op, wref, spatial=False)

    def _conv(self, name: str, m: nn.Conv2d, x: _Activation) -> _Activation:
        if m.groups != 1:
            raise UnsupportedLayerError("Conv2d(groups>1)", name, "grouped/depthwise convolutions are not supported")
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise UnsupportedLayerError("Conv2d(padding mode)", name, "use numeric zero padding")
        if x.flatten_hw is not None or (x.group is not None and not x.spatial and self.shapes):
            raise ShapeMismatchError(f"Conv2d '{name}' needs feature maps, got a vector")
        c_out, c_in, kh, kw = m.weight.shape
        src = self._source_group(x, c_in, name)
        if self.b.node_groups[src].size != c_in:
            raise ShapeMismatchError(f"'{name}' expects {c_in} channels but '{self.b.node_groups[src].name}' has {self.b.node_groups[src].size}")
        w3 = m.weight.detach().reshape(c_out, c_in, kh * kw)
        op = Conv((kh, kw), tuple(m.stride), tuple(m.padding), tuple(m.dilation))
        wref = ParamRef(f"{name}.weight", (c_out, c_in, kh, kw), flat_index((c_out, c_in, kh * kw)))
        return self._layer(name, src, x, c_out, m.bias, w3, op, wref, spatial=True)

    def _layer(self, name, src, x: _Activation, n_out, bias, w3, op, wref, spatial) -> _Activation:
        step = self.b.new_step()
        bref = (ParamRef(f"{name}.bias", (n_out,), torch.arange(n_out), slot=0),) if bias is not None else ()
        dst = self.b.add_nodes(name, n_out, params=bref, bias=None if bias is None else bias.detach())
        self.b.add_edges(f"{name}.weight", src, dst, op, w3, src_transform=x.transforms, params=(wref,))
        return _Activation(group=dst, step=step, fresh=True, spatial=spatial)

    def _add(self, node, env) -> _Activation:
        a, b = (env.get(n.name) if isinstance(n, fx.Node) else n for n in node.args[:2])
        if not isinstance(a, _Activation) or not isinstance(b, _Activation):
            if isinstance(a, _Activation) and isinstance(b, (int, float)):
                return self._then(a, T.Shift(float(b)))
            if isinstance(b, _Activation) and isinstance(a, (int, float)):
                return self._then(b, T.Shift(float(a)))
            raise UnsupportedLayerError("add", node.name, "only activation + activation or activation + constant")
        dst, src = (a, b) if a.step >= b.step else (b, a)
        if not dst.fresh or dst.group is None:
            raise UnsupportedLayerError(
                "residual add", node.name, "a residual sum must join a Linear/Conv output before its activation"
            )
        if src.flatten_hw is not None:
            raise UnsupportedLayerError("residual add", node.name, "cannot add a flattened map")
        src_group = self._source_group(src, self.b.node_groups[dst.group].size, node.name)
        span = dst.step - src.step
        # The residual edges belong to the timestamp that computes dst, which may not be the newest one.
        self.b.add_edges(
            f"{node.name}.residual", src_group, dst.group, Identity(), None, kind=EdgeKind.RESIDUAL,
            pattern=Pattern.IDENTITY, span=span, src_transform=src.transforms, step=dst.step,
        )
        return dst


def module_stream(model: nn.Module, input_shape=None, arch: str | None = None) -> EventStream:
    return _Converter(model, input_shape, arch or type(model).__name__).run()
