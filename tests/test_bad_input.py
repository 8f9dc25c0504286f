"""Bad input gets an error that names the problem."""
import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn import (
    EmptyModelError, MissingParameterError, NonFiniteWeightsError, ShapeMismatchError, UnsupportedLayerError,
)
from dng_tgn.nets import NFNSiren, ZooCNN
from _networks import mlp, residual_cnn


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_in_module(bad):
    m = mlp()
    with torch.no_grad():
        m[2].weight[1, 1] = bad
    with pytest.raises(NonFiniteWeightsError, match="'2.weight'"):
        dng_tgn.to_event_stream(m)


def test_non_finite_weights_in_state_dict():
    sd = NFNSiren().state_dict()
    sd["net.1.linear.bias"][3] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="net.1.linear.bias"):
        dng_tgn.to_event_stream(sd)


def test_shape_mismatch_between_layers():
    sd = NFNSiren().state_dict()
    sd["net.1.linear.weight"] = torch.randn(32, 31)
    with pytest.raises(ShapeMismatchError, match="net.1.linear.weight"):
        dng_tgn.to_event_stream(sd)


def test_shape_mismatch_against_arch_hint():
    sd = residual_cnn().state_dict()
    sd["fc.weight"] = torch.randn(3, 5)
    with pytest.raises(ShapeMismatchError, match="fc.weight"):
        dng_tgn.to_event_stream(sd, arch=residual_cnn())


@pytest.mark.parametrize(
    "model,layer,position",
    [
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "BatchNorm1d", "1"),
        (nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4), nn.Linear(4, 2)), "GroupNorm", "1"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3)), "Upsample", "1"),
    ],
)
def test_unsupported_layer_names_layer_and_position(model, layer, position):
    with pytest.raises(UnsupportedLayerError, match=f"{layer} at position '{position}'"):
        dng_tgn.to_event_stream(model)


def test_batchnorm_error_suggests_folding():
    with pytest.raises(UnsupportedLayerError, match="fold"):
        dng_tgn.to_event_stream(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3)))


@pytest.mark.parametrize("empty", [nn.Sequential(), nn.Sequential(nn.ReLU()), {}])
def test_empty_model(empty):
    with pytest.raises(EmptyModelError):
        dng_tgn.to_event_stream(empty)


def test_state_dict_with_missing_keys():
    sd = NFNSiren().state_dict()
    del sd["net.1.linear.bias"]
    with pytest.raises(MissingParameterError, match="net.1.linear.bias"):
        dng_tgn.to_event_stream(sd)
    zoo = ZooCNN().state_dict()
    del zoo["head.bias"]
    with pytest.raises(MissingParameterError, match="head.bias"):
        dng_tgn.to_event_stream(zoo)


def test_missing_keys_against_arch_hint():
    sd = residual_cnn().state_dict()
    del sd["conv1.weight"]
    with pytest.raises(MissingParameterError, match="missing keys: conv1.weight"):
        dng_tgn.to_event_stream(sd, arch=residual_cnn())


def test_unknown_layout_asks_for_arch():
    with pytest.raises(ValueError, match="arch="):
        dng_tgn.to_event_stream({"encoder.w": torch.randn(3, 3)})


def test_flatten_without_input_shape_is_explained():
    from _networks import flatten_cnn

    with pytest.raises(ShapeMismatchError, match="input_shape"):
        dng_tgn.to_event_stream(flatten_cnn())


def test_not_a_model():
    with pytest.raises(TypeError, match="nn.Module or a state_dict"):
        dng_tgn.to_event_stream([1, 2, 3])
