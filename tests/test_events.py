"""Eq. 3: the order of graph updates and what each snapshot G_{t^l} contains."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import dng_tgn
from dng_tgn.graph import Op, Snapshot, stream_to_networkx
from dng_tgn.nets import NFNSiren
from _networks import mlp


@pytest.fixture
def stream():
    return dng_tgn.to_event_stream(mlp((3, 8, 6, 4, 2)))


def group_ids(stream, name):
    g = next(g for g in stream.node_groups if g.name == name)
    return set(g.ids.tolist())


def test_eq3_event_order(stream):
    names = [g.name for g in stream.node_groups]  # input, 0, 2, 4, 6 (module names)
    edges = [e.name for e in stream.edge_groups]
    assert stream.num_timestamps == 4
    assert [(e.op, e.group) for e in stream.events_at(0)] == [(Op.ADD_NODES, names[0])]
    assert [(e.op.value, e.group) for e in stream.events_at(1)] == [("+V", names[1]), ("+E", edges[0])]
    for l in range(2, 5):
        got = [(e.op.value, e.group) for e in stream.events_at(l)]
        assert got == [("+V", names[l]), ("+E", edges[l - 1]), ("-V", names[l - 2]), ("-E", edges[l - 2])]


def test_iteration_is_time_ordered_with_string_ops(stream):
    events = list(stream)
    assert all(e.op in {"+V", "+E", "-V", "-E"} for e in events)
    assert [e.t for e in events] == sorted(e.t for e in events)
    assert len(events) == len(stream) == 1 + 2 + 3 * 4


def test_snapshot_is_bipartite_layer_pair(stream):
    names = [g.name for g in stream.node_groups]
    for l in range(1, stream.num_timestamps + 1):
        snap = stream.snapshot(l)
        assert set(snap.node_ids.tolist()) == group_ids(stream, names[l - 1]) | group_ids(stream, names[l])
        e = stream.edge_groups[l - 1]
        assert snap.num_edges == e.num_edges
        src_group, dst_group = group_ids(stream, names[l - 1]), group_ids(stream, names[l])
        assert set(snap.src.tolist()) == src_group and set(snap.dst.tolist()) == dst_group
        w = stream.edge_groups[l - 1].weight[..., 0]
        assert torch.equal(snap.edge_weight[:, 0], w.reshape(-1))


def test_snapshot_zero_holds_only_inputs(stream):
    snap = stream.snapshot(0)
    assert snap.num_edges == 0 and snap.num_nodes == 3


def test_snapshot_exports_to_dgl(stream):
    snap = stream.snapshot(2)
    g = snap.to_dgl()
    assert g.num_nodes() == 8 + 6 and g.num_edges() == 48
    assert torch.equal(g.ndata["nid"], snap.node_ids)
    block = snap.to_block()
    assert block.num_src_nodes() == 8 and block.num_dst_nodes() == 6 and block.num_edges() == 48


def test_timestamp_out_of_range(stream):
    with pytest.raises(IndexError, match="t\\^0..t\\^4"):
        stream.snapshot(5)
    for t in (-1, 5):
        with pytest.raises(IndexError, match="t\\^0..t\\^4"):
            Snapshot.at(stream, t)


def test_snapshot_at_is_stream_snapshot(stream):
    for t in range(stream.num_timestamps + 1):
        a, b = Snapshot.at(stream, t), stream.snapshot(t)
        assert a.t == b.t == t and a.stream is b.stream is stream
        for name in ("node_ids", "edge_ids", "src", "dst", "edge_weight", "edge_kind", "edge_span"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_networkx_export_and_drawing():
    s = dng_tgn.to_event_stream(NFNSiren())
    g = s.to_networkx()
    assert g.number_of_nodes() == 2 + 32 + 32 + 1
    h = stream_to_networkx(s)
    assert dict(g.nodes(data=True)) == dict(h.nodes(data=True))
    assert list(g.edges(keys=True, data=True)) == list(h.edges(keys=True, data=True))
    assert g.number_of_edges() == 2 * 32 + 32 * 32 + 32
    ts = {d["t"] for _, _, d in g.edges(data=True)}
    assert ts == {1, 2, 3}
    ax = dng_tgn.draw_snapshot(s, 2)
    assert "t^2" in ax.get_title()


def test_table_and_summary(stream):
    df = stream.table()
    assert list(df.columns[:3]) == ["t", "op", "group"] and len(df) == len(stream)
    assert "t^4" in stream.summary()


def test_dgl_is_importable_through_the_shim():
    from dng_tgn import _dgl

    assert _dgl.HAS_DGL, _dgl.DGL_IMPORT_ERROR
    assert _dgl.dgl_supports("cpu")
    import sys

    assert "dgl.graphbolt" in sys.modules  # the placeholder, not the real graphbolt
