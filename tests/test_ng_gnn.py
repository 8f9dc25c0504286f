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
