"""batch_streams: many networks, one stream per timestamp, identical content to the single streams."""
import pytest
import torch

import dng_tgn
from dng_tgn.nets import NFNSiren, SimpleViT, ZooCNN


def streams_mixed():
    torch.manual_seed(0)
    return [
        dng_tgn.to_event_stream(NFNSiren().state_dict()),
        dng_tgn.to_event_stream(ZooCNN().state_dict()),
        dng_tgn.to_event_stream(SimpleViT()),
        dng_tgn.to_event_stream(NFNSiren().state_dict()),
    ]


def per_network_edges(batch, i, t):
    """Edges of network i at step t with batch ids turned back into that stream's own node ids."""
    offset = int(torch.nonzero(batch.node_graph == i)[0])
    st = batch.steps[t - 1]
    keep = batch.node_graph[st.src] == i
    return st.src[keep] - offset, st.dst[keep] - offset, st.weight[keep], st.kind[keep]


@pytest.mark.parametrize("streams", [None], ids=["mixed"])
def test_batch_matches_each_stream(streams):
    streams = streams_mixed()
    batch = dng_tgn.batch_streams(streams)
    assert batch.num_graphs == 4 and batch.num_slots == 9 and batch.max_timestamps == 12
    assert batch.num_nodes == sum(s.num_nodes for s in streams)
    assert batch.num_timestamps.tolist() == [3, 4, 12, 3]
    assert batch.output_sizes().tolist() == [1, 10, 10, 1]
    for i, s in enumerate(streams):
        assert int((batch.node_graph == i).sum()) == s.num_nodes
        for t in range(1, batch.max_timestamps + 1):
            src, dst, w, kind = per_network_edges(batch, i, t)
            if t > s.num_timestamps:
                assert src.numel() == 0
                continue
            snap = s.snapshot(t)
            assert torch.equal(src, snap.src) and torch.equal(dst, snap.dst) and torch.equal(kind, snap.edge_kind)
            k = snap.edge_weight.shape[1]
            assert torch.equal(w[:, :k], snap.edge_weight) and not w[:, k:].any()  # zero padding to batch K


def test_local_indices_and_blocks_are_consistent():
    batch = dng_tgn.batch_streams(streams_mixed())
    for st in batch.steps:
        assert torch.equal(st.src_nodes[st.src_local], st.src)
        assert torch.equal(st.dst_nodes[st.dst_local], st.dst)
        block = st.to_block()
        assert block.num_edges() == st.num_edges and block.num_dst_nodes() == st.dst_nodes.numel()


def test_node_tables():
    streams = streams_mixed()
    batch = dng_tgn.batch_streams(streams)
    inputs = batch.node_input_index >= 0
    assert int(inputs.sum()) == 2 + 1 + 49 + 2
    assert torch.equal(batch.node_kind == 0, inputs)
    biases = batch.node_values[batch.node_graph == 0, 0]
    assert torch.equal(biases, torch.cat([g.values[:, 0] for g in streams[0].node_groups]))


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        dng_tgn.batch_streams([])


def test_batch_state_dicts_equals_batch_streams():
    torch.manual_seed(7)
    sds = [NFNSiren().state_dict() for _ in range(3)] + [ZooCNN().state_dict() for _ in range(2)] + [NFNSiren().state_dict()]
    fast = dng_tgn.batch_state_dicts(sds)
    slow = dng_tgn.batch_streams([dng_tgn.to_event_stream(sd) for sd in sds])
    assert fast.archs == slow.archs == ["NFN-SIREN"] * 3 + ["ZooCNN"] * 2 + ["NFN-SIREN"]
    for name in ("node_values", "node_slot_mask", "node_kind", "node_graph", "node_input_index", "output_nodes", "output_graph", "num_timestamps"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    for a, b in zip(fast.steps, slow.steps):
        for name in ("src_local", "dst_local", "src_nodes", "dst_nodes", "weight", "kind", "span"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_batch_state_dicts_names_the_bad_network():
    sds = [NFNSiren().state_dict() for _ in range(4)]
    sds[2]["net.2.weight"][0, 0] = float("nan")
    with pytest.raises(dng_tgn.NonFiniteWeightsError, match="#2 .*net.2.weight"):
        dng_tgn.batch_state_dicts(sds)
