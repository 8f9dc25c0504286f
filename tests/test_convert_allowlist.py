"""The converter's allow-list: what it lists replays exactly, what it does not list is refused by name.

Issue #9: options that used to be ignored (replay differed from the model, no error), errors that used to be
misleading, and batch_state_dicts(fold_batchnorm=True) filling the batch with unfolded weights.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dng_tgn
from dng_tgn import DNGError, UnsupportedLayerError
from dng_tgn.errors import InvalidParameterError, UnsupportedOptionError
from dng_tgn.graph import transforms as T
from dng_tgn.nets import NFNSiren
from dng_tgn.graph.convert import FUNCTIONS, MODULES, OpSpec, pointwise, register_module, supported_table, where

TOL = dict(atol=1e-5, rtol=1e-5)
ROOT = Path(__file__).resolve().parents[1]


class Fn(nn.Module):
    """Linear(3 -> 4), then ``fn``, then Linear(4 -> 2): a hidden step written as a function call."""

    def __init__(self, fn, width=4):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.fn = nn.Linear(3, width), nn.Linear(width, 2), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


def conv_net(middle, tail=None, c=2, hw=9):
    torch.manual_seed(0)
    tail = tail or [nn.Conv2d(c, 2, 1)]
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), *middle, *tail).eval(), (1, hw, hw)


def replays(model, input_shape=None, x=None):
    x = torch.randn(4, *(input_shape or (3,))) if x is None else x
    with torch.no_grad():
        expected = model(x.clone())
    got = dng_tgn.replay(dng_tgn.to_event_stream(model, input_shape=input_shape), x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **TOL)


# -- options that used to be ignored now convert exactly -------------------------------------------------------------
@pytest.mark.parametrize(
    "act", [nn.ELU(alpha=3.0), nn.Softplus(beta=3.0, threshold=0.5), nn.LeakyReLU(0.3), nn.GELU(approximate="tanh")]
)
def test_activation_options_are_reproduced(act):
    replays(Fn(act))


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(2, dilation=2),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AvgPool2d(3, padding=1, count_include_pad=False),
        nn.AvgPool2d(2, divisor_override=3),
        nn.AvgPool2d(2, stride=2, ceil_mode=True),
    ],
)
def test_pool_options_are_reproduced(pool):
    # a flatten after the pool makes the map size part of the stream: ceil_mode=True used to crash replay here
    torch.manual_seed(0)
    with torch.no_grad():
        n = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), pool, nn.Flatten())(torch.zeros(1, 1, 9, 9)).shape[1]
    model, shape = conv_net([pool, nn.Flatten()], [nn.Linear(n, 2)])
    replays(model, shape)


@pytest.mark.parametrize("pass_shape", [True, False])
def test_conv1d_nets_convert_exactly(pass_shape):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2, ceil_mode=True), nn.Conv1d(3, 4, 3, padding="same", dilation=2),
        nn.AvgPool1d(3, 2, 1, count_include_pad=False), nn.Conv1d(4, 4, 1), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()
    stream = dng_tgn.to_event_stream(model, input_shape=(2, 11) if pass_shape else None)
    assert stream.num_timestamps == 4 and stream.edge_groups[0].slots == 3  # one edge per kernel scalar, as for Conv2d
    replays(model, (2, 11))
    out_maps = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Conv1d(3, 2, 1)).eval()  # the output stays (B, C, L)
    replays(out_maps, (2, 9))


def test_torch_add_alpha_is_applied():
    replays(Fn(lambda h: torch.add(h, 1.0, alpha=3)))
    replays(Fn(lambda h: torch.sub(h, 1.0, alpha=3)))
    replays(Fn(lambda h: h.add(2.0, alpha=-0.5)))


@pytest.mark.parametrize("fn", [lambda h: 2.0 - h, lambda h: h - 2.0, lambda h: 2.0 * h, lambda h: h / 4.0, lambda h: -h])
def test_constants_on_either_side(fn):
    replays(Fn(fn))


def test_constant_divided_by_activation_is_refused():
    """``1.0 / (h + 3)`` used to convert as ``(h + 3) / 1.0``."""
    with pytest.raises(UnsupportedLayerError, match=r"truediv.*'truediv'.*divided by a constant"):
        dng_tgn.to_event_stream(Fn(lambda h: 1.0 / (h + 3)))


# -- refused options -------------------------------------------------------------------------------------------------------
class _Residual(nn.Module):
    def __init__(self, combine):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.combine = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2), combine

    def forward(self, x):
        h = self.a(x)
        return self.c(self.combine(self.b(h), h))


REFUSED = [
    # (model, input_shape, op name, option)
    (conv_net([], [nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")])[0], (1, 9, 9), "Conv2d", "padding_mode"),
    (conv_net([], [nn.Conv2d(2, 2, 2, padding="same")])[0], (1, 9, 9), "Conv2d", "padding"),
    (conv_net([nn.MaxPool2d(2, return_indices=True)])[0], (1, 9, 9), "MaxPool2d", "return_indices"),
    (conv_net([nn.AdaptiveAvgPool2d((None, 2))])[0], (1, 9, 9), "AdaptiveAvgPool2d", "output_size"),
    (conv_net([nn.Flatten(2)])[0], (1, 9, 9), "Flatten", "start_dim"),
    (conv_net([nn.Flatten(1, 2)])[0], (1, 9, 9), "Flatten", "end_dim"),
    (Fn(lambda h: torch.flatten(h)), None, "torch.flatten", "start_dim"),
    (Fn(lambda h: torch.div(h, 2.0, rounding_mode="floor")), None, "torch.div", "rounding_mode"),
    (Fn(lambda h: F.dropout(h, 0.5)), None, "F.dropout", "training"),
    (Fn(lambda h: F.dropout(h, 0.5, True)), None, "F.dropout", "training"),
    (Fn(lambda h: torch.add(h, 1.0, out=None)), None, "torch.add", "out"),
    (Fn(lambda h: h.mean(1, keepdim=True)), None, "Tensor.mean", "dim"),
    (Fn(lambda h: F.gelu(h, approximate="fast")), None, "F.gelu", "approximate"),
    (Fn(lambda h: F.avg_pool2d(h, 2, divisor_override=0)), None, "F.avg_pool2d", "divisor_override"),
]


@pytest.mark.parametrize("model,shape,op,option", REFUSED, ids=[f"{r[2]}.{r[3]}" for r in REFUSED])
def test_unsupported_option_is_refused_by_name(model, shape, op, option):
    with pytest.raises(UnsupportedOptionError, match=rf"option {option}=.* of {re.escape(op)} at position '[\w.]+'") as info:
        dng_tgn.to_event_stream(model, input_shape=shape)
    assert info.value.option == option and f"supported {option}:" in str(info.value)


@pytest.mark.parametrize(
    "model,match",
    [
        (Fn(lambda h: h * h), "times a constant number, or .* as a gate"),
        (Fn(lambda h: F.relu(h, inplace=True) + h), "in place"),  # h is read after relu_ wrote into it
        (_Residual(lambda new, old: old - new), "earlier activation"),
        (_Residual(lambda new, old: torch.add(old, new, alpha=2.0)), "earlier activation"),
        (Fn(lambda h: h.relu().view(-1)), "Tensor.view"),
        (Fn(lambda h: torch.stack([h, h], 1)), "torch.stack"),
        (Fn(lambda h: F.max_pool2d(h, 2, return_indices=True)[0]), "max_pool2d_with_indices"),
    ],
)
def test_unsupported_uses_are_refused(model, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        dng_tgn.to_event_stream(model)


class _Branches(nn.Module):
    """``h`` is read by the ReLU *and* joined by a residual: the residual must not leak into the ReLU branch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.d = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        s = self.a(x)
        h = self.b(s)
        return self.c(torch.relu(h)) + self.d(h + s)


def test_layer_output_read_elsewhere_is_not_joined_by_a_residual():
    with pytest.raises(UnsupportedLayerError, match="'b' is also read elsewhere"):
        dng_tgn.to_event_stream(_Branches())


# -- misleading errors are now plain -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model,shape,name",
    [
        (nn.Sequential(nn.LSTM(3, 4)), (5, 3), "LSTM"),
        (nn.Sequential(nn.GRU(3, 4)), (5, 3), "GRU"),
        (nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), (1,), "Embedding"),
        (nn.Sequential(nn.ConvTranspose2d(1, 2, 3), nn.Conv2d(2, 1, 1)), (1, 5, 5), "ConvTranspose2d"),
        (nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.Linear(6, 1)), (1, 5, 5, 5), "Conv3d"),
    ],
)
def test_unsupported_module_names_itself_and_what_is_supported(model, shape, name, capfd):
    with pytest.raises(UnsupportedLayerError, match=f"unsupported layer {name} at position '0': .*(supported|Conv2d)"):
        dng_tgn.to_event_stream(model, input_shape=shape)
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out  # the shape pass used to print a torch traceback


def test_unknown_module_lists_supported_modules():
    with pytest.raises(UnsupportedLayerError, match=r"Softsign at position '1': supported modules: .*nn\.Linear"):
        dng_tgn.to_event_stream(nn.Sequential(nn.Linear(3, 4), nn.Softsign(), nn.Linear(4, 2)))


def test_input_shape_that_does_not_fit_names_the_node(capfd):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(dng_tgn.ShapeMismatchError, match=r"input_shape \(1, 9, 9\) does not fit the model at '_2'"):
        dng_tgn.to_event_stream(model, input_shape=(1, 9, 9))
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_with_a_note(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)).to(dtype)
    with pytest.warns(UserWarning, match=f"{str(dtype)[6:]} tensor.*to float32"):
        stream = dng_tgn.to_event_stream(model, input_shape=(1, 5, 5))
    x = torch.randn(3, 1, 5, 5).to(dtype)
    expected = model.float()(x.float())  # the weights as float32: what the stream holds
    torch.testing.assert_close(dng_tgn.replay(stream, x.float()), expected, **TOL)
    with pytest.warns(UserWarning, match="to float32"):
        dng_tgn.to_event_stream({k: v.to(dtype) for k, v in NFNSiren().state_dict().items()})


def test_meta_tensors_are_refused_by_name():
    with pytest.raises(InvalidParameterError, match="'0.weight' is a meta tensor"):
        dng_tgn.to_event_stream(nn.Sequential(nn.Linear(3, 4)).to("meta"))
    sd = dict(NFNSiren().state_dict())
    sd["net.1.linear.weight"] = torch.empty(32, 32, device="meta")
    with pytest.raises(InvalidParameterError, match="'net.1.linear.weight' is a meta tensor"):
        dng_tgn.to_event_stream(sd)


@pytest.mark.parametrize("bad", [None, "weights.pt", b"x", {"a": 1}])
def test_non_tensor_state_dict_values_are_refused_by_key(bad):
    sd = dict(NFNSiren().state_dict())
    sd["net.0.linear.bias"] = bad
    with pytest.raises(InvalidParameterError, match="'net.0.linear.bias' .*expected a torch.Tensor"):
        dng_tgn.to_event_stream(sd)
    with pytest.raises(InvalidParameterError, match="net.0.linear.bias"):
        dng_tgn.batch_state_dicts([NFNSiren().state_dict(), sd])
    assert issubclass(InvalidParameterError, DNGError)


# -- batch norm folding -----------------------------------------------------------------------------------------------------
def _bn_net(seed, bias=False):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, bias=bias), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4, bias=bias),
                      nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    for bn in (m[1], m[5]):
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.data.uniform_(0.5, 4.0)
        bn.bias.data.uniform_(-1, 1)
    return m.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_batch_state_dicts_folds_every_networks_own_batchnorm(bias):
    nets = [_bn_net(i, bias) for i in range(4)]
    batch = dng_tgn.batch_state_dicts([n.state_dict() for n in nets], arch=_bn_net(99, bias), fold_batchnorm=True, input_shape=(1, 5, 5))
    streams = [dng_tgn.to_event_stream(n, input_shape=(1, 5, 5), fold_batchnorm=True) for n in nets]
    one_by_one = dng_tgn.batch_streams(streams)
    for got, want in zip(batch.steps, one_by_one.steps):
        torch.testing.assert_close(got.weight, want.weight, atol=0, rtol=0)
    torch.testing.assert_close(batch.node_values, one_by_one.node_values, atol=0, rtol=0)
    x = torch.randn(3, 1, 5, 5)
    for n, s in zip(nets, streams):
        torch.testing.assert_close(dng_tgn.replay(s, x), n(x), **TOL)


def test_batchnorm_that_cannot_be_folded_is_named():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(self.bn(h) + h)

    with pytest.raises(UnsupportedLayerError, match="BatchNorm1d at position 'bn'.*cannot|not such a pair"):
        dng_tgn.to_event_stream(Shared().eval(), fold_batchnorm=True)
    no_stats = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)).eval()
    with pytest.raises(UnsupportedLayerError, match="running statistics"):
        dng_tgn.to_event_stream(no_stats, fold_batchnorm=True)


# -- the allow-list itself ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", list(MODULES), ids=lambda c: c.__name__)
def test_module_specs_list_every_constructor_argument(cls):
    """A module option the spec does not list would be ignored silently; so every argument is listed."""
    params = inspect.signature(cls.__init__).parameters
    wanted = {n for n, p in params.items() if n not in ("self", "device", "dtype") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    assert wanted <= {o.name for o in MODULES[cls].options}


def test_function_specs_match_python_signatures():
    checked = 0
    for fn, spec in FUNCTIONS.items():
        target = F._max_pool2d if fn is F.max_pool2d else fn
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue  # a builtin: its spec is checked by the property test and the refusals above
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
            continue
        expected = list(spec.operands) + [o.name for o in spec.options]
        if all(p.kind == p.POSITIONAL_ONLY for p in params.values()):  # operator.add(a, b, /)
            assert len(params) == len(expected), spec.name
        else:
            assert list(params) == expected, spec.name
        checked += 1
    assert checked >= 8


def test_register_a_module_of_your_own():
    class Square(nn.Module):
        def __init__(self, scale=1.0):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return self.scale * x * x

    model = nn.Sequential(nn.Linear(3, 4), Square(2.0), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match="times a constant"):  # traced through: x * x is not listed
        dng_tgn.to_event_stream(model)
    register_module(Square, OpSpec(
        "Square", pointwise(lambda o: T.Elementwise("square", lambda x, scale: scale * x * x, (("scale", o["scale"]),))),
        (where("scale", lambda v: isinstance(v, float), "a float", default=1.0),),
    ))
    try:
        replays(model)
    finally:
        del MODULES[Square]


def test_readme_table_is_the_allow_list():
    readme = (ROOT / "README.md").read_text()
    assert supported_table(built_in_only=True) in readme, "regenerate the README's table: supported_table(built_in_only=True)"


def test_nothing_is_converted_silently_without_a_spec():
    """Every node type in a traced model is either in the registry or refused: an empty registry refuses all."""
    with pytest.raises(UnsupportedLayerError, match="torch.clamp at position 'clamp'"):
        dng_tgn.to_event_stream(Fn(lambda h: torch.clamp(h, 0, 1)))


class _Bad:
    """A value no restricted option accepts."""

    def __repr__(self):
        return "<bad>"


def _restricted(spec: OpSpec):
    return [o for o in spec.options if o.check is not None]


def _bind_one(node_kind, target, kwargs, module=None):
    import torch.fx as fx

    from dng_tgn.graph.convert.module import _Converter

    root = nn.Module()
    graph = fx.Graph()
    x = graph.placeholder("x")
    if node_kind == "module":
        root.m = module
        node = graph.call_module("m", (x,))
    elif node_kind == "function":
        node = graph.call_function(target, (x, x) if len(kwargs.pop("__operands")) == 2 else (x,), kwargs)
    else:
        node = graph.call_method(target, (x, x) if len(kwargs.pop("__operands")) == 2 else (x,), kwargs)
    graph.output(node)
    return _Converter(root, None, "test")._bind(node)


def _valid(o):
    return o.supported_example()


@pytest.mark.parametrize("cls", [c for c, s in MODULES.items() if _restricted(s)], ids=lambda c: c.__name__)
def test_every_restricted_module_option_is_refused(cls):
    spec = MODULES[cls]
    # options read from other attributes (nn.MultiheadAttention's add_bias_kv is bias_k) cannot be set to <bad> here:
    # their refusals are tested with real modules (test_convert_vit_b16.py)
    for bad in [o for o in _restricted(spec) if o.read is None]:
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        for o in spec.options:
            if o.read is None:
                setattr(m, o.name, _Bad() if o is bad else _valid(o))
        m.bias = None
        with pytest.raises(UnsupportedOptionError, match=rf"option {bad.name}=<bad> of {cls.__name__} at position 'm'"):
            _bind_one("module", None, {}, m)


@pytest.mark.parametrize("table", ["function", "tensor method"])
def test_every_restricted_function_option_is_refused(table):
    from dng_tgn.graph.convert import METHODS

    checked = 0
    entries = FUNCTIONS.items() if table == "function" else METHODS.items()
    for target, spec in entries:
        for bad in _restricted(spec):
            kwargs = {o.name: (_Bad() if o is bad else _valid(o)) for o in spec.options}
            kwargs["__operands"] = spec.operands
            name = target if table == "function" else target.__name__
            with pytest.raises(UnsupportedOptionError, match=rf"option {bad.name}=<bad> of {re.escape(spec.name)}"):
                _bind_one(table, name, kwargs)
            checked += 1
        # and an argument the spec does not know at all
        kwargs = {"out": None, "__operands": spec.operands}
        with pytest.raises(UnsupportedOptionError, match=r"option out=None .*not an argument the converter knows"):
            _bind_one(table, target if table == "function" else target.__name__, kwargs)
    assert checked >= 10
