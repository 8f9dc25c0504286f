"""Blocks of standard architectures, written here, convert exactly; the encoder respects their symmetries.

Each block reproduces one family's structure with tiny channels (random weights, BatchNorm already folded):
MobileNetV2/EfficientNet/MNASNet inverted residual (depthwise conv, squeeze-and-excitation), SqueezeNet's Fire
module (concat, ceil-mode pooling), a ShuffleNetV2 unit (chunk, concat, channel shuffle), RegNetY's grouped
bottleneck with SE, VGG's adaptive pooling head, and a ConvNeXt block (permute to channels-last, LayerNorm,
Linear, layer scale). For every new op: replay within 1e-4, a permutation of hidden channels (a true symmetry)
leaves the DNG-Encoder's embedding unchanged to 1e-5, and a control that is *not* a symmetry changes it.
"""
from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dng_tgn
from dng_tgn import UnsupportedLayerError
from dng_tgn.errors import UnsupportedOptionError
from dng_tgn.graph.events import Pattern
from dng_tgn.nn import ConcatReadout, DNGEncoder, ExecutionPath

TOL = 1e-5
REPLAY = dict(atol=1e-4, rtol=1e-4)


def _replays(model, shape, n=3):
    torch.manual_seed(1)
    model.eval()
    x = torch.randn(n, *shape)
    stream = dng_tgn.to_event_stream(model, input_shape=shape)
    with torch.no_grad():
        expected = model(x)
    got = dng_tgn.replay(stream, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **REPLAY)
    return stream


def _permuted(model, edits):
    """A copy of ``model`` reindexed by ``edits`` = [(name, dim, index), ...] or ("__set__name", value)."""
    new = copy.deepcopy(model)
    sd = new.state_dict()
    for e in edits:
        if e[0].startswith("__set__"):
            sd[e[0][len("__set__"):]] = e[1]
        else:
            sd[e[0]] = sd[e[0]].index_select(e[1], e[2])
    new.load_state_dict(sd)
    return new


def _embed(model, shape, n_out):
    stream = dng_tgn.to_event_stream(model, input_shape=shape)
    torch.manual_seed(0)
    enc = DNGEncoder(16, message_heads=stream.num_slots, head_dim=4, fourier_size=8, max_timestamps=stream.num_timestamps,
                     readout=ConcatReadout(n_out), path=ExecutionPath.TORCH, device="cpu")
    with torch.no_grad():
        return enc([stream]).embedding


def _symmetry(model, shape, n_out, edits, control_edits):
    """``edits`` is a symmetry (same function, same embedding); ``control_edits`` is not (both change)."""
    torch.manual_seed(2)
    x = torch.randn(3, *shape)
    model.eval()
    perm, control = _permuted(model, edits), _permuted(model, control_edits)
    with torch.no_grad():
        torch.testing.assert_close(perm(x), model(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(control(x), model(x), atol=1e-4), "the control is a symmetry after all"
    a, b, c = _embed(model, shape, n_out), _embed(perm, shape, n_out), _embed(control, shape, n_out)
    assert (a - b).abs().max() <= TOL
    assert (a - c).abs().max() > 10 * TOL, "the encoder does not see the broken symmetry"


def _rp(n, seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        p = torch.randperm(n, generator=g)
        if not torch.equal(p, torch.arange(n)):
            return p


# -- activations, pooling, dropout ----------------------------------------------------------------------------------
ACTS = [nn.ReLU6(), nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(), nn.Mish(), nn.ReLU6(inplace=True)]


class _FnAct(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.a, self.b, self.fn = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 2, 1), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


@pytest.mark.parametrize("act", ACTS + [F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.mish], ids=str)
def test_activations_replay(act):
    torch.manual_seed(0)
    model = _FnAct(act) if not isinstance(act, nn.Module) else nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), act, nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[0].weight.mul_(3) if isinstance(model, nn.Sequential) else model.a.weight.mul_(3)  # reach every piece (6, ±3)
    _replays(model, (2, 5, 5))


@pytest.mark.parametrize("size", [1, 2, (3, 2), 4, (1, 5)])
def test_adaptive_avg_pool_to_any_size(size):
    torch.manual_seed(0)
    h, w = (size, size) if isinstance(size, int) else size
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(size), nn.Flatten(),
                          nn.Dropout(0.3), nn.Linear(3 * h * w, 2))
    _replays(model, (1, 9, 7))


def test_ceil_mode_pooling():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(3, 2, 1),
                          nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(2 * 2 * 2, 2))
    _replays(model, (1, 8, 8))


# -- grouped / depthwise convolution -----------------------------------------------------------------------------------
@pytest.mark.parametrize("groups,c_in,c_out", [(2, 4, 6), (4, 4, 4), (4, 4, 8), (3, 6, 3)])
def test_grouped_conv_replays_and_has_edges_only_inside_groups(groups, c_in, c_out):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, c_in, 3, padding=1), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups), nn.ReLU(),
                          nn.Conv2d(c_out, 2, 1))
    stream = _replays(model, (1, 6, 6))
    e = next(g for g in stream.edge_groups if g.name == "2.weight")
    assert e.pattern == Pattern.SPARSE and e.num_edges == c_out * (c_in // groups)
    params = stream.recover_parameters()
    torch.testing.assert_close(params["2.weight"], model[2].weight.detach())


def test_grouped_conv_stream_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1))
    stream = dng_tgn.to_event_stream(model, input_shape=(1, 7, 7))
    from dng_tgn.graph.io import load_stream, save_stream

    save_stream(stream, tmp_path / "s.pt")
    back = load_stream(tmp_path / "s.pt")
    x = torch.randn(2, 1, 7, 7)
    torch.testing.assert_close(dng_tgn.replay(back, x), model(x).detach(), **REPLAY)


# -- family blocks ---------------------------------------------------------------------------------------------------------
class SE(nn.Module):
    def __init__(self, c, r, act=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        self.pool, self.fc1, self.act, self.fc2, self.gate = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, r, 1), act(), nn.Conv2d(r, c, 1), gate()

    def forward(self, x):
        return self.gate(self.fc2(self.act(self.fc1(self.pool(x))))) * x


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet-B0 / MNASNet: expand 1x1, depthwise 3x3, (SE), project 1x1, residual."""

    def __init__(self, c=3, e=6, se=True):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.expand, self.act1 = nn.Conv2d(c, e, 1), nn.ReLU6()
        self.dw, self.act2 = nn.Conv2d(e, e, 3, padding=1, groups=e), nn.SiLU()
        self.se = SE(e, 2) if se else nn.Identity()
        self.project = nn.Conv2d(e, c, 1)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        x = self.stem(x)
        y = self.project(self.se(self.act2(self.dw(self.act1(self.expand(x))))))
        y = y + x
        return self.head(torch.flatten(F.adaptive_avg_pool2d(F.hardswish(y), 1), 1))


class Fire(nn.Module):
    """SqueezeNet 1.1: squeeze 1x1, expand 1x1 and 3x3 concatenated along channels; ceil-mode max pooling."""

    def __init__(self):
        super().__init__()
        self.stem, self.pool = nn.Conv2d(1, 4, 3, stride=2), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.squeeze, self.e1, self.e3 = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 3, 1), nn.Conv2d(2, 3, 3, padding=1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(6, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        x = self.pool(F.relu(self.stem(x)))
        s = F.relu(self.squeeze(x))
        return self.classifier(torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 stride-1 unit: split channels in half, transform one half, concat, shuffle (2 groups)."""

    def __init__(self, c=4):
        super().__init__()
        h = c // 2
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.b1, self.dw, self.b2 = nn.Conv2d(h, h, 1), nn.Conv2d(h, h, 3, padding=1, groups=h), nn.Conv2d(h, h, 1)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x1, x2 = x.chunk(2, dim=1)
        b = F.relu(self.b2(self.dw(F.relu(self.b1(x2)))))
        y = torch.cat((x1, b), dim=1)
        y = y.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)  # channel shuffle
        return self.out(y).mean((2, 3))


class RegNetYBlock(nn.Module):
    """RegNetY: 1x1, grouped 3x3, SE, 1x1, residual."""

    def __init__(self, c=4, w=8, groups=4):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.a, self.b = nn.Conv2d(c, w, 1), nn.Conv2d(w, w, 3, padding=1, groups=groups)
        self.se = SE(w, 2, act=nn.ReLU)
        self.c = nn.Conv2d(w, c, 1)
        self.fc = nn.Linear(c, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.c(self.se(F.relu(self.b(F.relu(self.a(x))))))
        return self.fc(F.relu(y + x).mean((2, 3)))


class VGGHead(nn.Module):
    """VGG-11: conv/ReLU/max-pool, adaptive average pooling to a 2x2 map, flatten, Linear/ReLU/Dropout."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(16, 6), nn.ReLU(True), nn.Dropout(), nn.Linear(6, 2))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, permute to channels-last, LayerNorm, Linear/GELU/Linear, layer scale, permute back,
    residual (stochastic depth is the identity in eval mode)."""

    def __init__(self, c=4, functional_permute=False):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.act, self.pw2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.head = nn.Linear(c, 2)
        self.functional_permute = functional_permute
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x)
        y = torch.permute(y, (0, 2, 3, 1)) if self.functional_permute else y.permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y))))
        y = self.layer_scale * y.permute(0, 3, 1, 2)
        x = x + y
        return self.head(x.mean((2, 3)))


BLOCKS = {
    "convnext_block": (ConvNeXtBlock, (1, 8, 8)),
    "convnext_block_functional": (lambda: ConvNeXtBlock(functional_permute=True), (1, 8, 8)),
    "inverted_residual_se": (lambda: InvertedResidual(), (1, 6, 6)),
    "inverted_residual": (lambda: InvertedResidual(se=False), (1, 6, 6)),
    "fire": (Fire, (1, 15, 15)),
    "shuffle_unit": (ShuffleUnit, (1, 5, 5)),
    "regnety_block": (RegNetYBlock, (1, 5, 5)),
    "vgg_head": (VGGHead, (1, 9, 9)),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_family_blocks_replay_exactly(name):
    torch.manual_seed(0)
    make, shape = BLOCKS[name]
    _replays(make(), shape)


# -- permutation symmetries and their controls -------------------------------------------------------------------------
def test_depthwise_and_se_permutation():
    torch.manual_seed(0)
    model = InvertedResidual(c=3, e=6)
    p, q = _rp(6, 1), _rp(2, 2)
    edits = [("expand.weight", 0, p), ("expand.bias", 0, p), ("dw.weight", 0, p), ("dw.bias", 0, p),
             ("se.fc1.weight", 1, p), ("se.fc1.weight", 0, q), ("se.fc1.bias", 0, q), ("se.fc2.weight", 1, q),
             ("se.fc2.weight", 0, p), ("se.fc2.bias", 0, p), ("project.weight", 1, p)]
    # control: the gates stay with their old channels (SE output not permuted)
    control = [e for e in edits if not e[0].startswith("se.fc2") or e[2] is q]
    _symmetry(model, (1, 6, 6), 2, edits, control)


def test_depthwise_control_kernel_left_behind():
    """Permuting the channels around a depthwise conv but not its kernels is not a symmetry."""
    torch.manual_seed(0)
    model = InvertedResidual(c=3, e=6, se=False)
    p = _rp(6, 3)
    edits = [("expand.weight", 0, p), ("expand.bias", 0, p), ("dw.weight", 0, p), ("dw.bias", 0, p), ("project.weight", 1, p)]
    _symmetry(model, (1, 6, 6), 2, edits, [e for e in edits if not e[0].startswith("dw.")])


def test_grouped_conv_permutation():
    """Within a group, channels permute freely; whole groups permute too (RegNetY block)."""
    torch.manual_seed(0)
    model = RegNetYBlock(c=4, w=8, groups=4)
    edits = _grouped_edits(model)
    control = [e for e in edits if e[0] != "__set__b.weight"]  # the grouped kernels stay: not a symmetry
    _symmetry(model, (1, 5, 5), 2, edits, control)


def _grouped_edits(model):
    """A symmetry of RegNetYBlock's grouped conv (4 groups of 2): permute groups by g, channels inside by swaps."""
    g = torch.tensor([3, 0, 2, 1])
    inside_in = [torch.tensor([1, 0]), torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1, 0])]
    inside_out = [torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1, 0]), torch.tensor([0, 1])]
    p_in = torch.cat([g[k] * 2 + inside_in[k] for k in range(4)])  # new channel -> old channel
    p_out = torch.cat([g[k] * 2 + inside_out[k] for k in range(4)])
    w = model.b.weight.detach()  # (8, 2, 3, 3): out channel o reads the 2 inputs of its group
    new_w = torch.stack([w[int(p_out[o])][inside_in[o // 2]] for o in range(8)])
    q = torch.tensor([1, 0])
    return [("a.weight", 0, p_in), ("a.bias", 0, p_in), ("__set__b.weight", new_w), ("b.bias", 0, p_out),
            ("se.fc1.weight", 1, p_out), ("se.fc1.weight", 0, q), ("se.fc1.bias", 0, q), ("se.fc2.weight", 1, q),
            ("se.fc2.weight", 0, p_out), ("se.fc2.bias", 0, p_out), ("c.weight", 1, p_out)]


def test_convnext_permutation():
    """Channels (stem, depthwise kernels, LayerNorm, layer scale, head) and the MLP's hidden units."""
    torch.manual_seed(0)
    model = ConvNeXtBlock(c=4)
    p, h = _rp(4, 6), _rp(16, 7)
    edits = [("stem.weight", 0, p), ("stem.bias", 0, p), ("dw.weight", 0, p), ("dw.bias", 0, p), ("norm.weight", 0, p),
             ("norm.bias", 0, p), ("pw1.weight", 1, p), ("pw1.weight", 0, h), ("pw1.bias", 0, h), ("pw2.weight", 1, h),
             ("pw2.weight", 0, p), ("pw2.bias", 0, p), ("layer_scale", 0, p), ("head.weight", 1, p)]
    control = [e for e in edits if not e[0].startswith("norm.")]  # the LayerNorm's scale/shift stay behind
    _symmetry(model, (1, 8, 8), 2, edits, control)


def test_concat_permutation():
    """Fire: permuting each expand branch's channels, and the classifier's inputs as the concat lays them out."""
    torch.manual_seed(0)
    model = Fire()
    p1, p3 = _rp(3, 4), _rp(3, 5)
    cols = torch.cat([p1, 3 + p3])
    edits = [("e1.weight", 0, p1), ("e1.bias", 0, p1), ("e3.weight", 0, p3), ("e3.bias", 0, p3), ("classifier.1.weight", 1, cols)]
    control = edits[:-1] + [("classifier.1.weight", 1, torch.cat([p3, 3 + p1]))]  # consumer permuted the wrong way
    _symmetry(model, (1, 15, 15), 2, edits, control)


def test_chunk_and_channel_shuffle_permutation():
    """ShuffleNet unit: the passthrough half, the branch's hidden channels and its output, and the consumer's columns
    where the shuffle put them (x1[i] -> 2i, b[i] -> 2i + 1)."""
    torch.manual_seed(0)
    model = ShuffleUnit(c=4)
    q = torch.tensor([1, 0])
    stem = torch.tensor([1, 0, 2, 3])  # swap the two passthrough channels
    edits = [("stem.weight", 0, stem), ("stem.bias", 0, stem),
             ("b1.weight", 0, q), ("b1.bias", 0, q), ("dw.weight", 0, q), ("dw.bias", 0, q), ("b2.weight", 1, q),
             ("b2.weight", 0, q), ("b2.bias", 0, q), ("out.weight", 1, torch.tensor([2, 3, 0, 1]))]
    # control: the consumer's columns permuted as if there were no shuffle (x1 -> 0, 1; b -> 2, 3)
    control = edits[:-1] + [("out.weight", 1, torch.tensor([1, 0, 3, 2]))]
    _symmetry(model, (1, 5, 5), 3, edits, control)


# -- refusals name the op ------------------------------------------------------------------------------------------------
class _Cat0(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cat([h, h], 2))


class _Chunk2(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.b(self.a(x).chunk(2, dim=2)[0])


class _TransposeHW(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.b(self.a(x).transpose(2, 3))


class _CatResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], 1)
        return self.c(h) + h


class _Stack2(nn.Module):
    """torch.stack of two branches on axis 1 (a concat) or 2 (interleaved channels), merged by flatten(1, 2)."""

    def __init__(self, dim):
        super().__init__()
        self.a, self.b, self.c, self.dim = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 3, 1), nn.Conv2d(6, 2, 1), dim

    def forward(self, x):
        return self.c(torch.stack([F.relu(self.a(x)), torch.tanh(self.b(x))], self.dim).flatten(1, 2))


@pytest.mark.parametrize("dim", [1, 2])
def test_stack_along_channels(dim):
    torch.manual_seed(0)
    _replays(_Stack2(dim), (1, 5, 5))


@pytest.mark.parametrize("model,error,match", [
    (_Cat0(), UnsupportedOptionError, r"option dim=2 of torch.cat"),
    (_Chunk2(), UnsupportedOptionError, r"option dim=2 of Tensor.chunk"),
    (_TransposeHW(), UnsupportedOptionError, r"option dim1=3 of Tensor.transpose"),
    (_CatResidual(), UnsupportedLayerError, r"residual sum of a concatenation"),
])
def test_refusals_name_the_op(model, error, match):
    with pytest.raises(error, match=match):
        dng_tgn.to_event_stream(model, input_shape=(1, 4, 4))


# -- the public registration API: a layer of your own, with its nodes, edges and replay --------------------------------
def test_register_a_layer_with_its_own_edges_and_replay():
    from dataclasses import dataclass

    from dng_tgn.graph.convert import MODULES, OpSpec, any_of, register_module
    from dng_tgn.graph.edge_ops import EdgeOp

    class TwiceLinear(nn.Module):
        """A user's layer: y = 2 W x + b (a Linear the converter does not know)."""

        def __init__(self, n_in, n_out):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.randn(n_out, n_in)), nn.Parameter(torch.randn(n_out))

        def forward(self, x):
            return 2 * x @ self.weight.T + self.bias

    @dataclass(frozen=True)
    class TwiceDense(EdgeOp):
        def __call__(self, x, w):
            return 2 * x @ w[:, :, 0].T

    def convert(cv, node, xs, opts):
        m = cv.module(node)
        return cv.add_layer(node, xs[0], m.weight, TwiceDense(), bias=m.bias)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), TwiceLinear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    with pytest.raises(UnsupportedLayerError):
        dng_tgn.to_event_stream(model)
    register_module(TwiceLinear, OpSpec("TwiceLinear", convert, (any_of("weight", read=lambda m: tuple(m.weight.shape)),)))
    try:
        stream = _replays(model, (3,))
        assert [g.name for g in stream.node_groups if g.name == "2"] == ["2"]
        torch.testing.assert_close(stream.recover_parameters()["2.weight"], model[2].weight.detach())
    finally:
        del MODULES[TwiceLinear]


# -- reshapes that only regroup; what does not convert is refused by name -------------------------------------------------
class _ViewFlatten(nn.Module):
    def __init__(self, reshape=False):
        super().__init__()
        self.a, self.b, self.reshape = nn.Conv2d(1, 2, 3), nn.Linear(2 * 3 * 3, 2), reshape

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.b(h.reshape(-1, 18) if self.reshape else h.view(-1, 18))


@pytest.mark.parametrize("reshape", [False, True])
def test_view_and_reshape_that_flatten(reshape):
    torch.manual_seed(0)
    _replays(_ViewFlatten(reshape), (1, 5, 5))


class _ClassToken(nn.Module):
    """ViT's first steps: patches, a class token, learned positional embeddings, nn.MultiheadAttention."""

    def __init__(self, d=4):
        super().__init__()
        self.proj = nn.Conv2d(1, d, 2, stride=2)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d))
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.attn(x, x, x, need_weights=False)[0][:, 0])


def test_vit_pieces_convert():
    """Tokens (flatten(2)/transpose), a class token, learned positions and nn.MultiheadAttention (more: test_convert_vit_b16.py)."""
    torch.manual_seed(0)
    _replays(_ClassToken(), (1, 4, 4))


def test_unbatched_attention_is_refused():
    """(B, E) activations are an unbatched sequence to nn.MultiheadAttention: it would attend across the batch."""

    class _MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.attn = nn.Linear(3, 4), nn.MultiheadAttention(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.attn(h, h, h)[0]

    with pytest.raises(UnsupportedLayerError, match="MultiheadAttention.*across the wrong axis"):
        dng_tgn.to_event_stream(_MHA(), input_shape=(3,))


class ShuffleUnitViews(ShuffleUnit):
    """The same unit with the channel shuffle written with sizes and views (as torchvision writes it)."""

    def forward(self, x):
        x = F.relu(self.stem(x))
        x1, x2 = x.chunk(2, dim=1)
        b = F.relu(self.b2(self.dw(F.relu(self.b1(x2)))))
        y = torch.cat((x1, b), dim=1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w)
        y = torch.transpose(y, 1, 2).contiguous()
        y = y.view(n, -1, h, w)
        return self.out(y).mean([2, 3])


def test_channel_shuffle_written_with_size_and_view():
    torch.manual_seed(0)
    model = ShuffleUnitViews()
    _replays(model, (1, 5, 5))
    ref = ShuffleUnit()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 5, 5)
    torch.testing.assert_close(dng_tgn.replay(dng_tgn.to_event_stream(model, input_shape=(1, 5, 5)), x), ref(x).detach(), **REPLAY)


class _BatchArith(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.size()
        return self.b(y.view(n // 2, 2 * c, h, w))


def test_views_that_mix_the_batch_are_refused():
    with pytest.raises(UnsupportedLayerError, match="batch size"):
        dng_tgn.to_event_stream(_BatchArith(), input_shape=(1, 4, 4))


def test_layer_scale_of_the_wrong_shape_is_refused():
    model = ConvNeXtBlock(c=4)
    model.layer_scale = nn.Parameter(torch.ones(4))  # scales the last axis of (B, C, H, W): not per channel
    with pytest.raises(UnsupportedLayerError, match=r"layer_scale' of shape \(4,\) is not a per-channel scale"):
        dng_tgn.to_event_stream(model, input_shape=(1, 8, 8))


# -- torchvision's ConvNeXt pieces without torchvision: LayerNorm2d (matched by behaviour), StochasticDepth (by structure)
class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d: a LayerNorm over C of (B, C, H, W) maps."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def stochastic_depth(input, p, mode, training=True):
    """torchvision.ops.stochastic_depth: drops whole residual branches (per row or batch) while training."""
    if p < 0.0 or p > 1.0 or mode not in ("batch", "row"):
        raise ValueError(f"bad stochastic depth p={p} mode={mode}")
    if not training or p == 0.0:
        return input
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(1.0 - p)
    return input * noise.div_(1.0 - p) if p < 1.0 else input * noise


class StochasticDepth(nn.Module):
    def __init__(self, p, mode):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, input):
        return stochastic_depth(input, self.p, self.mode, self.training)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    """torchvision's ConvNeXt block (kernel 7 there; ``k`` here keeps K small for the encoder tests)."""

    def __init__(self, dim, k=7, layer_scale=1.0, p=0.1):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                   Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(p, "row")

    def forward(self, input):
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class TinyConvNeXt(nn.Module):
    """torchvision's ConvNeXt layout: stem Conv2d + LayerNorm2d, stages of CNBlocks, downsampling LayerNorm2d + Conv2d,
    average pooling, classifier LayerNorm2d -> Flatten -> Linear."""

    def __init__(self, c=(4, 6), k=7, downsample=True):
        super().__init__()
        ln = partial(LayerNorm2d, eps=1e-6)
        layers = [nn.Sequential(nn.Conv2d(1, c[0], 2, stride=2), ln(c[0])), nn.Sequential(CNBlock(c[0], k))]
        if downsample:
            layers += [nn.Sequential(ln(c[0]), nn.Conv2d(c[0], c[1], 2, stride=2)), nn.Sequential(CNBlock(c[1], k))]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = c[1] if downsample else c[0]
        self.classifier = nn.Sequential(ln(last), nn.Flatten(1), nn.Linear(last, 2))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
                if isinstance(m, CNBlock):
                    m.layer_scale.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


def test_torchvision_convnext_layout_replays_exactly():
    torch.manual_seed(0)
    stream = _replays(TinyConvNeXt(), (1, 16, 16))
    params = stream.recover_parameters()
    assert "features.0.1.weight" in params and "classifier.0.bias" in params  # the LayerNorm2d scales and shifts are there
    stem = next(g for g in stream.node_groups if g.name == "features.0.0")
    assert bool(stem.slot_mask[3])  # the stem's LayerNorm2d is also read by the residual sum: normalised in place (norm_out)


def test_layernorm2d_is_matched_by_behaviour_not_by_name():
    from dng_tgn.graph.convert.module import matched_spec

    class ChannelsLastLN(nn.LayerNorm):  # a LayerNorm subclass that normalises the last axis: not a LayerNorm2d
        def forward(self, x):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    assert matched_spec(LayerNorm2d(4)) is not None and matched_spec(LayerNorm2d(4)).name == "LayerNorm2d"
    assert matched_spec(ChannelsLastLN(4)) is None and matched_spec(nn.LayerNorm(4)) is None
    assert matched_spec(StochasticDepth(0.2, "row")).name == "StochasticDepth"
    model = nn.Sequential(nn.Conv2d(1, 4, 1), ChannelsLastLN(4), nn.Conv2d(4, 2, 1))
    with pytest.raises(UnsupportedLayerError, match="F.layer_norm"):  # traced through, and refused by name
        dng_tgn.to_event_stream(model, input_shape=(1, 4, 4))


def test_stochastic_depth_mode_is_checked():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), StochasticDepth(0.1, "everything"), nn.Conv2d(2, 2, 1))
    with pytest.raises(UnsupportedOptionError, match="option mode='everything' of StochasticDepth"):
        dng_tgn.to_event_stream(model, input_shape=(1, 4, 4))


def _convnext_channel_edits(p, h):
    """Stem channels p (stem conv, its LayerNorm2d, the block, the classifier) and the block's MLP hidden units h."""
    b = "features.1.0"
    return [("features.0.0.weight", 0, p), ("features.0.0.bias", 0, p), ("features.0.1.weight", 0, p), ("features.0.1.bias", 0, p),
            (f"{b}.block.0.weight", 0, p), (f"{b}.block.0.bias", 0, p), (f"{b}.block.2.weight", 0, p), (f"{b}.block.2.bias", 0, p),
            (f"{b}.block.3.weight", 1, p), (f"{b}.block.3.weight", 0, h), (f"{b}.block.3.bias", 0, h), (f"{b}.block.5.weight", 1, h),
            (f"{b}.block.5.weight", 0, p), (f"{b}.block.5.bias", 0, p), (f"{b}.layer_scale", 0, p),
            ("classifier.0.weight", 0, p), ("classifier.0.bias", 0, p), ("classifier.2.weight", 1, p)]


@pytest.mark.parametrize("left_behind", ["features.0.1.", "classifier.0."], ids=["stem_norm", "classifier_norm"])
def test_layernorm2d_permutation(left_behind):
    """Channels permute through both LayerNorm2d kinds (in place at the stem, pre-norm before the classifier); the
    control leaves one LayerNorm2d's scale and shift behind."""
    torch.manual_seed(0)
    model = TinyConvNeXt(c=(4, 4), k=3, downsample=False)
    edits = _convnext_channel_edits(_rp(4, 8), _rp(16, 9))
    _symmetry(model, (1, 8, 8), 2, edits, [e for e in edits if not e[0].startswith(left_behind)])
