"""The DGL and pure-torch execution paths compute the same encoder: outputs and gradients agree."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn._dgl import HAS_DGL, dgl_supports
from dng_tgn.nets import NFNSiren, SimpleViT, ZooCNN
from dng_tgn.nn import ConcatReadout, DNGEncoder, EncoderOutput, ExecutionPath, MeanReadout, resolve_path

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
    enc = DNGEncoder(D, num_heads=k, head_dim=4, fourier_size=F, max_timestamps=12, device="cpu")
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


@needs_dgl
def test_dgl_path_really_runs_dgl_kernels(monkeypatch):
    from dng_tgn._dgl import dgl

    calls = []
    for op in ("u_mul_e_sum", "u_mul_e", "copy_e_sum"):
        orig = getattr(dgl.ops, op)
        monkeypatch.setattr(dgl.ops, op, lambda *a, _o=orig, _n=op, **kw: (calls.append(_n), _o(*a, **kw))[1])
    streams, _ = _streams("mlp")
    DNGEncoder(D, fourier_size=F, path=ExecutionPath.DGL, device="cpu")(streams)
    assert calls == ["u_mul_e_sum"] * 3  # Eq. 4, one fused kernel per timestamp
    calls.clear()
    DNGEncoder(D, fourier_size=F, path=ExecutionPath.TORCH, device="cpu")(streams)
    assert calls == []
    cnn, k = _streams("cnn")
    DNGEncoder(D, num_heads=k, head_dim=4, fourier_size=F, path=ExecutionPath.DGL, device="cpu")(cnn)
    assert calls.count("u_mul_e") == 4 and calls.count("copy_e_sum") == 4  # Eq. 5 on every step


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
    enc = DNGEncoder(D, num_heads=k, head_dim=4, fourier_size=F, device="cpu")
    out = enc(streams, return_trajectory=True)
    assert isinstance(out, EncoderOutput)
    assert out.embedding.shape == (4, D) and out.memory.shape == (out.batch.num_nodes, D)
    assert out.trajectory.shape == (13, out.batch.num_nodes, D)
    torch.testing.assert_close(out.trajectory[-1], out.memory)
    assert enc(streams).trajectory is None
    # the embedding of each network is the mean of its output nodes' final memories
    for g in range(4):
        nodes = out.batch.output_nodes[out.batch.output_graph == g]
        torch.testing.assert_close(out.embedding[g], out.memory[nodes].mean(0))
    # a StreamBatch is accepted as well as a list
    torch.testing.assert_close(enc(dng_tgn.batch_streams(streams)).embedding, out.embedding)


def test_concat_readout():
    streams = [dng_tgn.to_event_stream(ZooCNN(channels=4)) for _ in range(2)]
    enc = DNGEncoder(D, num_heads=9, head_dim=4, fourier_size=F, readout=ConcatReadout(10), device="cpu")
    out = enc(streams)
    assert enc.out_dim == 10 * D and out.embedding.shape == (2, 10 * D)
    head = next(g for g in streams[1].node_groups if g.name == "head")
    second = out.memory[streams[0].num_nodes + head.offset : streams[0].num_nodes + head.offset + head.size]
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
    enc = DNGEncoder(D, num_heads=k, head_dim=4, fourier_size=F, device="cpu").double()
    out = enc(streams, return_trajectory=True)
    assert out.embedding.dtype == out.trajectory.dtype == torch.float64
