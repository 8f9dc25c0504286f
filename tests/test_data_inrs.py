"""SIREN INR builder (NFN layout) and the NFN / DWSNets loaders, on small files in the public layouts."""
import json
import os
import shutil

import pytest
import torch

import dng_tgn
from dng_tgn.data import CorruptShardError, DWSNetsSirenDataset, NFNSirenDataset
from dng_tgn.data import build_inrs
from dng_tgn.data.siren_fit import (coord_grid, fit_sirens, images_to_targets, init_sirens, psnr, render_dwsnets,
                                    render_nfn, siren_forward, to_state_dicts)
from dng_tgn.data.sources import load_digits, to_signed
from dng_tgn.nets.siren import DWSNetsSiren, NFNSiren


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = ["--dataset", "digits", "--n-train", "6", "--n-val", "2", "--n-test", "3", "--aug-copies", "2",
        "--steps", "15", "--lr", "1e-3", "--shard-size", "4", "--device", "cpu", "--no-compile"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("inrs") / "inrs"
    build_inrs.main(TINY + ["--out", str(out)])
    return out


def test_batched_forward_matches_nfn_module_and_grid_order():
    params = init_sirens(3, out_features=1, generator=torch.Generator().manual_seed(0))
    sds = to_state_dicts(params)
    coords = coord_grid(5, 7, "ij")
    assert coords[1].tolist() == pytest.approx([-1.0, -2 / 3])  # row index first ('ij'), column varies fastest
    out = siren_forward(params, coords)
    for i, sd in enumerate(sds):
        m = NFNSiren()
        m.load_state_dict(sd)  # NFN keys, strict
        torch.testing.assert_close(m(coords), out[i])
    # NFN init: first-layer weights within 1/2, later ones within sqrt(6/32)/30, biases within 1/sqrt(fan_in)
    assert params[0].abs().max() <= 0.5 and params[2].abs().max() <= (6 / 32) ** 0.5 / 30
    assert params[1].abs().max() > 0.5 ** 2  # biases use the default Linear init, not the SIREN weight bound


def test_fit_loss_decreases_and_psnr():
    x = to_signed(load_digits()[0][:8])
    coords = coord_grid(8, 8)
    params, mse, hist = fit_sirens(images_to_targets(x), coords, 40, lr=1e-3,
                                   generator=torch.Generator().manual_seed(1), loss_every=10)
    assert hist[-1] < 0.3 * hist[0]
    assert mse.shape == (8,) and (psnr(mse) > 15).all()
    recon = render_nfn(to_state_dicts(params)[2], 8, 8)
    assert torch.allclose(((recon - x[2]) ** 2).mean(), mse[2], rtol=1e-4)


def test_compiled_fit_matches_eager():
    x = to_signed(load_digits()[0][:4])
    runs = [fit_sirens(images_to_targets(x), coord_grid(8, 8), 5, lr=1e-3, compile=c,
                       generator=torch.Generator().manual_seed(2)) for c in (False, True)]
    for a, b in zip(runs[0][0], runs[1][0]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_build_tiny_layout_psnr_and_loader(built):
    out = built
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["split_points"] == [6, 8]
    _, labels = load_digits()
    ids = meta["image_ids"]
    assert ids[:8] == list(range(8)) and ids[8:] == [1500, 1501, 1502]  # test images from the test split
    for idx, img in enumerate(ids):
        assert (out / f"randinit_smaller_{labels[img]}s" / f"net{idx}.pth").is_file()
    for a in range(2):
        for idx in range(11):
            assert (out / f"randinit_smaller_aug{a}_{labels[ids[idx]]}s" / f"net{idx}.pth").is_file() == (idx < 6)
    rows = [r.split(",") for r in (out / "psnr.csv").read_text().splitlines()[1:]]
    assert len(rows) == 11 + 2 * 6
    images = to_signed(load_digits()[0][ids])
    for f, idx, _, _, recorded in rows:  # each recorded PSNR is the saved INR's real reconstruction quality
        sd = torch.load(out / f, weights_only=True)
        mse = ((render_nfn(sd, 8, 8) - images[int(idx)]) ** 2).mean()
        assert float(psnr(mse)) == pytest.approx(float(recorded), abs=0.01)
        assert float(recorded) > 8  # well above the ~6 dB of an unfitted SIREN

    train, val, test = (NFNSirenDataset(out, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (6, 2, 3)
    assert len(NFNSirenDataset(out, "train", extra_aug=2)) == 18
    assert len(NFNSirenDataset(out, "val", extra_aug=2)) == 2  # aug copies never reach val/test
    assert [test[i][1] for i in range(3)] == labels[[1500, 1501, 1502]].tolist()
    sd, label = val[1]
    assert list(sd) == ["net.0.linear.weight", "net.0.linear.bias", "net.1.linear.weight", "net.1.linear.bias",
                        "net.2.weight", "net.2.bias"]
    assert isinstance(dng_tgn.to_event_stream(sd), dng_tgn.EventStream)


def test_resume_neither_redoes_nor_loses_shards(tmp_path, monkeypatch):
    out = tmp_path / "inrs"
    build_inrs.main(TINY + ["--out", str(out), "--max-shards", "2"])
    first = {p: p.stat().st_mtime_ns for p in out.rglob("net*.pth")}
    assert len(first) == 8 and not json.loads((out / "meta.json").read_text())["complete"]

    # crash while saving the third shard: its record is never written
    real = build_inrs.atomic_write_json

    def crash(obj, path):
        if "_shards" in str(path):
            raise KeyboardInterrupt
        real(obj, path)

    monkeypatch.setattr(build_inrs, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        build_inrs.main(TINY + ["--out", str(out)])
    monkeypatch.setattr(build_inrs, "atomic_write_json", real)

    fitted = []
    real_fit = build_inrs.fit_sirens

    def counting_fit(targets, *a, **k):
        fitted.append(len(targets))
        return real_fit(targets, *a, **k)

    monkeypatch.setattr(build_inrs, "fit_sirens", counting_fit)
    build_inrs.main(TINY + ["--out", str(out)])
    assert sum(fitted) == 11 + 12 - 8  # everything but the two finished shards, the crashed one included
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    assert len(list(out.rglob("net*.pth"))) == 23 and not list(out.rglob("*.tmp"))
    assert json.loads((out / "meta.json").read_text())["complete"]
    with pytest.raises(ValueError, match="other settings"):
        build_inrs.main(TINY + ["--steps", "16", "--out", str(out)])


def test_corrupt_shard_and_checkpoint_errors(built, tmp_path):
    out = tmp_path / "inrs"
    shutil.copytree(built, out)
    record = sorted((out / "_shards").glob("*.json"))[0]
    record.write_text('{"files": ["randinit_smaller_0s/net0.pth"')
    with pytest.raises(CorruptShardError, match=record.name):
        build_inrs.main(TINY + ["--out", str(out)])
    ds = NFNSirenDataset(out, "all")
    net = ds.items[3][0]
    net.write_bytes(net.read_bytes()[:50])
    with pytest.raises(CorruptShardError, match="net3.pth"):
        ds[3]
    torch.save({"net.0.linear.weight": torch.zeros(32, 2)}, net)
    with pytest.raises(KeyError, match="missing keys"):
        ds[3]


def test_public_nfn_tarball_layout(tmp_path):
    """Files exactly as in NFN's tarballs: NFNSiren state_dicts in randinit_smaller_{label}s/net{idx}.pth."""
    labels = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    for idx, lab in enumerate(labels):
        d = tmp_path / f"randinit_smaller_{lab}s"
        d.mkdir(exist_ok=True)
        torch.save(NFNSiren().state_dict(), d / f"net{idx}.pth")
        if idx < 6:
            a = tmp_path / f"randinit_smaller_aug0_{lab}s"
            a.mkdir(exist_ok=True)
            torch.save(NFNSiren().state_dict(), a / f"net{idx}.pth")
    with pytest.raises(ValueError, match="split_points"):
        NFNSirenDataset(tmp_path, "train")
    test = NFNSirenDataset(tmp_path, "test", split_points=(6, 8))
    assert [test[i][1] for i in range(len(test))] == labels[8:]
    train = NFNSirenDataset(tmp_path, "train", split_points=(6, 8), extra_aug=1)
    assert len(train) == 12 and [train[i][1] for i in range(12)] == labels[:6] * 2
    all_ = NFNSirenDataset(tmp_path, "all", split_points=(6, 8))
    assert len(all_) == 10  # the aug folder is not globbed into the base set
    os.remove(tmp_path / "randinit_smaller_4s" / "net2.pth")
    with pytest.raises(ValueError, match="not 0..8"):
        NFNSirenDataset(tmp_path, "train", split_points=(6, 8))


def test_dwsnets_layout(tmp_path):
    """DWSNets: mnist_png_{training,testing}_{label}_{n}/checkpoints/model_final.pth + a splits json."""
    torch.manual_seed(0)
    entries = {"train": {"path": [], "label": []}, "val": {"path": [], "label": []}, "test": {"path": [], "label": []}}
    for split, part, lab, n in [("train", "training", 7, 0), ("train", "training", 2, 1), ("val", "training", 7, 2),
                                ("test", "testing", 0, 3)]:
        ck = tmp_path / "dataset" / "mnist-inrs" / f"mnist_png_{part}_{lab}_{n}" / "checkpoints"
        ck.mkdir(parents=True)
        torch.save(DWSNetsSiren().state_dict(), ck / "model_final.pth")
        entries[split]["path"].append(f"dataset/mnist-inrs/mnist_png_{part}_{lab}_{n}/checkpoints/model_final.pth")
        entries[split]["label"].append(str(lab))
    splits = tmp_path / "dataset" / "mnist_splits.json"
    splits.write_text(json.dumps(entries))
    train = DWSNetsSirenDataset(splits, "train", root=tmp_path)
    assert len(train) == 2 and train[1][1] == 2
    assert len(DWSNetsSirenDataset(splits, "test")) == 1  # resolves relative to the json folder too
    sd, _ = train[0]
    m = DWSNetsSiren()
    m.load_state_dict(sd)
    coords = coord_grid(4, 6, "xy")  # DWSNets' 'xy' grid: x (column) first
    torch.testing.assert_close(render_dwsnets(sd, 4, 6), m(coords).reshape(4, 6, 1).permute(2, 0, 1))
    assert coords[1].tolist() == pytest.approx([-0.6, -1.0])
    entries["val"]["path"][0] = "dataset/missing.pth"
    splits.write_text(json.dumps(entries))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        DWSNetsSirenDataset(splits, "val")
