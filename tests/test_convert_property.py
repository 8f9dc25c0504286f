"""Property: any model built from the converter's allow-list, with random (mostly non-default) options,
replays exactly (1e-5) from its event stream.

Models are tiny MLPs, 2-d and 1-d CNNs assembled from random steps: layers with weights (Linear, Conv2d), activation
modules, torch/F functions and tensor methods, arithmetic with constants on either side, pooling, flatten,
global pooling and residual sums. Hypothesis runs derandomized, so CI sees the same models every run.
"""
from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import dng_tgn
from dng_tgn.nets.siren import Sine

MODELS = {"mlp": 110, "cnn": 130, "cnn1d": 80}  # 320 models per run


def SETTINGS(family):
    return settings(
        max_examples=MODELS[family], deadline=None, derandomize=True, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


CHECKED = dict.fromkeys(MODELS, 0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors are tiny: thread start-up would cost more than the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RandomNet(nn.Module):
    """Runs ``plan``: ("layer", i) calls ``self.layers[i]``, ("fn", f) applies ``f``, ("save",) keeps the
    current activation, ("residual", f) combines the new one with the kept one as ``f(new, kept)``."""

    def __init__(self, layers, plan):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.plan = plan

    def forward(self, x):
        kept = None
        for step in self.plan:
            if step[0] == "layer":
                x = self.layers[step[1]](x)
            elif step[0] == "fn":
                x = step[1](x)
            elif step[0] == "save":
                kept = x
            else:
                x = step[1](x, kept)
        return x


# -- pointwise steps, each a module or a function/method with random options -----------------------------
small = st.floats(0.2, 3.0).map(lambda v: round(v, 3))
signed = st.floats(-3.0, 3.0).filter(lambda v: abs(v) > 0.1).map(lambda v: round(v, 3))


@st.composite
def pointwise_step(draw):
    kind = draw(st.integers(0, 33))
    a, b = draw(small), draw(signed)
    inplace = draw(st.booleans())
    table = [
        lambda: nn.ReLU(inplace=inplace),
        lambda: nn.Tanh(),
        lambda: nn.Sigmoid(),
        lambda: nn.GELU(approximate=draw(st.sampled_from(["none", "tanh"]))),
        lambda: nn.ELU(alpha=a, inplace=inplace),
        lambda: nn.SiLU(inplace=inplace),
        lambda: nn.Softplus(beta=a, threshold=draw(st.floats(0.5, 20.0))),
        lambda: nn.LeakyReLU(negative_slope=b / 10, inplace=inplace),
        lambda: Sine(w0=a),
        lambda: nn.Identity(),
        lambda: nn.Dropout(p=draw(st.floats(0.0, 0.9))),
        lambda: (lambda x: F.elu(x, alpha=a)),
        lambda: (lambda x: F.softplus(x, a, 2.0)),
        lambda: (lambda x: F.leaky_relu(x, b / 10)),
        lambda: (lambda x: F.gelu(x, approximate="tanh")),
        lambda: (lambda x: torch.relu(x)),
        lambda: (lambda x: torch.sigmoid(x)),
        lambda: (lambda x: x.tanh()),
        lambda: (lambda x: x.sin()),
        lambda: (lambda x: F.dropout(x, 0.3, training=False)),
        lambda: (lambda x: x + b),
        lambda: (lambda x: b + x),
        lambda: (lambda x: x - b),
        lambda: (lambda x: b - x),
        lambda: (lambda x: x * b),
        lambda: (lambda x: b * x),
        lambda: (lambda x: x / b),
        lambda: (lambda x: torch.add(x, b, alpha=a)),
        lambda: (lambda x: torch.sub(x, b, alpha=a)),
        lambda: (lambda x: x.add(b, alpha=a)),
        lambda: (lambda x: -x),
        lambda: (lambda x: torch.mul(x, b)),
        lambda: (lambda x: torch.div(x, b)),
        lambda: (lambda x: F.silu(x)),
    ]
    made = table[kind]()
    return made


def add_pointwise(draw, layers, plan, n_max=2):
    for _ in range(draw(st.integers(0, n_max))):
        step = draw(pointwise_step())
        if isinstance(step, nn.Module):
            layers.append(step)
            plan.append(("layer", len(layers) - 1))
        else:
            plan.append(("fn", step))


RESIDUALS = [
    lambda new, kept: new + kept,
    lambda new, kept: kept + new,
    lambda new, kept: new - kept,
    lambda new, kept: operator.iadd(new, kept),
]


@st.composite
def residual_combiner(draw):
    i = draw(st.integers(0, len(RESIDUALS) + 1))
    if i < len(RESIDUALS):
        return RESIDUALS[i]
    alpha = draw(signed)
    return (lambda new, kept: torch.add(new, kept, alpha=alpha)) if i == len(RESIDUALS) else (lambda new, kept: torch.sub(new, kept, alpha=alpha))


# -- MLPs -------------------------------------------------------------------------------------------------------------
@st.composite
def mlp_models(draw):
    width = draw(st.integers(1, 5))
    n_in = width
    layers, plan = [], []
    add_pointwise(draw, layers, plan, 1)
    for _ in range(draw(st.integers(1, 4))):
        residual = draw(st.booleans())
        out = width if residual else draw(st.integers(1, 5))
        if residual:
            plan.append(("save",))
        layers.append(nn.Linear(width, out, bias=draw(st.booleans())))
        plan.append(("layer", len(layers) - 1))
        if residual:
            plan.append(("residual", draw(residual_combiner())))
        width = out
        add_pointwise(draw, layers, plan)
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    for layer in layers:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    return RandomNet(layers, plan).eval(), (n_in,), draw(st.booleans())


# -- CNNs ------------------------------------------------------------------------------------------------------------
def _shape_after(module_or_fn, shape):
    with torch.no_grad():
        y = module_or_fn(torch.zeros(1, *shape))
    return tuple(y.shape[1:])


@st.composite
def pool_step(draw, shape):
    h, w = shape[1:]
    k = draw(st.integers(1, min(3, h, w)))
    stride = draw(st.sampled_from([None, 1, 2]))
    pad = draw(st.integers(0, k // 2))
    ceil = draw(st.booleans())
    kind = draw(st.integers(0, 3))
    if kind == 0:
        d = draw(st.integers(1, 2))
        return nn.MaxPool2d(k, stride, pad, dilation=d, ceil_mode=ceil)
    if kind == 1:
        div = draw(st.sampled_from([None, 1, 3]))
        return nn.AvgPool2d(k, stride, pad, ceil_mode=ceil, count_include_pad=draw(st.booleans()), divisor_override=div)
    if kind == 2:
        return lambda x: F.max_pool2d(x, k, stride, pad, ceil_mode=ceil)
    return lambda x: F.avg_pool2d(x, k, stride, pad, ceil, count_include_pad=False)


@st.composite
def cnn_models(draw):
    c = draw(st.integers(1, 3))
    shape = (c, draw(st.integers(4, 7)), draw(st.integers(4, 7)))
    input_shape = shape
    layers, plan = [], []
    add_pointwise(draw, layers, plan, 1)
    for _ in range(draw(st.integers(1, 3))):
        residual = draw(st.integers(0, 3)) == 0
        c_out = shape[0] if residual else draw(st.integers(1, 3))
        if residual:
            k = draw(st.sampled_from([1, 3]))
            conv = nn.Conv2d(shape[0], c_out, k, padding=draw(st.sampled_from([k // 2, "same"])), bias=draw(st.booleans()))
            plan.append(("save",))
        else:
            k = draw(st.integers(1, min(3, *shape[1:])))
            padding = draw(st.sampled_from([0, 1, "valid", "same"] if k % 2 else [0, 1, "valid"]))
            stride, dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
            if padding == "same":
                stride = 1
                dilation = dilation if (dilation * (k - 1)) % 2 == 0 else 1
            if dilation * (k - 1) + 1 > min(shape[1:]) + 2 * (padding if isinstance(padding, int) else 0):
                dilation = 1
            conv = nn.Conv2d(shape[0], c_out, k, stride=stride, padding=padding, dilation=dilation, bias=draw(st.booleans()))
        layers.append(conv)
        plan.append(("layer", len(layers) - 1))
        if residual:
            plan.append(("residual", draw(residual_combiner())))
        shape = _shape_after(conv, shape)
        add_pointwise(draw, layers, plan, 1)
        if draw(st.booleans()) and min(shape[1:]) >= 2:
            pool = draw(pool_step(shape))
            try:
                shape = _shape_after(pool, shape)
            except RuntimeError:  # the dilated window does not fit the map: no pooling here
                pool = nn.Identity()
            if isinstance(pool, nn.Module):
                layers.append(pool)
                plan.append(("layer", len(layers) - 1))
            else:
                plan.append(("fn", pool))
            add_pointwise(draw, layers, plan, 1)
    ending = draw(st.integers(0, 5))
    if ending == 0:
        pass  # the output is a feature map
    elif ending == 1:
        plan.append(("fn", lambda x: x.mean((2, 3))))
    elif ending == 2:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        plan += [("layer", len(layers) - 2), ("layer", len(layers) - 1)]
    elif ending == 3:
        plan.append(("fn", lambda x: torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)))
    elif ending == 4:
        plan.append(("fn", lambda x: x.mean(dim=(-1, -2), keepdim=True).flatten(1)))
    else:
        plan.append(("fn", lambda x: x.flatten(1)))
    if ending != 0 and draw(st.booleans()):
        n = shape[0] if ending != 5 else shape[0] * shape[1] * shape[2]
        add_pointwise(draw, layers, plan, 1)
        layers.append(nn.Linear(n, draw(st.integers(1, 3))))
        plan.append(("layer", len(layers) - 1))
        add_pointwise(draw, layers, plan, 1)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    for layer in layers:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer.reset_parameters()
    return RandomNet(layers, plan).eval(), input_shape, True


@st.composite
def cnn1d_models(draw):
    """Conv1d nets on (B, C, L): 1-d pools, global pooling or flatten, residual convs."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(4, 9)))
    input_shape = shape
    layers, plan = [], []
    add_pointwise(draw, layers, plan, 1)
    for _ in range(draw(st.integers(1, 3))):
        residual = draw(st.integers(0, 3)) == 0
        if residual:
            k = draw(st.sampled_from([1, 3, 5]))
            conv = nn.Conv1d(shape[0], shape[0], k, padding=draw(st.sampled_from([k // 2, "same"])), bias=draw(st.booleans()))
            plan.append(("save",))
        else:
            k = draw(st.integers(1, min(3, shape[1])))
            padding = draw(st.sampled_from([0, 1, "valid"] + (["same"] if k % 2 else [])))
            stride = 1 if padding == "same" else draw(st.integers(1, 2))
            dilation = draw(st.integers(1, 2)) if padding != "same" else 1
            if dilation * (k - 1) + 1 > shape[1] + 2 * (padding if isinstance(padding, int) else 0):
                dilation = 1
            conv = nn.Conv1d(shape[0], draw(st.integers(1, 3)), k, stride=stride, padding=padding, dilation=dilation,
                             bias=draw(st.booleans()))
        layers.append(conv)
        plan.append(("layer", len(layers) - 1))
        if residual:
            plan.append(("residual", draw(residual_combiner())))
        shape = _shape_after(conv, shape)
        add_pointwise(draw, layers, plan, 1)
        if draw(st.booleans()) and shape[1] >= 2:
            k = draw(st.integers(1, min(3, shape[1])))
            stride, pad, ceil = draw(st.sampled_from([None, 1, 2])), draw(st.integers(0, k // 2)), draw(st.booleans())
            pool = draw(st.sampled_from([
                nn.MaxPool1d(k, stride, pad, dilation=draw(st.integers(1, 2)), ceil_mode=ceil),
                nn.AvgPool1d(k, stride, pad, ceil_mode=ceil, count_include_pad=draw(st.booleans())),
                lambda x, k=k, s=stride, p=pad, c=ceil: F.max_pool1d(x, k, s, p, ceil_mode=c),  # bound now, not at call time
                lambda x, k=k, s=stride, p=pad, c=ceil: F.avg_pool1d(x, k, s, p, c, False),
            ]))
            try:
                shape = _shape_after(pool, shape)
            except RuntimeError:
                pool = nn.Identity()
            if isinstance(pool, nn.Module):
                layers.append(pool)
                plan.append(("layer", len(layers) - 1))
            else:
                plan.append(("fn", pool))
    ending = draw(st.integers(0, 4))
    if ending == 1:
        plan.append(("fn", lambda x: x.mean(-1)))
    elif ending == 2:
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]
        plan += [("layer", len(layers) - 2), ("layer", len(layers) - 1)]
    elif ending == 3:
        plan.append(("fn", lambda x: F.adaptive_avg_pool1d(x, 1).flatten(1)))
    elif ending == 4:
        plan.append(("fn", lambda x: torch.flatten(x, 1)))
    if ending != 0 and draw(st.booleans()):
        add_pointwise(draw, layers, plan, 1)
        layers.append(nn.Linear(shape[0] * (shape[1] if ending == 4 else 1), draw(st.integers(1, 3))))
        plan.append(("layer", len(layers) - 1))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    for layer in layers:
        if isinstance(layer, (nn.Linear, nn.Conv1d)):
            layer.reset_parameters()
    return RandomNet(layers, plan).eval(), input_shape, ending == 4 or draw(st.booleans())  # a flatten needs the map size


def check_replay(model, input_shape, pass_shape):
    x = torch.randn(3, *input_shape)
    with torch.no_grad():
        expected = model(x.clone())  # in-place activations may write into their input
    stream = dng_tgn.to_event_stream(model, input_shape=input_shape if pass_shape else None)
    got = dng_tgn.replay(stream, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@SETTINGS("mlp")
@given(mlp_models())
def test_random_mlps_replay_exactly(case):
    check_replay(*case)
    CHECKED["mlp"] += 1


@SETTINGS("cnn")
@given(cnn_models())
def test_random_cnns_replay_exactly(case):
    check_replay(*case)
    CHECKED["cnn"] += 1


@SETTINGS("cnn1d")
@given(cnn1d_models())
def test_random_1d_cnns_replay_exactly(case):
    check_replay(*case)
    CHECKED["cnn1d"] += 1


def test_at_least_300_models_were_checked():
    if 0 in CHECKED.values():
        pytest.skip("runs after the two property tests")
    assert sum(CHECKED.values()) >= 300, CHECKED
