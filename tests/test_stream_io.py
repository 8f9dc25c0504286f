"""save_stream / load_stream: an exact round trip, a weights-only file, and clear errors for everything else."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn.graph.io import FORMAT, VERSION, StreamFormatError, load_stream, save_stream, stream_to_dict
from dng_tgn.nets import DWSNetsSiren, NFNSiren, SimpleViT, ZooCNN


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(3 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.pool(torch.nn.functional.elu(self.conv(x))).flatten(1)
        h = torch.tanh(self.fc1(h))
        h = self.fc2(h) + h
        return nn.functional.leaky_relu(self.out(h), 0.2) + 0.25


def _streams():
    torch.manual_seed(0)
    return {
        "nfn_siren": dng_tgn.to_event_stream(NFNSiren(hidden=8)),
        "dws_siren": dng_tgn.to_event_stream(DWSNetsSiren(hidden=8).state_dict()),
        "zoo_cnn": dng_tgn.to_event_stream(ZooCNN(channels=4).state_dict()),
        "vit": dng_tgn.to_event_stream(SimpleViT(dim=16, dim_head=8, mlp_dim=32).eval()),
        "module": dng_tgn.to_event_stream(_Residual(), input_shape=(1, 8, 8)),
    }


STREAMS = _streams()


def assert_streams_equal(a, b):
    for f in ("arch", "output_group", "num_slots", "input_shape", "steps", "output_transform", "num_nodes", "num_edges"):
        assert getattr(a, f) == getattr(b, f), f
    assert len(a.node_groups) == len(b.node_groups) and len(a.edge_groups) == len(b.edge_groups)
    for x, y in zip(a.node_groups + a.edge_groups, b.node_groups + b.edge_groups):
        assert type(x) is type(y)
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
                assert u.dtype == v.dtype and torch.equal(u, v), (x.name, f.name)
            elif f.name == "params":
                assert [(r.name, r.shape, r.slot) for r in u] == [(r.name, r.shape, r.slot) for r in v]
                assert all(torch.equal(r.index, s.index) for r, s in zip(u, v))
            else:
                assert u == v, (x.name, f.name, u, v)
                assert type(u) is type(v), (x.name, f.name)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_exact_round_trip(tmp_path, name):
    stream = STREAMS[name]
    path = save_stream(stream, tmp_path / f"{name}.pt")
    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert raw["format"] == FORMAT and raw["version"] == VERSION
    back = load_stream(path)
    assert_streams_equal(stream, back)
    assert back.summary() == stream.summary()
    rec_a, rec_b = stream.recover_parameters(), back.recover_parameters()
    assert rec_a.keys() == rec_b.keys() and all(torch.equal(rec_a[k], rec_b[k]) for k in rec_a)
    if all(e.op.replayable for e in stream.edge_groups):
        gen = torch.Generator().manual_seed(0)
        shape = {"nfn_siren": (5, 2), "dws_siren": (5, 2), "zoo_cnn": (3, 1, 28, 28), "vit": (3, 1, 28, 28),
                 "module": (3, 1, 8, 8)}[name]
        x = torch.rand(shape, generator=gen) * 2 - 1
        assert torch.equal(dng_tgn.replay(stream, x), dng_tgn.replay(back, x))


def test_snapshots_and_encoder_agree_after_round_trip(tmp_path):
    stream = STREAMS["zoo_cnn"]
    back = load_stream(save_stream(stream, tmp_path / "s.pt"))
    for t in range(stream.num_timestamps + 1):
        a, b = stream.snapshot(t), back.snapshot(t)
        assert torch.equal(a.node_ids, b.node_ids) and torch.equal(a.edge_weight, b.edge_weight)
    enc = dng_tgn.DNGEncoder(8, message_heads=9, head_dim=4, fourier_size=8, max_timestamps=4, device="cpu")
    with torch.no_grad():
        assert torch.equal(enc([stream]).embedding, enc([back]).embedding)


def test_other_version_is_refused(tmp_path):
    obj = stream_to_dict(STREAMS["nfn_siren"])
    obj["version"] = VERSION + 1
    torch.save(obj, tmp_path / "future.pt")
    with pytest.raises(StreamFormatError, match=rf"future.pt.*version {VERSION + 1}.*reads version {VERSION} only"):
        load_stream(tmp_path / "future.pt")


def test_not_a_stream_and_damaged_files(tmp_path):
    torch.save(NFNSiren().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(StreamFormatError, match="sd.pt is not a dng_tgn event stream"):
        load_stream(tmp_path / "sd.pt")
    good = save_stream(STREAMS["nfn_siren"], tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(StreamFormatError, match="cut.pt: not a readable event stream file"):
        load_stream(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(StreamFormatError, match="text.pt"):
        load_stream(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_stream(tmp_path / "missing.pt")
    obj = stream_to_dict(STREAMS["nfn_siren"])
    del obj["stream"]["edge_groups"][0]["weight"]
    torch.save(obj, tmp_path / "broken.pt")
    with pytest.raises(StreamFormatError, match="broken.pt: damaged event stream"):
        load_stream(tmp_path / "broken.pt")


def test_loading_names_no_code(tmp_path):
    """Only dng_tgn's own op/transform classes and torch functions can be named by a file."""
    obj = stream_to_dict(STREAMS["module"])
    spec = obj["stream"]["edge_groups"][0]["op"]
    spec["type"] = "os.system"
    torch.save(obj, tmp_path / "evil_type.pt")
    with pytest.raises(StreamFormatError, match="unknown edge op / transform type 'os.system'"):
        load_stream(tmp_path / "evil_type.pt")
    obj = stream_to_dict(STREAMS["module"])
    fns = [t for e in obj["stream"]["edge_groups"] for t in e["src_transform"]
           if "fn" in t["fields"] and isinstance(t["fields"]["fn"], dict)]
    assert fns, "the test module has an elementwise activation"
    fns[0]["fields"]["fn"] = {"function": "os.system"}
    torch.save(obj, tmp_path / "evil_fn.pt")
    with pytest.raises(StreamFormatError, match="unknown function 'os.system'"):
        load_stream(tmp_path / "evil_fn.pt")


def test_save_refuses_foreign_objects(tmp_path):
    with pytest.raises(TypeError, match="EventStream"):
        save_stream({"not": "a stream"}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
