"""ViT zoo: vectorised SimpleViT training, stop epochs, recorded accuracies and the 80/10/10 loader."""
import json

import numpy as np
import pytest
import torch

import dng_tgn
from dng_tgn.data import CorruptShardError, ViTZooDataset
from dng_tgn.data import build_vit_zoo
from dng_tgn.data.sources import load_digits, to_signed
from dng_tgn.data.vit_zoo import StackedViTs, make_models, train_vits, vit_split
from dng_tgn.nets.simple_vit import SimpleViT


pytestmark = pytest.mark.usefixtures("one_torch_thread")


KW = dict(image_size=8, patch_size=4, num_classes=10, dim=16, depth=2, heads=2, mlp_dim=32, channels=1, dim_head=8)
TINY = ["--dataset", "digits", "--n-models", "10", "--shard-size", "5", "--steps-per-epoch", "6",
        "--max-epochs", "3", "--n-eval", "120", "--dim", "16", "--dim-head", "8", "--mlp-dim", "32", "--device", "cpu"]


def test_stacked_matches_modules_and_training_learns():
    x = to_signed(load_digits()[0][:32])
    y = torch.as_tensor(load_digits()[1][:32])
    stack = StackedViTs(KW, [5, 6], "cpu")
    out = stack(x.unsqueeze(0).expand(2, *x.shape))
    for i, m in enumerate(make_models(KW, [5, 6])):
        torch.testing.assert_close(out[i], m(x))
    log = []
    snap, acc = train_vits(KW, [1, 2, 3], [1, 2, 3], x, y, x, y, steps_per_epoch=15, batch_size=16, lr=3e-3,
                           loss_log=log)
    assert np.mean(log[-5:]) < np.mean(log[:5])
    assert torch.isfinite(acc).all() and set(snap) == set(SimpleViT(**KW).state_dict())
    assert not torch.equal(snap["linear_head.weight"][0], snap["linear_head.weight"][2])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit") / "vit"
    build_vit_zoo.main(TINY + ["--out", str(out)])
    return out


def test_build_tiny_vit_zoo(built):
    meta = json.loads((built / "meta.json").read_text())
    assert meta["complete"] and meta["model_kwargs"]["patch_size"] == 4
    sizes = {s: len(ViTZooDataset(built, s)) for s in ("train", "val", "test", "all")}
    assert sizes == {"train": 8, "val": 1, "test": 1, "all": 10}
    split = vit_split(10)
    assert len(set(split["train"]) | set(split["val"]) | set(split["test"])) == 10
    ds = ViTZooDataset(built, "all")
    assert set(ds.metrics.stop_epoch) <= {1, 2, 3} and ds.metrics.stop_epoch.nunique() > 1
    x, y = load_digits("test")
    idx = meta["eval_test_indices"]
    assert len(idx) == 120 and len(set(idx)) == 120
    xt, yt = to_signed(x[idx]), torch.as_tensor(y[idx])
    for i in range(len(ds)):
        sd, acc = ds[i]
        model = SimpleViT(**ds.model_kwargs).eval()
        model.load_state_dict(sd)
        with torch.no_grad():
            assert (model(xt).argmax(1) == yt).float().mean().item() == pytest.approx(acc, abs=1e-6)
    # the zoo writes the current vit-pytorch layout and records the head count, which the weights cannot tell
    assert meta["heads"] == 2 and ds.heads == 2 and "1.26" in meta["layout"]
    assert ds.model_kwargs["final_norm_in_transformer"] and "transformer.norm.weight" in ds[0][0]
    stream = dng_tgn.to_event_stream(ds[0][0], heads=ds.heads)
    model = SimpleViT(**ds.model_kwargs).eval()
    model.load_state_dict(ds[0][0])
    with torch.no_grad():
        torch.testing.assert_close(dng_tgn.replay(stream, xt[:8]), model(xt[:8]), atol=1e-5, rtol=1e-5)


def _older_layout_zoo(built, out):
    """A copy of ``built`` as zoos were written before: vit-pytorch 1.2.0 head, no layout or 'heads' in meta.json."""
    import shutil

    shutil.copytree(built, out)
    params = torch.load(out / "models.pt")
    n = params["linear_head.weight"].shape[0]
    params["linear_head.1.weight"], params["linear_head.1.bias"] = params.pop("linear_head.weight"), params.pop("linear_head.bias")
    params["linear_head.0.weight"], params["linear_head.0.bias"] = params.pop("transformer.norm.weight"), params.pop("transformer.norm.bias")
    torch.save(params, out / "models.pt")
    meta = json.loads((out / "meta.json").read_text())
    del meta["heads"], meta["layout"], meta["model_kwargs"]["final_norm_in_transformer"]
    (out / "meta.json").write_text(json.dumps(meta))
    return n


def test_older_layout_zoo_still_loads(built, tmp_path):
    n = _older_layout_zoo(built, tmp_path / "old")
    ds = ViTZooDataset(tmp_path / "old", "all")
    assert len(ds) == n and ds.heads == 2 and ds.model_kwargs["final_norm_in_transformer"] is False
    sd, _ = ds[3]
    model = SimpleViT(**ds.model_kwargs).eval()
    model.load_state_dict(sd)
    x = to_signed(load_digits("test")[0][:6])
    with torch.no_grad():
        torch.testing.assert_close(dng_tgn.replay(dng_tgn.to_event_stream(sd, heads=ds.heads), x), model(x),
                                   atol=1e-5, rtol=1e-5)


def test_zoo_heads_must_agree(built, tmp_path):
    import shutil

    shutil.copytree(built, tmp_path / "z")
    meta = json.loads((tmp_path / "z" / "meta.json").read_text())
    meta["heads"] = 4
    (tmp_path / "z" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(KeyError, match="head count"):
        ViTZooDataset(tmp_path / "z", "all")


def test_vit_resume_and_corrupt(built, tmp_path, monkeypatch):
    out = tmp_path / "vit"
    build_vit_zoo.main(TINY + ["--out", str(out), "--max-shards", "1"])
    first = out / "_shards" / "shard_00000.pt"
    t0 = first.stat().st_mtime_ns
    calls = []
    real = build_vit_zoo.train_vits
    monkeypatch.setattr(build_vit_zoo, "train_vits",
                        lambda kw, seeds, *a, **k: calls.append(seeds) or real(kw, seeds, *a, **k))
    build_vit_zoo.main(TINY + ["--out", str(out)])
    assert len(calls) == 1 and len(calls[0]) == 5 and first.stat().st_mtime_ns == t0
    # same settings and seeds as the one-go build: identical weights
    a, b = ViTZooDataset(out, "all"), ViTZooDataset(built, "all")
    torch.testing.assert_close(a[7][0], b[7][0])
    first.write_bytes(first.read_bytes()[:100])
    with pytest.raises(CorruptShardError, match="shard_00000.pt"):
        build_vit_zoo.main(TINY + ["--out", str(out)])
