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


def test_rff_linear_takes_the_direct_product_for_few_scalars(monkeypatch):
    """Few scalars on a wide range (a SIREN's 64 first-layer weights): the direct product is cheaper than a fit."""
    import dng_tgn.graph.features as features_module

    fits = []
    real = features_module.rff_basis
    monkeypatch.setattr(features_module, "rff_basis", lambda *a, **k: fits.append(1) or real(*a, **k))
    torch.manual_seed(0)
    rff = RandomFourierFeatures(128, 3.0)
    w, b = torch.randn(64, 256) / 16, torch.randn(64)
    few = (torch.rand(64, 1) * 2 - 1) * 0.48
    torch.testing.assert_close(rff_linear(rff, few, w, b), rff(few) @ w.T + b, rtol=1e-5, atol=1e-6)
    assert not fits
    many = (torch.rand(1024, 1) * 2 - 1) * 0.014  # narrow range, many scalars: the basis pays
    torch.testing.assert_close(rff_linear(rff, many, w, b), rff(many) @ w.T + b, rtol=1e-5, atol=2e-5)
    assert fits


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


@pytest.mark.parametrize("route", ["sparse", "dense"])
def test_sparse_route_equals_per_edge_route_on_unsorted_edges(route, monkeypatch):
    """message_from_basis builds its (D·P, S) matrix itself, CSR or dense: edges in any order, uneven in-degrees,
    repeated node pairs (60 edges over 28 pairs), one destination without edges."""
    monkeypatch.setattr(memory_module, "_DENSE_PAIR_FILL", 0.0 if route == "dense" else math.inf)
    used = []
    for name in ("_dense_rows_by_dst", "_sparse_rows_by_dst"):
        real = getattr(memory_module, name)
        monkeypatch.setattr(memory_module, name, lambda *a, _real=real, _name=name: used.append(_name) or _real(*a))
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
    mapping = basis.fold_with_bias(msg.edge_proj.weight, msg.edge_proj.bias)
    got = msg.message_from_basis(step, u, basis.basis, mapping)
    assert used == [f"_{route}_rows_by_dst"]
    want = msg(step_ops(step, ExecutionPath.TORCH), u, rff(step.weight))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gu_got, = torch.autograd.grad(got.sum(), u)
    gu_want, = torch.autograd.grad(want.sum(), u)
    torch.testing.assert_close(gu_got, gu_want, rtol=1e-5, atol=1e-5)
    # negative control: one edge's basis row moved must move its destination's message, and only that one
    moved = basis.basis.clone()
    moved[0] += 0.5
    other = msg.message_from_basis(step, u, moved, mapping).detach()
    hit = int(dst_local[0])
    assert (other[hit] - got[hit].detach()).abs().max() > 1e-3
    keep = torch.arange(num_dst) != hit
    torch.testing.assert_close(other[keep], got.detach()[keep], rtol=0, atol=0)


@pytest.mark.parametrize("path", [ExecutionPath.TORCH, ExecutionPath.DGL])
def test_dense_pair_message_equals_per_edge_message(path):
    """Eq. 4 with W_m1 e_ij laid out per node pair (MessageFunction.message_dense_pairs): repeated pairs, a
    destination without edges, gradients to the edges and the sources; a moved edge moves only its destination."""
    if path is ExecutionPath.DGL and not dng_tgn.nn.paths.dgl_supports(torch.device("cpu")):
        pytest.skip("no DGL CPU kernels")
    g = torch.Generator().manual_seed(2)
    num_src, num_dst, e = 3, 6, 30
    src_local = torch.randint(0, num_src, (e,), generator=g).int()
    dst_local = torch.randint(0, num_dst - 1, (e,), generator=g).int()
    step = StepBatch(src_local=src_local, dst_local=dst_local, src_nodes=torch.arange(num_src),
                     dst_nodes=torch.arange(num_dst) + num_src, weight=torch.randn(e, 1, generator=g),
                     kind=torch.zeros(e, dtype=torch.int8), span=torch.zeros(e, dtype=torch.int16))
    assert memory_module._dense_pairs_pay(num_dst, num_src, e, 12)
    msg = MessageFunction(8, 12, 12)
    u = torch.randn(num_src, 12, generator=g, requires_grad=True)
    edge_msg = torch.randn(e, 1, 12, generator=g, requires_grad=True)
    got = msg.message_dense_pairs(step, u, edge_msg)
    want = msg.message(step_ops(step, path), u, edge_msg)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(got.sum(), (u, edge_msg)), torch.autograd.grad(want.sum(), (u, edge_msg))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    moved = edge_msg.detach().clone()
    moved[0] += 1.0  # negative control
    other = msg.message_dense_pairs(step, u, moved).detach()
    hit = int(dst_local[0])
    assert (other[hit] - got[hit].detach()).abs().max() > 1e-3
    keep = torch.arange(num_dst) != hit
    torch.testing.assert_close(other[keep], got.detach()[keep], rtol=0, atol=0)


def test_single_siren_under_no_grad_takes_the_fast_routes_and_equals_reference(monkeypatch):
    """The benchmark's case (benchmarks/bench_efficiency.py): one SIREN, inference under no_grad, default path.

    The first forward of a process may run under no_grad, so the sparse-kernel probe must not depend on the
    grad mode (it once did, and switched the basis route off for the whole process); the complete bipartite
    hidden layers then take the dense pair matrix, and the 64 first-layer weights the direct RFF product and the
    per-pair Eq. 4 (no DGL block).
    """
    monkeypatch.setattr(memory_module, "_SPARSE_PROBED", {})
    used = []
    real_dense = memory_module._dense_rows_by_dst
    monkeypatch.setattr(memory_module, "_dense_rows_by_dst", lambda *a: used.append("dense") or real_dense(*a))
    pair_calls = []
    real_pairs = MessageFunction.message_dense_pairs
    monkeypatch.setattr(MessageFunction, "message_dense_pairs",
                        lambda self, step, *a: pair_calls.append(int(step.src_nodes.numel() == 2)) or real_pairs(self, step, *a))
    torch.manual_seed(0)
    batch = dng_tgn.batch_state_dicts([NFNSiren().state_dict()])
    enc = DNGEncoder(32, fourier_size=128, max_timestamps=3, device="cpu").eval()
    with torch.no_grad():
        got = enc(batch).embedding
        want = enc.readout(_reference_memory(enc.memory, batch, enc.execution_path()), batch)
    assert memory_module._SPARSE_PROBED == {"cpu": True}
    assert used == ["dense", "dense"]  # hidden layer 32 -> 32 and the output layer 32 -> 1
    assert pair_calls == [1]  # the first layer (2 -> 32, P too large for the basis): per node pair, no DGL block
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # negative control: a changed message weight (timestamps 1 and 2) must change the fast route's output
    for t in (0, 1):
        with torch.no_grad():
            enc.memory.messages[t].edge_proj.weight.mul_(1.5)
            moved = enc(batch).embedding
            enc.memory.messages[t].edge_proj.weight.div_(1.5)
        assert (moved - got).abs().max() > 1e-3, t


def test_sparse_probe_does_not_depend_on_grad_mode(monkeypatch):
    from dng_tgn.nn.memory import _sparse_products_work

    for mode in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        monkeypatch.setattr(memory_module, "_SPARSE_PROBED", {})
        with mode():
            assert _sparse_products_work(torch.device("cpu")), mode


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


# ----------------------------------------------------------------------------------------------------------
# Eq. 5 by live-slot groups and chunks (MultiHeadMessage.message_from_weights) against the plain per-edge Eq. 5
# ----------------------------------------------------------------------------------------------------------
def _plain_eq5(msg, step, path, src_memory, edge_feat):
    """Eq. 5 as written: every edge's N heads W_m1 e_ij,n ⊙ W_n s_j, phi_h per edge, summed per destination."""
    n, hd = msg.message_heads, msg.head_dim
    u = msg.src_proj(src_memory).view(-1, n, hd)
    heads = step_ops(step, path).u_mul_e(u, msg.edge_proj(edge_feat))  # (E, N, hd), DGL or torch gather
    per_edge = msg.merge(heads.flatten(1))
    return per_edge.new_zeros(step.dst_nodes.numel(), per_edge.shape[1]).index_add(0, step.dst_local, per_edge)


def _plain_memory(mem, batch, path):
    """Full RFF edge features (E, N, 2F), per-edge Eq. 5 with all N slots, nn.GRUCell: no shortcut of memory.py."""
    nf, dtype = mem.node_features, mem.inputs.table.weight.dtype  # scalars in the encoder's dtype: RFF's 2πx too
    node_state = nf.proj(nf.featurizer(batch.node_values.to(dtype), batch.node_slot_mask))
    bank = mem.initial_memory(batch, node_state)
    for t, step in enumerate(batch.steps, start=1):
        weight = nn.functional.pad(step.weight.to(dtype), (0, mem.message_heads - step.weight.shape[1]))
        feats = mem.edge_features(weight, step.kind, step.span)
        msg = _plain_eq5(mem.messages[t - 1], step, path, bank.index_select(0, step.src_nodes), feats)
        bank = bank.index_copy(0, step.dst_nodes, mem.updater(msg, node_state.index_select(0, step.dst_nodes)))
    return bank


class _KernelMixCNN(nn.Module):
    """7x7 stem, then a 3x3 conv and a 1x1 conv summed with a residual into the same nodes, GAP, dense:
    steps that hold 1-, 9- and 49-slot edges together (and residual edges)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 7, padding=3)
        self.c3 = nn.Conv2d(4, 3, 3, padding=1)
        self.c1 = nn.Conv2d(4, 3, 1)
        self.c3b = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = torch.relu(self.c3(y) + self.c1(y))
        z = torch.relu(self.c3b(z) + z)
        return self.fc(z.mean((2, 3)))


def _eq5_batch(kind: str):
    from dng_tgn.nets import SimpleViT

    torch.manual_seed(0)
    mix = lambda: dng_tgn.to_event_stream(_KernelMixCNN().eval(), input_shape=(2, 6, 6))  # noqa: E731
    vit = lambda: dng_tgn.to_event_stream(SimpleViT(dim=8, heads=2, dim_head=4, mlp_dim=16))  # noqa: E731
    if kind == "kernel_mix":
        streams = [mix(), mix()]
    elif kind == "siren":
        streams = [dng_tgn.to_event_stream(NFNSiren(hidden=8)) for _ in range(2)]
    else:  # every family in one batch
        streams = [mix(), dng_tgn.to_event_stream(ZooCNN(channels=3).eval()), dng_tgn.to_event_stream(NFNSiren(hidden=8)),
                   vit()]
    batch = dng_tgn.batch_streams(streams)
    if batch.num_slots == 49:  # the 7x7 stem's step
        batch.steps[0].weight[::5, 20] = 0.0  # exact zeros inside 7x7 kernels (pruned weights): still live slots
        batch.steps[0].weight[1::7, 48] = 0.0  # a zero last slot: those edges form a 48-slot group
    return batch


def _eq5_encoder(batch, heads=None):
    torch.manual_seed(1)
    return DNGEncoder(12, message_heads=heads or max(batch.num_slots, 4), head_dim=3, fourier_size=8,
                      max_timestamps=batch.max_timestamps, device="cpu", path=ExecutionPath.TORCH)


def _compare_plain(enc, batch, path):
    """Embedding equal to the plain fp32 computation to rtol/atol 1e-5. Gradients: a sum over thousands of zero
    edges per slot is summed in another order here (through c0 once, not per padded slot), so both fp32 routes
    are compared with the float64 plain one, normwise: ours within 1e-5, and within 1e-5 + the plain fp32 route's
    own error of it (a few 1e-6 on the mixed batch) of the plain fp32 gradients."""
    import copy

    torch.manual_seed(3)
    probe = torch.randn(batch.num_graphs, enc.out_dim)
    enc.path = path
    enc64 = copy.deepcopy(enc).double()

    def grads(model, out):
        model.zero_grad(set_to_none=True)
        (out * probe.to(out.dtype)).sum().backward()
        return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).double() for k, p in model.named_parameters()}

    enc.zero_grad(set_to_none=True)
    got = enc(batch).embedding
    got_grads = grads(enc, got)
    want = enc.readout(_plain_memory(enc.memory, batch, path), batch)
    want_grads = grads(enc, want)
    truth = enc64.readout(_plain_memory(enc64.memory, batch, path), batch)
    truth_grads = grads(enc64, truth)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), truth.detach(), rtol=1e-5, atol=1e-5)
    assert sum(int(g.abs().sum() > 0) for g in got_grads.values()) > 10
    for k, g64 in truth_grads.items():
        scale = g64.abs().max().clamp(min=1e-12)
        ours, plain = float((got_grads[k] - g64).abs().max() / scale), float((want_grads[k] - g64).abs().max() / scale)
        assert ours <= 1e-5, (k, ours)
        assert float((got_grads[k] - want_grads[k]).abs().max() / scale) <= 1e-5 + plain, k
    return got.detach()


_PATHS = [ExecutionPath.TORCH] + ([ExecutionPath.DGL] if dng_tgn._dgl.HAS_DGL else [])


@pytest.mark.parametrize("path", _PATHS, ids=lambda p: p.value)
@pytest.mark.parametrize("kind", ["kernel_mix", "siren", "mixed"])  # mixed: 7x7/3x3/1x1 CNN, Zoo CNN, SIREN, ViT
def test_eq5_groups_equal_plain_eq5(kind, path):
    batch = _eq5_batch(kind)
    _compare_plain(_eq5_encoder(batch), batch, path)


@pytest.mark.parametrize("path", _PATHS, ids=lambda p: p.value)
def test_eq5_chunks_equal_one_chunk(path, monkeypatch):
    """Chunks of a few edges (many per live-slot group, on DGL one block each) give the one-chunk numbers."""
    batch = _eq5_batch("mixed")
    enc = _eq5_encoder(batch)
    enc.path = path
    probe = torch.randn(batch.num_graphs, enc.out_dim)

    def run():
        enc.zero_grad(set_to_none=True)
        out = enc(batch).embedding
        (out * probe).sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in enc.named_parameters() if p.grad is not None}

    whole, g_whole = run()
    monkeypatch.setattr(memory_module, "MESSAGE_CHUNK_ELEMENTS", 1000)  # 6 (49 slots) to 66 (1 slot) edges a chunk
    chunked, g_chunked = run()
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert set(g_chunked) == set(g_whole)
    for k, g in g_whole.items():
        torch.testing.assert_close(g_chunked[k], g, rtol=1e-4, atol=1e-5 * float(g.abs().max().clamp(min=1e-12)), msg=k)


def test_eq5_group_count_follows_the_weights_and_moves_the_output():
    """Negative controls: a weight in a slot past a 3x3 kernel (where the stream pads with zero edges) and a
    zeroed last tap each change the live-slot groups, and the output moves exactly as the plain Eq. 5 says."""
    batch = _eq5_batch("kernel_mix")
    enc = _eq5_encoder(batch)
    t, step = next((t, s) for t, s in enumerate(batch.steps, start=1)
                   if int(s.weight[:, 9:].ne(0).sum()) == 0 and int(s.weight[:, 1:].ne(0).sum()) > 0)
    with torch.no_grad():
        base = enc(batch, return_trajectory=True).trajectory[t, step.dst_nodes]  # the memories step t writes
    rows = step.weight[:, 8].ne(0).nonzero().squeeze(1)  # the 3x3 edges of the step
    for slot, value in ((30, 0.5), (8, 0.0)):  # a padded slot made live; the last tap of the 3x3 kernels zeroed
        old = step.weight[rows, slot].clone()
        step.weight[rows, slot] = value
        try:
            with torch.no_grad():
                out = enc(batch, return_trajectory=True)
                want = enc.readout(_plain_memory(enc.memory, batch, ExecutionPath.TORCH), batch)
            assert float((out.trajectory[t, step.dst_nodes] - base).abs().max()) > 1e-2, slot
            torch.testing.assert_close(out.embedding, want, rtol=1e-5, atol=1e-5)
        finally:
            step.weight[rows, slot] = old


def test_edge_projection_of_every_kind_equals_linear_of_features():
    """EdgeFeatures.project (basis trick, Q/K roles folded into the projection, learnable kinds via a table)
    against ``linear(features)``, with its shift and a shared value range, values and gradients."""
    from dng_tgn.graph.events import EdgeKind
    from dng_tgn.nn import EdgeFeatures

    torch.manual_seed(0)
    ef = EdgeFeatures(RandomFourierFeatures(16, 3.0))
    lin = nn.Linear(32, 5)
    kinds = list(EdgeKind)
    kind = torch.tensor(kinds * 7, dtype=torch.int8)
    weight = torch.randn(kind.numel(), 3) * 0.1
    learnable = (kind != int(EdgeKind.WEIGHT)) & (kind != int(EdgeKind.ATTN_Q)) & (kind != int(EdgeKind.ATTN_K))
    weight[kind != int(EdgeKind.WEIGHT), 1:] = 0.0  # single edges: zero edges past slot 0
    weight[learnable, 0] = 0.0
    span = torch.where(kind == int(EdgeKind.RESIDUAL), torch.arange(kind.numel()) % 3 + 1, 0).to(torch.int16)
    shift = torch.randn(5)
    params = [lin.weight, lin.bias, ef.theta_res, ef.attn_q, ef.attn_k, ef.attn_v, ef.attn_s]
    probe = torch.randn(kind.numel(), 3, 5)
    got = ef.project(weight, kind, span, lin, shift=shift, value_range=(-1.0, 1.0))
    g_got = torch.autograd.grad((got * probe).sum(), params, allow_unused=True)
    want = lin(ef(weight, kind, span)) - shift
    g_want = torch.autograd.grad((want * probe).sum(), params, allow_unused=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # not vacuous: the role vectors and the residual vector do reach the projection
    assert all(g is not None and g.abs().sum() > 0 for g in g_got[2:])


def test_eq5_gradients_reach_every_weight_slot_like_plain_eq5():
    """Weights that need a gradient (e.g. editing a network through the encoder) keep all N slots live: the
    derivative at a zero (padded) slot is not zero, and it matches the plain Eq. 5's."""
    batch = _eq5_batch("kernel_mix")
    enc = _eq5_encoder(batch)
    probe = torch.randn(batch.num_graphs, enc.out_dim)
    weights = [s.weight.clone().requires_grad_(True) for s in batch.steps]
    for s, w in zip(batch.steps, weights):
        s.weight = w
    got = torch.autograd.grad((enc(batch).embedding * probe).sum(), weights)
    want = torch.autograd.grad((enc.readout(_plain_memory(enc.memory, batch, ExecutionPath.TORCH), batch) * probe).sum(),
                               weights)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * float(w.abs().max().clamp(min=1e-12)))
    padded = batch.steps[1].weight.detach() == 0  # zero slots past the 3x3 kernels of step 2
    assert bool(padded.any()) and float(got[1][padded].abs().max()) > 0


def test_eq5_route_in_float64_equals_plain_eq5_to_float64_rounding():
    batch = _eq5_batch("kernel_mix")
    enc = _eq5_encoder(batch).double()
    with torch.no_grad():
        got = enc(batch).embedding
        want = enc.readout(_plain_memory(enc.memory, batch, ExecutionPath.TORCH), batch)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
