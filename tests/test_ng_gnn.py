"""NG-GNN (Kofinas et al. 2024) and the §7 static/dynamic pair: shapes, symmetry, the segment reductions.

Whole-model DGL-vs-torch agreement (outputs and gradients) is in test_encoder_paths.py, beside the encoder's.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn._dgl import HAS_DGL
from dng_tgn.baselines import NGGNN, DynamicMPNN, StaticMPNN, node_layer_index, output_position, union_edges
from dng_tgn.graph.events import NodeKind
from dng_tgn.nn import ExecutionPath, segment_pna, segment_sum

from _networks import mlp, residual_cnn

needs_dgl = pytest.mark.skipif(not HAS_DGL, reason="DGL is not importable here")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def permute_hidden(model: nn.Sequential, seed: int = 1) -> nn.Sequential:
    """The same function with every hidden layer's neurons permuted (App. B, Eq. 13)."""
    g = torch.Generator().manual_seed(seed)
    out = [m for m in model]
    linears = [i for i, m in enumerate(out) if isinstance(m, nn.Linear)]
    new = nn.Sequential(*[type(m)() if not isinstance(m, nn.Linear) else nn.Linear(m.in_features, m.out_features) for m in out])
    prev = None
    for k, i in enumerate(linears):
        w, b = out[i].weight.detach().clone(), out[i].bias.detach().clone()
        if prev is not None:
            w = w[:, prev]
        last = k == len(linears) - 1
        perm = torch.arange(w.shape[0]) if last else torch.randperm(w.shape[0], generator=g)
        new[i].weight.data, new[i].bias.data = w[perm], b[perm]
        prev = perm
    return new


def mlp_batch(n=3, widths=(3, 8, 6, 4, 2)):
    return dng_tgn.batch_streams([dng_tgn.to_event_stream(mlp(widths, seed=s)) for s in range(n)])


def test_permute_hidden_keeps_the_function():
    m = mlp()
    x = torch.randn(5, 3)
    assert torch.allclose(m(x), permute_hidden(m)(x), atol=1e-6)


def test_ng_gnn_shapes_and_positions():
    batch = mlp_batch()
    # default: messages follow the forward pass, as in Kofinas et al.'s configs
    assert NGGNN(hidden_dim=16, num_layers=2, out_dim=7, fourier_size=8)(batch).edge.shape[0] == sum(s.num_edges for s in batch.steps)
    model = NGGNN(hidden_dim=16, num_layers=2, out_dim=7, fourier_size=8, bidirectional=True)
    out = model(batch)
    edges = union_edges(batch, bidirectional=True)
    assert out.node.shape == (batch.num_nodes, 16)
    assert out.edge.shape == (edges.num_edges, 16)
    assert edges.num_edges == 2 * sum(s.num_edges for s in batch.steps)
    assert out.graph.shape == (3, 7)
    assert torch.isfinite(out.graph).all()
    layer = node_layer_index(batch)
    # 3-8-6-4-2: layers 0..4 per network
    assert torch.equal(layer[:23], torch.tensor([0] * 3 + [1] * 8 + [2] * 6 + [3] * 4 + [4] * 2))
    pos = output_position(batch)
    assert torch.equal(pos[batch.output_nodes], torch.tensor([0, 1] * 3))
    assert int((pos >= 0).sum()) == 6


def test_ng_gnn_handles_multi_slot_edges():
    stream = dng_tgn.to_event_stream(residual_cnn(), input_shape=(1, 8, 8))
    batch = dng_tgn.batch_streams([stream, stream])
    assert batch.num_slots > 1
    model = NGGNN(hidden_dim=16, num_layers=2, out_dim=4, fourier_size=4, num_slots=batch.num_slots)
    out = model(batch)
    assert out.graph.shape == (2, 4) and torch.isfinite(out.graph).all()
    assert torch.allclose(out.graph[0], out.graph[1], atol=1e-6)  # same network, same embedding
    with pytest.raises(ValueError, match="num_slots"):
        NGGNN(hidden_dim=8, num_layers=1, num_slots=1)(batch)


def test_ng_gnn_invariant_to_hidden_neuron_permutations():
    torch.manual_seed(0)
    m = mlp()
    a = dng_tgn.batch_streams([dng_tgn.to_event_stream(m)])
    b = dng_tgn.batch_streams([dng_tgn.to_event_stream(permute_hidden(m))])
    model = NGGNN(hidden_dim=32, num_layers=3, out_dim=8, fourier_size=16).eval()
    with torch.no_grad():
        oa, ob = model(a), model(b)
    assert (oa.graph - ob.graph).abs().max() <= 1e-5
    # outputs are not permuted, so their node embeddings must match one to one (equivariance)
    assert (oa.node[a.output_nodes] - ob.node[b.output_nodes]).abs().max() <= 1e-5
    # ... and the permutation is not a no-op: hidden node embeddings did move
    assert (oa.node - ob.node).abs().max() > 1e-3


def test_ng_gnn_sees_input_and_output_identity():
    """Inputs/outputs are not permutable (Kofinas et al.): swapping two outputs must change the encoding."""
    torch.manual_seed(0)
    m = mlp()
    swapped = mlp()
    swapped[-1].weight.data = m[-1].weight.data[[1, 0]]
    swapped[-1].bias.data = m[-1].bias.data[[1, 0]]
    model = NGGNN(hidden_dim=16, num_layers=2, fourier_size=8).eval()
    with torch.no_grad():
        ga = model(dng_tgn.batch_streams([dng_tgn.to_event_stream(m)])).graph
        gb = model(dng_tgn.batch_streams([dng_tgn.to_event_stream(swapped)])).graph
    assert (ga - gb).abs().max() > 1e-4


def test_static_and_dynamic_mpnn_predict_every_node():
    batch = mlp_batch(n=2, widths=(2, 5, 5, 3))
    inputs = torch.randn(2, 2)
    for model in (StaticMPNN(hidden_dim=8, num_layers=3, fourier_size=4), DynamicMPNN(hidden_dim=8, num_layers=3, fourier_size=4)):
        pred = model(batch, inputs)
        assert pred.shape == (batch.num_nodes,)
        pred.sum().backward()
        assert all(p.grad is not None for p in model.phis.parameters())
    with pytest.raises(ValueError, match="inputs must be"):
        StaticMPNN(hidden_dim=8)(batch, torch.randn(3, 2))
    with pytest.raises(ValueError, match="timestamps"):
        DynamicMPNN(hidden_dim=8, num_layers=2)(batch, inputs)


def test_dynamic_mpnn_is_causal_and_static_is_not():
    """Dynamic: a layer-l node depends only on layers < l (App. A). Static: later rounds mix everything."""
    batch = mlp_batch(n=1, widths=(2, 4, 4, 4))
    inputs = torch.randn(1, 2)
    layer = node_layer_index(batch)
    bumped = batch.node_values.clone()
    bumped[layer == 3, 0] += 1.0  # change the last layer's biases only
    import dataclasses

    batch2 = dataclasses.replace(batch, node_values=bumped)
    torch.manual_seed(0)
    dyn = DynamicMPNN(hidden_dim=8, num_layers=3, fourier_size=4)
    with torch.no_grad():
        d1, d2 = dyn(batch, inputs), dyn(batch2, inputs)
    early = (layer >= 1) & (layer <= 2)
    assert torch.equal(d1[early], d2[early])
    assert (d1[layer == 3] - d2[layer == 3]).abs().max() > 0


@needs_dgl
def test_segment_reductions_dgl_equals_torch():
    torch.manual_seed(0)
    e, n = 500, 40
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n - 5, (e,))  # the last 5 nodes receive nothing
    m = torch.randn(e, 6)
    weight = torch.randn(n, 4 * 6)  # a fixed random loss, so every aggregator's backward is compared
    results = {}
    for path in ExecutionPath:
        x = m.clone().requires_grad_()
        s = segment_sum(x, src, dst, n, n, path)
        pna, deg = segment_pna(x, src, dst, n, n, path)
        ((s * weight[:, :6]).sum() + (pna * weight).sum()).backward()
        results[path] = s, pna, deg, x.grad
    (sa, pa, da, ga), (sb, pb, db, gb) = results[ExecutionPath.DGL], results[ExecutionPath.TORCH]
    assert torch.allclose(sa, sb, atol=1e-5)
    assert torch.allclose(pa, pb, atol=1e-5) and torch.equal(da, db)
    assert torch.allclose(ga, gb, atol=1e-5)
    assert torch.isfinite(pa).all() and (pa[-5:] == 0).all()


def test_segment_reductions_need_a_resolved_path():
    m, idx = torch.randn(3, 2), torch.tensor([0, 1, 1])
    for fn in (segment_sum, segment_pna):
        with pytest.raises(TypeError, match="resolved ExecutionPath"):
            fn(m, idx, idx, 2, 2, None)
        with pytest.raises(TypeError, match="resolved ExecutionPath"):
            fn(m, idx, idx, 2, 2, False)


def test_input_nodes_carry_the_sampled_input():
    from dng_tgn.baselines import input_node_values

    batch = mlp_batch(n=2)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    v = input_node_values(batch, x)
    is_input = batch.node_kind == NodeKind.INPUT
    assert torch.equal(v[is_input], torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert (v[~is_input] == 0).all()


# ----------------------------------------------------------------------------------------------------------
# The fast formulas (issue #11's NG-GNN speed-up) against the concatenating / scatter_reduce formulas they replace
# ----------------------------------------------------------------------------------------------------------
def _reference_pna(m, dst, n, eps=1e-5):
    """PNA [mean, max, min, std] as first written: means by index_add, max/min by scatter_reduce."""
    deg = torch.zeros(n).index_add(0, dst, torch.ones(dst.numel()))
    has, denom = (deg > 0).unsqueeze(1), deg.clamp(min=1).unsqueeze(1)
    mean = m.new_zeros(n, m.shape[1]).index_add(0, dst, m) / denom
    sq = m.new_zeros(n, m.shape[1]).index_add(0, dst, m * m) / denom
    idx = dst.unsqueeze(1).expand_as(m)
    mx = m.new_zeros(n, m.shape[1]).scatter_reduce(0, idx, m, reduce="amax", include_self=False)
    mn = m.new_zeros(n, m.shape[1]).scatter_reduce(0, idx, m, reduce="amin", include_self=False)
    zero = m.new_zeros(())
    mx, mn = torch.where(has, mx, zero), torch.where(has, mn, zero)
    std = torch.sqrt(torch.relu(sq - mean * mean) + eps) * has
    return torch.cat([mean, mx, mn, std], dim=1), deg


def _reference_layer_forward(self, h, e, src, dst, path, avg_log_degree, swap=False):
    """PNAEdgeLayer.forward with the per-edge concatenations (h[dst], h[src], e) of the original code.

    ``swap=True`` feeds h[src] where h[dst] belongs: the negative control, a different function."""
    n = h.shape[0]
    i, j = (src, dst) if swap else (dst, src)
    m = self.message(torch.cat([h[i], h[j], e], dim=1))
    agg, deg = _reference_pna(m, dst, n)
    logd = torch.log(deg + 1).unsqueeze(1)
    delta = avg_log_degree.clamp(min=1e-3)
    amp = logd / delta
    att = torch.where(logd > 0, delta / logd.clamp(min=1e-6), torch.zeros_like(logd))
    scaled = torch.cat([agg, agg * amp, agg * att], dim=1)
    h = self.node_norm(h + self.dropout(self.update(torch.cat([h, scaled], dim=1))))
    if self.edge_update is not None:
        e = self.edge_norm(e + self.dropout(self.edge_update(torch.cat([e, h[i], h[j]], dim=1))))
    return h, e


def _grads_of(model, out):
    model.zero_grad()
    w = torch.linspace(-1, 1, out.edge.numel()).reshape(out.edge.shape)
    (out.graph.square().sum() + (out.edge * w).sum() + out.node.sin().sum()).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_edge_mlp_equals_the_concatenating_formula():
    from dng_tgn.baselines.ng_gnn import _mlp, edge_mlp

    torch.manual_seed(0)
    n, e, d = 30, 200, 8
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    mlp = _mlp(3 * d, d, d)
    for order in ("message", "edge_update"):
        h = torch.randn(n, d, requires_grad=True)
        x = torch.randn(e, d, requires_grad=True)
        if order == "message":
            fast, slow = [(h, dst), (h, src), (x, None)], lambda: mlp(torch.cat([h[dst], h[src], x], 1))
        else:
            fast, slow = [(x, None), (h, dst), (h, src)], lambda: mlp(torch.cat([x, h[dst], h[src]], 1))
        results = []
        for f in (lambda: edge_mlp(mlp, fast), slow):
            mlp.zero_grad()
            h.grad = x.grad = None
            y = f()
            (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
            results.append((y.detach(), h.grad, x.grad, [p.grad.clone() for p in mlp.parameters()]))
        (ya, gha, gxa, gpa), (yb, ghb, gxb, gpb) = results
        torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gha, ghb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gxa, gxb, atol=1e-5, rtol=1e-5)
        for a, b in zip(gpa, gpb):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # negative control: the block order matters (source and destination swapped is another function)
    with torch.no_grad():
        swapped = edge_mlp(mlp, [(x, None), (h, src), (h, dst)])
        assert (swapped - mlp(torch.cat([x, h[dst], h[src]], 1))).abs().max() > 1e-3
    with pytest.raises(ValueError, match="do not match"):
        edge_mlp(mlp, [(h, dst), (x, None)])


@pytest.mark.parametrize("path", [ExecutionPath.TORCH, pytest.param(ExecutionPath.DGL, marks=needs_dgl)])
def test_ng_gnn_layers_equal_the_concatenating_formula(path, monkeypatch):
    """The whole model (bidirectional, edge updates, a fitted δ): outputs and every parameter's gradient equal
    those of the original per-edge concatenation and scatter_reduce aggregation."""
    from dng_tgn.baselines.ng_gnn import PNAEdgeLayer

    batch = mlp_batch(n=3, widths=(2, 8, 8, 1))
    torch.manual_seed(0)
    model = NGGNN(hidden_dim=16, num_layers=3, out_dim=8, fourier_size=8, bidirectional=True, path=path)
    model.fit_degree_scaler([batch])
    fast = model(batch)
    fast_grads = _grads_of(model, fast)
    with monkeypatch.context() as mp:
        mp.setattr(PNAEdgeLayer, "forward", _reference_layer_forward)
        slow = model(batch)
        slow_grads = _grads_of(model, slow)
    for field in ("graph", "node", "edge"):
        torch.testing.assert_close(getattr(fast, field), getattr(slow, field), atol=1e-5, rtol=1e-5)
    assert set(fast_grads) == set(slow_grads)
    for k in fast_grads:
        torch.testing.assert_close(fast_grads[k], slow_grads[k], atol=1e-4, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    assert fast_grads["layers.0.message.0.weight"].abs().sum() > 0  # gradients reach the first layer
    # negative control: the reference with sources and destinations swapped is a different model
    with monkeypatch.context() as mp:
        mp.setattr(PNAEdgeLayer, "forward", lambda *a: _reference_layer_forward(*a, swap=True))
        with torch.no_grad():
            assert (model(batch).graph - fast.graph.detach()).abs().max() > 1e-3


@pytest.mark.parametrize("path", [ExecutionPath.TORCH, pytest.param(ExecutionPath.DGL, marks=needs_dgl)])
def test_segment_pna_equals_the_scatter_reduce_formula(path):
    torch.manual_seed(0)
    e, n = 400, 30
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n - 4, (e,))  # 4 nodes receive nothing
    weight = torch.randn(n, 4 * 5)
    out = []
    for f in (lambda m: segment_pna(m, src, dst, n, n, path), lambda m: _reference_pna(m, dst, n)):
        m = torch.randn(e, 5, generator=torch.Generator().manual_seed(1)).requires_grad_()
        pna, deg = f(m)
        (pna * weight).sum().backward()
        out.append((pna.detach(), deg, m.grad))
    (pa, da, ga), (pb, db, gb) = out
    torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5)
    assert torch.equal(da, db)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)
    # negative control: other messages give another aggregation
    moved = segment_pna(torch.randn(e, 5), src, dst, n, n, path)[0]
    assert (moved - pa).abs().max() > 1e-2


def test_segment_pna_splits_tied_gradients_like_scatter_reduce():
    """Tied maxima/minima (integer messages) share the gradient equally, exactly as scatter_reduce's backward."""
    torch.manual_seed(0)
    e, n = 300, 12
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    base = torch.randint(-2, 3, (e, 4)).float()
    weight = torch.randn(n, 16)
    grads = []
    for f in (lambda m: segment_pna(m, src, dst, n, n, ExecutionPath.TORCH)[0], lambda m: _reference_pna(m, dst, n)[0]):
        m = base.clone().requires_grad_()
        (f(m)[:, 4:12] * weight[:, 4:12]).sum().backward()  # the max and min blocks only
        grads.append(m.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-6)
    # the data really has ties, and giving every tied edge the whole gradient (no split) would differ
    idx = dst.unsqueeze(1).expand_as(base)
    zeros = base.new_zeros(n, 4)
    hit_max = base == zeros.scatter_reduce(0, idx, base, reduce="amax", include_self=False)[dst]
    hit_min = base == zeros.scatter_reduce(0, idx, base, reduce="amin", include_self=False)[dst]
    assert (zeros.index_add(0, dst, hit_max.float()) > 1).any()
    unsplit = hit_max * weight[dst, 4:8] + hit_min * weight[dst, 8:12]
    assert (unsplit - grads[0]).abs().max() > 1e-2


@pytest.mark.parametrize("path", [ExecutionPath.TORCH, pytest.param(ExecutionPath.DGL, marks=needs_dgl)])
def test_segment_pna_extremes_of_exactly_zero_get_the_whole_gradient(path):
    """A node whose max or min is exactly 0.0 passes the whole gradient to that edge, as finite differences say.

    ``scatter_reduce(include_self=False)``'s backward (torch 2.13) counts the zero-filled output as one more tied
    element there and gives the edge only half: the earlier torch-path formula, and what the reference of the tests
    above would give, so they never draw messages whose extreme is exactly 0."""
    # node 0: column 0's unique min and column 1's unique max are exactly 0; node 1 has one edge; node 2 none
    m = torch.tensor([[2.0, 0.0], [0.0, -1.0], [3.0, -2.0], [0.5, 0.25]], dtype=torch.double, requires_grad=True)
    src, dst = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 0, 1])
    weight = torch.linspace(-1.0, 1.5, 3 * 8, dtype=torch.double).reshape(3, 8)
    (segment_pna(m, src, dst, 3, 3, path)[0] * weight).sum().backward()
    # finite differences of the whole PNA output (the function is smooth around these messages: no ties)
    assert torch.autograd.gradcheck(lambda x: segment_pna(x, src, dst, 3, 3, path)[0], (m.detach().clone().requires_grad_(),))
    # the max/min blocks alone: each unique extreme's edge gets that block's whole weight
    mm = m.detach().clone().requires_grad_()
    (segment_pna(mm, src, dst, 3, 3, path)[0][:, 2:6] * weight[:, 2:6]).sum().backward()
    assert mm.grad[1, 0] == weight[0, 4]  # the min 0.0 of column 0 at node 0: the whole weight, not half
    assert mm.grad[0, 1] == weight[0, 3]  # the max 0.0 of column 1 at node 0
    assert mm.grad[3, 0] == weight[1, 2] + weight[1, 4] and mm.grad[3, 1] == weight[1, 3] + weight[1, 5]  # max = min
