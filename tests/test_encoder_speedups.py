"""The encoder's cheaper computations (Chebyshev RFF projections, factored node features and GRU hidden gates,
the sparse Eq. 4 route) against a straightforward reference: same outputs and gradients to float32 rounding.

Tolerances: outputs (LayerNorm-ed memories, O(1)) rtol=atol=1e-5. Gradients are sums over thousands of terms
with cancellation, so they are compared normwise (largest difference / largest magnitude <= 1e-5); the
reference itself differs from a float64 run by ~1e-6 normwise (benchmarks/bench_encoder_speed.py prints both).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dng_tgn
import dng_tgn.nn.memory as memory_module
from dng_tgn.graph.batch import StepBatch
from dng_tgn.graph.features import RandomFourierFeatures, chebyshev_degree, rff_basis, rff_linear
from dng_tgn.nets import NFNSiren, ZooCNN
from dng_tgn.nn import DNGEncoder, ExecutionPath, MessageFunction, step_ops


def _rff64(rff, x):
    z = 2 * math.pi * x.double().unsqueeze(-1) * rff.freqs.double()
    return torch.cat([z.sin(), z.cos()], dim=-1)


@pytest.mark.parametrize("half_range", [0.0, 0.014, 0.3, 1.5, 20.0])
def test_rff_linear_matches_direct_projection(half_range):
    torch.manual_seed(0)
    rff = RandomFourierFeatures(128, 3.0)
    w, b = torch.randn(64, 256) / 16, torch.randn(64)
    x = 0.05 + (torch.rand(3000, 2) * 2 - 1) * half_range
    got = rff_linear(rff, x, w, b)
    truth = _rff64(rff, x) @ w.double().T + b.double()
    direct = rff(x) @ w.T + b
    assert got.shape == (3000, 2, 64)
    # as close to the float64 truth as the direct float32 computation is (a few 1e-6 here)
    assert (got.double() - truth).abs().max() <= max(2 * (direct.double() - truth).abs().max(), 1e-6)
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=2e-5)


def test_basis_degree_and_fallback():
    rff = RandomFourierFeatures(128, 3.0)
    assert rff_basis(rff, torch.full((5,), 0.25)).size <= 4  # one value: a constant
    assert rff_basis(rff, torch.linspace(-0.015, 0.015, 100)).coef is not None
    wide = rff_basis(rff, torch.linspace(-5, 5, 100))
    assert wide.coef is None and wide.size == rff.out_dim  # no saving: the direct features
    x = torch.linspace(-0.1, 0.1, 10, requires_grad=True)
    assert rff_basis(rff, x).coef is None  # a gradient w.r.t. the scalars takes the direct path
    assert chebyshev_degree(10.0, 0.02) < chebyshev_degree(10.0, 0.2) < chebyshev_degree(10.0, 2.0)


def _reference_memory(mem, batch, path):
    """DNGMemory.forward as first written: full RFF features, nn.Linear, nn.GRUCell, per-edge products."""
    dtype = mem.inputs.table.weight.dtype
    nf = mem.node_features
    node_state = nf.proj(nf.featurizer(batch.node_values.to(dtype), batch.node_slot_mask))
    bank = mem.initial_memory(batch, node_state)
    for t, step in enumerate(batch.steps, start=1):
        weight = step.weight.to(dtype)
        if weight.shape[1] < mem.message_heads:
            weight = nn.functional.pad(weight, (0, mem.message_heads - weight.shape[1]))
        feats = mem.edge_features(weight, step.kind, step.span)
        msg = mem.messages[t - 1](step_ops(step, path), bank.index_select(0, step.src_nodes), feats)
        new = mem.updater(msg, node_state.index_select(0, step.dst_nodes))
        bank = bank.index_copy(0, step.dst_nodes, new)
    return bank


def _compare(enc, batch, path=ExecutionPath.TORCH):
    torch.manual_seed(3)
    probe = torch.randn(batch.num_graphs, enc.out_dim)
    enc.zero_grad(set_to_none=True)
    got = enc(batch).embedding
    (got * probe).sum().backward()
    got_grads = {k: p.grad.clone() for k, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad(set_to_none=True)
    want = enc.readout(_reference_memory(enc.memory, batch, path), batch)
    (want * probe).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for k, p in enc.named_parameters():
        if p.grad is None:
            assert k not in got_grads
            continue
        scale = p.grad.abs().max().clamp(min=1e-12)
        assert float((got_grads[k] - p.grad).abs().max() / scale) <= 1e-5, k


@pytest.mark.parametrize("weight_scale", [1.0, 10.0])
def test_encoder_equals_reference_on_sirens(weight_scale):
    torch.manual_seed(0)
    sds = []
    for _ in range(6):
        sd = NFNSiren().state_dict()
        sds.append({k: v * weight_scale if k.endswith("weight") and not k.startswith("net.0.") else v for k, v in sd.items()})
    batch = dng_tgn.batch_state_dicts(sds)
    enc = DNGEncoder(32, fourier_size=16, max_timestamps=3, device="cpu", path=ExecutionPath.TORCH)
    _compare(enc, batch)


def test_encoder_equals_reference_on_cnns_and_mixed_batches():
    torch.manual_seed(0)
    streams = [dng_tgn.to_event_stream(ZooCNN().eval()) for _ in range(2)] + [dng_tgn.to_event_stream(NFNSiren())]
    batch = dng_tgn.batch_streams(streams)
    enc = DNGEncoder(16, message_heads=batch.num_slots, head_dim=4, fourier_size=8, max_timestamps=batch.max_timestamps,
                     device="cpu", path=ExecutionPath.TORCH)
    _compare(enc, batch)


def test_sparse_route_equals_per_edge_route_on_unsorted_edges():
    """message_from_basis builds its CSR matrix itself: edges in any order, uneven in-degrees."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    num_src, num_dst, e = 7, 5, 60
    src_local = torch.randint(0, num_src, (e,), generator=g).int()
    dst_local = torch.randint(0, num_dst - 1, (e,), generator=g).int()  # the last destination gets no edge
    step = StepBatch(src_local=src_local, dst_local=dst_local, src_nodes=torch.arange(num_src),
                     dst_nodes=torch.arange(num_dst) + num_src, weight=torch.randn(e, 1, generator=g) * 0.05,
                     kind=torch.zeros(e, dtype=torch.int8), span=torch.zeros(e, dtype=torch.int16))
    rff = RandomFourierFeatures(16, 3.0)
    msg = MessageFunction(rff.out_dim, 12, 12)
    u = torch.randn(num_src, 12, requires_grad=True)
    basis = rff_basis(rff, step.weight[:, 0])
    assert basis.coef is not None
    got = msg.message_from_basis(step, u, basis.basis, basis.fold_with_bias(msg.edge_proj.weight, msg.edge_proj.bias))
    want = msg(step_ops(step, ExecutionPath.TORCH), u, rff(step.weight))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gu_got, = torch.autograd.grad(got.sum(), u)
    gu_want, = torch.autograd.grad(want.sum(), u)
    torch.testing.assert_close(gu_got, gu_want, rtol=1e-5, atol=1e-5)


def test_routes_switch_gives_same_numbers():
    torch.manual_seed(0)
    batch = dng_tgn.batch_streams([dng_tgn.to_event_stream(NFNSiren()) for _ in range(3)])
    enc = DNGEncoder(32, fourier_size=16, max_timestamps=3, device="cpu", path=ExecutionPath.TORCH)
    with torch.no_grad():
        a = enc(batch).embedding
        old = memory_module.SPARSE_BASIS_MESSAGE
        memory_module.SPARSE_BASIS_MESSAGE = False
        try:
            b = enc(batch).embedding
        finally:
            memory_module.SPARSE_BASIS_MESSAGE = old
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_float64_encoder_still_matches_reference():
    torch.manual_seed(0)
    batch = dng_tgn.batch_streams([dng_tgn.to_event_stream(NFNSiren()) for _ in range(2)])
    enc = DNGEncoder(16, fourier_size=8, max_timestamps=3, device="cpu", path=ExecutionPath.TORCH).double()
    with torch.no_grad():
        got = enc(batch).embedding
        want = enc.readout(_reference_memory(enc.memory, batch, ExecutionPath.TORCH), batch)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_sparse_products_probe_on_cpu():
    from dng_tgn.nn.memory import _sparse_products_work

    assert _sparse_products_work(torch.device("cpu"))  # CPU torch always has CSR x dense with backward
