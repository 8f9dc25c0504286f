"""The DGL and pure-torch execution paths compute the same models: outputs and gradients agree.

One switch (:class:`ExecutionPath`) serves the DNG-Encoder and the static baselines (NG-GNN, the §7 MPNNs),
so every model that takes ``path=`` is compared here, on the same SIREN, CNN and ViT batches.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dng_tgn
import dng_tgn.nn.paths
from dng_tgn._dgl import HAS_DGL, dgl_supports
from dng_tgn.baselines import NGGNN, DynamicMPNN, StaticMPNN
from dng_tgn.nets import NFNSiren, SimpleViT, ZooCNN
from dng_tgn.nn import (
    ConcatReadout, DNGEncoder, EncoderOutput, ExecutionPath, MeanReadout, resolve_path, validate_path,
)

D, F = 24, 16

needs_dgl = pytest.mark.skipif(not HAS_DGL, reason="DGL is not importable here")


class _ResidualFlattenCNN(nn.Module):
    """Conv kernels of two sizes, a residual sum (App. E.1) and a flatten into a Linear (virtual vertices)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = self.c2(a) + a
        return self.fc(torch.relu(b).flatten(1))


def _streams(kind: str) -> tuple[list, int]:
    torch.manual_seed(0)
    if kind == "mlp":
        return [dng_tgn.to_event_stream(NFNSiren(hidden=16)) for _ in range(3)], 1
    if kind == "cnn":
        return [dng_tgn.to_event_stream(ZooCNN(channels=4)) for _ in range(2)] + [
            dng_tgn.to_event_stream(_ResidualFlattenCNN(), input_shape=(2, 4, 4))
        ], 16
    if kind == "vit":
        return [dng_tgn.to_event_stream(SimpleViT(dim=8, heads=2, dim_head=4, mlp_dim=16)) for _ in range(2)], 1
    mlp, _ = _streams("mlp")
    cnn, _ = _streams("cnn")
    vit, _ = _streams("vit")
    return [mlp[0], cnn[0], vit[0], cnn[2]], 16


def _run(enc: DNGEncoder, streams, path: ExecutionPath):
    enc.path = path
    enc.zero_grad()
    out = enc(streams, return_trajectory=True)
    # a loss that touches the embedding and every intermediate memory, so every step's backward is compared
    loss = out.embedding.square().sum() + (out.trajectory * torch.linspace(-1, 1, out.trajectory.shape[-1])).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}  # unused timestamps have none
    return out, grads


@needs_dgl
@pytest.mark.parametrize("kind", ["mlp", "cnn", "vit", "mixed"])
def test_dgl_and_torch_paths_agree(kind):
    streams, k = _streams(kind)
    enc = DNGEncoder(D, message_heads=k, head_dim=4, fourier_size=F, max_timestamps=12, device="cpu")
    a, ga = _run(enc, streams, ExecutionPath.DGL)
    b, gb = _run(enc, streams, ExecutionPath.TORCH)
    assert a.embedding.shape == (len(streams), D)
    torch.testing.assert_close(a.embedding, b.embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.trajectory, b.trajectory, atol=1e-5, rtol=1e-5)
    assert set(ga) == set(gb) and len(ga) > 10
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    # the comparison is not vacuous: gradients reach the per-timestamp message functions
    assert ga["memory.messages.0.edge_proj.weight"].abs().sum() > 0


# the memory's ablation options (tests/test_encoder_ablations.py), two sets covering every one of them
_OPTION_SETS = {
    "authors": dict(cell="rnn_relu", gru_input="node", rnn_layers=2, shared_message=True, positional_embedding=True,
                    activation_embedding=True),
    "tanh_rnn_per_timestamp": dict(cell="rnn", per_timestamp_update=True, rnn_layers=2, positional_embedding=True),
}


@needs_dgl
@pytest.mark.parametrize("options", sorted(_OPTION_SETS))
def test_dgl_and_torch_paths_agree_with_the_memory_options(options):
    streams, k = _streams("mixed")
    enc = DNGEncoder(D, message_heads=k, head_dim=4, fourier_size=F, max_timestamps=12, device="cpu",
                     **_OPTION_SETS[options])
    a, ga = _run(enc, streams, ExecutionPath.DGL)
    b, gb = _run(enc, streams, ExecutionPath.TORCH)
    torch.testing.assert_close(a.embedding, b.embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.trajectory, b.trajectory, atol=1e-5, rtol=1e-5)
    assert set(ga) == set(gb)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    # not vacuous: the options' own parameters are trained on both paths
    extra = [n for n in ga if "stacked" in n or "embedding" in n or "updaters" in n]
    assert extra and all(ga[n].abs().sum() > 0 for n in extra)


@needs_dgl
def test_dgl_path_really_runs_dgl_kernels(monkeypatch):
    from dng_tgn._dgl import dgl

    calls = []
    for op in ("u_mul_e_sum", "u_mul_e", "u_add_e", "copy_e_sum"):
        orig = getattr(dgl.ops, op)
        monkeypatch.setattr(dgl.ops, op, lambda *a, _o=orig, _n=op, **kw: (calls.append(_n), _o(*a, **kw))[1])
    streams, _ = _streams("mlp")
    DNGEncoder(D, fourier_size=F, path=ExecutionPath.DGL, device="cpu")(streams)
    assert calls == ["u_mul_e_sum"] * 3  # Eq. 4, one fused kernel per timestamp
    calls.clear()
    DNGEncoder(D, fourier_size=F, path=ExecutionPath.TORCH, device="cpu")(streams)
    assert calls == []
    cnn, k = _streams("cnn")
    DNGEncoder(D, message_heads=k, head_dim=4, fourier_size=F, path=ExecutionPath.DGL, device="cpu")(cnn)
    # Eq. 5 on every step: per group of edges with the same live-slot count (and chunk), gather-multiply,
    # gather-add and sum (MultiHeadMessage.message_from_weights); 4 steps, two of them with 2 kernel sizes
    assert calls == ["u_mul_e", "u_add_e", "copy_e_sum"] * 6


def _weighted(x: torch.Tensor) -> torch.Tensor:
    # a sum weighted along the feature axis: a plain sum of a LayerNorm output has no gradient to speak of
    return (x * torch.linspace(-1, 1, x.shape[-1])).sum()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), what
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4, msg=lambda m: f"{what} {name}: {m}")


def _ng_gnn_run(model: NGGNN, batch, path: ExecutionPath):
    model.path = path
    model.zero_grad()
    out = model(batch)
    (out.graph.square().sum() + _weighted(out.node) + _weighted(out.edge)).backward()
    return out, _grads(model)


@needs_dgl
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "vit", "mixed"])
def test_ng_gnn_dgl_and_torch_paths_agree(kind, bidirectional):
    streams, _ = _streams(kind)
    batch = dng_tgn.batch_streams(streams)
    torch.manual_seed(0)
    model = NGGNN(hidden_dim=16, num_layers=3, out_dim=8, num_slots=batch.num_slots, fourier_size=8,
                  bidirectional=bidirectional)
    model.fit_degree_scaler([batch])  # a realistic δ, so the amplification/attenuation scalers are exercised
    a, ga = _ng_gnn_run(model, batch, ExecutionPath.DGL)
    b, gb = _ng_gnn_run(model, batch, ExecutionPath.TORCH)
    for field in ("graph", "node", "edge"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=1e-5, rtol=1e-5)
    _assert_same(ga, gb, f"NG-GNN on {kind}")
    # not vacuous: every layer's message function gets a gradient through the PNA aggregation
    assert all(ga[f"layers.{i}.message.0.weight"].abs().sum() > 0 for i in range(3))


def _mpnn_run(model, batch, inputs, path: ExecutionPath):
    model.path = path
    model.zero_grad()
    pred = model(batch, inputs)
    (pred * torch.linspace(-1, 1, pred.numel())).sum().backward()
    return pred, _grads(model)


@needs_dgl
@pytest.mark.parametrize("name", ["static", "static-bidirectional", "static-shared", "dynamic", "dynamic-shared"])
def test_static_and_dynamic_mpnn_dgl_and_torch_paths_agree(name):
    streams, _ = _streams("mlp")  # §7 is about MLPs: SIRENs 2-16-16-1 (their inputs are the 2 coordinates)
    batch = dng_tgn.batch_streams(streams)
    inputs = torch.randn(batch.num_graphs, 2, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    kw = dict(hidden_dim=8, num_layers=batch.max_timestamps, fourier_size=4, share_weights=name.endswith("shared"))
    model = (DynamicMPNN(**kw) if name.startswith("dynamic")
             else StaticMPNN(bidirectional=name.endswith("bidirectional"), **kw))
    a, ga = _mpnn_run(model, batch, inputs, ExecutionPath.DGL)
    b, gb = _mpnn_run(model, batch, inputs, ExecutionPath.TORCH)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _assert_same(ga, gb, name)
    assert ga["phis.0.message.0.weight"].abs().sum() > 0


@needs_dgl
def test_baselines_on_the_dgl_path_really_run_dgl_kernels(monkeypatch):
    """Without this, a DGL path that silently fell back to torch would pass every comparison above."""
    from dng_tgn._dgl import dgl

    calls = []
    for op in ("copy_e_sum", "copy_e_mean", "copy_e_max", "copy_e_min"):
        orig = getattr(dgl.ops, op)
        monkeypatch.setattr(dgl.ops, op, lambda *a, _o=orig, _n=op, **kw: (calls.append(_n), _o(*a, **kw))[1])
    streams, _ = _streams("mlp")
    batch = dng_tgn.batch_streams(streams)
    inputs = torch.randn(batch.num_graphs, 2)
    NGGNN(hidden_dim=8, num_layers=2, fourier_size=4, path=ExecutionPath.DGL)(batch)
    # PNA: Σm and Σm² (means divided at the nodes), max and min, once per layer
    assert sorted(set(calls)) == ["copy_e_max", "copy_e_min", "copy_e_sum"] and calls.count("copy_e_max") == 2
    assert calls.count("copy_e_sum") == 4
    calls.clear()
    StaticMPNN(hidden_dim=8, num_layers=3, fourier_size=4, path=ExecutionPath.DGL)(batch, inputs)
    DynamicMPNN(hidden_dim=8, num_layers=3, fourier_size=4, path=ExecutionPath.DGL)(batch, inputs)
    assert calls == ["copy_e_sum"] * 6  # one Σ per round (static) and per timestamp (dynamic)
    calls.clear()
    NGGNN(hidden_dim=8, num_layers=2, fourier_size=4, path=ExecutionPath.TORCH)(batch)
    StaticMPNN(hidden_dim=8, num_layers=3, fourier_size=4, path=ExecutionPath.TORCH)(batch, inputs)
    DynamicMPNN(hidden_dim=8, num_layers=3, fourier_size=4, path=ExecutionPath.TORCH)(batch, inputs)
    assert calls == []


def test_path_is_chosen_automatically_and_can_be_forced():
    assert resolve_path(None, "cpu") is (ExecutionPath.DGL if HAS_DGL else ExecutionPath.TORCH)
    assert resolve_path(ExecutionPath.TORCH, "cpu") is ExecutionPath.TORCH
    # 'meta' stands in for a device this DGL build has no kernels for (PyPI's DGL and CUDA)
    assert not dgl_supports("meta")
    assert resolve_path(None, "meta") is ExecutionPath.TORCH
    with pytest.raises(RuntimeError, match="ExecutionPath.DGL was forced"):
        resolve_path(ExecutionPath.DGL, "meta")
    with pytest.raises(TypeError, match="ExecutionPath"):
        DNGEncoder(D, fourier_size=F, path="dgl", device="cpu")
    enc = DNGEncoder(D, fourier_size=F, device="cpu")
    assert enc.execution_path() is resolve_path(None, "cpu")
    enc.path = ExecutionPath.TORCH
    assert enc.execution_path() is ExecutionPath.TORCH


_BASELINES = {
    "NGGNN": lambda path: NGGNN(hidden_dim=8, num_layers=1, fourier_size=4, path=path),
    "StaticMPNN": lambda path: StaticMPNN(hidden_dim=8, num_layers=1, fourier_size=4, path=path),
    "DynamicMPNN": lambda path: DynamicMPNN(hidden_dim=8, num_layers=1, fourier_size=4, path=path),
}


@pytest.mark.parametrize("bad", ["dgl", True, False, 0, ExecutionPath])
@pytest.mark.parametrize("model", sorted(_BASELINES))
def test_bad_path_is_rejected_with_the_valid_choices(model, bad):
    # the message names every valid value, so a caller who passed the old use_dgl-style bool or a string
    # learns what to write instead
    valid = r"ExecutionPath\.DGL, ExecutionPath\.TORCH or None"
    with pytest.raises(TypeError, match=valid):
        _BASELINES[model](bad)
    with pytest.raises(TypeError, match=valid):
        validate_path(bad)
    with pytest.raises(TypeError, match=valid):
        resolve_path(bad, "cpu")


def test_config_values_parse_to_paths():
    assert ExecutionPath.parse(None) is None
    assert ExecutionPath.parse("dgl") is ExecutionPath.DGL and ExecutionPath.parse(" TORCH ") is ExecutionPath.TORCH
    assert ExecutionPath.parse(ExecutionPath.TORCH) is ExecutionPath.TORCH
    for bad in ("cuda", True, ""):
        with pytest.raises(ValueError, match="valid values are 'dgl', 'torch' or None"):
            ExecutionPath.parse(bad)


def test_baselines_take_the_same_switch_as_the_encoder(monkeypatch):
    streams, _ = _streams("mlp")
    batch = dng_tgn.batch_streams(streams)
    inputs = torch.randn(batch.num_graphs, 2)
    for name, build in _BASELINES.items():
        assert build(None).path is None and build(ExecutionPath.TORCH).path is ExecutionPath.TORCH, name
    with pytest.raises(TypeError, match="use_dgl"):
        NGGNN(hidden_dim=8, use_dgl=True)  # the old switch is gone, not aliased
    with pytest.raises(TypeError, match="use_dgl"):
        StaticMPNN(hidden_dim=8, use_dgl=True)
    # a forced DGL path where DGL cannot run is the encoder's error, raised by every model
    monkeypatch.setattr(dng_tgn.nn.paths, "dgl_supports", lambda device: False)
    with pytest.raises(RuntimeError, match="ExecutionPath.DGL was forced"):
        NGGNN(hidden_dim=8, num_layers=1, fourier_size=4, path=ExecutionPath.DGL)(batch)
    for cls in (StaticMPNN, DynamicMPNN):
        with pytest.raises(RuntimeError, match="ExecutionPath.DGL was forced"):
            cls(hidden_dim=8, num_layers=3, fourier_size=4, path=ExecutionPath.DGL)(batch, inputs)
    # ... and None falls back to torch there, as for the encoder
    assert NGGNN(hidden_dim=8, num_layers=1, fourier_size=4)(batch).graph.isfinite().all()


def test_encoder_defaults_to_cuda_when_present():
    enc = DNGEncoder(D, fourier_size=F)
    assert enc.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_and_matches_cpu():
    streams, _ = _streams("mlp")
    enc = DNGEncoder(D, fourier_size=F, device="cpu", path=ExecutionPath.TORCH)
    ref = enc(streams).embedding
    enc.to("cuda")
    enc.path = None
    out = enc(streams).embedding
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


def test_heterogeneous_batch_and_outputs():
    streams, k = _streams("mixed")
    enc = DNGEncoder(D, message_heads=k, head_dim=4, fourier_size=F, device="cpu")
    out = enc(streams, return_trajectory=True)
    assert isinstance(out, EncoderOutput)
    assert out.embedding.shape == (4, D) and out.node_memory.shape == (out.batch.num_nodes, D)
    assert out.trajectory.shape == (13, out.batch.num_nodes, D)
    torch.testing.assert_close(out.trajectory[-1], out.node_memory)
    assert enc(streams).trajectory is None
    # the embedding of each network is the mean of its output nodes' final memories
    for g in range(4):
        nodes = out.batch.output_nodes[out.batch.output_graph == g]
        torch.testing.assert_close(out.embedding[g], out.node_memory[nodes].mean(0))
    # a StreamBatch is accepted as well as a list
    torch.testing.assert_close(enc(dng_tgn.batch_streams(streams)).embedding, out.embedding)


def test_concat_readout():
    streams = [dng_tgn.to_event_stream(ZooCNN(channels=4)) for _ in range(2)]
    enc = DNGEncoder(D, message_heads=9, head_dim=4, fourier_size=F, readout=ConcatReadout(10), device="cpu")
    out = enc(streams)
    assert enc.out_dim == 10 * D and out.embedding.shape == (2, 10 * D)
    head = next(g for g in streams[1].node_groups if g.name == "head")
    second = out.node_memory[streams[0].num_nodes + head.offset : streams[0].num_nodes + head.offset + head.size]
    torch.testing.assert_close(out.embedding[1], second.reshape(-1))  # F.2: the last layer's memories, in order
    mixed = streams + [dng_tgn.to_event_stream(NFNSiren(hidden=8))]
    with pytest.raises(ValueError, match="MeanReadout"):
        enc(mixed)
    assert DNGEncoder(D, fourier_size=F, readout=MeanReadout(), device="cpu").out_dim == D


def test_bad_inputs_are_rejected():
    enc = DNGEncoder(D, fourier_size=F, device="cpu")
    stream = dng_tgn.to_event_stream(NFNSiren(hidden=8))
    with pytest.raises(TypeError, match="wrap a single stream"):
        enc(stream)
    with pytest.raises(TypeError, match="EventStream"):
        enc([torch.zeros(3)])
    with pytest.raises(TypeError, match="Readout"):
        DNGEncoder(D, fourier_size=F, readout=lambda m, b: m, device="cpu")


def test_encoder_follows_its_dtype():
    streams, k = _streams("mixed")
    enc = DNGEncoder(D, message_heads=k, head_dim=4, fourier_size=F, device="cpu").double()
    out = enc(streams, return_trajectory=True)
    assert out.embedding.dtype == out.trajectory.dtype == torch.float64
