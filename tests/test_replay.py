"""Executing a stream (weights rebuilt from edges, activations on nodes) reproduces the model's output."""
import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn.nets import DWSNetsSiren, NFNSiren, SimpleViT, ZooCNN
from _networks import flatten_cnn, mlp, residual_cnn

TOL = dict(atol=1e-5, rtol=1e-5)


def check(model, x, stream):
    with torch.no_grad():
        expected = model(x)
    got = dng_tgn.replay(stream, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **TOL)


def test_mlp():
    m = mlp((5, 16, 16, 3), act=nn.Tanh)
    check(m, torch.randn(7, 5), dng_tgn.to_event_stream(m))


@pytest.mark.parametrize("from_state_dict", [False, True])
def test_nfn_siren(from_state_dict):
    torch.manual_seed(1)
    m = NFNSiren()
    s = dng_tgn.to_event_stream(m.state_dict() if from_state_dict else m)
    coords = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij"), -1).reshape(-1, 2)
    check(m, coords, s)
    # w0 stays outside the weights: the edges hold the raw parameters
    assert torch.equal(s.edge_groups[1].weight[..., 0], m.net[1].linear.weight)


def test_dwsnets_siren_state_dict():
    torch.manual_seed(2)
    m = DWSNetsSiren()
    check(m, torch.rand(10, 2) * 2 - 1, dng_tgn.to_event_stream(m.state_dict()))


def test_cnn_with_flatten_and_mixed_kernels():
    m = flatten_cnn()
    s = dng_tgn.to_event_stream(m, input_shape=(2, 8, 8))
    assert s.num_slots == 25  # 5x5 kernel; the 3x3 kernel and the 2x2 flatten are zero-padded to it
    assert s.num_timestamps == 3
    flat = s.edge_groups[-1]
    assert flat.slots == 4 and flat.weight.shape == (3, 5, 4)  # h_ft x w_ft edges per channel pair
    check(m, torch.randn(3, 2, 8, 8), s)


def test_residual_block():
    m = residual_cnn()
    s = dng_tgn.to_event_stream(m)
    res = [e for e in s.edge_groups if e.kind == dng_tgn.graph.EdgeKind.RESIDUAL]
    assert len(res) == 1 and res[0].span == 2
    # the stem output feeds conv1 at t^2 and the shortcut at t^3, so it is never deleted in between
    stem = next(i for i, g in enumerate(s.node_groups) if g.name == "stem")
    assert stem in s.presence(2) and stem in s.presence(3)
    assert not any(e.group == "stem" and e.op == "-V" for e in s.events_at(3))
    check(m, torch.randn(2, 1, 6, 6), s)


def test_residual_source_is_deleted_and_re_added_across_a_gap():
    s = dng_tgn.to_event_stream(SimpleViT())
    # the block input 'embed' feeds Q/K/V at t^2, is absent at t^3 (attention), returns at t^4 (span-3 shortcut)
    assert [e.op.value for e in s.events_at(3) if e.group == "embed"] == ["-V"]
    assert [e.op.value for e in s.events_at(4) if e.group == "embed"] == ["+V"]
    res = [e for e in s.edge_groups if e.name.endswith("attn.residual")]
    assert [e.span for e in res] == [3, 3]


@pytest.mark.parametrize("act,name", [(nn.ReLU, "relu"), (nn.Tanh, "tanh")])
def test_zoo_cnn_state_dict(act, name):
    torch.manual_seed(3)
    m = ZooCNN(activation=act).eval()
    from dng_tgn.graph import transforms as T

    s = dng_tgn.to_event_stream(m.state_dict(), activation=T.RELU if name == "relu" else T.TANH)
    assert s.num_timestamps == 4 and s.num_slots == 9
    check(m, torch.rand(4, 1, 28, 28) * 2 - 1, s)


@pytest.mark.parametrize("newer_layout", [False, True])
def test_vit_every_parameter_exactly_once(newer_layout):
    torch.manual_seed(4)
    m = SimpleViT(final_norm_in_transformer=newer_layout).eval()
    s = dng_tgn.to_event_stream(m)
    assert s.num_timestamps == 12  # embedding 1 + 2 blocks x (3 attention + 2 MLP) + head 1
    check(m, torch.randn(3, 1, 28, 28), s)  # the stream is the forward pass (more in test_vit_attention.py)
    recovered = s.recover_parameters()  # raises if any scalar is encoded twice or missing
    sd = m.state_dict()
    assert set(recovered) == set(sd)
    for k, v in sd.items():
        assert torch.equal(recovered[k], v), k
    assert sum(v.numel() for v in recovered.values()) == sum(p.numel() for p in m.parameters())


def test_vit_state_dict_needs_heads():
    m = SimpleViT().eval()
    with pytest.raises(ValueError, match="heads"):
        dng_tgn.to_event_stream(m.state_dict())
    with pytest.raises(ValueError, match="heads=3 does not divide the attention width 32"):
        dng_tgn.to_event_stream(m.state_dict(), heads=3)
    s = dng_tgn.to_event_stream(m.state_dict(), heads=2)
    assert s.num_timestamps == 12
    check(m, torch.randn(2, 1, 28, 28), s)


def test_arch_hint_loads_state_dict():
    m = residual_cnn(seed=5)
    s = dng_tgn.to_event_stream(m.state_dict(), arch=residual_cnn(seed=6))
    check(m, torch.randn(2, 1, 6, 6), s)


def test_batchnorm_is_folded_on_request():
    torch.manual_seed(8)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    for bn in (m[1], m[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
    with pytest.raises(ValueError, match="eval"):
        dng_tgn.to_event_stream(m, fold_batchnorm=True)
    m.eval()
    s = dng_tgn.to_event_stream(m, fold_batchnorm=True)
    assert s.num_timestamps == 3 and isinstance(m[1], nn.BatchNorm2d)  # the user's model is untouched
    check(m, torch.randn(2, 1, 8, 8), s)
