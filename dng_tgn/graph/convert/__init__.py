"""``to_event_stream``: one entry point from a model or a state_dict to an :class:`EventStream`.

Known state_dict layouts convert without a hint: NFN SIRENs (``net.{i}.linear.*``), DWSNets SIRENs
(``seq.{i}.*``), the Small CNN Zoo net (``convs.{i}.*``, ``head.*``) and SimpleViT (which needs
``heads=``, since a state_dict does not record it). Anything else needs ``arch=``: an ``nn.Module`` of the
right layout into which the state_dict is loaded.
"""
from __future__ import annotations

import copy
import re
import warnings
from typing import Mapping

import torch
from torch import nn

from ...errors import (
    EmptyModelError, InvalidParameterError, MissingParameterError, NonFiniteWeightsError, ShapeMismatchError, UnsupportedLayerError,
)
from .. import transforms as T
from ..events import _all_finite
from ..builder import StreamBuilder
from ..edge_ops import Conv, Dense
from ..events import EventStream, ParamRef, flat_index
from .mlp import LinearLayer, mlp_stream
from .module import (
    FUNCTIONS, MATCHERS, METHODS, MODULES, REQUIRED, Option, OpSpec, any_of, matched_spec, module_stream, only, pointwise,
    register_function, register_matcher, register_method, register_module, supported_table, where,
)
from .vit import is_simple_vit_state_dict, vit_stream

_NFN = re.compile(r"^net\.(\d+)\.(?:linear\.)?(weight|bias)$")
_DWS = re.compile(r"^seq\.(\d+)\.(weight|bias)$")
_ZOO = re.compile(r"^(convs\.(\d+)|head)\.(weight|bias)$")


def to_event_stream(
    model_or_state_dict,
    arch: nn.Module | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    heads: int | None = None,
    w0: float = 30.0,
    activation: T.Transform = T.RELU,
    fold_batchnorm: bool = False,
) -> EventStream:
    """Convert a trained network into its dynamic neural graph.

    An ``nn.Module`` converts op by op from an explicit allow-list (see :mod:`.module` and the README's
    "What converts"): ``replay(stream, x)`` equals ``model(x)``, or an :class:`UnsupportedLayerError` /
    :class:`UnsupportedOptionError` names the node, the op and the option. Non-float32 weights are cast to
    float32 with a warning; ``None``/string/meta entries raise :class:`InvalidParameterError`.

    Args:
        model_or_state_dict: an ``nn.Module`` or a ``state_dict``-like mapping of tensors.
        arch: for state_dicts of other layouts, a module the state_dict loads into (strictly).
        input_shape: (C, H, W) for CNNs that flatten feature maps; the geometry of the flatten edges.
        heads: attention heads of a SimpleViT state_dict.
        w0: SIREN frequency for SIREN state_dicts; it stays in the activation, not the weights.
        activation: the Zoo CNN's nonlinearity (the zoo samples it; the weights don't record it).
        fold_batchnorm: fold each BatchNorm1d/2d into the Linear/Conv1d/Conv2d right before it (eval-mode models
            only: folding uses the running statistics). Without it, batch norm is an unsupported layer.
    """
    if isinstance(model_or_state_dict, nn.Module):
        model = _fold_batchnorm(model_or_state_dict) if fold_batchnorm else model_or_state_dict
        return _from_module(model, input_shape)
    if not isinstance(model_or_state_dict, Mapping):
        raise TypeError(f"expected an nn.Module or a state_dict, got {type(model_or_state_dict).__name__}")
    sd = _clean_state_dict(model_or_state_dict)
    if arch is not None:
        model = _load_into(arch, sd)
        return _from_module(_fold_batchnorm(model) if fold_batchnorm else model, input_shape)
    if is_simple_vit_state_dict(sd):
        if heads is None:
            raise ValueError("a SimpleViT state_dict does not record its number of heads: pass heads=...")
        return vit_stream(sd, heads)
    keys = list(sd)
    if all(_NFN.match(k) for k in keys):
        return _siren_stream(sd, _NFN, "NFN-SIREN", w0, lambda i, last, kind: f"net.{i}.{kind}" if last else f"net.{i}.linear.{kind}")
    if all(_DWS.match(k) for k in keys):
        return _siren_stream(sd, _DWS, "DWSNets-SIREN", w0, lambda i, last, kind: f"seq.{i}.{kind}", shift=0.5)
    if all(_ZOO.match(k) for k in keys):
        return zoo_cnn_stream(sd, activation)
    raise ValueError(
        "unrecognised state_dict layout (first keys: " + ", ".join(keys[:4]) + "); pass arch=<nn.Module with this layout>"
    )


# -- batch norm folding ---------------------------------------------------------------------------------
_FOLDABLE = {nn.BatchNorm1d: (nn.Linear, nn.Conv1d), nn.BatchNorm2d: (nn.Conv2d,)}


def batchnorm_fold_plan(model: nn.Module) -> list[tuple[str, str, float]]:
    """``(layer, batchnorm, eps)`` for each BatchNorm that folds into the Linear/Conv2d right before it.

    A BatchNorm folds when it reads the output of a Linear/Conv1d (BatchNorm1d) or Conv2d (BatchNorm2d) that
    nothing else reads, and both are called once. Any other BatchNorm raises, naming it.
    """
    from .module import _Tracer

    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return []
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (call model.eval()): it folds the running statistics")
    modules = dict(model.named_modules())
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        raise UnsupportedLayerError(type(model).__name__, "forward", f"torch.fx cannot trace it to fold batch norm ({exc})") from exc
    calls: dict[str, list] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    plan = []
    for name in bns:
        bn = modules[name]
        layer_types = _FOLDABLE.get(type(bn), ())
        nodes = calls.get(name, [])
        src = nodes[0].args[0] if len(nodes) == 1 and len(nodes[0].args) == 1 else None
        ok = (
            src is not None and getattr(src, "op", None) == "call_module"
            and type(modules[src.target]) in layer_types and len(src.users) == 1 and len(calls[src.target]) == 1
        )
        if not ok:
            raise UnsupportedLayerError(
                type(bn).__name__, name,
                "fold_batchnorm folds a BatchNorm1d right after a Linear or Conv1d, or a BatchNorm2d right after a Conv2d, "
                "that nothing else reads; this one is not such a pair",
            )
        if not bn.track_running_stats or bn.running_mean is None:
            raise UnsupportedLayerError(type(bn).__name__, name, "it has no running statistics (track_running_stats=False): it cannot be folded")
        plan.append((src.target, name, float(bn.eps)))
    return plan


def fold_batchnorm_parameters(params: Mapping[str, torch.Tensor], plan, batched: bool = False) -> dict[str, torch.Tensor]:
    """Apply ``plan`` to a state_dict, or to a stack of them (``batched``: a leading network axis).

    The layer's weight and bias absorb the BatchNorm (``w·s``, ``(b - mean)·s + beta`` with
    ``s = gamma / sqrt(var + eps)``); the BatchNorm's entries are dropped.
    """
    out = dict(params)
    for layer, bn, eps in plan:
        w = out[f"{layer}.weight"]
        mean, var = out.pop(f"{bn}.running_mean").float(), out.pop(f"{bn}.running_var").float()
        gamma, beta = out.pop(f"{bn}.weight", None), out.pop(f"{bn}.bias", None)
        out.pop(f"{bn}.num_batches_tracked", None)
        s = torch.rsqrt(var + eps)
        if gamma is not None:
            s = s * gamma
        bias = out.get(f"{layer}.bias")
        b = (-mean if bias is None else bias - mean) * s
        if beta is not None:
            b = b + beta
        lead = 1 if batched else 0
        out[f"{layer}.weight"] = w * s.reshape(s.shape + (1,) * (w.dim() - lead - 1))
        out[f"{layer}.bias"] = b
    return out


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each BatchNorm folded into its layer and replaced by nn.Identity."""
    plan = batchnorm_fold_plan(model)
    if not plan:
        return model
    folded = copy.deepcopy(model)
    params = fold_batchnorm_parameters({k: v.detach() for k, v in folded.state_dict().items()}, plan)
    with torch.no_grad():
        for layer, bn, _ in plan:
            m = folded.get_submodule(layer)
            m.weight.copy_(params[f"{layer}.weight"])
            if m.bias is None:
                m.bias = nn.Parameter(params[f"{layer}.bias"].clone())
            else:
                m.bias.copy_(params[f"{layer}.bias"])
            parent, _, attr = bn.rpartition(".")
            setattr(folded.get_submodule(parent) if parent else folded, attr, nn.Identity())
    return folded


# -- parameter values ------------------------------------------------------------------------------------
def check_parameter_value(key: str, v) -> torch.Tensor:
    """A state_dict value as a tensor of real numbers, or an error naming the key and what is accepted."""
    accepted = "a torch.Tensor (or a NumPy array / number) of real values"
    if v is None or isinstance(v, (str, bytes)):
        raise InvalidParameterError(f"state_dict entry '{key}' is {type(v).__name__} {v!r:.40}: expected {accepted}")
    if not isinstance(v, torch.Tensor):
        try:
            v = torch.as_tensor(v)
        except Exception:
            raise InvalidParameterError(f"state_dict entry '{key}' is a {type(v).__name__}: expected {accepted}") from None
    if v.is_meta:
        raise InvalidParameterError(f"'{key}' is a meta tensor (shape only, no values): load real weights before converting")
    if v.is_complex():
        raise InvalidParameterError(f"'{key}' is complex ({v.dtype}): expected {accepted}")
    return v


def _note_cast(keys: list[str], dtypes: set) -> None:
    if keys:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        warnings.warn(
            f"converted {len(keys)} {names} tensor(s) (e.g. '{keys[0]}') to float32: event streams hold float32 weights",
            UserWarning, stacklevel=3,
        )


def _clean_state_dict(sd: Mapping) -> dict[str, torch.Tensor]:
    if len(sd) == 0:
        raise EmptyModelError("the state_dict is empty: there is no network to convert")
    out = {}
    cast, dtypes = [], set()
    for k, v in sd.items():
        v = check_parameter_value(k, v)
        if v.is_floating_point() and not _all_finite(v):
            raise NonFiniteWeightsError(f"parameter '{k}' contains NaN or inf")
        if v.is_floating_point() and v.dtype != torch.float32:
            cast.append(k)
            dtypes.add(v.dtype)
        out[k] = v.detach().float() if v.is_floating_point() else v
    _note_cast(cast, dtypes)
    return out


def _load_into(arch: nn.Module, sd: dict) -> nn.Module:
    model = copy.deepcopy(arch)
    _check_shapes(model, sd)
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append("missing keys: " + ", ".join(result.missing_keys))
        if result.unexpected_keys:
            parts.append("unexpected keys: " + ", ".join(result.unexpected_keys))
        raise MissingParameterError(f"state_dict does not fit {type(arch).__name__}: " + "; ".join(parts))
    return model


def _check_shapes(model: nn.Module, sd: dict) -> None:
    own = model.state_dict()
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise ShapeMismatchError(f"'{k}' has shape {tuple(v.shape)} but {type(model).__name__} expects {tuple(own[k].shape)}")


def _from_module(model: nn.Module, input_shape) -> EventStream:
    if not any(True for _ in model.parameters()):
        raise EmptyModelError(f"{type(model).__name__} has no parameters: there is no network to convert")
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b is not None]
    cast, dtypes = [], set()
    for name, p in tensors:
        check_parameter_value(name, p)
        if p.is_floating_point() and p.dtype != torch.float32:
            cast.append(name)
            dtypes.add(p.dtype)
    for name, p in model.named_parameters():
        if not _all_finite(p.detach()):
            raise NonFiniteWeightsError(f"parameter '{name}' contains NaN or inf")
    if cast:
        _note_cast(cast, dtypes)
        model = copy.deepcopy(model).float()
    sd = model.state_dict()
    if is_simple_vit_state_dict(sd):
        heads = getattr(model, "heads", None) or model.transformer.layers[0][0].heads
        return vit_stream({k: v for k, v in sd.items() if k != "pos_embedding"}, heads, arch=type(model).__name__)
    if input_shape is None:
        # the first module that holds weights; only a Linear there tells the input size
        first = next((m for m in model.modules() if any(True for _ in m.parameters(recurse=False))), None)
        if isinstance(first, nn.Linear):
            input_shape = (first.in_features,)
    return module_stream(model, input_shape)


def _siren_stream(sd, pattern, arch, w0, key, shift=None) -> EventStream:
    idx = sorted({int(pattern.match(k).group(1)) for k in sd})
    if idx != list(range(len(idx))):
        raise MissingParameterError(f"{arch} layers must be numbered 0..n-1, found {idx}")
    layers = []
    for i in idx:
        last = i == idx[-1]
        wk, bk = key(i, last, "weight"), key(i, last, "bias")
        for k in (wk, bk):
            if k not in sd:
                raise MissingParameterError(f"{arch} state_dict is missing '{k}'")
        layers.append(LinearLayer(wk, sd[wk], bk, sd[bk], before=(T.Sine(w0),) if i > 0 else ()))
    return mlp_stream(layers, arch=arch, output_transform=(T.Shift(shift),) if shift else ())


def zoo_cnn_stream(sd: dict, activation: T.Transform = T.RELU) -> EventStream:
    """Small CNN Zoo net: convs (stride 2, pad 1) -> activation -> global average pooling -> dense."""
    convs = sorted({int(m.group(2)) for k in sd if (m := _ZOO.match(k)) and m.group(2) is not None})
    for k in [f"convs.{i}.{p}" for i in convs for p in ("weight", "bias")] + ["head.weight", "head.bias"]:
        if k not in sd:
            raise MissingParameterError(f"Zoo CNN state_dict is missing '{k}'")
    b = StreamBuilder("ZooCNN")
    src = None
    for i in convs:
        w, bias = sd[f"convs.{i}.weight"], sd[f"convs.{i}.bias"]
        if w.dim() != 4:
            raise ShapeMismatchError(f"'convs.{i}.weight' should be (out, in, kh, kw), got {tuple(w.shape)}")
        c_out, c_in, kh, kw = w.shape
        if src is None:
            src = b.add_inputs("input", c_in)
        elif b.node_groups[src].size != c_in:
            raise ShapeMismatchError(f"'convs.{i}.weight' expects {c_in} channels, previous layer has {b.node_groups[src].size}")
        b.new_step()
        dst = b.add_nodes(f"convs.{i}", c_out, params=(ParamRef(f"convs.{i}.bias", (c_out,), torch.arange(c_out), slot=0),), bias=bias)
        b.add_edges(
            f"convs.{i}.weight", src, dst, Conv((kh, kw), (2, 2), (kh // 2, kw // 2)), w.reshape(c_out, c_in, kh * kw),
            src_transform=(activation,) if i > 0 else (),
            params=(ParamRef(f"convs.{i}.weight", tuple(w.shape), flat_index((c_out, c_in, kh * kw))),),
        )
        src = dst
    hw, hb = sd["head.weight"], sd["head.bias"]
    if hw.dim() != 2 or (src is not None and hw.shape[1] != b.node_groups[src].size):
        raise ShapeMismatchError(f"'head.weight' has shape {tuple(hw.shape)}, which does not follow the last conv")
    b.new_step()
    out = b.add_nodes("head", hw.shape[0], params=(ParamRef("head.bias", (hw.shape[0],), torch.arange(hw.shape[0]), slot=0),), bias=hb)
    b.add_edges("head.weight", src, out, Dense(), hw.unsqueeze(-1), src_transform=(activation, T.GlobalAvgPool()),
                params=(ParamRef("head.weight", tuple(hw.shape), flat_index((*hw.shape, 1))),))
    return b.build(output=out)


__all__ = [
    "to_event_stream", "zoo_cnn_stream", "mlp_stream", "module_stream", "vit_stream", "LinearLayer",
    # the allow-list of the module converter, and how to extend it
    "MODULES", "FUNCTIONS", "METHODS", "OpSpec", "Option", "REQUIRED", "any_of", "only", "where", "pointwise",
    "register_module", "register_function", "register_method", "supported_table", "MATCHERS", "register_matcher", "matched_spec",
    "batchnorm_fold_plan", "fold_batchnorm_parameters",
]
