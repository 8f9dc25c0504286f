"""The DNG memory (§5): each block against its equation, and the whole memory against a hand-written loop."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn.graph.batch import StepBatch
from dng_tgn.graph.events import EdgeKind, NodeKind
from dng_tgn.graph.features import RandomFourierFeatures
from dng_tgn.nets import NFNSiren, SimpleViT, ZooCNN
from dng_tgn.nn import (
    DNGEncoder, DNGMemory, EdgeFeatures, ExecutionPath, MemoryUpdater, MessageFunction, MultiHeadMessage, TorchStepOps,
)

D, F = 16, 8  # memory dim, fourier size: small, the equations do not care


def _toy_step(num_src=3, num_dst=2, slots=1, seed=0):
    """A dense bipartite step src -> dst with random weights, indexed like StepBatch (dst-major)."""
    g = torch.Generator().manual_seed(seed)
    src_local = torch.arange(num_src, dtype=torch.int32).repeat(num_dst)
    dst_local = torch.arange(num_dst, dtype=torch.int32).repeat_interleave(num_src)
    e = src_local.numel()
    return StepBatch(
        src_local=src_local, dst_local=dst_local, src_nodes=torch.arange(num_src), dst_nodes=torch.arange(num_dst) + num_src,
        weight=torch.randn(e, slots, generator=g), kind=torch.zeros(e, dtype=torch.int8), span=torch.zeros(e, dtype=torch.int16),
    )


def test_message_function_is_eq4():
    torch.manual_seed(0)
    step = _toy_step()
    msg = MessageFunction(edge_dim=6, memory_dim=D, message_dim=10)
    s = torch.randn(3, D)
    e = torch.randn(step.num_edges, 1, 6)
    got = msg(TorchStepOps(step), s, e)
    want = torch.zeros(2, 10)
    for k in range(step.num_edges):  # m_i = sum_j W_m1 e_ij ⊙ W_m2 s_j
        i, j = int(step.dst_local[k]), int(step.src_local[k])
        want[i] += msg.edge_proj(e[k, 0]) * msg.src_proj(s[j])
    torch.testing.assert_close(got, want)


def test_multi_head_message_is_eq5():
    torch.manual_seed(0)
    n_heads, head_dim = 4, 5
    step = _toy_step(slots=n_heads)
    msg = MultiHeadMessage(edge_dim=6, memory_dim=D, message_dim=10, message_heads=n_heads, head_dim=head_dim)
    s = torch.randn(3, D)
    e = torch.randn(step.num_edges, n_heads, 6)
    got = msg(TorchStepOps(step), s, e)
    w_n = msg.src_proj.weight.view(n_heads, head_dim, D)  # the N head projections W_n
    b_n = msg.src_proj.bias.view(n_heads, head_dim)
    want = torch.zeros(2, 10)
    for k in range(step.num_edges):
        i, j = int(step.dst_local[k]), int(step.src_local[k])
        heads = [msg.edge_proj(e[k, n]) * (w_n[n] @ s[j] + b_n[n]) for n in range(n_heads)]
        want[i] += msg.merge(torch.cat(heads))  # phi_h(Concat(head^1..head^N))
    torch.testing.assert_close(got, want)


def test_messages_reject_wrong_slot_count():
    step = _toy_step(slots=2)
    with pytest.raises(ValueError, match="single-edge"):
        MessageFunction(6, D, D)(TorchStepOps(step), torch.randn(3, D), torch.randn(step.num_edges, 2, 6))
    with pytest.raises(ValueError, match="3 heads"):
        MultiHeadMessage(6, D, D, 3, 4)(TorchStepOps(step), torch.randn(3, D), torch.randn(step.num_edges, 2, 6))


def test_updater_is_eq6_gru_then_layernorm():
    torch.manual_seed(0)
    up = MemoryUpdater(message_dim=10, memory_dim=D)
    m, v = torch.randn(5, 10), torch.randn(5, D)
    want = up.norm(up.gru(m, v))  # the node feature is the GRU's hidden state
    torch.testing.assert_close(up(m, v), want)
    out = up(m, v)
    torch.testing.assert_close(out.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)


def test_edge_features_per_kind():
    rff = RandomFourierFeatures(F, 3.0)
    ef = EdgeFeatures(rff)
    weight = torch.tensor([[0.3, -0.2, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [-0.4, 0.0, 0.0], [0.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0]])
    kind = torch.tensor([EdgeKind.WEIGHT, EdgeKind.RESIDUAL, EdgeKind.ATTN_Q, EdgeKind.ATTN_K, EdgeKind.ATTN_V,
                         EdgeKind.ATTN_SCORE])
    span = torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    out = ef(weight, kind, span)
    assert out.shape == (6, 3, 2 * F)
    torch.testing.assert_close(out[0], rff(weight[0]))  # weights: RFF per slot, padding = RFF(0)
    torch.testing.assert_close(out[1, 0], 3.0 * ef.theta_res)  # App. E.1: theta_res * r
    # a ViT's W_Q / W_K edges keep their weight: its RFF times a learnable role vector (graph/convert/vit.py)
    torch.testing.assert_close(out[2, 0], rff(weight[2, 0]) * ef.attn_q)
    torch.testing.assert_close(out[3, 0], rff(weight[3, 0]) * ef.attn_k)
    torch.testing.assert_close(out[4, 0], ef.attn_v)  # parameter-free attention edges: learnable vectors
    torch.testing.assert_close(out[5, 0], ef.attn_s)
    zero_edge = rff(torch.zeros(()))
    for row in range(1, 6):  # single edges are padded with zero edges like a 1x1 kernel
        torch.testing.assert_close(out[row, 1:], zero_edge.expand(2, -1))
    # an all-weight batch takes the shortcut and is still just the RFF
    torch.testing.assert_close(ef(weight[:1], kind[:1], span[:1]), rff(weight[:1]))


def _reference_mlp_memory(mem: DNGMemory, model: NFNSiren) -> list[torch.Tensor]:
    """Eq. 4 + Eq. 6 written layer by layer with dense tensors, no graph machinery."""
    rff = mem.edge_features.rff
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n_in = linears[0].in_features
    s = mem.inputs.table.weight[:n_in]
    outs = []
    for t, lin in enumerate(linears, start=1):
        msg = mem.messages[t - 1]
        e = msg.edge_proj(rff(lin.weight.detach()))  # (out, in, d)
        m = (e * msg.src_proj(s).unsqueeze(0)).sum(1)
        bias_feat = torch.cat([rff(lin.bias.detach()), torch.zeros(lin.out_features, 8 * F)], dim=1)  # slots 1..4 absent
        s = mem.updater(m, mem.node_features.proj(bias_feat))
        outs.append(s)
    return outs


def test_memory_matches_hand_written_forward_pass():
    torch.manual_seed(0)
    model = NFNSiren(hidden=8)
    stream = dng_tgn.to_event_stream(model)
    mem = DNGMemory(memory_dim=D, fourier_size=F, max_timestamps=3)
    state = mem(dng_tgn.batch_streams([stream]), ExecutionPath.TORCH, return_trajectory=True)
    ref = _reference_mlp_memory(mem, model)
    for (name, layer_ref) in zip(("net.0.linear", "net.1.linear", "net.2"), ref):
        g = next(g for g in stream.node_groups if g.name == name)
        torch.testing.assert_close(state.node_memory[g.offset : g.offset + g.size], layer_ref, atol=1e-5, rtol=1e-5)


def test_each_node_is_written_once_at_its_timestamp():
    torch.manual_seed(0)
    stream = dng_tgn.to_event_stream(SimpleViT(dim=8, heads=2, dim_head=4, mlp_dim=8))
    batch = dng_tgn.batch_streams([stream])
    mem = DNGMemory(memory_dim=D, fourier_size=F, max_timestamps=12)
    traj = mem(batch, ExecutionPath.TORCH, return_trajectory=True).trajectory
    assert traj.shape == (13, stream.num_nodes, D)
    written_at = torch.full((stream.num_nodes,), -1)
    for t in range(1, 13):
        changed = (traj[t] != traj[t - 1]).any(1)
        assert not bool((changed & (written_at >= 0)).any()), f"a node was rewritten at t^{t}"
        written_at[changed] = t
        expected = torch.zeros(stream.num_nodes, dtype=torch.bool)
        expected[batch.steps[t - 1].dst_nodes] = True
        assert torch.equal(changed, expected)
    is_input = batch.node_kind == NodeKind.INPUT
    assert bool((written_at[~is_input] > 0).all()) and bool((written_at[is_input] == -1).all())
    assert bool((traj[0][~is_input] == 0).all())  # unwritten memories are zero
    # the ViT's patch inputs carry LayerNorm parameters, which are added to the learnable vectors
    assert not torch.allclose(traj[0][is_input], mem.inputs.table.weight[: int(is_input.sum())])


def test_siren_inputs_are_the_learnable_vectors():
    mem = DNGMemory(memory_dim=D, fourier_size=F, max_timestamps=3)
    batch = dng_tgn.batch_streams([dng_tgn.to_event_stream(NFNSiren(hidden=8)) for _ in range(2)])
    traj = mem(batch, ExecutionPath.TORCH, return_trajectory=True).trajectory
    inputs = (batch.node_kind == NodeKind.INPUT).nonzero().squeeze(1)
    torch.testing.assert_close(traj[0][inputs], mem.inputs.table.weight[batch.node_input_index[inputs]])


def test_network_memory_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    siren = dng_tgn.to_event_stream(NFNSiren(hidden=8))
    cnn = dng_tgn.to_event_stream(ZooCNN(channels=4))
    enc = DNGEncoder(D, message_heads=9, head_dim=4, fourier_size=F, max_timestamps=4, device="cpu")
    alone = enc([siren]).embedding
    mixed = enc([cnn, siren, cnn]).embedding  # K=9 batch: the SIREN is zero-padded either way
    torch.testing.assert_close(mixed[1:2], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[0], mixed[1])


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    streams = [dng_tgn.to_event_stream(SimpleViT(dim=8, heads=2, dim_head=4, mlp_dim=8)), dng_tgn.to_event_stream(NFNSiren(hidden=8))]
    enc = DNGEncoder(D, fourier_size=F, max_timestamps=12, device="cpu")
    enc(streams).embedding.square().sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


def test_clear_errors_for_streams_the_encoder_was_not_built_for():
    siren = dng_tgn.to_event_stream(NFNSiren(hidden=8))
    with pytest.raises(ValueError, match="max_timestamps=2"):
        DNGEncoder(D, fourier_size=F, max_timestamps=2, device="cpu")([siren])
    with pytest.raises(ValueError, match="message_heads >= 9"):
        DNGEncoder(D, fourier_size=F, max_timestamps=4, device="cpu")([dng_tgn.to_event_stream(ZooCNN(channels=4))])
    vit = dng_tgn.to_event_stream(SimpleViT(dim=8, heads=2, dim_head=4, mlp_dim=8))
    with pytest.raises(ValueError, match="49 inputs.*max_inputs=16"):
        DNGEncoder(D, fourier_size=F, max_timestamps=12, max_inputs=16, device="cpu")([vit])
